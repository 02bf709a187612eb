"""fastconv cross_entropy against torch.nn.functional.cross_entropy (class-index targets)."""
import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FF
from conftest import DTYPES, assert_bitwise_equal, num_threads, tol

ops = torch.ops.fastconv

pytestmark = [pytest.mark.op, pytest.mark.sanitize_sim]

N, C = 7, 5

# ignore modes: (ignore_index passed, target value planted in some rows; None = plant nothing)
IGNORE = [
    pytest.param((-100, None), id="no_ignored_rows"),
    pytest.param((-100, -100), id="ignore_default"),
    pytest.param((2, 2), id="ignore_custom_class2"),
    pytest.param((-1, -1), id="ignore_custom_neg1"),
]
REDUCTIONS = ["none", "mean", "sum"]
SMOOTHING = [pytest.param(0.0, id="ls0"), pytest.param(0.1, id="ls0.1"), pytest.param(1.0, id="ls1")]


def _targets(shape, ignore_value, device, classes=C):
    t = torch.randint(0, classes, shape, device=device)
    if ignore_value is not None:
        flat = t.view(-1)
        flat[1::3] = ignore_value  # a third of the rows (more if ignore_value is a class), not all
    return t


def _weights(use, dtype, device, classes=C):
    return torch.rand(classes, dtype=dtype, device=device) + 0.5 if use else None


def _compare(x, target, dtype, **kw):
    loss = FF.cross_entropy(x, target, **kw)
    ref = F.cross_entropy(x, target, **kw)
    assert loss.shape == ref.shape
    classes = x.shape[1] if x.dim() > 1 else x.shape[0]
    torch.testing.assert_close(loss, ref, equal_nan=True, **tol(dtype, classes * max(1, target.numel())))
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(loss, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gr, **tol(dtype, classes))
    return loss, gx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_smoothing", SMOOTHING)
@pytest.mark.parametrize("ignore", IGNORE)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_torch(backend, reduction, weighted, ignore, label_smoothing, dtype):
    ignore_index, planted = ignore
    x = backend.randn(N, C, dtype=dtype, requires_grad=True)
    target = _targets((N,), planted, backend.device)
    w = _weights(weighted, dtype, backend.device)
    loss, gx = _compare(x, target, dtype, weight=w, ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=label_smoothing)
    ignored = target == ignore_index
    if planted is not None:
        assert ignored.any() and not ignored.all()
        assert torch.equal(gx[ignored], torch.zeros_like(gx[ignored]))  # ignored rows get no gradient
        if reduction == "none":
            assert torch.equal(loss[ignored], torch.zeros_like(loss[ignored]))
    assert (gx[~ignored] != 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_spatial(backend, reduction, dtype):
    """(N, C, d1, d2) logits with (N, d1, d2) targets."""
    x = backend.randn(2, C, 3, 4, dtype=dtype, requires_grad=True)
    target = _targets((2, 3, 4), -100, backend.device)
    w = _weights(True, dtype, backend.device)
    loss, _ = _compare(x, target, dtype, weight=w, reduction=reduction, label_smoothing=0.1)
    if reduction == "none":
        assert loss.shape == (2, 3, 4)


def test_cross_entropy_spatial_non_contiguous(backend):
    """Channels-last logits: the class dimension is not the innermost one in memory."""
    x = backend.randn(2, C, 3, 4).to(memory_format=torch.channels_last).requires_grad_()
    target = _targets((2, 3, 4), None, backend.device)
    _compare(x, target, torch.float32, reduction="none")
    x2 = backend.randn(C, 6, dtype=torch.float64).t().requires_grad_()  # (6, C) transposed
    _compare(x2, _targets((6,), None, backend.device), torch.float64, label_smoothing=0.1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_value", [3, -100], ids=["target3", "target_ignored"])
def test_cross_entropy_unbatched(backend, reduction, target_value, dtype):
    x = backend.randn(C, dtype=dtype, requires_grad=True)
    target = torch.tensor(target_value, device=backend.device)  # 0-D
    loss, gx = _compare(x, target, dtype, weight=_weights(True, dtype, backend.device), reduction=reduction,
                        label_smoothing=0.1)
    assert loss.shape == ()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_batch1(backend, reduction, dtype):
    x = backend.randn(1, C, dtype=dtype, requires_grad=True)
    _compare(x, torch.tensor([4], device=backend.device), dtype, reduction=reduction)
    _compare(x, torch.tensor([0], device=backend.device), dtype, reduction=reduction, label_smoothing=0.3,
             weight=_weights(True, dtype, backend.device))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_all_rows_ignored(backend, reduction, weighted):
    x = backend.randn(4, C, requires_grad=True)
    target = torch.full((4,), 3, device=backend.device)
    w = _weights(weighted, torch.float32, backend.device)
    for label_smoothing in (0.0, 0.2):
        loss, gx = _compare(x, target, torch.float32, weight=w, ignore_index=3, reduction=reduction,
                            label_smoothing=label_smoothing)
        assert torch.equal(gx, torch.zeros_like(gx))
        if reduction == "mean":
            assert torch.isnan(loss)  # 0 / 0, as torch
        else:
            assert torch.equal(loss, torch.zeros_like(loss))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_extreme_logits(backend, dtype):
    """Large logits (no overflow in exp) and -inf logits of classes that are not the target."""
    x = backend.randn(6, C, dtype=dtype) * 200
    x[0, 1] = -float("inf")
    x[2, :] = 1e4
    x = x.requires_grad_()
    target = torch.tensor([0, 2, 4, 1, 3, 0], device=backend.device)
    for reduction in REDUCTIONS:
        loss, gx = _compare(x, target, dtype, reduction=reduction)
        assert torch.isfinite(loss).all() and torch.isfinite(gx).all()


GRADCHECK = [
    pytest.param(dict(reduction="mean", weighted=True, ignore=-100, label_smoothing=0.1), id="mean_w_ign_ls"),
    pytest.param(dict(reduction="none", weighted=False, ignore=2, label_smoothing=0.0), id="none_ign2"),
    pytest.param(dict(reduction="sum", weighted=True, ignore=-100, label_smoothing=1.0), id="sum_w_ls1"),
]


@pytest.mark.parametrize("cfg", GRADCHECK)
def test_cross_entropy_gradcheck(backend, cfg):
    x = backend.randn(4, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2, 1, 2], device=backend.device)
    target[1] = cfg["ignore"]
    w = _weights(cfg["weighted"], torch.float64, backend.device, classes=3)
    assert torch.autograd.gradcheck(
        lambda x: FF.cross_entropy(x, target, weight=w, ignore_index=cfg["ignore"], reduction=cfg["reduction"],
                                   label_smoothing=cfg["label_smoothing"]), (x,))


def test_cross_entropy_spatial_gradcheck(backend):
    x = backend.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, 2], [1, -100]], [[2, 2], [0, 1]]], device=backend.device)
    assert torch.autograd.gradcheck(lambda x: FF.cross_entropy(x, target, label_smoothing=0.2), (x,))


def test_opcheck_cross_entropy(backend):
    x = backend.randn(4, 3, requires_grad=True)
    target = torch.tensor([0, 2, -100, 1], device=backend.device)
    w = backend.randn(3).abs() + 0.5
    for reduction, weight, ls in [(0, None, 0.0), (1, w, 0.1), (2, w, 0.0)]:
        torch.library.opcheck(ops.cross_entropy, (x, target, weight, reduction, -100, ls))
    loss, lse = ops.cross_entropy(x.detach(), target, w, 1, -100, 0.1)
    torch.library.opcheck(ops.cross_entropy_backward,
                          (torch.randn_like(loss), x.detach(), target, w, lse, 1, -100, 0.1))
    loss, lse = ops.cross_entropy(x.detach(), target, None, 0, -100, 0.0)
    torch.library.opcheck(ops.cross_entropy_backward,
                          (torch.randn_like(loss), x.detach(), target, None, lse, 0, -100, 0.0))


LEGACY = [(None, None), (True, None), (False, None), (None, True), (None, False), (True, True), (False, True),
          (True, False), (False, False)]


@pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")
@pytest.mark.parametrize("size_average, reduce", LEGACY, ids=[f"size_average={a}-reduce={r}" for a, r in LEGACY])
def test_legacy_size_average_reduce(backend, size_average, reduce):
    x = backend.randn(N, C, requires_grad=True)
    target = _targets((N,), -100, backend.device)
    # reduction='sum' is overridden by the legacy flags whenever one of them is given, as in torch
    loss, _ = _compare(x, target, torch.float32, size_average=size_average, reduce=reduce, reduction="sum")
    expected_shape = (N,) if reduce is False else ()
    assert loss.shape == expected_shape


def test_cross_entropy_thread_count_invariance(backend):
    """Row losses are reduced in row order: the same bits whatever the thread count."""
    x = backend.randn(1000, 10)
    target = _targets((1000,), -100, backend.device, classes=10)
    w = _weights(True, torch.float32, backend.device, classes=10)
    results = []
    for n in (1, 2, 3):
        with num_threads(n):
            loss, lse = ops.cross_entropy(x, target, w, 1, -100, 0.1)
            grad = ops.cross_entropy_backward(torch.ones((), device=backend.device), x, target, w, lse, 1, -100, 0.1)
            results.append((loss, lse, grad))
    for other in results[1:]:
        for a, r in zip(results[0], other):
            assert_bitwise_equal(a, r)
