"""fastconv.data: MNIST / CIFAR-10 readers on small files written here in the real formats, in
every supported layout (MNIST: dashed or dotted names, raw or .gz, three folders; CIFAR-10: the
batches folder or the tarball), md5 checks by content, not-found and format errors, subsampling,
the Dataset helpers, and the synthetic digits. (Downloads and tarball safety: test_download.py;
the real MNIST files: test_real_mnist.py.)"""
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import warnings

import numpy as np
import pytest
import torch

from fastconv import data
from fastconv.data import (ChecksumError, ChecksumWarning, DatasetFormatError, DatasetNotFoundError)

MNIST_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]
CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# ------------------------------------------------------------------------------------------------
# writers of the real formats (independent of fastconv.data)


def idx_bytes(array, magic=None):
    """An IDX file's bytes: big-endian magic 0x0000TTDD, big-endian int32 dims, C-order uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path, array, magic=None, *, extra=b"", mtime=0):
    """An IDX file, gzipped when the name ends in .gz (``mtime``: the gzip header's time stamp)."""
    raw = idx_bytes(array, magic) + extra
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(path).endswith(".gz"):
        with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=mtime) as g:
            g.write(raw)
    else:
        path.write_bytes(raw)
    return path


def fake_mnist(rng, n_train=5, n_test=3):
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def dotted(name):
    """train-images-idx3-ubyte -> train-images.idx3-ubyte (the other common spelling)."""
    stem, kind, ext = name.rsplit("-", 2)
    return f"{stem}.{kind}-{ext}"


def write_mnist(folder, arrays, gz=True, names="dashed", mtime=0):
    for name, a in arrays.items():
        name = dotted(name) if names == "dotted" else name
        write_idx(folder / (name + (".gz" if gz else "")), a, mtime=mtime)


def publish(monkeypatch, arrays):
    """Makes the content md5s of ``arrays`` (as IDX files) the published ones of the MNIST names."""
    for name, a in arrays.items():
        monkeypatch.setitem(data.MD5, name, hashlib.md5(idx_bytes(a)).hexdigest())


def write_cifar_batch(path, rows, labels, protocol=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"testing batch", b"labels": [int(v) for v in labels], b"data": rows,
             b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def fake_cifar(rng, sizes=(3, 2, 4, 1, 2, 3)):
    """{file name: (rows uint8 N x 3072, labels)} for the 5 data batches and test_batch."""
    return {name: (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n))
            for name, n in zip(CIFAR_NAMES, sizes)}


def write_cifar(folder, batches, protocol=2):
    for name, (rows, labels) in batches.items():
        write_cifar_batch(folder / name, rows, labels, protocol)


def cifar_tarball(path, batches, extra=()):
    """cifar-10-python.tar.gz as published: the batches (and batches.meta, readme.html) under
    cifar-10-batches-py/. ``extra``: more (TarInfo, bytes or None) members."""
    def add(tar, name, payload):
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(payload), 0o644
        tar.addfile(info, io.BytesIO(payload))

    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, (rows, labels) in batches.items():
            buf = io.BytesIO()
            pickle.dump({b"labels": [int(v) for v in labels], b"data": rows}, buf, protocol=2)
            add(tar, f"cifar-10-batches-py/{name}", buf.getvalue())
        add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": []}, protocol=2))
        add(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
        for info, payload in extra:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ------------------------------------------------------------------------------------------------
# MNIST


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_round_trip(tmp_path, rng, gz, no_warnings):
    arrays = fake_mnist(rng)
    write_mnist(tmp_path, arrays, gz)
    ds = data.load_mnist(tmp_path, verify="off")
    assert ds.name == "MNIST" and ds.synthetic is False and ds.classes == [str(i) for i in range(10)]
    assert ds.train_images.shape == (5, 1, 28, 28) and ds.test_images.shape == (3, 1, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.test_images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert ds.train_labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert "SYNTHETIC" not in ds.describe() and "MNIST" in ds.describe()


@pytest.mark.parametrize("folder", ["", "MNIST/raw", "mnist"], ids=["data_dir", "MNIST-raw", "mnist"])
@pytest.mark.parametrize("names", ["dashed", "dotted"])
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_every_layout_loads_and_is_verified_by_content(tmp_path, rng, monkeypatch, folder, names, gz,
                                                             no_warnings):
    arrays = fake_mnist(rng)
    publish(monkeypatch, arrays)  # strict below: every layout is checked against the content md5s
    write_mnist(tmp_path / folder, arrays, gz=gz, names=names)
    ds = data.load_mnist(tmp_path, verify="strict")
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert ds.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.source == str((tmp_path / folder).resolve())


def test_mnist_data_dir_may_be_the_files_folder(tmp_path, rng):
    arrays = fake_mnist(rng)
    write_mnist(tmp_path / "MNIST" / "raw", arrays, gz=False)
    ds = data.load_mnist(tmp_path, verify="off")
    ds2 = data.load_mnist(tmp_path / "MNIST" / "raw", verify="off")
    ds3 = data.load_mnist(tmp_path / "MNIST", verify="off")
    assert torch.equal(ds2.test_images, ds.test_images) and torch.equal(ds3.train_labels, ds.train_labels)


def test_mnist_files_from_several_folders_and_spellings(tmp_path, rng, monkeypatch, no_warnings):
    arrays = fake_mnist(rng)
    publish(monkeypatch, arrays)
    (name_a, a), (name_b, b), (name_c, c), (name_d, d) = arrays.items()
    write_idx(tmp_path / (name_a + ".gz"), a)
    write_idx(tmp_path / "MNIST" / "raw" / dotted(name_b), b)
    write_idx(tmp_path / "mnist" / (dotted(name_c) + ".gz"), c)
    write_idx(tmp_path / "mnist" / name_d, d)
    ds = data.load_mnist(tmp_path, verify="strict")
    assert np.array_equal(ds.test_images[:, 0].numpy(), c) and ds.train_labels.tolist() == b.tolist()


def test_mnist_gz_preferred_over_raw_and_mixed_files(tmp_path, rng):
    arrays = fake_mnist(rng)
    write_mnist(tmp_path, arrays, gz=False)
    other = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", other)   # both forms of one file: gz is read
    ds = data.load_mnist(tmp_path, verify="off")
    assert np.array_equal(ds.train_images[:, 0].numpy(), other)
    assert np.array_equal(ds.test_images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])


def test_mnist_not_found_names_files_folders_and_no_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        data.load_mnist(tmp_path)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    msg = str(err)
    for name in MNIST_NAMES:
        assert name in msg and name + "[.gz]" in err.missing
    assert str(tmp_path) in msg and str(tmp_path / "MNIST" / "raw") in msg and str(tmp_path / "mnist") in msg
    assert "download=True" in msg and "--download" in msg and "put" in msg and "train-images.idx3-ubyte" in msg
    assert str(tmp_path / "MNIST" / "raw") in err.searched and str(tmp_path / "mnist") in err.searched
    assert os.listdir(tmp_path) == []  # nothing fetched, nothing written


def test_mnist_partly_missing_names_only_the_missing_file(tmp_path, rng):
    arrays = fake_mnist(rng)
    del arrays["t10k-labels-idx1-ubyte"]
    write_mnist(tmp_path, arrays)
    with pytest.raises(DatasetNotFoundError, match="missing t10k-labels-idx1-ubyte") as info:
        data.load_mnist(tmp_path, verify="off")
    assert info.value.missing == ["t10k-labels-idx1-ubyte[.gz]"]


def test_mnist_missing_data_dir_is_not_found(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        data.load("mnist", tmp_path / "nowhere")


def test_data_dir_defaults_to_env(tmp_path, rng, monkeypatch):
    write_mnist(tmp_path, fake_mnist(rng))
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path))
    assert len(data.load("mnist", verify="off").train_labels) == 5
    monkeypatch.delenv("FASTCONV_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "data")):
        data.load("mnist")


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_bad_magic(tmp_path, rng, gz):
    arrays = fake_mnist(rng)
    write_mnist(tmp_path, arrays, gz)
    sfx = ".gz" if gz else ""
    # a labels file where the images file should be: magic 0x801 instead of 0x803
    write_idx(tmp_path / ("train-images-idx3-ubyte" + sfx), arrays["train-labels-idx1-ubyte"])
    with pytest.raises(DatasetFormatError, match=r"bad IDX magic number 0x00000801, expected 0x00000803"):
        data.load_mnist(tmp_path, verify="off")
    # not an IDX file at all
    write_idx(tmp_path / ("train-images-idx3-ubyte" + sfx), arrays["train-images-idx3-ubyte"],
              magic=0x12345678)
    with pytest.raises(DatasetFormatError, match="bad IDX magic number 0x12345678"):
        data.load_mnist(tmp_path, verify="off")


def test_idx_gzip_content_under_raw_name(tmp_path, rng):
    write_idx(tmp_path / "x.gz", fake_mnist(rng)["train-labels-idx1-ubyte"])
    os.rename(tmp_path / "x.gz", tmp_path / "x")
    with pytest.raises(DatasetFormatError, match="gzip"):
        data.read_idx(tmp_path / "x", data.IDX_UBYTE_1D)


@pytest.mark.parametrize("keep", [2, 10, 16 + 3 * 784 - 1, 16 + 2 * 784 - 5],
                         ids=["in-magic", "in-dims", "1-byte-short", "1-image-short"])
def test_idx_truncated(tmp_path, rng, keep):
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DatasetFormatError, match="truncated"):
        data.read_idx(path, data.IDX_UBYTE_3D)


def test_idx_other_element_types(tmp_path):
    values = (np.arange(-6, 6).reshape(3, 4) * 100000).astype(">i4")
    path = tmp_path / "ints"
    path.write_bytes(struct.pack(">I", 0x00000C02) + struct.pack(">2I", 3, 4) + values.tobytes())
    out = data.read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative and np.array_equal(out, values)
    with pytest.raises(DatasetFormatError, match="expected 0x00000801"):
        data.read_idx(path, data.IDX_UBYTE_1D)


def test_idx_truncated_gzip_and_trailing_bytes(tmp_path, rng):
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "a.gz", images)
    path.write_bytes(path.read_bytes()[:-40])          # cut inside the compressed stream
    with pytest.raises(DatasetFormatError, match="truncated or corrupted"):
        data.read_idx(path, data.IDX_UBYTE_3D)
    path = write_idx(tmp_path / "b", images, extra=b"\0\0")
    with pytest.raises(DatasetFormatError, match="2 bytes after"):
        data.read_idx(path, data.IDX_UBYTE_3D)
    assert np.array_equal(data.read_idx(write_idx(tmp_path / "c", images)), images)


def test_mnist_images_labels_count_mismatch(tmp_path, rng):
    arrays = fake_mnist(rng)
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:4]
    write_mnist(tmp_path, arrays)
    with pytest.raises(DatasetFormatError, match="5 images .* but 4 labels"):
        data.load_mnist(tmp_path, verify="off")


# ------------------------------------------------------------------------------------------------
# md5


def test_md5_mismatch_warns_strict_raises_off_is_silent(tmp_path, rng):
    arrays = fake_mnist(rng)
    write_mnist(tmp_path, arrays)        # the published .gz names, other content
    with pytest.warns(ChecksumWarning) as record:
        ds = data.load_mnist(tmp_path)   # verify="warn" is the default
    messages = [str(w.message) for w in record if issubclass(w.category, ChecksumWarning)]
    assert len(messages) == 4
    # names the file, the found and the expected digests of the content (and of the .gz itself)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    found = hashlib.md5(idx_bytes(arrays["train-images-idx3-ubyte"])).hexdigest()
    [m] = [m for m in messages if m.startswith(str(path) + ":")]
    assert found in m and "6bbc9ace898e44ae57da46a324031adb" in m     # content: found, published
    assert hashlib.md5(path.read_bytes()).hexdigest() in m and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in m
    assert all(w.filename == __file__ for w in record)                # attributed to the caller
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    with pytest.raises(ChecksumError, match="differs from the published"):
        data.load_mnist(tmp_path, verify="strict")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_mnist(tmp_path, verify="off")
    with pytest.raises(ValueError, match="verify must be one of"):
        data.load_mnist(tmp_path, verify="yes")


def test_regzipped_genuine_files_give_no_warning(tmp_path, rng, monkeypatch, no_warnings):
    # gzip headers hold a time stamp: two gzips of one file differ byte for byte, their content not
    arrays = fake_mnist(rng)
    publish(monkeypatch, arrays)
    write_mnist(tmp_path / "a", arrays, mtime=1)
    write_mnist(tmp_path / "b", arrays, mtime=2)
    name = "train-images-idx3-ubyte.gz"
    assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes()
    a = data.load_mnist(tmp_path / "a", verify="strict")
    b = data.load_mnist(tmp_path / "b", verify="strict")
    assert torch.equal(a.train_images, b.train_images)


def test_published_gz_md5_is_accepted_too(tmp_path, rng, monkeypatch, no_warnings):
    write_mnist(tmp_path, fake_mnist(rng))
    for name in MNIST_NAMES:  # the raw digests do not match; the .gz ones do
        monkeypatch.setitem(data.MD5, name + ".gz", hashlib.md5((tmp_path / (name + ".gz")).read_bytes()).hexdigest())
    data.load_mnist(tmp_path, verify="strict")


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_corrupted_genuine_file_warns(tmp_path, rng, monkeypatch, gz):
    arrays = fake_mnist(rng)
    publish(monkeypatch, arrays)
    labels = arrays["train-labels-idx1-ubyte"]
    labels[0] = (labels[0] + 1) % 10                       # one flipped label: the file is still valid IDX
    write_mnist(tmp_path, arrays, gz=gz, names="dotted")
    expected = data.MD5["train-labels-idx1-ubyte"]
    with pytest.warns(ChecksumWarning) as record:
        data.load_mnist(tmp_path)
    [w] = record
    path = tmp_path / ("train-labels.idx1-ubyte" + (".gz" if gz else ""))
    msg = str(w.message)
    assert msg.startswith(f"{path}:") and expected in msg and hashlib.md5(idx_bytes(labels)).hexdigest() in msg
    assert "train-labels-idx1-ubyte" in msg  # the standard name whose digest was expected


def test_md5_computed_once_per_file(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"some bytes")
    digest = data.md5sum(path)
    assert digest == hashlib.md5(b"some bytes").hexdigest()

    def boom(*a, **k):
        raise AssertionError("hashed twice")

    monkeypatch.setattr(data.files.hashlib, "md5", boom)
    assert data.md5sum(path) == digest
    path.write_bytes(b"other bytes, other size")   # a changed file is hashed again
    with pytest.raises(AssertionError, match="hashed twice"):
        data.md5sum(path)


def test_content_md5_of_gz_is_of_the_decompressed_bytes(tmp_path, rng):
    path = write_idx(tmp_path / "x.gz", rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), mtime=5)
    with gzip.open(path) as f:
        assert data.content_md5(path) == hashlib.md5(f.read()).hexdigest() != data.md5sum(path)
    raw = tmp_path / "y"
    raw.write_bytes(b"raw")
    assert data.content_md5(raw) == data.md5sum(raw)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetFormatError, match="truncated or corrupted"):
        data.content_md5(path)


def test_cifar_md5_mismatch(tmp_path, rng):
    write_cifar(tmp_path / "cifar-10-batches-py", fake_cifar(rng))
    with pytest.warns(ChecksumWarning) as record:
        data.load_cifar10(tmp_path)
    assert sorted(str(w.message).split(":")[0] for w in record) == sorted(
        str(tmp_path / "cifar-10-batches-py" / name) for name in CIFAR_NAMES)
    assert all(w.filename == __file__ for w in record)      # attributed to the caller
    with pytest.raises(ChecksumError, match="data_batch_1"):
        data.load_cifar10(tmp_path, verify="strict")


# ------------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_round_trip_and_channel_layout(tmp_path, rng, protocol, no_warnings):
    batches = fake_cifar(rng)
    # image 0 of data_batch_1: R plane 10, G plane 20, B plane 30, except pixel (h=1, w=2) of
    # each plane, which is 100 + channel
    rows = batches["data_batch_1"][0]
    rows[0, :1024], rows[0, 1024:2048], rows[0, 2048:] = 10, 20, 30
    for c in range(3):
        rows[0, c * 1024 + 1 * 32 + 2] = 100 + c
    write_cifar(tmp_path / "cifar-10-batches-py", batches, protocol)
    ds = data.load_cifar10(tmp_path, verify="off")
    assert ds.name == "CIFAR-10" and not ds.synthetic and ds.classes[0] == "airplane" and len(ds.classes) == 10
    assert ds.train_images.shape == (12, 3, 32, 32) and ds.test_images.shape == (3, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and ds.test_labels.dtype == torch.int64
    img = ds.train_images[0]
    assert [img[c, 0, 0].item() for c in range(3)] == [10, 20, 30]
    assert [img[c, 1, 2].item() for c in range(3)] == [100, 101, 102]
    assert int((img[0] != 10).sum()) == 1
    # every pixel: image[i, c, h, w] == row[i, c * 1024 + h * 32 + w], batches in order 1..5
    train_rows = np.concatenate([batches[n][0] for n in CIFAR_NAMES[:5]])
    i, c, h, w = np.meshgrid(*map(np.arange, (12, 3, 32, 32)), indexing="ij")
    assert np.array_equal(ds.train_images.numpy(), train_rows[i, c * 1024 + h * 32 + w])
    assert ds.train_labels.tolist() == np.concatenate([batches[n][1] for n in CIFAR_NAMES[:5]]).tolist()
    i, c, h, w = np.meshgrid(*map(np.arange, (3, 3, 32, 32)), indexing="ij")
    assert np.array_equal(ds.test_images.numpy(), batches["test_batch"][0][i, c * 1024 + h * 32 + w])
    assert ds.test_labels.tolist() == batches["test_batch"][1].tolist()


def test_cifar_data_dir_is_the_batches_folder(tmp_path, rng):
    batches = fake_cifar(rng)
    write_cifar(tmp_path / "cifar-10-batches-py", batches)
    a = data.load_cifar10(tmp_path, verify="off")
    b = data.load_cifar10(tmp_path / "cifar-10-batches-py", verify="off")
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert a.source == str(tmp_path / "cifar-10-batches-py")


def test_cifar_not_found(tmp_path, rng):
    with pytest.raises(DatasetNotFoundError) as info:
        data.load("cifar10", tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for name in CIFAR_NAMES:
        assert name in msg
    assert str(tmp_path / "cifar-10-batches-py") in msg and "download=True" in msg
    assert "cifar-10-python.tar.gz" in msg and os.listdir(tmp_path) == []
    # partial: names only what is missing
    batches = fake_cifar(rng)
    del batches["data_batch_4"]
    write_cifar(tmp_path / "cifar-10-batches-py", batches)
    with pytest.raises(DatasetNotFoundError, match="missing data_batch_4. Searched") as info:
        data.load_cifar10(tmp_path)
    assert info.value.missing == ["data_batch_4"]


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_cifar_from_the_tarball_extracted_once(tmp_path, rng, monkeypatch, no_warnings):
    batches = fake_cifar(rng)
    write_cifar(tmp_path / "reference", batches)
    (tmp_path / "data").mkdir()
    tarball = cifar_tarball(tmp_path / "data" / "cifar-10-python.tar.gz", batches)
    ds = data.load_cifar10(tmp_path / "data", verify="off")
    ref = data.load_cifar10(tmp_path / "reference", verify="off")
    assert torch.equal(ds.train_images, ref.train_images) and torch.equal(ds.test_labels, ref.test_labels)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    assert ds.source == str(folder.resolve())
    assert _listing(tmp_path / "data") == sorted(["cifar-10-batches-py", "cifar-10-python.tar.gz"] + [
        f"cifar-10-batches-py/{n}" for n in CIFAR_NAMES + ["batches.meta", "readme.html"]])
    # published digests of these batches: the extracted files pass verify="strict"
    for name in CIFAR_NAMES:
        monkeypatch.setitem(data.MD5, name, hashlib.md5((folder / name).read_bytes()).hexdigest())
    stamp = (folder / "test_batch").stat().st_mtime_ns
    tarball.unlink()                                   # the second load reads the batches, not the tarball
    again = data.load_cifar10(tmp_path / "data", verify="strict")
    assert torch.equal(again.train_images, ds.train_images) and (folder / "test_batch").stat().st_mtime_ns == stamp


def test_cifar_tarball_completes_a_partial_folder_without_overwriting(tmp_path, rng):
    batches = fake_cifar(rng)
    cifar_tarball(tmp_path / "cifar-10-python.tar.gz", batches)
    mine = fake_cifar(np.random.default_rng(1))
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1", *mine["data_batch_1"])
    ds = data.load_cifar10(tmp_path, verify="off")
    n1 = len(mine["data_batch_1"][1])
    assert np.array_equal(ds.train_images[:n1].numpy().reshape(n1, 3072), mine["data_batch_1"][0])  # kept
    assert np.array_equal(ds.test_images.numpy().reshape(-1, 3072), batches["test_batch"][0])        # extracted
    # data_dir may be the batches folder, the tarball lying next to it
    shutil.rmtree(tmp_path / "cifar-10-batches-py")
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1", *mine["data_batch_1"])
    ds2 = data.load_cifar10(tmp_path / "cifar-10-batches-py", verify="off")
    assert torch.equal(ds2.train_images, ds.train_images)


def test_cifar_truncated_tarball_leaves_nothing(tmp_path, rng):
    path = cifar_tarball(tmp_path / "cifar-10-python.tar.gz", fake_cifar(rng, sizes=(40,) * 6))
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(DatasetFormatError, match="truncated or corrupted"):
        data.load_cifar10(tmp_path)
    assert os.listdir(tmp_path) == ["cifar-10-python.tar.gz"]
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match="cifar-10-python.tar.gz"):
        data.load_cifar10(tmp_path)
    assert os.listdir(tmp_path) == ["cifar-10-python.tar.gz"]


def _py2_str(b):
    """A Python 2 str as cPickle writes it (SHORT_BINSTRING / BINSTRING)."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def py2_cifar_batch(rows, labels):
    """A batch pickle as the published files are: protocol 2 from Python 2's cPickle with numpy
    1.x, i.e. str keys and data, and numpy.core.multiarray._reconstruct (hand-assembled)."""
    n = len(labels)
    return b"".join([
        b"\x80\x02}q\x00(", _py2_str(b"batch_label"), _py2_str(b"testing batch 1 of 1"),
        _py2_str(b"labels"), b"](", b"".join(b"K" + bytes([int(v)]) for v in labels), b"e",
        _py2_str(b"data"),
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R",
        b"(K\x01M" + struct.pack("<H", n) + b"M" + struct.pack("<H", 3072) + b"\x86",
        b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
        b"\x89", _py2_str(rows.tobytes()), b"tb",
        _py2_str(b"filenames"), b"](", b"".join(_py2_str(b"%d.png" % i) for i in range(n)), b"e", b"u."])


def test_cifar_python2_pickles_as_published(tmp_path, rng, no_warnings):
    batches = fake_cifar(rng)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, (rows, labels) in batches.items():
        (folder / name).write_bytes(py2_cifar_batch(rows, labels))
    ds = data.load_cifar10(tmp_path, verify="off")
    assert np.array_equal(ds.test_images.numpy().reshape(3, 3072), batches["test_batch"][0])
    assert ds.train_labels.tolist() == np.concatenate([batches[n][1] for n in CIFAR_NAMES[:5]]).tolist()


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar_foreign_pickle_is_refused_not_run(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, fake_cifar(rng))
    target = str(tmp_path / "pwned")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(target), b"labels": []}, f)
    with pytest.raises(DatasetFormatError, match="not allowed"):
        data.load_cifar10(tmp_path, verify="off")
    assert not os.path.exists(target)


def test_cifar_bad_batches(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, fake_cifar(rng))
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetFormatError, match="data_batch_2: not a CIFAR-10 python batch"):
        data.load_cifar10(tmp_path, verify="off")
    write_cifar_batch(path, np.zeros((2, 3000), np.uint8), [0, 1])
    with pytest.raises(DatasetFormatError, match="N x 3072"):
        data.load_cifar10(tmp_path, verify="off")
    write_cifar_batch(path, np.zeros((2, 3072), np.uint8), [0, 1, 2])
    with pytest.raises(DatasetFormatError, match="2 images but 3 labels"):
        data.load_cifar10(tmp_path, verify="off")
    with open(path, "wb") as f:
        pickle.dump({b"pixels": 1}, f)
    with pytest.raises(DatasetFormatError, match="without b'data'"):
        data.load_cifar10(tmp_path, verify="off")


# ------------------------------------------------------------------------------------------------
# load(), subsets and the Dataset helpers


def test_load_subsample_deterministic(tmp_path, rng, capsys):
    arrays = fake_mnist(rng, n_train=40, n_test=20)
    write_mnist(tmp_path, arrays)
    full = data.load("mnist", tmp_path, verify="off")
    a = data.load("mnist", tmp_path, train_size=10, test_size=5, seed=3, verify="off")
    b = data.load("mnist", tmp_path, train_size=10, test_size=5, seed=3, verify="off")
    assert capsys.readouterr() == ("", "")    # loaders print nothing
    assert a.train_images.shape == (10, 1, 28, 28) and a.test_images.shape == (5, 1, 28, 28)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    # a subset of the rows, in file order, with their own labels
    flat = full.train_images.reshape(40, -1)
    idx = [next(j for j in range(40) if torch.equal(flat[j], row)) for row in a.train_images.reshape(10, -1)]
    assert idx == sorted(idx) and len(set(idx)) == 10
    assert a.train_labels.tolist() == full.train_labels[idx].tolist()
    others = [data.load("mnist", tmp_path, train_size=10, seed=s, verify="off").train_images for s in range(4, 8)]
    assert any(not torch.equal(o, a.train_images) for o in others)
    # statistics are the subset's own
    x = a.train_images.double() / 255
    assert a.mean[0] == pytest.approx(x.mean().item()) and a.std[0] == pytest.approx(x.std(unbiased=False).item())
    assert "subset" in a.source
    with pytest.raises(ValueError, match="train_size must be an int in 1..40"):
        data.load("mnist", tmp_path, train_size=41, verify="off")


def test_load_rejects_unknown_name():
    with pytest.raises(ValueError, match="mnist, cifar10, synthetic"):
        data.load("imagenet")


def test_dataset_stats_normalised_tensors_and_loaders(tmp_path, rng):
    write_cifar(tmp_path, fake_cifar(rng, sizes=(30, 20, 20, 20, 10, 16)))   # data_dir = the batches folder
    ds = data.load_cifar10(tmp_path, verify="off")
    x = ds.train_images.double() / 255
    assert ds.mean == pytest.approx(x.mean((0, 2, 3)).tolist())
    assert ds.std == pytest.approx(x.std((0, 2, 3), unbiased=False).tolist())
    xn, y = ds.normalized("train")
    assert xn.dtype == torch.float32 and xn.shape == (100, 3, 32, 32) and torch.equal(y, ds.train_labels)
    assert xn.mean((0, 2, 3)).abs().max() < 1e-4 and (xn.std((0, 2, 3), unbiased=False) - 1).abs().max() < 1e-4
    td = ds.tensor_dataset("test")
    assert len(td) == 16 and td[0][0].shape == (3, 32, 32) and td[0][1].dtype == torch.int64
    raw = ds.tensor_dataset("test", normalize=False)
    assert raw[3][0].dtype == torch.uint8 and torch.equal(raw[3][0], ds.test_images[3])
    train, test = ds.loaders(32, seed=5)
    batches = list(train)
    assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
    assert batches[0][0].dtype == torch.float32 and batches[0][0].shape == (32, 3, 32, 32)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(ds.train_labels.tolist())
    again = next(iter(ds.loaders(32, seed=5)[0]))
    assert torch.equal(again[1], batches[0][1])                      # same seed, same order
    assert torch.equal(torch.cat([b[1] for b in test]), ds.test_labels)  # test order kept
    with pytest.raises(ValueError, match="split"):
        ds.normalized("val")


def test_dataset_float_images_and_checks():
    x = torch.rand(6, 2, 4, 4, dtype=torch.float64)
    y = torch.arange(6) % 2
    ds = data.Dataset("tiny", x, y, x[:2], y[:2], ["a", "b"])
    assert ds.mean == pytest.approx(x.mean((0, 2, 3)).tolist())     # float images: already [0, 1]
    assert ds.std == pytest.approx(x.std((0, 2, 3), unbiased=False).tolist())
    xn = ds.normalize(x)
    assert xn.dtype == torch.float32 and xn.mean((0, 2, 3)).abs().max() < 1e-5
    assert not ds.synthetic and ds.num_classes == 2 and ds.image_shape == (2, 4, 4)
    with pytest.raises(ValueError, match="int64"):
        data.Dataset("tiny", x, y.int(), x, y, ["a", "b"])
    with pytest.raises(ValueError, match="N x C x H x W"):
        data.Dataset("tiny", x[:, 0], y, x, y, ["a", "b"])


# ------------------------------------------------------------------------------------------------
# synthetic digits


@pytest.fixture(scope="module")
def synth():
    return data.load("synthetic", train_size=2000, test_size=1000, seed=0)


def test_synthetic_is_labelled_synthetic(synth, tmp_path, capsys):
    assert synth.synthetic is True and "NOT MNIST" in synth.name
    assert "SYNTHETIC" in synth.describe() and "NOT MNIST" in synth.describe()
    assert synth.train_images.shape == (2000, 1, 28, 28) and synth.test_images.shape == (1000, 1, 28, 28)
    assert synth.train_images.dtype == torch.uint8 and synth.train_labels.dtype == torch.int64
    small = data.load("synthetic", tmp_path / "ignored", train_size=20, test_size=10)
    assert capsys.readouterr() == ("", "")
    assert small.train_images.shape == (20, 1, 28, 28)


def test_synthetic_deterministic_by_seed():
    a, la = data.generate_digits(300, seed=0)
    b, lb = data.generate_digits(300, seed=0)
    assert a.numpy().tobytes() == b.numpy().tobytes() and torch.equal(la, lb)
    c, _ = data.generate_digits(300, seed=1)
    assert not torch.equal(a, c)
    t, _ = data.generate_digits(300, seed=0, split="test")
    assert not torch.equal(a, t)
    # images come in seeded blocks: a smaller set is a prefix of a larger one
    big, lbig = data.generate_digits(1200, seed=0)
    assert torch.equal(big[:300], a) and torch.equal(lbig[:300], la)
    assert torch.equal(data.generate_digits(1100, seed=0)[0], big[:1100])


def test_synthetic_default_sizes(monkeypatch):
    calls = []

    def fake_generate(n, seed, split):
        calls.append((n, seed, split))
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64)

    monkeypatch.setattr(data.synthetic, "generate_digits", fake_generate)
    data.load("synthetic", seed=7)
    assert calls == [(60000, 7, "train"), (10000, 7, "test")]


def test_synthetic_class_balance(synth):
    assert torch.bincount(synth.train_labels, minlength=10).tolist() == [200] * 10
    assert torch.bincount(synth.test_labels, minlength=10).tolist() == [100] * 10
    _, labels = data.generate_digits(1005, seed=2)
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() >= 100 and counts.max() <= 101


def test_synthetic_pixel_range(synth):
    x = synth.train_images.float() / 255
    assert x.max() >= 0.95                                   # full ink reached
    assert 0.1 < synth.mean[0] < 0.25 and 0.15 < synth.std[0] < 0.4
    ink = (x > 0.5).float().mean((1, 2, 3))                  # fraction of inked pixels per image
    assert ink.min() > 0.01 and ink.max() < 0.5
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)
    assert border.mean() < 0.06                               # digits stay inside the frame


def _class_means(x, y):
    return torch.stack([x[y == c].mean(0) for c in range(10)])


def test_synthetic_class_means_differ_and_are_structured(synth):
    x = synth.train_images.reshape(2000, -1).double() / 255
    y = synth.train_labels
    means = _class_means(x, y)
    dist = torch.cdist(means, means) / 28                     # rms difference per pixel
    off = dist[~torch.eye(10, dtype=torch.bool)]
    assert off.min() > 0.04, dist
    assert means.max(1).values.min() > 0.3                   # a mean image has a clear shape
    # the same class's mean image from two disjoint halves agrees better than with any other class
    a, b = _class_means(x[:1000], y[:1000]), _class_means(x[1000:], y[1000:])
    a = (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True)
    b = (b - b.mean(1, keepdim=True)) / b.std(1, keepdim=True)
    corr = a @ b.T / (784 - 1)
    assert corr.diagonal().min() > 0.9
    assert (corr.diagonal() > (corr - 2 * torch.eye(10, dtype=corr.dtype)).max(1).values).all()


def test_synthetic_learnable_but_not_trivial(synth):
    x = synth.train_images.reshape(2000, -1).double() / 255
    y = synth.train_labels
    xt = synth.test_images.reshape(1000, -1).double() / 255
    yt = synth.test_labels
    # nearest class mean
    ncm = (torch.cdist(xt, _class_means(x, y)).argmin(1) == yt).double().mean().item()
    # ridge least-squares linear classifier on one-hot targets
    X = torch.cat([x, torch.ones(2000, 1, dtype=x.dtype)], 1)
    Xt = torch.cat([xt, torch.ones(1000, 1, dtype=x.dtype)], 1)
    W = torch.linalg.solve(X.T @ X + torch.eye(785, dtype=x.dtype), X.T @ torch.nn.functional.one_hot(y, 10).double())
    lsq = ((Xt @ W).argmax(1) == yt).double().mean().item()
    assert ncm > 0.45 and lsq > 0.4, (ncm, lsq)              # chance is 0.1
    assert ncm < 0.9 and lsq < 0.9, (ncm, lsq)               # but not linearly trivial
    # the mean pixel (amount of ink) alone says little: best lookup over 20 quantile bins
    m, mt = x.mean(1), xt.mean(1)
    edges = torch.quantile(m, torch.linspace(0, 1, 21, dtype=m.dtype)[1:-1])
    b, bt = torch.bucketize(m, edges), torch.bucketize(mt, edges)
    vote = torch.stack([torch.bincount(y[b == k], minlength=10).argmax() for k in range(20)])
    by_ink = (vote[bt] == yt).double().mean().item()
    assert by_ink < 0.3, by_ink
