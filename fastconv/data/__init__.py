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

from typing import Optional

from .cifar10 import CIFAR10_CLASSES, CIFAR10_FILES, CIFAR10_FOLDER, CIFAR10_TRAIN_FILES, load_cifar10
from .dataset import Dataset
from .errors import ChecksumError, ChecksumWarning, DatasetFormatError, DatasetNotFoundError
from .files import DATA_DIR_ENV, MD5, md5sum
from .mnist import DIGIT_CLASSES, IDX_UBYTE_1D, IDX_UBYTE_3D, MNIST_FILES, load_mnist, read_idx
from .synthetic import generate_digits, synthetic_digits

__all__ = [
    "Dataset", "load", "load_mnist", "load_cifar10", "synthetic_digits", "generate_digits",
    "read_idx", "md5sum", "DatasetNotFoundError", "DatasetFormatError", "ChecksumError",
    "ChecksumWarning", "NAMES", "MNIST_FILES", "CIFAR10_FILES", "MD5", "DATA_DIR_ENV",
]

NAMES = ("mnist", "cifar10", "synthetic")

# tracebacks and pickles name the errors where users import them from
for _cls in (DatasetNotFoundError, DatasetFormatError, ChecksumError, ChecksumWarning):
    _cls.__module__ = __name__
del _cls


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
