"""Datasets for fastconv's reference nets: MNIST and CIFAR-10 from local files (downloaded on
request), or synthetic digits and shapes.

The loaders read the standard distribution files from a local folder. With ``download=True``
they fetch the missing ones first from public mirrors (:func:`fetch`: md5-verified, never a
partial file under a final name); otherwise they raise :class:`DatasetNotFoundError` (a
``FileNotFoundError``) saying which files go where. With no dataset at hand, ``load("synthetic")``
generates a stand-in: procedurally drawn digits, 28 x 28 grayscale like MNIST but **not MNIST**
(its ``name`` says so, ``synthetic`` is True and ``describe()`` says SYNTHETIC), so that examples
and benchmarks can run end to end anywhere. ``load("synthetic-cifar")`` is the colour counterpart
for the CIFAR-10 nets: procedurally drawn shapes (discs, rings, stripes, ...) on textured
backgrounds, 32 x 32 RGB like CIFAR-10 but **not CIFAR-10**, labelled the same way.

    from fastconv import data
    ds = data.load("mnist", "~/datasets", download=True)   # or "cifar10", "synthetic", "synthetic-cifar"
    print(ds.describe())
    train_loader, test_loader = ds.loaders(batch_size=128)

Files read:

* MNIST: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, or the dotted names (``train-images.idx3-ubyte`` ...), each raw or
  gzipped (``.gz``), in ``data_dir``, in torchvision's layout ``data_dir/MNIST/raw/``, or in
  ``data_dir/mnist/``. The IDX format is parsed here (:func:`read_idx`). Downloads:
  :data:`MNIST_MIRRORS` (torchvision's, in its order), the four ``.gz`` files.
* CIFAR-10: the python batches ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` in
  ``data_dir/cifar-10-batches-py/`` (torchvision's layout, the folder the official tarball
  extracts to) or in ``data_dir`` itself, or the tarball ``cifar-10-python.tar.gz`` in
  ``data_dir``, extracted there safely (:func:`extract_tarball`). The batches are pickles; they
  are read with an unpickler that only accepts the few numpy names such a batch contains, so a
  foreign pickle cannot run code. Downloads: :data:`CIFAR10_MIRRORS` (its home page).

Files are recognised by the md5 of their content, decompressed for a ``.gz``: the published md5s
of MNIST's raw files and CIFAR-10's batches (the published ``.gz`` md5s are accepted too), so a
re-compressed genuine file passes. Each file is checked once per process: a mismatch is a
:class:`ChecksumWarning` by default (the file may have been regenerated on purpose), an error
with ``verify="strict"``, and not looked at with ``verify="off"``. Downloads are always checked.

Every loader returns a :class:`Dataset`: uint8 images N x C x H x W, int64 labels, class names,
per-channel mean / std of the training images (on the [0, 1] scale), and helpers that give
normalised float32 tensors, ``TensorDataset`` s and ``DataLoader`` s.
"""
from __future__ import annotations

from typing import Optional

from .archive import extract_tarball
from .cifar10 import (CIFAR10_CLASSES, CIFAR10_FILES, CIFAR10_FOLDER, CIFAR10_MIRRORS, CIFAR10_TARBALL,
                      CIFAR10_TRAIN_FILES, load_cifar10)
from .dataset import Dataset
from .download import fetch
from .errors import (ChecksumError, ChecksumWarning, DatasetFormatError, DatasetNotFoundError, DownloadError,
                     UnsafeArchiveError)
from .files import DATA_DIR_ENV, MD5, content_md5, md5sum
from .mnist import DIGIT_CLASSES, IDX_UBYTE_1D, IDX_UBYTE_3D, MNIST_FILES, MNIST_MIRRORS, load_mnist, read_idx
from .synthetic import generate_digits, synthetic_digits
from .synthetic_shapes import SHAPE_CLASSES, generate_shapes, synthetic_cifar

__all__ = [
    "Dataset", "load", "load_mnist", "load_cifar10", "synthetic_digits", "generate_digits",
    "synthetic_cifar", "generate_shapes", "SHAPE_CLASSES",
    "read_idx", "fetch", "extract_tarball", "md5sum", "content_md5", "DatasetNotFoundError",
    "DatasetFormatError", "DownloadError", "UnsafeArchiveError", "ChecksumError", "ChecksumWarning",
    "NAMES", "MNIST_FILES", "MNIST_MIRRORS", "CIFAR10_FILES", "CIFAR10_TARBALL", "CIFAR10_MIRRORS",
    "MD5", "DATA_DIR_ENV", "add_arguments",
]

NAMES = ("mnist", "cifar10", "synthetic", "synthetic-cifar")

# tracebacks and pickles name the errors where users import them from
for _cls in (DatasetNotFoundError, DatasetFormatError, DownloadError, UnsafeArchiveError, ChecksumError,
             ChecksumWarning):
    _cls.__module__ = __name__
del _cls


def add_arguments(parser, choices=("synthetic", "mnist"), dataset_help: Optional[str] = None):
    """Adds the data options that the bench scripts and examples share to an argparse parser:
    ``--dataset`` (one of `choices`, default synthetic), ``--data-dir``, ``--download`` and
    ``--mirror`` (repeatable); their values are ``load``'s name, data_dir, download and mirrors."""
    real = "/".join(c for c in choices if not c.startswith("synthetic"))
    parser.add_argument("--dataset", choices=list(choices), default="synthetic", help=dataset_help)
    parser.add_argument("--data-dir", default=None,
                        help=f"folder with the {real} files (default ${DATA_DIR_ENV}, else ./data)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the dataset's missing files into --data-dir (md5-checked; present files are kept)")
    parser.add_argument("--mirror", action="append", default=None, metavar="URL",
                        help="URL prefix to download from instead of the default mirrors (repeatable, tried in order)")


def load(name: str, data_dir=None, *, download: bool = False, mirrors=None,
         train_size: Optional[int] = None, test_size: Optional[int] = None, seed: int = 0,
         verify: str = "warn") -> Dataset:
    """Load dataset ``name``: "mnist", "cifar10", "synthetic" (the synthetic digits) or
    "synthetic-cifar" (the synthetic shapes; also "synthetic_cifar", "syntheticcifar").

    ``data_dir``: the folder holding the files (see the module docstring for the layouts); None
    means ``$FASTCONV_DATA`` if set, else ``./data``. Ignored for the synthetic datasets.
    ``download``: fetch the files that are missing from ``mirrors``, a list of URL prefixes each
    followed by the file's standard compressed name (default :data:`MNIST_MIRRORS` /
    :data:`CIFAR10_MIRRORS`). Files present are never fetched again (a corrupted one is reported
    as below, not replaced: delete it to fetch it again). Progress goes to stderr; when every
    mirror fails, :class:`DownloadError` lists each one's failure.
    ``train_size`` / ``test_size``: keep a random subset of that many images (deterministic by
    ``seed``) for quick runs. For "synthetic" and "synthetic-cifar" they are the numbers of images
    generated (default 60000 / 10000 and 50000 / 10000, the sizes of MNIST and CIFAR-10) and
    ``seed`` seeds the generator.
    ``verify``: md5 check of known files, "warn" (default), "strict" (mismatch is an error) or
    "off".
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "mnist":
        ds = load_mnist(data_dir, verify=verify, download=download, mirrors=mirrors)
        return ds.subset(train_size, test_size, seed)
    if key in ("cifar10", "cifar"):
        ds = load_cifar10(data_dir, verify=verify, download=download, mirrors=mirrors)
        return ds.subset(train_size, test_size, seed)
    if key in ("synthetic", "syntheticdigits", "synth"):
        return synthetic_digits(60000 if train_size is None else train_size,
                                10000 if test_size is None else test_size, seed=seed)
    if key in ("syntheticcifar", "syntheticcifar10"):
        return synthetic_cifar(50000 if train_size is None else train_size,
                               10000 if test_size is None else test_size, seed=seed)
    raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(NAMES)}")
