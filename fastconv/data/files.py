"""Dataset files on disk: the data folder, md5 verification against the published digests, and
reading a file's bytes (raw or gzipped)."""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
import warnings
import zlib
from pathlib import Path

from .errors import ChecksumError, ChecksumWarning, DatasetFormatError

DATA_DIR_ENV = "FASTCONV_DATA"
"""Environment variable naming the default data folder (used when ``data_dir`` is None)."""

MD5 = {
    # MNIST, gzipped as published (the raw files have no published md5 here and are not checked)
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    # CIFAR-10 python batches
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
"""Published md5 of the known distribution files, by file name."""

_VERIFY_MODES = ("warn", "strict", "off")


def _resolve_dir(data_dir) -> Path:
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or "data"
    return Path(data_dir).expanduser().resolve()


def _check_verify(verify):
    if verify not in _VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(map(repr, _VERIFY_MODES))}, got {verify!r}")


def _describe_dirs(dirs):
    return ", ".join(f"{d}" + ("" if d.is_dir() else " (does not exist)") for d in dirs)


# --------------------------------------------------------------------------------------------
# md5


_MD5_CACHE: dict = {}


def md5sum(path) -> str:
    """md5 hex digest of a file, computed once per process for a given (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _MD5_CACHE.get(key)
    if digest is None:
        h = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _MD5_CACHE[key] = h.hexdigest()
    return digest


def _verify(path: Path, verify: str):
    expected = MD5.get(path.name)
    if verify == "off" or expected is None:
        return
    actual = md5sum(path)
    if actual == expected:
        return
    msg = (f"{path}: md5 {actual} differs from the published {path.name} ({expected}). The file is "
           "not the official one: corrupted, truncated, or regenerated.")
    if verify == "strict":
        raise ChecksumError(msg + " (verify='strict'; pass verify='warn' or 'off' to read it anyway)")
    warnings.warn(msg + " Reading it anyway (verify='strict' makes this an error, verify='off' "
                  "skips the check).", ChecksumWarning, stacklevel=_caller_stacklevel())


_PACKAGE_DIR = os.path.dirname(__file__)


def _caller_stacklevel() -> int:
    """The warnings stacklevel of the first frame outside this package (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == _PACKAGE_DIR:
        frame, level = frame.f_back, level + 1
    return level


# --------------------------------------------------------------------------------------------
# reading


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetFormatError(f"{path}: cannot read it as a {'gzip ' if path.suffix == '.gz' else ''}"
                                 f"file ({type(exc).__name__}: {exc}); it is probably truncated or "
                                 "corrupted") from exc
