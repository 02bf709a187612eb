"""Build fastconv._C: hand-written CPU kernels registered as torch custom ops.

Install with `pip install --no-build-isolation .` so the build uses the torch already installed
(build isolation would fetch the newest torch, several GB, into a throwaway environment).
"""
import os
import sys

try:  # before anything else, so that a Python without torch gets this one sentence
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    sys.exit("fastconv needs PyTorch to build: install torch first (pip install torch), then run "
             "`pip install --no-build-isolation .` so the build sees it.")

from setuptools import setup  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def sanitize_requested():
    # FASTCONV_SANITIZE=1 builds the CPU kernels with AddressSanitizer + UndefinedBehaviorSanitizer
    # for scripts/sanitize.sh (slow, debug-only; the process must run with libasan preloaded).
    value = os.environ.get("FASTCONV_SANITIZE", "0")
    if value not in ("0", "1", ""):
        sys.exit(f"FASTCONV_SANITIZE must be 1 (sanitized build) or 0 (normal build), got {value!r}.")
    return value == "1"


SANITIZE = sanitize_requested()


def sources():
    files = ["csrc/registration.cpp"]
    files += sorted(os.path.join("csrc/cpu", f) for f in os.listdir(os.path.join(ROOT, "csrc/cpu"))
                    if f.endswith(".cpp"))
    if SANITIZE:
        # a deliberately out-of-bounds kernel: the positive control of scripts/sanitize.sh
        files.append("csrc/sanitize/planted_bug.cpp")
    return files


def arch_flags():
    # The extension is built from source on the machine that runs it, so by default it targets
    # that machine's instruction set (AVX-512 where present). FASTCONV_CPU_ARCH overrides it,
    # e.g. FASTCONV_CPU_ARCH=x86-64-v3 for a build that must run on older CPUs.
    arch = os.environ.get("FASTCONV_CPU_ARCH", "native")
    return [f"-march={arch}"] if arch else []


def write_build_info():
    info = {
        "torch_version": torch.__version__,
        "cpu_arch": os.environ.get("FASTCONV_CPU_ARCH", "native"),
        "cuda_archs": [],
        "simulator": False,
        "sanitize": SANITIZE,
    }
    with open(os.path.join(ROOT, "fastconv", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time; do not edit.\n")
        for key, value in info.items():
            f.write(f"{key} = {value!r}\n")


write_build_info()

cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas",
             *arch_flags()]
link_flags = ["-fopenmp"]

if SANITIZE:
    cxx_flags = [f for f in cxx_flags if f != "-O3"] + [
        "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1",
        # Python's sysconfig CFLAGS (which come first on the command line) include -fwrapv, which
        # defines signed overflow and so silently turns UBSan's signed-integer-overflow check off.
        "-fno-wrapv",
    ]
    link_flags += ["-fsanitize=address,undefined"]

setup(
    ext_modules=[
        CppExtension(
            "fastconv._C",
            sources(),
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
