"""bench/train.py end to end on tiny synthetic data: the side-by-side run, its outputs, and DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FASTCONV_PATH

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bench" / "train.py"


def _run(args, cwd, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([FASTCONV_PATH, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_train_both_impls_side_by_side(tmp_path):
    out = tmp_path / "run"
    stdout = _run([TRAIN, "--train-size", "1024", "--test-size", "256", "--epochs", "2", "--batch-size", "64",
                   "--out", out], cwd=tmp_path)
    assert "SYNTHETIC" in stdout  # never mistaken for MNIST
    assert "epoch   1 | fastconv:" in stdout and "| torch:" in stdout and "time fastconv/torch" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["synthetic"] and "SYNTHETIC" in results["dataset"]
    assert set(results["runs"]) == {"fastconv", "torch"}
    for impl, run in results["runs"].items():
        assert [e["epoch"] for e in run["epochs"]] == [1, 2]
        assert len(run["step_losses"]) == 2 * (1024 // 64)
        for e in run["epochs"]:
            assert 0.0 <= e["test_acc"] <= 1.0 and e["seconds"] > 0 and e["images_per_s"] > 0
        # it learns: the second epoch's training loss is below the first steps' (chance is ln 10 = 2.30)
        assert run["epochs"][-1]["train_loss"] < 0.9 * sum(run["step_losses"][:4]) / 4
    # same initial weights and the same first batch: the first losses agree up to the dropout masks
    first = {impl: run["step_losses"][0] for impl, run in results["runs"].items()}
    assert first["fastconv"] == pytest.approx(first["torch"], rel=0.1)
    assert results["time_ratio_fastconv_over_torch"] > 0
    png = (out / "training.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_train_ddp_two_gloo_processes_keep_identical_replicas(tmp_path):
    stdout = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN,
                   "--train-size", "512", "--test-size", "128", "--epochs", "1", "--batch-size", "32",
                   "--check-replicas", "--no-plot", "--out", tmp_path / "ddp"], cwd=tmp_path)
    assert "batch 32 x 2" in stdout
    assert "replicas of the fastconv net across 2 processes: identical" in stdout
    assert "replicas of the torch net across 2 processes: identical" in stdout
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2
    # each process ran its half of the data: 512 / 2 / 32 steps
    assert len(results["runs"]["fastconv"]["step_losses"]) == 8
