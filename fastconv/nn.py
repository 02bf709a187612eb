"""torch.nn layers whose forward runs fastconv's kernels.

Each class subclasses its torch.nn namesake, so constructor arguments, parameter names,
initialisation, ``state_dict`` keys and ``repr`` are torch's by construction: a torch model's
``state_dict`` loads into its fastconv twin, and ``isinstance(layer, torch.nn.Conv2d)`` still holds.
Only ``forward`` changes.
"""
import torch

from . import functional as F

__all__ = ["Conv2d", "Conv1d", "ReLU", "MaxPool2d", "Linear", "Dropout", "CrossEntropyLoss"]


def _zeros_padding_only(layer):
    if layer.padding_mode != "zeros":
        raise NotImplementedError(f"fastconv.nn.{type(layer).__name__} supports padding_mode='zeros' only, "
                                  f"got {layer.padding_mode!r}")


class Conv2d(torch.nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _zeros_padding_only(self)

    def _conv_forward(self, input, weight, bias):
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(torch.nn.Conv1d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _zeros_padding_only(self)

    def _conv_forward(self, input, weight, bias):
        return F.conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ReLU(torch.nn.ReLU):
    def forward(self, input):
        return F.relu(input, inplace=self.inplace)


class MaxPool2d(torch.nn.MaxPool2d):
    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class Linear(torch.nn.Linear):
    def forward(self, input):
        return F.linear(input, self.weight, self.bias)


class Dropout(torch.nn.Dropout):
    def forward(self, input):
        return F.dropout(input, self.p, self.training, self.inplace)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)
