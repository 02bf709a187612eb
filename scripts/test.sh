#!/usr/bin/env bash
# The test command: sets up .venv (scripts/setup.sh), then runs the whole pytest suite against the
# installed fastconv. Extra arguments go to pytest (e.g. -k conv2d).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
echo "== pytest"
# pytest (not `python -m pytest`) keeps the source folder off sys.path, so the installed build is tested
"$VENV/bin/pytest" -q tests "$@"
