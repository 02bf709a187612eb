"""Switches of fastconv's CUDA kernels, in the manner of ``torch.backends``.

    fastconv.backends.allow_tf32 = True          # float32 conv / linear on tensor cores, as tf32
    with fastconv.backends.flags(allow_tf32=True):
        ...

``allow_tf32`` (off by default) lets the CUDA convolution and linear kernels (and the simulator's
run of them) round float32 operands to tf32 -- 10 mantissa bits, nearest with ties away from zero --
and multiply them on tensor cores with float32 accumulation: faster on a GPU, with relative errors
near 2^-11 per product instead of 2^-24. float16 and bfloat16 always use tensor cores; float64
never does. The CPU kernels always compute float32 in float32.

``cpu_cache()`` reports the cache that the CPU ops take their output memory from, and
``empty_cpu_cache()`` unmaps its free blocks. A freed output of 64 KiB or more is kept mapped, and
the next request of about its size reuses it without page faults; at most ``FASTCONV_CPU_CACHE_MB``
(environment, read at the first allocation; default an eighth of the RAM, at most 2048) of free
blocks are kept, and 0 turns the cache off.
"""
import contextlib
import sys
import types

import torch

__all__ = ["allow_tf32", "flags", "cpu_cache", "empty_cpu_cache"]


def _get() -> bool:
    return bool(torch.ops.fastconv._allow_tf32())


def _set(enabled) -> bool:
    if not isinstance(enabled, bool):
        raise TypeError(f"fastconv.backends.allow_tf32 must be a bool, got {type(enabled).__name__}")
    return bool(torch.ops.fastconv._set_allow_tf32(enabled))


@contextlib.contextmanager
def flags(allow_tf32: bool):
    """Sets ``allow_tf32`` for the body of a ``with`` block, then restores what it was."""
    previous = _set(allow_tf32)
    try:
        yield
    finally:
        _set(previous)


def cpu_cache() -> dict:
    """The CPU output cache's state: bytes and blocks free (kept for reuse) and in use, requests served
    from it (``hits``) and by mapping new memory (``misses``), and ``cap_bytes``."""
    keys = ("free_bytes", "free_blocks", "used_bytes", "used_blocks", "hits", "misses", "cap_bytes")
    return dict(zip(keys, torch.ops.fastconv._cpu_cache_stats()))


def empty_cpu_cache() -> None:
    """Unmaps the free blocks of the CPU output cache (blocks in use stay)."""
    torch.ops.fastconv._cpu_cache_empty()


class _BackendsModule(types.ModuleType):
    @property
    def allow_tf32(self) -> bool:
        return _get()

    @allow_tf32.setter
    def allow_tf32(self, enabled) -> None:
        _set(enabled)


sys.modules[__name__].__class__ = _BackendsModule
