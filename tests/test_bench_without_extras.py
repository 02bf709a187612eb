"""bench/train.py, bench/ops.py and bench/grid.py where matplotlib and tqdm are not installed, as in
an environment set up by "Installing into your own environment" (torch + fastconv only): each
finishes with exit status 0 and its JSON written, says in one line that the plot was skipped and
how to get it, and shows progress as plain lines (images/s, ETA). The examples that draw
(filters.py, feature_maps.py) do their work and skip the drawing the same way.

The scripts run as subprocesses whose interpreter cannot import matplotlib or tqdm: a
sitecustomize.py first on PYTHONPATH wraps the import system's finders so that they do not find
them, as for packages that are not installed. Tiny runs, one thread (a few seconds each).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FASTCONV_PATH

REPO = Path(__file__).resolve().parents[1]

SITECUSTOMIZE = '''\
import sys

_HIDDEN = ("matplotlib", "tqdm")


class _Hiding:
    """A finder of sys.meta_path that does not find matplotlib and tqdm (nor their submodules):
    importing them raises ModuleNotFoundError and importlib.util.find_spec gives None, as for
    packages that are not installed."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _HIDDEN:
            return None
        return self._finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hiding(f) for f in sys.meta_path]
'''

HINT = 'pip install "fastconv[bench]"'


@pytest.fixture
def run_bare(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join([str(shim), FASTCONV_PATH]), OMP_NUM_THREADS="1",
               FASTCONV_PROGRESS_INTERVAL="0")  # a progress line on every update: these runs take seconds

    def run(*args, timeout=120):
        proc = subprocess.run([sys.executable, *map(str, args)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout)
        return proc

    check = run("-c", "import tqdm")
    assert check.returncode != 0 and "No module named 'tqdm'" in check.stderr, "the shim does not hide tqdm"
    check = run("-c", "import matplotlib.pyplot")
    assert check.returncode != 0 and "No module named 'matplotlib" in check.stderr, "the shim does not hide matplotlib"
    return run


def _plot_skipped(stdout):
    lines = [line for line in stdout.splitlines() if "plot skipped" in line]
    assert len(lines) == 1 and HINT in lines[0], stdout
    assert "Traceback" not in stdout


def test_train_without_matplotlib_and_tqdm(tmp_path, run_bare):
    out = tmp_path / "run"
    proc = run_bare(REPO / "bench" / "train.py", "--train-size", "256", "--test-size", "128", "--epochs", "1",
                    "--batch-size", "64", "--threads", "1", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _plot_skipped(proc.stdout)
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"fastconv", "torch"}
    assert not (out / "training.png").exists()
    assert f"results: {out}/results.json\n" in proc.stdout
    # plain progress lines, one per batch here, with the rate and the time left
    for impl in ("fastconv", "torch"):
        assert f"epoch 1 {impl}: 64/256 img (25%), " in proc.stderr, proc.stderr[-2000:]
        assert f"epoch 1 {impl}: 256/256 img (100%), " in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("epoch 1 fastconv: 128/256"))
    assert " img/s, ETA " in line and ", loss " in line
    # the main job's last line: how to train on real MNIST
    assert "--dataset mnist --download" in proc.stdout.strip().splitlines()[-1]


def test_ops_without_matplotlib_and_tqdm(tmp_path, run_bare):
    proc = run_bare(REPO / "bench" / "ops.py", "--only", "relu", "--reps", "2", "--warmup", "1", "--no-steps",
                    "--batch-size", "8", "--threads", "1", "--json", tmp_path / "ops.json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _plot_skipped(proc.stdout)
    results = json.loads((tmp_path / "ops.json").read_text())
    assert {r["op"] for r in results["ops"]} == {"relu", "leaky_relu"}  # --only: names containing "relu"
    assert not (tmp_path / "ops.png").exists()
    assert "ops: 1/3 case (33%)" in proc.stderr and "ETA" in proc.stderr


def test_grid_without_matplotlib_and_tqdm(tmp_path, run_bare):
    proc = run_bare(REPO / "bench" / "grid.py", "--quick", "--lrs", "0.01", "--threads", "1", "--out", "grid")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _plot_skipped(proc.stdout)
    result = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert len(result["results"]) == 4
    assert not (tmp_path / "grid" / "grid.png").exists()
    assert "grid: 1/4 config (25%)" in proc.stderr and ", best " in proc.stderr


def test_examples_without_matplotlib(tmp_path, run_bare):
    proc = run_bare(REPO / "examples" / "filters.py", "--size", "64", "--out", "figs/filters.png")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _plot_skipped(proc.stdout)
    assert "each matches torch.nn.functional.conv2d" in proc.stdout and not (tmp_path / "figs").exists()
    proc = run_bare(REPO / "examples" / "feature_maps.py", "--train-size", "200", "--test-size", "50",
                    "--out", "maps")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _plot_skipped(proc.stdout)
    assert "test accuracy: " in proc.stdout and not (tmp_path / "maps").exists()
