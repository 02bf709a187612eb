"""torch.nn layers whose forward runs fastconv's kernels.

Each class subclasses its torch.nn namesake, so constructor arguments, parameter names,
initialisation, ``state_dict`` keys and ``repr`` are torch's by construction: a torch model's
``state_dict`` loads into its fastconv twin, and ``isinstance(layer, torch.nn.Conv2d)`` still holds.
Only ``forward`` changes. ``fastconv_op`` names the op whose kernels a layer runs; fastconv.convert
replaces each torch.nn class by the fastconv.nn class that subclasses it and names one.

``fuse_conv_relu(model)`` fuses every Conv2d directly followed by a ReLU, or a LeakyReLU with a slope
>= 0, inside an nn.Sequential: the convolution applies the activation in its kernel's epilogue
(``fastconv.functional.conv2d_relu``, ``conv2d_leaky_relu``), so the pre-activation tensor is never
written nor read back, and the activation becomes an nn.Identity (parameter names and ``state_dict``
keys do not change). A MaxPool2d with non-overlapping windows
right after such a Conv2d + ReLU is fused too (``fastconv.functional.conv2d_relu_pool``): the pre-pool
activation is never written either. ``fastconv.models.build`` fuses its nets.
"""
import torch

from . import functional as F

__all__ = ["Conv2d", "Conv1d", "ReLU", "LeakyReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "LocalResponseNorm", "BatchNorm2d", "fold_batch_norm", "Linear", "Dropout", "CrossEntropyLoss", "fuse_conv_relu"]


def _zeros_padding_only(layer):
    if layer.padding_mode != "zeros":
        raise NotImplementedError(f"fastconv.nn.{type(layer).__name__} supports padding_mode='zeros' only, "
                                  f"got {layer.padding_mode!r}")


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d on fastconv's kernels. ``fused_relu = True`` (set by fuse_conv_relu) makes it
    compute relu(conv2d(x)) in one kernel, or leaky_relu(conv2d(x), s) with ``fused_negative_slope = s``
    (s > 0); ``fused_pool = (kh, kw)`` as well (also set by fuse_conv_relu) max-pools that by
    non-overlapping kh x kw windows in the same op."""

    fastconv_op = "conv2d"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _zeros_padding_only(self)
        self.fused_relu = False
        self.fused_negative_slope = 0.0
        self.fused_pool = None

    def _conv_forward(self, input, weight, bias):
        # (fused_pool and fused_negative_slope are absent from a Conv2d pickled before they existed)
        slope = getattr(self, "fused_negative_slope", 0.0)
        args = (input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if getattr(self, "fused_pool", None) is not None:
            return F.conv2d_relu_pool(*args, self.fused_pool, relu=self.fused_relu, negative_slope=slope)
        if not self.fused_relu:
            return F.conv2d(*args)
        return F.conv2d_leaky_relu(*args, negative_slope=slope) if slope else F.conv2d_relu(*args)

    def extra_repr(self):
        pool, slope = getattr(self, "fused_pool", None), getattr(self, "fused_negative_slope", 0.0)
        act = "" if not self.fused_relu else f", leaky_relu({slope})=fused" if slope else ", relu=fused"
        return super().extra_repr() + act + (f", max_pool={tuple(pool)} fused" if pool is not None else "")


class Conv1d(torch.nn.Conv1d):
    fastconv_op = "conv2d"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _zeros_padding_only(self)

    def _conv_forward(self, input, weight, bias):
        return F.conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ReLU(torch.nn.ReLU):
    fastconv_op = "relu"

    def forward(self, input):
        return F.relu(input, inplace=self.inplace)


class LeakyReLU(torch.nn.LeakyReLU):
    fastconv_op = "leaky_relu"

    def forward(self, input):
        return F.leaky_relu(input, self.negative_slope, inplace=self.inplace)


class AvgPool2d(torch.nn.AvgPool2d):
    fastconv_op = "avg_pool2d"

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    fastconv_op = "adaptive_avg_pool2d"

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on fastconv's kernels: the same constructor, parameters, buffers
    (running_mean, running_var, num_batches_tracked) and state_dict keys, and torch's rules for which
    statistics are used and how the running ones follow (momentum, or the cumulative average for
    momentum=None; no running statistics with track_running_stats=False)."""
    fastconv_op = "batch_norm"

    def forward(self, input):
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # batch statistics when training, or when there are no running ones to use
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if keep else None, self.running_var if keep else None,
                            self.weight, self.bias, batch_stats, factor, self.eps)


class LocalResponseNorm(torch.nn.LocalResponseNorm):
    fastconv_op = "local_response_norm"

    def forward(self, input):
        return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)


class MaxPool2d(torch.nn.MaxPool2d):
    fastconv_op = "max_pool2d"

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class Linear(torch.nn.Linear):
    fastconv_op = "linear"

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)


class Dropout(torch.nn.Dropout):
    fastconv_op = "dropout"

    def forward(self, input):
        return F.dropout(input, self.p, self.training, self.inplace)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    fastconv_op = "cross_entropy"

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


def _fusable_pool(layer):
    """The (kh, kw) window of a MaxPool2d with stride = window, no padding, dilation 1, floor mode and
    no indices returned; None for any other layer."""
    if type(layer) not in (torch.nn.MaxPool2d, MaxPool2d) or layer.ceil_mode or layer.return_indices:
        return None
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    kernel = pair(layer.kernel_size)
    stride = kernel if layer.stride is None or layer.stride == () else pair(layer.stride)
    if stride != kernel or pair(layer.padding) != (0, 0) or pair(layer.dilation) != (1, 1):
        return None
    return kernel


def fuse_conv_relu(model: torch.nn.Module) -> torch.nn.Module:
    """Fuses, in place, each fastconv.nn.Conv2d that is directly followed by a ReLU, or a LeakyReLU whose
    negative_slope is >= 0 (torch's or fastconv's), in an nn.Sequential anywhere in `model`: the Conv2d gets
    ``fused_relu = True`` (and the LeakyReLU's slope as ``fused_negative_slope``) and the activation is
    replaced by an nn.Identity. A LeakyReLU with a negative slope stays as it is (the fused backward reads
    the derivative off the output's sign). nn.Identity layers in between are skipped (fold_batch_norm leaves
    one where a BatchNorm2d was, so Conv2d -> BatchNorm2d -> LeakyReLU fuses once folded for inference).
    A MaxPool2d right after that activation whose windows do not overlap (stride = kernel size, no
    padding, dilation 1, floor mode) is fused as well: the Conv2d gets ``fused_pool`` and the MaxPool2d
    becomes an nn.Identity. Returns `model`. Forward hooks on a fused activation or MaxPool2d are lost
    with it; everything else (parameters, state_dict keys, results) is unchanged."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fastconv.nn.fuse_conv_relu: expected a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        layers = module._modules
        names = list(layers)

        def after(k):  # the index of the first layer after k that is not an nn.Identity (len(names) if none)
            k += 1
            while k < len(names) and type(layers[names[k]]) is torch.nn.Identity:
                k += 1
            return k

        for i, name in enumerate(names):
            conv, j = layers[name], after(i)
            if not isinstance(conv, Conv2d) or conv.fused_relu or j == len(names):
                continue
            act = layers[names[j]]
            if type(act) in (torch.nn.ReLU, ReLU):
                conv.fused_relu, conv.fused_negative_slope = True, 0.0
            elif type(act) in (torch.nn.LeakyReLU, LeakyReLU) and act.negative_slope >= 0:
                conv.fused_relu, conv.fused_negative_slope = True, float(act.negative_slope)
            else:
                continue
            layers[names[j]] = torch.nn.Identity()
            k = after(j)
            pool = _fusable_pool(layers[names[k]]) if k < len(names) else None
            if pool is not None and getattr(conv, "fused_pool", None) is None:
                conv.fused_pool = pool
                layers[names[k]] = torch.nn.Identity()
    return model


def fold_batch_norm(model):
    """Folds, for inference, every BatchNorm2d that directly follows a Conv2d in an nn.Sequential (torch.nn
    or fastconv.nn layers) into that convolution: per output channel o, with s = gamma / sqrt(var + eps)
    from the running statistics, weight[o] *= s and bias[o] = (bias[o] - mean) * s + beta (a bias is added
    where the convolution had none). The BatchNorm becomes an nn.Identity, so its state_dict entries go.
    The model must be in eval mode (training would use batch statistics). Returns the model; a
    fuse_conv_relu after it fuses the activations that now follow the convolutions."""
    if model.training:
        raise RuntimeError("fold_batch_norm: the model is in training mode; call model.eval() first (the fold "
                           "uses the running statistics, which only inference uses)")
    for module in model.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or bn.running_var is None:
                raise ValueError(f"fold_batch_norm: {second!r} has no running statistics (track_running_stats=False)")
            with torch.no_grad():
                scale = (bn.running_var + bn.eps).rsqrt()
                if bn.weight is not None:
                    scale = scale * bn.weight
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                new_bias = (bias - bn.running_mean) * scale + (bn.bias if bn.bias is not None else 0)
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                if conv.bias is None:
                    conv.bias = torch.nn.Parameter(new_bias)
                else:
                    conv.bias.copy_(new_bias)
            module._modules[second] = torch.nn.Identity()
    return model

