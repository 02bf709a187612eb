"""fastconv leaky_relu against torch.nn.functional.leaky_relu: values, gradients, specials, slopes,
in-place, layouts, double backward, the module and its conversion."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
import fastconv.nn as fnn
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
SLOPES = [0.01, 0.1, 0.0, -0.3, 1.7]


@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_leaky_relu_matches_torch(backend, shape, dtype, slope):
    x = backend.randn(*shape, dtype=dtype, requires_grad=True)
    y = FF.leaky_relu(x, slope)
    ref = F.leaky_relu(x, slope)
    # one product (x * slope) rounded once, as torch: bitwise torch's
    assert_bitwise_equal(y.detach(), ref.detach())
    if x.numel() and slope != 0:
        assert (y < 0).any() == (slope > 0) and (y > 0).any()
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(y, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    assert_bitwise_equal(gx, gr)


def test_default_slope_is_torch_default(backend):
    x = backend.randn(5, 6)
    assert_bitwise_equal(FF.leaky_relu(x), F.leaky_relu(x))
    assert_bitwise_equal(fnn.LeakyReLU()(x), torch.nn.LeakyReLU()(x))


SPECIALS = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -1e-30, 2.5, -2.5]


@pytest.mark.parametrize("slope", [0.01, -0.5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_nan_inf_like_torch(backend, dtype, slope):
    x = backend.tensor(SPECIALS * 3, dtype=dtype).reshape(3, -1).requires_grad_()
    y = FF.leaky_relu(x, slope)
    ref = F.leaky_relu(x, slope)
    torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(y[0, 0]) and y[0, 1] == float("inf")
    assert torch.signbit(y[0, 4]) == torch.signbit(ref[0, 4])  # -0.0 stays -0.0
    g = backend.tensor(([1.5, -2.0, float("nan"), float("inf")] * 7)[:x.numel()], dtype=dtype).reshape(x.shape)
    (gx,) = torch.autograd.grad(y, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gr, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("slope", [0.05, -0.4])
def test_leaky_relu_gradcheck_and_gradgradcheck(backend, slope):
    magnitude = torch.rand(3, 4, dtype=torch.float64) * 2 + 0.1  # |x| in [0.1, 2.1): away from the kink
    sign = torch.where(torch.rand(3, 4) < 0.5, -1.0, 1.0).to(torch.float64)
    x = (magnitude * sign).to(backend.device).requires_grad_()
    assert (x < 0).any() and (x > 0).any()
    fn = lambda t: FF.leaky_relu(t, slope)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_opcheck_leaky_relu(backend):
    x = backend.randn(3, 5, requires_grad=True)
    torch.library.opcheck(ops.leaky_relu, (x, 0.02))
    torch.library.opcheck(ops.leaky_relu, (backend.randn(2, 3, dtype=torch.float64).t(), -0.25))
    torch.library.opcheck(ops.leaky_relu_backward, (backend.randn(3, 5), x.detach(), 0.02))


@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_inplace(backend, dtype):
    x = backend.randn(4, 6, dtype=dtype)
    expected = F.leaky_relu(x, 0.2)
    alias = x
    out = FF.leaky_relu(x, 0.2, inplace=True)
    assert out is alias  # torch returns the input itself
    assert_bitwise_equal(x, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_inplace_autograd_like_torch(backend, dtype):
    """leaky_relu_ on a non-leaf with a positive slope: the gradient flows through it like torch's
    (the backward reads the result, which has the input's sign)."""
    w = backend.randn(4, 6, dtype=dtype, requires_grad=True)
    g = backend.randn(4, 6, dtype=dtype)
    out = FF.leaky_relu(w * 2.0, 0.1, inplace=True)
    (gw,) = torch.autograd.grad(out, w, g)
    ref = F.leaky_relu(w * 2.0, 0.1, inplace=True)
    (gr,) = torch.autograd.grad(ref, w, g)
    assert_bitwise_equal(out.detach(), ref.detach())
    assert_bitwise_equal(gw, gr)


def test_leaky_relu_inplace_errors_like_torch(backend):
    x = backend.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        FF.leaky_relu(x, 0.1, inplace=True)
    with pytest.raises(RuntimeError, match="negative slope"):
        FF.leaky_relu(x * 1.0, -0.1, inplace=True)
    with torch.no_grad():  # no gradient needed: a negative slope in place is fine
        y = x * 1.0
        FF.leaky_relu(y, -0.1, inplace=True)
        assert_bitwise_equal(y, F.leaky_relu(x * 1.0, -0.1))
    with pytest.raises(TypeError, match="negative_slope must be a number"):
        FF.leaky_relu(x, "0.1")


@pytest.mark.parametrize("layout", ["transposed", "sliced", "strided", "channels_last"])
def test_leaky_relu_non_contiguous(backend, layout):
    x = make_layout(backend.randn(2, 3, 6, 8), layout).requires_grad_()
    assert not x.is_contiguous()
    y = FF.leaky_relu(x, 0.3)
    ref = F.leaky_relu(x, 0.3)
    assert_bitwise_equal(y.detach(), ref.detach())
    assert y.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(memory_format=torch.channels_last)
    g = make_layout(torch.randn_like(y), "transposed")  # non-contiguous grad too
    (gx,) = torch.autograd.grad(y, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    assert_bitwise_equal(gx, gr)


def test_module_state_and_conversion(backend):
    torch_net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LeakyReLU(0.2), torch.nn.Linear(5, 3),
                                    torch.nn.LeakyReLU(negative_slope=0.05, inplace=True)).to(backend.device)
    net = fastconv.convert(torch_net)
    assert type(net[1]) is fnn.LeakyReLU and type(net[3]) is fnn.LeakyReLU
    assert net[1].negative_slope == 0.2 and net[3].negative_slope == 0.05 and net[3].inplace
    assert repr(net[1]) == repr(torch_net[1])
    x = backend.randn(4, 6)
    torch.testing.assert_close(net(x), torch_net(x))


def test_compile_fullgraph(backend):
    """Traced whole (fullgraph) through AOT autograd, which runs the fake kernels and the autograd
    formulas on fake tensors: the compiled function and its gradient are the eager ones."""
    torch._dynamo.reset()
    x = backend.randn(4, 7, requires_grad=True)
    fn = torch.compile(lambda t: FF.leaky_relu(t, 0.15) * 2, fullgraph=True, backend="aot_eager")
    out = fn(x)
    assert_bitwise_equal(out.detach(), F.leaky_relu(x.detach(), 0.15) * 2)
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert_bitwise_equal(gx, torch.where(x.detach() > 0, 2.0, 0.3).to(gx.dtype))
