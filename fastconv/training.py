"""A minimal training loop for the examples and demos: Adam on fastconv's cross-entropy over
in-memory tensors, and test accuracy. (bench/train.py has the full loop: both implementations,
DDP, timing and plots.)"""
import math
import time

import torch

from . import functional as FF
from .progress import Progress


def fit(net, x, y, *, epochs=1, batch_size=64, lr=1e-3, seed=0, desc="training", progress=False):
    """Adam over the parameters of `net` that require grad, on fastconv's cross-entropy; batches in a
    random order fixed by `seed`. Returns (loss of the last batch, seconds taken)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    steps = epochs * math.ceil(len(y) / batch_size)
    bar = Progress(steps, desc, unit="batch", enabled=progress)
    loss = torch.tensor(float("nan"))
    t0 = time.perf_counter()
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            loss = FF.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1, postfix=f"loss {loss.item():.3f}" if progress else "")
    bar.close()
    return loss.item(), time.perf_counter() - t0


@torch.no_grad()
def accuracy(net, x, y, batch_size=500):
    """Fraction of `x` whose arg-max class is `y`, in eval mode."""
    net.eval()
    correct = sum((net(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(y), batch_size))
    return correct / len(y)
