"""Datasets for fastconv's reference nets: MNIST and CIFAR-10 from local files, or synthetic digits.

fastconv never downloads anything. The loaders read the standard distribution files from a local
folder and raise :class:`DatasetNotFoundError` (a ``FileNotFoundError``) saying which files go
where when they are absent. With no dataset at hand, ``load("synthetic")`` generates a stand-in:
procedurally drawn digits, 28 x 28 grayscale like MNIST but **not MNIST** (its ``name`` says so,
``synthetic`` is True and ``describe()`` says SYNTHETIC), so that examples and benchmarks can run
end to end anywhere.

    from fastconv import data
    ds = data.load("mnist", "~/datasets")            # or "cifar10", or "synthetic"
    print(ds.describe())
    train_loader, test_loader = ds.loaders(batch_size=128)

Files read:

* MNIST: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each raw or gzipped (``.gz``), in ``data_dir`` or in torchvision's
  layout ``data_dir/MNIST/raw/``. The IDX format is parsed here (:func:`read_idx`).
* CIFAR-10: the python batches ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` in
  ``data_dir/cifar-10-batches-py/`` (torchvision's layout, the folder the official tarball
  extracts to) or in ``data_dir`` itself. They are pickles; they are read with an unpickler that
  only accepts the few numpy names such a batch contains, so a foreign pickle cannot run code.

Files with a published md5 (the gzipped MNIST files and the CIFAR-10 batches) are checked once per
file and process: a mismatch is a :class:`ChecksumWarning` by default (the file may have been
regenerated on purpose), an error with ``verify="strict"``, and not looked at with ``verify="off"``.

Every loader returns a :class:`Dataset`: uint8 images N x C x H x W, int64 labels, class names,
per-channel mean / std of the training images (on the [0, 1] scale), and helpers that give
normalised float32 tensors, ``TensorDataset`` s and ``DataLoader`` s.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import pickle
import sys
import warnings
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "Dataset", "load", "load_mnist", "load_cifar10", "synthetic_digits", "generate_digits",
    "read_idx", "md5sum", "DatasetNotFoundError", "DatasetFormatError", "ChecksumError",
    "ChecksumWarning", "NAMES", "MNIST_FILES", "CIFAR10_FILES", "MD5", "DATA_DIR_ENV",
]

NAMES = ("mnist", "cifar10", "synthetic")
DATA_DIR_ENV = "FASTCONV_DATA"
"""Environment variable naming the default data folder (used when ``data_dir`` is None)."""

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = CIFAR10_TRAIN_FILES + ("test_batch",)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]
DIGIT_CLASSES = [str(i) for i in range(10)]

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

IDX_UBYTE_3D = 0x00000803  # uint8, 3 dimensions: images
IDX_UBYTE_1D = 0x00000801  # uint8, 1 dimension: labels
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_VERIFY_MODES = ("warn", "strict", "off")


# --------------------------------------------------------------------------------------------
# errors


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not in the folders searched. ``missing``: the file names (with
    the accepted variants), ``searched``: the folders looked in."""

    def __init__(self, message: str, missing: Sequence[str] = (), searched: Sequence[str] = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.searched = list(searched)

    def __str__(self):  # FileNotFoundError's own __str__ would show "[Errno ...]" forms
        return self.args[0]


class DatasetFormatError(ValueError):
    """A dataset file is not what its name says: bad magic number, truncated, wrong shape..."""


class ChecksumError(ValueError):
    """A known file's md5 differs from the published one (``verify="strict"``)."""


class ChecksumWarning(UserWarning):
    """A known file's md5 differs from the published one (``verify="warn"``, the default)."""


# --------------------------------------------------------------------------------------------
# the common return type


@dataclasses.dataclass
class Dataset:
    """An image-classification dataset held in memory as tensors.

    ``train_images`` / ``test_images``: N x C x H x W, uint8 (0..255) or floating point (0..1).
    ``train_labels`` / ``test_labels``: int64 class indices into ``classes``.
    ``mean`` / ``std``: per-channel statistics of the *training* images on the [0, 1] scale,
    computed on construction when not given; :meth:`normalize` uses them.
    ``synthetic``: True for generated data that only stands in for a real dataset.
    ``source``: where the data came from (folder read, or generator and seed).
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list
    synthetic: bool = False
    source: str = ""
    mean: Optional[tuple] = None
    std: Optional[tuple] = None

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dim() != 4:
                raise ValueError(f"{split}_images must be N x C x H x W, got shape {tuple(x.shape)}")
            if y.shape != (x.shape[0],) or y.dtype != torch.int64:
                raise ValueError(f"{split}_labels must be int64 of shape ({x.shape[0]},), got "
                                 f"{y.dtype} of shape {tuple(y.shape)}")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(f"train and test images differ in shape: {tuple(self.train_images.shape)}"
                             f" vs {tuple(self.test_images.shape)}")
        if self.mean is None or self.std is None:
            self.mean, self.std = _channel_stats(self.train_images)
        self.mean, self.std = tuple(map(float, self.mean)), tuple(map(float, self.std))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple:
        """(C, H, W)"""
        return tuple(self.train_images.shape[1:])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """float32 ``(images / 255 - mean) / std`` per channel (no / 255 for float images)."""
        x = images.to(torch.float32)
        if not images.dtype.is_floating_point:
            x = x / 255.0
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return (x - mean) / std

    def normalized(self, split: str = "train") -> tuple:
        """(images, labels) of ``split`` ("train" or "test"), images normalised float32."""
        x, y = self._split(split)
        return self.normalize(x), y

    def tensors(self) -> tuple:
        """(train_images, train_labels, test_images, test_labels), images normalised float32."""
        return (*self.normalized("train"), *self.normalized("test"))

    def tensor_dataset(self, split: str = "train", normalize: bool = True) -> TensorDataset:
        """A ``torch.utils.data.TensorDataset`` of (image, label) pairs of ``split``; images are
        normalised float32 when ``normalize``, else as stored."""
        x, y = self.normalized(split) if normalize else self._split(split)
        return TensorDataset(x, y)

    def loaders(self, batch_size: int = 128, *, normalize: bool = True, shuffle: bool = True,
                seed: int = 0, drop_last: bool = False, test_batch_size: Optional[int] = None,
                num_workers: int = 0) -> tuple:
        """(train_loader, test_loader): ``DataLoader`` s over :meth:`tensor_dataset`.

        The training loader reshuffles every epoch (if ``shuffle``) from a generator seeded with
        ``seed``, so a run is reproducible; the test loader keeps the order.
        """
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(self.tensor_dataset("train", normalize), batch_size=batch_size,
                           shuffle=shuffle, generator=generator, drop_last=drop_last,
                           num_workers=num_workers)
        test = DataLoader(self.tensor_dataset("test", normalize),
                          batch_size=test_batch_size or batch_size, shuffle=False,
                          num_workers=num_workers)
        return train, test

    def subset(self, train_size: Optional[int] = None, test_size: Optional[int] = None,
               seed: int = 0) -> "Dataset":
        """A random subset (deterministic by ``seed``, kept in the original order); mean and std
        are recomputed on the training subset."""
        gen = torch.Generator().manual_seed(seed)
        xtr, ytr = _take(self.train_images, self.train_labels, train_size, gen, "train_size")
        xte, yte = _take(self.test_images, self.test_labels, test_size, gen, "test_size")
        if xtr is self.train_images:
            mean, std = self.mean, self.std
        else:
            mean, std = None, None
        source = self.source
        if xtr is not self.train_images or xte is not self.test_images:
            source += f" [subset: {len(ytr)} train / {len(yte)} test, seed={seed}]"
        return dataclasses.replace(self, train_images=xtr, train_labels=ytr, test_images=xte,
                                   test_labels=yte, source=source, mean=mean, std=std)

    def describe(self) -> str:
        """A few lines saying what this dataset is (loaders print nothing themselves)."""
        c, h, w = self.image_shape
        lines = []
        if self.synthetic:
            lines.append(f"SYNTHETIC DATA: {self.name}. Procedurally generated stand-in, NOT a real "
                         "dataset: accuracies on it say nothing about MNIST or CIFAR-10.")
        else:
            lines.append(f"{self.name}")
        lines.append(f"  source: {self.source}")
        lines.append(f"  train: {len(self.train_labels)} images, test: {len(self.test_labels)} images,"
                     f" {c} x {h} x {w} {str(self.train_images.dtype).replace('torch.', '')}")
        lines.append(f"  classes ({self.num_classes}): {', '.join(self.classes)}")
        fmt = lambda v: "(" + ", ".join(f"{x:.4f}" for x in v) + ")"  # noqa: E731
        lines.append(f"  train mean {fmt(self.mean)}, std {fmt(self.std)} (per channel, [0, 1] scale)")
        return "\n".join(lines)

    def _split(self, split):
        if split == "train":
            return self.train_images, self.train_labels
        if split == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _channel_stats(images: torch.Tensor) -> tuple:
    """Per-channel mean and (population) std on the [0, 1] scale (exact integer sums for uint8)."""
    n, c = images.shape[:2]
    if n == 0:
        raise ValueError("cannot compute mean/std of an empty training set")
    integer = not images.dtype.is_floating_point
    acc = torch.int64 if integer else torch.float64
    s = torch.zeros(c, dtype=acc)
    s2 = torch.zeros(c, dtype=acc)
    for i in range(0, n, 1024):
        x = images[i:i + 1024].transpose(0, 1).reshape(c, -1).to(torch.int32 if integer else acc)
        s += x.sum(1, dtype=acc)
        s2 += (x * x).sum(1, dtype=acc)
    count = n * images[0, 0].numel()
    mean = s.double() / count
    var = (s2.double() / count - mean * mean).clamp_min(0)
    scale = 255.0 if integer else 1.0
    return tuple((mean / scale).tolist()), tuple((var.sqrt() / scale).tolist())


def _take(images, labels, size, gen, what):
    n = len(labels)
    if size is None or size == n:
        return images, labels
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= n:
        raise ValueError(f"{what} must be an int in 1..{n} (the available images), got {size!r}")
    idx = torch.randperm(n, generator=gen)[:size].sort().values
    return images[idx], labels[idx]


# --------------------------------------------------------------------------------------------
# top level


def load(name: str, data_dir=None, *, train_size: Optional[int] = None,
         test_size: Optional[int] = None, seed: int = 0, verify: str = "warn") -> Dataset:
    """Load dataset ``name``: "mnist", "cifar10" or "synthetic".

    ``data_dir``: the folder holding the files (see the module docstring for the layouts); None
    means ``$FASTCONV_DATA`` if set, else ``./data``. Ignored for "synthetic".
    ``train_size`` / ``test_size``: keep a random subset of that many images (deterministic by
    ``seed``) for quick runs. For "synthetic" they are the numbers of images generated (default
    60000 / 10000) and ``seed`` seeds the generator.
    ``verify``: md5 check of known files, "warn" (default), "strict" (mismatch is an error) or
    "off".
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "mnist":
        return load_mnist(data_dir, verify=verify).subset(train_size, test_size, seed)
    if key in ("cifar10", "cifar"):
        return load_cifar10(data_dir, verify=verify).subset(train_size, test_size, seed)
    if key in ("synthetic", "syntheticdigits", "synth"):
        return synthetic_digits(60000 if train_size is None else train_size,
                                10000 if test_size is None else test_size, seed=seed)
    raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(NAMES)}")


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


def _caller_stacklevel() -> int:
    """The warnings stacklevel of the first frame outside this module (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


# --------------------------------------------------------------------------------------------
# MNIST


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


# --------------------------------------------------------------------------------------------
# CIFAR-10


def _numpy_globals():
    a = np.zeros(1, np.uint8)
    reconstruct = a.__reduce__()[0]
    frombuffer = a.__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    import _codecs  # protocol-2 pickles written by Python 3 encode bytes through _codecs.encode
    allowed[("_codecs", "encode")] = _codecs.encode
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """pickle.Unpickler(f, encoding="bytes") that resolves only the numpy names a CIFAR batch
    uses: unpickling a foreign file can therefore not call arbitrary functions."""

    _allowed = None

    def find_class(self, module, name):
        if _BatchUnpickler._allowed is None:
            _BatchUnpickler._allowed = _numpy_globals()
        try:
            return _BatchUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 "
                                         "batch") from None


def _read_cifar_batch(path: Path):
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError...: not a valid batch
        raise DatasetFormatError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
                                 "truncated or corrupted?") from exc
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{path}: not a CIFAR-10 python batch (a pickled {type(d).__name__}, "
                                 "expected a dict)")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DatasetFormatError(f"{path}: CIFAR-10 batch without b'data' and b'labels' entries "
                                 f"(keys: {sorted(map(repr, d))})")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetFormatError(f"{path}: b'data' must be uint8 N x 3072, got {data.dtype} "
                                 f"{' x '.join(map(str, data.shape))}")
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetFormatError(f"{path}: labels outside 0..9")
    # each row: 1024 red values, then 1024 green, then 1024 blue, each plane row-major 32 x 32
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir=None, *, verify: str = "warn") -> Dataset:
    """CIFAR-10 from its python batches in ``data_dir/cifar-10-batches-py/`` or ``data_dir``."""
    _check_verify(verify)
    root = _resolve_dir(data_dir)
    dirs = [root / CIFAR10_FOLDER, root]
    best = max(dirs, key=lambda d: sum((d / f).is_file() for f in CIFAR10_FILES))
    missing = [f for f in CIFAR10_FILES if not (best / f).is_file()]
    if missing:
        tarball = next((d / "cifar-10-python.tar.gz" for d in dirs
                        if (d / "cifar-10-python.tar.gz").is_file()), None)
        hint = (f" {tarball} is there: extract it (tar xzf {tarball.name} -C {tarball.parent})."
                if tarball else "")
        raise DatasetNotFoundError(
            f"CIFAR-10 not found: missing {', '.join(missing)}. Searched: {_describe_dirs(dirs)}."
            f"{hint} fastconv never downloads anything: put the python batches "
            f"{', '.join(CIFAR10_FILES)} in {root / CIFAR10_FOLDER}/ (as the official "
            f"cifar-10-python.tar.gz extracts, and torchvision's layout) or in {root}, or pass "
            "data_dir= (default: $FASTCONV_DATA, else ./data).",
            missing=missing, searched=[str(d) for d in dirs])
    parts = {}
    for f in CIFAR10_FILES:
        _verify(best / f, verify)
        parts[f] = _read_cifar_batch(best / f)
    train_x = np.concatenate([parts[f][0] for f in CIFAR10_TRAIN_FILES])
    train_y = np.concatenate([parts[f][1] for f in CIFAR10_TRAIN_FILES])
    test_x, test_y = parts["test_batch"]
    return Dataset(
        name="CIFAR-10",
        train_images=torch.from_numpy(np.ascontiguousarray(train_x)),
        train_labels=torch.from_numpy(train_y),
        test_images=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_labels=torch.from_numpy(test_y),
        classes=list(CIFAR10_CLASSES), synthetic=False, source=str(best))


# --------------------------------------------------------------------------------------------
# synthetic digits
#
# Each digit class has one or more hand-designed skeletons: strokes (polylines and elliptic arcs)
# in a unit box, x to the right, y downwards, the digit spanning about [-0.3, 0.3] x [-0.45, 0.45].
# An image is one skeleton put through, in order: a smooth random warp (a sum of two random
# sinusoids per axis: the control points move coherently, strokes stay smooth), a small random
# shift per stroke (strokes no longer meet exactly), an affine map (rotation, anisotropic scale,
# shear, translation) to pixels, then rasterised as the distance from each pixel centre to the
# nearest segment, turned into ink with a random stroke radius and an anti-aliased edge of random
# softness, a random ink intensity, sometimes a short stray stroke, and Gaussian pixel noise.


def _arc(cx, cy, rx, ry, t0, t1, n=None):
    """Points of an elliptic arc from angle t0 to t1 (degrees; 0 = right, 90 = down)."""
    if n is None:
        n = max(3, int(math.ceil(abs(t1 - t0) / 24.0)))
    t = np.radians(np.linspace(t0, t1, n + 1))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _line(*points):
    return np.array(points, dtype=np.float64)


def _skeletons():
    """{digit: [variant, ...]}, a variant being a list of strokes (k x 2 point arrays)."""
    L, A = _line, _arc
    return {
        0: [[A(0, 0, 0.27, 0.45, -90, 270, 16)],
            [A(0, 0, 0.25, 0.45, -120, 265, 16)]],
        1: [[L((0.0, -0.45), (0.0, 0.45))],
            [L((-0.15, -0.28), (0.03, -0.45), (0.03, 0.45))],
            [L((-0.15, -0.28), (0.03, -0.45), (0.03, 0.45)), L((-0.12, 0.45), (0.18, 0.45))]],
        2: [[np.concatenate([A(0, -0.2, 0.25, 0.25, 195, 375, 8),
                             L((0.2, 0.0), (-0.27, 0.45), (0.28, 0.45))])],
            [np.concatenate([A(0, -0.2, 0.25, 0.25, 195, 390, 8), L((-0.26, 0.45), (0.28, 0.45))])]],
        3: [[A(0, -0.22, 0.23, 0.23, 200, 450, 10), A(0, 0.22, 0.26, 0.23, 270, 520, 10)],
            [L((-0.25, -0.45), (0.25, -0.45), (-0.02, -0.05)), A(0, 0.2, 0.26, 0.25, 270, 510, 10)]],
        4: [[L((0.12, -0.45), (-0.28, 0.17), (0.3, 0.17)), L((0.12, -0.45), (0.12, 0.45))],
            [L((-0.22, -0.45), (-0.24, 0.12), (0.3, 0.12)), L((0.14, -0.3), (0.14, 0.45))]],
        5: [[L((0.25, -0.45), (-0.18, -0.45), (-0.22, -0.05)),
             A(0, 0.18, 0.26, 0.27, 230, 510, 10)],
            [L((-0.18, -0.45), (-0.22, -0.05)), L((-0.18, -0.45), (0.25, -0.45)),
             A(0, 0.18, 0.26, 0.27, 230, 500, 10)]],
        6: [[np.concatenate([A(0.22, 0.15, 0.45, 0.6, 260, 180, 6), A(0, 0.2, 0.23, 0.24, 180, 540, 12)])],
            [L((0.18, -0.45), (-0.2, 0.1)), A(0, 0.2, 0.23, 0.24, 0, 360, 12)]],
        7: [[L((-0.27, -0.45), (0.28, -0.45), (-0.05, 0.45))],
            [L((-0.27, -0.45), (0.28, -0.45), (-0.05, 0.45)), L((-0.08, 0.0), (0.22, 0.0))],
            [L((-0.27, -0.35), (-0.27, -0.45), (0.28, -0.45), (0.02, 0.45))]],
        8: [[A(0, -0.23, 0.2, 0.21, 0, 360, 12), A(0, 0.22, 0.25, 0.24, 0, 360, 12)],
            [np.concatenate([A(0, -0.23, 0.2, 0.21, 90, 450, 12)[:-1],
                             A(0, 0.22, 0.25, 0.24, 270, -90, 12)])]],
        9: [[A(0, -0.2, 0.24, 0.24, 0, 360, 12), L((0.24, -0.2), (0.12, 0.45))],
            [np.concatenate([A(0, -0.2, 0.24, 0.24, 0, 360, 12), A(-0.25, -0.2, 0.49, 0.65, 0, 80, 5)])]],
    }


class _Variant:
    def __init__(self, strokes):
        self.points = np.concatenate(strokes)  # P x 2
        self.stroke = np.concatenate([np.full(len(s), i) for i, s in enumerate(strokes)])
        starts = np.cumsum([0] + [len(s) for s in strokes])
        self.segments = np.array([(starts[i] + j, starts[i] + j + 1)
                                  for i, s in enumerate(strokes) for j in range(len(s) - 1)])


_BLOCK = 1000          # images per independently seeded block
_RENDER_CHUNK = 8      # images rasterised at once (keeps the B x S x 28 x 28 temporaries in cache)
_SIZE = 28


# [digit][variant] -> _Variant; segments of an image are padded to _MAX_SEGMENTS
_VARIANTS = [[_Variant(v) for v in variants] for _, variants in sorted(_skeletons().items())]
_MAX_SEGMENTS = max(len(v.segments) for vs in _VARIANTS for v in vs)
_MAX_STROKES = max(int(v.stroke.max()) + 1 for vs in _VARIANTS for v in vs)


def _block_segments(labels: np.ndarray, rng: np.random.Generator) -> tuple:
    """Random parameters of a block of images and their segments in pixel coordinates.

    Every parameter is drawn for the whole block in a fixed order whatever ``labels`` holds
    beyond its length, so image i depends only on the block's seed and its index.
    """
    variants = _VARIANTS
    n = _BLOCK
    k = 2  # sinusoids per axis of the warp
    # every draw has a fixed shape: the first len(labels) rows are used
    variant_u = rng.random(n)
    warp_freq = rng.normal(0.0, 2.5, (n, 2, k, 2))
    warp_phase = rng.uniform(0, 2 * np.pi, (n, 2, k))
    warp_amp = rng.uniform(0.0, 0.045, (n, 2, k))
    stroke_shift = rng.normal(0.0, 0.025, (n, _MAX_STROKES, 2))
    rotation = np.clip(rng.normal(0.0, 0.17, n), -0.35, 0.35)          # radians
    scale = rng.uniform(17.0, 23.0, n)                                  # pixels per unit
    aspect = np.exp(rng.normal(0.0, 0.12, n))
    shear = np.clip(rng.normal(0.0, 0.18, n), -0.45, 0.45)
    shift = rng.uniform(-2.5, 2.5, (n, 2))
    radius = rng.uniform(0.7, 2.0, n)                                    # stroke half-width, px
    softness = rng.uniform(0.6, 1.6, n)                                  # edge width, px
    ink = rng.uniform(0.65, 1.0, n)
    noise = rng.uniform(0.0, 0.12, n)
    stray = rng.random(n) < 0.12
    stray_seg = np.concatenate([rng.uniform(3, 25, (n, 2)), rng.normal(0, 3.5, (n, 2))], 1)
    pixel_noise = rng.standard_normal((n, _SIZE, _SIZE), dtype=np.float32)

    m = len(labels)
    segs = np.empty((m, _MAX_SEGMENTS + 1, 4))
    chosen = np.empty(m, dtype=np.int64)
    for d in range(10):
        chosen[labels == d] = np.floor(variant_u[:m][labels == d] * len(variants[d])).astype(np.int64)
    for d in range(10):
        for vi, var in enumerate(variants[d]):
            idx = np.nonzero((labels == d) & (chosen == vi))[0]
            if idx.size == 0:
                continue
            p = np.broadcast_to(var.points, (idx.size,) + var.points.shape).copy()  # G x P x 2
            # smooth warp: displacement_a(p) = sum_k amp * sin(freq . p + phase)
            arg = np.einsum("gakc,gpc->gakp", warp_freq[idx], p) + warp_phase[idx][..., None]
            p = p + np.einsum("gak,gakp->gpa", warp_amp[idx], np.sin(arg))
            p = p + stroke_shift[idx][:, var.stroke]
            # affine: shear x by y, anisotropic scale, rotation, then to pixel coordinates
            x = p[..., 0] + shear[idx, None] * p[..., 1]
            y = p[..., 1]
            sx = (scale[idx] * aspect[idx])[:, None]
            sy = (scale[idx] / aspect[idx])[:, None]
            c, s = np.cos(rotation[idx])[:, None], np.sin(rotation[idx])[:, None]
            px = c * sx * x - s * sy * y + (_SIZE - 1) / 2 + shift[idx, 0, None]
            py = s * sx * x + c * sy * y + (_SIZE - 1) / 2 + shift[idx, 1, None]
            q = np.stack([px, py], -1)
            seg = np.concatenate([q[:, var.segments[:, 0]], q[:, var.segments[:, 1]]], -1)  # G x S x 4
            pad = _MAX_SEGMENTS - seg.shape[1]
            if pad:  # repeat the last segment: the distance to the nearest one is unchanged
                seg = np.concatenate([seg, np.repeat(seg[:, -1:], pad, 1)], 1)
            segs[idx, :_MAX_SEGMENTS] = seg
    # the extra slot: a short stray stroke, or a copy of segment 0
    sx0, sy0 = stray_seg[:m, 0], stray_seg[:m, 1]
    stray_xy = np.stack([sx0, sy0, sx0 + stray_seg[:m, 2], sy0 + stray_seg[:m, 3]], 1)
    segs[:, -1] = np.where(stray[:m, None], stray_xy, segs[:, 0])
    params = np.stack([radius, softness, ink, noise], 1)[:m]
    return segs, params, pixel_noise[:m]


def _rasterise(segs: np.ndarray, params: np.ndarray, pixel_noise: np.ndarray) -> np.ndarray:
    """uint8 m x 28 x 28 images of segments (m x S x 4: x0, y0, x1, y1 in pixels).

    numpy on one core, on purpose: as fast here as torch on one thread, and unlike torch's
    thread pool it does not slow down many times over when other processes busy the cores.
    """
    f32 = np.float32
    s = segs.astype(f32)
    x0, y0 = s[..., 0], s[..., 1]
    dx, dy = s[..., 2] - x0, s[..., 3] - y0
    length = np.sqrt(dx * dx + dy * dy)
    nz = length > 1e-6
    safe = np.maximum(length, f32(1e-6))
    ux = np.where(nz, dx / safe, f32(1))                  # unit direction (1, 0) for a dot
    uy = np.where(nz, dy / safe, f32(0))
    half = f32(0.5) * length
    # along: position along the segment measured from its midpoint; across: perpendicular
    along_c = x0 * ux + y0 * uy + half
    across_c = y0 * ux - x0 * uy
    gx = np.arange(_SIZE, dtype=f32).reshape(1, 1, 1, _SIZE)
    gy = gx.reshape(1, 1, _SIZE, 1)
    prm = params.astype(f32)
    out = np.empty((len(s), _SIZE, _SIZE), np.uint8)
    for i in range(0, len(s), _RENDER_CHUNK):
        c = slice(i, i + _RENDER_CHUNK)
        ux4, uy4 = ux[c, :, None, None], uy[c, :, None, None]
        along = gx * ux4 + (gy * uy4 - along_c[c, :, None, None])     # B x S x 28 x 28
        across = gy * ux4 - (gx * uy4 + across_c[c, :, None, None])
        np.abs(along, out=along)
        along -= half[c, :, None, None]
        np.maximum(along, 0, out=along)                   # distance past the nearer end
        along *= along
        across *= across
        along += across
        dist = np.sqrt(along.min(1))                      # B x 28 x 28, to the nearest segment
        radius, softness, ink, noise = (prm[c, j, None, None] for j in range(4))
        img = (radius - dist) / softness + f32(0.5)       # anti-aliased edge
        np.clip(img, 0, 1, out=img)
        img *= ink
        img += pixel_noise[c] * noise
        img *= 255
        np.rint(img, out=img)
        np.clip(img, 0, 255, out=img)
        out[c] = img
    return out


def generate_digits(n: int, seed: int = 0, split: str = "train") -> tuple:
    """``n`` synthetic digit images (uint8 n x 1 x 28 x 28) and labels (int64), SYNTHETIC, not MNIST.

    Deterministic by (seed, split) on a given numpy/torch installation. Images come in independently
    seeded blocks of 1000, so the first k images of a larger set are the set of size k. Every 10
    consecutive labels are the 10 classes in a random order: the classes are balanced exactly
    whenever n is a multiple of 10.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    images = np.empty((n, 1, _SIZE, _SIZE), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    split_id = ("train", "test").index(split)

    for b, start in enumerate(range(0, n, _BLOCK)):
        m = min(_BLOCK, n - start)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), split_id, b]))
        block_labels = rng.permuted(np.tile(np.arange(10), (_BLOCK // 10, 1)), axis=1).reshape(-1)
        segs, params, pixel_noise = _block_segments(block_labels[:m], rng)
        images[start:start + m, 0] = _rasterise(segs, params, pixel_noise)
        labels[start:start + m] = block_labels[:m]
    return torch.from_numpy(images), torch.from_numpy(labels)


def synthetic_digits(train_size: int = 60000, test_size: int = 10000, seed: int = 0) -> Dataset:
    """The SYNTHETIC digits dataset (NOT MNIST): MNIST-shaped stand-in generated from ``seed``.

    Train and test images come from independent streams of the same generator. Generation runs on
    one core: about 5 s for the default 60,000 + 10,000 images.
    """
    for what, v in (("train_size", train_size), ("test_size", test_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{what} must be a positive int, got {v!r}")
    train_x, train_y = generate_digits(train_size, seed, "train")
    test_x, test_y = generate_digits(test_size, seed, "test")
    return Dataset(
        name="synthetic-digits (NOT MNIST)", train_images=train_x, train_labels=train_y,
        test_images=test_x, test_labels=test_y, classes=list(DIGIT_CLASSES), synthetic=True,
        source=f"generated by fastconv.data.synthetic_digits(seed={seed}): procedurally drawn digits, "
               "not real handwriting")
