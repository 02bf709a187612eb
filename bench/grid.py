"""Grid search over learning rate, batch size and optimizer, training a small fastconv CNN.

    python bench/grid.py                                       # 5 lr x 3 batch sizes x 2 optimizers
    python bench/grid.py --quick                               # a few seconds: a smoke test
    python bench/grid.py --lrs 0.003,0.01 --batch-sizes 64 --optimizers adam --steps 1000
    python bench/grid.py --dataset mnist --download             # on (subsets of) real MNIST

Every configuration trains the same net from the same initial weights (seeded by --seed) for the
same number of steps (--steps) on the synthetic digits of fastconv.data (procedurally drawn, NOT
MNIST) or, with --dataset mnist, on random subsets of MNIST (--data-dir, --download), then reports
its accuracy on the test set. Optimizers: SGD with momentum (--momentum,
default 0.9) and Adam. A fixed number of steps means a bigger batch sees more images: the grid asks
which settings train fastest per step, the usual budget of a hyperparameter search. Runs are
deterministic: on a given machine the same arguments give the same numbers.

Writes to --out (default bench/out/grid/): grid.json (settings and one record per configuration)
and grid.png (heatmaps of test accuracy, learning rate x batch size, one panel per optimizer; skipped
with a message where matplotlib is not installed), and prints the results as a markdown table.
"""
import argparse
import json
import os
import platform
import sys
import time
from collections import OrderedDict

import torch

import fastconv
import fastconv.functional as FF
import fastconv.nn as fnn
from fastconv.data import DatasetFormatError, DatasetNotFoundError, add_arguments
from fastconv.progress import Progress

PLOT_SKIPPED = ('plot skipped: matplotlib is not installed (pip install "fastconv[bench]" adds it, and tqdm '
                'for progress bars; or pip install matplotlib tqdm)')

OPTIMIZERS = ("sgd", "adam")
DEFAULTS = dict(lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1), batch_sizes=(32, 64, 128), optimizers=OPTIMIZERS,
                steps=300, train_size=10000, test_size=2000)
QUICK = dict(lrs=(1e-3, 1e-2), batch_sizes=(16, 32), optimizers=OPTIMIZERS, steps=15, train_size=500,
             test_size=200)


# ---------------------------------------------------------------- data and net

def load_digits(train_size, test_size, seed=0, dataset="synthetic", data_dir=None, download=False, mirrors=None):
    """(train_x, train_y, test_x, test_y): synthetic digits, or a random subset of MNIST (from
    data_dir, fetched first when download), images float32 N x 1 x 28 x 28 normalised with the
    training set's mean and std, labels int64 0-9."""
    from fastconv import data

    return data.load(dataset, data_dir, download=download, mirrors=mirrors, train_size=train_size,
                     test_size=test_size, seed=seed).tensors()


def make_net():
    """Conv(8,5)-ReLU-Pool-Conv(16,5)-ReLU-Pool-Linear(64)-ReLU-Linear(10) on 1 x 28 x 28 (55 k
    parameters), fastconv.nn layers."""
    return torch.nn.Sequential(OrderedDict(
        conv1=fnn.Conv2d(1, 8, 5, padding=2), relu1=fnn.ReLU(), pool1=fnn.MaxPool2d(2),
        conv2=fnn.Conv2d(8, 16, 5, padding=2), relu2=fnn.ReLU(), pool2=fnn.MaxPool2d(2),
        flatten=torch.nn.Flatten(),
        fc1=fnn.Linear(16 * 7 * 7, 64), relu3=fnn.ReLU(),
        fc2=fnn.Linear(64, 10),
    ))


def make_optimizer(name, params, lr, momentum):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


# ---------------------------------------------------------------- one configuration

def run_config(data, optimizer, lr, batch_size, steps, seed=0, momentum=0.9):
    """Trains make_net() (initial weights and batch order fixed by seed) for `steps` steps and
    returns its record: test_accuracy, final_loss (mean of the last 10% of the steps' losses),
    seconds, diverged (a non-finite loss stopped the run), steps_done."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    net = make_net()
    opt = make_optimizer(optimizer, net.parameters(), lr, momentum)
    gen = torch.Generator().manual_seed(seed)
    losses, diverged, done = [], False, 0
    t0 = time.perf_counter()
    net.train()
    order, pos = torch.randperm(len(train_y), generator=gen), 0
    while done < steps:
        if pos + batch_size > len(train_y):  # a new epoch: reshuffle, drop the incomplete batch
            order, pos = torch.randperm(len(train_y), generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        loss = FF.cross_entropy(net(train_x[idx]), train_y[idx])
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        done += 1
    seconds = time.perf_counter() - t0
    net.eval()
    with torch.no_grad():
        correct = sum((net(test_x[i:i + 1000]).argmax(1) == test_y[i:i + 1000]).sum().item()
                      for i in range(0, len(test_y), 1000))
    tail = losses[-max(1, steps // 10):]
    return dict(optimizer=optimizer, lr=lr, batch_size=batch_size, steps=steps, steps_done=done,
                test_accuracy=correct / len(test_y),
                final_loss=float("nan") if diverged or not tail else sum(tail) / len(tail),
                diverged=diverged, seconds=seconds)


def grid_search(lrs, batch_sizes, optimizers, steps, train_size, test_size, seed=0, momentum=0.9,
                progress=True, dataset="synthetic", data_dir=None, download=False, mirrors=None):
    """One record of run_config per (optimizer, lr, batch size), in that nesting order."""
    if max(batch_sizes) > train_size:
        raise ValueError(f"batch size {max(batch_sizes)} exceeds the {train_size} training images")
    data = load_digits(train_size, test_size, seed, dataset, data_dir, download, mirrors)
    configs = [(o, lr, b) for o in optimizers for lr in lrs for b in batch_sizes]
    records = []
    with Progress(len(configs), "grid", unit="config", enabled=progress) as bar:
        for o, lr, b in configs:
            records.append(run_config(data, o, lr, b, steps, seed, momentum))
            best = max(records, key=lambda r: r["test_accuracy"])
            bar.update(1, postfix=f"best {best['test_accuracy']:.1%} ({best['optimizer']}, lr {best['lr']:g}, "
                                  f"batch {best['batch_size']})")
    return records


# ---------------------------------------------------------------- reporting

def markdown(records):
    best = max(r["test_accuracy"] for r in records)
    lines = ["| optimizer | learning rate | batch size | test accuracy | final train loss | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in records:
        acc = f"{r['test_accuracy']:.1%}" + (" (best)" if r["test_accuracy"] == best else "")
        loss = "diverged" if r["diverged"] else f"{r['final_loss']:.3f}"
        name = "SGD (momentum)" if r["optimizer"] == "sgd" else "Adam"
        lines.append(f"| {name} | {r['lr']:g} | {r['batch_size']} | {acc} | {loss} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def heatmap(records, path, title, momentum=0.9):
    """Draws the heatmaps to ``path``; False (nothing drawn) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import PercentFormatter

    optimizers = list(dict.fromkeys(r["optimizer"] for r in records))
    lrs = sorted({r["lr"] for r in records})
    sizes = sorted({r["batch_size"] for r in records})
    accs = [r["test_accuracy"] for r in records]
    vmin, vmax = min(accs), max(accs)
    if vmax - vmin < 1e-6:
        vmin -= 0.05
    best = max(accs)
    fig, axes = plt.subplots(1, len(optimizers), figsize=(max(6.5, 1.3 * len(sizes) * len(optimizers) + 2.6),
                                                          0.55 * len(lrs) + 2.3),
                             squeeze=False, layout="constrained")
    for ax, o in zip(axes[0], optimizers):
        grid = torch.full((len(lrs), len(sizes)), float("nan"))
        for r in records:
            if r["optimizer"] == o:
                grid[lrs.index(r["lr"]), sizes.index(r["batch_size"])] = r["test_accuracy"]
        im = ax.imshow(grid.numpy(), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for r in records:
            if r["optimizer"] != o:
                continue
            i, j = lrs.index(r["lr"]), sizes.index(r["batch_size"])
            bright = (r["test_accuracy"] - vmin) / (vmax - vmin) > 0.6
            text = f"{r['test_accuracy']:.1%}" + ("\ndiverged" if r["diverged"] else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="black" if bright else "white")
            if r["test_accuracy"] == best:  # every configuration that ties for best
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
        ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set_xlabel("batch size")
        ax.set_ylabel("learning rate")
        ax.set_title(f"SGD, momentum {momentum:g}" if o == "sgd" else "Adam", fontsize=11)
    fig.colorbar(im, ax=axes[0].tolist(), label="test accuracy (red box: best)", shrink=0.9,
                 format=PercentFormatter(1.0, decimals=0))
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _floats(text):
    return tuple(float(v) for v in text.split(",") if v)


def _ints(text):
    return tuple(int(v) for v in text.split(",") if v)


def _names(text):
    names = tuple(v.strip().lower() for v in text.split(",") if v.strip())
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown optimizer(s) {', '.join(bad)}; choose from {', '.join(OPTIMIZERS)}")
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lrs", type=_floats, default=None, metavar="LR,LR,...",
                    help=f"learning rates (default {','.join(f'{v:g}' for v in DEFAULTS['lrs'])})")
    ap.add_argument("--batch-sizes", type=_ints, default=None, metavar="B,B,...",
                    help=f"batch sizes (default {','.join(map(str, DEFAULTS['batch_sizes']))})")
    ap.add_argument("--optimizers", type=_names, default=None, metavar="NAME,...",
                    help="sgd (with momentum) and/or adam (default both)")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"training steps per configuration (default {DEFAULTS['steps']})")
    add_arguments(ap, dataset_help="synthetic digits (default) or random subsets of MNIST")
    ap.add_argument("--train-size", type=int, default=None,
                    help=f"training images (default {DEFAULTS['train_size']})")
    ap.add_argument("--test-size", type=int, default=None,
                    help=f"test images (default {DEFAULTS['test_size']})")
    ap.add_argument("--momentum", type=float, default=0.9, help="momentum of SGD (default 0.9)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the data, the initial weights and the batch order")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--quick", action="store_true",
                    help="a test-sized run (2 lr x 2 batch sizes x 2 optimizers, 15 steps, 500 images); "
                         "explicit options override its values")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--out", default=os.path.join("bench", "out", "grid"), metavar="DIR",
                    help="output folder for grid.json and grid.png (default bench/out/grid, relative to "
                         "the current folder)")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    settings = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    try:
        records = grid_search(**settings, seed=args.seed, momentum=args.momentum, progress=not args.no_progress,
                              dataset=args.dataset, data_dir=args.data_dir, download=args.download,
                              mirrors=args.mirror)
    except (DatasetNotFoundError, DatasetFormatError) as exc:
        sys.exit(f"bench/grid.py: {exc}")
    total = time.perf_counter() - t0
    best = max(records, key=lambda r: r["test_accuracy"])

    steps = f"{settings['steps']} steps per configuration"
    kind = "synthetic digits (NOT MNIST)" if args.dataset == "synthetic" else "MNIST images (random subsets)"
    data = f"{settings['train_size']} train / {settings['test_size']} test {kind}, seed {args.seed}"
    print(f"Test accuracy after {steps}, {data}:\n")
    print(markdown(records))
    ties = [r for r in records if r["test_accuracy"] == best["test_accuracy"]]
    print(f"\nbest ({best['test_accuracy']:.1%}): " +
          "; ".join(f"{r['optimizer']} lr {r['lr']:g} batch {r['batch_size']}" for r in ties) +
          f". {len(records)} configurations in {total:.1f} s")

    os.makedirs(args.out, exist_ok=True)
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}, fastconv {fastconv.__version__}")
    with open(os.path.join(args.out, "grid.json"), "w") as f:
        json.dump({"settings": {**settings, "momentum": args.momentum, "seed": args.seed, "quick": args.quick},
                   "model": make_net.__doc__.split("(")[0].strip(), "data": kind, "dataset": args.dataset,
                   "machine": machine, "seconds": total, "best": best, "results": records}, f, indent=1)
    written = [os.path.join(args.out, "grid.json")]
    try:
        if heatmap(records, os.path.join(args.out, "grid.png"), f"Test accuracy after {steps}\n{data}", args.momentum):
            written.append(os.path.join(args.out, "grid.png"))
        else:
            print(PLOT_SKIPPED)
    except Exception as exc:  # the results are written: a failing plot does not fail the run
        print(f"plot failed ({type(exc).__name__}: {exc}); the results are in grid.json")
    print(f"wrote {' and '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
