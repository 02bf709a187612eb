"""Every fastconv op with a CUDA kernel, once, forward and backward, on small inputs in awkward memory
layouts: the workload that scripts/gpu.sh runs under compute-sanitizer's memcheck and racecheck.

    compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/sanitize_cuda_ops.py
    python scripts/sanitize_cuda_ops.py --device cpu      # the same cases on the CPU kernels (a dry run)

Layouts of every floating input:
    offset         contiguous, but starting one element into its allocation: the data pointer is
                   misaligned for every vector width, so 16-byte loads and cp.async must take their
                   narrow paths (the element before it is NaN)
    sliced         every other element of a bigger NaN-filled buffer along the last dimension
                   (not contiguous: the op copies or follows the strides; a tensor that the op
                   updates in place, which must be contiguous, is offset instead)
    channels_last  NHWC strides (4-D inputs; the others stay contiguous)
Precisions: float32, float32 with tf32 allowed (fastconv.backends.allow_tf32), float16, bfloat16.

Each case runs the op and its backward once, then compares the output and every input gradient with
torch's on the same values (in float32, on the CPU), loosely: this is a memory check, the op tests
check precision; a NaN read from outside a view shows up here. One line per case; exit status 1
if any case failed. Under compute-sanitizer run it with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so that
each tensor is its own allocation and an access past its end is reported (gpu.sh does).
"""
import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF

LAYOUTS = ("offset", "sliced", "channels_last")
# name -> (dtype, tf32 allowed, (rtol, atol) of the comparison with torch's float32 result)
PRECISIONS = {
    "float32": (torch.float32, False, (1e-4, 1e-4)),
    "tf32": (torch.float32, True, (1e-2, 1e-2)),
    "float16": (torch.float16, False, (1e-2, 1e-2)),
    "bfloat16": (torch.bfloat16, False, (6e-2, 6e-2)),
}


@dataclass
class Case:
    name: str
    ops: tuple                 # the fastconv ops it runs (forward and backward): needs a kernel of each
    inputs: list               # float32 CPU tensors (floating: given the layout and precision) or int64 ones
    ours: Callable             # fastconv, on the inputs
    theirs: Callable           # torch, on float32 copies of the inputs and our output (dropout's mask)
    grad: tuple = ()           # indices of the inputs whose gradients are compared
    updated: tuple = ()        # indices of the inputs the op updates in place (kept contiguous), compared after it


def cases():
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    x4 = randn(2, 3, 9, 10)
    w = randn(4, 3, 3, 3) / 3
    logits, target = randn(6, 10), torch.randint(0, 10, (6,), generator=g)
    p = 0.3
    return [
        Case("conv2d", ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "bias_grad"), [x4, w, randn(4)],
             lambda x, w, b: FF.conv2d(x, w, b, padding=1), lambda x, w, b, _: F.conv2d(x, w, b, padding=1),
             (0, 1, 2)),
        Case("conv2d_relu strided", ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"), [x4, w],
             lambda x, w: FF.conv2d_relu(x, w, stride=2, dilation=2, padding=2),
             lambda x, w, _: F.relu(F.conv2d(x, w, stride=2, dilation=2, padding=2)), (0, 1)),
        Case("linear", ("linear", "linear_grad_input", "linear_grad_weight", "bias_grad"),
             [randn(5, 24), randn(7, 24) / 5, randn(7)], FF.linear, lambda x, w, b, _: F.linear(x, w, b), (0, 1, 2)),
        Case("relu", ("relu", "relu_backward"), [randn(3, 37)], FF.relu, lambda x, _: F.relu(x), (0,)),
        Case("leaky_relu", ("leaky_relu", "leaky_relu_backward"), [randn(3, 37)], lambda x: FF.leaky_relu(x, 0.1),
             lambda x, _: F.leaky_relu(x, 0.1), (0,)),
        Case("max_pool2d", ("max_pool2d", "max_pool2d_backward"), [x4],
             lambda x: FF.max_pool2d(x, 3, 2, 1, ceil_mode=True),
             lambda x, _: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), (0,)),
        Case("avg_pool2d", ("avg_pool2d", "avg_pool2d_backward"), [x4], lambda x: FF.avg_pool2d(x, 3, 2, 1),
             lambda x, _: F.avg_pool2d(x, 3, 2, 1), (0,)),
        Case("adaptive_avg_pool2d", ("adaptive_avg_pool2d", "adaptive_avg_pool2d_backward"), [x4],
             lambda x: FF.adaptive_avg_pool2d(x, (4, 3)), lambda x, _: F.adaptive_avg_pool2d(x, (4, 3)), (0,)),
        Case("batch_norm", ("batch_norm", "batch_norm_backward", "batch_norm_update_stats"),
             [x4, randn(3).abs() + 0.5, randn(3), randn(3), randn(3).abs() + 0.5],
             lambda x, w, b, rm, rv: FF.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2),
             lambda x, w, b, rm, rv, _: F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2), (0, 1, 2),
             updated=(3, 4)),
        Case("local_response_norm", ("local_response_norm", "local_response_norm_backward"), [x4],
             lambda x: FF.local_response_norm(x, 3, 1e-2, 0.75, 2.0),
             lambda x, _: F.local_response_norm(x, 3, 1e-2, 0.75, 2.0), (0,)),
        Case("cross_entropy", ("cross_entropy", "cross_entropy_backward"), [logits, target],
             lambda x, t: FF.cross_entropy(x, t, label_smoothing=0.1),
             lambda x, t, _: F.cross_entropy(x, t, label_smoothing=0.1), (0,)),
        # the masks come from different generators: torch's side applies fastconv's mask
        Case("dropout", ("dropout",), [randn(4, 33)], lambda x: FF.dropout(x, p),
             lambda x, out: x * (out != 0) / (1 - p), (0,)),
    ]


def in_layout(t, layout, dtype, device):
    """t's values as `dtype` on `device`, in `layout` (integer tensors stay contiguous)."""
    if not t.is_floating_point():
        return t.to(device)
    t = t.to(device, dtype)
    if layout == "offset":
        view = torch.full((t.numel() + 1,), math.nan, dtype=dtype, device=device)[1:].view(t.shape)
    elif layout == "sliced":
        view = torch.full((*t.shape[:-1], 2 * t.shape[-1]), math.nan, dtype=dtype, device=device)[..., ::2]
    elif layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    else:
        return t.clone()
    return view.copy_(t)


def compare(name, ours, want, rtol, atol):
    """ours (any floating dtype, any device) against want (float32, CPU), with atol scaled by want's magnitude."""
    assert ours.shape == want.shape, f"{name}: shape {tuple(ours.shape)}, torch's {tuple(want.shape)}"
    ours = ours.cpu().float()
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(ours, want, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


def run_case(case, layout, precision, device):
    dtype, tf32, (rtol, atol) = PRECISIONS[precision]
    # tensors updated in place must be contiguous (batch_norm's running statistics): offset, not sliced
    leaves = [in_layout(t, "offset" if i in case.updated and layout == "sliced" else layout, dtype, device)
              for i, t in enumerate(case.inputs)]
    for i in case.grad:
        leaves[i].requires_grad_(True)
    # torch's inputs: the same values in float32 (the 16-bit ones widened exactly) on the CPU, taken before
    # the op updates any of them; on the CPU, so that only fastconv's kernels (and torch's copies) run
    # under the sanitizer
    refs = [t.detach().cpu().float() if t.is_floating_point() else t.cpu() for t in leaves]
    with fastconv.backends.flags(allow_tf32=tf32):
        out = case.ours(*leaves)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        out.backward(grad_out.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()  # a fault in an asynchronous kernel surfaces in this case, not the next
    for i in case.grad:
        refs[i].requires_grad_(True)
    want = case.theirs(*refs, out.detach().cpu().float())
    want.backward(grad_out.float())
    compare("output", out.detach(), want.detach(), rtol, atol)
    for i in case.grad:
        compare(f"gradient of input {i}", leaves[i].grad, refs[i].grad, rtol, atol)
    for i in case.updated:
        compare(f"input {i} updated in place", leaves[i].detach(), refs[i], rtol, atol)


def has_kernel(op, device):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastconv::{op}", device.type.upper())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {', '.join(LAYOUTS)}")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help=f"comma-separated, of {', '.join(PRECISIONS)}")
    ap.add_argument("--only", default=None, help="run only the cases whose name contains this")
    args = ap.parse_args(argv)
    layouts, precisions = args.layouts.split(","), args.precisions.split(",")
    for value, known in [(v, LAYOUTS) for v in layouts] + [(v, tuple(PRECISIONS)) for v in precisions]:
        if value not in known:
            ap.error(f"unknown {value!r}; known: {', '.join(known)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("sanitize_cuda_ops.py: torch sees no CUDA device here (--device cpu runs the same cases on the CPU)")

    selected = [c for c in cases() if args.only is None or args.only in c.name]
    failures, ran, started = 0, 0, time.perf_counter()
    for case in selected:
        missing = [op for op in case.ops if not has_kernel(op, device)]
        if missing:
            print(f"skip {case.name}: no {device.type.upper()} kernel for {', '.join(missing)}")
            continue
        for precision in precisions:
            for layout in layouts:
                label = f"{case.name} [{precision}, {layout}]"
                t0 = time.perf_counter()
                try:
                    run_case(case, layout, precision, device)
                except Exception as exc:  # every case runs; each failure is reported
                    failures += 1
                    print(f"FAIL {label}: {type(exc).__name__}: {exc}", flush=True)
                else:
                    print(f"ok   {label} ({(time.perf_counter() - t0) * 1e3:.0f} ms)", flush=True)
                ran += 1
    print(f"sanitize_cuda_ops: {ran - failures} of {ran} cases passed on {device.type} "
          f"in {time.perf_counter() - started:.1f} s")
    return 1 if failures or not ran else 0


if __name__ == "__main__":
    sys.exit(main())
