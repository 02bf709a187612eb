"""Shared fixtures and helpers of the fastconv test suite.

Backends: every op test takes the ``backend`` fixture, which runs the test once per backend inside
that backend's context and tells it on which device to create tensors:

    cpu   the CPU kernels
    sim   the CUDA kernels, run on the CPU by fastconv's SIMT simulator (fastconv.simulate())
    cuda  the CUDA kernels on a GPU (only where torch sees one and fastconv was built with CUDA)

``FASTCONV_TEST_BACKENDS=sim`` (a comma-separated list) restricts a run to some of them. A test
(or a module, through ``pytestmark``) marked ``@pytest.mark.backends("cpu")`` runs on those
only. ``FASTCONV_SIM_ORDER`` chooses the simulator's thread order. Tests marked ``sim_unchecked``
(whole networks, second derivatives) run on the simulator without its race checker and memory
check, which the op tests apply to every kernel, at a fifth of the cost.

Markers that select the subsets the CI scripts run again (``pytest -m op tests``):

    op            the tests of one op against torch (pytestmark of each op test module): run again by
                  .ci/run in the simulator's reverse and random thread orders, and by
                  scripts/sanitize.sh under AddressSanitizer + UndefinedBehaviorSanitizer
    sanitize      further modules that scripts/sanitize.sh runs on the cpu backend (-m "op or sanitize")
    sanitize_sim  the modules that scripts/sanitize.sh runs on the sim backend (-m sanitize_sim)

Each module sets its markers itself, in ``pytestmark``.

Output memory: the suite sets ``FASTCONV_CPU_CACHE_POISON=1`` (before fastconv allocates anything), so
every block the CPU ops reuse from their output cache comes filled with NaN bytes: a kernel that reads
an output element before it writes it fails here instead of picking up an earlier tensor's values.

Memory layouts: ``make_layout(t, name)`` gives t's values in one of ``LAYOUTS`` (``layouts(ndim)``:
those a tensor of ndim dimensions can take).

Test modules import the helpers below with ``from conftest import ...`` (tests/ is not a
package, so pytest puts it on sys.path).
"""
import contextlib
import dataclasses
import math
import os
from pathlib import Path
from typing import Callable, ContextManager

import pytest
import torch

os.environ.setdefault("FASTCONV_CPU_CACHE_POISON", "1")  # read at the CPU ops' first allocation
# The simulated float32 GEMMs of 4 blocks or more run on the 8 x 8 SIMT kernel (on a GPU: 528 or
# more), so the tests' small problems exercise both SIMT kernels; read when the extension loads.
os.environ.setdefault("FASTCONV_SIM_SIMT8_MIN_BLOCKS", "4")
import fastconv  # noqa: F401  (registers torch.ops.fastconv)

SEED = 1234

# The fastconv under test: installed in site-packages (scripts/test.sh) or built in the source tree.
# Subprocesses get its parent folder on PYTHONPATH and run outside the source tree, so they import
# the same build.
FASTCONV_DIR = Path(fastconv.__file__).resolve().parent
FASTCONV_PATH = str(FASTCONV_DIR.parent)

ALL_BACKENDS = ["cpu", "sim", "cuda"]


def _cuda_available():
    return torch.cuda.is_available() and bool(fastconv._build_info.cuda_archs)


def _selected_backends():
    names = [n.strip() for n in os.environ.get("FASTCONV_TEST_BACKENDS", ",".join(ALL_BACKENDS)).split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_BACKENDS))
    if unknown:
        raise ValueError(f"FASTCONV_TEST_BACKENDS names unknown backends {unknown}; known: {ALL_BACKENDS}")
    return [n for n in names if n != "cuda" or _cuda_available()]


BACKENDS = _selected_backends()

DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
# float16 / bfloat16: computed from the 16-bit values with float32 accumulation (tensor cores on the
# CUDA backends) and rounded once; the tests compare with torch in float32 on the same 16-bit values.
REDUCED_DTYPES = [pytest.param(torch.float16, id="f16"), pytest.param(torch.bfloat16, id="bf16")]


# Why the sim backend's tests are skipped in a build without the simulator (setup.py's FASTCONV_SIM=0).
NO_SIMULATOR = "fastconv was built without the simulator (FASTCONV_SIM=0)"


@dataclasses.dataclass(frozen=True)
class _BackendSpec:
    device: str
    context: Callable[[], ContextManager] = contextlib.nullcontext
    available: Callable[[], bool] = lambda: True
    unavailable_reason: str = "not available on this machine"


_BACKEND_SPECS = {
    "cpu": _BackendSpec("cpu"),
    "sim": _BackendSpec("cpu", fastconv.simulate, available=lambda: fastconv._build_info.simulator,
                        unavailable_reason=NO_SIMULATOR),
    "cuda": _BackendSpec("cuda", available=_cuda_available),
}


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    device: torch.device

    def randn(self, *shape, dtype=torch.float32, requires_grad=False):
        return torch.randn(*shape, dtype=dtype, device=self.device, requires_grad=requires_grad)

    def tensor(self, data, dtype=torch.float32, requires_grad=False):
        return torch.tensor(data, dtype=dtype, device=self.device, requires_grad=requires_grad)


def backend_context(name):
    """The context manager the tests of backend `name` run in (also used by subprocess helpers)."""
    return _BACKEND_SPECS[name].context()


def backend_device(name):
    """The device the tests of backend `name` create tensors on (also used outside pytest, by
    test_fuzz's reproductions)."""
    return torch.device(_BACKEND_SPECS[name].device)


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run this test on these backends only")
    config.addinivalue_line("markers", "sim_unchecked: on the sim backend, run without the race checker and "
                            "memory check (whole networks and second derivatives: thousands of kernel launches "
                            "whose kernels the op tests check one by one)")
    config.addinivalue_line("markers", "op: tests of one op against torch; run again by CI in other simulator "
                            "thread orders (.ci/run) and by the sanitizer (scripts/sanitize.sh, cpu backend)")
    config.addinivalue_line("markers", "sanitize: run by the sanitizer too (scripts/sanitize.sh, cpu backend, "
                            "with the op tests)")
    config.addinivalue_line("markers", "sanitize_sim: run by the sanitizer on the sim backend too "
                            "(scripts/sanitize.sh)")


def pytest_generate_tests(metafunc):
    """Parametrizes `backend` over the selected backends that the test's `backends` marker allows."""
    if "backend" not in metafunc.fixturenames:
        return
    names = BACKENDS
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None:
        names = [n for n in names if n in marker.args]
    metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture
def backend(request):
    spec = _BACKEND_SPECS[request.param]
    if not spec.available():
        pytest.skip(f"backend {request.param!r}: {spec.unavailable_reason}")
    context = spec.context()
    if request.param == "sim" and request.node.get_closest_marker("sim_unchecked"):
        context = fastconv.simulate(race_check=False, memcheck=False)
    with context:
        yield Backend(request.param, backend_device(request.param))


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same generator state, whatever ran before it."""
    torch.manual_seed(SEED)
    yield


_BASE_TOL = {
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-10, 1e-10),
    # two float32 results that straddle a rounding boundary of the 16-bit type differ by one of its
    # ulps: at most 2^-10 (float16) or 2^-7 (bfloat16) of the value; near zero, float32's atol
    torch.float16: (2e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}


def tol(dtype, terms=1):
    """assert_close kwargs for a result that is a sum of `terms` products of O(1) random values.

    The relative tolerance covers large outputs. Outputs near zero need an absolute one: the
    rounding error of a dot product summed term by term grows like eps * terms (the partial sums
    are O(sqrt(terms)) and each of the `terms` additions rounds), whatever the final value, so
    the base atol is scaled linearly beyond 10 terms. For K = 300 in float32 that is 3e-4,
    about 10x the typical difference between two summation orders.
    """
    rtol, atol = _BASE_TOL[dtype]
    return dict(rtol=rtol, atol=atol * max(1.0, terms / 10.0))


def tf32_round(t):
    """float32 -> the nearest tf32 value (10 mantissa bits, ties away from zero), as float32: what
    cvt.rna.tf32.f32 gives the tensor cores. For finite values only."""
    bits = t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (bits + 0x1000) & 0xFFFFE000
    rounded = torch.where(rounded >= 2**31, rounded - 2**32, rounded)
    return rounded.to(torch.int32).view(torch.float32).reshape(t.shape)


def assert_bitwise_equal(actual, expected, msg=""):
    """Same shape, dtype and bits (so -0.0 != 0.0 and NaN == NaN of the same payload)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, msg
    if actual.dtype.is_floating_point:
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
        assert torch.equal(actual.contiguous().view(view), expected.contiguous().view(view)), msg
    else:
        assert torch.equal(actual, expected), msg


@contextlib.contextmanager
def num_threads(n):
    """Runs the block with n intra-op threads (at::parallel_for), then restores the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ memory layouts

LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced", "strided"]


def layouts(ndim):
    """The names of LAYOUTS a tensor of `ndim` dimensions can be made in (for 1 dimension "strided"
    is "sliced", so only "sliced" is listed)."""
    out = ["contiguous"]
    if ndim >= 1:
        out.append("sliced")
    if ndim >= 2:
        out += ["transposed", "strided"]
    if ndim == 4:
        out.append("channels_last")
    return out


def make_layout(t, layout):
    """A new tensor (a leaf, not requiring grad) with the shape, dtype, device and values of `t` in
    memory layout `layout`, one of LAYOUTS:

        contiguous     standard strides
        channels_last  NHWC strides (4-D only)
        transposed     the last two dimensions of a contiguous tensor swapped (a transposed view)
        sliced         a view at an offset into a bigger buffer: every other index of every dimension
                       but the last, which is shifted by one (stride 1); 1-D: every other element,
                       from the second
        strided        every other index of every dimension, from the second: no dimension has
                       stride 1, the last one included

    The buffer's elements outside a view are NaN (0 for an integral dtype): a kernel that reads them
    instead of following the strides gives NaN."""
    t = t.detach()
    if layout == "contiguous":
        return t.clone(memory_format=torch.contiguous_format)
    if layout == "channels_last":
        return t.clone(memory_format=torch.channels_last)
    if layout == "transposed":
        return t.transpose(-1, -2).clone(memory_format=torch.contiguous_format).transpose(-1, -2)
    if layout not in ("sliced", "strided") or t.dim() == 0:
        raise ValueError(f"no layout {layout!r} for a {t.dim()}-D tensor; known: {LAYOUTS}")
    if layout == "sliced" and t.dim() > 1:
        size = [2 * s for s in t.shape[:-1]] + [t.shape[-1] + 1]
        index = (slice(None, None, 2),) * (t.dim() - 1) + (slice(1, None),)
    else:
        size = [2 * s for s in t.shape]
        index = (slice(1, None, 2),) * t.dim()
    fill = math.nan if t.dtype.is_floating_point else 0
    view = torch.full(size, fill, dtype=t.dtype, device=t.device)[index]
    assert view.shape == t.shape, (layout, view.shape, t.shape)
    return view.copy_(t)


def conv_terms(weight_shape):
    """Products summed per conv output value: C_in / groups * kH * kW."""
    return math.prod(weight_shape[1:])


# ------------------------------------------------------------------ property-test (fuzz) report

# One entry per fuzz test run, appended by tests/test_fuzz.py: dicts with the property name, the
# backend, the examples passed, failed and rejected, the seed mode and the seconds the test took.
FUZZ_STATS = []


def pytest_terminal_summary(terminalreporter):
    """Ends the session's output with one line per property test, e.g.
    "fuzz: conv2d [cpu] 25 examples in 3.1 s (4 rejected, derandomized)"."""
    if not FUZZ_STATS:
        return
    terminalreporter.section("fuzz")
    for s in FUZZ_STATS:
        rejected = f"{s['rejected']} rejected, " if s["rejected"] else ""
        failed = f"{s['failed']} failing, " if s.get("failed") else ""
        terminalreporter.write_line(f"fuzz: {s['property']} [{s['backend']}] {s['examples']} examples in "
                                    f"{s['seconds']:.1f} s ({failed}{rejected}{s['seed']})")
    total = sum(s["seconds"] for s in FUZZ_STATS)
    terminalreporter.write_line(f"fuzz: {sum(s['examples'] for s in FUZZ_STATS)} examples in {total:.1f} s in all")
