"""Errors that fastconv's CUDA kernels find in the data, raised without a host synchronisation.

A target outside ``[0, C)`` (cross_entropy and its backward) or a max-pool index outside its input
plane (max_pool2d's backward) is found by a kernel, which records it in its device's error record (host
memory the GPU writes directly) and writes NaN into the outputs it affects: the row's loss, lse and
gradient, the plane's input gradient. No op waits for its kernels: the error is raised, with the
message and exception type of the CPU kernels (``IndexError`` naming the value), by the first fastconv
op that starts on that device after the failing kernel has finished, or by ``check_errors()``. The
simulator's ops raise their own kernels' errors, as the CPU kernels do, unless
``fastconv.simulate(defer_errors=True)`` asks for the GPU's behaviour.
"""
import torch

from . import _build_info

__all__ = ["check_errors"]


def check_errors(device=None):
    """Raises the error a fastconv kernel recorded on ``device``, and clears it; does nothing when there
    is none. On a GPU it first synchronises the device's current stream, so every kernel enqueued there
    has finished. ``device``: a CUDA device, or ``"cpu"`` for the simulator; by default the simulator and,
    where fastconv has CUDA kernels and CUDA is initialised, the current CUDA device."""
    if device is not None:
        devices = [torch.device(device)]
    else:
        devices = [torch.device("cpu")]
        if _build_info.cuda_archs and torch.cuda.is_initialized():
            devices.append(torch.device("cuda", torch.cuda.current_device()))
    for d in devices:
        if d.type not in ("cpu", "cuda"):
            raise ValueError(f"fastconv.check_errors: fastconv's kernels record errors on cuda devices and in the "
                             f"simulator (cpu), not on {d}")
        if d.type == "cpu" and not _build_info.simulator:
            continue  # no simulator built (FASTCONV_SIM=0): the CPU kernels raise at once, nothing is recorded
        torch.ops.fastconv._check_errors(torch.empty(0, device=d))
