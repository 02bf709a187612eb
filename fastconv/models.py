"""Reference CNNs, each buildable from fastconv.nn layers or from torch.nn layers (its twin).

``layers`` is a module with torch.nn's layer names: ``fastconv.nn`` (the default) or ``torch.nn``.
Two nets built with the same seed and different ``layers`` have identical initial weights, because
fastconv.nn layers initialise exactly as torch.nn's. ``in_shape`` is (channels, height, width).

    mnist_net     the classic Keras MNIST convnet (1.2 M parameters at 1x28x28)
    cifar10_net   the classic Keras CIFAR-10 convnet (1.25 M parameters at 3x32x32)
    lenet5        LeNet-5 with ReLU and max-pooling (61 k parameters at 1x28x28)
    alexnet       an AlexNet-style net (five convolutions, three dense layers, dropout) scaled
                  down to 32x32 inputs (0.58 M parameters at 3x32x32)
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


# name -> (builder, the input shape it was designed for)
MODELS = {"mnist": (mnist_net, (1, 28, 28)), "cifar10": (cifar10_net, (3, 32, 32))}
ALL_MODELS = {**MODELS, "lenet5": (lenet5, (1, 28, 28)), "alexnet": (alexnet, (3, 32, 32))}


def build(name, layers=fnn, in_shape=None, num_classes=10):
    """The model `name` of ALL_MODELS for inputs of `in_shape` (default: the shape it was designed for).
    Built from fastconv.nn, each Conv2d + ReLU pair is fused (fastconv.nn.fuse_conv_relu)."""
    if name not in ALL_MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ALL_MODELS)}")
    builder, default_shape = ALL_MODELS[name]
    model = builder(layers, tuple(in_shape or default_shape), num_classes)
    return fnn.fuse_conv_relu(model) if layers is fnn else model
