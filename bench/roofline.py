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

The GEMM rows add what fastconv's own kernels (csrc/cuda/gemm.cuh) can reach, from their design -- also
an ESTIMATE, by three ceilings, whichever is lowest:
  - waves: a GEMM of ceil(M/64) x ceil(N/64) x splits blocks (splits as gemm::splits_for picks them) on
    132 SMs with 3 resident tensor-core blocks (2 SIMT) per SM; a last partial wave idles the rest;
  - shared memory: 128 bytes per cycle per SM. The tensor-core kernel's warps own 32 x 32 of the tile
    and read their fragments by ldmatrix: 16 wavefronts of 128 bytes per 8 mma per 8 K-words, i.e.
    2048 (16-bit) or 1024 (tf32) FLOP per cycle per SM, about 54% of the tensor peak (3784 / 1892 per
    cycle per SM at 1.98 GHz). The SIMT kernel's 4 x 4 tiles read 3 wavefronts per k per warp for
    512 FMAs: 341 FLOP per cycle per SM, above the 256 of the CUDA cores, so it is issue-bound there
    (taken as 80% of the CUDA-core peak: 16 FMAs per 2 shared loads plus the cursor arithmetic);
  - tile traffic: a 64 x 64 block tile loads (64 + 64) x BK elements per 2 x 64 x 64 x BK FLOPs: 64 /
    (bytes per element) FLOP per byte from L2, at an assumed 7 TB/s of L2 bandwidth (not a published
    figure for the H200: microbenchmarks of the H100 report 5.5-10 TB/s).
"""
import argparse
import sys

BANDWIDTH = 4.8e12
SMS, CLOCK, L2_BANDWIDTH = 132, 1.98e9, 7e12
TILE = 64
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
        rows.append(("conv2d forward", shape, 2 * m * cout * k, (x + w + y) * F32, (m, cout, k, False)))
        rows.append(("conv2d grad input", shape, 2 * batch * hw * hw * cin * cout * 9, (y + w + x) * F32,
                     (batch * hw * hw, cin, cout * 9, False)))
        rows.append(("conv2d grad weight", shape, 2 * cout * k * m, (y + x + w) * F32, (cout, k, m, True)))
    return rows


def linear_rows(batch):
    rows = []
    for net, fin, fout in [("mnist", 9216, 128), ("mnist", 128, 10), ("cifar", 2304, 512), ("cifar", 512, 10)]:
        flops = 2 * batch * fin * fout
        moved = (batch * fin + fin * fout + batch * fout) * F32
        shape = f"{net} {fin}->{fout}"
        rows += [("linear forward", shape, flops, moved, (batch, fout, fin, True)),
                 ("linear grad input", shape, flops, moved, (batch, fin, fout, True)),
                 ("linear grad weight", shape, flops, moved, (fout, fin, batch, True))]
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


def splits_for(m, n, k):
    """gemm::splits_for: enough K splits for ~512 blocks, each at least 8 K steps of 16."""
    tiles = -(-m // TILE) * -(-n // TILE)
    return max(1, min(512 // max(tiles, 1), -(-k // 16) // 8, 256))


def kernel_ceiling(flops, gemm, precision):
    """(seconds, what limits it) for fastconv's GEMM kernel on this problem: the lowest of the
    ceilings in the module docstring, applied to the problem's FLOPs."""
    m, n, k, may_split = gemm
    peak, size, _ = PRECISIONS[precision]
    tensor = precision != "float32"
    blocks = -(-m // TILE) * -(-n // TILE) * (splits_for(m, n, k) if may_split else 1)
    resident = SMS * (3 if tensor else 2)
    waves = -(-blocks // resident)
    wave_efficiency = blocks / (waves * resident)
    per_sm_cycle = (2048 if size == 2 else 1024) if tensor else 0.8 * 256
    rates = {
        "peak x waves": (peak if tensor else 0.8 * peak) * wave_efficiency,
        "shared memory": per_sm_cycle * SMS * CLOCK * min(1.0, blocks / SMS),
        "tile traffic (L2)": TILE / size * L2_BANDWIDTH,
    }
    if not tensor:
        del rates["shared memory"]  # issue-bound, folded into the 80% of peak
    limit = min(rates, key=rates.get)
    return flops / rates[limit], limit


def table(batch, precision="float32"):
    peak, size, engine = PRECISIONS[precision]
    lines = [f"Roofline ESTIMATE for an H200 (not a measurement), batch {batch}, {precision}: peaks "
             f"{peak / 1e12:.0f} TFLOP/s ({engine}), {BANDWIDTH / 1e12:.1f} TB/s; ridge point "
             f"{peak / BANDWIDTH:.1f} FLOP/byte. Last two columns: fastconv's GEMM kernels by their design "
             f"(ESTIMATE, see bench/roofline.py).", "",
             "| kernel | shape | GFLOP | MB moved (min) | FLOP/byte | bound | time at the bound (us) | "
             "fastconv kernel ESTIMATE (us) | its limit |",
             "|---|---|---:|---:|---:|---|---:|---:|---|"]
    gemm = conv_rows(batch) + linear_rows(batch)
    for i, row in enumerate(gemm + elementwise_rows(batch)):
        name, shape, flops, moved = row[:4]
        moved = moved * size / F32
        rate = peak if i < len(gemm) else PRECISIONS["float32"][0]  # element-wise kernels: CUDA cores
        intensity = flops / moved
        compute_s, memory_s = flops / rate, moved / BANDWIDTH
        bound = "compute" if compute_s > memory_s else "memory"
        chip_s = max(compute_s, memory_s)
        ours = ""
        if i < len(gemm):
            kernel_s, limit = kernel_ceiling(flops, row[4], precision)
            ours = f"{max(chip_s, kernel_s) * 1e6:.1f} | {limit if kernel_s > chip_s else bound} |"
        else:
            ours = f"{chip_s * 1e6:.1f} | {bound} |"
        lines.append(f"| {name} | {shape} | {flops / 1e9:.3f} | {moved / 1e6:.2f} | {intensity:.1f} | {bound} | "
                     f"{chip_s * 1e6:.1f} | {ours}")
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
