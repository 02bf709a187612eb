"""Errors the kernels find in the data: a cross-entropy target outside [0, C), a max-pool index outside its
input plane (fastconv/errors.py, README "Errors the kernels find in the data").

Every backend raises them as an IndexError naming the value. The CUDA kernels record them in the device's
error record instead of handing a value back to the host, so no op reads device memory on the host; on
a GPU the error is raised by the next fastconv op or by fastconv.check_errors(), which the simulator does
too under simulate(defer_errors=True), and the outputs the bad value affects are NaN.
"""
import contextlib

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import fastconv
import fastconv.functional as FF
import fastconv.nn as fnn

pytestmark = pytest.mark.op

ops = torch.ops.fastconv

# max_pool2d_backward's window arguments: a 3x3 window, stride 2, over a 5x5 plane (2x2 outputs)
POOL_WINDOW = ([3, 3], [2, 2], [0, 0], [1, 1])
TARGET_7_AT_ROW_2 = r"target 7 at row 2 is out of range for 5 classes"
FORWARD_HINT = r" \(expected 0\.\.4 or ignore_index -100\)"
INDEX_100 = r"fastconv\.max_pool2d_backward: index 100 is outside the input plane of 25 elements"


def _targets(backend, values):
    return torch.tensor(values, device=backend.device)


def _indices(backend, values):
    """Max-pool indices of a [1, planes, 2, 2] output over 5x5 planes, one row of 4 per plane."""
    return torch.tensor(values, device=backend.device).view(1, len(values), 2, 2)


def _host_reads(fn):
    """How many times fn reads a tensor's value on the host (each a synchronisation on a GPU)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events()]
    return names.count("aten::_local_scalar_dense") + names.count("aten::item")


@pytest.mark.backends("sim", "cuda")
@pytest.mark.sim_unchecked
def test_training_step_makes_no_host_reads(backend):
    """A training step of a small CNN (conv2d, ReLU, max-pool, linear, cross-entropy, forward and backward)
    never reads device memory on the host."""
    net = torch.nn.Sequential(fnn.Conv2d(1, 4, 3), fnn.ReLU(), fnn.MaxPool2d(2), torch.nn.Flatten(),
                              fnn.Linear(4 * 3 * 3, 5)).to(backend.device)
    x, target = backend.randn(2, 1, 8, 8), _targets(backend, [1, 4])

    def step():
        FF.cross_entropy(net(x), target).backward()

    step()  # the first step allocates the device's error record
    assert _host_reads(step) == 0


# ---------------------------------------------------------------- raised by the op (cpu, sim)

@pytest.mark.backends("cpu", "sim")
@pytest.mark.parametrize("reduction", [0, 1, 2], ids=["none", "mean", "sum"])
def test_bad_target_raises_naming_it(backend, reduction):
    x, target = backend.randn(4, 5), _targets(backend, [0, 1, 7, 2])
    with pytest.raises(IndexError, match=r"fastconv\.cross_entropy: " + TARGET_7_AT_ROW_2 + FORWARD_HINT):
        ops.cross_entropy(x, target, None, reduction, -100, 0.1)
    grad = backend.randn(4) if reduction == 0 else backend.randn(())
    with pytest.raises(IndexError, match=r"fastconv\.cross_entropy_backward: " + TARGET_7_AT_ROW_2 + "$"):
        ops.cross_entropy_backward(grad, x, target, None, backend.randn(4), reduction, -100, 0.1)
    ops.cross_entropy(x, _targets(backend, [0, 1, 4, 2]), None, reduction, -100, 0.1)  # nothing left over


@pytest.mark.backends("cpu", "sim")
@pytest.mark.parametrize("index", [100, -1, 25])
def test_bad_pool_index_raises_naming_it(backend, index):
    with pytest.raises(IndexError, match=rf"fastconv\.max_pool2d_backward: index {index} is outside the input "
                       r"plane of 25 elements"):
        ops.max_pool2d_backward(backend.randn(1, 2, 2, 2), _indices(backend, [[0, 3, 4, 7], [0, index, 4, 7]]),
                                [1, 2, 5, 5], *POOL_WINDOW)
    ops.max_pool2d_backward(backend.randn(1, 1, 2, 2), _indices(backend, [[0, 3, 4, 7]]), [1, 1, 5, 5],
                            *POOL_WINDOW)


@pytest.mark.backends("cpu", "sim")
def test_bad_target_raises_through_autograd(backend):
    x = backend.randn(3, 5, requires_grad=True)
    with pytest.raises(IndexError, match=r"target 5 at row 1 is out of range for 5 classes"):
        FF.cross_entropy(x, _targets(backend, [0, 5, 1]))


# ---------------------------------------------------------------- recorded, raised later (sim deferred, cuda)

@contextlib.contextmanager
def deferred(backend):
    """The ops leave their kernels' errors to the next op or check_errors(), as on a GPU; the record is
    clear on entry."""
    with fastconv.simulate(defer_errors=True) if backend.name == "sim" else contextlib.nullcontext():
        fastconv.check_errors(backend.device)
        yield


def _finished(backend):
    """Waits for the GPU: the next op then starts after every kernel enqueued so far has finished."""
    if backend.device.type == "cuda":
        torch.cuda.synchronize(backend.device)


@pytest.mark.backends("sim", "cuda")
def test_check_errors_raises_a_recorded_error_once(backend):
    with deferred(backend):
        ops.cross_entropy(backend.randn(4, 5), _targets(backend, [0, 1, 7, 2]), None, 1, -100, 0.0)
        with pytest.raises(IndexError, match=r"fastconv\.cross_entropy: " + TARGET_7_AT_ROW_2 + FORWARD_HINT):
            fastconv.check_errors(backend.device)
        fastconv.check_errors(backend.device)  # cleared
        fastconv.check_errors()


@pytest.mark.backends("sim", "cuda")
def test_next_op_raises_a_recorded_error(backend):
    x = backend.randn(3, 4)
    with deferred(backend):
        ops.max_pool2d_backward(backend.randn(1, 1, 2, 2), _indices(backend, [[0, 3, 100, 7]]), [1, 1, 5, 5],
                                *POOL_WINDOW)
        _finished(backend)
        with pytest.raises(IndexError, match=INDEX_100):
            FF.relu(x)
        torch.testing.assert_close(FF.relu(x), x.clamp(min=0))  # cleared: the next op runs


@pytest.mark.backends("sim", "cuda")
def test_first_error_wins(backend):
    """Several bad values: the record holds one of them whole (value and row together), then the next
    op's own error is recorded afresh."""
    with deferred(backend):
        ops.cross_entropy(backend.randn(4, 5), _targets(backend, [0, 7, 9, 2]), None, 0, -100, 0.0)
        with pytest.raises(IndexError, match=r"target (7 at row 1|9 at row 2) is out of range for 5 classes"):
            fastconv.check_errors(backend.device)
        ops.cross_entropy_backward(backend.randn(4), backend.randn(4, 5), _targets(backend, [0, 1, 2, -3]), None,
                                   backend.randn(4), 0, -100, 0.0)
        with pytest.raises(IndexError, match=r"fastconv\.cross_entropy_backward: target -3 at row 3"):
            fastconv.check_errors(backend.device)


@pytest.mark.backends("sim", "cuda")
@pytest.mark.parametrize("reduction", [0, 1, 2], ids=["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=["f32", "f64", "f16"])
def test_cross_entropy_outputs_are_nan_where_the_target_is_bad(backend, reduction, dtype):
    x, lse_in = backend.randn(4, 5, dtype=dtype), backend.randn(4, dtype=dtype)
    grad = backend.randn(4, dtype=dtype) if reduction == 0 else backend.randn((), dtype=dtype)
    good, bad = _targets(backend, [0, 1, -100, 2]), _targets(backend, [0, 1, 7, 2])
    with deferred(backend):
        loss, lse = ops.cross_entropy(x, bad, None, reduction, -100, 0.1)
        with pytest.raises(IndexError, match=TARGET_7_AT_ROW_2):
            fastconv.check_errors(backend.device)
        dz = ops.cross_entropy_backward(grad, x, bad, None, lse_in, reduction, -100, 0.1)
        with pytest.raises(IndexError, match=TARGET_7_AT_ROW_2):
            fastconv.check_errors(backend.device)
    # the other rows are those of the same call with row 2 ignored: a bad target, like an ignored one, has
    # no weight in a mean's denominator
    ref_loss, ref_lse = ops.cross_entropy(x, good, None, reduction, -100, 0.1)
    ref_dz = ops.cross_entropy_backward(grad, x, good, None, lse_in, reduction, -100, 0.1)
    others = [0, 1, 3]
    assert lse[2].isnan() and not lse[others].isnan().any()
    torch.testing.assert_close(lse[others], ref_lse[others], rtol=0, atol=0)
    if reduction == 0:
        assert loss[2].isnan()
        torch.testing.assert_close(loss[others], ref_loss[others], rtol=0, atol=0)
    else:
        assert loss.isnan()
    assert dz[2].isnan().all() and not dz[others].isnan().any()
    torch.testing.assert_close(dz[others], ref_dz[others], rtol=0, atol=0)


@pytest.mark.backends("sim", "cuda")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_max_pool_grad_is_nan_in_the_plane_of_a_bad_index(backend, dtype, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    dy = backend.randn(2, 2, 2, 2, dtype=dtype).contiguous(memory_format=fmt)
    good = torch.tensor([0, 3, 4, 7], device=backend.device).view(1, 1, 2, 2).expand(2, 2, 2, 2).contiguous()
    good = good.contiguous(memory_format=fmt)
    bad = good.clone()
    bad[1, 0, 1, 0] = -5
    with deferred(backend):
        dx = ops.max_pool2d_backward(dy, bad, [2, 2, 5, 5], *POOL_WINDOW)
        with pytest.raises(IndexError, match=r"index -5 is outside the input plane of 25 elements"):
            fastconv.check_errors(backend.device)
    ref = ops.max_pool2d_backward(dy, good, [2, 2, 5, 5], *POOL_WINDOW)
    assert dx[1, 0].isnan().all()
    mask = torch.ones(2, 2, dtype=torch.bool)
    mask[1, 0] = False
    torch.testing.assert_close(dx[mask], ref[mask], rtol=0, atol=0)


# ---------------------------------------------------------------- the switches

def test_defer_errors_is_restored_on_exit():
    before = fastconv.simulator.settings()
    with fastconv.simulate(defer_errors=True) as s:
        assert s.defer_errors
        with fastconv.simulate() as inner:
            assert inner.defer_errors
    assert fastconv.simulator.settings() == before and not before.defer_errors


def test_check_errors_refuses_other_devices():
    with pytest.raises(ValueError, match=r"fastconv\.check_errors: .* not on meta"):
        fastconv.check_errors("meta")
