"""fastconv max_pool2d against torch.nn.functional.max_pool2d: values, indices and gradients."""
import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FF
from conftest import DTYPES, assert_bitwise_equal, make_layout, tol

ops = torch.ops.fastconv

pytestmark = pytest.mark.op


def pcase(id, shape, kernel, stride=None, padding=0, dilation=1):
    return pytest.param((shape, dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)), id=id)


CASES = [
    pcase("k2_stride_none_8x8", (2, 3, 8, 8), 2),
    pcase("k2_stride_none_odd_7x9", (2, 3, 7, 9), 2),
    pcase("k3_s1_pad1_overlap", (2, 3, 7, 9), 3, 1, 1),
    pcase("k3_s2_overlap_9x11", (2, 3, 9, 11), 3, 2),
    pcase("k3_s2_pad1_10x7", (1, 2, 10, 7), 3, 2, 1),
    pcase("k2_s2_pad1_5x5", (2, 2, 5, 5), 2, 2, 1),  # ceil: the last window would start in the padding
    pcase("rect_k2x3_s1x2_pad1", (2, 3, 6, 7), (2, 3), (1, 2), (1, 1)),
    pcase("dil2_k3_s2_pad1", (2, 2, 11, 10), 3, 2, 1, 2),
    pcase("dil2x1_k3x2_s2x1_pad1x0", (1, 3, 9, 8), (3, 2), (2, 1), (1, 0), (2, 1)),
    pcase("k1_s2_subsample", (2, 3, 7, 6), 1, 2),
    pcase("k4_s3_pad2_13x11", (1, 2, 13, 11), 4, 3, 2),
    pcase("window_is_input", (2, 2, 5, 4), (5, 4)),
    pcase("stride_gt_kernel", (1, 2, 11, 12), 2, 3),
    pcase("batch1_16ch", (1, 16, 6, 6), 2),
    # the vectorised 2 x 2 path: rows of 31 outputs take 16-, 8- and 4-lane vectors and 3 single outputs
    pcase("k2_wide_7x62", (2, 3, 7, 62), 2),
    pcase("k2_wide_odd_6x49", (1, 2, 6, 49), 2),
    pcase("unbatched_3d", (3, 7, 9), 3, 2, 1),
]


def _compare(x, kw, ceil_mode, dtype, grad=None):
    out, idx = FF.max_pool2d(x, ceil_mode=ceil_mode, return_indices=True, **kw)
    ref, ref_idx = F.max_pool2d(x, ceil_mode=ceil_mode, return_indices=True, **kw)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)  # a max involves no rounding
    assert idx.dtype == torch.int64
    assert torch.equal(idx, ref_idx), (idx, ref_idx)
    if x.requires_grad:
        g = torch.randn_like(ref) if grad is None else grad
        (gx,) = torch.autograd.grad(out, x, g)
        (gr,) = torch.autograd.grad(ref, x, g)
        torch.testing.assert_close(gx, gr, **tol(dtype, 9))  # overlapping windows add a few values
    return out, idx


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CASES)
def test_max_pool2d_matches_torch(backend, cfg, dtype, ceil_mode):
    shape, kw = cfg
    x = backend.randn(*shape, dtype=dtype, requires_grad=True)
    _compare(x, kw, ceil_mode, dtype)


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("cfg", CASES)
def test_max_pool2d_fake_kernel_shapes(cfg, ceil_mode):
    """The fake (meta) kernel that torch.compile traces with gives the shapes of the real kernel."""
    shape, kw = cfg
    x = torch.randn(shape)
    out, idx = FF.max_pool2d(x, ceil_mode=ceil_mode, return_indices=True, **kw)
    fake, fake_idx = FF.max_pool2d(x.to("meta"), ceil_mode=ceil_mode, return_indices=True, **kw)
    assert fake.shape == out.shape and fake_idx.shape == idx.shape and fake_idx.dtype == idx.dtype


# Mixed geometries (drawn at random once; test_fuzz's max_pool2d property draws new ones every run and
# runs these as its examples too) that torch accepts (its output size is at least 1) and whose every
# window holds at least one input element. (A window entirely in the padding, possible with
# dilation, gives -inf and an index outside the plane in torch and fastconv alike; torch's
# backward then corrupts the heap, fastconv's raises IndexError.)
# (input, kernel_size, stride, padding, dilation, ceil_mode)
GEOMETRIES = [
    ((2, 1, 1, 2), (1, 4), (2, 1), (0, 1), (3, 1), True),
    ((2, 3, 8, 9), (1, 2), (3, 1), (0, 1), (2, 3), True),
    ((1, 2, 4, 9), (4, 4), (1, 4), (2, 2), (1, 2), False),
    ((2, 3, 5, 10), (3, 2), (3, 3), (1, 1), (1, 3), True),
    ((1, 3, 10, 7), (2, 1), (3, 2), (1, 0), (3, 1), True),
    ((1, 3, 11, 6), (1, 4), (2, 2), (0, 2), (1, 3), True),
    ((2, 2, 12, 11), (3, 2), (4, 2), (1, 0), (1, 3), True),
    ((1, 2, 12, 9), (2, 1), (3, 3), (1, 0), (2, 2), False),
    ((1, 1, 10, 2), (2, 2), (4, 2), (0, 0), (1, 2), True),
    ((2, 3, 5, 9), (3, 3), (2, 3), (1, 0), (3, 1), False),
    ((2, 3, 3, 12), (3, 3), (2, 3), (1, 0), (2, 1), False),
    ((1, 3, 7, 8), (1, 4), (4, 3), (0, 0), (1, 2), True),
    ((1, 3, 12, 8), (3, 1), (3, 1), (1, 0), (3, 1), False),
    ((2, 2, 11, 5), (3, 1), (3, 3), (1, 0), (3, 2), True),
    ((2, 3, 6, 10), (1, 1), (1, 3), (0, 0), (1, 1), False),
    ((2, 2, 3, 4), (3, 2), (2, 2), (0, 1), (1, 3), True),
    ((1, 1, 7, 9), (2, 1), (4, 3), (0, 0), (3, 2), False),
    ((1, 3, 4, 5), (3, 2), (3, 2), (1, 1), (2, 1), True),
    ((1, 1, 11, 4), (2, 3), (3, 2), (1, 1), (2, 1), False),
    ((1, 2, 6, 8), (1, 3), (3, 2), (0, 1), (3, 2), True),
    ((1, 2, 2, 12), (2, 1), (3, 2), (0, 0), (1, 3), True),
    ((1, 3, 9, 5), (2, 3), (3, 3), (0, 0), (1, 2), False),
    ((2, 1, 3, 4), (1, 2), (2, 3), (0, 1), (1, 2), True),
    ((2, 3, 7, 8), (1, 4), (1, 2), (0, 0), (1, 1), True),
    ((2, 3, 6, 6), (3, 1), (2, 3), (1, 0), (1, 2), True),
    ((2, 3, 10, 10), (4, 1), (4, 2), (1, 0), (2, 1), True),
    ((1, 3, 7, 2), (1, 3), (4, 3), (0, 1), (2, 1), False),
    ((2, 3, 11, 8), (4, 2), (1, 4), (2, 1), (3, 2), False),
    ((2, 3, 8, 7), (3, 2), (4, 4), (0, 1), (3, 3), False),
    ((1, 2, 11, 3), (3, 2), (2, 4), (1, 1), (1, 2), True),
    ((1, 1, 6, 6), (1, 4), (2, 4), (0, 0), (1, 1), False),
    ((1, 3, 5, 7), (1, 2), (3, 2), (0, 1), (2, 2), False),
    ((2, 2, 10, 2), (3, 3), (2, 4), (0, 1), (2, 1), True),
    ((1, 3, 7, 10), (3, 1), (4, 3), (0, 0), (2, 3), False),
    ((1, 3, 3, 2), (2, 1), (2, 1), (0, 0), (3, 2), True),
    ((2, 1, 10, 12), (2, 3), (3, 1), (0, 0), (2, 3), True),
    ((2, 2, 7, 4), (3, 3), (4, 3), (1, 0), (2, 1), False),
    ((1, 3, 12, 7), (1, 1), (2, 4), (0, 0), (1, 3), False),
    ((1, 1, 8, 12), (4, 1), (4, 1), (1, 0), (3, 3), True),
    ((1, 2, 3, 7), (4, 4), (2, 4), (0, 0), (1, 1), True),
    ((1, 3, 9, 12), (1, 3), (1, 2), (0, 1), (1, 2), False),
    ((2, 2, 8, 6), (3, 3), (1, 1), (0, 1), (1, 1), False),
    ((2, 1, 3, 9), (2, 3), (2, 4), (1, 1), (1, 2), False),
    ((1, 3, 10, 6), (3, 2), (2, 4), (1, 0), (1, 1), True),
    ((2, 1, 4, 11), (2, 4), (2, 1), (0, 2), (1, 3), False),
    ((2, 3, 4, 11), (2, 2), (4, 3), (0, 0), (1, 2), False),
    ((2, 1, 4, 7), (1, 3), (3, 1), (0, 1), (1, 2), False),
    ((2, 1, 11, 12), (4, 2), (2, 4), (2, 1), (1, 2), True),
    ((1, 2, 1, 3), (1, 1), (2, 2), (0, 0), (2, 3), False),
    ((2, 2, 10, 5), (2, 1), (4, 3), (1, 0), (2, 3), False),
    ((2, 3, 11, 6), (4, 1), (1, 2), (0, 0), (3, 3), False),
    ((1, 2, 12, 10), (1, 1), (1, 1), (0, 0), (3, 2), False),
    ((1, 3, 12, 12), (4, 3), (3, 1), (0, 1), (1, 2), True),
    ((1, 2, 10, 10), (4, 3), (1, 3), (0, 1), (2, 3), False),
    ((1, 2, 11, 3), (1, 2), (2, 3), (0, 0), (2, 2), False),
    ((1, 1, 10, 8), (3, 3), (3, 4), (1, 1), (3, 2), True),
    ((2, 1, 12, 10), (2, 3), (3, 4), (0, 1), (1, 3), False),
    ((1, 3, 1, 9), (1, 1), (3, 4), (0, 0), (1, 2), True),
    ((1, 3, 11, 12), (4, 3), (1, 1), (1, 1), (2, 2), False),
    ((2, 1, 11, 1), (1, 1), (4, 3), (0, 0), (1, 3), True),
]


@pytest.mark.parametrize("cfg", [pytest.param(c, id=f"rand{i:02d}") for i, c in enumerate(GEOMETRIES)])
def test_max_pool2d_random_geometries(backend, cfg):
    shape, kernel_size, stride, padding, dilation, ceil_mode = cfg
    x = backend.randn(*shape, requires_grad=True)
    kw = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation)
    _compare(x, kw, ceil_mode, torch.float32)


def test_ceil_mode_changes_shape(backend):
    """The odd-size cases above really exercise ceil mode: it adds a row / column there."""
    x = backend.randn(1, 1, 7, 9)
    assert FF.max_pool2d(x, 2).shape == (1, 1, 3, 4)
    assert FF.max_pool2d(x, 2, ceil_mode=True).shape == (1, 1, 4, 5)
    # the window that would start in the right padding is dropped, as torch does
    x = backend.randn(1, 1, 5, 5)
    assert FF.max_pool2d(x, 2, 2, 1, ceil_mode=True).shape == F.max_pool2d(x, 2, 2, 1, ceil_mode=True).shape \
        == (1, 1, 3, 3)


def test_return_indices_flag(backend):
    x = backend.randn(1, 2, 6, 6)
    out = FF.max_pool2d(x, 2)
    assert isinstance(out, torch.Tensor)
    pair = FF.max_pool2d(x, 2, return_indices=True)
    assert isinstance(pair, tuple) and len(pair) == 2
    assert torch.equal(pair[0], out)
    # stride given as an empty list means "kernel_size", as in torch
    assert torch.equal(FF.max_pool2d(x, 3, stride=[]), F.max_pool2d(x, 3, stride=[]))


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_layouts(backend, layout, dtype):
    x = make_layout(backend.randn(2, 5, 9, 8, dtype=dtype), layout).requires_grad_()
    assert not x.is_contiguous()
    out, idx = _compare(x, dict(kernel_size=3, stride=2, padding=1), True, dtype)
    # and the same as pooling a contiguous copy
    ref, ref_idx = FF.max_pool2d(x.detach().contiguous(), 3, 2, 1, ceil_mode=True, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [10, 62])  # 62: every lane of the vectorised 2 x 2 path
def test_ties_pick_first_maximum_like_torch(backend, dtype, width):
    x = torch.randint(0, 3, (2, 3, 9, width)).to(dtype=dtype, device=backend.device).requires_grad_()
    for kw in [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2)]:
        _compare(x, kw, False, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_in_every_lane_of_the_2x2_path(backend, dtype):
    """NaN (the last one of a window wins), +inf and -inf at each of the four window positions, spread
    over all the lanes of the 16-, 8- and 4-wide vectors and the single outputs of a 62-wide row."""
    x = backend.randn(2, 2, 8, 62, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    for value in (float("nan"), float("inf"), float("-inf")):
        pos = torch.randint(0, x.numel(), (60,), generator=g)
        x.view(-1)[pos.to(x.device)] = value
    x[1, 1, 2:4, :] = float("-inf")           # windows of only -inf
    _compare(x.requires_grad_(), dict(kernel_size=2), False, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_like_torch(backend, dtype):
    x = backend.randn(2, 2, 8, 9, dtype=dtype)
    nan, inf = float("nan"), float("inf")
    x[0, 0, 0, 0] = nan                       # one NaN in a window
    x[0, 0, 2, 2] = nan
    x[0, 0, 2, 3] = nan                       # two NaNs in one window: the later one is kept
    x[0, 1, 4:6, 4:6] = -inf                  # a window of only -inf
    x[1, 0, 3, :] = inf                       # +inf beats everything but NaN
    x[1, 0, 3, 1] = nan
    x[1, 1] = -inf                            # a whole plane of -inf
    x.requires_grad_()
    for kw in [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2, padding=1)]:
        out, _ = _compare(x, kw, False, dtype)
        assert torch.isnan(out).any()


def test_backward_is_bitwise_deterministic(backend):
    # many ties and heavily overlapping windows: several outputs send gradient to the same input,
    # so the summation order must not depend on the thread schedule
    x = torch.randint(0, 4, (4, 8, 33, 31)).float().to(backend.device).requires_grad_()
    g = backend.randn(*F.max_pool2d(x.detach(), 3, 1, 1).shape)
    grads = []
    for _ in range(4):
        out = FF.max_pool2d(x, 3, 1, 1)
        (gx,) = torch.autograd.grad(out, x, g)
        grads.append(gx)
    for gx in grads[1:]:
        assert_bitwise_equal(gx, grads[0])
    (gr,) = torch.autograd.grad(F.max_pool2d(x, 3, 1, 1), x, g)
    torch.testing.assert_close(grads[0], gr, **tol(torch.float32, 9))


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                dict(kernel_size=(2, 3), stride=1, dilation=(2, 1))],
                         ids=["k2", "k3_s2_pad1_ceil", "k2x3_s1_dil2x1"])
def test_max_pool2d_gradcheck(backend, kw):
    # distinct values (a permutation) spaced far more than gradcheck's eps apart: no ties
    x = (torch.randperm(2 * 5 * 7, dtype=torch.float64) / 10).reshape(1, 2, 5, 7).to(backend.device)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: FF.max_pool2d(x, **kw), (x,))


def test_opcheck_max_pool2d(backend):
    x = backend.randn(1, 2, 5, 6, requires_grad=True)
    torch.library.opcheck(ops.max_pool2d, (x, [2, 2], [2, 2], [0, 0], [1, 1], False))
    torch.library.opcheck(ops.max_pool2d, (x, [3, 2], [2, 1], [1, 1], [1, 2], True))
    out, idx = ops.max_pool2d(x.detach(), [3, 3], [1, 1], [1, 1], [1, 1], False)
    torch.library.opcheck(ops.max_pool2d_backward,
                          (torch.randn_like(out), idx, list(x.shape), [3, 3], [1, 1], [1, 1], [1, 1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, dilation=1),
                                    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1))])
def test_max_pool2d_ops_keep_channels_last(backend, dtype, kwargs):
    """On the CUDA kernels a channels_last input is pooled in place as NHWC: output, indices and the
    backward's grad_input are channels_last from the kernels themselves; values, indices and gradients
    as torch's (7 channels: a warp's lanes span pixels as well as channels)."""
    x = make_layout(backend.randn(2, 7, 9, 10, dtype=dtype), "channels_last")
    k, s, p, d = (kwargs.get(n, dflt) for n, dflt in (("kernel_size", 2), ("stride", None), ("padding", 0),
                                                       ("dilation", 1)))
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]
    args = (pair(k), pair(s if s is not None else k), pair(p), pair(d), False)
    y, idx = ops.max_pool2d(x, *args)
    ref, ref_idx = F.max_pool2d(x, k, s, p, d, return_indices=True)
    assert_bitwise_equal(y.contiguous(), ref.contiguous())
    assert torch.equal(idx.contiguous(), ref_idx.contiguous())
    dy = make_layout(torch.randn_like(ref), "channels_last")
    dx = ops.max_pool2d_backward(dy, idx, list(x.shape), *args[:4])
    xr = x.detach().requires_grad_()
    (ref_dx,) = torch.autograd.grad(F.max_pool2d(xr, k, s, p, d), xr, dy)
    torch.testing.assert_close(dx, ref_dx, **tol(dtype, 4))
    if backend.name in ("sim", "cuda"):
        for t in (y, idx, dx):
            assert t.is_contiguous(memory_format=torch.channels_last)
