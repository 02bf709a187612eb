"""Switches of fastconv's CUDA kernels, in the manner of ``torch.backends``.

    fastconv.backends.allow_tf32 = True          # float32 conv / linear on tensor cores, as tf32
    with fastconv.backends.flags(allow_tf32=True):
        ...

``allow_tf32`` (off by default) lets the CUDA convolution and linear kernels (and the simulator's
run of them) round float32 operands to tf32 -- 10 mantissa bits, nearest with ties away from zero --
and multiply them on tensor cores with float32 accumulation: faster on a GPU, with relative errors
near 2^-11 per product instead of 2^-24. float16 and bfloat16 always use tensor cores; float64
never does. The CPU kernels always compute float32 in float32.
"""
import contextlib
import sys
import types

import torch

__all__ = ["allow_tf32", "flags"]


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


class _BackendsModule(types.ModuleType):
    @property
    def allow_tf32(self) -> bool:
        return _get()

    @allow_tf32.setter
    def allow_tf32(self, enabled) -> None:
        _set(enabled)


sys.modules[__name__].__class__ = _BackendsModule
