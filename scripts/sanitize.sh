#!/usr/bin/env bash
# The sanitizer step: builds fastconv's CPU kernels with AddressSanitizer + UndefinedBehaviorSanitizer
# (FASTCONV_SANITIZE=1 in setup.py) from a temporary copy of the source tree, runs the op tests
# against that build, then checks that the sanitizer really is on: the deliberately wrong op
# fastconv::_planted_oob_write (csrc/sanitize/planted_bug.cpp, compiled only into this build) must
# be reported as a heap-buffer-overflow. Fails if the tests fail, if any sanitizer report appears
# during them, or if the planted bug is NOT reported.
#
# Uses the venv of scripts/setup.sh ($FASTCONV_VENV, default .venv; created if missing). The
# source tree itself is never built in: the copy lives under $TMPDIR and is removed afterwards
# (kept, with its logs, when the step fails). Extra arguments go to pytest (e.g. -k relu).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASTCONV_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  source "$ROOT/scripts/setup.sh"
fi
PY="$VENV/bin/python"
start=$(date +%s)

# The tests run are chosen by pytest markers (registered in tests/conftest.py). First, on the cpu
# backend, the op tests (marker `op`: every op's CPU kernels, forward and backward: autograd,
# gradcheck, opcheck, layouts, thread counts) and the modules marked `sanitize`: the argument checks
# that stand between bad input and the kernels (test_errors), whole networks (test_nn), and the
# planted op's presence (test_sanitize). About 2 minutes under ASan.
MARKS="op or sanitize"
# Then the simulator under ASan + UBSan: its runtime (fiber switches annotated for ASan), the glue of
# the CUDA kernels, and the kernels' launches, through the modules marked `sanitize_sim` on the sim
# backend: its own tests (test_simulator) and two op files (test_relu, test_cross_entropy). (The
# kernels themselves keep the simulator's own race and memory checks: gcc cannot combine ASan with
# the instrumentation those use.)
SIM_MARKS="sanitize_sim"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastconv-sanitize.XXXXXX")"
status=failed
finish() {
  if [ "$status" = ok ]; then rm -rf "$WORK"; else echo "sanitize: work folder kept for inspection: $WORK"; fi
}
trap finish EXIT
fail() {
  echo "sanitize: FAILED: $*"
  exit 1
}

echo "== sanitize: copying the source tree to $WORK/src"
mkdir -p "$WORK/src" "$WORK/run"
# the sources only: no build outputs of the tree (in-place extension, build info, caches)
tar -C "$ROOT" -cf - --exclude='*.so' --exclude=__pycache__ --exclude=fastconv/_build_info.py \
  setup.py pyproject.toml README.md csrc fastconv tests | tar -C "$WORK/src" -xf -

echo "== sanitize: building the extension with -fsanitize=address,undefined (log: build.log)"
build_start=$(date +%s)
if ! ( cd "$WORK/src" && FASTCONV_SANITIZE=1 "$PY" setup.py build_ext --inplace ) > "$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log"
  fail "the sanitized build did not compile"
fi
build_s=$(( $(date +%s) - build_start ))
SO="$(ls "$WORK"/src/fastconv/_C*.so 2> /dev/null || true)"
[ -n "$SO" ] || fail "the build produced no fastconv/_C*.so"
grep -qx "sanitize = True" "$WORK/src/fastconv/_build_info.py" || fail "_build_info.py does not say sanitize = True"
ubsan_checks="$(nm -D --undefined-only "$SO" | grep -c ' __ubsan_handle_' || true)"
[ "$ubsan_checks" -gt 0 ] || fail "$SO calls no UBSan handler: -fsanitize=undefined was lost"
echo "   built in ${build_s} s; the extension calls $ubsan_checks kinds of UBSan check"

# The python executable is not instrumented, so the ASan runtime must be the first library loaded
# into the process (LD_PRELOAD), before torch's libraries; gcc links libubsan next to it, and it is
# preloaded too. Both come from the compiler that built the extension.
CXX_BIN="${CXX:-c++}"
preload=()
for lib in asan ubsan; do
  if readelf -d "$SO" | grep -q "NEEDED.*lib$lib\.so"; then
    path="$("$CXX_BIN" -print-file-name="lib$lib.so")"
    [ -e "$path" ] || fail "the extension needs lib$lib.so but $CXX_BIN does not know where it is"
    preload+=("$(readlink -f "$path")")
  fi
done
[ "${#preload[@]}" -gt 0 ] || fail "$SO does not link the ASan runtime: the sanitizer flags were lost"
LD_PRELOAD_VALUE="$(IFS=:; echo "${preload[*]}")"

# detect_leaks=0: CPython and torch keep memory alive at exit on purpose (interned objects, the
# dispatcher's tables), so LeakSanitizer would report them on every run; overflows, use-after-free
# and double free are what this step is about.
run_sanitized() {
  env LD_PRELOAD="$LD_PRELOAD_VALUE" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:symbolize=1:print_summary=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:print_summary=1" \
    PYTHONPATH="$WORK/src" PYTHONDONTWRITEBYTECODE=1 "$@"
}

cd "$WORK/run"  # outside any source tree: `import fastconv` finds only the sanitized copy
imported="$(run_sanitized "$PY" -c 'import fastconv, fastconv._build_info as b; assert b.sanitize; print(fastconv.__file__)')" \
  || fail "the sanitized build does not import"
[ "$imported" = "$WORK/src/fastconv/__init__.py" ] || fail "imported $imported instead of the sanitized copy"

echo "== sanitize: pytest -m '$MARKS' (cpu), then -m '$SIM_MARKS' (sim) against the sanitized build"
# --capture=sys: a sanitizer writes its report to file descriptor 2 and then ends the process;
# pytest's default fd capture would swallow that report with the process.
tests_start=$(date +%s)
set +e
FASTCONV_TEST_BACKENDS=cpu run_sanitized "$VENV/bin/pytest" -q -p no:cacheprovider --capture=sys \
  -m "$MARKS" "$WORK/src/tests" "$@" 2>&1 | tee "$WORK/pytest.log"
pytest_rc=${PIPESTATUS[0]}
if [ "$pytest_rc" -eq 0 ]; then
  FASTCONV_TEST_BACKENDS=sim run_sanitized "$VENV/bin/pytest" -q -p no:cacheprovider --capture=sys \
    -m "$SIM_MARKS" "$WORK/src/tests" "$@" 2>&1 | tee -a "$WORK/pytest.log"
  pytest_rc=${PIPESTATUS[0]}
fi
set -e
tests_s=$(( $(date +%s) - tests_start ))
if grep -qE "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" \
    "$WORK/pytest.log"; then
  fail "a sanitizer reported an error in the test subset (report above; log $WORK/pytest.log)"
fi
[ "$pytest_rc" -eq 0 ] || fail "pytest exited with status $pytest_rc under the sanitizers"
passed="$(grep -oE '[0-9]+ passed' "$WORK/pytest.log" | paste -sd+ - | sed 's/ passed//g; s/$/ passed/' || true)"

echo "== sanitize: the planted out-of-bounds write must be reported"
set +e
run_sanitized "$PY" -c 'import torch, fastconv
torch.ops.fastconv._planted_oob_write(torch.randn(10000))
print("planted op returned")' > "$WORK/planted.log" 2>&1
planted_rc=$?
set -e
report_ok=yes
grep -q "ERROR: AddressSanitizer: heap-buffer-overflow" "$WORK/planted.log" || report_ok=no
grep -q "WRITE of size" "$WORK/planted.log" || report_ok=no
# the report's stack, symbolized: a frame at a source line of the planted kernel's file, and a
# frame naming the kernel (frame #0 is its loop body, a lambda, inside at::parallel_for)
frame="$(grep -E '^ +#[0-9]+ .*csrc/sanitize/planted_bug\.cpp:[0-9]+' "$WORK/planted.log" | head -n 1 || true)"
[ -n "$frame" ] || report_ok=no
grep -qE '^ +#[0-9]+ .*planted_oob_write' "$WORK/planted.log" || report_ok=no
if [ "$report_ok" != yes ] || [ "$planted_rc" -eq 0 ]; then
  cat "$WORK/planted.log"
  fail "the planted heap-buffer-overflow was not reported (exit status $planted_rc): the sanitizer is not working"
fi
{ grep -E "ERROR: AddressSanitizer|WRITE of size|is located|^ +#[0-2] " "$WORK/planted.log" || true; } | head -n 8 \
  | cut -c 1-160 | sed 's/^/   | /' || true
location="$(grep -oE 'planted_bug\.cpp:[0-9]+' <<< "$frame")"

status=ok
echo "sanitize: OK in $(( $(date +%s) - start )) s (build ${build_s} s, tests ${tests_s} s): ${passed:-0 passed}" \
  "under ASan+UBSan with no sanitizer report; the planted heap-buffer-overflow was reported at $location"
