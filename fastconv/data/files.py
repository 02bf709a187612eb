"""Dataset files on disk: the data folder, md5 verification against the published digests, and
reading a file's bytes (raw or gzipped).

A file is recognised as genuine by the md5 of its **content**, decompressed when it is gzipped:
that is the digest published for MNIST's raw IDX files and CIFAR-10's batches, and it does not
change when a file is re-compressed (gzip headers hold a time stamp and a file name, so the bytes
of two gzips of one file differ). The md5 of the published ``.gz`` files is accepted as well.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
import warnings
import zlib
from pathlib import Path
from typing import Optional

from .errors import ChecksumError, ChecksumWarning, DatasetFormatError

DATA_DIR_ENV = "FASTCONV_DATA"
"""Environment variable naming the default data folder (used when ``data_dir`` is None)."""

MD5 = {
    # MNIST: the raw IDX files (the md5 of a gzipped file's decompressed content is compared with these)
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    # MNIST: the gzipped files as published (accepted as well)
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    # CIFAR-10: the python batches, and the tarball they are published in
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
}
"""Published md5 of the known distribution files, by standard file name: for a raw name the md5
of the content, for a ``.gz`` or ``.tar.gz`` name the md5 of the compressed file itself. The
loaders and the downloads look digests up here when they check a file."""

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


def _file_key(path: Path, kind: str):
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, kind)


def _md5_stream(f) -> str:
    h = hashlib.md5(usedforsecurity=False)
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def md5sum(path) -> str:
    """md5 hex digest of a file's bytes, computed once per process for a given (path, size, mtime)."""
    path = Path(path)
    key = _file_key(path, "file")
    digest = _MD5_CACHE.get(key)
    if digest is None:
        with open(path, "rb") as f:
            digest = _MD5_CACHE[key] = _md5_stream(f)
    return digest


def content_md5(path, content: Optional[bytes] = None) -> str:
    """md5 hex digest of a file's content: decompressed when the name ends in ``.gz`` (but not
    ``.tar.gz``: a tarball's digest is that of the file), else the file's bytes. ``content``: the
    content when the caller has read it already. Computed once per (path, size, mtime)."""
    path = Path(path)
    if not _is_gzip_name(path.name):
        return md5sum(path)
    key = _file_key(path, "content")
    digest = _MD5_CACHE.get(key)
    if digest is None:
        if content is not None:
            digest = hashlib.md5(content, usedforsecurity=False).hexdigest()
        else:
            try:
                with gzip.open(path, "rb") as f:
                    digest = _md5_stream(f)
            except (OSError, EOFError, zlib.error) as exc:
                raise _unreadable(path, exc) from exc
        _MD5_CACHE[key] = digest
    return digest


def _is_gzip_name(name: str) -> bool:
    return name.endswith(".gz") and not name.endswith(".tar.gz")


def _digest_problem(path: Path, standard: str, content: Optional[bytes] = None) -> Optional[str]:
    """None when ``path`` holds the published file ``standard`` (its standard raw name, or the
    tarball's name), or when no digest is known for it; else a sentence naming the expected and
    the found digests."""
    expected = MD5.get(standard)
    expected_gz = MD5.get(standard + ".gz") if _is_gzip_name(path.name) else None
    if expected is None and expected_gz is None:
        return None
    if expected_gz is not None and md5sum(path) == expected_gz:
        return None
    found = content_md5(path, content)
    if found == expected:
        return None
    if _is_gzip_name(path.name):
        msg = (f"{path}: the md5 of its decompressed content, {found}, differs from the published md5 "
               f"of {standard}, {expected}")
        if expected_gz is not None:
            msg += f" (nor is the file's own md5, {md5sum(path)}, the published {standard}.gz's, {expected_gz})"
    else:
        msg = f"{path}: md5 {found} differs from the published md5 of {standard}, {expected}"
    return msg + ". The file is not the official one: corrupted, truncated, or regenerated."


def _verify(path: Path, verify: str, standard: Optional[str] = None, content: Optional[bytes] = None):
    """Checks ``path`` against the published digest of ``standard`` (default: its own name, less
    a ``.gz``): a :class:`ChecksumWarning` (``verify="warn"``) or :class:`ChecksumError`
    (``"strict"``) on a mismatch, nothing with ``"off"``."""
    if verify == "off":
        return
    if standard is None:
        standard = path.name[:-3] if _is_gzip_name(path.name) else path.name
    msg = _digest_problem(path, standard, content)
    if msg is None:
        return
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


def _unreadable(path: Path, exc: BaseException) -> DatasetFormatError:
    kind = "gzip " if path.name.endswith(".gz") else ""
    return DatasetFormatError(f"{path}: cannot read it as a {kind}file ({type(exc).__name__}: {exc}); it "
                              "is probably truncated or corrupted (delete it; download=True fetches "
                              "it again)")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise _unreadable(path, exc) from exc
