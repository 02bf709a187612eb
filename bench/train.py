"""Train a CNN with fastconv and its torch twin side by side, and compare accuracy and speed.

    python bench/train.py                                   # synthetic digits, MNIST net, both impls
    python bench/train.py --dataset synthetic-cifar --epochs 1            # synthetic shapes, CIFAR-10 net
    python bench/train.py --dataset mnist --download --epochs 12          # real MNIST, fetched once into ./data
    python bench/train.py --dataset mnist --data-dir ~/data --epochs 12   # MNIST files already there
    python bench/train.py --dataset cifar10 --data-dir ~/data --download --model cifar10 --epochs 20
    torchrun --nproc_per_node 2 bench/train.py --epochs 1   # data-parallel (DDP, gloo on CPU)

With --impl both (the default) the fastconv net and its torch.nn twin start from the same weights
and see the same batches in the same order; the epochs of the two alternate, so both meet the same
machine. Dropout masks differ (each implementation draws its own), so the curves agree closely but
not exactly. Prints a side-by-side table per epoch and writes results.json and training.png
(training loss, test accuracy, time per epoch) to the output folder; without matplotlib the plot
is skipped (pip install "fastconv[bench]"), and progress is a plain line without tqdm. Without a
dataset the embedded synthetic digits are used, and every output says so: they are not MNIST.
--dataset synthetic-cifar generates synthetic coloured shapes, 32x32 RGB, for the CIFAR-10 net
instead, labelled SYNTHETIC the same way: they are not CIFAR-10.
--download fetches missing dataset files (md5-checked) from the default mirrors or --mirror URLs.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
from fastconv import data as fdata
from fastconv.models import ALL_MODELS, build
from fastconv.progress import Progress

PLOT_SKIPPED = ('plot skipped: matplotlib is not installed (pip install "fastconv[bench]" adds it, and tqdm '
                'for progress bars; or pip install matplotlib tqdm)')

DEFAULT_MODEL = {"synthetic": "mnist", "mnist": "mnist", "synthetic-cifar": "cifar10", "cifar10": "cifar10"}
IMPLS = {"fastconv": (fastconv.nn, FF.cross_entropy), "torch": (torch.nn, F.cross_entropy)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fdata.add_arguments(ap, ("synthetic", "synthetic-cifar", "mnist", "cifar10"))
    ap.add_argument("--model", choices=sorted(ALL_MODELS), default=None,
                    help="default: mnist for mnist/synthetic, cifar10 for cifar10/synthetic-cifar")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128, help="per process")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-3 for adam, 0.05 for sgd (momentum 0.9)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--impl", choices=["both", "fastconv", "torch"], default="both")
    ap.add_argument("--train-size", type=int, default=None, help="use a random subset of the training set")
    ap.add_argument("--test-size", type=int, default=None, help="use a random subset of the test set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    ap.add_argument("--out", default=None, help="output folder (default bench/out/train-DATASET-MODEL-TIME)")
    ap.add_argument("--check-replicas", action="store_true",
                    help="under torchrun: after training, check that every process holds identical weights")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    args.model = args.model or DEFAULT_MODEL[args.dataset]
    args.lr = args.lr or (1e-3 if args.optimizer == "adam" else 0.05)
    return args


# ---------------------------------------------------------------- distributed

def setup_distributed(device):
    """(rank, world size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend)
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), world


def replicas_identical(net):
    """Max absolute difference between this process's parameters and every other's (0.0: identical)."""
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - flat).abs().max()) for g in gathered)


# ---------------------------------------------------------------- data

def prepare_data(args, device, rank=0, world=1):
    def load(download):
        return fdata.load(args.dataset, args.data_dir, download=download, mirrors=args.mirror,
                          train_size=args.train_size, test_size=args.test_size, seed=args.seed)

    if world > 1 and args.download:  # one process downloads, the others read what it fetched
        if rank == 0:
            ds = load(True)
        dist.barrier()
        if rank != 0:
            ds = load(False)
    else:
        ds = load(args.download)
    train_x, train_y, test_x, test_y = ds.tensors()
    label = ds.name.replace("synthetic", "SYNTHETIC") if ds.synthetic else ds.name
    return train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device), label


# ---------------------------------------------------------------- training

def make_runs(args, in_shape, device, world):
    """{impl: dict(net, loss_fn, opt)}: nets with identical initial weights."""
    impls = ["fastconv", "torch"] if args.impl == "both" else [args.impl]
    torch.manual_seed(args.seed)
    reference = build(args.model, torch.nn, in_shape).state_dict()
    runs = {}
    for impl in impls:
        layers, loss_fn = IMPLS[impl]
        net = build(args.model, layers, in_shape)
        net.load_state_dict(reference)
        net.to(device)
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(net)
        if args.optimizer == "adam":
            opt = torch.optim.Adam(net.parameters(), lr=args.lr)
        else:
            opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
        runs[impl] = {"net": net, "loss_fn": loss_fn, "opt": opt, "epochs": [], "step_losses": []}
    return runs


def epoch_order(n, epoch, seed, rank, world):
    """The shuffled sample indices of this process for `epoch`: the same for every implementation."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = n // world  # every process runs the same number of steps (DDP needs it)
    return perm[rank * per_rank:(rank + 1) * per_rank]


def train_epoch(run, x, y, order, batch_size, desc, show_bar, sync):
    net, loss_fn, opt = run["net"], run["loss_fn"], run["opt"]
    net.train()
    steps = math.ceil(len(order) / batch_size)
    bar = Progress(len(order), desc, unit="img", enabled=show_bar)
    losses = []
    sync()
    t0 = time.perf_counter()
    for s in range(steps):
        idx = order[s * batch_size:(s + 1) * batch_size]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(len(idx), postfix=f"loss {losses[-1]:.3f}")
    sync()
    seconds = time.perf_counter() - t0
    bar.close()
    return losses, seconds


def warm_up(run, x, y):
    """Two forward/backward passes whose gradients are dropped (weights untouched): the first
    epoch's time then excludes one-off costs (allocations, thread start-up) for every implementation."""
    net, loss_fn = run["net"], run["loss_fn"]
    net.train()
    for _ in range(2):
        loss_fn(net(x), y).backward()
    run["opt"].zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(run, x, y, batch_size):
    net, loss_fn = run["net"], run["loss_fn"]
    net.eval()
    total_loss, correct = 0.0, 0
    for s in range(0, len(x), batch_size):
        out = net(x[s:s + batch_size])
        total_loss += float(loss_fn(out, y[s:s + batch_size], reduction="sum"))
        correct += int((out.argmax(1) == y[s:s + batch_size]).sum())
    return total_loss / len(x), correct / len(x)


# ---------------------------------------------------------------- output

def print_epoch(epoch, runs):
    cells = []
    for impl, run in runs.items():
        e = run["epochs"][-1]
        cells.append(f"{impl}: loss {e['train_loss']:.4f}  test acc {100 * e['test_acc']:6.2f}%  "
                     f"{e['seconds']:6.1f} s  {e['images_per_s']:7.0f} img/s")
    line = f"epoch {epoch:3d} | " + " | ".join(cells)
    if len(runs) == 2:
        line += f" | time fastconv/torch {runs['fastconv']['epochs'][-1]['seconds'] / runs['torch']['epochs'][-1]['seconds']:.2f}"
    print(line, flush=True)


def plot(results, path):
    """Draws the training plot to ``path``; False (nothing drawn) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"fastconv": "tab:blue", "torch": "tab:orange"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for impl, r in results["runs"].items():
        steps = r["step_losses"]
        window = max(1, len(steps) // 100)
        smooth = [sum(steps[max(0, i - window + 1):i + 1]) / len(steps[max(0, i - window + 1):i + 1])
                  for i in range(len(steps))]
        axes[0].plot(range(1, len(steps) + 1), smooth, label=impl, color=colors[impl], lw=1.2)
        epochs = [e["epoch"] for e in r["epochs"]]
        axes[1].plot(epochs, [100 * e["test_acc"] for e in r["epochs"]], "o-", label=impl, color=colors[impl])
    axes[0].set(title="training loss (moving average)", xlabel="step", ylabel="cross-entropy")
    axes[0].set_yscale("log")
    axes[1].set(title="test accuracy", xlabel="epoch", ylabel="%")
    impls = list(results["runs"])
    n_epochs = len(results["runs"][impls[0]]["epochs"])
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        secs = [e["seconds"] for e in results["runs"][impl]["epochs"]]
        axes[2].bar([e + 1 + (i - (len(impls) - 1) / 2) * width for e in range(n_epochs)], secs, width,
                    label=impl, color=colors[impl])
    axes[2].set(title="time per epoch (training only)", xlabel="epoch", ylabel="s")
    from matplotlib.ticker import MaxNLocator
    for ax in axes[1:]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{results['model']} net on {results['dataset']}: fastconv vs torch "
                 f"({results['machine']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device here")
        if args.impl != "torch" and fastconv.build_info()["cuda kernels"] == "not built":
            sys.exit("--device cuda: this fastconv was built without CUDA kernels; use --impl torch or --device cpu")
    rank, world = setup_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif world > 1 and args.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if args.device == "cuda" \
        else torch.device("cpu")
    sync = (lambda: torch.cuda.synchronize()) if args.device == "cuda" else (lambda: None)
    main_proc = rank == 0

    try:
        train_x, train_y, test_x, test_y, label = prepare_data(args, device, rank, world)
    except (fdata.DatasetNotFoundError, fdata.DatasetFormatError) as exc:
        sys.exit(f"bench/train.py: {exc}")
    in_shape = tuple(train_x.shape[1:])
    runs = make_runs(args, in_shape, device, world)
    machine = (f"{platform.machine()}, {torch.get_num_threads()} threads x {world} process"
               f"{'es' if world > 1 else ''}, {args.device}, torch {torch.__version__}")
    if main_proc:
        print(f"{args.model} net on {label}: {len(train_x)} training / {len(test_x)} test images "
              f"{in_shape}, {args.epochs} epochs, batch {args.batch_size} x {world}, {args.optimizer} lr {args.lr}, "
              f"{machine}", flush=True)

    for run in runs.values():
        warm_up(run, train_x[:args.batch_size], train_y[:args.batch_size])
    for epoch in range(1, args.epochs + 1):
        order = epoch_order(len(train_x), epoch, args.seed, rank, world).to(device)
        for impl, run in runs.items():
            losses, seconds = train_epoch(run, train_x, train_y, order, args.batch_size,
                                          f"epoch {epoch} {impl}", main_proc, sync)
            test_loss, test_acc = evaluate(run, test_x, test_y, 512)
            run["step_losses"] += losses
            run["epochs"].append({"epoch": epoch, "train_loss": sum(losses) / len(losses), "test_loss": test_loss,
                                  "test_acc": test_acc, "seconds": seconds,
                                  "images_per_s": len(order) * world / seconds})
        if main_proc:
            print_epoch(epoch, runs)

    status = 0
    if args.check_replicas and world > 1:
        for impl, run in runs.items():
            diff = replicas_identical(run["net"])
            if main_proc:
                print(f"replicas of the {impl} net across {world} processes: "
                      f"{'identical' if diff == 0.0 else f'DIFFER (max abs difference {diff:g})'}", flush=True)
            status |= diff != 0.0

    if main_proc:
        results = {
            "dataset": label, "synthetic": args.dataset.startswith("synthetic"), "model": args.model,
            "args": {k: v for k, v in vars(args).items()}, "machine": machine, "world_size": world,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "runs": {impl: {"epochs": r["epochs"], "step_losses": r["step_losses"]} for impl, r in runs.items()},
        }
        final = {impl: r["epochs"][-1] for impl, r in runs.items()}
        summary = ", ".join(f"{impl} {100 * e['test_acc']:.2f}% in {sum(x['seconds'] for x in runs[impl]['epochs']):.1f} s"
                            for impl, e in final.items())
        if len(runs) == 2:
            t = {impl: sum(x["seconds"] for x in r["epochs"]) for impl, r in runs.items()}
            results["time_ratio_fastconv_over_torch"] = t["fastconv"] / t["torch"]
            summary += f"; training time fastconv/torch {results['time_ratio_fastconv_over_torch']:.2f}"
        print(f"final test accuracy on {label}: {summary}", flush=True)
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                       f"train-{args.dataset}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        plotted = False
        if not args.no_plot:
            try:
                plotted = plot(results, os.path.join(out, "training.png"))
                if not plotted:
                    print(PLOT_SKIPPED, flush=True)
            except Exception as exc:  # the results are written: a failing plot does not fail the run
                print(f"plot failed ({type(exc).__name__}: {exc}); the results are in results.json", flush=True)
        print(f"results: {out}/results.json" + (f", {out}/training.png" if plotted else ""), flush=True)
        if args.dataset == "synthetic":
            print("These were SYNTHETIC digits, not MNIST. To train on real MNIST (four files, 11 MB, fetched "
                  "once and md5-checked): python bench/train.py --dataset mnist --download --epochs 12 "
                  "[--data-dir DIR, default $FASTCONV_DATA or ./data]", flush=True)
        elif args.dataset == "synthetic-cifar":
            print("These were SYNTHETIC shapes, not CIFAR-10. To train on real CIFAR-10 (one 170 MB tarball, "
                  "fetched once and md5-checked): python bench/train.py --dataset cifar10 --download --epochs 20 "
                  "[--data-dir DIR, default $FASTCONV_DATA or ./data]", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
