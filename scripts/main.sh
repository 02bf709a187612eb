#!/usr/bin/env bash
# The main job: sets up .venv (scripts/setup.sh), then trains a CNN with fastconv and with torch
# side by side (bench/train.py: with no arguments the MNIST net on the embedded SYNTHETIC digits,
# two epochs) and prints accuracy and time per epoch of both, writing results.json and
# training.png under bench/out/. Extra arguments go to bench/train.py (see --help), e.g.
#   bash scripts/main.sh --dataset mnist --data-dir ~/data --epochs 12
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
"$VENV/bin/python" bench/train.py "$@"
