"""The common return type of the loaders: :class:`Dataset`, an image-classification dataset held
in memory as tensors, with its statistics and helpers."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch.utils.data import DataLoader, TensorDataset


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
