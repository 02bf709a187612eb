"""The examples and the grid search run end to end (at tiny sizes) and write what they say.

Scripts run as subprocesses outside the source tree (cwd = tmp_path), with the folder of the
fastconv under test on PYTHONPATH, so they import the same build as the rest of the suite.
Everything runs on one thread: these runs are tiny, and two threads that have to wait for each
other stall badly when other processes hold the cores (a 2 s run took 25 s on a busy machine).
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib  # noqa: F401  (the examples draw with matplotlib; scripts/setup.sh installs it)
import pytest
from PIL import Image  # Pillow comes with matplotlib

from conftest import FASTCONV_PATH, num_threads

REPO = Path(__file__).resolve().parents[1]


def run_script(script, *args, cwd, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = FASTCONV_PATH
    env["OMP_NUM_THREADS"] = "1"  # torch's intra-op threads
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(autouse=True)
def _one_thread():
    with num_threads(1):
        yield


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_png(path, min_size):
    """A readable PNG of at least min_size pixels a side that is not a blank page."""
    assert path.is_file(), f"{path} was not written"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min(im.size) >= min_size and max(im.size) <= 5000, im.size
        gray = im.convert("L")
        lo, hi = gray.getextrema()
        assert hi - lo > 100, "the image is (nearly) uniform"
        return im.size


def test_filters_writes_a_grid_of_checked_results(tmp_path):
    proc = run_script("examples/filters.py", "--out", "figs/filters.png", cwd=tmp_path)
    assert "each matches torch.nn.functional.conv2d" in proc.stdout
    w, h = check_png(tmp_path / "figs" / "filters.png", 600)
    assert 0.5 < w / h < 2


def test_filters_reads_an_image_file(tmp_path):
    import numpy as np
    import torch

    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[10:30, 20:40] = (255, 128, 0)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    filters = load_module("examples/filters.py", "filters_example")
    image = filters.load_image(tmp_path / "in.png", max_size=30)  # grayscale, shrunk to 30 px a side
    assert image.shape == (20, 30) and image.dtype == np.float32 and 0 <= image.min() < image.max() <= 1
    results = filters.apply_filters(torch.from_numpy(image))  # checks each against torch itself
    assert [title for title, _, _ in results] == [title for title, _, _ in filters.FILTERS]
    identity = dict((title, out) for title, _, out in results)["Identity"]
    assert torch.equal(identity, torch.from_numpy(image))
    assert all(out.shape == (20, 30) for _, _, out in results)


def test_feature_maps_trains_and_draws(tmp_path):
    fm = load_module("examples/feature_maps.py", "feature_maps_example")
    ckpt = tmp_path / "net.pt"
    args = ["--train-size", "300", "--test-size", "50", "--no-progress", "--out", str(tmp_path / "maps"),
            "--checkpoint", str(ckpt)]
    assert fm.main(args) == 0
    assert ckpt.is_file()
    check_png(tmp_path / "maps" / "filters.png", 150)
    check_png(tmp_path / "maps" / "feature_maps.png", 400)
    (tmp_path / "maps" / "filters.png").unlink()
    assert fm.main(args + ["--layers", "1"]) == 0  # the second run loads the checkpoint instead of training
    check_png(tmp_path / "maps" / "filters.png", 150)


def test_transfer_demo_result_structure():
    transfer = load_module("examples/transfer.py", "transfer_example")
    r = transfer.transfer_demo(source_size=200, target_size=50, test_size=50, source_epochs=1, head_epochs=2,
                               batch_size=32, seed=0)
    assert set(r) == {"config", "source", "target", "results", "frozen_unchanged"}
    assert r["config"]["target_size"] == 50
    assert r["source"]["classes"] == [0, 1, 2, 3, 4] and r["target"]["classes"] == [5, 6, 7, 8, 9]
    assert r["source"]["train_images"] == 200 and r["target"]["train_images"] == 50
    assert r["target"]["test_images"] == 50
    assert set(r["results"]) == {"transferred", "random_features", "scratch"}
    head = transfer.FEATURES * 5 + 5
    assert r["results"]["transferred"]["trainable_parameters"] == head  # only the new head trains
    assert r["results"]["random_features"]["trainable_parameters"] == head
    assert r["results"]["scratch"]["trainable_parameters"] > head
    for res in [r["source"], *r["results"].values()]:
        assert 0.0 <= res["test_accuracy"] <= 1.0
    assert r["frozen_unchanged"] is True
    json.dumps(r)  # the script writes it as JSON


def test_grid_quick_writes_json_and_heatmap(tmp_path):
    proc = run_script("bench/grid.py", "--quick", "--no-progress", "--out", "grid", cwd=tmp_path)
    assert "| optimizer | learning rate | batch size | test accuracy |" in proc.stdout
    result = json.loads((tmp_path / "grid" / "grid.json").read_text())
    s = result["settings"]
    assert s["quick"] is True
    records = result["results"]
    assert len(records) == len(s["lrs"]) * len(s["batch_sizes"]) * len(s["optimizers"]) == 8
    assert {(r["optimizer"], r["lr"], r["batch_size"]) for r in records} == \
        {(o, lr, b) for o in s["optimizers"] for lr in s["lrs"] for b in s["batch_sizes"]}
    for r in records:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["steps"] == s["steps"]
    assert result["best"]["test_accuracy"] == max(r["test_accuracy"] for r in records)
    check_png(tmp_path / "grid" / "grid.png", 200)


def test_grid_runs_are_deterministic():
    grid = load_module("bench/grid.py", "grid_bench")
    data = grid.load_digits(200, 50, seed=3)
    runs = [grid.run_config(data, opt, 0.01, 16, steps=5, seed=3) for opt in ("adam", "adam", "sgd")]
    for key in ("test_accuracy", "final_loss", "steps_done"):
        assert runs[0][key] == runs[1][key], key
    assert runs[0]["final_loss"] != runs[2]["final_loss"]
