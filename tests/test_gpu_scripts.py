"""The workloads of scripts/gpu.sh, run here on small shapes so that they cannot rot where no GPU is:
scripts/sanitize_cuda_ops.py (compute-sanitizer's workload) and bench/cuda_graph_step.py (a training
step captured in a CUDA graph; on the CPU its dry run), on the cpu backend (and cuda where there is a
GPU; the simulator's runs of the same kernels are the op tests'), and gpu.sh's syntax."""
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.backends("cpu", "cuda")


def _load(relative):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sanitize_cuda_ops_passes_every_case(backend, capsys):
    sanitize = _load("scripts/sanitize_cuda_ops.py")
    assert sanitize.main(["--device", backend.device.type]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    cases = len(sanitize.cases()) * len(sanitize.LAYOUTS) * len(sanitize.PRECISIONS)
    assert f"{cases} of {cases} cases passed" in out, out
    assert "FAIL" not in out and "skip" not in out, out


def test_sanitize_cuda_ops_reports_a_wrong_result(backend, monkeypatch, capsys):
    """A case whose result disagrees with torch's is reported and fails the run (the others still run)."""
    sanitize = _load("scripts/sanitize_cuda_ops.py")
    relu = next(c for c in sanitize.cases() if c.name == "relu")
    relu.theirs = lambda x, _: torch.relu(x) + 1
    monkeypatch.setattr(sanitize, "cases", lambda: [relu])
    assert sanitize.main(["--device", backend.device.type, "--precisions", "float32", "--layouts", "offset"]) == 1
    out = capsys.readouterr().out
    assert "FAIL relu [float32, offset]: AssertionError: output:" in out, out
    assert "0 of 1 cases passed" in out, out


def test_cuda_graph_step_agrees_with_eager_steps(backend, tmp_path):
    graph_step = _load("bench/cuda_graph_step.py")
    path = tmp_path / "graph.json"
    args = ["--device", backend.device.type, "--steps", "3", "--batch-size", "4", "--size", "12", "--json", str(path)]
    assert graph_step.main(args) == 0
    result = json.loads(path.read_text())
    assert result["status"] == "ok" and result["params_match"], result
    assert result["capture"] == ("ok" if backend.device.type == "cuda" else "skipped"), result
    assert result["eager_ms_per_step"] > 0 and result["replay_ms_per_step"] > 0


@pytest.mark.backends("cpu")
def test_cuda_graph_step_reports_a_failed_capture(backend, tmp_path, monkeypatch, capsys):
    """What a host read inside the captured step looks like: the exception in the JSON and the log, exit 1."""
    graph_step = _load("bench/cuda_graph_step.py")

    def fail(trainer, device, result):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(graph_step, "capture", fail)
    path = tmp_path / "graph.json"
    assert graph_step.main(["--device", "cpu", "--steps", "2", "--batch-size", "2", "--size", "8",
                            "--json", str(path)]) == 1
    result = json.loads(path.read_text())
    assert result["status"] == "failed" and result["capture"] == "failed", result
    assert result["error"] == "RuntimeError: operation not permitted when stream is capturing", result
    assert "capture failed: RuntimeError: operation not permitted" in capsys.readouterr().err


def test_gpu_sh_parses():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu.sh")], check=True, timeout=30)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(REPO / "scripts" / "gpu.sh")], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stdout
