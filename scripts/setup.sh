#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv with torch 2.13.0 (CPU) and the tools the build
# and tests need, then builds and installs fastconv into it. Sourced by scripts/main.sh and
# scripts/test.sh; safe to run again (an existing .venv is reused, fastconv is rebuilt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASTCONV_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "== installing torch 2.13.0 and the build, test and plotting tools"
"$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0 numpy pytest ninja "setuptools>=64" wheel \
  tqdm matplotlib hypothesis
echo "== building fastconv"
( cd "$ROOT" && "$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall . )
( cd "$VENV" && "$VENV/bin/python" -m fastconv )  # outside the source folder, so the installed build is what runs
