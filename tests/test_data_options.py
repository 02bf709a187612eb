"""The data options of the scripts: --dataset, --data-dir, --download and --mirror of bench/train.py,
bench/grid.py, examples/feature_maps.py and examples/transfer.py reach fastconv.data.load (replaced
here by a stand-in that records its arguments and returns a few synthetic digits), and a dataset
that is not there ends a script with the loader's message, not a traceback. In process, tiny runs.
"""
import importlib.util
from pathlib import Path

import pytest

from fastconv import data

from conftest import num_threads

REPO = Path(__file__).resolve().parents[1]
MIRRORS = ["http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/"]  # never contacted: load is replaced


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def calls(monkeypatch):
    recorded, real = [], data.load

    def load(name, data_dir=None, *, download=False, mirrors=None, train_size=None, test_size=None, seed=0,
             verify="warn"):
        recorded.append(dict(name=name, data_dir=data_dir, download=download, mirrors=mirrors))
        return real("synthetic", train_size=train_size or 400, test_size=test_size or 100, seed=seed)

    monkeypatch.setattr(data, "load", load)
    with num_threads(1):
        yield recorded


def _options(tmp_path):
    folder = tmp_path / "datasets"
    return folder, ["--dataset", "mnist", "--data-dir", str(folder), "--download",
                    "--mirror", MIRRORS[0], "--mirror", MIRRORS[1]]


def test_train_passes_the_data_options(tmp_path, calls):
    folder, opts = _options(tmp_path)
    train = load_module("bench/train.py", "train_bench")
    assert train.main(opts + ["--train-size", "128", "--test-size", "64", "--epochs", "1", "--batch-size", "64",
                              "--impl", "fastconv", "--no-plot", "--out", str(tmp_path / "run")]) == 0
    assert calls == [dict(name="mnist", data_dir=str(folder), download=True, mirrors=MIRRORS)]


def test_grid_passes_the_data_options(tmp_path, calls):
    folder, opts = _options(tmp_path)
    grid = load_module("bench/grid.py", "grid_bench")
    assert grid.main(opts + ["--quick", "--lrs", "0.01", "--batch-sizes", "16", "--optimizers", "adam",
                             "--no-progress", "--out", str(tmp_path / "grid")]) == 0
    assert calls == [dict(name="mnist", data_dir=str(folder), download=True, mirrors=MIRRORS)]


def test_feature_maps_passes_the_data_options(tmp_path, calls):
    folder, opts = _options(tmp_path)
    fm = load_module("examples/feature_maps.py", "feature_maps_example")
    assert fm.main(opts + ["--train-size", "200", "--test-size", "50", "--no-progress",
                           "--out", str(tmp_path / "maps")]) == 0
    assert calls == [dict(name="mnist", data_dir=str(folder), download=True, mirrors=MIRRORS)]


def test_transfer_passes_the_data_options(tmp_path, calls):
    folder, opts = _options(tmp_path)
    transfer = load_module("examples/transfer.py", "transfer_example")
    assert transfer.main(opts + ["--source-size", "60", "--target-size", "20", "--test-size", "20",
                                 "--source-epochs", "1", "--head-epochs", "1", "--no-scratch", "--no-progress",
                                 "--out", str(tmp_path / "t.json")]) == 0
    assert calls == [dict(name="mnist", data_dir=str(folder), download=True, mirrors=MIRRORS)]


@pytest.mark.parametrize("script, extra", [
    ("bench/train.py", ["--epochs", "1"]),
    ("bench/grid.py", ["--quick"]),
    ("examples/feature_maps.py", []),
    ("examples/transfer.py", []),
])
def test_missing_dataset_ends_with_the_loaders_message(tmp_path, script, extra):
    module = load_module(script, Path(script).stem + "_script")
    with pytest.raises(SystemExit) as info:
        module.main(["--dataset", "mnist", "--data-dir", str(tmp_path), *extra])
    message = str(info.value.code)
    assert message.startswith(f"{script}: MNIST not found") and "--download" in message
