"""fastconv local_response_norm against torch.nn.functional.local_response_norm: values, gradients,
window sizes (odd, even, 1, wider than the channels), 3-D to 5-D inputs, layouts, 16-bit types,
determinism, the module and its conversion."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
import fastconv.nn as fnn
from conftest import DTYPES, REDUCED_DTYPES, assert_bitwise_equal, make_layout, num_threads, tol

ops = torch.ops.fastconv

pytestmark = [pytest.mark.op, pytest.mark.sanitize_sim]

CASES = [
    pytest.param(((2, 7, 5, 4), dict(size=5, alpha=1e-4, beta=0.75, k=2.0)), id="alexnet_5"),
    pytest.param(((2, 6, 9), dict(size=3)), id="3d_size3"),
    pytest.param(((2, 6, 4, 4), dict(size=4, alpha=0.3, beta=0.5, k=1.0)), id="even_size"),
    pytest.param(((1, 3, 4, 4), dict(size=1, alpha=0.5)), id="size1"),
    pytest.param(((2, 3, 4, 5), dict(size=9, alpha=0.2, beta=1.5, k=0.7)), id="wider_than_channels"),
    pytest.param(((2, 8, 3, 3, 2), dict(size=4, alpha=0.1, beta=0.75, k=1.5)), id="5d"),
    pytest.param(((1, 5, 40, 40), dict(size=3, alpha=0.1)), id="several_chunks"),  # > 1024 positions a row
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_local_response_norm_matches_torch(backend, case, dtype):
    shape, kw = case
    x = backend.randn(*shape, dtype=dtype, requires_grad=True)
    out, ref = FF.local_response_norm(x, **kw), F.local_response_norm(x, **kw)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, **tol(dtype, kw["size"]))
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(out, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gr, **tol(dtype, 4 * kw["size"]))


@pytest.mark.parametrize("dtype", REDUCED_DTYPES)
def test_16_bit_types_like_torch(backend, dtype):
    x = backend.randn(2, 6, 5, 4).to(dtype)
    out = FF.local_response_norm(x, 5, 0.1, 0.75, 2.0)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), F.local_response_norm(x.float(), 5, 0.1, 0.75, 2.0), rtol=1e-2, atol=1e-2)


def test_gradcheck(backend):
    x = backend.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: FF.local_response_norm(t, 3, 0.5, 0.75, 1.0), (x,))


def test_double_backward_is_refused(backend):
    x = backend.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(FF.local_response_norm(x, 3).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="local_response_norm: double backward"):
        gx.sum().backward()


def test_opcheck(backend):
    x = backend.randn(2, 5, 3, 4, requires_grad=True)
    torch.library.opcheck(ops.local_response_norm, (x, 3, 0.1, 0.75, 2.0))
    torch.library.opcheck(ops.local_response_norm, (backend.randn(2, 4, 6, dtype=torch.float64).transpose(1, 2),
                                                    2, 0.2, 0.5, 1.0))
    out, scale = ops.local_response_norm(x.detach(), 3, 0.1, 0.75, 2.0)
    torch.library.opcheck(ops.local_response_norm_backward, (torch.randn_like(out), x.detach(), out, scale, 3, 0.1,
                                                             0.75))


@pytest.mark.parametrize("layout", ["transposed", "sliced", "strided", "channels_last"])
def test_non_contiguous_inputs(backend, layout):
    x = make_layout(backend.randn(2, 6, 5, 8), layout).requires_grad_()
    assert not x.is_contiguous()
    out, ref = FF.local_response_norm(x, 3, 0.2), F.local_response_norm(x, 3, 0.2)
    torch.testing.assert_close(out, ref, **tol(torch.float32, 3))
    assert out.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(memory_format=torch.channels_last)
    g = make_layout(torch.randn_like(ref), "transposed")
    (gx,) = torch.autograd.grad(out, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gr, **tol(torch.float32, 12))


def test_thread_count_invariance(backend):
    x = backend.randn(3, 9, 40, 33)
    results = []
    for n in (1, 2, 3):
        with num_threads(n):
            out, scale = ops.local_response_norm(x, 5, 1e-2, 0.75, 2.0)
            results.append([out, ops.local_response_norm_backward(torch.ones_like(x), x, out, scale, 5, 1e-2, 0.75)])
    for other in results[1:]:
        for a, r in zip(results[0], other):
            assert_bitwise_equal(a, r)


def test_module_and_conversion(backend):
    torch_net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(),
                                    torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)).to(backend.device)
    net = fastconv.convert(torch_net)
    assert type(net[2]) is fnn.LocalResponseNorm and repr(net[2]) == repr(torch_net[2])
    x = backend.randn(2, 3, 9, 9)
    torch.testing.assert_close(net(x), torch_net(x), **tol(torch.float32, 27))


def test_bad_arguments():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="size must be a positive int"):
        FF.local_response_norm(x, 0)
    with pytest.raises(ValueError, match="expected 3 or more dimensions"):
        FF.local_response_norm(torch.randn(4, 3), 2)
    with pytest.raises(TypeError, match="fastconv.local_response_norm: input must be float32 or float64"):
        FF.local_response_norm(x.long(), 3)
    with pytest.raises(ValueError, match="scale .* and input .* must have the same shape"):
        ops.local_response_norm_backward(x, x, x, x[:1], 3, 0.1, 0.75)
    with pytest.raises(ValueError, match="alpha, beta and k must be finite"):
        ops.local_response_norm(x, 3, float("nan"), 0.75, 1.0)
