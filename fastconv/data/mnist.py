"""MNIST: the IDX file format reader and the loader of the four MNIST files."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .dataset import Dataset
from .errors import DatasetFormatError, DatasetNotFoundError
from .files import _check_verify, _describe_dirs, _read_bytes, _resolve_dir, _verify

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
"""Where ``download=True`` fetches the gzipped MNIST files from, in this order (torchvision's)."""

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DIGIT_CLASSES = [str(i) for i in range(10)]


def _dotted(name: str) -> str:
    """The other common spelling of a file name: train-images-idx3-ubyte -> train-images.idx3-ubyte."""
    stem, kind, ext = name.rsplit("-", 2)
    return f"{stem}.{kind}-{ext}"


MNIST_NAMES = {key: (base, _dotted(base)) for key, base in MNIST_FILES.items()}
"""The accepted names of each file (standard dashed name first), each raw or with ``.gz``."""

IDX_UBYTE_3D = 0x00000803  # uint8, 3 dimensions: images
IDX_UBYTE_1D = 0x00000801  # uint8, 1 dimension: labels
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path, expected_magic: Optional[int] = None) -> np.ndarray:
    """Read an IDX file (raw, or gzipped when the name ends in ``.gz``) into a numpy array.

    Header: a big-endian int32 magic number 0x0000TTDD (TT the element type, 0x08 for uint8; DD
    the number of dimensions), then DD big-endian int32 sizes, then the data in C order. Raises
    :class:`DatasetFormatError` on a bad magic number (or one other than ``expected_magic``),
    a truncated file, or trailing bytes.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path, expected_magic)


def _parse_idx(raw: bytes, path: Path, expected_magic: Optional[int] = None) -> np.ndarray:
    if len(raw) < 4:
        raise DatasetFormatError(f"{path}: truncated IDX file: {len(raw)} bytes, not even the 4-byte "
                                 "magic number")
    magic = int.from_bytes(raw[:4], "big")
    type_code, ndim = raw[2], raw[3]
    what = {IDX_UBYTE_3D: "uint8 3-D: images", IDX_UBYTE_1D: "uint8 1-D: labels"}
    if raw[0] != 0 or raw[1] != 0 or type_code not in _IDX_DTYPES or ndim == 0 or (
            expected_magic is not None and magic != expected_magic):
        expect = (f"0x{expected_magic:08X} ({what.get(expected_magic, 'IDX')})"
                  if expected_magic is not None else "0x0000TTDD with TT an IDX type code")
        hint = ""
        if magic in what and expected_magic is not None:
            hint = f"; 0x{magic:08X} is {what[magic]}, so the file names may be swapped"
        elif raw[:2] == b"\x1f\x8b":
            hint = "; it starts like a gzip file: name it with a .gz suffix"
        raise DatasetFormatError(f"{path}: bad IDX magic number 0x{magic:08X}, expected {expect}"
                                 f"{hint}. Not an IDX file of the expected kind.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX file: the header declares {ndim} dimensions "
                                 f"({header} header bytes) but the file has {len(raw)} bytes")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    size = math.prod(dims) * dtype.itemsize
    have = len(raw) - header
    if have < size:
        raise DatasetFormatError(f"{path}: truncated IDX file: the header declares "
                                 f"{' x '.join(map(str, dims))} = {size} data bytes, the file has {have}")
    if have > size:
        raise DatasetFormatError(f"{path}: {have - size} bytes after the {' x '.join(map(str, dims))} "
                                 "data the header declares; not a valid IDX file")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _mnist_dirs(root: Path):
    dirs = [root, root / "MNIST" / "raw", root / "mnist"]
    if root.name == "MNIST":
        dirs.append(root / "raw")
    return dirs


def _find_mnist(root: Path):
    """({key: path}, [missing keys], [folders searched]): each file is taken from the first folder
    that has it under any accepted name, the gzipped file first (it is what downloads write)."""
    dirs = _mnist_dirs(root)
    found, missing = {}, []
    for key, names in MNIST_NAMES.items():
        candidates = [d / (n + sfx) for d in dirs for n in names for sfx in (".gz", "")]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            missing.append(key)
        else:
            found[key] = path
    return found, missing, dirs


def _download_mnist(root: Path, found: dict, missing: list, mirrors) -> None:
    """Fetches the missing files (gzipped) into the folder of those found, else into ``root``."""
    from .download import fetch

    folder = next(iter(found.values())).parent if found else root
    for key in missing:
        found[key] = fetch(MNIST_FILES[key] + ".gz", folder, MNIST_MIRRORS if mirrors is None else mirrors)


def load_mnist(data_dir=None, *, verify: str = "warn", download: bool = False, mirrors=None) -> Dataset:
    """MNIST from its four IDX files in ``data_dir``, ``data_dir/MNIST/raw/`` (torchvision's
    layout) or ``data_dir/mnist/``: dashed (``train-images-idx3-ubyte``) or dotted
    (``train-images.idx3-ubyte``) names, each raw or gzipped (``.gz``).

    ``download=True`` fetches the missing files from ``mirrors`` (URL prefixes; default
    :data:`MNIST_MIRRORS`) into the folder of the files found, else into ``data_dir``; see
    :func:`fastconv.data.download.fetch`. ``verify``: see :func:`fastconv.data.load`.
    """
    _check_verify(verify)
    root = _resolve_dir(data_dir)
    found, missing, dirs = _find_mnist(root)
    if missing and download:
        _download_mnist(root, found, missing, mirrors)
        missing = []
    if missing:
        gz = [MNIST_FILES[k] + ".gz" for k in MNIST_FILES]
        raise DatasetNotFoundError(
            f"MNIST not found: missing {', '.join(MNIST_FILES[k] + '[.gz]' for k in missing)}. "
            f"Searched: {_describe_dirs(dirs)}. Pass download=True (bench/train.py: --download) to "
            f"fetch them from {MNIST_MIRRORS[0]}, or put {', '.join(gz)} (gzipped or not; the dotted "
            f"names such as {_dotted(MNIST_FILES['train_images'])} work too) in {root}, "
            f"{root / 'MNIST' / 'raw'}/ (torchvision's layout) or {root / 'mnist'}/, or pass "
            "data_dir= (default: $FASTCONV_DATA, else ./data). For a quick stand-in that is not "
            "MNIST, use load('synthetic').",
            missing=[MNIST_FILES[k] + "[.gz]" for k in missing], searched=[str(d) for d in dirs])
    arrays = {}
    for key, path in found.items():
        raw = _read_bytes(path)
        _verify(path, verify, MNIST_FILES[key], raw)
        arrays[key] = _parse_idx(raw, path, IDX_UBYTE_3D if key.endswith("images") else IDX_UBYTE_1D)
        del raw
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(x) != len(y):
            raise DatasetFormatError(f"MNIST {split}: {len(x)} images ({found[split + '_images']}) but "
                                     f"{len(y)} labels ({found[split + '_labels']})")
        if y.size and y.max() > 9:
            raise DatasetFormatError(f"{found[split + '_labels']}: label {int(y.max())} is not a digit")
    folders = sorted({str(p.parent) for p in found.values()})
    return Dataset(
        name="MNIST",
        train_images=torch.from_numpy(arrays["train_images"]).unsqueeze(1),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"]).unsqueeze(1),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        classes=list(DIGIT_CLASSES), synthetic=False, source=", ".join(folders))
