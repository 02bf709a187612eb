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


def sources():
    files = ["csrc/registration.cpp"]
    files += sorted(os.path.join("csrc/cpu", f) for f in os.listdir(os.path.join(ROOT, "csrc/cpu"))
                    if f.endswith(".cpp"))
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
    }
    with open(os.path.join(ROOT, "fastconv", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time; do not edit.\n")
        for key, value in info.items():
            f.write(f"{key} = {value!r}\n")


write_build_info()

cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas",
             *arch_flags()]

setup(
    ext_modules=[
        CppExtension(
            "fastconv._C",
            sources(),
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
