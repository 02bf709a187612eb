"""fastconv conv2d / conv1d (and the fused conv+relu op) against torch.nn.functional."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
from conftest import (DTYPES, REDUCED_DTYPES, assert_bitwise_equal, conv_terms, make_layout, num_threads, tf32_round,
                      tol)

ops = torch.ops.fastconv

pytestmark = [pytest.mark.op, pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")]


@dataclasses.dataclass(frozen=True)
class ConvCase:
    x: tuple  # input shape: (N, C, H, W) or unbatched (C, H, W)
    w: tuple  # weight shape: (C_out, C_in / groups, kH, kW)
    kwargs: dict = dataclasses.field(default_factory=dict)  # stride, padding, dilation, groups
    bias: bool = True


def case(id, x, w, bias=True, **kwargs):
    return pytest.param(ConvCase(x, w, kwargs, bias), id=id)


CONV2D_CASES = [
    case("odd_7x11", (2, 3, 7, 11), (4, 3, 3, 3)),
    case("odd_13x5_pad1", (2, 3, 13, 5), (5, 3, 3, 3), padding=1),
    case("stride2", (2, 3, 9, 11), (4, 3, 3, 3), stride=2),
    case("stride2x3_padpair", (2, 2, 13, 11), (3, 2, 3, 3), stride=(2, 3), padding=(1, 2)),
    case("stride2_kernel_rect", (2, 3, 10, 9), (4, 3, 2, 5), stride=(2, 1), padding=(0, 2)),
    case("pad_valid", (1, 3, 8, 6), (2, 3, 3, 2), padding="valid"),
    case("pad_same_3x3", (2, 3, 7, 11), (4, 3, 3, 3), padding="same"),
    case("pad_same_even_2x4", (2, 3, 7, 9), (4, 3, 2, 4), padding="same"),
    case("pad_same_even_2x4_dil2", (2, 3, 7, 9), (4, 3, 2, 4), padding="same", dilation=2),
    case("pad_same_5x3_dil2x3", (1, 2, 11, 13), (3, 2, 5, 3), padding="same", dilation=(2, 3)),
    case("dilation2", (2, 3, 11, 11), (4, 3, 3, 3), dilation=2),
    case("dilation2_stride2_pad2", (2, 3, 12, 9), (4, 3, 3, 3), dilation=2, stride=2, padding=2),
    case("groups2", (2, 4, 7, 9), (6, 2, 3, 3), groups=2, padding=1),
    case("groups2_stride2", (2, 6, 9, 8), (4, 3, 3, 3), groups=2, stride=2),
    case("depthwise", (2, 5, 9, 7), (5, 1, 3, 3), groups=5, padding=1),
    case("depthwise_stride2_dil2", (2, 4, 11, 10), (4, 1, 3, 3), groups=4, stride=2, dilation=2, padding=2),
    case("1x1", (2, 16, 5, 7), (8, 16, 1, 1)),
    case("1x1_stride2", (2, 8, 7, 9), (5, 8, 1, 1), stride=2),
    case("batch1", (1, 3, 6, 6), (4, 3, 3, 3), padding=1),
    case("no_bias", (2, 3, 7, 11), (4, 3, 3, 3), bias=False, padding=1),
    case("no_bias_groups2", (2, 4, 6, 5), (4, 2, 2, 2), bias=False, groups=2),
    case("unbatched_3d", (3, 7, 11), (4, 3, 3, 3), padding=1),
    case("unbatched_3d_stride2", (2, 9, 8), (3, 2, 3, 2), stride=2),
    # K = 32 * 3 * 3 = 288 > 256: two k-blocks of the GEMM; 20 output channels: several row panels
    case("K288_two_kblocks", (2, 32, 8, 8), (20, 32, 3, 3), padding=1),
    # 17 x 19 = 323 output pixels: more than one pixel block (and grad-weight depth block)
    case("many_pixels", (1, 2, 19, 21), (3, 2, 3, 3)),
    # 9 images: the weight gradient is reduced over 8 uneven image chunks
    case("batch9_chunks", (9, 2, 5, 6), (3, 2, 3, 3), padding=1),
    case("kernel_equals_input", (2, 3, 4, 5), (2, 3, 4, 5)),
    # stride 4 > kernel 3: input rows / columns 7..9 feed no output and get zero gradient
    case("stride_gt_kernel", (2, 3, 10, 10), (4, 3, 3, 3), stride=4),
    # The CUDA GEMMs' pipelines: K = 216 is 7 tensor-core K steps (16-bit: a ring of 3 stages goes
    # round twice) or 14 of tf32 / SIMT, 3 x 2 block tiles of 64 x 64 with ragged edges, and a weight
    # gradient over 270 pixels in 2 K splits
    case("pipeline_deep_k", (3, 24, 10, 9), (70, 24, 3, 3), padding=1),
    # the same with groups, stride 2 and dilation (the grad-input cursor's stride remainders)
    case("pipeline_groups_stride2_dil2", (2, 32, 15, 14), (40, 16, 3, 3), groups=2, stride=2, dilation=2,
         padding=2),
]


def _torch_conv_asym(x, w, b, stride, padding, dilation, groups):
    """torch's conv2d with (top, bottom, left, right) padding, which F.conv2d cannot take directly."""
    pt, pb, pl, pr = padding
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride, 0, dilation, groups)


def _make_inputs(c, dtype, device):
    x = torch.randn(c.x, dtype=dtype, device=device, requires_grad=True)
    w = torch.randn(c.w, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(c.w[0], dtype=dtype, device=device, requires_grad=True) if c.bias else None
    return x, w, b


def _grad_terms(c, out_shape):
    """Products summed per value of (grad input, grad weight, grad bias)."""
    groups = c.kwargs.get("groups", 1)
    n_pixels = math.prod(out_shape) // c.w[0]  # N * OH * OW
    return c.w[0] // groups * c.w[2] * c.w[3], n_pixels, n_pixels


def _check_against_torch(fc_fn, ref_fn, inputs, fwd_terms, grad_terms, dtype, grad_out=None):
    """Forward output and the gradient of every input of fc_fn vs ref_fn (same leaves, same dY)."""
    leaves = [t for t in inputs if t is not None]
    out = fc_fn(*inputs)
    ref = ref_fn(*inputs)
    torch.testing.assert_close(out, ref, **tol(dtype, fwd_terms))
    if grad_out is None:
        grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)
    for i, (g, r, terms) in enumerate(zip(grads, ref_grads, grad_terms)):
        torch.testing.assert_close(g, r, **tol(dtype, terms), msg=lambda m: f"gradient of input {i}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CONV2D_CASES)
def test_conv2d_matches_torch(backend, c, dtype):
    x, w, b = _make_inputs(c, dtype, backend.device)
    out_shape = F.conv2d(x.detach(), w.detach(), None, **c.kwargs).shape
    _check_against_torch(lambda *a: FF.conv2d(*a, **c.kwargs), lambda *a: F.conv2d(*a, **c.kwargs),
                         (x, w, b), conv_terms(c.w), _grad_terms(c, out_shape), dtype)


@pytest.mark.parametrize("dtype", REDUCED_DTYPES)
@pytest.mark.parametrize("c", CONV2D_CASES)
def test_conv2d_reduced_precision_matches_torch(backend, c, dtype):
    """float16 / bfloat16 forward and every gradient (tensor cores on the CUDA kernels) against torch in
    float32 on the same 16-bit values, rounded once to the 16-bit type."""
    x, w, b = (t.detach().to(dtype).requires_grad_() if t is not None else None
               for t in _make_inputs(c, torch.float32, backend.device))
    leaves = [t for t in (x, w, b) if t is not None]
    refs = [t.detach().float().requires_grad_() for t in leaves]
    out = FF.conv2d(x, w, b, **c.kwargs)
    ref = F.conv2d(*refs, **c.kwargs) if b is not None else F.conv2d(*refs, None, **c.kwargs)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref.to(dtype), **tol(dtype, conv_terms(c.w)))
    grad_out = torch.randn_like(ref).to(dtype)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_grads = torch.autograd.grad(ref, refs, grad_out.float())
    for i, (g, r, terms) in enumerate(zip(grads, ref_grads, _grad_terms(c, ref.shape))):
        assert g.dtype == dtype
        torch.testing.assert_close(g, r.to(dtype), **tol(dtype, terms), msg=lambda m: f"gradient of input {i}: {m}")


@pytest.mark.parametrize("c", CONV2D_CASES)
def test_conv2d_fake_kernel_shapes(c):
    """The fake (meta) kernel that torch.compile traces with gives the shape of the real kernel."""
    x, w = torch.randn(c.x), torch.randn(c.w)
    real = FF.conv2d(x, w, None, **c.kwargs)
    fake = FF.conv2d(x.to("meta"), w.to("meta"), None, **c.kwargs)
    assert fake.device.type == "meta" and fake.shape == real.shape


def test_conv2d_thread_count_invariance(backend):
    """Forward, grad input, grad weight (reduced over 9 images in 8 chunks) and grad bias are bitwise
    the same with 1, 2 and 3 threads."""
    x, w, b = backend.randn(9, 16, 13, 11), backend.randn(20, 8, 3, 3), backend.randn(20)
    args = ([1, 2], [1, 1, 0, 1], [1, 1], 2)
    dy = torch.randn_like(ops.conv2d(x, w, b, *args))
    results = []
    for n in (1, 2, 3):
        with num_threads(n):
            results.append([ops.conv2d(x, w, b, *args),
                            ops.conv2d_grad_input(dy, w, list(x.shape), *args),
                            ops.conv2d_grad_weight(dy, x, [20, 8, 3, 3], *args),
                            ops.bias_grad(dy, 1)])
    for other in results[1:]:
        for a, r in zip(results[0], other):
            assert_bitwise_equal(a, r)


# Mixed geometries: combinations of stride, asymmetric padding, dilation, groups and kernel / image size
# that the hand-picked cases above may have missed (drawn at random once; test_fuzz's conv2d property
# draws new ones every run and runs these as its examples too).
# (input, weight, stride, (top, bottom, left, right), dilation, groups)
GEOMETRIES = [
    ((3, 6, 3, 7), (9, 2, 2, 5), (3, 3), (3, 2, 1, 3), (2, 1), 3),
    ((3, 8, 9, 2), (8, 4, 5, 1), (1, 3), (3, 1, 1, 3), (3, 1), 2),
    ((2, 2, 7, 4), (2, 2, 3, 4), (1, 3), (1, 2, 3, 3), (2, 2), 1),
    ((2, 2, 1, 9), (2, 2, 1, 3), (2, 2), (3, 0, 2, 1), (3, 2), 1),
    ((3, 1, 7, 8), (1, 1, 3, 4), (1, 1), (2, 3, 1, 1), (3, 2), 1),
    ((2, 4, 13, 3), (4, 4, 4, 2), (1, 1), (0, 1, 2, 1), (2, 1), 1),
    ((1, 4, 4, 9), (6, 2, 3, 3), (2, 3), (2, 0, 3, 1), (1, 3), 2),
    ((1, 1, 17, 14), (2, 1, 5, 5), (1, 2), (0, 0, 1, 0), (2, 3), 1),
    ((1, 1, 10, 5), (3, 1, 2, 1), (1, 1), (0, 0, 0, 1), (1, 3), 1),
    ((2, 3, 1, 16), (4, 3, 1, 5), (3, 2), (1, 1, 1, 3), (3, 3), 1),
    ((1, 3, 11, 9), (4, 3, 4, 5), (3, 1), (1, 1, 1, 2), (2, 2), 1),
    ((3, 1, 8, 4), (4, 1, 3, 1), (2, 1), (3, 0, 1, 3), (1, 3), 1),
    ((1, 2, 12, 6), (6, 1, 5, 3), (2, 2), (1, 1, 0, 3), (3, 3), 2),
    ((2, 12, 1, 5), (6, 4, 2, 3), (3, 3), (3, 2, 1, 0), (2, 2), 3),
    ((2, 1, 3, 5), (3, 1, 1, 4), (2, 3), (1, 0, 2, 1), (1, 2), 1),
    ((3, 3, 2, 1), (3, 3, 2, 1), (3, 2), (1, 3, 3, 3), (3, 1), 1),
    ((2, 9, 1, 10), (9, 3, 1, 4), (3, 3), (2, 1, 1, 2), (2, 2), 3),
    ((3, 3, 8, 6), (3, 3, 4, 5), (3, 3), (3, 1, 2, 3), (1, 2), 1),
    ((2, 3, 1, 7), (1, 3, 1, 5), (3, 3), (2, 2, 1, 3), (1, 2), 1),
    ((3, 6, 1, 5), (12, 2, 1, 2), (1, 1), (2, 1, 0, 2), (1, 2), 3),
    ((3, 6, 4, 1), (6, 2, 3, 1), (2, 3), (0, 2, 1, 3), (2, 1), 3),
    ((2, 2, 1, 2), (3, 2, 4, 1), (1, 3), (3, 2, 2, 1), (1, 2), 1),
    ((1, 2, 1, 15), (8, 1, 2, 5), (3, 2), (3, 1, 1, 1), (1, 3), 2),
    ((3, 1, 9, 7), (3, 1, 4, 2), (1, 2), (2, 3, 2, 2), (2, 3), 1),
    ((2, 9, 6, 13), (3, 3, 3, 5), (1, 3), (1, 0, 2, 1), (2, 2), 3),
    ((3, 2, 10, 3), (3, 2, 4, 1), (3, 3), (0, 0, 3, 3), (2, 3), 1),
    ((2, 2, 11, 4), (4, 1, 4, 3), (3, 3), (1, 3, 1, 2), (3, 1), 2),
    ((2, 8, 4, 1), (2, 4, 3, 3), (1, 1), (2, 0, 2, 2), (1, 1), 2),
    ((2, 12, 1, 11), (6, 4, 3, 4), (1, 2), (1, 1, 1, 2), (1, 2), 3),
    ((3, 12, 2, 7), (12, 4, 3, 1), (2, 2), (3, 3, 1, 1), (3, 3), 3),
    ((1, 9, 10, 4), (12, 3, 2, 1), (3, 3), (0, 2, 0, 2), (3, 2), 3),
    ((1, 6, 13, 12), (6, 2, 3, 4), (1, 1), (2, 0, 0, 1), (3, 2), 3),
    ((2, 6, 1, 1), (2, 3, 1, 1), (3, 2), (1, 1, 2, 0), (2, 1), 2),
    ((2, 1, 1, 7), (4, 1, 1, 3), (1, 2), (3, 3, 1, 0), (2, 1), 1),
    ((1, 3, 2, 3), (6, 1, 1, 2), (3, 2), (0, 0, 3, 0), (1, 2), 3),
    ((2, 2, 2, 1), (2, 2, 2, 2), (2, 1), (0, 3, 3, 2), (2, 2), 1),
    ((3, 1, 7, 7), (3, 1, 3, 4), (3, 2), (3, 3, 1, 3), (3, 1), 1),
    ((1, 2, 6, 1), (4, 2, 3, 1), (1, 3), (2, 0, 2, 3), (3, 3), 1),
    ((1, 6, 12, 8), (12, 2, 4, 5), (1, 3), (3, 3, 2, 2), (3, 2), 3),
    ((2, 3, 8, 10), (12, 1, 5, 3), (3, 3), (1, 2, 1, 1), (1, 2), 3),
    ((1, 4, 9, 4), (8, 2, 3, 1), (3, 3), (3, 1, 2, 3), (3, 1), 2),
    ((3, 3, 6, 13), (12, 1, 3, 3), (3, 1), (2, 0, 1, 1), (3, 3), 3),
    ((1, 4, 5, 4), (2, 4, 2, 1), (2, 2), (1, 2, 2, 2), (2, 2), 1),
    ((3, 2, 3, 2), (1, 2, 5, 1), (1, 1), (2, 1, 1, 0), (1, 2), 1),
    ((2, 3, 6, 1), (4, 3, 3, 1), (2, 1), (1, 3, 1, 3), (3, 1), 1),
    ((3, 1, 6, 7), (2, 1, 5, 4), (3, 3), (3, 1, 3, 1), (2, 2), 1),
    ((3, 1, 11, 6), (2, 1, 5, 3), (1, 1), (3, 1, 2, 1), (3, 1), 1),
    ((3, 2, 1, 8), (6, 1, 1, 5), (1, 3), (1, 3, 2, 3), (3, 3), 2),
    ((2, 4, 10, 16), (6, 2, 4, 5), (1, 3), (0, 1, 0, 1), (1, 3), 2),
    ((1, 1, 9, 10), (3, 1, 4, 4), (2, 1), (3, 0, 0, 1), (2, 2), 1),
    ((3, 1, 9, 5), (2, 1, 4, 2), (1, 3), (2, 1, 0, 3), (3, 2), 1),
    ((1, 6, 4, 1), (2, 3, 2, 3), (2, 1), (3, 2, 3, 3), (3, 1), 2),
    ((1, 4, 10, 2), (1, 4, 5, 2), (3, 2), (3, 1, 0, 0), (3, 1), 1),
    ((1, 6, 11, 1), (2, 3, 4, 5), (1, 1), (0, 0, 1, 3), (3, 1), 2),
    ((2, 12, 11, 1), (6, 4, 3, 1), (1, 2), (3, 0, 3, 3), (3, 1), 3),
    ((2, 3, 9, 1), (1, 3, 4, 5), (3, 3), (1, 0, 2, 2), (1, 1), 1),
    ((2, 6, 1, 1), (12, 2, 1, 1), (2, 1), (1, 2, 1, 3), (2, 2), 3),
    ((2, 6, 3, 1), (6, 2, 2, 2), (2, 2), (0, 0, 0, 3), (2, 3), 3),
    ((2, 12, 6, 4), (6, 4, 4, 3), (1, 1), (3, 0, 1, 3), (1, 3), 3),
    ((2, 3, 1, 1), (9, 1, 3, 1), (3, 2), (2, 3, 2, 3), (2, 3), 3),
]


@pytest.mark.parametrize("cfg", [pytest.param(c, id=f"rand{i:02d}") for i, c in enumerate(GEOMETRIES)])
def test_conv2d_random_geometries(backend, cfg):
    xs, ws, stride, padding, dilation, groups = cfg
    x = backend.randn(*xs, dtype=torch.float64, requires_grad=True)
    w = backend.randn(*ws, dtype=torch.float64, requires_grad=True)
    b = backend.randn(ws[0], dtype=torch.float64, requires_grad=True)
    args = (stride, padding, dilation, groups)
    out_shape = _torch_conv_asym(x.detach(), w.detach(), None, *args).shape
    c = ConvCase(xs, ws, dict(groups=groups))
    _check_against_torch(lambda x, w, b: ops.conv2d(x, w, b, *args), lambda x, w, b: _torch_conv_asym(x, w, b, *args),
                         (x, w, b), conv_terms(ws), _grad_terms(c, out_shape), torch.float64)


LAYOUT_CASES = [
    case("plain", (2, 3, 9, 10), (4, 3, 3, 3), padding=1),
    case("stride2x3_dil2", (2, 4, 11, 13), (6, 4, 3, 2), stride=(2, 3), dilation=2, padding=1),
    case("depthwise", (2, 4, 8, 9), (4, 1, 3, 3), groups=4, padding="same"),
    case("1x1", (2, 6, 5, 7), (3, 6, 1, 1)),
]


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", LAYOUT_CASES)
def test_conv2d_layouts(backend, c, dtype, layout):
    """Non-contiguous and channels_last input, weight and grad_output give the same results."""
    x = make_layout(backend.randn(*c.x, dtype=dtype), layout).requires_grad_()
    w = make_layout(backend.randn(*c.w, dtype=dtype), layout).requires_grad_()
    assert not x.is_contiguous()
    b = make_layout(backend.randn(c.w[0], dtype=dtype), "sliced").requires_grad_()  # stride 2
    out_shape = F.conv2d(x.detach(), w.detach(), None, **c.kwargs).shape
    g = make_layout(backend.randn(*out_shape, dtype=dtype), layout)
    if layout == "sliced":
        assert not w.is_contiguous() and not g.is_contiguous()
    _check_against_torch(lambda *a: FF.conv2d(*a, **c.kwargs), lambda *a: F.conv2d(*a, **c.kwargs),
                         (x, w, b), conv_terms(c.w), _grad_terms(c, out_shape), dtype, grad_out=g)


# ------------------------------------------------------------------ the raw op: asymmetric padding, fused relu

FUSED_CASES = [
    # (input, weight, stride, (top, bottom, left, right), dilation, groups)
    pytest.param(((2, 3, 7, 9), (4, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1), id="pad1"),
    pytest.param(((2, 3, 7, 9), (4, 3, 2, 4), (1, 1), (0, 1, 1, 2), (1, 1), 1), id="asym_pad"),
    pytest.param(((2, 4, 9, 8), (6, 2, 3, 3), (2, 1), (2, 0, 0, 3), (1, 2), 2), id="asym_stride_dil_groups"),
    pytest.param(((1, 3, 6, 7), (3, 1, 3, 3), (2, 2), (1, 2, 2, 1), (1, 1), 3), id="depthwise_asym"),
    pytest.param(((2, 32, 6, 6), (9, 32, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1), id="K288"),
]


# the epilogue activations: (relu, negative_slope) of the op; a slope above 1 is allowed too
ACTIVATIONS = [pytest.param(False, 0.0, id="conv"), pytest.param(True, 0.0, id="conv_relu"),
               pytest.param(True, 0.1, id="conv_leaky_relu"), pytest.param(True, 1.5, id="conv_leaky_relu_steep")]


def _torch_activation(y, relu, slope):
    return y if not relu else F.relu(y) if slope == 0 else F.leaky_relu(y, slope)


@pytest.mark.parametrize("relu, slope", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", FUSED_CASES)
def test_conv2d_op_fused_relu(backend, cfg, dtype, relu, slope):
    xs, ws, stride, padding, dilation, groups = cfg
    x = torch.randn(xs, dtype=dtype, device=backend.device, requires_grad=True)
    w = torch.randn(ws, dtype=dtype, device=backend.device, requires_grad=True)
    b = torch.randn(ws[0], dtype=dtype, device=backend.device, requires_grad=True)

    def fc(x, w, b):
        return ops.conv2d(x, w, b, stride, padding, dilation, groups, relu, slope)

    def ref(x, w, b):
        return _torch_activation(_torch_conv_asym(x, w, b, stride, padding, dilation, groups), relu, slope)

    out = fc(x.detach(), w.detach(), b.detach())
    if relu:  # the test is only meaningful if some outputs are clipped (or scaled) and some are not
        assert ((out == 0) if slope == 0 else (out < 0)).any() and (out > 0).any()
    c = ConvCase(xs, ws, dict(groups=groups))
    _check_against_torch(fc, ref, (x, w, b), conv_terms(ws), _grad_terms(c, out.shape), dtype)


@pytest.mark.parametrize("slope", [0.0, 0.1, 1.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cfg", FUSED_CASES)
def test_conv2d_fused_activation_same_bits_as_two_ops(backend, cfg, dtype, slope):
    """The fused ReLU / LeakyReLU gives fastconv's conv2d then relu / leaky_relu bit for bit, output and
    gradients (the activation is computed as its own kernel computes it; NaN stays NaN)."""
    xs, ws, stride, padding, dilation, groups = cfg
    x = backend.randn(*xs, dtype=dtype).requires_grad_()
    w = backend.randn(*ws, dtype=dtype).requires_grad_()
    b = backend.randn(ws[0], dtype=dtype).requires_grad_()
    with torch.no_grad():
        b[0] = float("nan")  # a NaN pre-activation in every pixel of channel 0
    args = (stride, padding, dilation, groups)
    out = ops.conv2d(x, w, b, *args, True, slope)
    y = ops.conv2d(x, w, b, *args)
    ref = ops.relu(y) if slope == 0 else ops.leaky_relu(y, slope)
    assert_bitwise_equal(out, ref)
    assert out[:, 0].isnan().all()
    dy = torch.randn_like(out)
    for g, r in zip(torch.autograd.grad(out, (x, w, b), dy), torch.autograd.grad(ref, (x, w, b), dy)):
        assert_bitwise_equal(g, r)


@pytest.mark.parametrize("slope", [-0.1, float("nan"), float("inf")])
def test_conv2d_fused_activation_refuses_bad_slopes(backend, slope):
    x, w = backend.randn(1, 2, 5, 5), backend.randn(3, 2, 3, 3)
    args = ([1, 1], [0, 0, 0, 0], [1, 1], 1)
    for device in (backend.device, "meta"):
        with pytest.raises(ValueError, match="fused leaky ReLU needs a finite negative_slope >= 0"):
            ops.conv2d(x.to(device), w.to(device), None, *args, True, slope)
        with pytest.raises(ValueError, match="fused leaky ReLU needs a finite negative_slope >= 0"):
            ops.conv2d_pool(x.to(device), w.to(device), None, *args, True, [2, 2], slope)
    with pytest.raises(ValueError, match="fused leaky ReLU needs a finite negative_slope >= 0"):
        FF.conv2d_leaky_relu(x, w, negative_slope=slope)
    # without the activation the slope is not looked at, and a negative one is fine unfused
    assert ops.conv2d(x, w, None, *args, False, slope).shape == (1, 3, 3, 3)


# ------------------------------------------------------------------ gradcheck and opcheck

GRADCHECK_CASES = [
    pytest.param(((1, 2, 5, 6), (3, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, False), id="pad1"),
    pytest.param(((2, 2, 7, 6), (2, 2, 2, 3), (2, 1), (0, 1, 2, 0), (2, 1), 1, False), id="stride_dil_asym"),
    pytest.param(((1, 4, 5, 5), (4, 2, 3, 3), (1, 2), (1, 1, 1, 1), (1, 1), 2, False), id="groups2"),
    pytest.param(((1, 2, 5, 5), (3, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="fused_relu"),
    pytest.param(((1, 2, 5, 5), (3, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 0.2), id="fused_leaky_relu"),
]


@pytest.mark.parametrize("cfg", GRADCHECK_CASES)
def test_conv2d_gradcheck(backend, cfg):
    xs, ws, stride, padding, dilation, groups, act = cfg
    relu, slope = bool(act), (0.0 if isinstance(act, bool) else act)  # act: False, True (ReLU) or a slope
    x = backend.randn(*xs, dtype=torch.float64, requires_grad=True)
    w = backend.randn(*ws, dtype=torch.float64, requires_grad=True)
    b = backend.randn(ws[0], dtype=torch.float64, requires_grad=True)
    if relu:  # keep pre-activations away from the kink
        y = ops.conv2d(x, w, b, stride, padding, dilation, groups, False)
        assert y.abs().min() > 1e-3
    assert torch.autograd.gradcheck(
        lambda x, w, b: ops.conv2d(x, w, b, stride, padding, dilation, groups, relu, slope), (x, w, b))


def test_conv2d_functional_gradcheck(backend):
    x = backend.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)  # unbatched, "same" with even kernel
    w = backend.randn(3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    b = backend.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: FF.conv2d(x, w, b, padding="same", dilation=(2, 1)), (x, w, b))


@pytest.mark.parametrize("relu, slope", ACTIVATIONS[:3])
def test_opcheck_conv2d(backend, relu, slope):
    x = backend.randn(1, 2, 4, 5, requires_grad=True)
    w = backend.randn(3, 2, 2, 3, requires_grad=True)
    b = backend.randn(3, requires_grad=True)
    torch.library.opcheck(ops.conv2d, (x, w, b, [1, 2], [1, 0, 1, 1], [1, 1], 1, relu, slope))
    torch.library.opcheck(ops.conv2d, (x, w, None, [2, 1], [0, 0, 0, 0], [1, 2], 1, relu, slope))


def test_opcheck_conv2d_grads(backend):
    stride, padding, dilation, groups = [1, 2], [1, 0, 1, 1], [1, 1], 2
    x = backend.randn(2, 4, 4, 5)
    w = backend.randn(2, 2, 2, 3)
    dy = backend.randn(*ops.conv2d(x, w, None, stride, padding, dilation, groups).shape)
    torch.library.opcheck(ops.conv2d_grad_input, (dy, w, list(x.shape), stride, padding, dilation, groups))
    torch.library.opcheck(ops.conv2d_grad_weight, (dy, x, list(w.shape), stride, padding, dilation, groups))
    torch.library.opcheck(ops.bias_grad, (dy, 1))
    torch.library.opcheck(ops.bias_grad, (backend.randn(3, 5), -1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_grad_op(backend, dtype):
    # every channel dim of a 4-d gradient (inner 120, 30, 6 and 1), planes of more than 256 values, and
    # [rows, C] gradients (inner 1) with more than one block of 32 channels and a ragged last one
    for shape in [(3, 4, 5, 6), (2, 3, 17, 19), (70, 45), (9, 300)]:
        g = backend.randn(*shape, dtype=dtype)
        for dim in range(-g.dim(), g.dim()):
            others = [d for d in range(g.dim()) if d != dim % g.dim()]
            torch.testing.assert_close(ops.bias_grad(g, dim), g.sum(others), **tol(dtype, g.numel() // g.shape[dim]))


# ------------------------------------------------------------------ conv1d

CONV1D_CASES = [
    case("plain", (2, 3, 17), (4, 3, 5)),
    case("pad2", (2, 3, 17), (4, 3, 5), padding=2),
    case("pad_tuple", (2, 3, 12), (4, 3, 3), padding=(1,)),
    case("valid", (2, 3, 9), (4, 3, 4), padding="valid"),
    case("same_odd", (2, 3, 17), (4, 3, 5), padding="same"),
    case("same_even_dil2", (2, 3, 16), (4, 3, 4), padding="same", dilation=2),
    case("stride3", (2, 3, 20), (5, 3, 4), stride=3, padding=1),
    case("dilation2", (2, 3, 19), (4, 3, 3), dilation=2),
    case("groups3", (2, 3, 13), (6, 1, 3), groups=3, padding=1),
    case("groups2_stride2", (2, 4, 15), (2, 2, 3), groups=2, stride=2),
    case("no_bias", (1, 3, 11), (2, 3, 3), bias=False),
    case("unbatched_2d", (3, 17), (4, 3, 5), padding="same"),
    case("long_K", (2, 64, 40), (8, 64, 5), padding=2),  # K = 320
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CONV1D_CASES)
def test_conv1d_matches_torch(backend, c, dtype):
    x, w, b = _make_inputs(c, dtype, backend.device)
    out = F.conv1d(x.detach(), w.detach(), None, **c.kwargs)
    n_pixels = out.numel() // c.w[0]
    grad_terms = (c.w[0] // c.kwargs.get("groups", 1) * c.w[2], n_pixels, n_pixels)
    _check_against_torch(lambda *a: FF.conv1d(*a, **c.kwargs), lambda *a: F.conv1d(*a, **c.kwargs),
                         (x, w, b), math.prod(c.w[1:]), grad_terms, dtype)


def test_conv1d_gradcheck(backend):
    x = backend.randn(2, 2, 9, dtype=torch.float64, requires_grad=True)
    w = backend.randn(4, 1, 4, dtype=torch.float64, requires_grad=True)
    b = backend.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: FF.conv1d(x, w, b, padding="same", dilation=2, groups=2),
                                    (x, w, b))


# ------------------------------------------------------------------ lecture worked examples

VERTICAL_EDGE = [[1.0, 0.0, -1.0],
                 [1.0, 0.0, -1.0],
                 [1.0, 0.0, -1.0]]


def test_lecture_5x5_vertical_edge(backend):
    image = backend.tensor([[4, 2, 1, 0, 3],
                            [3, 1, 0, 2, 5],
                            [2, 0, 2, 1, 1],
                            [1, 3, 5, 0, 2],
                            [0, 4, 1, 2, 6]])
    kernel = backend.tensor(VERTICAL_EDGE)
    out = FF.conv2d(image[None, None], kernel[None, None])[0, 0]
    # Top-left output, cross-correlation (no kernel flip): the 3x3 window of rows 0-2, cols 0-2
    #   left column  (weight +1): 4 + 3 + 2 = 9
    #   middle       (weight  0): ignored
    #   right column (weight -1): 1 + 0 + 2 = 3
    #   9 - 3 = 6
    assert out[0, 0].item() == 6.0
    # Every output is (column sum j) - (column sum j + 2) over 3 rows. Column sums:
    #   rows 0-2: 9 3 3 3 9    rows 1-3: 6 4 7 3 8    rows 2-4: 3 7 8 3 9
    expected = backend.tensor([[6, 0, -6],
                               [-1, 1, -1],
                               [-5, 4, -1]])
    assert torch.equal(out, expected)
    assert torch.equal(out, F.conv2d(image[None, None], kernel[None, None])[0, 0])


def test_lecture_6x6_exercise(backend):
    image = backend.tensor([[1, 5, 3, 0, 2, 4],
                            [0, 2, 4, 1, 3, 1],
                            [2, 1, 3, 5, 0, 2],
                            [4, 0, 1, 2, 6, 3],
                            [3, 2, 0, 1, 4, 5],
                            [1, 3, 2, 4, 0, 1]])
    kernel = backend.tensor(VERTICAL_EDGE)
    out = FF.conv2d(image[None, None], kernel[None, None])[0, 0]
    # Top-left output: window rows 0-2, cols 0-2
    #   left column  (+1): 1 + 0 + 2 = 3
    #   right column (-1): 3 + 4 + 3 = 10
    #   3 - 10 = -7
    assert out.shape == (4, 4)  # 6 - 3 + 1
    assert out[0, 0].item() == -7.0
    # small integers: every product and sum is exact, so the whole output equals torch's exactly
    assert torch.equal(out, F.conv2d(image[None, None], kernel[None, None])[0, 0])
    # 2x2 max pooling halves H and W: 6x6 -> 3x3, each value the max of its 2x2 block
    pooled = FF.max_pool2d(image[None, None], 2)[0, 0]
    assert pooled.shape == (3, 3)
    #   rows 0-1: max(1,5,0,2)=5  max(3,0,4,1)=4  max(2,4,3,1)=4
    #   rows 2-3: max(2,1,4,0)=4  max(3,5,1,2)=5  max(0,2,6,3)=6
    #   rows 4-5: max(3,2,1,3)=3  max(0,1,2,4)=4  max(4,5,0,1)=5
    assert torch.equal(pooled, backend.tensor([[5, 4, 4], [4, 5, 6], [3, 4, 5]]))
    # and the 4x4 conv output pools to 2x2
    assert FF.max_pool2d(out[None, None], 2).shape == (1, 1, 2, 2)
    assert torch.equal(FF.max_pool2d(out[None, None], 2), F.max_pool2d(out[None, None], 2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_relu_is_relu_of_conv2d(backend, dtype):
    x = backend.randn(2, 3, 9, 8, dtype=dtype, requires_grad=True)
    w = backend.randn(5, 3, 3, 3, dtype=dtype, requires_grad=True)
    b = backend.randn(5, dtype=dtype, requires_grad=True)
    y = FF.conv2d_relu(x, w, b, stride=(2, 1), padding=1)
    ref = F.relu(F.conv2d(x, w, b, stride=(2, 1), padding=1))
    torch.testing.assert_close(y, ref, **tol(dtype, 27))
    assert (y == 0).any() and (y > 0).any()
    g = torch.randn_like(ref)
    ours = torch.autograd.grad(y, (x, w, b), g)
    theirs = torch.autograd.grad(ref, (x, w, b), g)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, **tol(dtype, 200))


# ------------------------------------------------------------------ the im2col blocks of small maps

# (input, weight, stride, (top, bottom, left, right), dilation, groups): small outputs, where the automatic
# choice takes the im2col path (FASTCONV_CPU_SMALLMAP), with strides (phase planes), dilation, groups, odd
# plane sizes (image boundaries inside a panel), 1x1 kernels and a batch that is not a whole number of blocks
SMALL_MAPS = [
    pytest.param(((37, 24, 4, 4), (40, 24, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1), id="4x4_pad1_37_images"),
    pytest.param(((9, 16, 3, 5), (12, 8, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2), id="3x5_groups2"),
    pytest.param(((5, 8, 9, 9), (16, 8, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1), id="stride2"),
    pytest.param(((4, 6, 7, 8), (10, 6, 2, 3), (1, 3), (1, 0, 2, 1), (2, 1), 1), id="asym_stride_dilation"),
    pytest.param(((19, 32, 2, 2), (24, 32, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1), id="1x1_2x2"),
    # 1x1 on 4x4 planes (whole vectors): the columns are the input planes read in place, two images a panel;
    # an odd batch (the last panel's second vector past the block), groups
    pytest.param(((37, 24, 4, 4), (40, 24, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1), id="1x1_4x4_in_place"),
    pytest.param(((9, 16, 4, 4), (12, 8, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2), id="1x1_4x4_groups2"),
    pytest.param(((6, 20, 8, 8), (30, 20, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1), id="8x8_pad1"),
]


@pytest.mark.backends("cpu")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cfg", SMALL_MAPS)
def test_small_map_im2col_path_matches_torch_and_the_direct_path(monkeypatch, cfg, dtype):
    """The im2col blocks (forced on) and the per-image direct path (forced off): both torch's results in
    forward, grad input and grad weight, with ReLU and LeakyReLU epilogues; bitwise the same run after run."""
    xs, ws, stride, padding, dilation, groups = cfg
    x, w, b = torch.randn(xs, dtype=dtype), torch.randn(ws, dtype=dtype), torch.randn(ws[0], dtype=dtype)
    monkeypatch.setenv("FASTCONV_CPU_CONV", "gemm")  # (3x3 stride-1 float32 would otherwise be Winograd)
    ref = _torch_conv_asym(x, w, b, stride, padding, dilation, groups)
    dy = torch.randn_like(ref)
    args = (stride, padding, dilation, groups)
    results = {}
    for path in ("1", "0"):
        monkeypatch.setenv("FASTCONV_CPU_SMALLMAP", path)
        got = [ops.conv2d(x, w, b, *args, True, slope) for slope in (0.0, 0.1)] + [
            ops.conv2d(x, w, b, *args), ops.conv2d_grad_input(dy, w, list(xs), *args),
            ops.conv2d_grad_weight(dy, x, list(ws), *args)]
        again = ops.conv2d_grad_weight(dy, x, list(ws), *args)
        assert_bitwise_equal(again, got[-1])
        results[path] = got
        c = ConvCase(xs, ws, dict(groups=groups))
        torch.testing.assert_close(got[0], F.relu(ref), **tol(dtype, conv_terms(ws)))
        torch.testing.assert_close(got[1], F.leaky_relu(ref, 0.1), **tol(dtype, conv_terms(ws)))
        torch.testing.assert_close(got[2], ref, **tol(dtype, conv_terms(ws)))
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        gx, gw = torch.autograd.grad(_torch_conv_asym(xr, wr, b, stride, padding, dilation, groups), (xr, wr), dy)
        terms = _grad_terms(c, ref.shape)
        torch.testing.assert_close(got[3], gx, **tol(dtype, terms[0]))
        torch.testing.assert_close(got[4], gw, **tol(dtype, terms[1]))
    for a, d in zip(results["1"], results["0"]):
        torch.testing.assert_close(a, d, **tol(dtype, 4 * conv_terms(ws)))


# ------------------------------------------------------------------ the weight gradient of a first layer

# (input, weight, (top, bottom, left, right), dilation, groups): 3x3 stride-1 layers of 1-3 input channels a
# group, which take the dot-product kernel (FASTCONV_CPU_FIRST_LAYER_GW), and 5x5 ones of up to 16 output
# channels a group (with AVX-512; elsewhere both paths are the GEMM); output channels that are no multiple
# of the 3 a pass, a batch of uneven image chunks, row dilation, groups, odd sizes
FIRST_LAYERS = [
    pytest.param(((9, 1, 13, 11), (7, 1, 3, 3), (0, 0, 0, 0), (1, 1), 1), id="1ch_7out_9images"),
    pytest.param(((3, 3, 16, 17), (8, 3, 3, 3), (1, 1, 1, 1), (1, 1), 1), id="3ch_pad1"),
    pytest.param(((2, 2, 12, 9), (5, 2, 3, 3), (2, 0, 1, 2), (2, 1), 1), id="2ch_asym_dilated_rows"),
    pytest.param(((2, 6, 10, 10), (6, 3, 3, 3), (1, 1, 1, 1), (1, 1), 2), id="groups2"),
    pytest.param(((9, 1, 14, 13), (6, 1, 5, 5), (2, 2, 2, 2), (1, 1), 1), id="5x5_1ch_6out_9images"),
    pytest.param(((3, 3, 12, 11), (16, 3, 5, 5), (1, 2, 0, 3), (2, 1), 1), id="5x5_3ch_asym_dilated_rows"),
    pytest.param(((2, 4, 9, 9), (10, 2, 5, 5), (2, 2, 2, 2), (1, 1), 2), id="5x5_groups2"),
]


@pytest.mark.backends("cpu")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cfg", FIRST_LAYERS)
def test_first_layer_weight_gradient_matches_torch_and_the_gemm(monkeypatch, cfg, dtype):
    xs, ws, padding, dilation, groups = cfg
    x, w = torch.randn(xs, dtype=dtype), torch.randn(ws, dtype=dtype)
    args = ((1, 1), padding, dilation, groups)
    ref = _torch_conv_asym(x, w, None, (1, 1), padding, dilation, groups)
    dy = torch.randn_like(ref)
    wr = w.clone().requires_grad_()
    (gw_ref,) = torch.autograd.grad(_torch_conv_asym(x, wr, None, (1, 1), padding, dilation, groups), wr, dy)
    got = {}
    for path in ("1", "0"):
        monkeypatch.setenv("FASTCONV_CPU_FIRST_LAYER_GW", path)
        got[path] = ops.conv2d_grad_weight(dy, x, list(ws), *args)
        assert_bitwise_equal(ops.conv2d_grad_weight(dy, x, list(ws), *args), got[path])  # run after run
        terms = _grad_terms(ConvCase(xs, ws, dict(groups=groups)), ref.shape)[1]
        torch.testing.assert_close(got[path], gw_ref, **tol(dtype, terms))
    torch.testing.assert_close(got["1"], got["0"], **tol(dtype, terms))


# ------------------------------------------------------------------ channels last
# NHWC in, NHWC out on the CUDA kernels (the simulator runs them): every direction, with channel
# counts that give the tensor-core kernel whole 16-byte segments of one tap (32, 48, 64 channels:
# 16 of them per thread and step) and ones that do not (12, 3), groups, stride, dilation and padding.
NHWC_CASES = [
    case("c32_pad1", (2, 32, 9, 10), (40, 32, 3, 3), padding=1),
    case("c12_stride2_dil2", (2, 12, 13, 11), (20, 12, 3, 3), stride=2, dilation=2, padding=2),
    case("groups2_c32_stride1x2", (2, 64, 7, 8), (48, 32, 3, 3), groups=2, padding=1, stride=(1, 2)),
    case("c3_5x5", (3, 3, 12, 12), (16, 3, 5, 5), padding=2),
    case("1x1_c48_no_bias", (2, 48, 6, 7), (24, 48, 1, 1), bias=False),
]


@pytest.mark.parametrize("dtype", [*DTYPES, *REDUCED_DTYPES])
@pytest.mark.parametrize("c", NHWC_CASES)
def test_conv2d_channels_last(backend, c, dtype):
    """channels_last input (NCHW weight, converted by the op) and grad_output: results as torch's in
    float64 (float32 for the 16-bit types, on the same 16-bit values); on the CUDA kernels the output
    and both gradients are channels_last themselves, computed without a layout copy of the
    activations."""
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = backend.randn(*c.x).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = backend.randn(*c.w).to(dtype).requires_grad_()
    b = backend.randn(c.w[0]).to(dtype).requires_grad_() if c.bias else None
    leaves = [t for t in (x, w, b) if t is not None]
    refs = [t.detach().to(ref_dtype).requires_grad_() for t in leaves]
    out = FF.conv2d(x, w, b, **c.kwargs)
    ref = F.conv2d(*refs, **c.kwargs) if b is not None else F.conv2d(*refs, None, **c.kwargs)
    cuda_kernels = backend.name in ("sim", "cuda")
    if cuda_kernels:
        assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref.to(dtype), **tol(dtype, conv_terms(c.w)))
    grad_out = torch.randn_like(ref).to(dtype).contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_grads = torch.autograd.grad(ref, refs, grad_out.to(ref_dtype))
    if cuda_kernels:
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
        assert grads[1].is_contiguous(memory_format=torch.channels_last)
    for i, (g, r, terms) in enumerate(zip(grads, ref_grads, _grad_terms(c, ref.shape))):
        torch.testing.assert_close(g, r.to(dtype), **tol(dtype, terms), msg=lambda m: f"gradient of input {i}: {m}")


@pytest.mark.parametrize("c", NHWC_CASES[:3])
def test_conv2d_channels_last_tf32(backend, c):
    """channels_last float32 with tf32 allowed (the tensor-core kernels' 4-byte and segment copies of
    float32): against float64 on tf32-rounded operands, forward and both gradients."""
    x = backend.randn(*c.x).contiguous(memory_format=torch.channels_last)
    w = backend.randn(*c.w)
    dy = backend.randn(*F.conv2d(x, w, None, **c.kwargs).shape).contiguous(memory_format=torch.channels_last)
    s, p, d, g = (c.kwargs.get(k, dflt) for k, dflt in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)))
    s, p, d = (v if isinstance(v, (tuple, list)) else (v, v) for v in (s, p, d))
    args = (list(s), [p[0], p[0], p[1], p[1]], list(d), g)
    with fastconv.backends.flags(allow_tf32=True):
        y = ops.conv2d(x, w, None, *args)
        dx = ops.conv2d_grad_input(dy, w, list(x.shape), *args)
        dw = ops.conv2d_grad_weight(dy, x, list(w.shape), *args)
    if backend.name not in ("sim", "cuda"):
        return  # the CPU kernels ignore tf32; their channels_last results are checked above
    r = tf32_round
    ry = F.conv2d(r(x).double(), r(w).double(), None, **c.kwargs)
    rdx = torch.nn.grad.conv2d_input(x.shape, r(w).double(), r(dy).double(), **c.kwargs)
    rdw = torch.nn.grad.conv2d_weight(r(x).double(), w.shape, r(dy).double(), **c.kwargs)
    terms = _grad_terms(c, ry.shape)
    torch.testing.assert_close(y, ry.float(), **tol(torch.float32, conv_terms(c.w)))
    torch.testing.assert_close(dx, rdx.float(), **tol(torch.float32, terms[0]))
    torch.testing.assert_close(dw, rdw.float(), **tol(torch.float32, terms[1]))
