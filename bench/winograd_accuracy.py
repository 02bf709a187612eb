"""Accuracy of fastconv's CPU convolutions against a float64 reference, next to torch's float32.

For every 3x3 layer of the two reference nets and the 5x5 layers of fastconv.models' LeNet-5 and AlexNet
(batch 16 by default), the forward output, grad input and grad weight are computed in float32 by fastconv's
Winograd path (F(4x4, 3x3), F(2x2, 5x5)), by its direct GEMM path
(FASTCONV_CPU_CONV=winograd / =gemm) and by torch, and compared with torch in float64 on the same
values. The error is the largest absolute difference divided by the largest absolute reference value.

    python bench/winograd_accuracy.py               # markdown table
    python bench/winograd_accuracy.py --batch 4 --json out.json
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

import fastconv  # noqa: F401  (registers torch.ops.fastconv)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ops import cpu_name  # noqa: E402

ops = torch.ops.fastconv

# (net, C_in, C_out, H = W, padding, kernel): the 3x3 layers of fastconv.models' MNIST and CIFAR-10 nets,
# and the 5x5 ones of its LeNet-5 (MNIST) and AlexNet (CIFAR-10)
LAYERS = [("mnist", 1, 32, 28, 0, 3), ("mnist", 32, 64, 26, 0, 3), ("cifar", 3, 32, 32, 1, 3),
          ("cifar", 32, 32, 32, 0, 3), ("cifar", 32, 64, 15, 1, 3), ("cifar", 64, 64, 15, 0, 3),
          ("lenet5", 1, 6, 28, 2, 5), ("lenet5", 6, 16, 14, 0, 5), ("alexnet", 3, 32, 32, 2, 5),
          ("alexnet", 32, 64, 16, 2, 5)]


def rel_err(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max()).item()


def fastconv_passes(x, w, dy, pad, mode):
    os.environ["FASTCONV_CPU_CONV"] = mode
    try:
        args = ([1, 1], [pad] * 4, [1, 1], 1)
        return (ops.conv2d(x, w, None, *args, False), ops.conv2d_grad_input(dy, w, list(x.shape), *args),
                ops.conv2d_grad_weight(dy, x, list(w.shape), *args))
    finally:
        os.environ.pop("FASTCONV_CPU_CONV", None)


def torch_passes(x, w, dy, pad):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = F.conv2d(x, w, None, padding=pad)
    return (y.detach(), *torch.autograd.grad(y, [x, w], dy.to(y.dtype)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    rows = []
    for net, cin, cout, hw, pad, k in LAYERS:
        x = torch.randn(args.batch, cin, hw, hw, generator=g)
        w = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
        dy = torch.randn(args.batch, cout, hw + 2 * pad - k + 1, hw + 2 * pad - k + 1, generator=g)
        ref = torch_passes(x.double(), w.double(), dy.double(), pad)
        row = {"layer": f"{net} {cin}->{cout} {hw}x{hw} k{k} p{pad}"}
        for who, got in [("winograd", fastconv_passes(x, w, dy, pad, "winograd")),
                         ("gemm", fastconv_passes(x, w, dy, pad, "gemm")), ("torch", torch_passes(x, w, dy, pad))]:
            for name, a, r in zip(("fwd", "dx", "dw"), got, ref):
                row[f"{who}_{name}"] = rel_err(a, r)
        rows.append(row)
    print(f"max |error| / max |float64 value|, batch {args.batch}, float32, on {cpu_name()}, "
          f"{torch.get_num_threads()} threads; both paths forced on every layer (by default the layers of 1-6 input "
          "channels take the GEMM forward, see csrc/cpu/conv2d.cpp)\n")
    print("| layer | pass | fastconv Winograd | fastconv GEMM | torch | Winograd / torch |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        for name, label in [("fwd", "forward"), ("dx", "grad input"), ("dw", "grad weight")]:
            wi, ge, to = row[f"winograd_{name}"], row[f"gemm_{name}"], row[f"torch_{name}"]
            print(f"| {row['layer']} | {label} | {wi:.2e} | {ge:.2e} | {to:.2e} | {wi / to:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": cpu_name(), "batch": args.batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
