"""fastconv relu against torch.relu: values, gradients, NaN / inf, in-place."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FF
from conftest import DTYPES, assert_bitwise_equal, make_layout

ops = torch.ops.fastconv

pytestmark = [pytest.mark.op, pytest.mark.sanitize_sim]

SHAPES = [
    pytest.param((7,), id="1d"),
    pytest.param((3, 5), id="2d"),
    pytest.param((2, 3, 7, 11), id="4d"),
    pytest.param((70001,), id="70001_multi_chunk"),  # > 2 chunks of 32K elements: parallel path
    pytest.param((0, 4), id="empty"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_matches_torch(backend, shape, dtype):
    x = backend.randn(*shape, dtype=dtype, requires_grad=True)
    y = FF.relu(x)
    ref = torch.relu(x)
    # max(x, 0) involves no rounding: results are bitwise torch's
    assert_bitwise_equal(y.detach(), ref.detach())
    if x.numel():
        assert (y == 0).any() and (y > 0).any()
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(y, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    assert_bitwise_equal(gx, gr)


SPECIALS = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -1e-30, 2.5, -2.5]


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_nan_inf_like_torch(backend, dtype):
    x = backend.tensor(SPECIALS * 3, dtype=dtype).reshape(3, -1).requires_grad_()
    y = FF.relu(x)
    ref = torch.relu(x)
    torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(y[0, 0]) and y[0, 1] == math.inf and y[0, 2] == 0
    # a gradient with specials too: NaN / inf in grad_output must go exactly where torch sends it
    g = backend.tensor(([1.5, -2.0, float("nan"), float("inf")] * 7)[:x.numel()], dtype=dtype).reshape(x.shape)
    (gx,) = torch.autograd.grad(y, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gr, rtol=0, atol=0, equal_nan=True)


def test_relu_gradcheck(backend):
    magnitude = torch.rand(3, 4, dtype=torch.float64) * 2 + 0.1  # |x| in [0.1, 2.1): away from the kink
    sign = torch.where(torch.rand(3, 4) < 0.5, -1.0, 1.0).to(torch.float64)
    x = (magnitude * sign).to(backend.device).requires_grad_()
    assert (x < 0).any() and (x > 0).any()
    assert torch.autograd.gradcheck(FF.relu, (x,))


def test_opcheck_relu(backend):
    x = backend.randn(3, 5, requires_grad=True)
    torch.library.opcheck(ops.relu, (x,))
    torch.library.opcheck(ops.relu, (backend.randn(2, 3, dtype=torch.float64).t(),))
    y = torch.relu(x.detach())
    torch.library.opcheck(ops.relu_backward, (backend.randn(3, 5), y))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_inplace(backend, dtype):
    x = backend.randn(4, 6, dtype=dtype)
    expected = torch.relu(x)
    alias = x
    out = FF.relu(x, inplace=True)
    assert out is alias  # torch returns the input itself
    assert_bitwise_equal(x, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_inplace_autograd_like_torch(backend, dtype):
    """relu_ on a non-leaf: the gradient flows through it like torch's in-place relu."""
    w = backend.randn(4, 6, dtype=dtype, requires_grad=True)
    g = backend.randn(4, 6, dtype=dtype)
    a = w * 2.0
    out = FF.relu(a, inplace=True)
    (gw,) = torch.autograd.grad(out, w, g)
    ra = w * 2.0
    ref = F.relu(ra, inplace=True)
    (gr,) = torch.autograd.grad(ref, w, g)
    assert_bitwise_equal(out.detach(), ref.detach())
    assert_bitwise_equal(gw, gr)


def test_relu_inplace_on_leaf_raises_like_torch(backend):
    x = backend.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        torch.relu_(x)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        FF.relu(x, inplace=True)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "strided", "channels_last"])
def test_relu_non_contiguous(backend, layout):
    x = make_layout(backend.randn(2, 3, 6, 8), layout).requires_grad_()
    assert not x.is_contiguous()
    y = FF.relu(x)
    assert_bitwise_equal(y.detach(), torch.relu(x.detach()))
    g = make_layout(torch.randn_like(y), "transposed")  # non-contiguous grad too
    (gx,) = torch.autograd.grad(y, x, g)
    assert_bitwise_equal(gx, torch.where(x.detach() > 0, g, torch.zeros_like(g)))


def test_relu_ops_keep_channels_last(backend):
    """On the CUDA kernels relu and leaky_relu (and their backward ops) keep a channels_last tensor's
    layout themselves, so a channels_last net's activations are never copied to NCHW and back."""
    x = make_layout(backend.randn(2, 6, 5, 7), "channels_last")
    dy = make_layout(backend.randn(2, 6, 5, 7), "channels_last")
    results = {
        "relu": (ops.relu(x), torch.relu(x)),
        "relu_backward": (ops.relu_backward(dy, torch.relu(x)), torch.where(x > 0, dy, torch.zeros_like(dy))),
        "leaky_relu": (ops.leaky_relu(x, 0.2), F.leaky_relu(x, 0.2)),
        "leaky_relu_backward": (ops.leaky_relu_backward(dy, x, 0.2), torch.where(x > 0, dy, dy * 0.2)),
    }
    for name, (got, want) in results.items():
        assert_bitwise_equal(got.contiguous(), want.contiguous())
        if backend.name in ("sim", "cuda"):
            assert got.is_contiguous(memory_format=torch.channels_last), name
