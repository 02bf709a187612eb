#!/usr/bin/env bash
# The main job: sets up .venv (scripts/setup.sh), then benchmarks fastconv against torch on the
# CPU: every op on the layer shapes of the MNIST and CIFAR-10 reference CNNs, and a whole training
# step of each net, at batch 128. Extra arguments go to bench/ops.py (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
mkdir -p bench/out
"$VENV/bin/python" bench/ops.py --json "bench/out/ops-$(date +%Y%m%d-%H%M%S).json" "$@"
