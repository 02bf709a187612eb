#!/usr/bin/env bash
# The CUDA compile check: compiles every CUDA kernel file (csrc/cuda/*.cu) with nvcc for sm_80 (A100)
# and sm_90 (H100/H200) and prints, per kernel and architecture, the registers, shared memory, stack
# frame and spill bytes that ptxas reports (-Xptxas -v). Fails on any compile error or warning and
# on any spill. Where nvcc is absent it says so and exits 0 (nothing can be checked there).
# The .cu files include no torch headers, so this needs nvcc alone, not a CUDA build of torch.
# With cuobjdump and nvdisasm at hand (toolkit, or their pip packages) it also checks that the
# tensor-core kernels contain HMMA instructions. Extra arguments are passed to nvcc. Logs go to $FASTCONV_NVCC_LOGS (default: a temporary folder).
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
"$PY" - "$LOGS" <<'PYEOF'
import glob, os, re, subprocess, sys

logs = sys.argv[1]
rows, failed = [], []
for path in sorted(glob.glob(os.path.join(logs, "*.log"))):
    name = os.path.basename(path)[:-4]
    text = open(path).read()
    if "FAILED" in text or "error" in text.lower() or "warning" in text.lower():
        failed.append(name)
        print(f"--- {name} ---\n{text}")
        continue
    kernel = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if m:
            kernel = dict(mangled=m.group(1), arch=m.group(2), file=name.split(".")[0])
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and kernel is not None:
            kernel.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers(.*)", line)
        if m and kernel is not None:
            smem = re.search(r"(\d+) bytes smem", m.group(2))
            kernel.update(regs=int(m.group(1)), smem=int(smem.group(1)) if smem else 0)
            rows.append(kernel)
            kernel = None
names = subprocess.run(["c++filt"], input="\n".join(r["mangled"] for r in rows), capture_output=True,
                       text=True).stdout.splitlines() if rows else []
for r, n in zip(rows, names):
    n = re.sub(r"^void ", "", n).replace("fastconv::cuda::kernels::(anonymous namespace)::", "")
    r["name"] = re.sub(r"\(.*\)$", "", n)
print(f"{'file':<14} {'arch':<6} {'regs':>4} {'smem B':>7} {'stack B':>7} {'spill st/ld B':>13}  kernel")
for r in sorted(rows, key=lambda r: (r["file"], r["name"], r["arch"])):
    print(f"{r['file']:<14} {r['arch']:<6} {r['regs']:>4} {r['smem']:>7} {r['stack']:>7} "
          f"{r['spill_st']:>6}/{r['spill_ld']:<6}  {r['name']}")
spills = [r for r in rows if r["spill_st"] or r["spill_ld"]]
print(f"nvcc_check: {len(rows)} kernel builds, {len(spills)} with spills, {len(failed)} files failed to compile")
if failed or spills or not rows:
    sys.exit(1)
PYEOF
# The tensor-core check: every tensor-core GEMM kernel's machine code must contain HMMA instructions
# (and the SIMT kernels none). Needs cuobjdump + nvdisasm: from the CUDA toolkit, or the pip packages
# nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm (found in $PYTHON's site-packages).
TOOLS="$(dirname "$NVCC"):$("$PY" - <<'PYEOF' 2>/dev/null || true
import glob, os, site, sys
dirs = site.getsitepackages() + [site.getusersitepackages()]
print(":".join(d for p in dirs for d in glob.glob(os.path.join(p, "nvidia", "cu*", "bin"))))
PYEOF
)"
CUOBJDUMP="$(PATH="$TOOLS:$PATH" command -v cuobjdump || true)"
if [ -n "$CUOBJDUMP" ] && PATH="$TOOLS:$PATH" command -v nvdisasm > /dev/null; then
  echo "== nvcc_check: tensor-core instructions ($CUOBJDUMP)"
  for obj in "$LOGS"/*.o; do
    [ "$(basename "$obj")" = glue_cuda.o ] && continue
    PATH="$TOOLS:$PATH" "$CUOBJDUMP" -sass "$obj" > "${obj%.o}.sass"
  done
  "$PY" - "$LOGS" <<'PYEOF'
import glob, os, re, subprocess, sys

rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.sass"))):
    arch = os.path.basename(path).split(".")[1]
    name, counts = None, {}
    for line in open(path):
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            counts[name] = 0
        elif name and re.search(r"\bHMMA\.", line):
            counts[name] += 1
    rows += [(arch, mangled, n) for mangled, n in counts.items()]
names = subprocess.run(["c++filt"], input="\n".join(r[1] for r in rows), capture_output=True, text=True).stdout.splitlines()
bad, tc = [], 0
for (arch, _, n), full in zip(rows, names):
    short = re.sub(r"\(.*\)$", "", full.replace("fastconv::cuda::kernels::", "").replace("(anonymous namespace)::", ""))
    short = re.sub(r"^void ", "", short)
    if "gemm_tc_kernel" in full:
        tc += 1
        print(f"{arch:<6} {n:>3} HMMA  {short}")
        if n == 0:
            bad.append(f"{arch} {short}: no HMMA")
    elif n:
        bad.append(f"{arch} {short}: {n} HMMA in a kernel that should have none")
print(f"nvcc_check: {tc} tensor-core kernel builds, {len(bad)} problems")
for b in bad:
    print("  " + b)
sys.exit(1 if bad or tc == 0 else 0)
PYEOF
else
  echo "nvcc_check: no cuobjdump + nvdisasm found (CUDA toolkit, or pip install nvidia-cuda-cuobjdump"
  echo "            nvidia-cuda-nvdisasm): the tensor-core kernels' HMMA instructions were NOT checked"
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
  missing="$(comm -23 <(nm -C "$LOGS/glue_cuda.o" | grep ' U fastconv::' | sed 's/.* U //' | sort -u) \
                     <(nm -C --defined-only "$LOGS"/*.sm_80.o | grep -oE 'fastconv::cuda::kernels::[a-z_0-9]+\(.*\)' | sort -u))"
  if [ -n "$missing" ]; then
    echo "nvcc_check: the glue calls launchers that no .cu defines:"
    echo "$missing"
    exit 1
  fi
  echo "nvcc_check: the CUDA glue compiles and every launcher it calls is defined"
fi
echo "nvcc_check: OK in $(( $(date +%s) - start )) s"
