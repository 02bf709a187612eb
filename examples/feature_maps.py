"""What a trained CNN sees: its first-layer filters and the feature maps of one image.

    python examples/feature_maps.py                          # train briefly, then draw
    python examples/feature_maps.py --checkpoint net.pt      # train once and save; later runs load it
    python examples/feature_maps.py --model mnist --epochs 2 # the classic Keras MNIST net instead
    python examples/feature_maps.py --dataset mnist --download   # on real MNIST (fetched once into ./data)

Trains a small fastconv CNN (every conv, ReLU, pool, linear and loss computed by fastconv's kernels)
on the synthetic digits of fastconv.data (procedurally drawn, NOT MNIST) or on a random subset of
MNIST (--dataset mnist, --data-dir, --download) for a short time, or loads it from --checkpoint,
then writes to --out (matplotlib needed; without it the drawing is skipped with a message):

    filters.png        the filters of the first convolution (blue negative, red positive)
    feature_maps.png   one test image and its feature maps after each of the first convolutions
                       (after the ReLU: what the next layer receives)

The defaults (one epoch over 6000 images) take a few seconds on two cores.
"""
import argparse
import importlib.util
import math
import os
import sys
import time
from collections import OrderedDict

import torch

import fastconv.functional as FF
from fastconv.training import accuracy, fit
import fastconv.nn as fnn
from fastconv.data import DatasetFormatError, DatasetNotFoundError, add_arguments
from fastconv.models import mnist_net

PLOT_SKIPPED = ('plot skipped: matplotlib is not installed (pip install "fastconv[bench]" adds it; '
                'or pip install matplotlib)')


# ---------------------------------------------------------------- data

def load_digits(train_size, test_size, seed=0, dataset="synthetic", data_dir=None, download=False, mirrors=None):
    """(train_x, train_y, test_x, test_y): synthetic digits, or a random subset of MNIST (from
    data_dir, fetched first when download), images float32 N x 1 x 28 x 28 normalised with the
    training set's mean and std, labels int64. Also returns the raw test images in [0, 1] for
    display, as a fifth element."""
    from fastconv import data

    ds = data.load(dataset, data_dir, download=download, mirrors=mirrors, train_size=train_size,
                   test_size=test_size, seed=seed)
    return (*ds.tensors(), ds.test_images.float() / 255.0)


# ---------------------------------------------------------------- models

def small_net(num_classes=10):
    """A LeNet-like net for 1 x 28 x 28 images with 5 x 5 filters (they are nicer to look at than
    3 x 3 ones): Conv(12,5)-ReLU-Pool-Conv(24,5)-ReLU-Pool-Dropout-Linear(128)-ReLU-Linear."""
    return torch.nn.Sequential(OrderedDict(
        conv1=fnn.Conv2d(1, 12, 5, padding=2), relu1=fnn.ReLU(), pool1=fnn.MaxPool2d(2),     # 12 x 14 x 14
        conv2=fnn.Conv2d(12, 24, 5, padding=2), relu2=fnn.ReLU(), pool2=fnn.MaxPool2d(2),    # 24 x 7 x 7
        flatten=torch.nn.Flatten(), dropout=fnn.Dropout(0.25),
        fc1=fnn.Linear(24 * 7 * 7, 128), relu3=fnn.ReLU(),
        fc2=fnn.Linear(128, num_classes),
    ))


MODELS = {"small": small_net, "mnist": lambda: mnist_net()}


# ---------------------------------------------------------------- what the net sees

@torch.no_grad()
def feature_maps(net, image, layers=2):
    """[(name, maps C x H x W)] after the ReLU of each of the first `layers` convolutions of net,
    for one normalised image (1 x H x W), captured with forward hooks."""
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)][:layers]
    captured, hooks = [], []
    for k, (name, conv) in enumerate(convs):
        label = f"convolution {k + 1} ('{name}')"
        hooks.append(conv.register_forward_hook(
            lambda module, args, out, label=label: captured.append((label, FF.relu(out[0])))))
    try:
        net.eval()
        net(image[None])
    finally:
        for h in hooks:
            h.remove()
    return captured


def _grid(n, max_cols):
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def plot_filters(net, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    w = conv.weight.detach()[:, 0]  # first input channel: C_out x k x k
    lim = w.abs().max().item()
    rows, cols = _grid(len(w), 8)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.55 * rows + 0.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(w):
            ax.imshow(w[i].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(f"filter {i}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_feature_maps(raw_image, label, prediction, maps, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    max_cols = 12
    layout = [_grid(len(m), max_cols) for _, m in maps]
    heights = [2.0] + [r for r, _ in layout]
    fig = plt.figure(figsize=(1.1 * max_cols, 1.25 * sum(heights) + 0.45 * len(heights) + 0.4),
                     layout="constrained")
    subfigs = fig.subfigures(len(heights), 1, height_ratios=[h + 0.35 for h in heights])

    ax = subfigs[0].subplots(1, 1)
    ax.imshow(raw_image.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    subfigs[0].suptitle(f"{title}\ninput: a test image of a {label} (the net says {prediction})", fontsize=11)

    for sub, (name, m), (rows, cols) in zip(subfigs[1:], maps, layout):
        axes = sub.subplots(rows, max_cols, squeeze=False)
        vmax = max(m.max().item(), 1e-12)  # one scale per layer: which maps respond, and how much
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < len(m):
                ax.imshow(m[i].numpy(), cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
                ax.set_title(str(i), fontsize=7, pad=2)
        sub.suptitle(f"{name}: {len(m)} feature maps of {m.shape[1]} x {m.shape[2]} after ReLU "
                     "(black = 0, one colour scale per layer)", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="small",
                    help="small: a LeNet-like net with 12 5x5 filters (default); "
                         "mnist: fastconv.models.mnist_net (32 3x3 filters, slower)")
    ap.add_argument("--checkpoint", default=None, metavar="PATH",
                    help="if PATH exists, load the net from it instead of training; otherwise train "
                         "and save the net there")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    add_arguments(ap, dataset_help="synthetic digits (default) or a random subset of MNIST")
    ap.add_argument("--train-size", type=int, default=6000, help="training images (default 6000)")
    ap.add_argument("--test-size", type=int, default=1000, help="test images (default 1000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the data, the initial weights and the batch order")
    ap.add_argument("--index", type=int, default=0, help="which test image to show (default 0)")
    ap.add_argument("--layers", type=int, default=2, help="how many convolutions to show feature maps of")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--out", default=os.path.join("examples", "out", "feature_maps"), metavar="DIR",
                    help="output folder (default examples/out/feature_maps, relative to the current folder)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    try:
        train_x, train_y, test_x, test_y, test_raw = load_digits(args.train_size, args.test_size, args.seed,
                                                                 args.dataset, args.data_dir, args.download,
                                                                 args.mirror)
    except (DatasetNotFoundError, DatasetFormatError) as exc:
        sys.exit(f"examples/feature_maps.py: {exc}")
    kind = "synthetic digits (procedurally drawn, NOT MNIST)" if args.dataset == "synthetic" else "MNIST images"
    print(f"data: {len(train_y)} train / {len(test_y)} test {kind} in {time.perf_counter() - t0:.1f} s")

    torch.manual_seed(args.seed)
    net = MODELS[args.model]()
    if args.checkpoint and os.path.exists(args.checkpoint):
        saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        if saved.get("model") != args.model:
            sys.exit(f"{args.checkpoint} holds a {saved.get('model')!r} net, not {args.model!r} (see --model)")
        net.load_state_dict(saved["state_dict"])
        print(f"loaded the {args.model} net from {args.checkpoint}")
    else:
        loss, secs = fit(net, train_x, train_y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, progress=not args.no_progress)
        print(f"trained the {args.model} net for {args.epochs} epoch(s) in {secs:.1f} s "
              f"(last batch loss {loss:.3f})")
        if args.checkpoint:
            os.makedirs(os.path.dirname(os.path.abspath(args.checkpoint)), exist_ok=True)
            torch.save({"model": args.model, "state_dict": net.state_dict()}, args.checkpoint)
            print(f"saved it to {args.checkpoint}")
    acc = accuracy(net, test_x, test_y)
    print(f"test accuracy: {acc:.1%}")
    if importlib.util.find_spec("matplotlib") is None:
        print(PLOT_SKIPPED)
        return 0

    os.makedirs(args.out, exist_ok=True)
    i = args.index
    maps = feature_maps(net, test_x[i], args.layers)
    with torch.no_grad():
        prediction = net(test_x[i:i + 1]).argmax(1).item()
    trained = f"(test accuracy {acc:.1%} on {'synthetic digits' if args.dataset == 'synthetic' else 'MNIST'})"
    plot_filters(net, os.path.join(args.out, "filters.png"),
                 f"First-layer filters of the trained {args.model} net {trained}\n"
                 "weights: blue negative, white zero, red positive (one scale for all)")
    plot_feature_maps(test_raw[i, 0], test_y[i].item(), prediction, maps,
                      os.path.join(args.out, "feature_maps.png"), f"What the trained {args.model} net sees {trained}")
    print(f"wrote {os.path.join(args.out, 'filters.png')} and {os.path.join(args.out, 'feature_maps.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
