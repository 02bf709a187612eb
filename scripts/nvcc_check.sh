#!/usr/bin/env bash
# The CUDA compile check: compiles every CUDA kernel file (csrc/cuda/*.cu) with nvcc for sm_80 (A100)
# and sm_90 (H100/H200) and prints, per kernel and architecture, the registers, shared memory, stack
# frame and spill bytes that ptxas reports (-Xptxas -v). Fails on any compile error or warning and
# on any spill. Where nvcc is absent it says so and exits 0 (nothing can be checked there).
# The .cu files include no torch headers, so this needs nvcc alone, not a CUDA build of torch.
# With cuobjdump and nvdisasm at hand (toolkit, or their pip packages) it also reads the GEMM kernels'
# machine code (scripts/sass_check.py): per build the counts of HMMA, LDGSTS (cp.async), LDSM
# (ldmatrix), LDG.128 and MUFU.RCP (integer division), failing when a tensor-core GEMM lacks HMMA,
# LDGSTS or LDSM, or a convolution GEMM divides more than a few times. Extra arguments are passed to
# nvcc. Logs go to $FASTCONV_NVCC_LOGS (default: a temporary folder).
# With FASTCONV_CUDA_TORCH_INCLUDE set to the include folder of a CUDA build of torch (unzip a CUDA
# torch wheel's torch/include anywhere: no GPU and no install needed), it also compiles the CUDA
# glue (csrc/cuda/glue.cpp) against those headers and checks that every launcher it calls is
# defined by the nvcc objects.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "nvcc_check: nvcc not found: the CUDA kernels were NOT compile-checked on this machine"
  exit 0
fi
PY="${PYTHON:-python3}"
LOGS="${FASTCONV_NVCC_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/fastconv-nvcc.XXXXXX")}"
mkdir -p "$LOGS"
echo "== nvcc_check: $("$NVCC" --version | tail -n 1) (logs: $LOGS)"
start=$(date +%s)
# the flags torch's CUDAExtension adds to every nvcc command (no implicit 16-bit conversions), and setup.py's
TORCH_NVCC_FLAGS=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
                  -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr)
pids=()
for cu in "$ROOT"/csrc/cuda/*.cu; do
  for arch in 80 90; do
    name="$(basename "$cu" .cu).sm_$arch"
    ( "$NVCC" -std=c++17 -O3 -gencode "arch=compute_$arch,code=sm_$arch" -I"$ROOT/csrc" -Xptxas -v \
        "${TORCH_NVCC_FLAGS[@]}" -Werror all-warnings -c "$cu" -o "$LOGS/$name.o" "$@" > "$LOGS/$name.log" 2>&1 \
      || echo "FAILED" >> "$LOGS/$name.log" ) &
    pids+=($!)
    # two compiles at a time: one per core
    if [ "${#pids[@]}" -ge "$(nproc)" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
done
wait
# the table of registers / shared memory / stack / spills per kernel; fails on a compile error, a warning or a spill
"$PY" "$ROOT/scripts/ptxas_table.py" "$LOGS"
# The machine-code check: every tensor-core GEMM kernel's SASS must contain HMMA, LDGSTS and LDSM
# (and the SIMT kernels no HMMA); no convolution GEMM may divide in its main loop. Needs cuobjdump +
# nvdisasm: from the CUDA toolkit, or the pip packages nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm
# (found in $PYTHON's site-packages).
TOOLS="$(dirname "$NVCC"):$("$PY" "$ROOT/scripts/nvidia_tool_dirs.py" 2>/dev/null || true)"
CUOBJDUMP="$(PATH="$TOOLS:$PATH" command -v cuobjdump || true)"
if [ -n "$CUOBJDUMP" ] && PATH="$TOOLS:$PATH" command -v nvdisasm > /dev/null; then
  echo "== nvcc_check: the GEMM kernels' machine code ($CUOBJDUMP)"
  for obj in "$LOGS"/*.o; do
    [ "$(basename "$obj")" = glue_cuda.o ] && continue
    PATH="$TOOLS:$PATH" "$CUOBJDUMP" -sass "$obj" > "${obj%.o}.sass"
  done
  "$PY" "$ROOT/scripts/sass_check.py" "$LOGS"
else
  echo "nvcc_check: no cuobjdump + nvdisasm found (CUDA toolkit, or pip install nvidia-cuda-cuobjdump"
  echo "            nvidia-cuda-nvdisasm): the GEMM kernels' machine code was NOT checked"
fi
if [ -n "${FASTCONV_CUDA_TORCH_INCLUDE:-}" ]; then
  I="$FASTCONV_CUDA_TORCH_INCLUDE"
  CUDA_INC="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}/include"
  [ -e "$CUDA_INC/cuda_runtime_api.h" ] || CUDA_INC=/usr/local/cuda/include
  PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  echo "== nvcc_check: the CUDA glue against $I"
  "${CXX:-c++}" -std=c++20 -O1 -fPIC -Wall -Werror -c "$ROOT/csrc/cuda/glue.cpp" -I"$ROOT/csrc" -I"$I" \
    -I"$I/torch/csrc/api/include" -I"$CUDA_INC" -I"$PY_INC" -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H \
    -o "$LOGS/glue_cuda.o"
  # the launchers it calls (its other fastconv symbols, allow_tf32 say, are the rest of the library's)
  missing="$(comm -23 <(nm -C "$LOGS/glue_cuda.o" | grep ' U fastconv::cuda::kernels::' | sed 's/.* U //' | sort -u) \
                     <(nm -C --defined-only "$LOGS"/*.sm_80.o | grep -oE 'fastconv::cuda::kernels::[a-z_0-9]+\(.*\)' | sort -u))"
  if [ -n "$missing" ]; then
    echo "nvcc_check: the glue calls launchers that no .cu defines:"
    echo "$missing"
    exit 1
  fi
  echo "nvcc_check: the CUDA glue compiles and every launcher it calls is defined"
fi
echo "nvcc_check: OK in $(( $(date +%s) - start )) s"
