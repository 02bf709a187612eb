"""fastconv.backends.allow_tf32: float32 convolution and linear on tensor cores, as tf32.

With the switch on, the CUDA kernels (and the simulator's run of them) round every float32 GEMM
operand to tf32 and accumulate the exact products in float32; so the result must match float64
arithmetic on tf32-rounded operands to float32 accuracy -- and, on random data, must NOT match the
float32 result that closely (which shows the rounding really happened). The CPU kernels ignore
the switch.
"""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
from conftest import FASTCONV_PATH, tf32_round, tol


def test_tf32_is_off_by_default_and_flags_restore():
    out = subprocess.run([sys.executable, "-c", "import fastconv; print(fastconv.backends.allow_tf32)"],
                         env={"PYTHONPATH": FASTCONV_PATH}, capture_output=True, text=True, cwd="/", check=True)
    assert out.stdout.strip() == "False"
    assert fastconv.backends.allow_tf32 is False
    with fastconv.backends.flags(allow_tf32=True):
        assert fastconv.backends.allow_tf32 is True
        with fastconv.backends.flags(allow_tf32=False):
            assert fastconv.backends.allow_tf32 is False
        assert fastconv.backends.allow_tf32 is True
    assert fastconv.backends.allow_tf32 is False
    fastconv.backends.allow_tf32 = True
    try:
        assert torch.ops.fastconv._allow_tf32()
    finally:
        fastconv.backends.allow_tf32 = False
    with pytest.raises(TypeError, match="must be a bool"):
        fastconv.backends.allow_tf32 = 1


def test_tf32_rounding_helper():
    x = torch.tensor([1.0, 1.0 + 2**-11, 1.0 + 2**-12, -(1.0 + 3 * 2**-12), 3.0e38, 1e-40])
    r = tf32_round(x)
    assert r[0] == 1.0 and r[1] == 1.0 + 2**-10  # a tie goes away from zero
    assert r[2] == 1.0 and r[3] == -(1.0 + 2**-10)  # below and above half an ulp
    assert torch.isfinite(r[4]) and r[5] > 0


def _uses_tensor_cores(backend):
    return backend.name in ("sim", "cuda")


def _compare(backend, out, grads, ref_tf32, ref_f32, terms):
    """out / grads against the tf32 reference (tensor-core backends) or the float32 one (CPU)."""
    for got, want_tf32, want_f32, n in zip([out, *grads], ref_tf32, ref_f32, terms):
        if want_tf32 is None or not _uses_tensor_cores(backend):
            torch.testing.assert_close(got, want_f32.float(), **tol(torch.float32, n))
            continue
        torch.testing.assert_close(got, want_tf32.float(), **tol(torch.float32, n))
        # the rounding is real: relative to float32 the error is ~2^-11 per product, far above tol
        with pytest.raises(AssertionError):
            torch.testing.assert_close(got, want_f32.float(), **tol(torch.float32, n))


def _reference(fn, x, w, b, dy, round_operands):
    """fn's output and the gradients of x, w, b in float64, with the GEMM operands (x, w, dy) rounded to
    tf32 or not. With rounding, the bias gradient is None: it is a plain sum of dy, never a GEMM."""
    r = tf32_round if round_operands else (lambda t: t)
    xs, ws = (r(t.detach()).double().requires_grad_() for t in (x, w))
    bs = b.detach().double().requires_grad_()
    y = fn(xs, ws, bs)
    grads = list(torch.autograd.grad(y, (xs, ws, bs), r(dy).double()))
    if round_operands:
        grads[2] = None
    return [y, *grads]


def test_conv2d_tf32(backend):
    x = backend.randn(2, 16, 9, 7, requires_grad=True)
    w = backend.randn(12, 16, 3, 3, requires_grad=True)
    b = backend.randn(12, requires_grad=True)
    with fastconv.backends.flags(allow_tf32=True):
        out = FF.conv2d(x, w, b, stride=(1, 2), padding=1)
        dy = torch.randn_like(out)
        grads = torch.autograd.grad(out, (x, w, b), dy)

    tf, f32 = (_reference(lambda *a: F.conv2d(*a, stride=(1, 2), padding=1), x, w, b, dy, r) for r in (True, False))
    pixels = out.shape[0] * out.shape[2] * out.shape[3]
    _compare(backend, out, grads, tf, f32, [16 * 9, 12 * 9, pixels, pixels])


def test_linear_tf32(backend):
    x = backend.randn(37, 300, requires_grad=True)
    w = backend.randn(70, 300, requires_grad=True)
    b = backend.randn(70, requires_grad=True)
    with fastconv.backends.flags(allow_tf32=True):
        out = FF.linear(x, w, b)
        dy = torch.randn_like(out)
        grads = torch.autograd.grad(out, (x, w, b), dy)

    tf, f32 = (_reference(F.linear, x, w, b, dy, r) for r in (True, False))
    _compare(backend, out, grads, tf, f32, [300, 70, 37, 37])


def test_float32_without_tf32_stays_float32(backend):
    """The default: the same GEMMs agree with float64 to float32 accuracy (no tf32 anywhere)."""
    x, w = backend.randn(2, 16, 9, 7), backend.randn(12, 16, 3, 3)
    out = FF.conv2d(x, w, padding=1)
    torch.testing.assert_close(out, F.conv2d(x.double(), w.double(), padding=1).float(), **tol(torch.float32, 144))
