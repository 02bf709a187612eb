"""Per-direction timing of convolution layers: fastconv's forward, grad input and grad weight ops against
torch's (F.conv2d, and aten.convolution_backward for each gradient alone), medians of 15 calls after 3
warm-up calls, "same" padding (kernel // 2), stride 1, batch 128, float32 on the CPU. Default: the conv
layers of fastconv.models.yolo on 32x32 inputs.

    python bench/conv_layers.py                          # the YOLO backbone's layers
    python bench/conv_layers.py 128,256,4,3 64,64,13,3   # C_in,C_out,H=W,kernel each
    FASTCONV_CPU_CONV=gemm python bench/conv_layers.py   # forcing an algorithm (also =winograd)

Prints, per layer and direction, "fastconv ms / torch ms = ratio" (below 1: fastconv is faster), then the
totals over the layers.
"""
import sys
import time

import torch
import torch.nn.functional as F

import fastconv  # noqa: F401  (registers torch.ops.fastconv)

ops = torch.ops.fastconv

# (C_in, C_out, H = W, kernel) of fastconv.models.yolo's convolutions on 32x32 inputs
YOLO_LAYERS = [(3, 32, 32, 3), (32, 64, 16, 3), (64, 128, 8, 3), (128, 64, 8, 1), (64, 128, 8, 3),
               (128, 256, 4, 3), (256, 128, 4, 1), (128, 256, 4, 3), (256, 10, 4, 1)]


def median_ms(fn, reps=15, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def time_layer(cin, cout, hw, k, batch=128):
    """{direction: (fastconv ms, torch ms)} for one layer."""
    p = k // 2
    x = torch.randn(batch, cin, hw, hw)
    w = torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5
    b = torch.randn(cout)
    dy = torch.randn_like(F.conv2d(x, w, b, padding=p))
    args = ([1, 1], [p] * 4, [1, 1], 1)

    def torch_grad(which):
        mask = [which == "input", which == "weight", False]
        return lambda: torch.ops.aten.convolution_backward(dy, x, w, [cout], [1, 1], [p, p], [1, 1], False, [0, 0],
                                                           1, mask)

    return {
        "f": (median_ms(lambda: ops.conv2d(x, w, b, *args)), median_ms(lambda: F.conv2d(x, w, b, padding=p))),
        "gi": (median_ms(lambda: ops.conv2d_grad_input(dy, w, list(x.shape), *args)), median_ms(torch_grad("input"))),
        "gw": (median_ms(lambda: ops.conv2d_grad_weight(dy, x, list(w.shape), *args)),
               median_ms(torch_grad("weight"))),
    }


def line(results):
    return "  ".join(f"{d} {a:6.2f}/{b:6.2f}={a / b:4.2f}" for d, (a, b) in results.items())


def main(argv):
    layers = [tuple(map(int, a.split(","))) for a in argv] if argv else YOLO_LAYERS
    total = {"f": [0.0, 0.0], "gi": [0.0, 0.0], "gw": [0.0, 0.0]}
    for cin, cout, hw, k in layers:
        results = time_layer(cin, cout, hw, k)
        for d, (a, b) in results.items():
            total[d][0] += a
            total[d][1] += b
        print(f"{cin:4d}->{cout:4d} {hw:2d}x{hw:2d} k{k}  {line(results)}")
    print(f"total               {line(total)}")


if __name__ == "__main__":
    main(sys.argv[1:])
