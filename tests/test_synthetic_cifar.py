"""fastconv.data.load("synthetic-cifar"): the synthetic shapes (SYNTHETIC, NOT CIFAR-10), a
CIFAR-shaped stand-in for the CIFAR-10 nets. Shapes, dtypes and value ranges, the SYNTHETIC labels,
the name's spellings, determinism by seed and split, class balance, the ten object kinds, that the
classes can be told apart but not from pixels or colours alone, and bench/train.py's
--dataset synthetic-cifar. A few thousand images, a few seconds."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastconv import data
from fastconv.data import synthetic_shapes

from conftest import num_threads

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes():
    return data.load("synthetic-cifar", train_size=3000, test_size=1000, seed=3)


def test_shapes_dtypes_and_normalised_tensors(shapes):
    assert shapes.train_images.shape == (3000, 3, 32, 32) and shapes.test_images.shape == (1000, 3, 32, 32)
    assert shapes.train_images.dtype == torch.uint8 and shapes.test_images.dtype == torch.uint8
    assert shapes.train_labels.dtype == torch.int64 and shapes.test_labels.dtype == torch.int64
    assert shapes.image_shape == (3, 32, 32) and shapes.num_classes == 10
    assert shapes.train_images.is_contiguous() and shapes.test_images.is_contiguous()
    x, y, xt, yt = shapes.tensors()
    assert x.dtype == torch.float32 and x.shape == (3000, 3, 32, 32) and torch.equal(y, shapes.train_labels)
    assert x.mean((0, 2, 3)).abs().max() < 1e-4 and (x.std((0, 2, 3), unbiased=False) - 1).abs().max() < 1e-4
    assert xt.shape == (1000, 3, 32, 32) and torch.equal(yt, shapes.test_labels)
    batch = next(iter(shapes.loaders(64)[0]))
    assert batch[0].shape == (64, 3, 32, 32) and batch[0].dtype == torch.float32


def test_labelled_synthetic_not_cifar(shapes, tmp_path, capsys):
    assert shapes.synthetic is True
    assert "synthetic" in shapes.name and "NOT CIFAR-10" in shapes.name
    text = shapes.describe()
    assert text.startswith("SYNTHETIC DATA") and "NOT CIFAR-10" in text
    assert "seed=3" in shapes.source
    assert shapes.classes == data.SHAPE_CLASSES and len(set(shapes.classes)) == 10
    assert not set(shapes.classes) & set(data.CIFAR10_CLASSES)    # no animal or vehicle names
    assert ", ".join(shapes.classes) in text
    # data_dir is ignored; nothing is printed or written
    small = data.load("synthetic-cifar", tmp_path / "ignored", train_size=20, test_size=10)
    assert capsys.readouterr() == ("", "") and not (tmp_path / "ignored").exists()
    assert small.train_images.shape == (20, 3, 32, 32) and small.test_images.shape == (10, 3, 32, 32)


@pytest.mark.parametrize("name", ["synthetic-cifar", "synthetic_cifar", "syntheticcifar", "Synthetic-CIFAR"])
def test_names_of_the_shapes(name):
    ds = data.load(name, train_size=30, test_size=20, seed=5)
    ref = data.synthetic_cifar(30, 20, seed=5)
    assert ds.name == ref.name and torch.equal(ds.train_images, ref.train_images)
    assert torch.equal(ds.test_labels, ref.test_labels)


def test_synthetic_still_means_the_digits():
    digits = data.load("synthetic", train_size=20, test_size=10)
    assert digits.image_shape == (1, 28, 28) and "NOT MNIST" in digits.name
    assert "synthetic-cifar" in data.NAMES
    with pytest.raises(ValueError, match="synthetic-cifar"):
        data.load("synthetic-imagenet")


def test_default_sizes_are_cifar10s(monkeypatch):
    calls = []

    def fake_generate(n, seed, split):
        calls.append((n, seed, split))
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64)

    monkeypatch.setattr(synthetic_shapes, "generate_shapes", fake_generate)
    data.load("synthetic-cifar", seed=7)
    assert calls == [(50000, 7, "train"), (10000, 7, "test")]


def test_bad_sizes_are_refused():
    for kwargs in (dict(train_size=0), dict(test_size=-1), dict(train_size=2.5), dict(test_size=True)):
        with pytest.raises(ValueError, match="must be a positive int"):
            data.load("synthetic-cifar", **{"train_size": 10, "test_size": 10, **kwargs})
    with pytest.raises(ValueError, match="split"):
        data.generate_shapes(10, split="val")


def test_deterministic_by_seed_and_split():
    a, la = data.generate_shapes(300, seed=0)
    b, lb = data.generate_shapes(300, seed=0)
    assert a.numpy().tobytes() == b.numpy().tobytes() and torch.equal(la, lb)
    c, lc = data.generate_shapes(300, seed=1)
    assert (a != c).float().mean() > 0.5 and not torch.equal(la, lc)
    t, _ = data.generate_shapes(300, seed=0, split="test")
    assert (a != t).float().mean() > 0.5
    # images come in seeded blocks: a smaller set is a prefix of a larger one
    big, lbig = data.generate_shapes(1200, seed=0)
    assert torch.equal(big[:300], a) and torch.equal(lbig[:300], la)
    assert torch.equal(data.generate_shapes(1100, seed=0)[0], big[:1100])
    # other streams than the digits' for the same seed
    _, digit_labels = data.generate_digits(300, seed=0)
    assert not torch.equal(digit_labels, la)
    # the whole dataset too, statistics included
    d1, d2 = data.synthetic_cifar(50, 20, seed=4), data.synthetic_cifar(50, 20, seed=4)
    assert torch.equal(d1.train_images, d2.train_images) and torch.equal(d1.test_images, d2.test_images)
    assert d1.mean == d2.mean and d1.std == d2.std


def test_class_balance(shapes):
    assert torch.bincount(shapes.train_labels, minlength=10).tolist() == [300] * 10
    assert torch.bincount(shapes.test_labels, minlength=10).tolist() == [100] * 10
    _, labels = data.generate_shapes(1005, seed=2)
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() >= 100 and counts.max() <= 101
    # not in a fixed order
    assert len({tuple(labels[i:i + 10].tolist()) for i in range(0, 1000, 10)}) > 50


def test_pixel_range_and_colour(shapes):
    x = shapes.train_images.double() / 255
    assert x.min() == 0 and x.max() == 1                        # the full range is reached
    assert all(0.3 < m < 0.6 for m in shapes.mean) and all(0.15 < s < 0.35 for s in shapes.std)
    per_image = x.std((1, 2, 3))
    assert per_image.min() > 0.02                              # no blank image
    # colour images, not grey: the channels of an image differ
    chroma = (x - x.mean(1, keepdim=True)).abs().mean((1, 2, 3))
    assert chroma.median() > 0.03 and (chroma > 0.01).float().mean() > 0.8
    # backgrounds and objects vary: many distinct mean colours
    mean_colour = (x.mean((2, 3)) * 8).floor()
    assert len({tuple(c.tolist()) for c in mean_colour}) > 80


def _unit_masks(k=40.0, n=96):
    """Coverage of each object kind (10 x n x n) over [-1.2, 1.2]^2 in its unit frame, sharp edges."""
    t = np.linspace(-1.2, 1.2, n, dtype=np.float32)
    u = np.broadcast_to(t[None, None, :], (1, n, n)).copy()
    v = np.broadcast_to(t[None, :, None], (1, n, n)).copy()
    r = np.sqrt(u * u + v * v)
    kk = np.full((1, 1, 1), k, np.float32)
    half = np.full((1, 1, 1), 0.5, np.float32)
    return np.concatenate([synthetic_shapes._object_alpha(c, u, v, r, kk, half, half) for c in range(10)])


def test_the_ten_object_kinds_differ():
    masks = _unit_masks()
    area = masks.mean((1, 2))
    assert (area > 0.07).all() and (area < 0.5).all(), area     # each is a visible object, none fills the frame
    assert ((masks > 0.01) & (masks < 0.99)).mean() < 0.1        # coverage is 0 or 1 away from edges
    # pairwise, at this pose: every two kinds disagree on a good part of the object
    diff = np.abs(masks[:, None] - masks[None]).mean((2, 3)) / np.maximum(area[:, None], area[None])
    off = diff[~np.eye(10, dtype=bool)]
    assert off.min() > 0.1, diff
    # outlines have holes, filled shapes none: the centre pixel
    centre = masks[:, 48, 48]
    kinds = dict(zip(data.SHAPE_CLASSES, centre))
    assert kinds["ring"] == 0 and kinds["frame"] == 0 and kinds["crescent"] == 0
    assert kinds["disc"] == 1 and kinds["square"] == 1 and kinds["cross"] == 1 and kinds["star"] == 1


def _ridge_accuracy(f, ft, y, yt, lam=1.0):
    """Test accuracy of a ridge least-squares linear classifier on standardised features."""
    mu, sd = f.mean(0), f.std(0) + 1e-6
    f, ft = (f - mu) / sd, (ft - mu) / sd
    X = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)
    Xt = torch.cat([ft, torch.ones(len(ft), 1, dtype=f.dtype)], 1)
    W = torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype),
                           X.T @ torch.nn.functional.one_hot(y, 10).double())
    return ((Xt @ W).argmax(1) == yt).double().mean().item()


def _spectrum(x):
    """Log power of each image (summed over channels) in 23 rings of spatial frequency: features
    that do not change when the object moves and hardly when it turns."""
    power = torch.fft.fft2(x - x.mean((2, 3), keepdim=True)).abs().pow(2).sum(1)     # N x 32 x 32
    f = torch.fft.fftfreq(32).abs()
    ring = (torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2) * 32).round().long().clamp(max=22)
    out = torch.zeros(len(x), 23, dtype=x.dtype).index_add_(1, ring.reshape(-1), power.reshape(len(x), -1))
    return torch.log(out + 1e-3)


def test_learnable_but_not_from_pixels_or_colours(shapes):
    x, y = shapes.train_images.double() / 255, shapes.train_labels
    xt, yt = shapes.test_images.double() / 255, shapes.test_labels
    with num_threads(1):
        spectral = _ridge_accuracy(_spectrum(x), _spectrum(xt), y, yt)
        shuffled = _ridge_accuracy(_spectrum(x), _spectrum(xt), y[torch.randperm(len(y))], yt)
        pixels = _ridge_accuracy(x.reshape(len(x), -1), xt.reshape(len(xt), -1), y, yt, lam=10.0)
        colours = _ridge_accuracy(torch.cat([x.mean((2, 3)), x.std((2, 3))], 1),
                                  torch.cat([xt.mean((2, 3)), xt.std((2, 3))], 1), y, yt)
    # chance is 0.1 (1000 test images: its standard deviation is 0.01)
    assert spectral > 0.22, spectral                # the shapes tell the classes apart...
    assert shuffled < 0.16, shuffled                # (the labels, not the features, carry that)
    assert pixels < 0.2, pixels                     # ...but not linearly from pixels: objects move and turn
    assert colours < 0.22, colours                  # nor from the colours: they are drawn independently


def test_bench_train_on_synthetic_cifar(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_bench_shapes", REPO / "bench" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    args = train.parse_args(["--dataset", "synthetic-cifar"])
    assert args.model == "cifar10"
    out = tmp_path / "run"
    with num_threads(1):
        assert train.main(["--dataset", "synthetic-cifar", "--train-size", "128", "--test-size", "64",
                           "--epochs", "1", "--batch-size", "64", "--impl", "fastconv", "--no-plot",
                           "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "cifar10 net on SYNTHETIC-cifar (NOT CIFAR-10): 128 training / 64 test images (3, 32, 32)" in stdout
    assert "These were SYNTHETIC shapes, not CIFAR-10" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["synthetic"] is True and "SYNTHETIC" in results["dataset"] and results["model"] == "cifar10"
