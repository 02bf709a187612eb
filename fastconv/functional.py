"""torch.nn.functional's CNN ops, computed by fastconv's kernels.

Names, signatures and semantics follow torch.nn.functional: the same calls give the same results
(up to floating-point rounding order), in the memory format torch gives (channels_last in,
channels_last out). Argument normalisation (ints to pairs, "same" padding, 3-D
unbatched inputs, legacy reduction flags) happens here; the checks of shapes, dtypes and values
happen once, in the C++ ops, for every backend.
"""
import math

import torch

from .ops import REDUCTIONS, ops

__all__ = ["conv2d", "conv2d_relu", "conv2d_leaky_relu", "conv2d_relu_pool", "conv1d", "relu", "leaky_relu", "max_pool2d", "avg_pool2d",
           "adaptive_avg_pool2d", "local_response_norm", "batch_norm", "cross_entropy", "linear",
           "dropout"]


def _pair(value, name):
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) == 1:
        return (value[0], value[0])
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return value


def _conv_padding(padding, kernel, dilation, stride):
    """(top, bottom, left, right) for padding given as int, pair, "valid" or "same"."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]  # the odd one out goes bottom / right
            return tuple(pads)
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = _pair(padding, "padding")
    return (ph, ph, pw, pw)


def _channels_last(*tensors):
    """True when torch would compute in channels_last: a 4-D input (or conv weight) stored
    channels_last rather than plain contiguous."""
    return any(t is not None and t.dim() == 4 and not t.is_contiguous()
               and t.is_contiguous(memory_format=torch.channels_last) for t in tensors)


def _format_like(out, *tensors):
    """The kernels write contiguous (NCHW) results; give a 4-D result the memory format torch gives."""
    if out.dim() == 4 and _channels_last(*tensors):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _batched(input, dims, op):
    """Returns (batched input, whether a batch dimension was added) for a (dims)-D op input."""
    if input.dim() == dims:
        return input, False
    if input.dim() == dims - 1:
        return input.unsqueeze(0), True
    raise ValueError(f"fastconv.{op}: expected a {dims - 1}-D (unbatched) or {dims}-D (batched) input, "
                     f"got {input.dim()}-D with shape {tuple(input.shape)}")


def _conv2d(input, weight, bias, stride, padding, dilation, groups, relu, name, negative_slope=0.0):
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if weight.dim() != 4:
        raise ValueError(f"fastconv.{name}: weight must be 4-D (C_out, C_in / groups, kH, kW), "
                         f"got shape {tuple(weight.shape)}")
    pad = _conv_padding(padding, weight.shape[2:], dilation, stride)
    x, unbatched = _batched(input, 4, "conv2d")
    out = ops.conv2d(x, weight, bias, stride, pad, dilation, groups, relu, float(negative_slope))
    out = _format_like(out, x, weight)
    return out.squeeze(0) if unbatched else out


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution, as torch.nn.functional.conv2d."""
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, False, "conv2d")


def conv2d_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """relu(conv2d(input, weight, bias, ...)) in one op: the ReLU runs in the convolution's epilogue,
    so the pre-activation is never written (and backward needs only the output)."""
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, True, "conv2d_relu")


def conv2d_leaky_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, negative_slope=0.01):
    """leaky_relu(conv2d(input, weight, bias, ...), negative_slope) in one op, the LeakyReLU in the
    convolution's epilogue. negative_slope must be >= 0: backward reads the activation's derivative off the
    sign of the output. In float32 and float64 the result is bit for bit that of the two ops; in float16 /
    bfloat16 the activation is applied before the one rounding to 16 bits (the two ops round twice)."""
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, True, "conv2d_leaky_relu",
                   negative_slope)


def conv2d_relu_pool(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, pool=2, relu=True,
                     negative_slope=0.0):
    """max_pool2d(relu(conv2d(input, weight, bias, ...)), pool) in one op, ``pool`` being the window
    and the stride (no padding, floor mode): the CPU kernel pools each slice of the batch while its
    convolution output is still in cache, so the full-size pre-pool activation is never written.
    ``relu=False`` leaves the ReLU out; ``negative_slope > 0`` makes it a LeakyReLU. Same results, bit for bit,
    as the three ops one after the other (float16 / bfloat16 with a LeakyReLU: see conv2d_leaky_relu)."""
    stride, dilation, pool = _pair(stride, "stride"), _pair(dilation, "dilation"), _pair(pool, "pool")
    if weight.dim() != 4:
        raise ValueError(f"fastconv.conv2d_relu_pool: weight must be 4-D (C_out, C_in / groups, kH, kW), "
                         f"got shape {tuple(weight.shape)}")
    pad = _conv_padding(padding, weight.shape[2:], dilation, stride)
    x, unbatched = _batched(input, 4, "conv2d_relu_pool")
    out, _ = ops.conv2d_pool(x, weight, bias, stride, pad, dilation, groups, bool(relu), pool, float(negative_slope))
    out = _format_like(out, x, weight)
    return out.squeeze(0) if unbatched else out


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D convolution (e.g. of ECG signals), as torch.nn.functional.conv1d: run by the conv2d
    kernels on a unit-height image."""
    def single(v, name):
        v = (v,) if isinstance(v, int) else tuple(v)
        if len(v) != 1:
            raise ValueError(f"{name} of conv1d must be an int or a 1-tuple, got {v!r}")
        return v[0]

    stride, dilation = single(stride, "stride"), single(dilation, "dilation")
    if weight.dim() != 3:
        raise ValueError(f"fastconv.conv1d: weight must be 3-D (C_out, C_in / groups, k), got shape "
                         f"{tuple(weight.shape)}")
    if isinstance(padding, str):
        pad = _conv_padding(padding, (1, weight.shape[2]), (1, dilation), (1, stride))
    else:
        p = single(padding, "padding")
        pad = (0, 0, p, p)
    x, unbatched = _batched(input, 3, "conv1d")
    out = ops.conv2d(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, stride), pad, (1, dilation), groups)
    out = out.squeeze(2)
    return out.squeeze(0) if unbatched else out


def relu(input, inplace=False):
    """max(input, 0), as torch.nn.functional.relu. With inplace=True the result is written back
    into input (which is then returned), as torch does."""
    out = _format_like(ops.relu(input), input)
    return input.copy_(out) if inplace else out


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """input where it is > 0, else input * negative_slope, as torch.nn.functional.leaky_relu. With
    inplace=True the result is written back into input (which is then returned); as in torch, a
    negative slope cannot be combined with inplace=True when the input needs a gradient."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(f"leaky_relu: negative_slope must be a number, got {type(negative_slope).__name__}")
    slope = float(negative_slope)
    if inplace and slope < 0 and input.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("leaky_relu: in-place with a negative slope cannot be differentiated (the input it "
                           "overwrites is needed for the gradient); call it with inplace=False")
    out = _format_like(ops.leaky_relu(input, slope), input)
    return input.copy_(out) if inplace else out


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling, as torch.nn.functional.max_pool2d (indices are flat positions in each
    input plane, like torch's)."""
    kernel_size = _pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None or (not isinstance(stride, int) and len(stride) == 0) \
        else _pair(stride, "stride")
    x, unbatched = _batched(input, 4, "max_pool2d")
    out, indices = ops.max_pool2d(x, kernel_size, stride, _pair(padding, "padding"), _pair(dilation, "dilation"),
                                  bool(ceil_mode))
    out, indices = _format_like(out, x), _format_like(indices, x)
    if unbatched:
        out, indices = out.squeeze(0), indices.squeeze(0)
    return (out, indices) if return_indices else out


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling, as torch.nn.functional.avg_pool2d: the divisor is the window's size with
    the padding counted (count_include_pad) or not, or divisor_override."""
    kernel_size = _pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None or (not isinstance(stride, int) and len(stride) == 0) \
        else _pair(stride, "stride")
    if divisor_override is not None and (isinstance(divisor_override, bool) or not isinstance(divisor_override, int)
                                         or divisor_override <= 0):
        raise ValueError(f"avg_pool2d: divisor_override must be a positive int or None, got {divisor_override!r}")
    x, unbatched = _batched(input, 4, "avg_pool2d")
    out = _format_like(ops.avg_pool2d(x, kernel_size, stride, _pair(padding, "padding"), bool(ceil_mode),
                                      bool(count_include_pad), int(divisor_override or 0)), x)
    return out.squeeze(0) if unbatched else out


def adaptive_avg_pool2d(input, output_size):
    """2-D adaptive average pooling, as torch.nn.functional.adaptive_avg_pool2d: output_size an int or
    a pair whose None entries keep the input's size; (1, 1) is a global average."""
    x, unbatched = _batched(input, 4, "adaptive_avg_pool2d")
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    output_size = tuple(output_size)
    if len(output_size) != 2:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got {output_size!r}")
    size = tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(output_size))
    for s in size:
        if isinstance(s, bool) or not isinstance(s, int) or s <= 0:
            raise ValueError(f"adaptive_avg_pool2d: output_size entries must be positive ints or None, "
                             f"got {output_size!r}")
    out = _format_like(ops.adaptive_avg_pool2d(x, size), x)
    return out.squeeze(0) if unbatched else out


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalization, as torch.nn.functional.batch_norm: when training, the batch's statistics
    normalise the input and running_mean / running_var (if given) are updated in place,
    running = (1 - momentum) * running + momentum * batch (the unbiased variance); otherwise the running
    statistics normalise it. For momentum=None (a cumulative average) use fastconv.nn.BatchNorm2d,
    which counts the batches."""
    if momentum is None:
        raise ValueError("batch_norm: momentum=None (a cumulative average) needs the number of batches seen; "
                         "fastconv.nn.BatchNorm2d(momentum=None) keeps it, or pass 1 / batches yourself")
    out, mean, _invstd, var = ops.batch_norm(input, weight, bias, running_mean, running_var, bool(training),
                                             float(eps))
    if training and running_mean is not None and running_var is not None:
        with torch.no_grad():
            ops.batch_norm_update_stats(running_mean, running_var, mean, var, float(momentum))
    return _format_like(out, input)


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalization across channels, as torch.nn.functional.local_response_norm (AlexNet's
    normalization): input (N, C, *) divided by (k + alpha * the mean of the squares over `size`
    neighbouring channels) ** beta."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
    if input.dim() < 3:
        raise ValueError(f"local_response_norm: expected 3 or more dimensions (N, C, *), got {input.dim()}-D "
                         f"with shape {tuple(input.shape)}")
    out, _ = ops.local_response_norm(input, size, float(alpha), float(beta), float(k))
    return _format_like(out, input)


def _legacy_reduction(size_average, reduce, reduction):
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "none" if not reduce else ("mean" if size_average else "sum")


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """Softmax + cross-entropy in one fused op, as torch.nn.functional.cross_entropy with class-index
    targets: input (N, C), (C,) or (N, C, d1, ...); target (N,), () or (N, d1, ...)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if target.is_floating_point():
        raise NotImplementedError("fastconv.cross_entropy takes class-index targets (int64); "
                                  "class-probability targets are not supported")
    if input.dim() == 0:
        raise ValueError("fastconv.cross_entropy: input must have a class dimension, got a 0-D tensor")
    spatial = None
    if input.dim() == 1:
        x, t = input.unsqueeze(0), target.reshape(1)
    elif input.dim() == 2:
        x, t = input, target
    else:
        if target.shape != input.shape[:1] + input.shape[2:]:
            raise ValueError(f"fastconv.cross_entropy: target shape {tuple(target.shape)} does not match "
                             f"input shape {tuple(input.shape)} without its class dimension")
        spatial = target.shape
        x, t = input.movedim(1, -1).reshape(-1, input.shape[1]), target.reshape(-1)
    loss, _ = ops.cross_entropy(x, t, weight, REDUCTIONS[reduction], ignore_index, float(label_smoothing))
    if reduction == "none":
        if spatial is not None:
            loss = loss.reshape(spatial)
        elif input.dim() == 1:
            loss = loss.reshape(())
    return loss


def linear(input, weight, bias=None):
    """input @ weight.T + bias, as torch.nn.functional.linear."""
    return ops.linear(input, weight, bias)


def dropout(input, p=0.5, training=True, inplace=False):
    """Inverted dropout, as torch.nn.functional.dropout. The mask comes from a counter-based
    generator keyed by a seed drawn from torch's generator: torch.manual_seed reproduces it.
    When not training (or p == 0) the input itself is returned, as torch does."""
    if not isinstance(p, (int, float)) or math.isnan(p) or p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    # on the input's device, so that the kernel reads it there (no host round trip; CUDA-graph safe)
    seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=input.device)
    out = _format_like(ops.dropout(input, float(p), seed), input)
    return input.copy_(out) if inplace else out
