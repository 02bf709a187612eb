"""fastconv.data downloads and tarball safety, against HTTP servers on 127.0.0.1.

Each test starts its own server (local_mirror.Mirror: ``http.server`` in a thread, a random port)
that serves small files in the real formats (tiny IDX files, gzipped; a tiny CIFAR-10 tarball)
under a path per behaviour: ``/good/``, ``/corrupt/`` (one byte changed), ``/truncated/`` (the
first half, with a matching Content-Length), ``/drop/`` (the connection closed halfway through the
announced length), ``/reset/`` (reset halfway), ``/missing/`` (404), ``/stall/`` (says nothing)
and ``/stallbody/`` (stops halfway). A refused connection is a port nothing listens on. The tiny
files' md5s are made the published ones for the test (``data.MD5`` patched).

No other address is ever contacted: an autouse fixture refuses (and records) any connection or
name lookup for a host other than 127.0.0.1, and clears proxy settings.
"""
import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import tarfile
import warnings

import numpy as np
import pytest
import torch

from fastconv import data, progress
from fastconv.data import DatasetNotFoundError, DownloadError, UnsafeArchiveError
from fastconv.data import download
from local_mirror import Mirror

MNIST = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]
CIFAR = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
TARBALL = "cifar-10-python.tar.gz"


# ------------------------------------------------------------------------------------------------
# no address but 127.0.0.1


@pytest.fixture(autouse=True)
def only_localhost(monkeypatch):
    foreign = []
    real_connect, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def create_connection(address, *args, **kwargs):
        if address[0] != "127.0.0.1":
            foreign.append(address)
            raise AssertionError(f"the test tried to connect to {address}")
        return real_connect(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        if host != "127.0.0.1":
            foreign.append(host)
            raise AssertionError(f"the test tried to look up {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for var in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setattr(download, "DEFAULT_TIMEOUT", 2.0)
    yield
    assert not foreign, f"addresses other than 127.0.0.1 were contacted: {foreign}"


# ------------------------------------------------------------------------------------------------
# the server


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.close()


@pytest.fixture
def refused_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/"


# ------------------------------------------------------------------------------------------------
# tiny files in the real formats


def idx_bytes(array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def gzipped(raw, mtime=0):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=mtime) as g:
        g.write(raw)
    return buf.getvalue()


@pytest.fixture
def tiny_mnist(mirror, monkeypatch):
    """{name: raw IDX array}; the mirror serves NAME.gz; their content md5s are the published ones
    (the .gz digests stay the real ones: the served files pass by their content)."""
    rng = np.random.default_rng(0)
    arrays = {MNIST[0]: rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
              MNIST[1]: rng.integers(0, 10, 6, dtype=np.uint8),
              MNIST[2]: rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
              MNIST[3]: rng.integers(0, 10, 4, dtype=np.uint8)}
    for name, a in arrays.items():
        mirror.files[name + ".gz"] = gzipped(idx_bytes(a))
        monkeypatch.setitem(data.MD5, name, hashlib.md5(idx_bytes(a)).hexdigest())
    return arrays


def _member(name, payload=b"", **fields):
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(payload), 0o644
    for k, v in fields.items():
        setattr(info, k, v)
    return info, (io.BytesIO(payload) if payload else None)


def tarball_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, fileobj in members:
            tar.addfile(info, fileobj)
    return buf.getvalue()


def cifar_members(rng):
    out = [_member("cifar-10-batches-py", type=tarfile.DIRTYPE, mode=0o755)]
    batches = {}
    for name in CIFAR:
        rows, labels = rng.integers(0, 256, (2, 3072), dtype=np.uint8), rng.integers(0, 10, 2)
        batches[name] = (rows, labels)
        out.append(_member(f"cifar-10-batches-py/{name}",
                           pickle.dumps({b"data": rows, b"labels": [int(v) for v in labels]}, protocol=2)))
    return out, batches


@pytest.fixture
def tiny_cifar(mirror, monkeypatch):
    """The batches; the mirror serves the tarball; its md5 and the batches' are the published ones."""
    members, batches = cifar_members(np.random.default_rng(1))
    blob = tarball_bytes(members)
    mirror.files[TARBALL] = blob
    monkeypatch.setitem(data.MD5, TARBALL, hashlib.md5(blob).hexdigest())
    for (info, fileobj) in members[1:]:
        monkeypatch.setitem(data.MD5, info.name.split("/")[-1], hashlib.md5(fileobj.getvalue()).hexdigest())
    return batches


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------------------
# MNIST


def test_good_mirror(tmp_path, mirror, tiny_mnist, no_warnings, capfd):
    folder = tmp_path / "data"
    ds = data.load("mnist", folder, download=True, mirrors=[mirror.url("good")], verify="strict")
    assert np.array_equal(ds.train_images[:, 0].numpy(), tiny_mnist[MNIST[0]])
    assert ds.test_labels.tolist() == tiny_mnist[MNIST[3]].tolist()
    assert listing(folder) == sorted(n + ".gz" for n in MNIST)          # no temporary file left
    assert sorted(mirror.requests) == sorted(("good", n + ".gz") for n in MNIST)
    for n in MNIST:                                                       # the bytes served, as served
        assert (folder / (n + ".gz")).read_bytes() == mirror.files[n + ".gz"]
    assert f"downloading {mirror.url('good')}train-images-idx3-ubyte.gz" in capfd.readouterr().err


def test_present_files_are_not_downloaded_again(tmp_path, mirror, tiny_mnist, no_warnings):
    folder = tmp_path / "MNIST" / "raw"   # torchvision's layout: the missing files join the others there
    folder.mkdir(parents=True)
    (folder / MNIST[0]).write_bytes(idx_bytes(tiny_mnist[MNIST[0]]))                 # raw
    (folder / "t10k-labels.idx1-ubyte.gz").write_bytes(gzipped(idx_bytes(tiny_mnist[MNIST[3]]), mtime=7))
    data.load("mnist", tmp_path, download=True, mirrors=[mirror.url("good")], verify="strict")
    assert sorted(mirror.requests) == [("good", MNIST[2] + ".gz"), ("good", MNIST[1] + ".gz")]
    assert listing(tmp_path) == sorted(["MNIST", "MNIST/raw", f"MNIST/raw/{MNIST[0]}", f"MNIST/raw/{MNIST[1]}.gz",
                                        f"MNIST/raw/{MNIST[2]}.gz", "MNIST/raw/t10k-labels.idx1-ubyte.gz"])
    mirror.requests.clear()
    data.load("mnist", tmp_path, download=True, mirrors=[mirror.url("good")], verify="strict")
    assert mirror.requests == []


def test_corrupt_then_good_mirror_falls_back(tmp_path, mirror, tiny_mnist, refused_url, no_warnings, capfd):
    mirrors = [mirror.url("corrupt"), mirror.url("truncated"), mirror.url("missing"), refused_url,
               mirror.url("drop"), mirror.url("good")]
    ds = data.load("mnist", tmp_path, download=True, mirrors=mirrors, verify="strict")
    assert np.array_equal(ds.test_images[:, 0].numpy(), tiny_mnist[MNIST[2]])
    assert listing(tmp_path) == sorted(n + ".gz" for n in MNIST)
    per_file = [mode for mode, name in mirror.requests if name == MNIST[0] + ".gz"]
    assert per_file == ["corrupt", "truncated", "missing", "drop", "good"]      # in order, each one once
    err = capfd.readouterr().err
    assert "checksum mismatch" in err and "trying the next mirror" in err and "HTTP 404" in err


@pytest.mark.parametrize("mode, reason", [
    ("corrupt", "checksum mismatch"),
    ("truncated", "does not decompress"),
    ("missing", "HTTP 404 Not Found"),
    ("drop", "connection closed after"),
    ("reset", "connection"),
    ("stall", "timed out"),
    ("stallbody", "timed out"),
    ("refused", "connection refused"),
])
def test_only_failing_mirrors_give_one_clear_error_and_leave_nothing(tmp_path, mirror, tiny_mnist, refused_url,
                                                                     mode, reason):
    url = refused_url if mode == "refused" else mirror.url(mode)
    folder = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        data.fetch(MNIST[0] + ".gz", folder, [url], timeout=0.5, progress=False)
    err = info.value
    assert isinstance(err, DatasetNotFoundError) and isinstance(err, FileNotFoundError)
    assert [u for u, _ in err.failures] == [url + MNIST[0] + ".gz"]
    assert reason in err.failures[0][1], err.failures
    msg = str(err)
    assert f"{url}{MNIST[0]}.gz: {err.failures[0][1]}" in msg
    assert f"put it in {folder}" in msg and data.MD5[MNIST[0]] in msg   # where, and what, by hand
    assert not folder.exists() and listing(tmp_path) == []               # nothing left behind


def test_every_mirror_failure_is_listed(tmp_path, mirror, tiny_mnist, refused_url):
    mirrors = [mirror.url("corrupt"), mirror.url("missing").rstrip("/"), refused_url, mirror.url("drop")]
    with pytest.raises(DownloadError) as info:
        data.load("mnist", tmp_path, download=True, mirrors=mirrors)
    msg = str(info.value)
    lines = [line.strip() for line in msg.splitlines() if line.startswith("  ")]
    assert [line.split(": ", 1)[0] for line in lines] == [
        mirror.url("corrupt") + MNIST[0] + ".gz", mirror.url("missing") + MNIST[0] + ".gz",
        refused_url + MNIST[0] + ".gz", mirror.url("drop") + MNIST[0] + ".gz"]   # a "/" added where missing
    assert "checksum mismatch" in lines[0] and "HTTP 404" in lines[1] and "connection refused" in lines[2]
    assert "connection closed after" in lines[3] and "4 mirror(s)" in msg
    assert listing(tmp_path) == []


def test_interrupted_download_leaves_nothing(tmp_path, mirror, tiny_mnist, monkeypatch):
    class Interrupting(progress.Progress):
        def update(self, n=1, postfix=None):
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "Progress", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        data.fetch(MNIST[0] + ".gz", tmp_path, mirror.url("good"))
    assert listing(tmp_path) == []


def test_fetch_with_explicit_digest_replaces_a_bad_file_only_once_verified(tmp_path, mirror):
    mirror.files["notes.txt"] = b"hello, mirror\n" * 100
    digest = hashlib.md5(mirror.files["notes.txt"]).hexdigest()
    with pytest.raises(ValueError, match="no published md5"):
        data.fetch("notes.txt", tmp_path, mirror.url("good"))
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"stale")
    with pytest.raises(DownloadError):
        data.fetch("notes.txt", tmp_path, [mirror.url("corrupt")], md5=digest, progress=False)
    assert bad.read_bytes() == b"stale" and listing(tmp_path) == ["notes.txt"]  # untouched
    assert data.fetch("notes.txt", tmp_path, mirror.url("good"), md5=digest) == bad
    assert bad.read_bytes() == mirror.files["notes.txt"]
    mirror.requests.clear()
    data.fetch("notes.txt", tmp_path, mirror.url("good"), md5=digest)           # intact: not fetched again
    assert mirror.requests == []
    with pytest.raises(ValueError, match="mirrors is empty"):
        data.fetch("notes.txt", tmp_path, [], md5="0" * 32)


def test_plain_progress_line_without_tqdm(tmp_path, mirror, monkeypatch, capfd):
    monkeypatch.setattr(progress, "_tqdm", None)
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    mirror.files["blob"] = bytes(300_000)
    data.fetch("blob", tmp_path, mirror.url("good"), md5=hashlib.md5(bytes(300_000)).hexdigest())
    err = capfd.readouterr().err
    assert "blob: 65.5 kB/300.0 kB (22%)" in err and "ETA" in err and "B/s" in err
    assert "blob: 300.0 kB/300.0 kB (100%)" in err and "done in" in err


# ------------------------------------------------------------------------------------------------
# CIFAR-10 and tarballs


def test_cifar_download_extracts_and_keeps_the_tarball(tmp_path, mirror, tiny_cifar, no_warnings):
    ds = data.load("cifar10", tmp_path, download=True, mirrors=[mirror.url("corrupt"), mirror.url("good")],
                   verify="strict")
    assert np.array_equal(ds.test_images.numpy().reshape(2, 3072), tiny_cifar["test_batch"][0])
    assert ds.train_labels.tolist() == np.concatenate([tiny_cifar[n][1] for n in CIFAR[:5]]).tolist()
    assert listing(tmp_path) == sorted([TARBALL, "cifar-10-batches-py"] + [f"cifar-10-batches-py/{n}" for n in CIFAR])
    assert mirror.requests == [("corrupt", TARBALL), ("good", TARBALL)]
    mirror.requests.clear()
    again = data.load("cifar10", tmp_path, download=True, mirrors=[mirror.url("good")], verify="strict")
    assert torch.equal(again.train_images, ds.train_images) and mirror.requests == []
    # the batches gone, the tarball there: extracted again, not downloaded again
    for n in CIFAR:
        (tmp_path / "cifar-10-batches-py" / n).unlink()
    data.load("cifar10", tmp_path, download=True, mirrors=[mirror.url("good")], verify="strict")
    assert mirror.requests == []


def test_cifar_download_failure_leaves_nothing(tmp_path, mirror, tiny_cifar):
    with pytest.raises(DownloadError, match="cifar-10-python.tar.gz"):
        data.load("cifar10", tmp_path, download=True, mirrors=[mirror.url("truncated"), mirror.url("missing")])
    assert listing(tmp_path) == []


UNSAFE = {
    "dotdot": ([_member("cifar-10-batches-py/../../evil.txt", b"x")], "'..' component"),
    "absolute": ([_member("/tmp/fastconv-evil.txt", b"x")], "absolute path"),
    "symlink-out": ([_member("cifar-10-batches-py/link", type=tarfile.SYMTYPE, linkname="../../outside")],
                    "symbolic link pointing outside"),
    "symlink-absolute": ([_member("cifar-10-batches-py/link", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
                         "symbolic link to the absolute path"),
    "hardlink-out": ([_member("cifar-10-batches-py/hard", type=tarfile.LNKTYPE, linkname="../x")],
                     "hard link pointing outside"),
    "device": ([_member("cifar-10-batches-py/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)],
               "device file"),
}


@pytest.mark.parametrize("kind", list(UNSAFE))
def test_unsafe_tarball_is_refused_and_nothing_extracted(tmp_path, kind):
    extra, reason = UNSAFE[kind]
    members, _ = cifar_members(np.random.default_rng(2))
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / TARBALL).write_bytes(tarball_bytes(members[:3] + extra + members[3:]))  # the bad one in the middle
    with pytest.raises(UnsafeArchiveError, match=reason) as info:
        data.load("cifar10", dest)
    assert info.value.member == extra[0][0].name and "Nothing was extracted" in str(info.value)
    assert listing(tmp_path) == ["data", f"data/{TARBALL}"]
    assert not os.path.lexists("/tmp/fastconv-evil.txt")


def test_downloaded_unsafe_tarball_is_refused(tmp_path, mirror, monkeypatch):
    members, _ = cifar_members(np.random.default_rng(3))
    blob = tarball_bytes(members + [_member("../escape.txt", b"x")])
    mirror.files[TARBALL] = blob
    monkeypatch.setitem(data.MD5, TARBALL, hashlib.md5(blob).hexdigest())
    with pytest.raises(UnsafeArchiveError, match="'../escape.txt'"):
        data.load("cifar10", tmp_path / "data", download=True, mirrors=[mirror.url("good")])
    assert listing(tmp_path) == ["data", f"data/{TARBALL}"]


def test_links_inside_the_folder_are_extracted(tmp_path):
    members, _ = cifar_members(np.random.default_rng(4))
    members += [_member("cifar-10-batches-py/latest", type=tarfile.SYMTYPE, linkname="test_batch"),
                _member("cifar-10-batches-py/sub/up", type=tarfile.SYMTYPE, linkname="../data_batch_1")]
    (tmp_path / "t.tar.gz").write_bytes(tarball_bytes(members))
    data.extract_tarball(tmp_path / "t.tar.gz", tmp_path / "out")
    folder = tmp_path / "out" / "cifar-10-batches-py"
    assert os.readlink(folder / "latest") == "test_batch"
    assert (folder / "sub" / "up").read_bytes() == (folder / "data_batch_1").read_bytes()
    assert not any(p.name.endswith(".extract") for p in (tmp_path / "out").iterdir())

