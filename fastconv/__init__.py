"""fastconv: hand-written CPU and CUDA kernels for convolutional networks, as torch custom ops.

    import fastconv.functional as FF     # conv2d, conv1d, relu, max_pool2d, cross_entropy, linear, dropout
    import fastconv.nn as fnn            # Conv2d, Conv1d, ReLU, MaxPool2d, Linear, Dropout, CrossEntropyLoss
    with fastconv.simulate(): ...        # the CUDA kernels, run on the CPU by fastconv's SIMT simulator
    fastconv.check_errors()              # raises a bad target / index a CUDA kernel recorded (no sync per op)
    fastconv.backends.allow_tf32 = True  # float32 conv / linear on tensor cores (CUDA kernels; off by default)

The ops live under ``torch.ops.fastconv``; autograd and fake (shape) kernels are in ``fastconv.ops``.
"""
import torch

try:
    from . import _build_info
except ImportError as exc:  # running from a source tree that was never built
    raise ImportError(
        "fastconv's extension is not built. Build it with `pip install --no-build-isolation .` "
        "from the fastconv source folder."
    ) from exc

if torch.__version__ != _build_info.torch_version:
    raise ImportError(
        f"fastconv was built against torch {_build_info.torch_version} but torch {torch.__version__} is "
        "imported; rebuild it for this torch with `pip install --no-build-isolation --force-reinstall "
        "--no-deps .` from the fastconv source folder."
    )

try:
    from . import _C  # noqa: E402,F401  (registers the ops with torch's dispatcher)
except ImportError as exc:
    raise ImportError(
        f"fastconv's compiled extension is missing from {__path__[0]}: this is probably the source "
        "folder of a fastconv installed elsewhere. Run from another folder, or build in place with "
        "`python setup.py build_ext --inplace`."
    ) from exc
from . import ops  # noqa: E402,F401  (fake kernels and autograd)
from . import backends, functional, nn  # noqa: E402
from .convert import convert  # noqa: E402
from .errors import check_errors  # noqa: E402
from .simulator import simulate  # noqa: E402

__version__ = "0.1.0"


def build_info() -> dict:
    """What this installation of fastconv was built with."""
    return {
        "fastconv": __version__,
        "torch (built against)": _build_info.torch_version,
        "torch (running)": torch.__version__,
        "cpu kernels": f"yes (-march={_build_info.cpu_arch})",
        "cuda kernels": ", ".join(_build_info.cuda_archs) or "not built",
        "simulator": ("not built (FASTCONV_SIM=0)" if not _build_info.simulator
                      else "built, with the race checker and memory check" if _build_info.sim_hooks
                      else "built, without the access hooks (no race checker or memory check)"),
        "ops": sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                      if name.startswith("fastconv::")),
    }


__all__ = ["backends", "functional", "nn", "ops", "build_info", "check_errors", "convert", "simulate"]
