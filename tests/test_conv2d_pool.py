"""conv2d + ReLU + max-pool in one op (fastconv.functional.conv2d_relu_pool, fused by fuse_conv_relu)
against torch's three ops and against fastconv's own three ops, bit for bit."""
import pytest
import torch
import torch.nn.functional as F

import fastconv.models
import fastconv.functional as FF
import fastconv.nn as fnn
from conftest import DTYPES, assert_bitwise_equal, conv_terms, num_threads, tol

ops = torch.ops.fastconv

pytestmark = pytest.mark.op

# (input, weight, conv kwargs, pool): Winograd (float32, C_in >= 16) and direct paths, padding,
# stride, groups, dilation, odd conv outputs (the pooling drops the last row / column), rectangular pools
CASES = [
    pytest.param((3, 16, 12, 12), (8, 16, 3, 3), {}, (2, 2), id="winograd_10x10"),
    pytest.param((2, 3, 11, 9), (5, 3, 3, 3), {"padding": 1}, (2, 2), id="direct_odd_pad1"),
    pytest.param((2, 4, 13, 12), (6, 4, 3, 3), {"stride": 2}, (2, 2), id="stride2"),
    pytest.param((2, 6, 10, 11), (4, 3, 3, 3), {"groups": 2, "dilation": 2}, (2, 3), id="groups_dilation_pool2x3"),
    pytest.param((1, 18, 9, 9), (7, 18, 3, 3), {"padding": 1}, (3, 3), id="winograd_pool3"),
    pytest.param((2, 2, 7, 8), (3, 2, 1, 1), {}, (1, 2), id="1x1_pool1x2"),
]


def _reference(x, w, b, kwargs, pool, relu=True, negative_slope=0.0):
    y = F.conv2d(x, w, b, **kwargs)
    if relu:
        y = F.leaky_relu(y, negative_slope) if negative_slope else F.relu(y)
    return F.max_pool2d(y, pool)


@pytest.mark.parametrize("slope", [0.0, 0.1], ids=["relu", "leaky_relu"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, kwargs, pool", CASES)
def test_matches_torch(backend, xs, ws, kwargs, pool, dtype, slope):
    x = backend.randn(*xs, dtype=dtype).requires_grad_()
    w = backend.randn(*ws, dtype=dtype).requires_grad_()
    b = backend.randn(ws[0], dtype=dtype).requires_grad_()
    out = FF.conv2d_relu_pool(x, w, b, pool=pool, negative_slope=slope, **kwargs)
    ref = _reference(x, w, b, kwargs, pool, negative_slope=slope)
    torch.testing.assert_close(out, ref, **tol(dtype, conv_terms(ws)))
    dy = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, w, b), dy)
    ref_grads = torch.autograd.grad(ref, (x, w, b), dy)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(g, r, **tol(dtype, 64 * ws[0] * 9), msg=lambda m: f"gradient {i}: {m}")


@pytest.mark.parametrize("relu, slope", [(True, 0.0), (False, 0.0), (True, 0.2)], ids=["relu", "none", "leaky_relu"])
@pytest.mark.parametrize("xs, ws, kwargs, pool", CASES)
def test_same_bits_as_the_three_ops(backend, xs, ws, kwargs, pool, relu, slope):
    """Output, indices and every gradient are those of fastconv's conv2d (with its activation), max_pool2d,
    one after the other."""
    x = backend.randn(*xs).requires_grad_()
    w = backend.randn(*ws).requires_grad_()
    b = backend.randn(ws[0])
    if slope:  # a negative bias of 2.5 standard deviations of the sums: some windows are all negative
        b -= 2.5 * (ws[1] * ws[2] * ws[3]) ** 0.5
    b.requires_grad_()
    stride = FF._pair(kwargs.get("stride", 1), "stride")
    dilation = FF._pair(kwargs.get("dilation", 1), "dilation")
    pad = FF._conv_padding(kwargs.get("padding", 0), ws[2:], dilation, stride)
    args = (stride, pad, dilation, kwargs.get("groups", 1))
    out, idx = ops.conv2d_pool(x, w, b, *args, relu, pool, slope)
    ref, ref_idx = ops.max_pool2d(ops.conv2d(x, w, b, *args, relu, slope), pool, pool, (0, 0), (1, 1), False)
    assert_bitwise_equal(out, ref)
    assert torch.equal(idx, ref_idx)
    if slope:
        assert (out < 0).any()  # some windows are all negative: the slope's gradient is exercised
    dy = torch.randn_like(out)
    for g, r in zip(torch.autograd.grad(out, (x, w, b), dy), torch.autograd.grad(ref, (x, w, b), dy)):
        assert_bitwise_equal(g, r)


@pytest.mark.backends("cpu")
def test_many_slices_of_a_batch():
    """A batch larger than one slice (about 4 MiB of pre-pool output): 40 images of 64 x 24 x 24 are cut
    into slices of 28 and 12; every image is still the unfused result, bit for bit."""
    x, w, b = torch.randn(40, 32, 26, 26), torch.randn(64, 32, 3, 3) / 17, torch.randn(64)
    args = ([1, 1], [0, 0, 0, 0], [1, 1], 1)
    out, idx = ops.conv2d_pool(x, w, b, *args, True, [2, 2])
    ref, ref_idx = ops.max_pool2d(ops.conv2d(x, w, b, *args, True), [2, 2], [2, 2], [0, 0], [1, 1], False)
    assert_bitwise_equal(out, ref)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(out, _reference(x, w, b, {}, 2), **tol(torch.float32, conv_terms(w.shape)))


def test_thread_count_invariance(backend):
    x, w, b = backend.randn(9, 16, 14, 13), backend.randn(12, 16, 3, 3), backend.randn(12)
    args = ([1, 1], [1, 1, 0, 1], [1, 1], 1, True, [2, 2])
    results = []
    for n in (1, 2, 3):
        with num_threads(n):
            results.append(ops.conv2d_pool(x, w, b, *args))
    for out, idx in results[1:]:
        assert_bitwise_equal(out, results[0][0])
        assert torch.equal(idx, results[0][1])


def test_gradcheck(backend):
    x = backend.randn(2, 3, 7, 8, dtype=torch.float64).requires_grad_()
    w = backend.randn(4, 3, 3, 3, dtype=torch.float64).requires_grad_()
    b = backend.randn(4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: FF.conv2d_relu_pool(*a, padding=1), (x, w, b))
    assert torch.autograd.gradcheck(lambda *a: FF.conv2d_relu_pool(*a, padding=1, negative_slope=0.3), (x, w, b))


def test_opcheck(backend):
    x, w, b = backend.randn(2, 3, 8, 7), backend.randn(4, 3, 3, 3), backend.randn(4)
    torch.library.opcheck(ops.conv2d_pool, (x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, [2, 2]))
    torch.library.opcheck(ops.conv2d_pool, (x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, [2, 2], 0.1))
    torch.library.opcheck(ops.conv2d_pool,
                          (x.requires_grad_(), w, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, False, [2, 3]))


def test_unbatched_and_channels_last(backend):
    x, w = backend.randn(4, 9, 10), backend.randn(5, 4, 3, 3)
    torch.testing.assert_close(FF.conv2d_relu_pool(x, w), _reference(x, w, None, {}, 2))
    xc = backend.randn(2, 4, 9, 10).contiguous(memory_format=torch.channels_last)
    out = FF.conv2d_relu_pool(xc, w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, _reference(xc, w, None, {}, 2))


def test_pool_larger_than_the_output_is_a_clear_error(backend):
    with pytest.raises(ValueError, match="pooling window .* does not fit the convolution's 3x3 output"):
        FF.conv2d_relu_pool(backend.randn(1, 2, 5, 5), backend.randn(3, 2, 3, 3), pool=4)
    with pytest.raises(ValueError, match="pool must be two positive ints"):
        ops.conv2d_pool(backend.randn(1, 2, 5, 5), backend.randn(3, 2, 3, 3), None, [1, 1], [0, 0, 0, 0], [1, 1], 1,
                        True, [0, 2])


def test_fuse_pass_fuses_the_reference_nets(backend):
    for name, shape in (("mnist", (3, 1, 28, 28)), ("cifar10", (3, 3, 32, 32))):
        torch.manual_seed(0)
        fused = fastconv.models.build(name).to(backend.device).eval()
        torch.manual_seed(0)
        plain = fastconv.models.build(name, layers=torch.nn).to(backend.device).eval()
        pools = [m.fused_pool for m in fused.modules() if isinstance(m, fnn.Conv2d) and m.fused_pool is not None]
        assert pools == [(2, 2)] * (1 if name == "mnist" else 2)
        assert not any(isinstance(m, torch.nn.MaxPool2d) for m in fused.modules())
        assert fused.state_dict().keys() == plain.state_dict().keys()
        x = backend.randn(*shape)
        torch.testing.assert_close(fused(x), plain(x), **tol(torch.float32, 64 * 9 * 128))


@pytest.mark.parametrize("pool", [
    torch.nn.MaxPool2d(2, stride=1), torch.nn.MaxPool2d(2, padding=1), torch.nn.MaxPool2d(2, ceil_mode=True),
    torch.nn.MaxPool2d(2, dilation=2), torch.nn.MaxPool2d(2, return_indices=True)], ids=str)
def test_fuse_pass_leaves_other_pools(pool):
    net = torch.nn.Sequential(fnn.Conv2d(2, 3, 3), torch.nn.ReLU(), pool)
    fnn.fuse_conv_relu(net)
    assert net[0].fused_relu and net[0].fused_pool is None and net[2] is pool


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_reduced_precision_same_bits_as_the_three_ops(backend, dtype):
    """16-bit arguments: the convolution's outputs are rounded to the 16-bit type before the pooling, as the
    unfused conv2d's output is, so the maxima, the indices and the gradients are the unfused ones."""
    x = backend.randn(4, 16, 12, 12).to(dtype).requires_grad_()
    w = (backend.randn(8, 16, 3, 3) / 12).to(dtype).requires_grad_()
    args = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    out, idx = ops.conv2d_pool(x, w, None, *args, True, [2, 2])
    ref, ref_idx = ops.max_pool2d(ops.conv2d(x, w, None, *args, True), [2, 2], [2, 2], [0, 0], [1, 1], False)
    assert out.dtype == dtype
    assert_bitwise_equal(out, ref)
    assert torch.equal(idx, ref_idx)
    dy = torch.randn(out.shape, device=out.device).to(dtype)
    for g, r in zip(torch.autograd.grad(out, (x, w), dy), torch.autograd.grad(ref, (x, w), dy)):
        assert_bitwise_equal(g, r)
