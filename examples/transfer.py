"""Transfer learning with fastconv: reuse convolutions trained on digits 0-4 to recognise 5-9.

    python examples/transfer.py                                  # about 10 s on two cores
    python examples/transfer.py --target-size 100                # fewer labelled images of 5-9
    python examples/transfer.py --source-size 20000 --source-epochs 5 --head-epochs 30   # bigger
    python examples/transfer.py --dataset mnist --download       # real MNIST (fetched once into ./data)

1. Source task: a small CNN (a conv stack `features` and a linear `head`) is trained on the
   synthetic digits 0-4 of fastconv.data (procedurally drawn, NOT MNIST), or on MNIST's 0-4 with
   --dataset mnist (--data-dir, --download).
2. Transfer: its convolutions are frozen (requires_grad False), its head is replaced by a new
   Linear for 5 classes, and only that head is trained on a few digits 5-9.
3. Control: the same new head (same initial weights, same batches, same optimizer) trained on a
   conv stack of the same shape left at its *random* initialisation, also frozen.
4. Reference: the whole net trained from scratch on the same few digits 5-9 for as many steps.

Prints a table of test accuracy on digits 5-9 and writes it, with the settings, as JSON to --out.
The features learned on 0-4 (strokes, curves, junctions) serve 5-9 too: (a) beats (b), by a wide
margin when the target set is small. Every layer runs on fastconv's kernels.
"""
import argparse
import copy
import json
import os
import sys
import time
from collections import OrderedDict

import torch

from fastconv.training import accuracy, fit
import fastconv.nn as fnn
from fastconv.data import DatasetFormatError, DatasetNotFoundError, add_arguments


SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)


# ---------------------------------------------------------------- data

def load_digits(train_size, test_size, seed=0, dataset="synthetic", data_dir=None, download=False, mirrors=None):
    """(train_x, train_y, test_x, test_y): synthetic digits (that many), or all of MNIST (from
    data_dir, fetched first when download; the sizes are then ignored), images float32 N x 1 x 28 x 28
    normalised with the training set's mean and std, labels int64 0-9."""
    from fastconv import data

    if dataset == "synthetic":
        return data.load("synthetic", train_size=train_size, test_size=test_size, seed=seed).tensors()
    return data.load(dataset, data_dir, download=download, mirrors=mirrors).tensors()


def task(x, y, classes, size):
    """The first `size` images of x whose label is in `classes`, labels renumbered 0..len(classes)-1."""
    keep = torch.nonzero(torch.isin(y, torch.tensor(classes))).flatten()[:size]
    if len(keep) < size:
        raise ValueError(f"only {len(keep)} images of classes {classes}, {size} wanted")
    return x[keep], y[keep] - min(classes)


# ---------------------------------------------------------------- the net

FEATURES = 32 * 7 * 7  # what the conv stack makes of a 1 x 28 x 28 image


def make_net(num_classes=5):
    """A conv stack `features` (Conv(16,5)-ReLU-Pool-Conv(32,5)-ReLU-Pool-Flatten: 1 x 28 x 28 ->
    1568 features) and a linear classifier `head`, all fastconv.nn layers."""
    features = torch.nn.Sequential(
        fnn.Conv2d(1, 16, 5, padding=2), fnn.ReLU(), fnn.MaxPool2d(2),    # 16 x 14 x 14
        fnn.Conv2d(16, 32, 5, padding=2), fnn.ReLU(), fnn.MaxPool2d(2),   # 32 x 7 x 7
        torch.nn.Flatten(),
    )
    return torch.nn.Sequential(OrderedDict(features=features, head=fnn.Linear(FEATURES, num_classes)))


def new_head(num_classes, seed):
    """A fresh Linear head; the same seed gives the same initial weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return fnn.Linear(FEATURES, num_classes)


def freeze(module):
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def trainable(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)



# ---------------------------------------------------------------- the demo

def transfer_demo(source_size=6000, target_size=500, test_size=1000, source_epochs=3, head_epochs=20,
                  batch_size=64, lr=1e-3, seed=0, scratch=True, progress=False, log=None, dataset="synthetic",
                  data_dir=None, download=False, mirrors=None):
    """Runs the experiment of this module's docstring and returns its results as a dict:

        config               the arguments
        source               {classes, train_images, test_images, test_accuracy, seconds}
        target               {classes, train_images, test_images}
        results              {name: {description, conv_stack, trainable_parameters, test_accuracy,
                              seconds}} for "transferred", "random_features" and (if scratch)
                              "scratch": accuracies on the test digits 5-9
        frozen_unchanged     whether head training left the frozen conv weights bit for bit intact

    source_size / target_size: training images of digits 0-4 / 5-9; test_size: test images of each.
    log: a print-like function for progress lines (None: silent). dataset: "synthetic" or "mnist"
    (from data_dir, fetched first when download, from mirrors).
    """
    config = dict(source_size=source_size, target_size=target_size, test_size=test_size,
                  source_epochs=source_epochs, head_epochs=head_epochs, batch_size=batch_size, lr=lr,
                  seed=seed, scratch=scratch, dataset=dataset)
    say = log or (lambda *a, **k: None)
    t0 = time.perf_counter()
    # the classes are balanced: 2n + 10 images hold at least n of each half
    n_train, n_test = 2 * max(source_size, target_size) + 10, 2 * test_size + 10
    train_x, train_y, test_x, test_y = load_digits(n_train, n_test, seed, dataset, data_dir, download, mirrors)
    src_x, src_y = task(train_x, train_y, SOURCE_CLASSES, source_size)
    src_tx, src_ty = task(test_x, test_y, SOURCE_CLASSES, test_size)
    tgt_x, tgt_y = task(train_x, train_y, TARGET_CLASSES, target_size)
    tgt_tx, tgt_ty = task(test_x, test_y, TARGET_CLASSES, test_size)
    kind = "synthetic digits (procedurally drawn, NOT MNIST)" if dataset == "synthetic" else "MNIST images"
    say(f"data: {len(train_y)} train / {len(test_y)} test {kind}, {time.perf_counter() - t0:.1f} s")

    # 1. the source task: digits 0-4
    torch.manual_seed(seed)
    net = make_net(len(SOURCE_CLASSES))
    _, secs = fit(net, src_x, src_y, epochs=source_epochs, batch_size=batch_size, lr=lr, seed=seed,
                  desc="source: digits 0-4", progress=progress)
    source = dict(classes=list(SOURCE_CLASSES), train_images=len(src_y), test_images=len(src_ty),
                  test_accuracy=accuracy(net, src_tx, src_ty), seconds=secs)
    say(f"source net trained on {len(src_y)} digits 0-4 in {secs:.1f} s: "
        f"test accuracy {source['test_accuracy']:.1%} on digits 0-4")

    def fit_head(net, name, desc, conv_stack):
        freeze(net.features)
        net.head = new_head(len(TARGET_CLASSES), seed + 1)  # (a) and (b): the same initial head
        before = copy.deepcopy(net.features.state_dict())
        _, secs = fit(net, tgt_x, tgt_y, epochs=head_epochs, batch_size=batch_size, lr=lr, seed=seed + 1,
                      desc=name, progress=progress)
        unchanged = all(torch.equal(before[k], v) for k, v in net.features.state_dict().items())
        return dict(description=desc, conv_stack=conv_stack, trainable_parameters=trainable(net),
                    test_accuracy=accuracy(net, tgt_tx, tgt_ty), seconds=secs), unchanged

    # 2. transfer: frozen convolutions of the source net, new head trained on digits 5-9
    results, unchanged = {}, []
    results["transferred"], ok = fit_head(net, "transferred", "new head on the frozen conv stack trained on 0-4",
                                          "trained on digits 0-4, frozen")
    unchanged.append(ok)
    # 3. control: the same head on a frozen, randomly initialised conv stack
    torch.manual_seed(seed + 2)
    results["random_features"], ok = fit_head(make_net(len(TARGET_CLASSES)), "random features",
                                              "new head on a frozen randomly initialised conv stack",
                                              "random initialisation, frozen")
    unchanged.append(ok)
    # 4. reference: everything trained from scratch on the few digits 5-9, as many steps
    if scratch:
        torch.manual_seed(seed + 2)
        net = make_net(len(TARGET_CLASSES))
        net.head = new_head(len(TARGET_CLASSES), seed + 1)
        _, secs = fit(net, tgt_x, tgt_y, epochs=head_epochs, batch_size=batch_size, lr=lr, seed=seed + 1,
                      desc="from scratch", progress=progress)
        results["scratch"] = dict(description="whole net trained from scratch on 5-9 only",
                                  conv_stack="random initialisation, trained on digits 5-9",
                                  trainable_parameters=trainable(net),
                                  test_accuracy=accuracy(net, tgt_tx, tgt_ty), seconds=secs)

    target = dict(classes=list(TARGET_CLASSES), train_images=len(tgt_y), test_images=len(tgt_ty))
    return dict(config=config, source=source, target=target, results=results,
                frozen_unchanged=all(unchanged))


def table(result):
    """The results as a markdown table."""
    t = result["target"]
    lines = [f"Test accuracy on digits 5-9 ({t['test_images']} test images) after training on "
             f"{t['train_images']} images of 5-9:", "",
             "| run | conv stack | trained parameters | test accuracy |", "|---|---|---:|---:|"]
    labels = {"transferred": "(a) transferred", "random_features": "(b) random features",
              "scratch": "(c) from scratch"}
    for name, r in result["results"].items():
        lines.append(f"| {labels.get(name, name)} | {r['conv_stack']} | {r['trainable_parameters']:,} | "
                     f"{r['test_accuracy']:.1%} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap, dataset_help="synthetic digits (default) or MNIST")
    ap.add_argument("--source-size", type=int, default=6000, help="training images of digits 0-4 (default 6000)")
    ap.add_argument("--target-size", type=int, default=500,
                    help="training images of digits 5-9 for the new head (default 500)")
    ap.add_argument("--test-size", type=int, default=1000, help="test images of each half (default 1000)")
    ap.add_argument("--source-epochs", type=int, default=3, help="epochs of the source net on 0-4 (default 3)")
    ap.add_argument("--head-epochs", type=int, default=20, help="epochs of each head on 5-9 (default 20)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of every phase (default 1e-3)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the data, the weights and the batch orders")
    ap.add_argument("--no-scratch", action="store_true", help="skip the from-scratch reference (c)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--out", default=os.path.join("examples", "out", "transfer.json"), metavar="PATH",
                    help="JSON file to write (default examples/out/transfer.json, relative to the current folder)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    try:
        result = transfer_demo(args.source_size, args.target_size, args.test_size, args.source_epochs,
                               args.head_epochs, args.batch_size, args.lr, args.seed, scratch=not args.no_scratch,
                               progress=not args.no_progress, log=print, dataset=args.dataset,
                               data_dir=args.data_dir, download=args.download, mirrors=args.mirror)
    except (DatasetNotFoundError, DatasetFormatError) as exc:
        sys.exit(f"examples/transfer.py: {exc}")
    result["seconds"] = time.perf_counter() - t0
    print()
    print(table(result))
    print(f"\nfrozen conv weights unchanged by head training: {result['frozen_unchanged']}; "
          f"{result['seconds']:.1f} s in all")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
