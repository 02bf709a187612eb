"""Reference CNNs, each buildable from fastconv.nn layers or from torch.nn layers (its twin).

``layers`` is a module with torch.nn's layer names: ``fastconv.nn`` (the default) or ``torch.nn``.
Two nets built with the same seed and different ``layers`` have identical initial weights, because
fastconv.nn layers initialise exactly as torch.nn's. ``in_shape`` is (channels, height, width).

    mnist_net     the classic Keras MNIST convnet (1.2 M parameters at 1x28x28)
    cifar10_net   the classic Keras CIFAR-10 convnet (1.25 M parameters at 3x32x32)
    lenet5        LeNet-5 with ReLU and max-pooling (61 k parameters at 1x28x28)
    alexnet       an AlexNet-style net (five convolutions, LRN, three dense layers, dropout) scaled
                  down to 32x32 inputs (0.58 M parameters at 3x32x32)
    resnet        a ResNet-style CIFAR net: BatchNorm, residual blocks, global average pooling
    yolo          a YOLO-style backbone classifier: alternating 1x1 / 3x3 convolutions, BatchNorm,
                  LeakyReLU 0.1, max-pooling, global average pooling
    airbench      the layout of the airbench fast CIFAR-10 recipe: a conv stem, then three blocks of
                  conv -> max-pool -> BatchNorm -> act -> conv -> BatchNorm -> act at widths 64 / 256 /
                  256, a global max-pool and a scaled linear head (ReLU where the recipe uses GELU:
                  fastconv has no GELU kernel)
"""
import torch

from . import nn as fnn


def _pooled(size, times):
    for _ in range(times):
        size //= 2
    return size


def mnist_net(layers=fnn, in_shape=(1, 28, 28), num_classes=10):
    """Conv(32,3)-ReLU-Conv(64,3)-ReLU-MaxPool(2)-Dropout(.25)-Flatten-Linear(128)-ReLU-Dropout(.5)-Linear."""
    c, h, w = in_shape
    flat = 64 * ((h - 4) // 2) * ((w - 4) // 2)
    return torch.nn.Sequential(
        layers.Conv2d(c, 32, 3), layers.ReLU(),
        layers.Conv2d(32, 64, 3), layers.ReLU(),
        layers.MaxPool2d(2), layers.Dropout(0.25),
        torch.nn.Flatten(),
        layers.Linear(flat, 128), layers.ReLU(), layers.Dropout(0.5),
        layers.Linear(128, num_classes),
    )


def cifar10_net(layers=fnn, in_shape=(3, 32, 32), num_classes=10):
    """Conv(32,3,p1)-ReLU-Conv(32,3)-ReLU-MaxPool(2)-Dropout(.25)-Conv(64,3,p1)-ReLU-Conv(64,3)-ReLU-
    MaxPool(2)-Dropout(.25)-Flatten-Linear(512)-ReLU-Dropout(.5)-Linear."""
    c, h, w = in_shape
    flat = 64 * (((h - 2) // 2 - 2) // 2) * (((w - 2) // 2 - 2) // 2)
    return torch.nn.Sequential(
        layers.Conv2d(c, 32, 3, padding=1), layers.ReLU(),
        layers.Conv2d(32, 32, 3), layers.ReLU(),
        layers.MaxPool2d(2), layers.Dropout(0.25),
        layers.Conv2d(32, 64, 3, padding=1), layers.ReLU(),
        layers.Conv2d(64, 64, 3), layers.ReLU(),
        layers.MaxPool2d(2), layers.Dropout(0.25),
        torch.nn.Flatten(),
        layers.Linear(flat, 512), layers.ReLU(), layers.Dropout(0.5),
        layers.Linear(512, num_classes),
    )


def lenet5(layers=fnn, in_shape=(1, 28, 28), num_classes=10):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling: Conv(6,5,p2)-Pool-Conv(16,5)-Pool-
    Linear(120)-Linear(84)-Linear."""
    c, h, w = in_shape
    flat = 16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2)
    return torch.nn.Sequential(
        layers.Conv2d(c, 6, 5, padding=2), layers.ReLU(), layers.MaxPool2d(2),
        layers.Conv2d(6, 16, 5), layers.ReLU(), layers.MaxPool2d(2),
        torch.nn.Flatten(),
        layers.Linear(flat, 120), layers.ReLU(),
        layers.Linear(120, 84), layers.ReLU(),
        layers.Linear(84, num_classes),
    )


def alexnet(layers=fnn, in_shape=(3, 32, 32), num_classes=10):
    """AlexNet's shape (Krizhevsky et al., 2012: five convolutions, local response normalization after
    the 1st and 2nd with the paper's k = 2, n = 5, alpha = 1e-4, beta = 0.75, max-pooling after the 1st,
    2nd and 5th, then three dense layers with dropout in the first two), with channels and kernels
    scaled for 32x32."""
    c, h, w = in_shape
    flat = 64 * _pooled(h, 3) * _pooled(w, 3)
    return torch.nn.Sequential(
        layers.Conv2d(c, 32, 5, padding=2), layers.ReLU(), layers.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        layers.MaxPool2d(2),
        layers.Conv2d(32, 64, 5, padding=2), layers.ReLU(), layers.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        layers.MaxPool2d(2),
        layers.Conv2d(64, 96, 3, padding=1), layers.ReLU(),
        layers.Conv2d(96, 96, 3, padding=1), layers.ReLU(),
        layers.Conv2d(96, 64, 3, padding=1), layers.ReLU(), layers.MaxPool2d(2),
        torch.nn.Flatten(),
        layers.Dropout(0.5), layers.Linear(flat, 256), layers.ReLU(),
        layers.Dropout(0.5), layers.Linear(256, 256), layers.ReLU(),
        layers.Linear(256, num_classes),
    )


def _conv_bn(layers, cin, cout, k, act):
    """Conv (no bias: the BatchNorm's shift replaces it) -> BatchNorm2d -> activation."""
    return [layers.Conv2d(cin, cout, k, padding=k // 2, bias=False), layers.BatchNorm2d(cout), act()]


class ResidualBlock(torch.nn.Module):
    """x + F(x) with F = conv-BN-ReLU-conv-BN, then ReLU; a 1x1 conv-BN shortcut where the stride or
    width changes (the residual add is a plain tensor addition of the two branches)."""

    def __init__(self, layers, cin, cout, stride=1):
        super().__init__()
        self.body = torch.nn.Sequential(
            layers.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), layers.BatchNorm2d(cout),
            layers.ReLU(),
            layers.Conv2d(cout, cout, 3, padding=1, bias=False), layers.BatchNorm2d(cout))
        self.shortcut = torch.nn.Identity() if stride == 1 and cin == cout else torch.nn.Sequential(
            layers.Conv2d(cin, cout, 1, stride=stride, bias=False), layers.BatchNorm2d(cout))
        self.act = layers.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


def resnet(layers=fnn, in_shape=(3, 32, 32), num_classes=10, widths=(32, 64, 128)):
    """A ResNet-style CIFAR net (He et al., 2016, scaled down): a 3x3 conv-BN-ReLU stem, one residual
    block per stage at `widths` (stride 2 between stages), global average pooling, a linear classifier."""
    c = in_shape[0]
    blocks = [ResidualBlock(layers, widths[0], widths[0])]
    for a, b in zip(widths, widths[1:]):
        blocks.append(ResidualBlock(layers, a, b, stride=2))
    return torch.nn.Sequential(*_conv_bn(layers, c, widths[0], 3, layers.ReLU), *blocks,
                               layers.AdaptiveAvgPool2d(1), torch.nn.Flatten(), layers.Linear(widths[-1], num_classes))


def yolo(layers=fnn, in_shape=(3, 32, 32), num_classes=10):
    """A YOLO-style backbone (Redmon et al.: 3x3 convolutions between 1x1 bottlenecks, BatchNorm,
    LeakyReLU 0.1, max-pooling) with a classification head, scaled for 32x32 inputs."""
    c = in_shape[0]

    def act():
        return layers.LeakyReLU(0.1)
    return torch.nn.Sequential(
        *_conv_bn(layers, c, 32, 3, act), layers.MaxPool2d(2),
        *_conv_bn(layers, 32, 64, 3, act), layers.MaxPool2d(2),
        *_conv_bn(layers, 64, 128, 3, act), *_conv_bn(layers, 128, 64, 1, act), *_conv_bn(layers, 64, 128, 3, act),
        layers.MaxPool2d(2),
        *_conv_bn(layers, 128, 256, 3, act), *_conv_bn(layers, 256, 128, 1, act), *_conv_bn(layers, 128, 256, 3, act),
        layers.Conv2d(256, num_classes, 1), layers.AdaptiveAvgPool2d(1), torch.nn.Flatten())


class _Scale(torch.nn.Module):
    """Multiplies by a constant (airbench's head scale); no parameters."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def airbench(layers=fnn, in_shape=(3, 32, 32), num_classes=10, widths=(64, 256, 256)):
    """The airbench CIFAR-10 layout (Jordan, 2024): a 2x2 conv stem (24 channels), three blocks of
    conv -> max-pool 2 -> BN -> act -> conv -> BN -> act at `widths`, a global max-pool and a linear
    head scaled by 1/9. ReLU stands for the recipe's GELU (no fastconv kernel)."""
    c, h, w = in_shape
    stem = 24
    seq = [layers.Conv2d(c, stem, 2, bias=False), layers.ReLU()]
    cin = stem
    for width in widths:
        seq += [layers.Conv2d(cin, width, 3, padding=1, bias=False), layers.MaxPool2d(2), layers.BatchNorm2d(width),
                layers.ReLU(), layers.Conv2d(width, width, 3, padding=1, bias=False), layers.BatchNorm2d(width),
                layers.ReLU()]
        cin = width
    side = (min(h, w) - 1) // 8  # after the 2x2 stem and three poolings
    return torch.nn.Sequential(*seq, layers.MaxPool2d(side), torch.nn.Flatten(),
                               layers.Linear(widths[-1], num_classes, bias=False), _Scale(1 / 9))


# name -> (builder, the input shape it was designed for)
MODELS = {"mnist": (mnist_net, (1, 28, 28)), "cifar10": (cifar10_net, (3, 32, 32))}
ALL_MODELS = {**MODELS, "lenet5": (lenet5, (1, 28, 28)), "alexnet": (alexnet, (3, 32, 32)),
              "resnet": (resnet, (3, 32, 32)), "yolo": (yolo, (3, 32, 32)), "airbench": (airbench, (3, 32, 32))}


def build(name, layers=fnn, in_shape=None, num_classes=10):
    """The model `name` of ALL_MODELS for inputs of `in_shape` (default: the shape it was designed for).
    Built from fastconv.nn, each Conv2d + ReLU pair is fused (fastconv.nn.fuse_conv_relu)."""
    if name not in ALL_MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ALL_MODELS)}")
    builder, default_shape = ALL_MODELS[name]
    model = builder(layers, tuple(in_shape or default_shape), num_classes)
    return fnn.fuse_conv_relu(model) if layers is fnn else model
