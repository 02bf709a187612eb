"""The installed package: `python -m fastconv`, the torch-version guard, and setup.py without torch."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastconv
from conftest import FASTCONV_DIR, FASTCONV_PATH
from fastconv import _build_info

REPO = Path(__file__).resolve().parents[1]

# every op of csrc/registration.cpp
OPS = {"conv2d", "conv2d_pool", "conv2d_grad_input", "conv2d_grad_weight", "bias_grad", "linear", "linear_grad_input",
       "linear_grad_weight", "relu", "relu_backward", "max_pool2d", "max_pool2d_backward", "cross_entropy",
       "cross_entropy_backward", "dropout"}


def _run(args, cwd, pythonpath, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_python_m_fastconv_prints_build_info(tmp_path):
    proc = _run([sys.executable, "-m", "fastconv"], cwd=tmp_path, pythonpath=[FASTCONV_PATH])
    assert proc.returncode == 0, proc.stderr
    rows = {line[:22].strip(): line[22:].strip() for line in proc.stdout.splitlines()}
    assert rows["torch (built against)"] == _build_info.torch_version == torch.__version__
    assert rows["torch (running)"] == torch.__version__
    listed = set(rows["ops"].split(", "))
    assert OPS <= listed, OPS - listed
    assert rows["simulator"] == fastconv.build_info()["simulator"]


def test_build_info_says_whether_the_simulator_is_built():
    """The normal build has the simulator and records it. Where the tests run with FASTCONV_SIM=0 in the
    environment (the build made with it, as scripts/gpu.sh does), the build must say it has none, have none of
    the simulator's ops, and refuse fastconv.simulate() with one clear error."""
    built = os.environ.get("FASTCONV_SIM", "1") == "1"
    assert _build_info.simulator is built
    line = fastconv.build_info()["simulator"]
    sim_ops = {op for op in fastconv.build_info()["ops"] if op.startswith("_sim_")}
    if built:
        assert line.startswith("built"), line
        assert sim_ops == {"_sim_configure", "_sim_defer_errors", "_sim_selftest", "_sim_stats"}
    else:
        assert line == "not built (FASTCONV_SIM=0)"
        assert not sim_ops
        with pytest.raises(RuntimeError, match=r"^fastconv.simulate: this build of fastconv has no simulator"):
            fastconv.simulate()


def test_import_with_mismatched_torch_says_how_to_rebuild(tmp_path):
    pkg = tmp_path / "fastconv"
    shutil.copytree(FASTCONV_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert list(pkg.glob("_C*.so")), "the built extension was not copied"
    info = pkg / "_build_info.py"
    text = info.read_text()
    patched = re.sub(r"^torch_version = .*$", "torch_version = '0.0.0'", text, flags=re.M)
    assert patched != text
    info.write_text(patched)

    proc = _run([sys.executable, "-c", "import fastconv"], cwd=tmp_path, pythonpath=[tmp_path])
    assert proc.returncode != 0
    assert str(pkg / "__init__.py") in proc.stderr  # the copy was imported, not the repo's package
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastconv was built against torch 0.0.0 but torch "
                           f"{torch.__version__} is imported"), last
    assert "rebuild it for this torch with `pip install --no-build-isolation --force-reinstall --no-deps .`" in last


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """The python of a fresh venv with nothing installed: no torch, no pip, no setuptools."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    assert _run([python, "-c", "import torch"], cwd=venv, pythonpath=None).returncode != 0
    return python


def _assert_one_clear_sentence(proc):
    assert proc.returncode != 0
    out = (proc.stdout + proc.stderr).strip()
    assert "Traceback" not in out, out
    assert len(out.splitlines()) == 1, out
    assert out.startswith("fastconv needs PyTorch to build: install torch first"), out
    assert "pip install --no-build-isolation ." in out, out


def test_setup_py_without_torch_stops_with_one_sentence(bare_python, tmp_path):
    """A python that has setuptools but no torch (setuptools alone put on its path)."""
    only_setuptools = tmp_path / "site"
    only_setuptools.mkdir()
    for name in ("setuptools", "_distutils_hack", "pkg_resources"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            os.symlink(list(spec.submodule_search_locations)[0], only_setuptools / name)
    assert _run([bare_python, "-c", "import setuptools"], cwd=tmp_path, pythonpath=[only_setuptools]).returncode == 0
    proc = _run([bare_python, REPO / "setup.py", "--name"], cwd=tmp_path, pythonpath=[only_setuptools])
    _assert_one_clear_sentence(proc)


def test_setup_py_in_bare_venv_stops_with_one_sentence(bare_python, tmp_path):
    proc = _run([bare_python, REPO / "setup.py", "--name"], cwd=tmp_path, pythonpath=None)
    _assert_one_clear_sentence(proc)
