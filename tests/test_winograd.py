"""The CPU's Winograd convolutions (csrc/cpu/winograd.h), F(4x4, 3x3) and F(2x2, 5x5): forward, grad input
and grad weight against torch, forced on (FASTCONV_CPU_CONV=winograd) for shapes the automatic choice would
also send elsewhere; the automatic choice itself; accuracy against float64; determinism and thread-count
invariance. Winograd runs only for float32 3x3 and 5x5 stride-1 dilation-1 layers on the CPU."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FF
from conftest import LAYOUTS, assert_bitwise_equal, make_layout, num_threads, tol

ops = torch.ops.fastconv

pytestmark = pytest.mark.op


@dataclasses.dataclass(frozen=True)
class Case:
    x: tuple        # (N, C, H, W)
    w: tuple        # (C_out, C_in / groups, k, k), k = 3 or 5
    padding: tuple  # (top, bottom, left, right)
    groups: int = 1
    bias: bool = True


def case(id, x, w, padding=(0, 0, 0, 0), **kw):
    return pytest.param(Case(x, w, padding, **kw), id=id)


CASES = [
    # output 24 x 24 = 6 x 6 whole tiles; 2 images fill the 16-tile panels better than one
    case("mnist_like", (3, 16, 26, 26), (20, 16, 3, 3)),
    # ragged last tile row and column (output 13 x 9), channel counts that are no multiple of MR or NR
    case("ragged_13x9", (2, 9, 15, 11), (7, 9, 3, 3)),
    case("pad1", (2, 12, 15, 15), (10, 12, 3, 3), (1, 1, 1, 1)),
    case("pad_asym", (2, 8, 9, 12), (8, 8, 3, 3), (2, 0, 1, 3)),
    # padding 3 > kernel - 1: grad input has a negative padding (it crops grad_output)
    case("pad3", (1, 8, 5, 6), (5, 8, 3, 3), (3, 3, 3, 3)),
    # output 1 x 1: one tile, 15 of its 16 outputs cropped
    case("output_1x1", (2, 8, 3, 3), (9, 8, 3, 3)),
    case("tall_narrow", (2, 8, 21, 3), (8, 8, 3, 3), (0, 0, 1, 1)),
    case("groups2", (2, 16, 10, 10), (12, 8, 3, 3), (1, 1, 1, 1), groups=2),
    case("no_bias", (2, 8, 11, 7), (8, 8, 3, 3), (1, 1, 1, 1), bias=False),
    # 9 images: the weight gradient's 8 image chunks are uneven
    case("batch9", (9, 8, 8, 8), (8, 8, 3, 3), (1, 1, 1, 1)),
    # 4 x 4 outputs, one tile an image: an item takes up to a panel of images (37: a partial last item)
    case("4x4_37_images", (37, 24, 4, 4), (20, 24, 3, 3), (1, 1, 1, 1)),
    # more tiles than one panel per image and many panels across the batch
    case("many_tiles", (2, 8, 34, 37), (6, 8, 3, 3)),
    case("channels_64", (1, 64, 9, 9), (64, 64, 3, 3)),
    # 256 x 256 channels: the weight gradient's partial sums limit it to 6 chunks of the 9 images
    case("channels_256_chunks", (9, 256, 4, 4), (256, 256, 3, 3)),
]

# F(2x2, 5x5): the same situations for 5x5 kernels (2x2 tiles, 6x6 patches, 4 rows and columns of halo)
CASES_5X5 = [
    # output 22 x 22 = 11 x 11 whole tiles
    case("5x5_mnist_like", (3, 16, 26, 26), (20, 16, 5, 5)),
    # ragged last tile row and column (output 11 x 7)
    case("5x5_ragged_11x7", (2, 9, 15, 11), (7, 9, 5, 5)),
    case("5x5_pad2", (2, 12, 15, 15), (10, 12, 5, 5), (2, 2, 2, 2)),
    case("5x5_pad_asym", (2, 8, 9, 12), (8, 8, 5, 5), (3, 0, 1, 4)),
    # padding 5 > kernel - 1: grad input has a negative padding (it crops grad_output)
    case("5x5_pad5", (1, 8, 5, 6), (5, 8, 5, 5), (5, 5, 5, 5)),
    # output 1 x 1: one tile, 3 of its 4 outputs cropped
    case("5x5_output_1x1", (2, 8, 5, 5), (9, 8, 5, 5)),
    case("5x5_groups2", (2, 16, 10, 10), (12, 8, 5, 5), (2, 2, 2, 2), groups=2),
    case("5x5_no_bias", (2, 8, 11, 7), (8, 8, 5, 5), (2, 2, 2, 2), bias=False),
    # 9 images: uneven weight-gradient chunks; 4 x 4 outputs (4 tiles an image) of 37 images
    case("5x5_batch9", (9, 8, 8, 8), (8, 8, 5, 5), (2, 2, 2, 2)),
    case("5x5_4x4_37_images", (37, 24, 4, 4), (20, 24, 5, 5), (2, 2, 2, 2)),
    case("5x5_channels_64", (1, 64, 9, 9), (64, 64, 5, 5)),
    case("5x5_channels_256_chunks", (9, 256, 4, 4), (256, 256, 5, 5), (2, 2, 2, 2)),
]


def _inputs(c, dtype=torch.float32):
    g = torch.Generator().manual_seed(hash(c) % 2**31)
    x = torch.randn(c.x, generator=g, dtype=dtype)
    w = torch.randn(c.w, generator=g, dtype=dtype)
    b = torch.randn(c.w[0], generator=g, dtype=dtype) if c.bias else None
    return x, w, b


def _torch_conv(x, w, b, padding, groups):
    pt, pb, pl, pr = padding
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, 1, 0, 1, groups)


def _ops(x, w, b, dy, padding, groups, relu=False):
    args = ([1, 1], list(padding), [1, 1], groups)
    return (ops.conv2d(x, w, b, *args, relu),
            ops.conv2d_grad_input(dy, w, list(x.shape), *args),
            ops.conv2d_grad_weight(dy, x, list(w.shape), *args))


@pytest.fixture
def winograd(monkeypatch):
    monkeypatch.setenv("FASTCONV_CPU_CONV", "winograd")


@pytest.mark.parametrize("c", CASES + CASES_5X5)
def test_winograd_matches_torch(winograd, c):
    x, w, b = _inputs(c)
    ref = _torch_conv(x, w, b, c.padding, c.groups)
    dy = torch.randn_like(ref)
    y, dx, dw = _ops(x, w, b, dy, c.padding, c.groups)
    taps = c.w[2] * c.w[3]
    torch.testing.assert_close(y, ref, **tol(torch.float32, c.w[1] * taps))
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    rx, rw = torch.autograd.grad(_torch_conv(xr, wr, b, c.padding, c.groups), [xr, wr], dy)
    torch.testing.assert_close(dx, rx, **tol(torch.float32, c.w[0] // c.groups * taps))
    # F(2x2, 5x5)'s G^T weighs the transformed sums of the outer taps by up to 2/3 (F(4x4, 3x3)'s by 1/6),
    # after they have cancelled: 4x the rounding error of a dW entry, on a small output (5 x 5 pixels) more
    # than a sum over its pixels makes
    amplification = 4 if c.w[2] == 5 else 1
    torch.testing.assert_close(dw, rw, **tol(torch.float32, math.prod(ref.shape) // ref.shape[1] * amplification))


@pytest.mark.parametrize("slope", [0.0, 0.1], ids=["relu", "leaky_relu"])
@pytest.mark.parametrize("c", CASES[:3] + CASES_5X5[:2])
def test_winograd_fused_relu(winograd, c, slope):
    x, w, b = _inputs(c)
    y = ops.conv2d(x, w, b, [1, 1], list(c.padding), [1, 1], c.groups, True, slope)
    ref = torch.nn.functional.leaky_relu(_torch_conv(x, w, b, c.padding, c.groups), slope)
    torch.testing.assert_close(y, ref, **tol(torch.float32, c.w[1] * c.w[2] * c.w[3]))
    unfused = ops.conv2d(x, w, b, [1, 1], list(c.padding), [1, 1], c.groups)
    assert_bitwise_equal(y, ops.leaky_relu(unfused, slope) if slope else ops.relu(unfused))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_winograd_layouts(winograd, layout, k):
    """Non-contiguous inputs, weights and gradients give the contiguous results."""
    c = Case((2, 8, 10, 9), (8, 8, k, k), (k // 2,) * 4)
    x, w, b = _inputs(c)
    dy = torch.randn(2, 8, 10, 9)
    expected = _ops(x, w, b, dy, c.padding, 1)
    got = _ops(make_layout(x, layout), make_layout(w, layout), b, make_layout(dy, layout), c.padding, 1)
    for e, g in zip(expected, got):
        assert_bitwise_equal(g, e)


def test_winograd_through_autograd(winograd):
    """fastconv.functional.conv2d's gradients come from the Winograd ops when they are forced."""
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    b = torch.randn(16, requires_grad=True)
    out = FF.conv2d(x, w, b, padding=1)
    ref = F.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(out, ref, **tol(torch.float32, 72))
    dy = torch.randn_like(ref)
    for g, r in zip(torch.autograd.grad(out, [x, w, b], dy), torch.autograd.grad(ref, [x, w, b], dy)):
        torch.testing.assert_close(g, r, **tol(torch.float32, 2 * 144))


def test_automatic_choice(monkeypatch):
    """Without the variable each pass takes Winograd where csrc/cpu/conv2d.cpp's thresholds say it is
    faster (bitwise the forced result, and not the GEMM's) and the GEMM elsewhere; float64, 7x7 kernels
    and strides > 1 never take Winograd."""
    args = ([1, 1], [1, 1, 1, 1], [1, 1], 1)

    def passes(mode, x, w):
        if mode is None:
            monkeypatch.delenv("FASTCONV_CPU_CONV", raising=False)
        else:
            monkeypatch.setenv("FASTCONV_CPU_CONV", mode)
        y = ops.conv2d(x, w, None, *args, False)
        dy = torch.randn(y.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
        return y, ops.conv2d_grad_input(dy, w, list(x.shape), *args), ops.conv2d_grad_weight(dy, x, list(w.shape), *args)

    def algorithms(x, w):
        auto, wino, gemm = passes(None, x, w), passes("winograd", x, w), passes("gemm", x, w)
        chosen = []
        for a, wi, ge in zip(auto, wino, gemm):
            assert not torch.equal(wi, ge)
            chosen.append("winograd" if torch.equal(a, wi) else "gemm" if torch.equal(a, ge) else "neither")
        return chosen

    # (forward: C_in >= 16, grad input: C_out >= 8, grad weight: both >= 16, C_in * C_out >= 512 and an
    # output of at least 16 x 16 pixels on AMD cores, 8 x 8 on others)
    amd = "AuthenticAMD" in open("/proc/cpuinfo").read()
    assert algorithms(torch.randn(2, 16, 16, 16), torch.randn(32, 16, 3, 3)) == ["winograd"] * 3
    assert algorithms(torch.randn(2, 16, 15, 16), torch.randn(32, 16, 3, 3)) == \
        ["winograd", "winograd", "gemm" if amd else "winograd"]
    assert algorithms(torch.randn(2, 16, 7, 9), torch.randn(32, 16, 3, 3)) == ["winograd", "winograd", "gemm"]
    assert algorithms(torch.randn(2, 8, 12, 12), torch.randn(16, 8, 3, 3)) == ["gemm", "winograd", "gemm"]
    assert algorithms(torch.randn(2, 16, 12, 12), torch.randn(4, 16, 3, 3)) == ["winograd", "gemm", "gemm"]
    assert algorithms(torch.randn(2, 16, 12, 12), torch.randn(16, 16, 3, 3)) == ["winograd", "winograd", "gemm"]
    # 5x5: the 3x3 forward and grad input thresholds; grad weight where C_in * C_out >= 1024, any output size
    assert algorithms(torch.randn(2, 32, 7, 9), torch.randn(32, 32, 5, 5)) == ["winograd"] * 3
    assert algorithms(torch.randn(2, 16, 12, 12), torch.randn(32, 16, 5, 5)) == ["winograd", "winograd", "gemm"]
    assert algorithms(torch.randn(2, 8, 12, 12), torch.randn(16, 8, 5, 5)) == ["gemm", "winograd", "gemm"]
    assert algorithms(torch.randn(2, 3, 12, 12), torch.randn(32, 3, 5, 5)) == ["gemm", "winograd", "gemm"]
    for x, w in [(torch.randn(2, 16, 12, 12, dtype=torch.float64), torch.randn(32, 16, 3, 3, dtype=torch.float64)),
                 (torch.randn(2, 16, 12, 12, dtype=torch.float64), torch.randn(32, 16, 5, 5, dtype=torch.float64)),
                 (torch.randn(2, 16, 12, 12), torch.randn(32, 16, 7, 7))]:
        for a, b in zip(passes("winograd", x, w), passes("gemm", x, w)):
            assert_bitwise_equal(a, b)
    monkeypatch.setenv("FASTCONV_CPU_CONV", "winograd")
    x, w = torch.randn(2, 16, 12, 12), torch.randn(32, 16, 3, 3)
    strided = ops.conv2d(x, w, None, [2, 2], [1, 1, 1, 1], [1, 1], 1, False)
    monkeypatch.setenv("FASTCONV_CPU_CONV", "gemm")
    assert_bitwise_equal(strided, ops.conv2d(x, w, None, [2, 2], [1, 1, 1, 1], [1, 1], 1, False))


def test_bad_algorithm_variable(monkeypatch):
    monkeypatch.setenv("FASTCONV_CPU_CONV", "fft")
    with pytest.raises(RuntimeError, match="FASTCONV_CPU_CONV must be auto, winograd or gemm, not 'fft'"):
        ops.conv2d(torch.randn(1, 8, 6, 6), torch.randn(4, 8, 3, 3), None, [1, 1], [0, 0, 0, 0], [1, 1], 1, False)


@pytest.mark.parametrize("c", [
    # 9 images: 8 uneven chunks of the weight gradient, two groups
    Case((9, 16, 13, 11), (20, 8, 3, 3), (1, 0, 2, 1), groups=2),
    # 4 tiles an image: the forward's work items hold 4 images with one thread, 1 with two or three
    Case((5, 16, 6, 6), (16, 16, 3, 3), (1, 1, 1, 1)),
    Case((9, 16, 13, 11), (20, 8, 5, 5), (2, 1, 0, 3), groups=2),
    Case((5, 16, 6, 6), (16, 16, 5, 5), (2, 2, 2, 2)),
])
def test_winograd_deterministic_and_thread_count_invariant(winograd, c):
    """Forward, grad input and grad weight are bitwise the same run after run and with 1, 2 and 3 threads."""
    x, w, b = _inputs(c)
    dy = torch.randn_like(_torch_conv(x, w, b, c.padding, c.groups))
    results = []
    for n in (1, 2, 3, 2):
        with num_threads(n):
            results.append(_ops(x, w, b, dy, c.padding, c.groups))
    for other in results[1:]:
        for a, r in zip(results[0], other):
            assert_bitwise_equal(a, r)


# The 3x3 layers of the two reference nets at batch 4, and the 5x5 ones of fastconv.models' LeNet- and
# AlexNet-style nets: (C_in, C_out, H = W, padding, kernel)
NET_LAYERS = [(32, 64, 26, 0, 3), (32, 32, 32, 0, 3), (32, 64, 15, 1, 3), (64, 64, 15, 0, 3), (6, 16, 14, 0, 5),
              (32, 64, 16, 2, 5)]


@pytest.mark.parametrize("cin,cout,hw,pad,k", NET_LAYERS)
def test_winograd_accuracy_against_float64(winograd, cin, cout, hw, pad, k):
    """The largest error relative to the largest float64 value stays below 2e-5 in all three passes
    (bench/winograd_accuracy.py prints it next to torch's float32 error; both are ~1e-6 to 1e-5)."""
    g = torch.Generator().manual_seed(cin * cout + hw)
    x = torch.randn(4, cin, hw, hw, generator=g)
    w = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
    padding = (pad,) * 4
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    ref = F.conv2d(x64, w64, None, padding=pad)
    dy = torch.randn(ref.shape, generator=g)
    rx, rw = torch.autograd.grad(ref, [x64, w64], dy.double())
    got = _ops(x, w, None, dy, padding, 1)
    for name, a, r in zip(("forward", "grad input", "grad weight"), got, (ref, rx, rw)):
        err = ((a.double() - r).abs().max() / r.abs().max()).item()
        assert err < 2e-5, f"{name}: relative error {err:.2e}"
