"""Build fastconv._C: hand-written CPU and CUDA kernels registered as torch custom ops.

Install with `pip install --no-build-isolation .` so the build uses the torch already installed
(build isolation would fetch the newest torch, several GB, into a throwaway environment).

Three sets of sources go into the one extension:
  - the CPU kernels and the op schemas (csrc/registration.cpp, csrc/cpu/*.cpp);
  - the SIMT simulator, built everywhere unless FASTCONV_SIM=0: its runtime and the simulator build
    of the CUDA glue (csrc/sim/runtime.cpp, csrc/sim/glue.cpp), plus every CUDA kernel file
    (csrc/cuda/*.cu and csrc/sim/selftest.cu) compiled by the C++ compiler as C++ with the
    simulator's access hooks (-fsanitize=thread instrumentation resolved by csrc/sim/runtime.cpp,
    not by ThreadSanitizer);
  - the CUDA kernels for GPUs, when torch was built with CUDA and nvcc is found: csrc/cuda/*.cu by
    nvcc for TORCH_CUDA_ARCH_LIST (default 8.0;9.0) and csrc/cuda/glue.cpp.
"""
import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys

try:  # before anything else, so that a Python without torch gets this one sentence
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
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


def env_flag(name, default):
    value = os.environ.get(name, default)
    if value not in ("0", "1"):
        sys.exit(f"{name} must be 1 or 0, got {value!r}.")
    return value == "1"


# FASTCONV_SIM=0 builds no simulator at all (a GPU machine's quick build: no g++ build of every
# kernel file). The CPU registrations then call the CPU kernels only (FASTCONV_NO_SIMULATOR in
# csrc/sim/sim.h) and fastconv.simulate() raises.
SIM = env_flag("FASTCONV_SIM", "1")
# FASTCONV_SIM_HOOKS=0 compiles the simulator's kernels without the access hooks: faster, but the
# race checker and the memory check are then unavailable.
SIM_HOOKS = SIM and env_flag("FASTCONV_SIM_HOOKS", "1")


def cuda_wanted():
    """CUDA kernels are built when torch has CUDA and nvcc is there (never decided by whether a GPU
    is visible: build machines often have none). FASTCONV_CUDA=0 skips them."""
    if not env_flag("FASTCONV_CUDA", "1") or not torch.version.cuda:
        return False
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    return bool(nvcc and os.path.exists(nvcc))


CUDA = cuda_wanted()
if CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    # torch's own detection asks the visible GPU and fails without one
    os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"


def sources():
    files = ["csrc/registration.cpp", "csrc/autograd.cpp"]
    if SIM:
        files += ["csrc/sim/runtime.cpp", "csrc/sim/glue.cpp"]
    files += sorted(os.path.join("csrc/cpu", f) for f in os.listdir(os.path.join(ROOT, "csrc/cpu"))
                    if f.endswith(".cpp"))
    if CUDA:
        files += ["csrc/cuda/glue.cpp"] + sorted(glob.glob("csrc/cuda/*.cu", root_dir=ROOT))
    if SANITIZE:
        # a deliberately out-of-bounds kernel: the positive control of scripts/sanitize.sh
        files.append("csrc/sanitize/planted_bug.cpp")
    return files


def sim_kernel_sources():
    """The CUDA kernel files that the simulator runs, compiled as C++."""
    return sorted(glob.glob("csrc/cuda/*.cu", root_dir=ROOT)) + ["csrc/sim/selftest.cu"]


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
        "cuda_archs": os.environ["TORCH_CUDA_ARCH_LIST"].split(";") if CUDA else [],
        "simulator": SIM,
        "sim_hooks": SIM_HOOKS,
        "sanitize": SANITIZE,
    }
    with open(os.path.join(ROOT, "fastconv", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time; do not edit.\n")
        for key, value in info.items():
            f.write(f"{key} = {value!r}\n")


write_build_info()

cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas",
             f"-DFASTCONV_SIM_HOOKS={int(SIM_HOOKS)}", *arch_flags()]
if not SIM:
    cxx_flags.append("-DFASTCONV_NO_SIMULATOR")
link_flags = ["-fopenmp"]

if SANITIZE:
    cxx_flags = [f for f in cxx_flags if f != "-O3"] + [
        "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1",
        # Python's sysconfig CFLAGS (which come first on the command line) include -fwrapv, which
        # defines signed overflow and so silently turns UBSan's signed-integer-overflow check off.
        "-fno-wrapv",
    ]
    link_flags += ["-fsanitize=address,undefined"]

# The simulator's kernel objects: plain C++ (no torch headers), so compiled directly. -g1 keeps line
# tables for the simulator's reports (addr2line). With the hooks, gcc instruments every memory access
# (-fsanitize=thread) but ThreadSanitizer is never linked: csrc/sim/runtime.cpp defines the hooks.
SIM_KERNEL_FLAGS = ["-std=c++17", "-O2", "-g1", "-fPIC", "-Wall", "-fno-math-errno", f"-I{os.path.join(ROOT, 'csrc')}",
                    *arch_flags()]
if SIM_HOOKS:
    SIM_KERNEL_FLAGS += ["-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0"]


class Build(BuildExtension):
    """BuildExtension, plus the simulator's kernel objects compiled first and linked in (where the
    simulator is built)."""

    def build_extension(self, ext):
        if SIM:
            ext.extra_objects = list(ext.extra_objects or []) + self.sim_kernel_objects()
        super().build_extension(ext)

    def sim_kernel_objects(self):
        out_dir = os.path.join(os.path.abspath(self.build_temp), "sim_kernels")
        os.makedirs(out_dir, exist_ok=True)
        headers = [os.path.join(ROOT, "csrc", "philox.h")] + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.*")) + \
            glob.glob(os.path.join(ROOT, "csrc", "sim", "*.h"))
        newest_header = max(os.path.getmtime(h) for h in headers)
        cxx = os.environ.get("CXX", "c++")
        flags_tag = " ".join(SIM_KERNEL_FLAGS)

        def compile_one(src):
            obj = os.path.join(out_dir, src.replace("/", "_") + ".o")
            stamp = obj + ".flags"
            up_to_date = (os.path.exists(obj) and os.path.exists(stamp) and open(stamp).read() == flags_tag and
                          os.path.getmtime(obj) > max(newest_header, os.path.getmtime(os.path.join(ROOT, src))))
            if not up_to_date:
                cmd = [cxx, "-x", "c++", *SIM_KERNEL_FLAGS, "-c", os.path.join(ROOT, src), "-o", obj]
                print("[simulator] " + " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
                with open(stamp, "w") as f:
                    f.write(flags_tag)
            return obj

        jobs = max(1, min(len(sim_kernel_sources()), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(compile_one, sim_kernel_sources()))


Extension = CUDAExtension if CUDA else CppExtension
extra_compile_args = {"cxx": cxx_flags}
if CUDA:
    extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]

setup(
    ext_modules=[
        Extension(
            "fastconv._C",
            sources(),
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args=extra_compile_args,
            extra_link_args=link_flags,
        )
    ],
    cmdclass={"build_ext": Build.with_options(use_ninja=True)},
)
