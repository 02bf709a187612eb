"""Run fastconv's CUDA kernels without a GPU, in its SIMT simulator.

    with fastconv.simulate():                      # CPU tensors, CUDA kernels
        y = fastconv.functional.relu(torch.randn(8))

Inside the context every fastconv op (convolution, linear, ReLU, max-pooling, softmax +
cross-entropy, dropout, forward and backward) runs its CUDA kernel -- the same ``csrc/cuda/*.cu``
source nvcc compiles for GPUs -- on the CPU, one fiber per CUDA thread, with CUDA's semantics, and
is checked while it runs. Results equal a GPU's up to the order of floating-point rounding.

What the simulator checks and what it does not model: README.md, section "Running CUDA without a GPU".

A detected bug stops the op with a ``RuntimeError`` naming the kernel, block, thread and source
line. ``race_check`` and ``memcheck`` turn the shared-memory race check and the global-memory bounds
check on or off (both on by default where the kernels were built with the access hooks). ``order``
chooses in which order a block's threads run between meeting points: "forward", "reverse" or
"random" (seeded by ``seed``); correct kernels give bitwise-identical results in all three.

An error a kernel finds in the data (a bad target or max-pool index, fastconv.errors) is raised by the
op whose kernel found it, as the CPU kernels do. ``defer_errors=True`` leaves it, as on a GPU, to the
next fastconv op or ``fastconv.check_errors()``, and the op returns its outputs (NaN where affected).

``FASTCONV_SIMULATE=1`` turns the simulator on for a whole process (``FASTCONV_SIM_ORDER`` and
``FASTCONV_SIM_SEED`` set its order and seed). ``FASTCONV_SIM_THREADS`` caps the worker threads
that run blocks (default: one per core).

A build made with ``FASTCONV_SIM=0`` has no simulator: there ``simulate()``, ``stats()`` and
``FASTCONV_SIMULATE=1`` raise ``RuntimeError`` (``NOT_BUILT``), and every op runs its CPU kernel.
"""
import contextlib
import dataclasses
import os
import threading

import torch

from . import _build_info

ORDERS = ("forward", "reverse", "random")

NOT_BUILT = ("this build of fastconv has no simulator (it was built with FASTCONV_SIM=0); rebuild it with the "
             "simulator, the default (FASTCONV_SIM unset or 1): `pip install --no-build-isolation --force-reinstall "
             "--no-deps .` from the fastconv source folder")


def _require_simulator(what):
    if not _build_info.simulator:
        raise RuntimeError(f"{what}: {NOT_BUILT}")


@dataclasses.dataclass(frozen=True)
class Settings:
    enabled: bool = False
    order: str = "forward"
    seed: int = 0
    race_check: bool = True
    memcheck: bool = True
    defer_errors: bool = False


_lock = threading.Lock()
_current = Settings()


def _apply(settings):
    global _current
    if settings.order not in ORDERS:
        raise ValueError(f"fastconv.simulate: order must be one of {ORDERS}, got {settings.order!r}")
    torch.ops.fastconv._sim_configure(settings.enabled, ORDERS.index(settings.order), int(settings.seed),
                                      bool(settings.race_check), bool(settings.memcheck))
    torch.ops.fastconv._sim_defer_errors(bool(settings.defer_errors))
    _current = settings


def settings() -> Settings:
    """The simulator's current settings (enabled, order, seed, race_check, memcheck, defer_errors)."""
    return _current


def is_enabled() -> bool:
    return _current.enabled


def stats() -> dict:
    """Kernel launches, blocks and threads the simulator has run in this process."""
    _require_simulator("fastconv.simulator.stats")
    launches, blocks, threads = torch.ops.fastconv._sim_stats()
    return {"launches": launches, "blocks": blocks, "threads": threads}


def simulate(order=None, seed=None, race_check=None, memcheck=None, defer_errors=None, enabled=True):
    """Runs fastconv's CUDA kernels in the simulator inside the block (see the module docstring).
    Arguments left as None keep their current value; the previous settings come back on exit."""
    _require_simulator("fastconv.simulate")  # when called, not only when the block is entered
    return _simulate(order, seed, race_check, memcheck, defer_errors, enabled)


@contextlib.contextmanager
def _simulate(order, seed, race_check, memcheck, defer_errors, enabled):
    with _lock:
        before = _current
        changes = {k: v for k, v in dict(order=order, seed=seed, race_check=race_check, memcheck=memcheck,
                                         defer_errors=defer_errors).items() if v is not None}
        _apply(dataclasses.replace(before, enabled=enabled, **changes))
    try:
        yield settings()
    finally:
        with _lock:
            _apply(before)


def _from_environment():
    order = os.environ.get("FASTCONV_SIM_ORDER", "forward")
    seed = os.environ.get("FASTCONV_SIM_SEED", "0")
    enabled = os.environ.get("FASTCONV_SIMULATE", "0")
    if enabled not in ("0", "1", ""):
        raise ValueError(f"FASTCONV_SIMULATE must be 1 or 0, got {enabled!r}")
    if not seed.lstrip("-").isdigit():
        raise ValueError(f"FASTCONV_SIM_SEED must be an integer, got {seed!r}")
    if not _build_info.simulator:
        if enabled == "1":
            raise RuntimeError(f"FASTCONV_SIMULATE=1: {NOT_BUILT}")
        return
    hooks = _build_info.sim_hooks
    _apply(Settings(enabled=enabled == "1", order=order, seed=int(seed), race_check=hooks, memcheck=hooks))


_from_environment()
