"""fastconv batch_norm and nn.BatchNorm2d against torch: training and inference, running statistics
(momentum and the cumulative average), affine or not, without running statistics, gradients of every
input, layouts, 16-bit types, determinism, state_dict keys and conversion."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
import fastconv.nn as fnn
from conftest import DTYPES, REDUCED_DTYPES, assert_bitwise_equal, make_layout, num_threads, tol

ops = torch.ops.fastconv

pytestmark = [pytest.mark.op, pytest.mark.sanitize_sim]

MODULE_CASES = [
    pytest.param(dict(), id="default"),
    pytest.param(dict(momentum=None), id="cumulative"),
    pytest.param(dict(momentum=0.3, eps=1e-3), id="momentum_eps"),
    pytest.param(dict(affine=False), id="no_affine"),
    pytest.param(dict(track_running_stats=False), id="no_running_stats"),
]


def _twins(device, dtype, c, **kw):
    ref = torch.nn.BatchNorm2d(c, **kw).to(device, dtype)
    if ref.affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1, 1)
    ours = fnn.BatchNorm2d(c, **kw).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", MODULE_CASES)
def test_module_trains_and_evaluates_like_torch(backend, kw, dtype):
    ref, ours = _twins(backend.device, dtype, 5, **kw)
    t = tol(dtype, 4 * 6 * 7)
    for step in range(3):
        x = (backend.randn(4, 5, 6, 7, dtype=dtype) * 2 + 1).requires_grad_()
        out, want = ours(x), ref(x)
        torch.testing.assert_close(out, want, **t)
        g = torch.randn_like(want)
        params_ref = [x] + ([ref.weight, ref.bias] if ref.affine else [])
        params_ours = [x] + ([ours.weight, ours.bias] if ours.affine else [])
        for a, b in zip(torch.autograd.grad(out, params_ours, g), torch.autograd.grad(want, params_ref, g)):
            torch.testing.assert_close(a, b, **t)
        for name, buf in ref.named_buffers():
            torch.testing.assert_close(dict(ours.named_buffers())[name], buf, **t, msg=lambda m: f"{name}: {m}")
    ref.eval(), ours.eval()
    x = backend.randn(3, 5, 4, 4, dtype=dtype, requires_grad=True)
    out, want = ours(x), ref(x)
    torch.testing.assert_close(out, want, **t)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(want, x, g)[0], **t)
    assert list(ours.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 10), (2, 3, 4, 5, 3)], ids=["2d", "3d", "5d"])
def test_functional_any_rank_like_torch(backend, shape):
    x = backend.randn(*shape, requires_grad=True)
    w, b = backend.randn(3, requires_grad=True), backend.randn(3, requires_grad=True)
    rm, rv = backend.randn(3), backend.randn(3).abs() + 0.5
    rm2, rv2 = rm.clone(), rv.clone()
    out = FF.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2)
    want = F.batch_norm(x, rm2, rv2, w, b, training=True, momentum=0.2)
    torch.testing.assert_close(out, want, **tol(torch.float32, 40))
    torch.testing.assert_close(rm, rm2), torch.testing.assert_close(rv, rv2)
    g = torch.randn_like(want)
    for a, r in zip(torch.autograd.grad(out, [x, w, b], g), torch.autograd.grad(want, [x, w, b], g)):
        torch.testing.assert_close(a, r, **tol(torch.float32, 40))
    torch.testing.assert_close(FF.batch_norm(x, rm, rv, w, b), F.batch_norm(x, rm, rv, w, b))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(backend, training):
    d = torch.float64
    x = backend.randn(3, 4, 3, 2, dtype=d, requires_grad=True)
    w, b = backend.randn(4, dtype=d, requires_grad=True), backend.randn(4, dtype=d, requires_grad=True)
    rm, rv = backend.randn(4, dtype=d), backend.randn(4, dtype=d).abs() + 0.5
    # the running statistics are updated by every training call: fresh copies each time
    fn = lambda x, w, b: FF.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_double_backward_is_refused(backend):
    x = backend.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(FF.batch_norm(x, None, None, training=True).pow(2).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="batch_norm: double backward"):
        gx.sum().backward()


def test_opcheck(backend):
    x = backend.randn(3, 4, 5, 2, requires_grad=True)
    w, b = backend.randn(4, requires_grad=True), backend.randn(4, requires_grad=True)
    rm, rv = backend.randn(4), backend.randn(4).abs() + 0.5
    torch.library.opcheck(ops.batch_norm, (x, w, b, rm, rv, True, 1e-5))
    torch.library.opcheck(ops.batch_norm, (x, w, b, rm, rv, False, 1e-5))
    torch.library.opcheck(ops.batch_norm, (x, None, None, None, None, True, 1e-3))
    out, mean, invstd, var = ops.batch_norm(x.detach(), w.detach(), None, None, None, True, 1e-5)
    torch.library.opcheck(ops.batch_norm_backward, (torch.randn_like(out), x.detach(), w.detach(), mean, invstd, True))
    torch.library.opcheck(ops.batch_norm_update_stats, (rm.clone(), rv.clone(), mean, var, 0.1))


@pytest.mark.parametrize("layout", ["transposed", "sliced", "strided", "channels_last"])
def test_non_contiguous_inputs(backend, layout):
    x = make_layout(backend.randn(4, 3, 6, 8), layout).requires_grad_()
    w, b = backend.randn(3, requires_grad=True), backend.randn(3, requires_grad=True)
    out = FF.batch_norm(x, None, None, w, b, training=True)
    want = F.batch_norm(x, None, None, w, b, training=True)
    torch.testing.assert_close(out, want, **tol(torch.float32, 200))
    assert out.is_contiguous(memory_format=torch.channels_last) == want.is_contiguous(memory_format=torch.channels_last)
    g = make_layout(torch.randn_like(want), "transposed")
    for a, r in zip(torch.autograd.grad(out, [x, w, b], g), torch.autograd.grad(want, [x, w, b], g)):
        torch.testing.assert_close(a, r, **tol(torch.float32, 200))


@pytest.mark.parametrize("dtype", REDUCED_DTYPES)
def test_16_bit_types_like_torch(backend, dtype):
    x = backend.randn(4, 3, 5, 5).to(dtype)
    w, b = backend.randn(3).to(dtype), backend.randn(3).to(dtype)
    out = FF.batch_norm(x, None, None, w, b, training=True)
    assert out.dtype == dtype
    want = F.batch_norm(x.float(), None, None, w.float(), b.float(), training=True)
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)


def test_thread_count_invariance(backend):
    x, g = backend.randn(8, 6, 17, 19), backend.randn(8, 6, 17, 19)
    w = backend.randn(6)
    results = []
    for n in (1, 2, 3):
        with num_threads(n):
            out, mean, invstd, var = ops.batch_norm(x, w, None, None, None, True, 1e-5)
            results.append([out, mean, invstd, var, *ops.batch_norm_backward(g, x, w, mean, invstd, True)])
    for other in results[1:]:
        for a, r in zip(results[0], other):
            assert_bitwise_equal(a, r)


def test_conversion_keeps_state_and_mode(backend):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).to(
        backend.device)
    net(backend.randn(4, 3, 6, 6))  # running statistics away from their initial values
    net.eval()
    fast = fastconv.convert(net)
    assert type(fast[1]) is fnn.BatchNorm2d and not fast[1].training
    for name, t in net[1].state_dict().items():
        assert torch.equal(fast[1].state_dict()[name], t), name
    x = backend.randn(2, 3, 6, 6)
    torch.testing.assert_close(fast(x), net(x), **tol(torch.float32, 27))


def test_bad_arguments():
    x = torch.randn(4, 3, 5, 5)
    with pytest.raises(ValueError, match="more than 1 value per channel when training"):
        FF.batch_norm(torch.randn(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match="needed when not training"):
        FF.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="both be given or both be None"):
        FF.batch_norm(x, torch.zeros(3), None, training=True)
    with pytest.raises(ValueError, match="weight must have one value per channel"):
        FF.batch_norm(x, None, None, torch.ones(4), training=True)
    with pytest.raises(ValueError, match="momentum=None"):
        FF.batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=None)
    with pytest.raises(TypeError, match="fastconv.batch_norm: input must be float32 or float64"):
        FF.batch_norm(x.long(), None, None, training=True)
