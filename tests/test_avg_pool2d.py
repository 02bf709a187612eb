"""fastconv avg_pool2d and adaptive_avg_pool2d against torch: values, gradients, every window option,
layouts, 16-bit types, determinism, double backward, the modules and their conversion."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
import fastconv.nn as fnn
from conftest import DTYPES, REDUCED_DTYPES, assert_bitwise_equal, make_layout, num_threads, tol

ops = torch.ops.fastconv

pytestmark = [pytest.mark.op, pytest.mark.sanitize_sim]


def pcase(id, shape, **kw):
    return pytest.param((shape, kw), id=id)


AVG_CASES = [
    pcase("k2", (2, 3, 8, 8), kernel_size=2),
    pcase("k2_odd_7x9", (2, 3, 7, 9), kernel_size=2),
    pcase("k3_s1_p1", (2, 3, 7, 9), kernel_size=3, stride=1, padding=1),
    pcase("k3_s2_p1_exclude_pad", (1, 4, 10, 7), kernel_size=3, stride=2, padding=1, count_include_pad=False),
    pcase("k3_s2_p1_ceil", (2, 2, 10, 7), kernel_size=3, stride=2, padding=1, ceil_mode=True),
    pcase("k3_s2_p1_ceil_exclude", (2, 2, 11, 8), kernel_size=3, stride=2, padding=1, ceil_mode=True,
          count_include_pad=False),
    pcase("rect_k2x3_s1x2_p1x1", (2, 3, 6, 7), kernel_size=(2, 3), stride=(1, 2), padding=(1, 1)),
    pcase("divisor_override", (2, 3, 9, 8), kernel_size=3, stride=2, padding=1, divisor_override=7),
    pcase("stride_gt_kernel", (1, 2, 11, 12), kernel_size=2, stride=3),
    pcase("window_is_input", (2, 2, 5, 4), kernel_size=(5, 4)),
    pcase("alexnet_k3_s2", (2, 8, 15, 15), kernel_size=3, stride=2),
    pcase("wide_plane", (1, 2, 6, 70), kernel_size=2),
]

ADAPTIVE_CASES = [
    pytest.param(((2, 3, 9, 11), 1), id="global"),
    pytest.param(((2, 3, 9, 11), (3, 4)), id="3x4"),
    pytest.param(((2, 3, 9, 11), (None, 5)), id="none_5"),
    pytest.param(((2, 3, 7, 5), (7, 13)), id="upsampling_7x13"),  # more outputs than inputs: windows repeat
    pytest.param(((1, 4, 13, 13), (6, 6)), id="alexnet_6x6"),
    pytest.param(((2, 5, 8, 8), (8, 8)), id="identity"),
]


def _window_terms(x_shape, kw):
    k = kw.get("kernel_size", 1)
    k = (k, k) if isinstance(k, int) else k
    return k[0] * k[1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_pool2d_matches_torch(backend, case, dtype):
    shape, kw = case
    x = backend.randn(*shape, dtype=dtype, requires_grad=True)
    out, ref = FF.avg_pool2d(x, **kw), F.avg_pool2d(x, **kw)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, **tol(dtype, _window_terms(shape, kw)))
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(out, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gr, **tol(dtype, _window_terms(shape, kw)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ADAPTIVE_CASES)
def test_adaptive_avg_pool2d_matches_torch(backend, case, dtype):
    shape, size = case
    x = backend.randn(*shape, dtype=dtype, requires_grad=True)
    out, ref = FF.adaptive_avg_pool2d(x, size), F.adaptive_avg_pool2d(x, size)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, **tol(dtype, shape[2] * shape[3]))
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(out, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gr, **tol(dtype, shape[2] * shape[3]))


@pytest.mark.parametrize("dtype", REDUCED_DTYPES)
def test_16_bit_types_like_torch(backend, dtype):
    """float16 / bfloat16: summed in float32 and rounded once, as torch's CPU kernels."""
    x = backend.randn(2, 3, 9, 10).to(dtype)
    for ours, theirs in [(FF.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(x.float(), 3, 2, 1).to(dtype)),
                         (FF.adaptive_avg_pool2d(x, (4, 3)), F.adaptive_avg_pool2d(x.float(), (4, 3)).to(dtype))]:
        assert ours.dtype == dtype
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("which", ["avg", "adaptive"])
def test_gradcheck_and_gradgradcheck(backend, which):
    x = backend.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    if which == "avg":
        fn = lambda t: FF.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False)  # noqa: E731
    else:
        fn = lambda t: FF.adaptive_avg_pool2d(t, (4, 5))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_opcheck(backend):
    x = backend.randn(2, 3, 7, 9, requires_grad=True)
    torch.library.opcheck(ops.avg_pool2d, (x, [3, 3], [2, 2], [1, 1], True, False, 0))
    torch.library.opcheck(ops.avg_pool2d, (x, [2, 3], [1, 2], [1, 1], False, True, 5))
    torch.library.opcheck(ops.adaptive_avg_pool2d, (x, [4, 2]))
    torch.library.opcheck(ops.adaptive_avg_pool2d, (backend.randn(2, 3, 9, 7, dtype=torch.float64).transpose(2, 3),
                                                    [1, 1]))
    dy = backend.randn(2, 3, 4, 5)
    torch.library.opcheck(ops.avg_pool2d_backward, (dy, [2, 3, 7, 9], [3, 3], [2, 2], [1, 1], True, False, 0))
    torch.library.opcheck(ops.adaptive_avg_pool2d_backward, (dy, [2, 3, 7, 9]))


@pytest.mark.parametrize("layout", ["transposed", "sliced", "strided", "channels_last"])
def test_non_contiguous_inputs(backend, layout):
    x = make_layout(backend.randn(2, 3, 8, 10), layout).requires_grad_()
    assert not x.is_contiguous()
    for ours, theirs in [(lambda t: FF.avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1)),
                         (lambda t: FF.adaptive_avg_pool2d(t, (3, 4)), lambda t: F.adaptive_avg_pool2d(t, (3, 4)))]:
        out, ref = ours(x), theirs(x)
        torch.testing.assert_close(out, ref, **tol(torch.float32, 20))
        if layout == "channels_last":
            assert out.is_contiguous(memory_format=torch.channels_last) == \
                ref.is_contiguous(memory_format=torch.channels_last)
        g = make_layout(torch.randn_like(ref), "transposed")
        (gx,) = torch.autograd.grad(out, x, g)
        (gr,) = torch.autograd.grad(ref, x, g)
        torch.testing.assert_close(gx, gr, **tol(torch.float32, 20))


def test_unbatched_3d_input(backend):
    x = backend.randn(3, 9, 8)
    torch.testing.assert_close(FF.avg_pool2d(x, 2), F.avg_pool2d(x, 2))
    torch.testing.assert_close(FF.adaptive_avg_pool2d(x, 2), F.adaptive_avg_pool2d(x, 2))


def test_thread_count_and_repeat_invariance(backend):
    x = backend.randn(6, 5, 17, 19)
    dy = backend.randn(6, 5, 9, 10)
    results = []
    for n in (1, 2, 3):
        with num_threads(n):
            results.append([FF.avg_pool2d(x, 3, 2, 1, ceil_mode=True), FF.adaptive_avg_pool2d(x, (5, 7)),
                            ops.avg_pool2d_backward(dy, list(x.shape), [3, 3], [2, 2], [1, 1], True, True, 0),
                            ops.adaptive_avg_pool2d_backward(dy, list(x.shape))])
    for other in results[1:]:
        for a, r in zip(results[0], other):
            assert_bitwise_equal(a, r)


def test_fake_kernel_shapes():
    for kw in [dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), dict(kernel_size=(2, 3))]:
        x = torch.randn(2, 3, 11, 8)
        with torch._subclasses.FakeTensorMode() as mode:
            fake = FF.avg_pool2d(mode.from_tensor(x), **kw)
        assert fake.shape == FF.avg_pool2d(x, **kw).shape
    with torch._subclasses.FakeTensorMode() as mode:
        fake = FF.adaptive_avg_pool2d(mode.from_tensor(torch.randn(2, 3, 11, 8)), (None, 3))
    assert fake.shape == (2, 3, 11, 3)


def test_modules_and_conversion(backend):
    torch_net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AvgPool2d(2),
                                    torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                                    torch.nn.AdaptiveAvgPool2d((1, 1)), torch.nn.Flatten()).to(backend.device)
    net = fastconv.convert(torch_net)
    assert type(net[1]) is fnn.AvgPool2d and type(net[2]) is fnn.AvgPool2d and type(net[3]) is fnn.AdaptiveAvgPool2d
    assert repr(net[2]) == repr(torch_net[2]) and repr(net[3]) == repr(torch_net[3])
    x = backend.randn(2, 3, 12, 12, requires_grad=True)
    out, ref = net(x), torch_net(x)
    torch.testing.assert_close(out, ref, **tol(torch.float32, 64))
    (gx,) = torch.autograd.grad(out.sum(), x)
    (gr,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(gx, gr, **tol(torch.float32, 64))


def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    x = backend.randn(2, 3, 9, 8, requires_grad=True)
    fn = torch.compile(lambda t: FF.adaptive_avg_pool2d(FF.avg_pool2d(t, 3, 2, 1), 2), fullgraph=True,
                       backend="aot_eager")
    out = fn(x)
    ref = F.adaptive_avg_pool2d(F.avg_pool2d(x, 3, 2, 1), 2)
    torch.testing.assert_close(out, ref)
    (gx,) = torch.autograd.grad(out.sum(), x)
    (gr,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(gx, gr)


def test_bad_arguments():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="divisor_override must be a positive int"):
        FF.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="padding must be at most half of kernel_size"):
        FF.avg_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="output_size entries must be positive"):
        FF.adaptive_avg_pool2d(x, (0, 2))
    with pytest.raises(ValueError, match="expected a 3-D .unbatched. or 4-D"):
        FF.avg_pool2d(torch.randn(8, 8), 2)
    with pytest.raises(TypeError, match="fastconv.avg_pool2d: input must be float32 or float64"):
        FF.avg_pool2d(x.long(), 2)
    with pytest.raises(ValueError, match="is not the output of pooling"):
        ops.avg_pool2d_backward(torch.randn(2, 3, 3, 3), [2, 3, 8, 8], [2, 2], [2, 2], [0, 0], False, True, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool_ops_keep_channels_last(backend, dtype):
    """On the CUDA kernels a channels_last input is pooled in place as NHWC: avg_pool2d,
    adaptive_avg_pool2d and their backward ops give channels_last results from the kernels themselves,
    with torch's values (7 channels: a warp spans pixels as well as channels)."""
    x = make_layout(backend.randn(2, 7, 9, 10, dtype=dtype), "channels_last")
    cases = [
        (lambda t: ops.avg_pool2d(t, [3, 2], [2, 2], [1, 1], True, False, 0),
         lambda t: F.avg_pool2d(t, (3, 2), 2, 1, ceil_mode=True, count_include_pad=False),
         lambda dy: ops.avg_pool2d_backward(dy, list(x.shape), [3, 2], [2, 2], [1, 1], True, False, 0)),
        (lambda t: ops.adaptive_avg_pool2d(t, [4, 3]), lambda t: F.adaptive_avg_pool2d(t, (4, 3)),
         lambda dy: ops.adaptive_avg_pool2d_backward(dy, list(x.shape))),
    ]
    for ours, theirs, backward in cases:
        y = ours(x)
        xr = x.detach().requires_grad_()
        ref = theirs(xr)
        torch.testing.assert_close(y, ref, **tol(dtype, 6))
        dy = make_layout(torch.randn_like(ref), "channels_last")
        dx = backward(dy)
        (ref_dx,) = torch.autograd.grad(ref, xr, dy)
        torch.testing.assert_close(dx, ref_dx, **tol(dtype, 6))
        if backend.name in ("sim", "cuda"):
            assert y.is_contiguous(memory_format=torch.channels_last)
            assert dx.is_contiguous(memory_format=torch.channels_last)
