"""CIFAR-10: a safe unpickler for its python batches (only the numpy names a batch contains) and
the loader of the six batches."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .archive import extract_tarball
from .dataset import Dataset
from .errors import DatasetFormatError, DatasetNotFoundError
from .files import _check_verify, _describe_dirs, _resolve_dir, _verify

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
"""Where ``download=True`` fetches :data:`CIFAR10_TARBALL` from (CIFAR-10's home page)."""
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = CIFAR10_TRAIN_FILES + ("test_batch",)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]


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


def _find_batches(dirs):
    """(the folder with the most batches, the batches missing there)."""
    best = max(dirs, key=lambda d: sum((d / f).is_file() for f in CIFAR10_FILES))
    return best, [f for f in CIFAR10_FILES if not (best / f).is_file()]


def load_cifar10(data_dir=None, *, verify: str = "warn", download: bool = False, mirrors=None) -> Dataset:
    """CIFAR-10 from its python batches in ``data_dir/cifar-10-batches-py/`` or ``data_dir``, or
    from the official ``cifar-10-python.tar.gz`` in ``data_dir``, which is then extracted there
    once (safely: see :mod:`fastconv.data.archive`; files already there are kept).

    ``download=True`` fetches the tarball from ``mirrors`` (URL prefixes; default
    :data:`CIFAR10_MIRRORS`) into ``data_dir`` when neither the batches nor the tarball are
    there; see :func:`fastconv.data.download.fetch`. ``verify``: see :func:`fastconv.data.load`.
    """
    _check_verify(verify)
    root = _resolve_dir(data_dir)
    dirs = [root / CIFAR10_FOLDER, root]
    best, missing = _find_batches(dirs)
    tarball = None
    if missing:
        places = [root] + ([root.parent] if root.name == CIFAR10_FOLDER else [])
        tarball = next((d / CIFAR10_TARBALL for d in places if (d / CIFAR10_TARBALL).is_file()), None)
        if tarball is None and download:
            from .download import fetch

            tarball = fetch(CIFAR10_TARBALL, root, CIFAR10_MIRRORS if mirrors is None else mirrors)
        if tarball is not None:
            extract_tarball(tarball, tarball.parent)
            best, missing = _find_batches(dirs)
    if missing:
        where = (f" {tarball} was extracted but holds no {', '.join(missing)}." if tarball else "")
        raise DatasetNotFoundError(
            f"CIFAR-10 not found: missing {', '.join(missing)}. Searched: {_describe_dirs(dirs)}."
            f"{where} Pass download=True (bench/train.py: --download) to fetch {CIFAR10_TARBALL} "
            f"from {CIFAR10_MIRRORS[0]}, or put it in {root} (it is extracted there), or the python "
            f"batches {', '.join(CIFAR10_FILES)} in {root / CIFAR10_FOLDER}/ (as the tarball "
            f"extracts, and torchvision's layout) or in {root}, or pass data_dir= (default: "
            "$FASTCONV_DATA, else ./data).",
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
