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

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DIGIT_CLASSES = [str(i) for i in range(10)]

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
    raw = _read_bytes(path)
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


def _find_mnist(root: Path):
    dirs = [root, root / "MNIST" / "raw"]
    if root.name == "MNIST":
        dirs.append(root / "raw")
    found, missing = {}, []
    for key, base in MNIST_FILES.items():
        path = None
        for d in dirs:
            # prefer the gzipped file when both are there: it is the one with a published md5
            for candidate in (d / (base + ".gz"), d / base):
                if candidate.is_file():
                    path = candidate
                    break
            if path:
                break
        if path is None:
            missing.append(base)
        else:
            found[key] = path
    return found, missing, dirs


def load_mnist(data_dir=None, *, verify: str = "warn") -> Dataset:
    """MNIST from its four IDX files (raw or .gz) in ``data_dir`` or ``data_dir/MNIST/raw/``."""
    _check_verify(verify)
    root = _resolve_dir(data_dir)
    found, missing, dirs = _find_mnist(root)
    if missing:
        names = [MNIST_FILES[k] + ".gz" for k in MNIST_FILES]
        raise DatasetNotFoundError(
            f"MNIST not found: missing {', '.join(f'{m}[.gz]' for m in missing)}. "
            f"Searched: {_describe_dirs(dirs)}. fastconv never downloads anything: put "
            f"{', '.join(names)} (gzipped or not) in {root} or {root / 'MNIST' / 'raw'}/ "
            "(torchvision's layout), or pass data_dir= (default: $FASTCONV_DATA, else ./data). "
            "For a quick stand-in that is not MNIST, use load('synthetic').",
            missing=[m + "[.gz]" for m in missing], searched=[str(d) for d in dirs])
    arrays = {}
    for key, path in found.items():
        _verify(path, verify)
        arrays[key] = read_idx(path, IDX_UBYTE_3D if key.endswith("images") else IDX_UBYTE_1D)
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
