#!/usr/bin/env bash
# For a machine with a GPU and a CUDA build of torch: builds fastconv in place with its CUDA kernels
# (nvcc, TORCH_CUDA_ARCH_LIST default "8.0;9.0"), runs the test suite on the cuda backend (the same
# tests and references as cpu and sim), then times every op that has a CUDA kernel against torch
# (cuDNN) with bench/ops.py --device cuda. One command:
#   bash scripts/gpu.sh                    # PYTHON=python3 by default: the python whose torch has CUDA
# FASTCONV_TEST_BACKENDS=cuda,sim,cpu widens the test run; extra arguments go to pytest.
# Logs and results: $FASTCONV_GPU_OUT (default bench/out/gpu-TIME/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUTDIR="${FASTCONV_GPU_OUT:-$ROOT/bench/out/gpu-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUTDIR"
cd "$ROOT"
"$PY" - <<'PYEOF'
import sys, torch
if not torch.version.cuda:
    sys.exit(f"gpu.sh: this torch ({torch.__version__}) has no CUDA; run it where a CUDA build of torch is installed")
if not torch.cuda.is_available():
    sys.exit("gpu.sh: torch sees no GPU here")
print(f"== gpu.sh: torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name()}")
PYEOF
echo "== building fastconv in place with its CUDA kernels (log: $OUTDIR/build.log)"
if ! FASTCONV_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py build_ext --inplace > "$OUTDIR/build.log" 2>&1; then
  tail -n 60 "$OUTDIR/build.log"
  echo "gpu.sh: the build failed"
  exit 1
fi
"$PY" -m fastconv
echo "== pytest on ${FASTCONV_TEST_BACKENDS:-cuda} (log: $OUTDIR/pytest.log)"
set +e
FASTCONV_TEST_BACKENDS="${FASTCONV_TEST_BACKENDS:-cuda}" "$PY" -m pytest -q -p no:cacheprovider tests "$@" 2>&1 \
  | tee "$OUTDIR/pytest.log"
rc=${PIPESTATUS[0]}
set -e
echo "== bench/ops.py --device cuda"
"$PY" bench/ops.py --device cuda --json "$OUTDIR/ops-cuda.json" 2>&1 | tee "$OUTDIR/bench.log"
echo "gpu.sh: pytest exit status $rc; results in $OUTDIR"
exit "$rc"
