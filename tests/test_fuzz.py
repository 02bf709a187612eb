"""Property tests: random configurations of every op, fastconv vs torch.nn.functional.

Each property draws a configuration (shapes, hyper-parameters, dtype, memory layouts and a data
seed) with hypothesis and hands it to a ``check_<op>(backend, **case)`` function, which builds the
tensors from the seed, runs fastconv and torch on the same leaves and compares the forward result
and the gradient of every input for one random (seeded) grad_output. Configurations that torch
rejects are skipped with ``hypothesis.assume``. The conv2d and max_pool2d properties also run the
fixed geometries of test_conv2d.py and test_max_pool2d.py as explicit examples, every time.

Settings (environment variables):
    FASTCONV_FUZZ_EXAMPLES=N   examples per property (default 100, what CI runs)
    FASTCONV_FUZZ_SEED=S       explore another random seed; without it the run is derandomized
                               (the same examples every time)

A failure prints hypothesis's falsifying example and, below the error, a one-line command that
reproduces it outside pytest, from the repository root:

    python -c "import sys; sys.path.insert(0, 'tests'); import test_fuzz as t; t.check_conv2d('cpu', ...)"

The session ends with one line per property ("fuzz: conv2d [cpu] 100 examples in 1.2 s ...").
"""
import contextlib
import functools
import math
import os
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, example, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException, UnsatisfiedAssumption

import fastconv.functional as FF
from fastconv.ops import pool_out  # the output length torch computes, to filter the cases
import test_conv2d
import test_max_pool2d
from conftest import FUZZ_STATS, Backend, backend_context, backend_device, layouts, make_layout, tol

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")

EXAMPLES = int(os.environ.get("FASTCONV_FUZZ_EXAMPLES", "100"))
SEED = os.environ.get("FASTCONV_FUZZ_SEED")

_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the machine is slow and shared: no per-example time limit
    derandomize=SEED is None,  # CI runs the same examples every time
    database=None,  # nothing saved between runs: a run depends only on the code and the seed
    print_blob=True,
    # the `backend` fixture is entered once per test, not per example, on purpose
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def fuzz(test):
    """The settings of every property test (and the explicit seed, if one is given)."""
    test = _SETTINGS(test)
    return seed(int(SEED))(test) if SEED is not None else test


# ------------------------------------------------------------------ harness


class _Counter:
    """Examples passed, failed and rejected by one property test (its short repr keeps hypothesis's
    report of a falsifying example readable)."""

    def __init__(self):
        self.examples = self.failed = self.rejected = 0

    def __repr__(self):
        return "<fuzz counter>"


@pytest.fixture
def fuzz_stats(request, backend):
    """Counts the examples a property test runs and times it, for the session's summary."""
    counter, start = _Counter(), time.perf_counter()
    yield counter
    FUZZ_STATS.append(dict(property=request.node.originalname.removeprefix("test_fuzz_"), backend=backend.name,
                           examples=counter.examples, failed=counter.failed, rejected=counter.rejected,
                           seed="derandomized" if SEED is None else f"seed {SEED}",
                           seconds=time.perf_counter() - start))


def _repro_line(check, backend, case):
    args = ", ".join([repr(backend.name)] + [f"{k}={v!r}" for k, v in case.items()])
    return (f"reproduce (from the repository root): python -c \"import sys; sys.path.insert(0, 'tests'); "
            f"import test_fuzz as t; t.{check.__name__}({args})\"")


def _run(check, backend, case, stats):
    """Runs one example; a failure carries the one-line call that reproduces it."""
    try:
        check(backend, **case)
    except UnsatisfiedAssumption:
        stats.rejected += 1
        raise
    except HypothesisException:
        raise
    except Exception as exc:
        stats.failed += 1
        exc.add_note(_repro_line(check, backend, case))
        raise
    stats.examples += 1


@contextlib.contextmanager
def _on(backend):
    """The device to create tensors on: a Backend (inside the fixture's context already) or a backend
    name (a reproduction outside pytest: enter that backend's context)."""
    if isinstance(backend, Backend):
        yield backend.device
    else:
        with backend_context(backend):
            yield backend_device(backend)


def _dtype(name):
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _tensor(sample, shape, layout, device, requires_grad=True):
    """A leaf tensor of `shape` in memory `layout` (conftest's make_layout), its values drawn by
    `sample(shape) -> CPU tensor`."""
    return make_layout(sample(tuple(shape)).to(device), layout).requires_grad_(requires_grad)


def _standard(t):
    """A copy of t with standard contiguous strides (even along dims of size 1), or None."""
    return None if t is None else t.clone(memory_format=torch.contiguous_format)


def _randn(gen, dtype):
    return lambda shape: torch.randn(shape, generator=gen, dtype=dtype)


def _compare_grads(out, ref, leaves, names, grad_out, tols, ref_grad_out=None):
    """Gradients of `out` and `ref` (computed from the same leaves) for the same grad_output (given to
    torch as `ref_grad_out`, a copy of it in another layout, if given)."""
    ref_grad_out = grad_out if ref_grad_out is None else ref_grad_out
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad(ref, leaves, ref_grad_out, allow_unused=True, materialize_grads=True)
    for name, g, r, t in zip(names, grads, ref_grads, tols):
        assert g.shape == r.shape, f"grad {name}: shape {tuple(g.shape)}, torch's {tuple(r.shape)}"
        torch.testing.assert_close(g, r, equal_nan=True, **t, msg=lambda m, name=name: f"grad {name}: {m}")


def _torch_or_reject(fn):
    """torch's result, or skip the example if torch rejects the configuration."""
    try:
        return fn()
    except RuntimeError:
        assume(False)


_dtypes = st.sampled_from(["float32", "float64"])
_seeds = st.integers(0, 2**31 - 1)


def _int_or_pair(lo, hi):
    return st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi)))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _examples(cases):
    """@example(case=c) for every c of `cases`: the test runs them on top of the examples it draws."""
    def decorate(test):
        for case in reversed(cases):
            test = example(case=case)(test)
        return test
    return decorate


# ------------------------------------------------------------------ conv2d


@st.composite
def conv2d_cases(draw):
    groups = draw(st.integers(1, 4))
    depthwise = draw(st.booleans())
    c_in = groups * (1 if depthwise else draw(st.integers(1, 4)))
    c_out = groups * draw(st.integers(1, 4))
    batch = draw(st.sampled_from([1, 2, 3, 0, None]))  # None: an unbatched (C, H, W) input
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = draw(_int_or_pair(1, 3))
    dilation = draw(_int_or_pair(1, 3))
    # "asym": (top, bottom, left, right), which only the op itself takes (batched input only)
    kinds = ["int", "pair", "valid"] + (["asym"] if batch is not None else []) \
        + (["same"] if _pair(stride) == (1, 1) else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "int":
        padding = draw(st.integers(0, 3))
        pads = [(padding, padding)] * 2  # (before, after) of each dim
    elif kind == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        pads = [(p, p) for p in padding]
    elif kind == "asym":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
        pads = [padding[:2], padding[2:]]
    else:
        padding, pads = kind, [(0, 0)] * 2
    # input sizes large enough for the (dilated) kernel: from 1 to 12, or to 8 more than the smallest
    # size that fits the kernel where that is larger
    size = []
    for k, d, (p0, p1) in zip(kernel, _pair(dilation), pads):
        need = max(1, 1 if kind == "same" else d * (k - 1) + 1 - p0 - p1)
        size.append(draw(st.integers(need, max(12, need + 8))))
    x_shape = (c_in, *size) if batch is None else (batch, c_in, *size)
    w_shape = (c_out, c_in // groups, *kernel)
    return dict(x_shape=x_shape, w_shape=w_shape, bias=draw(st.booleans()), stride=stride, padding=padding,
                dilation=dilation, groups=groups, dtype=draw(_dtypes),
                x_layout=draw(st.sampled_from(layouts(len(x_shape)))),
                w_layout=draw(st.sampled_from(layouts(4))), b_layout=draw(st.sampled_from(layouts(1))),
                g_layout=draw(st.sampled_from(layouts(len(x_shape)))), seed=draw(_seeds),
                act=draw(st.sampled_from([None, 0.0, 0.1, 1.5])))  # the fused activation: none, ReLU, LeakyReLU


def _asym(padding):
    return isinstance(padding, tuple) and len(padding) == 4


def _torch_conv2d(x, w, b, stride, padding, dilation, groups, act=None):
    """F.conv2d; with padding (top, bottom, left, right), F.conv2d of the zero-padded input; then ReLU
    (act 0) or LeakyReLU (act > 0) where act is not None."""
    if _asym(padding):
        top, bottom, left, right = padding
        y = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride, 0, dilation, groups)
    else:
        y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    return y if act is None else F.relu(y) if act == 0 else F.leaky_relu(y, act)


def _fastconv_conv2d(x, w, b, stride, padding, dilation, groups, act=None):
    """FF.conv2d (FF.conv2d_relu, FF.conv2d_leaky_relu with act); with padding (top, bottom, left, right),
    which FF does not take, the op itself."""
    if _asym(padding):
        return torch.ops.fastconv.conv2d(x, w, b, _pair(stride), padding, _pair(dilation), groups, act is not None,
                                         act or 0.0)
    if act is None:
        return FF.conv2d(x, w, b, stride, padding, dilation, groups)
    if act == 0:
        return FF.conv2d_relu(x, w, b, stride, padding, dilation, groups)
    return FF.conv2d_leaky_relu(x, w, b, stride, padding, dilation, groups, negative_slope=act)


def check_conv2d(backend, x_shape, w_shape, bias, stride, padding, dilation, groups, dtype, x_layout, w_layout,
                 b_layout, g_layout, seed, act=None):
    _check_conv(functools.partial(_torch_conv2d, act=act), functools.partial(_fastconv_conv2d, act=act), backend,
                x_shape, w_shape, bias, stride, padding, dilation, groups, dtype, x_layout, w_layout, b_layout,
                g_layout, seed)


def _check_conv(torch_fn, fc_fn, backend, x_shape, w_shape, bias, stride, padding, dilation, groups, dtype,
                x_layout, w_layout, b_layout, g_layout, seed):
    dtype, gen = _dtype(dtype), torch.Generator().manual_seed(seed)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    with _on(backend) as device:
        x = _tensor(_randn(gen, dtype), x_shape, x_layout, device)
        w = _tensor(_randn(gen, dtype), w_shape, w_layout, device)
        b = _tensor(_randn(gen, dtype), w_shape[:1], b_layout, device) if bias else None
        # torch computes the reference on copies with standard strides (autograd flows through the
        # copies to the same leaves): its oneDNN path crashes on some non-standard layouts, e.g. a
        # channels_last float32 input of a conv whose every window lies in the padding.
        ref = _torch_or_reject(lambda: torch_fn(_standard(x), _standard(w), _standard(b), **kw))
        out = fc_fn(x, w, b, **kw)
        assert out.shape == ref.shape and out.dtype == ref.dtype, (tuple(out.shape), tuple(ref.shape), out.dtype)
        fwd_terms = math.prod(w_shape[1:])
        torch.testing.assert_close(out, ref, **tol(dtype, fwd_terms), msg=lambda m: f"forward: {m}")
        g = _tensor(_randn(gen, dtype), ref.shape, g_layout, device, requires_grad=False)
        pixels = ref.numel() // w_shape[0]  # N * OH * OW: terms of grad weight and grad bias
        leaves, names = [x, w] + ([b] if bias else []), ["input", "weight", "bias"]
        tols = [tol(dtype, w_shape[0] // groups * math.prod(w_shape[2:])), tol(dtype, pixels), tol(dtype, pixels)]
        _compare_grads(out, ref, leaves, names, g, tols, ref_grad_out=_standard(g))


# The mixed geometries of test_conv2d (with asymmetric padding), always run.
_CONV2D_GEOMETRIES = [dict(x_shape=x, w_shape=w, bias=True, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, dtype="float64", x_layout="contiguous", w_layout="contiguous",
                           b_layout="contiguous", g_layout="contiguous", seed=0)
                      for x, w, stride, padding, dilation, groups in test_conv2d.GEOMETRIES]


@fuzz
@_examples(_CONV2D_GEOMETRIES)
@given(case=conv2d_cases())
def test_fuzz_conv2d(backend, fuzz_stats, case):
    _run(check_conv2d, backend, case, fuzz_stats)


# ------------------------------------------------------------------ conv1d


@st.composite
def conv1d_cases(draw):
    groups = draw(st.integers(1, 3))
    c_in = groups * (1 if draw(st.booleans()) else draw(st.integers(1, 3)))
    c_out = groups * draw(st.integers(1, 3))
    batch = draw(st.sampled_from([1, 2, 3, 0, None]))
    k, stride, dilation = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["int", "tuple", "valid"] + (["same"] if stride == 1 else [])))
    p = draw(st.integers(0, 3)) if kind in ("int", "tuple") else 0
    padding = p if kind == "int" else (p,) if kind == "tuple" else kind
    need = 1 if kind == "same" else dilation * (k - 1) + 1 - 2 * p
    length = draw(st.integers(min(16, max(1, need)), 16))
    x_shape = (c_in, length) if batch is None else (batch, c_in, length)
    return dict(x_shape=x_shape, w_shape=(c_out, c_in // groups, k), bias=draw(st.booleans()), stride=stride,
                padding=padding, dilation=dilation, groups=groups, dtype=draw(_dtypes),
                x_layout=draw(st.sampled_from(layouts(len(x_shape)))), w_layout=draw(st.sampled_from(layouts(3))),
                b_layout=draw(st.sampled_from(layouts(1))),
                g_layout=draw(st.sampled_from(layouts(len(x_shape)))), seed=draw(_seeds))


def check_conv1d(backend, x_shape, w_shape, bias, stride, padding, dilation, groups, dtype, x_layout, w_layout,
                 b_layout, g_layout, seed):
    _check_conv(F.conv1d, FF.conv1d, backend, x_shape, w_shape, bias, stride, padding, dilation, groups, dtype,
                x_layout, w_layout, b_layout, g_layout, seed)


@fuzz
@given(case=conv1d_cases())
def test_fuzz_conv1d(backend, fuzz_stats, case):
    _run(check_conv1d, backend, case, fuzz_stats)


# ------------------------------------------------------------------ max_pool2d


def _empty_window(size, out, k, s, p, d):
    """Whether some output's window, clipped to the input, holds no element (it lies in the padding)."""
    return any(not any(0 <= o * s - p + j * d < size for j in range(k)) for o in range(out))


@st.composite
def max_pool2d_cases(draw):
    kernel = draw(_int_or_pair(1, 4))
    kh, kw = _pair(kernel)
    stride = draw(st.one_of(st.none(), _int_or_pair(1, 4)))
    if draw(st.booleans()):
        padding = draw(st.integers(0, min(kh, kw) // 2))
    else:
        padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    dilation = draw(_int_or_pair(1, 3))
    batch = draw(st.sampled_from([1, 2, 0, None]))
    size = []  # from 1 to 12, most of them large enough for the (dilated) window
    for k, d, p in zip((kh, kw), _pair(dilation), _pair(padding)):
        size.append(draw(st.integers(min(12, max(1, d * (k - 1) + 1 - 2 * p)), 12)))
    c = draw(st.integers(1, 4))
    x_shape = (c, *size) if batch is None else (batch, c, *size)
    return dict(x_shape=x_shape, kernel_size=kernel, stride=stride, padding=padding,
                dilation=dilation, ceil_mode=draw(st.booleans()),
                return_indices=draw(st.booleans()), dtype=draw(_dtypes),
                x_layout=draw(st.sampled_from(layouts(len(x_shape)))),
                g_layout=draw(st.sampled_from(layouts(len(x_shape)))), seed=draw(_seeds))


def check_max_pool2d(backend, x_shape, kernel_size, stride, padding, dilation, ceil_mode, return_indices, dtype,
                     x_layout, g_layout, seed):
    dtype, gen = _dtype(dtype), torch.Generator().manual_seed(seed)
    kw = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
              return_indices=return_indices)
    # outputs whose window lies entirely in the padding: torch's backward corrupts memory there, skip
    k, s = _pair(kernel_size), _pair(kernel_size if stride is None else stride)
    p, d = _pair(padding), _pair(dilation)
    for i in range(2):
        size = x_shape[-2 + i]
        out = pool_out(size, k[i], s[i], p[i], d[i], ceil_mode)
        assume(out < 1 or not _empty_window(size, out, k[i], s[i], p[i], d[i]))

    def distinct(shape):  # no ties: the argmax of every window is unique
        n = math.prod(shape)
        return ((torch.randperm(n, generator=gen) - n // 2).to(dtype) * 0.25).reshape(shape)

    with _on(backend) as device:
        x = _tensor(distinct, x_shape, x_layout, device)
        ref = _torch_or_reject(lambda: F.max_pool2d(x, **kw))
        out = FF.max_pool2d(x, **kw)
        if return_indices:
            assert isinstance(out, tuple) and len(out) == 2, type(out)
            (out, idx), (ref, ref_idx) = out, ref
            assert idx.dtype == torch.int64 and idx.shape == ref_idx.shape, (idx.dtype, idx.shape, ref_idx.shape)
            assert torch.equal(idx, ref_idx), f"indices differ:\n{idx}\ntorch's:\n{ref_idx}"
        assert isinstance(out, torch.Tensor) and out.shape == ref.shape, (type(out), getattr(out, "shape", None),
                                                                         ref.shape)
        torch.testing.assert_close(out, ref, rtol=0, atol=0, msg=lambda m: f"forward: {m}")  # a max: exact
        g = _tensor(_randn(gen, dtype), ref.shape, g_layout, device, requires_grad=False)
        # an input element gets the sum of the grad_output of the windows it is the maximum of
        overlap = math.prod(-(-ki // si) for ki, si in zip(k, s))
        _compare_grads(out, ref, [x], ["input"], g, [tol(dtype, overlap)])


# The mixed geometries of test_max_pool2d, always run.
_MAX_POOL2D_GEOMETRIES = [dict(x_shape=x, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                               ceil_mode=ceil_mode, return_indices=True, dtype="float32", x_layout="contiguous",
                               g_layout="contiguous", seed=0)
                          for x, kernel_size, stride, padding, dilation, ceil_mode in test_max_pool2d.GEOMETRIES]


@fuzz
@_examples(_MAX_POOL2D_GEOMETRIES)
@given(case=max_pool2d_cases())
def test_fuzz_max_pool2d(backend, fuzz_stats, case):
    _run(check_max_pool2d, backend, case, fuzz_stats)


# ------------------------------------------------------------------ cross_entropy


@st.composite
def cross_entropy_cases(draw):
    c = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["batch", "spatial", "unbatched"]))
    n = draw(st.integers(1, 16))
    if kind == "batch":
        x_shape = (n, c)
    elif kind == "spatial":  # (N, C, d1, ...) logits, (N, d1, ...) targets
        x_shape = (n, c, *draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    else:
        x_shape = (c,)
    # ignore_index: None = torch's default (-100); some targets set to it: none, some or all
    ignore_index = draw(st.sampled_from([None, -100, -1, 1000, "class"]))
    if ignore_index == "class":
        ignore_index = draw(st.integers(0, c - 1))  # a real class: also present among targets by chance
    return dict(x_shape=x_shape, reduction=draw(st.sampled_from(["mean", "none", "sum"])),
                ignore_index=ignore_index, planted=draw(st.sampled_from(["none", "some", "all"])),
                label_smoothing=draw(st.floats(0.0, 1.0)), weights=draw(st.sampled_from([None, "positive", "zeros"])),
                scale=draw(st.sampled_from([1.0, 10.0])), dtype=draw(_dtypes),
                x_layout=draw(st.sampled_from(layouts(len(x_shape)))), seed=draw(_seeds))


def check_cross_entropy(backend, x_shape, reduction, ignore_index, planted, label_smoothing, weights, scale, dtype,
                        x_layout, seed):
    dtype, gen = _dtype(dtype), torch.Generator().manual_seed(seed)
    c = x_shape[1] if len(x_shape) > 1 else x_shape[0]
    t_shape = x_shape[:1] + x_shape[2:] if len(x_shape) > 1 else ()
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    if ignore_index is not None:
        kw["ignore_index"] = ignore_index
    ignored = -100 if ignore_index is None else ignore_index
    with _on(backend) as device:
        x = _tensor(lambda s: torch.randn(s, generator=gen, dtype=dtype) * scale, x_shape, x_layout, device)
        target = torch.randint(0, c, t_shape, generator=gen)
        if planted == "all":
            target.fill_(ignored)
        elif planted == "some":
            target.view(-1)[torch.rand(target.numel(), generator=gen) < 0.3] = ignored
        target = target.to(device)
        if weights is not None:
            w = torch.rand(c, generator=gen, dtype=dtype) * 2 + 0.1
            if weights == "zeros":  # some classes weigh nothing
                w[torch.rand(c, generator=gen) < 0.3] = 0.0
            kw["weight"] = w.to(device)
        ref = _torch_or_reject(lambda: F.cross_entropy(x, target, **kw))
        loss = FF.cross_entropy(x, target, **kw)
        assert loss.shape == ref.shape and loss.dtype == ref.dtype, (tuple(loss.shape), tuple(ref.shape))
        rows = max(1, target.numel())
        # torch's mean over a total weight of 0 (every target ignored, or weighing 0) is NaN
        torch.testing.assert_close(loss, ref, equal_nan=True, **tol(dtype, c * rows), msg=lambda m: f"forward: {m}")
        g = torch.randn(ref.shape, generator=gen, dtype=dtype).to(device)
        _compare_grads(loss, ref, [x], ["input"], g, [tol(dtype, c)])


# A regression case, always run: mean reduction with label smoothing over targets whose class
# weights sum to 0 must give NaN (loss and gradient) like torch, not inf:
#   F.cross_entropy(x, t, weight=w, label_smoothing=0.1) with x = torch.tensor([[0.5, -0.5]]),
#   t = torch.tensor([1]), w = torch.tensor([1.0, 0.0]).
_CROSS_ENTROPY_ZERO_WEIGHT = dict(x_shape=(1, 2), reduction="mean", ignore_index=None, planted="none",
                                  label_smoothing=0.1, weights="zeros", scale=1.0, dtype="float32",
                                  x_layout="contiguous", seed=2)


@fuzz
@example(case=_CROSS_ENTROPY_ZERO_WEIGHT)
@given(case=cross_entropy_cases())
def test_fuzz_cross_entropy(backend, fuzz_stats, case):
    _run(check_cross_entropy, backend, case, fuzz_stats)


# ------------------------------------------------------------------ linear


@st.composite
def linear_cases(draw):
    lead = draw(st.lists(st.sampled_from([1, 2, 3, 5, 0]), min_size=0, max_size=2))
    x_shape = (*lead, draw(st.integers(1, 70)))
    w_shape = (draw(st.integers(1, 70)), x_shape[-1])
    return dict(x_shape=x_shape, w_shape=w_shape, bias=draw(st.booleans()), dtype=draw(_dtypes),
                x_layout=draw(st.sampled_from(layouts(len(x_shape)))), w_layout=draw(st.sampled_from(layouts(2))),
                b_layout=draw(st.sampled_from(layouts(1))),
                g_layout=draw(st.sampled_from(layouts(len(x_shape)))), seed=draw(_seeds))


def check_linear(backend, x_shape, w_shape, bias, dtype, x_layout, w_layout, b_layout, g_layout, seed):
    dtype, gen = _dtype(dtype), torch.Generator().manual_seed(seed)
    with _on(backend) as device:
        x = _tensor(_randn(gen, dtype), x_shape, x_layout, device)
        w = _tensor(_randn(gen, dtype), w_shape, w_layout, device)
        b = _tensor(_randn(gen, dtype), w_shape[:1], b_layout, device) if bias else None
        ref = F.linear(x, w, b)
        out = FF.linear(x, w, b)
        assert out.shape == ref.shape and out.dtype == ref.dtype, (tuple(out.shape), tuple(ref.shape), out.dtype)
        torch.testing.assert_close(out, ref, **tol(dtype, w_shape[1]), msg=lambda m: f"forward: {m}")
        g = _tensor(_randn(gen, dtype), ref.shape, g_layout, device, requires_grad=False)
        rows = math.prod(x_shape[:-1])
        leaves, names = [x, w] + ([b] if bias else []), ["input", "weight", "bias"]
        _compare_grads(out, ref, leaves, names, g, [tol(dtype, w_shape[0]), tol(dtype, rows), tol(dtype, rows)])


@fuzz
@given(case=linear_cases())
def test_fuzz_linear(backend, fuzz_stats, case):
    _run(check_linear, backend, case, fuzz_stats)


# ------------------------------------------------------------------ relu

_SPECIALS = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0]


@st.composite
def relu_cases(draw):
    if draw(st.integers(0, 9)) == 0:  # sometimes long: several chunks of the parallel loop
        shape = (draw(st.integers(32 * 1024, 70001)),)
    else:
        shape = tuple(draw(st.lists(st.integers(0, 7), min_size=0, max_size=4)))
    return dict(shape=shape, specials=draw(st.booleans()), dtype=draw(_dtypes),
                x_layout=draw(st.sampled_from(layouts(len(shape)))),
                g_layout=draw(st.sampled_from(layouts(len(shape)))), seed=draw(_seeds))


def _kinked_sample(gen, dtype, specials):
    """A sampler of |x| > 1e-3 values (gradients compared away from the kink at 0), with NaN, +-inf and +-0
    at random places when `specials`."""
    def sample(s):
        v = torch.randn(s, generator=gen, dtype=dtype)
        v = torch.where(v < 0, v - 1e-3, v + 1e-3)
        if specials:
            pick = torch.randint(0, 4 * len(_SPECIALS), s, generator=gen)
            for i, value in enumerate(_SPECIALS):
                v[pick == i] = value
        return v
    return sample


def check_relu(backend, shape, specials, dtype, x_layout, g_layout, seed):
    dtype, gen = _dtype(dtype), torch.Generator().manual_seed(seed)
    with _on(backend) as device:
        x = _tensor(_kinked_sample(gen, dtype, specials), shape, x_layout, device)
        ref = F.relu(x)
        out = FF.relu(x)
        assert out.shape == ref.shape and out.dtype == ref.dtype, (tuple(out.shape), tuple(ref.shape), out.dtype)
        torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"forward: {m}")
        g = _tensor(_randn(gen, dtype), shape, g_layout, device, requires_grad=False)
        (gx,) = torch.autograd.grad(out, x, g)
        (gr,) = torch.autograd.grad(ref, x, g)
        away = x.detach() != 0  # torch's gradient at exactly 0 is 0 (a choice of subgradient)
        assert gx.shape == gr.shape
        torch.testing.assert_close(gx[away], gr[away], rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m: f"grad input: {m}")


@fuzz
@given(case=relu_cases())
def test_fuzz_relu(backend, fuzz_stats, case):
    _run(check_relu, backend, case, fuzz_stats)


# ------------------------------------------------------------------ avg_pool2d, adaptive_avg_pool2d

@st.composite
def avg_pool2d_cases(draw):
    adaptive = draw(st.booleans())
    batch = draw(st.sampled_from([1, 2, 0, None]))
    c = draw(st.integers(1, 4))
    if adaptive:
        size = [draw(st.integers(1, 12)), draw(st.integers(1, 12))]
        out = (draw(st.one_of(st.none(), st.integers(1, 14))), draw(st.one_of(st.none(), st.integers(1, 14))))
        args = dict(output_size=out if draw(st.booleans()) else (out[0] or 1))
    else:
        kernel = draw(_int_or_pair(1, 4))
        kh, kw = _pair(kernel)
        padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
        size = [draw(st.integers(max(1, k - 2 * p), 12)) for k, p in zip((kh, kw), padding)]
        args = dict(kernel_size=kernel, stride=draw(st.one_of(st.none(), _int_or_pair(1, 4))), padding=padding,
                    ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                    divisor_override=draw(st.sampled_from([None, None, 1, 5])))
    x_shape = (c, *size) if batch is None else (batch, c, *size)
    return dict(x_shape=x_shape, adaptive=adaptive, args=args, dtype=draw(_dtypes),
                x_layout=draw(st.sampled_from(layouts(len(x_shape)))),
                g_layout=draw(st.sampled_from(layouts(len(x_shape)))), seed=draw(_seeds))


def check_avg_pool2d(backend, x_shape, adaptive, args, dtype, x_layout, g_layout, seed):
    dtype, gen = _dtype(dtype), torch.Generator().manual_seed(seed)
    ours, theirs = (FF.adaptive_avg_pool2d, F.adaptive_avg_pool2d) if adaptive else (FF.avg_pool2d, F.avg_pool2d)
    with _on(backend) as device:
        x = _tensor(_randn(gen, dtype), x_shape, x_layout, device)
        ref = _torch_or_reject(lambda: theirs(x, **args))
        out = ours(x, **args)
        assert out.shape == ref.shape and out.dtype == ref.dtype, (tuple(out.shape), tuple(ref.shape))
        terms = x_shape[-1] * x_shape[-2]  # at most a whole plane per window
        torch.testing.assert_close(out, ref, **tol(dtype, terms), msg=lambda m: f"forward: {m}")
        g = _tensor(_randn(gen, dtype), ref.shape, g_layout, device, requires_grad=False)
        _compare_grads(out, ref, [x], ["input"], g, [tol(dtype, terms)])


@fuzz
@given(case=avg_pool2d_cases())
def test_fuzz_avg_pool2d(backend, fuzz_stats, case):
    _run(check_avg_pool2d, backend, case, fuzz_stats)


# ------------------------------------------------------------------ batch_norm

@st.composite
def batch_norm_cases(draw):
    dims = draw(st.integers(2, 5))
    shape = (draw(st.integers(2, 4)), draw(st.integers(1, 6)), *[draw(st.integers(1, 6)) for _ in range(dims - 2)])
    training = draw(st.booleans())
    return dict(shape=shape, training=training, affine=draw(st.booleans()),
                running=draw(st.booleans()) if training else True, momentum=draw(st.sampled_from([0.1, 0.5, 1.0])),
                eps=draw(st.sampled_from([1e-5, 1e-3])), dtype=draw(_dtypes),
                x_layout=draw(st.sampled_from(layouts(len(shape)))),
                g_layout=draw(st.sampled_from(layouts(len(shape)))), seed=draw(_seeds))


def check_batch_norm(backend, shape, training, affine, running, momentum, eps, dtype, x_layout, g_layout, seed):
    dtype, gen = _dtype(dtype), torch.Generator().manual_seed(seed)
    with _on(backend) as device:
        x = _tensor(_randn(gen, dtype), shape, x_layout, device)
        c = shape[1]
        w = torch.randn(c, generator=gen, dtype=dtype).to(device).requires_grad_() if affine else None
        b = torch.randn(c, generator=gen, dtype=dtype).to(device).requires_grad_() if affine else None
        rm = torch.randn(c, generator=gen, dtype=dtype).to(device) if running else None
        rv = (torch.rand(c, generator=gen, dtype=dtype) + 0.5).to(device) if running else None
        rm2, rv2 = (rm.clone(), rv.clone()) if running else (None, None)
        ref = _torch_or_reject(lambda: F.batch_norm(x, rm2, rv2, w, b, training, momentum, eps))
        out = FF.batch_norm(x, rm, rv, w, b, training, momentum, eps)
        terms = math.prod(shape) // c
        torch.testing.assert_close(out, ref, **tol(dtype, terms), msg=lambda m: f"forward: {m}")
        if running:
            torch.testing.assert_close(rm, rm2, **tol(dtype, terms), msg=lambda m: f"running_mean: {m}")
            torch.testing.assert_close(rv, rv2, **tol(dtype, terms), msg=lambda m: f"running_var: {m}")
        g = _tensor(_randn(gen, dtype), ref.shape, g_layout, device, requires_grad=False)
        leaves = [x] + ([w, b] if affine else [])
        _compare_grads(out, ref, leaves, ["input", "weight", "bias"][:len(leaves)], g,
                       [tol(dtype, 4 * terms)] * len(leaves))


@fuzz
@given(case=batch_norm_cases())
def test_fuzz_batch_norm(backend, fuzz_stats, case):
    _run(check_batch_norm, backend, case, fuzz_stats)


# ------------------------------------------------------------------ local_response_norm

@st.composite
def local_response_norm_cases(draw):
    dims = draw(st.integers(3, 5))
    shape = (draw(st.integers(0, 3)), draw(st.integers(1, 9)), *[draw(st.integers(1, 6)) for _ in range(dims - 2)])
    return dict(shape=shape, size=draw(st.integers(1, 7)), alpha=draw(st.sampled_from([1e-4, 0.1, 1.0])),
                beta=draw(st.sampled_from([0.75, 0.5, 1.3])), k=draw(st.sampled_from([1.0, 2.0, 0.5])),
                dtype=draw(_dtypes), x_layout=draw(st.sampled_from(layouts(len(shape)))),
                g_layout=draw(st.sampled_from(layouts(len(shape)))), seed=draw(_seeds))


def check_local_response_norm(backend, shape, size, alpha, beta, k, dtype, x_layout, g_layout, seed):
    dtype, gen = _dtype(dtype), torch.Generator().manual_seed(seed)
    with _on(backend) as device:
        x = _tensor(_randn(gen, dtype), shape, x_layout, device)
        ref = _torch_or_reject(lambda: F.local_response_norm(x, size, alpha, beta, k))  # torch: no 5-D views
        out = FF.local_response_norm(x, size, alpha, beta, k)
        assert out.shape == ref.shape and out.dtype == ref.dtype, (tuple(out.shape), tuple(ref.shape))
        torch.testing.assert_close(out, ref, **tol(dtype, size), msg=lambda m: f"forward: {m}")
        g = _tensor(_randn(gen, dtype), ref.shape, g_layout, device, requires_grad=False)
        _compare_grads(out, ref, [x], ["input"], g, [tol(dtype, 4 * size)])


@fuzz
@given(case=local_response_norm_cases())
def test_fuzz_local_response_norm(backend, fuzz_stats, case):
    _run(check_local_response_norm, backend, case, fuzz_stats)


# ------------------------------------------------------------------ leaky_relu

@st.composite
def leaky_relu_cases(draw):
    case = draw(relu_cases())
    case["slope"] = draw(st.sampled_from([0.01, 0.2, 0.0, -0.5, 3.0]) | st.floats(-2.0, 2.0, width=32))
    return case


def check_leaky_relu(backend, shape, specials, dtype, x_layout, g_layout, seed, slope):
    dtype, gen = _dtype(dtype), torch.Generator().manual_seed(seed)
    with _on(backend) as device:
        x = _tensor(_kinked_sample(gen, dtype, specials), shape, x_layout, device)
        ref = F.leaky_relu(x, slope)
        out = FF.leaky_relu(x, slope)
        assert out.shape == ref.shape and out.dtype == ref.dtype, (tuple(out.shape), tuple(ref.shape), out.dtype)
        torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"forward: {m}")
        g = _tensor(_randn(gen, dtype), shape, g_layout, device, requires_grad=False)
        (gx,) = torch.autograd.grad(out, x, g)
        (gr,) = torch.autograd.grad(ref, x, g)
        assert gx.shape == gr.shape
        torch.testing.assert_close(gx, gr, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"grad input: {m}")


@fuzz
@given(case=leaky_relu_cases())
def test_fuzz_leaky_relu(backend, fuzz_stats, case):
    _run(check_leaky_relu, backend, case, fuzz_stats)
