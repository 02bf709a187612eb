"""The real MNIST files, where they are: ../shared/data/mnist from the repository's root (the four
IDX files, gzipped; their decompressed content is the published files, their .gz bytes are not).

* every layout the loader supports (copies, renamed, in a temporary folder) loads with no warning,
  with the known label counts; a corrupted copy warns (and is an error with verify="strict");
* a short real training run: the Keras MNIST net of fastconv.models on fastconv's kernels, one
  epoch over 10,000 training images (Adam, batch 128), reaches 95.68% on the 10,000 test images
  (95.4-96.1% over seeds 0-3, measured, with one thread or two); it must reach 94%;
* bench/train.py --dataset mnist --download fetches the files from a mirror on 127.0.0.1 (serving
  these files) and trains on them, fastconv and torch side by side.

Without the folder (a clone has no ../shared) every test here is skipped, saying why. One thread;
about 20 s on two cores (30 s while other processes hold them).
"""
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import fastconv
from fastconv import data
from fastconv.models import build
from fastconv.training import accuracy, fit

from conftest import FASTCONV_PATH, num_threads
from local_mirror import Mirror

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "mnist"
NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

pytestmark = pytest.mark.skipif(
    not all((REAL / (n + ".gz")).is_file() for n in NAMES),
    reason=f"real MNIST not found: {REAL} (../shared/data/mnist from the repository's root) does not hold "
           f"the four {NAMES[0]}.gz ... files; a clone of the project has no ../shared")


@pytest.fixture(autouse=True)
def _one_thread():
    # one thread: two that wait for each other stall badly when other processes hold the cores
    with num_threads(1):
        yield


def dotted(name):
    stem, kind, ext = name.rsplit("-", 2)
    return f"{stem}.{kind}-{ext}"


def place(src, dst):
    """dst as a copy of src: a hard link where the file system allows it, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    """The four files decompressed, once for the module."""
    folder = tmp_path_factory.mktemp("mnist-raw")
    for n in NAMES:
        with gzip.open(REAL / (n + ".gz")) as f, open(folder / n, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
    return folder


@pytest.fixture(scope="module")
def mnist():
    """The real MNIST, loaded once for the module."""
    return data.load("mnist", REAL)


LAYOUTS = {  # name: (sub-folder of data_dir, raw (decompressed) or gz, dashed or dotted names)
    "gz": ("", "gz", "dashed"),
    "gz-dotted": ("", "gz", "dotted"),
    "raw": ("", "raw", "dashed"),
    "raw-dotted": ("", "raw", "dotted"),
    "MNIST-raw": ("MNIST/raw", "raw", "dashed"),
    "MNIST-raw-gz-dotted": ("MNIST/raw", "gz", "dotted"),
    "mnist": ("mnist", "gz", "dashed"),
    "mnist-raw-dotted": ("mnist", "raw", "dotted"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_loads_without_warning(tmp_path, raw_dir, layout):
    sub, form, names = LAYOUTS[layout]
    for n in NAMES:
        target = (dotted(n) if names == "dotted" else n) + (".gz" if form == "gz" else "")
        place(REAL / (n + ".gz") if form == "gz" else raw_dir / n, tmp_path / sub / target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ChecksumWarning would fail the test
        ds = data.load("mnist", tmp_path)
    assert ds.source == str((tmp_path / sub).resolve())
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_labels).tolist() == TRAIN_COUNTS
    assert torch.bincount(ds.test_labels).tolist() == TEST_COUNTS


def test_the_shared_files_are_genuine_by_content_not_by_gz_bytes():
    for n in NAMES:
        assert data.content_md5(REAL / (n + ".gz")) == data.MD5[n]          # the published raw md5
    # re-compressed: the .gz bytes are not the published .gz (which is why they must be checked by content)
    assert any(data.md5sum(REAL / (n + ".gz")) != data.MD5[n + ".gz"] for n in NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_mnist(REAL, verify="strict")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_a_corrupted_copy_warns(tmp_path, raw_dir, gz):
    for n in NAMES[:3]:
        place(REAL / (n + ".gz"), tmp_path / (n + ".gz"))
    labels = bytearray((raw_dir / NAMES[3]).read_bytes())
    labels[8 + 123] = (labels[8 + 123] + 1) % 10                        # one test label changed
    path = tmp_path / (NAMES[3] + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(bytes(labels)) if gz else bytes(labels))
    with pytest.warns(data.ChecksumWarning) as record:
        data.load("mnist", tmp_path)
    [w] = record
    msg = str(w.message)
    assert msg.startswith(f"{path}:") and data.MD5[NAMES[3]] in msg and hashlib.md5(labels).hexdigest() in msg
    with pytest.raises(data.ChecksumError, match=NAMES[3]):
        data.load("mnist", tmp_path, verify="strict")


def test_short_real_training_run(mnist):
    ds = mnist.subset(train_size=10000, seed=0)        # 10,000 training images, all 10,000 test images
    x, y, xt, yt = ds.tensors()
    torch.manual_seed(0)
    net = build("mnist", fastconv.nn, ds.image_shape)
    fit(net, x, y, epochs=1, batch_size=128, lr=1e-3, seed=0)
    acc = accuracy(net, xt, yt)
    print(f"real MNIST, 1 epoch on 10,000 images, fastconv: test accuracy {acc:.2%}")
    assert acc >= 0.94, f"test accuracy {acc:.2%} after one epoch on 10,000 real MNIST images (measured: 95.68%, 95.4-96.1% over seeds)"


def test_train_script_downloads_from_a_mirror_and_trains(tmp_path):
    mirror = Mirror()
    try:
        for n in NAMES:
            mirror.files[n + ".gz"] = (REAL / (n + ".gz")).read_bytes()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # any address but the mirror's would go to a proxy that refuses: nothing else is reached
        env.update(PYTHONPATH=FASTCONV_PATH, OMP_NUM_THREADS="1", http_proxy="http://127.0.0.1:9",
                   https_proxy="http://127.0.0.1:9", no_proxy="127.0.0.1")
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy", "NO_PROXY"):
            env.pop(var, None)
        folder, out = tmp_path / "data", tmp_path / "run"
        proc = subprocess.run(
            [sys.executable, str(REPO / "bench" / "train.py"), "--dataset", "mnist", "--download", "--data-dir",
             str(folder), "--mirror", mirror.url("good"), "--train-size", "1000", "--test-size", "500", "--epochs", "1",
             "--threads", "1", "--no-plot", "--out", str(out)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    finally:
        mirror.close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(mirror.requests) == sorted(("good", n + ".gz") for n in NAMES)
    assert sorted(os.listdir(folder)) == sorted(n + ".gz" for n in NAMES)
    assert "ChecksumWarning" not in proc.stderr and "SYNTHETIC" not in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "MNIST" and not results["synthetic"] and set(results["runs"]) == {"fastconv", "torch"}
    for run in results["runs"].values():
        assert run["epochs"][0]["test_acc"] > 0.5   # 8 steps of 128 real images: well above chance
