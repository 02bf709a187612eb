"""Roofline estimate of fastconv's CUDA kernels on an NVIDIA H200, for the reference nets' layers.

    python bench/roofline.py [--batch-size 128] [--precision float32|tf32|float16|all] [--markdown bench/ROOFLINE.md]

An ESTIMATE from the chip's published peaks, not a measurement: for each kernel, its FLOPs, the
bytes it must move at least (every operand read once, every result written once), its arithmetic
intensity, the bound it should hit (memory or compute) and the time that bound implies. Measured
GPU times come from `python bench/ops.py --device cuda` (scripts/gpu.sh) on a machine with a GPU.

Peaks used (H200 SXM: 132 SMs at up to 1.98 GHz, HBM3e, memory 4.8 TB/s), per precision of the
convolution and linear kernels:
    float32   CUDA cores (the SIMT GEMM kernel): 67 TFLOP/s (132 SMs x 128 lanes x 2 FLOPs x 1.98 GHz)
    tf32      tensor cores (fastconv.backends.allow_tf32): 495 TFLOP/s dense, 4-byte operands
    float16   tensor cores (float16 / bfloat16 inputs, float32 accumulators): 989 TFLOP/s dense,
              2-byte operands
The element-wise kernels are memory-bound in every precision; their rows scale with the element size.
"""
import argparse
import sys

BANDWIDTH = 4.8e12
# precision -> (peak FLOP/s of the GEMM kernels, bytes per element, what runs them)
PRECISIONS = {
    "float32": (67e12, 4, "CUDA cores"),
    "tf32": (495e12, 4, "tensor cores, tf32"),
    "float16": (989e12, 2, "tensor cores, float16/bfloat16 with float32 accumulation"),
}
F32 = 4  # bytes per element of the rows below; table() rescales them


def conv_rows(batch):
    # (net, c_in, c_out, hw, pad) of the 3x3 convolutions of the Keras MNIST and CIFAR-10 nets
    layers = [("mnist", 1, 32, 28, 0), ("mnist", 32, 64, 26, 0), ("cifar", 3, 32, 32, 1), ("cifar", 32, 32, 32, 0),
              ("cifar", 32, 64, 15, 1), ("cifar", 64, 64, 15, 0)]
    rows = []
    for net, cin, cout, hw, pad in layers:
        out = hw + 2 * pad - 2
        m, k = batch * out * out, cin * 9
        x, w, y = batch * cin * hw * hw, cout * cin * 9, batch * cout * out * out
        shape = f"{net} {cin}->{cout} {hw}x{hw}"
        rows.append(("conv2d forward", shape, 2 * m * cout * k, (x + w + y) * F32))
        rows.append(("conv2d grad input", shape, 2 * batch * hw * hw * cin * cout * 9, (y + w + x) * F32))
        rows.append(("conv2d grad weight", shape, 2 * cout * k * m, (y + x + w) * F32))
    return rows


def linear_rows(batch):
    rows = []
    for net, fin, fout in [("mnist", 9216, 128), ("mnist", 128, 10), ("cifar", 2304, 512), ("cifar", 512, 10)]:
        flops = 2 * batch * fin * fout
        moved = (batch * fin + fin * fout + batch * fout) * F32
        shape = f"{net} {fin}->{fout}"
        rows += [("linear forward", shape, flops, moved), ("linear grad input", shape, flops, moved),
                 ("linear grad weight", shape, flops, moved)]
    return rows


def elementwise_rows(batch):
    relu = batch * 64 * 24 * 24
    pool_in, pool_out = batch * 64 * 24 * 24, batch * 64 * 12 * 12
    return [
        ("relu forward", f"mnist ({batch}, 64, 24, 24)", relu, 2 * relu * F32),
        ("relu backward", f"mnist ({batch}, 64, 24, 24)", relu, 3 * relu * F32),
        ("max_pool2d forward", f"mnist ({batch}, 64, 24, 24) k2", 3 * pool_out, pool_in * F32 + pool_out * (F32 + 8)),
        ("max_pool2d backward", f"mnist ({batch}, 64, 24, 24) k2", pool_in, pool_out * (F32 + 8) + pool_in * F32),
        ("dropout", f"mnist ({batch}, 64, 12, 12)", 60 * pool_out // 4, 2 * pool_out * F32),
        ("cross_entropy fwd+bwd", f"{batch}x10", 14 * batch * 10, (3 * batch * 10 + batch * 3) * F32),
    ]


def table(batch, precision="float32"):
    peak, size, engine = PRECISIONS[precision]
    lines = [f"Roofline ESTIMATE for an H200 (not a measurement), batch {batch}, {precision}: peaks "
             f"{peak / 1e12:.0f} TFLOP/s ({engine}), {BANDWIDTH / 1e12:.1f} TB/s; ridge point "
             f"{peak / BANDWIDTH:.1f} FLOP/byte.", "",
             "| kernel | shape | GFLOP | MB moved (min) | FLOP/byte | bound | time at the bound (us) |",
             "|---|---|---:|---:|---:|---|---:|"]
    gemm = conv_rows(batch) + linear_rows(batch)
    for i, (name, shape, flops, moved) in enumerate(gemm + elementwise_rows(batch)):
        moved = moved * size / F32
        rate = peak if i < len(gemm) else PRECISIONS["float32"][0]  # element-wise kernels: CUDA cores
        intensity = flops / moved
        compute_s, memory_s = flops / rate, moved / BANDWIDTH
        bound = "compute" if compute_s > memory_s else "memory"
        lines.append(f"| {name} | {shape} | {flops / 1e9:.3f} | {moved / 1e6:.2f} | {intensity:.1f} | {bound} | "
                     f"{max(compute_s, memory_s) * 1e6:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", choices=[*PRECISIONS, "all"], default="all")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    chosen = list(PRECISIONS) if args.precision == "all" else [args.precision]
    text = "\n\n".join(table(args.batch_size, p) for p in chosen)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("# CUDA kernels: roofline estimate\n\n" + text + "\n\nWritten by `python bench/roofline.py "
                    f"--batch-size {args.batch_size} --precision {args.precision} --markdown {args.markdown}`. Measured GPU figures belong "
                    "next to these once a GPU has run `bash scripts/gpu.sh`.\n")


if __name__ == "__main__":
    sys.exit(main())
