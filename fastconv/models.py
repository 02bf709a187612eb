"""Reference CNNs, each buildable from fastconv.nn layers or from torch.nn layers (its twin).

``layers`` is a module with torch.nn's layer names: ``fastconv.nn`` (the default) or ``torch.nn``.
Two nets built with the same seed and different ``layers`` have identical initial weights, because
fastconv.nn layers initialise exactly as torch.nn's.
"""
import torch

from . import nn as fnn


def mnist_net(layers=fnn):
    """The classic Keras MNIST convnet: 1x28x28 -> 10 classes (1.2 M parameters)."""
    return torch.nn.Sequential(
        layers.Conv2d(1, 32, 3), layers.ReLU(),
        layers.Conv2d(32, 64, 3), layers.ReLU(),
        layers.MaxPool2d(2), layers.Dropout(0.25),
        torch.nn.Flatten(),
        layers.Linear(9216, 128), layers.ReLU(), layers.Dropout(0.5),
        layers.Linear(128, 10),
    )


def cifar10_net(layers=fnn):
    """The classic Keras CIFAR-10 convnet: 3x32x32 -> 10 classes (1.25 M parameters)."""
    return torch.nn.Sequential(
        layers.Conv2d(3, 32, 3, padding=1), layers.ReLU(),
        layers.Conv2d(32, 32, 3), layers.ReLU(),
        layers.MaxPool2d(2), layers.Dropout(0.25),
        layers.Conv2d(32, 64, 3, padding=1), layers.ReLU(),
        layers.Conv2d(64, 64, 3), layers.ReLU(),
        layers.MaxPool2d(2), layers.Dropout(0.25),
        torch.nn.Flatten(),
        layers.Linear(2304, 512), layers.ReLU(), layers.Dropout(0.5),
        layers.Linear(512, 10),
    )


MODELS = {"mnist": (mnist_net, (1, 28, 28)), "cifar10": (cifar10_net, (3, 32, 32))}
