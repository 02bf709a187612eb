"""Fake (shape) kernels and autograd for every op in ``torch.ops.fastconv``.

The schemas and kernels are C++ (csrc/registration.cpp, csrc/cpu/*.cpp); this module makes the ops
differentiable (``torch.library.register_autograd``; cross_entropy's autograd is C++, in
csrc/autograd.cpp) and traceable by ``torch.compile`` and ``torch.library.opcheck``
(``torch.library.register_fake``). Every backward is itself a fastconv op,
and the backward ops of convolution, linear, ReLU and dropout are differentiable in turn (they are
bilinear in their inputs), so double backward through them works; through max-pooling and
cross-entropy it raises a clear error rather than silently returning wrong numbers.
"""
import math

import torch

ops = torch.ops.fastconv

# reduction names <-> the integers of the C++ schema (torch's at::Reduction)
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _window_out(size, pad_lo, pad_hi, kernel, dilation, stride):
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def pool_out(size, kernel, stride, padding, dilation, ceil_mode):
    """torch's max-pool output length (ceil mode: the last window must start inside input or left pad)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _same_device(op, **tensors):
    """The device check of the C++ kernels, for the fake kernels: a call that mixes devices (say CPU
    and meta tensors) is dispatched to the fake kernel, which must refuse it as the real one would.
    The first tensor is the one the C++ check compares the others with."""
    named = [(name, t) for name, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise RuntimeError(f"fastconv.{op}: {name} is on {t.device} but {first_name} is on {first.device}; "
                               "move both to one device")


# ---------------------------------------------------------------- conv2d

def _check_activation(op, relu, negative_slope):
    """The C++ check of a fused activation (csrc/fastconv.h check_activation), for the fake kernels."""
    if relu and not (math.isfinite(negative_slope) and negative_slope >= 0):
        raise ValueError(f"fastconv.{op}: a fused leaky ReLU needs a finite negative_slope >= 0 (its backward reads "
                         f"the sign of the output), got {negative_slope}; apply fastconv.functional.leaky_relu "
                         "separately")


def _activation_backward(grad, result, relu, negative_slope):
    """The gradient through a fused activation, from its output: with a slope >= 0 the output has the
    sign of the pre-activation, so ReLU's and LeakyReLU's backward read it off the output."""
    if not relu:
        return grad
    if negative_slope == 0:
        return ops.relu_backward(grad, result)
    return ops.leaky_relu_backward(grad, result, negative_slope)


@torch.library.register_fake("fastconv::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, relu=False, negative_slope=0.0):
    _same_device("conv2d", input=input, weight=weight, bias=bias)
    _check_activation("conv2d", relu, negative_slope)
    n, _, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    oh = _window_out(h, padding[0], padding[1], kh, dilation[0], stride[0])
    ow = _window_out(w, padding[2], padding[3], kw, dilation[1], stride[1])
    return input.new_empty((n, c_out, oh, ow))


@torch.library.register_fake("fastconv::conv2d_grad_input")
def _conv2d_grad_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    _same_device("conv2d_grad_input", grad_output=grad_output, weight=weight)
    return grad_output.new_empty(input_size)


@torch.library.register_fake("fastconv::conv2d_grad_weight")
def _conv2d_grad_weight_fake(grad_output, input, weight_size, stride, padding, dilation, groups):
    _same_device("conv2d_grad_weight", grad_output=grad_output, input=input)
    return grad_output.new_empty(weight_size)


@torch.library.register_fake("fastconv::bias_grad")
def _bias_grad_fake(grad_output, channel_dim):
    return grad_output.new_empty((grad_output.shape[channel_dim],))


def _conv2d_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, relu, *slope = inputs
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.relu = relu
    ctx.negative_slope = slope[0] if slope else 0.0
    ctx.has_bias = bias is not None
    ctx.save_for_backward(input, weight, output if relu else None)


def _conv_grads(ctx, grad, input, weight):
    """(grad input, grad weight, grad bias) of a convolution from the gradient of its output, each
    computed only where autograd needs it."""
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = ops.conv2d_grad_input(grad, weight, input.shape, *ctx.conv_args)
    if ctx.needs_input_grad[1]:
        grad_weight = ops.conv2d_grad_weight(grad, input, weight.shape, *ctx.conv_args)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = ops.bias_grad(grad, 1)
    return grad_input, grad_weight, grad_bias


def _conv2d_backward(ctx, grad):
    input, weight, result = ctx.saved_tensors
    grad = _activation_backward(grad, result, ctx.relu, ctx.negative_slope)
    return *_conv_grads(ctx, grad, input, weight), None, None, None, None, None, None


torch.library.register_autograd("fastconv::conv2d", _conv2d_backward, setup_context=_conv2d_setup)

# ---------------------------------------------------------------- conv2d_pool (conv2d + activation + max-pool)

@torch.library.register_fake("fastconv::conv2d_pool")
def _conv2d_pool_fake(input, weight, bias, stride, padding, dilation, groups, relu, pool, negative_slope=0.0):
    _same_device("conv2d_pool", input=input, weight=weight, bias=bias)
    _check_activation("conv2d_pool", relu, negative_slope)
    conv = _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, relu, negative_slope)
    n, c, oh, ow = conv.shape
    shape = (n, c, oh // pool[0], ow // pool[1])
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


@torch.library.impl("fastconv::conv2d_pool", "CUDA")
def _conv2d_pool_cuda(input, weight, bias, stride, padding, dilation, groups, relu, pool, negative_slope=0.0):
    # the CUDA kernels of the two ops, one after the other (the CPU kernel fuses them)
    conv = ops.conv2d(input, weight, bias, stride, padding, dilation, groups, relu, negative_slope)
    return ops.max_pool2d(conv, pool, pool, (0, 0), (1, 1), False)


def _conv2d_pool_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, relu, pool, *slope = inputs
    out, indices = output
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.pool = pool
    ctx.relu = relu
    ctx.negative_slope = slope[0] if slope else 0.0
    ctx.has_bias = bias is not None
    ctx.conv_shape = (input.shape[0], weight.shape[0],
                      _window_out(input.shape[2], padding[0], padding[1], weight.shape[2], dilation[0], stride[0]),
                      _window_out(input.shape[3], padding[2], padding[3], weight.shape[3], dilation[1], stride[1]))
    ctx.mark_non_differentiable(indices)
    ctx.set_materialize_grads(False)  # no zero tensor for the indices' gradient
    ctx.save_for_backward(input, weight, out if relu else None, indices)


def _conv2d_pool_backward(ctx, grad, _grad_indices):
    if grad is None:
        return (None,) * 10
    input, weight, out, indices = ctx.saved_tensors
    # the activation's derivative at a window's maximum is read off the pooled output (its sign): the
    # activation's backward runs on the pooled gradient, before it is scattered to the maxima
    grad = _activation_backward(grad, out, ctx.relu, ctx.negative_slope)
    grad = ops.max_pool2d_backward(grad, indices, ctx.conv_shape, ctx.pool, ctx.pool, (0, 0), (1, 1))
    return *_conv_grads(ctx, grad, input, weight), None, None, None, None, None, None, None


torch.library.register_autograd("fastconv::conv2d_pool", _conv2d_pool_backward, setup_context=_conv2d_pool_setup)

# ---------------------------------------------------------------- linear

@torch.library.register_fake("fastconv::linear")
def _linear_fake(input, weight, bias):
    _same_device("linear", input=input, weight=weight, bias=bias)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("fastconv::linear_grad_input")
def _linear_grad_input_fake(grad_output, weight):
    _same_device("linear_grad_input", grad_output=grad_output, weight=weight)
    return grad_output.new_empty((*grad_output.shape[:-1], weight.shape[1]))


@torch.library.register_fake("fastconv::linear_grad_weight")
def _linear_grad_weight_fake(grad_output, input):
    _same_device("linear_grad_weight", grad_output=grad_output, input=input)
    return grad_output.new_empty((grad_output.shape[-1], input.shape[-1]))


# linear's autograd is C++ (csrc/autograd.cpp: linear_grad_input, linear_grad_weight and bias_grad over
# the last dimension, each where needed), like cross_entropy's: a net's last layer (128 x 512 -> 10)
# computes in microseconds, less than a Python autograd wrapper costs.

# ---------------------------------------------------------------- relu

@torch.library.register_fake("fastconv::relu")
def _relu_fake(input):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastconv::relu_backward")
def _relu_backward_fake(grad_output, result):
    _same_device("relu_backward", grad_output=grad_output, result=result)
    return torch.empty_like(grad_output, memory_format=torch.contiguous_format)


def _relu_setup(ctx, inputs, output):
    ctx.save_for_backward(output)


def _relu_backward(ctx, grad):
    (result,) = ctx.saved_tensors
    return ops.relu_backward(grad, result)


torch.library.register_autograd("fastconv::relu", _relu_backward, setup_context=_relu_setup)

# ---------------------------------------------------------------- leaky_relu

@torch.library.register_fake("fastconv::leaky_relu")
def _leaky_relu_fake(input, negative_slope):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastconv::leaky_relu_backward")
def _leaky_relu_backward_fake(grad_output, self, negative_slope):
    _same_device("leaky_relu_backward", grad_output=grad_output, self=self)
    return torch.empty_like(grad_output, memory_format=torch.contiguous_format)


def _leaky_relu_setup(ctx, inputs, output):
    input, negative_slope = inputs
    ctx.negative_slope = negative_slope
    # with a slope >= 0 the result has the input's sign (x > 0 exactly where y > 0), so the result is kept,
    # which lets an in-place leaky_relu overwrite the input; a negative slope needs the input itself
    ctx.save_for_backward(output if negative_slope >= 0 else input)


def _leaky_relu_backward(ctx, grad):
    (self,) = ctx.saved_tensors
    return ops.leaky_relu_backward(grad, self, ctx.negative_slope), None


torch.library.register_autograd("fastconv::leaky_relu", _leaky_relu_backward, setup_context=_leaky_relu_setup)

# ---------------------------------------------------------------- max_pool2d

@torch.library.register_fake("fastconv::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    n, c, h, w = input.shape
    oh = pool_out(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = pool_out(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    return input.new_empty((n, c, oh, ow)), input.new_empty((n, c, oh, ow), dtype=torch.int64)


@torch.library.register_fake("fastconv::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, indices, input_size, kernel_size, stride, padding, dilation):
    _same_device("max_pool2d_backward", grad_output=grad_output, indices=indices)
    return grad_output.new_empty(input_size)


def _max_pool2d_setup(ctx, inputs, output):
    ctx.input_shape = inputs[0].shape
    ctx.window = inputs[1:5]  # kernel_size, stride, padding, dilation
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero tensor for the indices' gradient
    ctx.save_for_backward(output[1])


def _max_pool2d_backward(ctx, grad, _grad_indices):
    if grad is None:
        return (None,) * 6
    (indices,) = ctx.saved_tensors
    return ops.max_pool2d_backward(grad, indices, ctx.input_shape, *ctx.window), None, None, None, None, None


torch.library.register_autograd("fastconv::max_pool2d", _max_pool2d_backward, setup_context=_max_pool2d_setup)

# ---------------------------------------------------------------- batch_norm

@torch.library.register_fake("fastconv::batch_norm")
def _batch_norm_fake(input, weight, bias, running_mean, running_var, training, eps):
    _same_device("batch_norm", input=input, weight=weight, bias=bias, running_mean=running_mean,
                 running_var=running_var)
    c = input.shape[1]
    return (torch.empty_like(input, memory_format=torch.contiguous_format), input.new_empty((c,)),
            input.new_empty((c,)), input.new_empty((c,)))


@torch.library.register_fake("fastconv::batch_norm_backward")
def _batch_norm_backward_fake(grad_output, input, weight, mean, invstd, training):
    _same_device("batch_norm_backward", input=input, grad_output=grad_output, weight=weight, mean=mean, invstd=invstd)
    c = input.shape[1]
    return torch.empty_like(input, memory_format=torch.contiguous_format), input.new_empty((c,)), input.new_empty((c,))


@torch.library.register_fake("fastconv::batch_norm_update_stats")
def _batch_norm_update_stats_fake(running_mean, running_var, mean, var, momentum):
    _same_device("batch_norm_update_stats", running_mean=running_mean, running_var=running_var, mean=mean, var=var)


def _batch_norm_setup(ctx, inputs, output):
    input, weight, bias, _running_mean, _running_var, training, _eps = inputs
    _out, mean, invstd, var = output
    ctx.training = training
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
    ctx.mark_non_differentiable(mean, invstd, var)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, weight, mean, invstd)


def _batch_norm_backward(ctx, grad, _g_mean, _g_invstd, _g_var):
    if grad is None:
        return (None,) * 7
    input, weight, mean, invstd = ctx.saved_tensors
    grad_input, grad_weight, grad_bias = ops.batch_norm_backward(grad, input, weight, mean, invstd, ctx.training)
    return (grad_input if ctx.needs_input_grad[0] else None,
            grad_weight if ctx.has_weight and ctx.needs_input_grad[1] else None,
            grad_bias if ctx.has_bias and ctx.needs_input_grad[2] else None, None, None, None, None)


torch.library.register_autograd("fastconv::batch_norm", _batch_norm_backward, setup_context=_batch_norm_setup)


# ---------------------------------------------------------------- local_response_norm

@torch.library.register_fake("fastconv::local_response_norm")
def _local_response_norm_fake(input, size, alpha, beta, k):
    return (torch.empty_like(input, memory_format=torch.contiguous_format),
            torch.empty_like(input, memory_format=torch.contiguous_format))


@torch.library.register_fake("fastconv::local_response_norm_backward")
def _local_response_norm_backward_fake(grad_output, input, output, scale, size, alpha, beta):
    _same_device("local_response_norm_backward", input=input, grad_output=grad_output, output=output, scale=scale)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _local_response_norm_setup(ctx, inputs, output):
    input, size, alpha, beta, _k = inputs
    out, scale = output
    ctx.window = (size, alpha, beta)
    ctx.mark_non_differentiable(scale)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, out, scale)


def _local_response_norm_backward(ctx, grad, _grad_scale):
    if grad is None:
        return (None,) * 5
    input, out, scale = ctx.saved_tensors
    return ops.local_response_norm_backward(grad, input, out, scale, *ctx.window), None, None, None, None


torch.library.register_autograd("fastconv::local_response_norm", _local_response_norm_backward,
                                setup_context=_local_response_norm_setup)


# ---------------------------------------------------------------- avg_pool2d, adaptive_avg_pool2d
# The backward of each is linear in grad_output and its adjoint is the forward pooling: the backward
# op's own gradient is the forward op applied to the incoming gradient, so double backward works.

@torch.library.register_fake("fastconv::avg_pool2d")
def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    n, c, h, w = input.shape
    oh = pool_out(h, kernel_size[0], stride[0], padding[0], 1, ceil_mode)
    ow = pool_out(w, kernel_size[1], stride[1], padding[1], 1, ceil_mode)
    return input.new_empty((n, c, oh, ow))


@torch.library.register_fake("fastconv::avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input_size, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override):
    return grad_output.new_empty(input_size)


@torch.library.register_fake("fastconv::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(input, output_size):
    return input.new_empty((*input.shape[:2], *output_size))


@torch.library.register_fake("fastconv::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input_size):
    return grad_output.new_empty(input_size)


def _avg_pool2d_setup(ctx, inputs, output):
    ctx.input_shape = inputs[0].shape
    ctx.window = inputs[1:]  # kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override


def _avg_pool2d_backward(ctx, grad):
    return (ops.avg_pool2d_backward(grad, ctx.input_shape, *ctx.window),) + (None,) * 6


def _avg_pool2d_backward_setup(ctx, inputs, output):
    ctx.window = inputs[2:]


def _avg_pool2d_backward_backward(ctx, g):
    return (ops.avg_pool2d(g, *ctx.window),) + (None,) * 7


def _adaptive_avg_pool2d_setup(ctx, inputs, output):
    ctx.input_shape = inputs[0].shape


def _adaptive_avg_pool2d_backward(ctx, grad):
    return ops.adaptive_avg_pool2d_backward(grad, ctx.input_shape), None


def _adaptive_avg_pool2d_backward_setup(ctx, inputs, output):
    ctx.output_size = inputs[0].shape[2:]


def _adaptive_avg_pool2d_backward_backward(ctx, g):
    return ops.adaptive_avg_pool2d(g, ctx.output_size), None


torch.library.register_autograd("fastconv::avg_pool2d", _avg_pool2d_backward, setup_context=_avg_pool2d_setup)
torch.library.register_autograd("fastconv::avg_pool2d_backward", _avg_pool2d_backward_backward,
                                setup_context=_avg_pool2d_backward_setup)
torch.library.register_autograd("fastconv::adaptive_avg_pool2d", _adaptive_avg_pool2d_backward,
                                setup_context=_adaptive_avg_pool2d_setup)
torch.library.register_autograd("fastconv::adaptive_avg_pool2d_backward", _adaptive_avg_pool2d_backward_backward,
                                setup_context=_adaptive_avg_pool2d_backward_setup)

# ---------------------------------------------------------------- cross_entropy

@torch.library.register_fake("fastconv::cross_entropy")
def _cross_entropy_fake(input, target, weight, reduction, ignore_index, label_smoothing):
    _same_device("cross_entropy", input=input, target=target, weight=weight)
    n = input.shape[0]
    loss = input.new_empty((n,)) if reduction == REDUCTIONS["none"] else input.new_empty(())
    return loss, input.new_empty((n,))


@torch.library.register_fake("fastconv::cross_entropy_backward")
def _cross_entropy_backward_fake(grad_loss, input, target, weight, lse, reduction, ignore_index, label_smoothing):
    _same_device("cross_entropy_backward", input=input, grad_loss=grad_loss, target=target, weight=weight,
                 lse=lse)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


# cross_entropy's autograd is C++ (csrc/autograd.cpp: the gradient of input through
# cross_entropy_backward, none for lse or the class weights): the call is a few microseconds of kernel,
# which a Python autograd wrapper would multiply.


# ---------------------------------------------------------------- dropout

@torch.library.register_fake("fastconv::dropout")
def _dropout_fake(input, p, seed):
    if seed.device != input.device:  # the C++ check's message (csrc/fastconv.h check_dropout)
        where = "CPU" if input.device.type == "cpu" else str(input.device)
        raise ValueError(f"fastconv.dropout: seed must be a {where} int64 tensor with one element, got "
                         f"{seed.dtype} of shape {list(seed.shape)} on {seed.device}")
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _dropout_setup(ctx, inputs, output):
    ctx.p = inputs[1]
    ctx.save_for_backward(inputs[2])


def _dropout_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    # the mask is a function of (seed, element index): the gradient is dropout of grad, same seed
    return ops.dropout(grad, ctx.p, seed), None, None


torch.library.register_autograd("fastconv::dropout", _dropout_backward, setup_context=_dropout_setup)


# ---------------------------------------------------------------- double backward
#
# conv2d_grad_input(dy, W) and conv2d_grad_weight(dy, X) are bilinear, so their derivatives are the
# other two convolution ops: for grad_input = ConvT(dy, W) with incoming gradient G (shaped like X),
#   d/d dy = conv2d(G, W)          d/d W = conv2d_grad_weight(dy, G)
# and for grad_weight = Corr(dy, X) with G shaped like W,
#   d/d dy = conv2d(X, G)          d/d X = conv2d_grad_input(dy, G)
# The same holds for linear with its three ops.

def _conv_grad_setup(ctx, inputs, output):
    grad_output, other, size, stride, padding, dilation, groups = inputs
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.save_for_backward(grad_output, other)


def _conv2d_grad_input_backward(ctx, g):
    dy, weight = ctx.saved_tensors
    d_dy = ops.conv2d(g, weight, None, *ctx.conv_args) if ctx.needs_input_grad[0] else None
    d_w = ops.conv2d_grad_weight(dy, g, weight.shape, *ctx.conv_args) if ctx.needs_input_grad[1] else None
    return d_dy, d_w, None, None, None, None, None


def _conv2d_grad_weight_backward(ctx, g):
    dy, x = ctx.saved_tensors
    d_dy = ops.conv2d(x, g, None, *ctx.conv_args) if ctx.needs_input_grad[0] else None
    d_x = ops.conv2d_grad_input(dy, g, x.shape, *ctx.conv_args) if ctx.needs_input_grad[1] else None
    return d_dy, d_x, None, None, None, None, None


torch.library.register_autograd("fastconv::conv2d_grad_input", _conv2d_grad_input_backward,
                                setup_context=_conv_grad_setup)
torch.library.register_autograd("fastconv::conv2d_grad_weight", _conv2d_grad_weight_backward,
                                setup_context=_conv_grad_setup)


def _bias_grad_setup(ctx, inputs, output):
    grad_output, channel_dim = inputs
    ctx.shape, ctx.dim = grad_output.shape, channel_dim % grad_output.dim()


def _bias_grad_backward(ctx, g):
    view = [1] * len(ctx.shape)
    view[ctx.dim] = -1
    return g.reshape(view).expand(ctx.shape), None


torch.library.register_autograd("fastconv::bias_grad", _bias_grad_backward, setup_context=_bias_grad_setup)


def _pair_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _linear_grad_input_backward(ctx, g):
    dy, weight = ctx.saved_tensors
    d_dy = ops.linear(g, weight, None) if ctx.needs_input_grad[0] else None
    d_w = ops.linear_grad_weight(dy, g) if ctx.needs_input_grad[1] else None
    return d_dy, d_w


def _linear_grad_weight_backward(ctx, g):
    dy, x = ctx.saved_tensors
    d_dy = ops.linear(x, g, None) if ctx.needs_input_grad[0] else None
    d_x = ops.linear_grad_input(dy, g) if ctx.needs_input_grad[1] else None
    return d_dy, d_x


torch.library.register_autograd("fastconv::linear_grad_input", _linear_grad_input_backward, setup_context=_pair_setup)
torch.library.register_autograd("fastconv::linear_grad_weight", _linear_grad_weight_backward,
                                setup_context=_pair_setup)


def _relu_backward_backward(ctx, g):
    _, result = ctx.saved_tensors
    # linear in grad_output; piecewise constant (zero derivative) in result
    return ops.relu_backward(g, result), None


torch.library.register_autograd("fastconv::relu_backward", _relu_backward_backward, setup_context=_pair_setup)


def _leaky_relu_backward_setup(ctx, inputs, output):
    grad_output, self, negative_slope = inputs
    ctx.negative_slope = negative_slope
    ctx.save_for_backward(self)


def _leaky_relu_backward_backward(ctx, g):
    (self,) = ctx.saved_tensors
    # linear in grad_output; piecewise constant (zero derivative) in self
    return ops.leaky_relu_backward(g, self, ctx.negative_slope), None, None


torch.library.register_autograd("fastconv::leaky_relu_backward", _leaky_relu_backward_backward,
                                setup_context=_leaky_relu_backward_setup)


def _no_double_backward(op):
    def backward(ctx, *grads):
        raise NotImplementedError(f"fastconv.{op}: double backward (a gradient of its gradient) is not "
                                  "implemented; use torch.nn.functional for this layer if you need it")
    return backward


torch.library.register_autograd("fastconv::max_pool2d_backward", _no_double_backward("max_pool2d"))
torch.library.register_autograd("fastconv::cross_entropy_backward", _no_double_backward("cross_entropy"))
torch.library.register_autograd("fastconv::local_response_norm_backward", _no_double_backward("local_response_norm"))
torch.library.register_autograd("fastconv::batch_norm_backward", _no_double_backward("batch_norm"))


# ---------------------------------------------------------------- autocast
#
# Under torch.autocast, convolution and linear run in the low-precision type (bfloat16 on the CPU,
# float16 on CUDA) and cross-entropy in float32, as torch's own autocast policy does; the other ops
# follow their input's type. Every kernel accepts float16 / bfloat16 and computes them in float32.

for _op in ("fastconv::conv2d", "fastconv::conv2d_pool", "fastconv::linear"):
    torch.library.register_autocast(_op, "cpu", torch.bfloat16)
    torch.library.register_autocast(_op, "cuda", torch.float16)
for _device in ("cpu", "cuda"):
    torch.library.register_autocast("fastconv::cross_entropy", _device, torch.float32)
