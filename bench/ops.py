"""Per-op and whole-training-step benchmark: fastconv against torch, in the same run.

Each op runs on the layer shapes of the two reference nets (fastconv.models: the Keras MNIST and
CIFAR-10 convnets) at batch 128, forward and forward+backward. Every case is first checked against
torch (outputs must agree), then timed with warm-up, fastconv and torch interleaved call by call
(the order alternating), and reported as medians and the ratio fastconv / torch (< 1: fastconv is
faster). The whole-step rows time one SGD training step of each net.

    python bench/ops.py                      # all cases, CPU, batch 128
    python bench/ops.py --only conv --reps 30
    python bench/ops.py --json out.json --png out.png    # where to write (default bench/out/ops-*.json, .png)
    python bench/ops.py --device cuda        # on a GPU: CUDA events, warm-up, L2 flushed before each call
    python bench/ops.py --device cuda --dtype float16    # tensor cores (fastconv) against cuDNN's
    python bench/ops.py --device cuda --tf32 # float32 as tf32, on both sides (fastconv.backends.allow_tf32
                                             # and torch.backends.cudnn / cuda.matmul.allow_tf32)

Progress: tqdm's bars where tqdm is installed, else a plain line every few seconds. The bar chart
needs matplotlib; without it the run ends with the table and the JSON, and says so
(pip install "fastconv[bench]").
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
from fastconv.models import MODELS
from fastconv.progress import track

PLOT_SKIPPED = ('plot skipped: matplotlib is not installed (pip install "fastconv[bench]" adds it, and tqdm '
                'for progress bars; or pip install matplotlib tqdm)')


@dataclass
class Case:
    name: str
    shape: str
    inputs: list            # tensors; floating ones get gradients in fwd+bwd mode
    ours: object            # callable(*inputs) -> tensor
    theirs: object
    backward: bool = True
    extra: dict = field(default_factory=dict)


def conv_cases(batch, net, layers):
    """layers: (C_in, C_out, H = W, padding[, kernel, stride]); 3 x 3 stride 1 unless given."""
    cases = []
    for cin, cout, hw, pad, *rest in layers:
        k, stride = rest if rest else (3, 1)
        x = torch.randn(batch, cin, hw, hw)
        w = torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5
        b = torch.randn(cout)
        out_hw = (hw + 2 * pad - k) // stride + 1
        cases.append(Case(
            "conv2d", f"{net} {cin}->{cout} {hw}x{hw} k{k} p{pad}" + (f" s{stride}" if stride > 1 else ""), [x, w, b],
            lambda x, w, b, pad=pad, stride=stride: FF.conv2d(x, w, b, stride=stride, padding=pad),
            lambda x, w, b, pad=pad, stride=stride: F.conv2d(x, w, b, stride=stride, padding=pad),
            extra={"flops_fwd": 2 * batch * cout * out_hw * out_hw * cin * k * k}))
    return cases


# Layer shapes beyond the two nets, so that tuning is seen to generalise: deeper 3x3 layers, a 5x5
# kernel, a 1x1 and a stride-2 convolution (reported in their own geometric mean).
OTHER_CONV_LAYERS = [(64, 64, 16, 1), (128, 128, 8, 1), (16, 32, 20, 2, 5, 1), (64, 128, 16, 0, 1, 1),
                     (32, 64, 32, 1, 3, 2)]


def cpu_name():
    """The CPU's model name and widest vector ISA, from /proc/cpuinfo (Linux); the machine type elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    isa = "AVX-512" if "avx512f" in flags else "AVX2 + FMA" if "avx2" in flags and "fma" in flags else \
        "AVX2" if "avx2" in flags else "SSE"
    return f"{model}, {isa}"


def make_cases(batch, device=torch.device("cpu"), dtype=torch.float32):
    cases = _make_cases(batch)
    for case in cases:
        case.inputs = [t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in case.inputs]
    return cases


def _make_cases(batch):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cases = []
    cases += conv_cases(batch, "mnist", [(1, 32, 28, 0), (32, 64, 26, 0)])
    cases += conv_cases(batch, "cifar", [(3, 32, 32, 1), (32, 32, 32, 0), (32, 64, 15, 1), (64, 64, 15, 0)])
    cases += conv_cases(batch, "other", OTHER_CONV_LAYERS)
    # the late layers of the YOLO-style backbone (fastconv.models.yolo): 8x8 and 4x4 maps of 128-256 channels
    cases += conv_cases(batch, "yolo", [(64, 128, 8, 1), (128, 256, 4, 1), (256, 128, 4, 0, 1, 1)])
    for net, shape in [("mnist", (batch, 64, 24, 24)), ("cifar", (batch, 32, 32, 32))]:
        x = torch.randn(shape, generator=g)
        cases.append(Case("relu", f"{net} {tuple(shape)}", [x], FF.relu, F.relu))
    # LeakyReLU 0.1 (YOLO's slope) on activations of a YOLO-style backbone on 32x32 inputs
    x = torch.randn(batch, 64, 16, 16, generator=g)
    cases.append(Case("leaky_relu", f"yolo {tuple(x.shape)} 0.1", [x], lambda x: FF.leaky_relu(x, 0.1),
                      lambda x: F.leaky_relu(x, 0.1)))
    for net, shape in [("mnist", (batch, 64, 24, 24)), ("cifar", (batch, 32, 30, 30)), ("cifar", (batch, 64, 13, 13))]:
        x = torch.randn(shape, generator=g)
        cases.append(Case("max_pool2d", f"{net} {tuple(shape)} k2", [x],
                          lambda x: FF.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2)))
    # batch normalization in training (a ResNet / airbench block's activations)
    x = torch.randn(batch, 64, 32, 32, generator=g)
    w, b = torch.rand(64, generator=g) + 0.5, torch.randn(64, generator=g)
    cases.append(Case("batch_norm", f"resnet {tuple(x.shape)} train", [x, w, b],
                      lambda x, w, b: FF.batch_norm(x, None, None, w, b, training=True),
                      lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)))
    # AlexNet's local response normalization (n = 5, k = 2) on the scaled AlexNet's first activations
    x = torch.randn(batch, 32, 32, 32, generator=g)
    cases.append(Case("local_response_norm", f"alexnet {tuple(x.shape)} n5", [x],
                      lambda x: FF.local_response_norm(x, 5, 1e-4, 0.75, 2.0),
                      lambda x: F.local_response_norm(x, 5, 1e-4, 0.75, 2.0)))
    # average pooling: a 3x3 stride-2 window with padding (AlexNet / ResNet style) and a global average
    x = torch.randn(batch, 64, 32, 32, generator=g)
    cases.append(Case("avg_pool2d", f"resnet {tuple(x.shape)} k3 s2 p1", [x], lambda x: FF.avg_pool2d(x, 3, 2, 1),
                      lambda x: F.avg_pool2d(x, 3, 2, 1)))
    x = torch.randn(batch, 256, 8, 8, generator=g)
    cases.append(Case("adaptive_avg_pool2d", f"resnet {tuple(x.shape)} -> 1x1", [x],
                      lambda x: FF.adaptive_avg_pool2d(x, 1), lambda x: F.adaptive_avg_pool2d(x, 1)))
    for net, fin, fout in [("mnist", 9216, 128), ("mnist", 128, 10), ("cifar", 2304, 512), ("cifar", 512, 10)]:
        x = torch.randn(batch, fin, generator=g)
        w = torch.randn(fout, fin, generator=g) / fin ** 0.5
        b = torch.randn(fout, generator=g)
        cases.append(Case("linear", f"{net} {fin}->{fout}", [x, w, b], FF.linear, F.linear,
                          extra={"flops_fwd": 2 * batch * fin * fout}))
    logits = torch.randn(batch, 10, generator=g)
    target = torch.randint(0, 10, (batch,), generator=g)
    cases.append(Case("cross_entropy", f"{batch}x10", [logits, target], FF.cross_entropy, F.cross_entropy))
    # dropout: the masks differ by design (different generators), so only shapes are compared
    x = torch.randn(batch, 64, 12, 12, generator=g)
    cases.append(Case("dropout", f"mnist {tuple(x.shape)} p0.25", [x],
                      lambda x: FF.dropout(x, 0.25), lambda x: F.dropout(x, 0.25), extra={"compare": False}))
    return cases


def has_kernel(op, device):
    """Whether fastconv registered a kernel of `op` for the device's dispatch key."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastconv::{op}", device.type.upper())


class Timer:
    """Milliseconds of one call: perf_counter on the CPU; on CUDA, events around the call after the
    L2 cache was flushed (a 256 MiB buffer rewritten), so no call finds its inputs left in L2 by the
    previous one."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.flush_buffer = torch.empty(64 * 2**20, dtype=torch.float32, device=device)
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def __call__(self, fn):
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        self.flush_buffer.zero_()
        self.start.record()
        fn()
        self.end.record()
        torch.cuda.synchronize()
        return self.start.elapsed_time(self.end)


def run_interleaved(fns, reps, warmup, timer):
    """Times each zero-argument callable `reps` times, interleaved, alternating which goes first."""
    times = [[] for _ in fns]
    for _ in range(warmup):
        for fn in fns:
            fn()
    for r in range(reps):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            times[i].append(timer(fns[i]))
    return [statistics.median(t) for t in times]


def check_case(case, rtol=1e-4, atol=1e-4):
    ours, theirs = case.ours(*case.inputs), case.theirs(*case.inputs)
    if case.extra.get("compare", True):
        torch.testing.assert_close(ours, theirs, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{case.name} {case.shape}: fastconv disagrees with torch: {m}")
    else:
        assert ours.shape == theirs.shape


def fwd_bwd(fn, inputs):
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    grad_out = [None]

    def step():
        for t in leaves:
            t.grad = None
        out = fn(*leaves)
        if grad_out[0] is None:
            grad_out[0] = torch.randn_like(out)
        out.backward(grad_out[0])
    return step


def bench_ops(cases, reps, warmup, timer, tolerance=(1e-4, 1e-4)):
    rows = []
    for case in track(cases, "ops", unit="case"):
        check_case(case, *tolerance)
        with torch.no_grad():
            f_ours, f_theirs = run_interleaved([lambda: case.ours(*case.inputs), lambda: case.theirs(*case.inputs)],
                                               reps, warmup, timer)
        row = {"op": case.name, "shape": case.shape, "fwd_fastconv_ms": f_ours, "fwd_torch_ms": f_theirs,
               "fwd_ratio": f_ours / f_theirs}
        if "flops_fwd" in case.extra:
            row["fwd_fastconv_gflops"] = case.extra["flops_fwd"] / f_ours / 1e6
        if case.backward:
            b_ours, b_theirs = run_interleaved([fwd_bwd(case.ours, case.inputs), fwd_bwd(case.theirs, case.inputs)],
                                               reps, warmup, timer)
            row.update({"fwdbwd_fastconv_ms": b_ours, "fwdbwd_torch_ms": b_theirs, "fwdbwd_ratio": b_ours / b_theirs})
        rows.append(row)
    return rows


def bench_steps(batch, reps, warmup, timer, device, dtype=torch.float32):
    rows = []
    for name, (builder, in_shape) in track(list(MODELS.items()), "train steps", unit="net"):
        torch.manual_seed(0)
        ref = builder(torch.nn).to(device)
        ours = fastconv.nn.fuse_conv_relu(builder(fastconv.nn)).to(device)  # as fastconv.models.build makes it
        ours.load_state_dict(ref.state_dict())
        ref.to(dtype), ours.to(dtype)
        x = torch.randn(batch, *in_shape, device=device, dtype=dtype)
        y = torch.randint(0, 10, (batch,), device=device)

        def stepper(net, loss_fn):
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

            def step():
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(x), y)
                loss.backward()
                opt.step()
            return step
        t_ours, t_ref = run_interleaved([stepper(ours, FF.cross_entropy), stepper(ref, F.cross_entropy)],
                                        reps, warmup, timer)
        rows.append({"op": "train step", "shape": f"{name} net, batch {batch}", "step_fastconv_ms": t_ours,
                     "step_torch_ms": t_ref, "step_ratio": t_ours / t_ref,
                     "fastconv_images_per_s": batch / t_ours * 1e3, "torch_images_per_s": batch / t_ref * 1e3})
    return rows


def fmt(v, spec=".2f"):
    return "" if v is None else format(v, spec)


def markdown(op_rows, step_rows):
    lines = ["| op | shape | fwd fastconv ms | fwd torch ms | fwd ratio | fwd+bwd fastconv ms | fwd+bwd torch ms "
             "| fwd+bwd ratio |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in op_rows:
        lines.append(f"| {r['op']} | {r['shape']} | {fmt(r['fwd_fastconv_ms'])} | {fmt(r['fwd_torch_ms'])} | "
                     f"{fmt(r['fwd_ratio'])} | {fmt(r.get('fwdbwd_fastconv_ms'))} | {fmt(r.get('fwdbwd_torch_ms'))} | "
                     f"{fmt(r.get('fwdbwd_ratio'))} |")
    lines += ["", "| whole training step | fastconv ms | torch ms | ratio | fastconv img/s | torch img/s |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in step_rows:
        lines.append(f"| {r['shape']} | {fmt(r['step_fastconv_ms'])} | {fmt(r['step_torch_ms'])} | "
                     f"{fmt(r['step_ratio'])} | {fmt(r['fastconv_images_per_s'], '.0f')} | "
                     f"{fmt(r['torch_images_per_s'], '.0f')} |")
    return "\n".join(lines)


def plot(op_rows, step_rows, path, title):
    """Horizontal bars of the fastconv / torch time ratios (forward, forward+backward, whole steps), drawn
    to ``path``; False (nothing drawn) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, fwd, bwd = [], [], []
    for r in op_rows:
        labels.append(f"{r['op']}  {r['shape']}")
        fwd.append(r["fwd_ratio"])
        bwd.append(r.get("fwdbwd_ratio", float("nan")))
    for r in step_rows:
        labels.append(f"train step  {r['shape']}")
        fwd.append(float("nan"))
        bwd.append(r["step_ratio"])
    y = list(range(len(labels)))[::-1]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(labels) + 1.6))
    ax.barh([v + 0.2 for v in y], fwd, height=0.4, label="forward", color="tab:blue")
    ax.barh([v - 0.2 for v in y], bwd, height=0.4, label="forward + backward (or whole step)", color="tab:orange")
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("fastconv time / torch time  (< 1: fastconv faster)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions per case (median reported)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default=None, help="run only ops whose name contains this (e.g. conv)")
    ap.add_argument("--no-steps", action="store_true", help="skip the whole-training-step rows")
    ap.add_argument("--threads", type=int, default=None, help="torch/fastconv CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="results file (default bench/out/ops-DEVICE-TIME.json)")
    ap.add_argument("--png", default=None, help="bar chart of the ratios (default: the JSON path with .png)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                    help="of every floating input and parameter (16-bit: tensor cores in fastconv's CUDA kernels)")
    ap.add_argument("--tf32", action="store_true", help="allow tf32 for float32 in fastconv and in torch alike")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    fastconv.backends.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    # float32 results agree to 1e-4; tf32 and 16-bit ones to their own precision
    tolerance = (1e-4, 1e-4) if dtype == torch.float32 and not args.tf32 else (3e-2, 3e-2)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device here")
        if fastconv.build_info()["cuda kernels"] == "not built":
            sys.exit("--device cuda: this fastconv was built without CUDA kernels")

    timer = Timer(device)
    cases = [c for c in make_cases(args.batch_size, device, dtype) if args.only is None or args.only in c.name]
    missing = sorted({c.name for c in cases if not has_kernel(c.name, device)})
    if missing:
        print(f"no {device.type.upper()} kernel yet for: {', '.join(missing)} (not timed)")
        cases = [c for c in cases if c.name not in missing]
    op_rows = bench_ops(cases, args.reps, args.warmup, timer, tolerance)
    whole_step = all(has_kernel(op, device) for op in ("conv2d", "linear", "relu", "max_pool2d", "cross_entropy"))
    if not whole_step and not args.no_steps:
        print("whole training steps need every op on this device: not timed")
    step_rows = [] if args.no_steps or args.only or not whole_step else \
        bench_steps(args.batch_size, max(3, args.reps // 3), 1, timer, device, dtype)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_name()}, {torch.get_num_threads()} threads"
    machine = f"{where}, torch {torch.__version__}, fastconv {fastconv.__version__}"
    precision = args.dtype + (" (tf32 allowed)" if args.tf32 else "")
    print(f"fastconv vs torch on {args.device} ({machine}), {precision}; medians of {args.reps} runs; "
          "ratio = fastconv / torch\n")
    print(markdown(op_rows, step_rows))
    for label, pick in [("the net layers", lambda shape: shape.startswith(("mnist", "cifar"))),
                        ("the other layer shapes", lambda shape: shape.startswith("other")),
                        ("the yolo layers", lambda shape: shape.startswith("yolo"))]:
        conv = [r for r in op_rows if r["op"] == "conv2d" and pick(r["shape"])]
        if conv:
            fwd = statistics.geometric_mean(r["fwd_ratio"] for r in conv)
            bwd = statistics.geometric_mean(r["fwdbwd_ratio"] for r in conv)
            print(f"\nconv2d geometric-mean ratio over {label}: forward {fwd:.2f}x, forward+backward {bwd:.2f}x")
    args.json = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                          f"ops-{args.device}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    args.png = args.png or os.path.splitext(args.json)[0] + ".png"
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M"), "device": args.device,
                       "dtype": precision, "batch_size": args.batch_size, "reps": args.reps, "ops": op_rows, "steps": step_rows}, f,
                      indent=1)

    os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
    plotted = False
    try:
        plotted = plot(op_rows, step_rows, args.png, f"fastconv vs torch, batch {args.batch_size}, {args.device}: {machine}")
        if not plotted:
            print(f"\n{PLOT_SKIPPED}")
    except Exception as exc:  # the results are written: a failing plot does not fail the run
        print(f"\nplot failed ({type(exc).__name__}: {exc}); the results are in {args.json}")
    print(f"\nresults: {args.json}" + (f", {args.png}" if plotted else ""))


if __name__ == "__main__":
    main()
