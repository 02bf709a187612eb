#!/usr/bin/env bash
# fastconv on a GPU machine in one command of under ten minutes (an H200 with 16 cores in mind). Each
# step runs under its own time budget, printed first:
#   preflight   torch, its CUDA, the GPU, nvcc, ninja and compute-sanitizer
#   build       python3 setup.py build_ext --inplace for sm_90 (TORCH_CUDA_ARCH_LIST=9.0), MAX_JOBS=$(nproc),
#               without the simulator (FASTCONV_SIM=0; FASTCONV_GPU_SIM=1 builds it too); the steps
#               below import this build (PYTHONPATH=the source folder)
#   op-tests    the op tests on the cuda backend (FASTCONV_TEST_BACKENDS=cuda, -m op)
#   bench-*     bench/ops.py --device cuda in float32, tf32 (--tf32) and float16 (--dtype float16)
#   cuda-graph  bench/cuda_graph_step.py: a training step captured in a CUDA graph and replayed
#   memcheck, racecheck
#               compute-sanitizer over scripts/sanitize_cuda_ops.py (every op with a CUDA kernel on
#               misaligned and sliced inputs, float32 / tf32 / float16 / bfloat16, forward and backward)
#
#   bash scripts/gpu.sh [OUTDIR]        # PYTHON=python3 by default: the python whose torch has CUDA
#
# Outputs go to $OUT when it is set, else to OUTDIR, else to bench/out/gpu-TIME/: gpu.log (every step's
# output, in order), summary.json (each step's status, seconds, budget and exit code; rewritten after
# every step, so a run cut short still has one), ops-float32.json, ops-tf32.json, ops-float16.json and
# cuda-graph.json; bench/ops.py's bar charts too, except under $OUT (a lent GPU machine's output folder,
# which gives back at most 8 files). A failed step never stops the run: every step is recorded, those
# that need the build are skipped when it failed, and the exit status is 1 if any step failed, timed
# out or was skipped. compute-sanitizer refusing the device (as it does under some sandboxed runtimes)
# is recorded as "unsupported", not as a failure.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PY="${PYTHON:-python3}"
OUTDIR="${OUT:-${1:-$ROOT/bench/out/gpu-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
LOG="$OUTDIR/gpu.log"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/fastconv-gpu.XXXXXX")"
PLOTS="${OUT:+$SCRATCH}"
PLOTS="${PLOTS:-$OUTDIR}"
STEPS_TSV="$SCRATCH/steps.tsv"
: > "$LOG"
: > "$STEPS_TSV"
cd "$ROOT" || exit 1

# Budgets in seconds: a step is stopped at its budget (or at the deadline, their sum from the start).
# EXPECTED_S is what a whole run is estimated to take on the H200 machine.
STEPS=(preflight build op-tests bench-float32 bench-tf32 bench-float16 cuda-graph memcheck racecheck)
declare -A BUDGET=([preflight]=20 [build]=180 [op-tests]=90 [bench-float32]=45 [bench-tf32]=35
                   [bench-float16]=35 [cuda-graph]=35 [memcheck]=45 [racecheck]=65)
EXPECTED_S=360
TOTAL_S=0
for s in "${STEPS[@]}"; do TOTAL_S=$((TOTAL_S + BUDGET[$s])); done
START=$(date +%s)
DEADLINE=$((START + TOTAL_S))

say() { echo "$@" | tee -a "$LOG"; }

say "== gpu.sh: expected about $((EXPECTED_S / 60)) min $((EXPECTED_S % 60)) s, at most $((TOTAL_S / 60)) min" \
    "$((TOTAL_S % 60)) s (each step stopped at its budget); outputs in $OUTDIR"
for s in "${STEPS[@]}"; do say "   $(printf '%-14s %4d s' "$s" "${BUDGET[$s]}")"; done

# summary.json from the steps recorded so far (steps.tsv: one line per step)
write_summary() {
  "$PY" - "$STEPS_TSV" "$OUTDIR/summary.json" "$(($(date +%s) - START))" <<'PYEOF'
import json, sys
tsv, path, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3])
steps = []
for line in open(tsv):
    name, status, seconds, budget, rc, note = line.rstrip("\n").split("\t")
    steps.append({"step": name, "status": status, "seconds": int(seconds), "budget_s": int(budget),
                  "exit_code": None if rc == "" else int(rc), "note": note})
summary = {"elapsed_s": elapsed, "steps": steps}
for status in ("failed", "timed out", "skipped", "unsupported"):
    summary[status.replace(" ", "_")] = [s["step"] for s in steps if s["status"] == status]
summary["ok"] = not (summary["failed"] or summary["timed_out"] or summary["skipped"])
with open(path, "w") as f:
    json.dump(summary, f, indent=1)
PYEOF
}

record() {  # name status seconds exit-code note
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${BUDGET[$1]}" "$4" "$5" >> "$STEPS_TSV"
  write_summary
}

skip() {  # name reason
  say "== [$1] skipped: $2"
  record "$1" skipped 0 "" "$2"
}

# run_step NAME COMMAND...: the command under the step's budget (cut to what is left before the
# deadline), its output appended to gpu.log and its last lines shown here; records the step's outcome
# and returns 0 if it passed.
run_step() {
  local name=$1; shift
  local budget=${BUDGET[$name]} left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt "$budget" ]; then budget=$left; fi
  if [ "$budget" -lt 5 ]; then skip "$name" "out of time"; return 1; fi
  say "== [$name] (budget $budget s) $*"
  local steplog="$SCRATCH/$name.log" t0 rc status note=""
  t0=$(date +%s)
  # into gpu.log as it comes (a run cut short keeps it), and into the step's own log for the checks below
  timeout --kill-after=5 "$budget" "$@" 2>&1 | tee -a "$LOG" > "$steplog"
  rc=${PIPESTATUS[0]}
  tail -n 12 "$steplog"
  if [ "$rc" -eq 0 ]; then
    status=passed
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="timed out"; note="stopped at its budget of $budget s"
  elif grep -q "Device not supported" "$steplog"; then
    status=unsupported; note="compute-sanitizer does not support this device or runtime"
  else
    status=failed
  fi
  local seconds=$(($(date +%s) - t0))
  say "== [$name] $status in $seconds s (exit code $rc)${note:+: $note}"
  record "$name" "$status" "$seconds" "$rc" "$note"
  [ "$status" = passed ]
}

# The steps that are more than one command, run by run_step through `bash -c NAME` (hence exported,
# and called where static analysis cannot see it).
# shellcheck disable=SC2317
preflight() {
  "$PY" - <<'PYEOF' || return 1
import shutil, subprocess, sys
import torch
from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available
if not torch.version.cuda:
    sys.exit(f"this torch ({torch.__version__}) has no CUDA; run gpu.sh where a CUDA build of torch is installed")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no GPU here")
cap = torch.cuda.get_device_capability()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name()}, sm_{cap[0]}{cap[1]}")
nvcc = shutil.which("nvcc", path=f"{CUDA_HOME}/bin") if CUDA_HOME else shutil.which("nvcc")
print("nvcc:", subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
      if nvcc else "NOT FOUND (the build will have no CUDA kernels)")
print("ninja:", "yes" if is_ninja_available() else "NOT FOUND (the sources compile one at a time: slow)")
print("compute-sanitizer:", shutil.which("compute-sanitizer") or "NOT FOUND")
if cap != (9, 0):
    print(f"note: the build is for sm_90 only; TORCH_CUDA_ARCH_LIST={cap[0]}.{cap[1]} builds for this GPU")
PYEOF
  echo "kernel $(uname -r), $(nproc) cores"
}

# shellcheck disable=SC2317
build() {
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    FASTCONV_SIM="${FASTCONV_GPU_SIM:-0}" "$PY" setup.py build_ext --inplace && "$PY" -m fastconv
}

# shellcheck disable=SC2317
op_tests() {
  local modules parallel=() limit=()
  mapfile -t modules < <(grep -l "pytest.mark.op" tests/test_*.py)
  # where installed: pytest-xdist spreads the tests over a few processes sharing the GPU, and
  # pytest-timeout stops a test that hangs. -v: a line per test as it ends, so a run stopped at its
  # budget still shows which tests failed
  if "$PY" -c "import xdist" 2> /dev/null; then parallel=(-n 4); fi
  if "$PY" -c "import pytest_timeout" 2> /dev/null; then limit=(--timeout=60); fi
  FASTCONV_TEST_BACKENDS=cuda "$PY" -m pytest -v -p no:cacheprovider -m op -rfE "${parallel[@]}" "${limit[@]}" \
    "${modules[@]}"
}
export -f preflight build op_tests

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
run_step preflight bash -c preflight
if run_step build bash -c build; then
  run_step op-tests bash -c op_tests
  BENCH=(bench/ops.py --device cuda --reps 10 --warmup 2)
  run_step bench-float32 "$PY" "${BENCH[@]}" --json "$OUTDIR/ops-float32.json" --png "$PLOTS/ops-float32.png"
  run_step bench-tf32 "$PY" "${BENCH[@]}" --tf32 --json "$OUTDIR/ops-tf32.json" --png "$PLOTS/ops-tf32.png"
  run_step bench-float16 "$PY" "${BENCH[@]}" --dtype float16 --json "$OUTDIR/ops-float16.json" \
    --png "$PLOTS/ops-float16.png"
  run_step cuda-graph "$PY" bench/cuda_graph_step.py --device cuda --json "$OUTDIR/cuda-graph.json"
  if command -v compute-sanitizer > /dev/null; then
    # each tensor its own cudaMalloc, so that an access past a tensor's end is outside every allocation
    SANITIZER=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --error-exitcode 1 --print-limit 20)
    run_step memcheck "${SANITIZER[@]}" --tool memcheck "$PY" scripts/sanitize_cuda_ops.py --device cuda
    run_step racecheck "${SANITIZER[@]}" --tool racecheck "$PY" scripts/sanitize_cuda_ops.py --device cuda
  else
    skip memcheck "compute-sanitizer not found"
    skip racecheck "compute-sanitizer not found"
  fi
else
  for s in "${STEPS[@]:2}"; do skip "$s" "the build did not pass"; done
fi

write_summary
"$PY" - "$OUTDIR/summary.json" <<'PYEOF' | tee -a "$LOG"
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"== gpu.sh summary ({summary['elapsed_s']} s)")
for s in summary["steps"]:
    rc = "" if s["exit_code"] is None else f"exit {s['exit_code']}"
    print(f"   {s['step']:14s} {s['status']:12s} {s['seconds']:4d} s of {s['budget_s']:3d}  {rc:8s} {s['note']}")
print("all steps passed" if summary["ok"] else
      "not passed: " + ", ".join(summary["failed"] + summary["timed_out"] + summary["skipped"]))
sys.exit(0 if summary["ok"] else 1)
PYEOF
status=${PIPESTATUS[0]}
rm -rf "$SCRATCH"
say "results: $OUTDIR"
exit "$status"
