"""Bad input gets a Python exception whose message names the problem; good input is never modified.

A missing check could make a kernel read out of bounds and crash the interpreter, which would take
pytest down with it. So every bad call is first run in ONE subprocess (``_preflight``) that reports
case by case; a case that crashes it fails its own test, and the subprocess is restarted after it.
Only cases that did not crash are then run in-process under ``pytest.raises(..., match=...)``.
"""
import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

import fastconv.functional as FF
from conftest import FASTCONV_PATH, SEED, assert_bitwise_equal

# the argument checks that stand between bad input and the kernels: run by the sanitizer too
pytestmark = pytest.mark.sanitize

ops = torch.ops.fastconv
TESTS_DIR = Path(__file__).resolve().parent


def r(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype)


def i(*shape, dtype=torch.int64):
    return torch.randint(0, 5, shape, dtype=dtype)


def t(values):
    return torch.tensor(values)


def meta(tensor):
    return tensor.to("meta")


def seed(dtype=torch.int64, n=1):
    return torch.randint(-2**31, 2**31, (n,), dtype=dtype)


# the window arguments of max_pool2d_backward: a 3x3 window, stride 2, over a 5x5 plane (2x2 outputs)
POOL_WINDOW = ([3, 3], [2, 2], [0, 0], [1, 1])

CPU_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def on_cpu_kernel(op, *args):
    """Calls the CPU kernel of `op` even when an argument is a meta tensor.

    A plain call that mixes CPU and meta tensors never reaches the CPU kernel: Meta is the
    highest-priority backend key, so the dispatcher picks the Meta (fake) kernel (see
    test_mixed_meta_and_cpu_is_an_error). On a CPU-only machine, this is how a tensor "on another
    device" reaches the kernel's device check.
    """
    return op.default.redispatch(CPU_ONLY, *args)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    call: Callable
    exc: type
    match: str
    xfail: str = ""  # a known bug: the reason, naming it


C = Case
X, W = (1, 3, 5, 5), (4, 3, 3, 3)  # a valid conv input / weight pair
CONV = ([1, 1], [0, 0, 0, 0], [1, 1], 1)  # stride, padding, dilation, groups of the raw op

CASES = [
    # ---------------------------------------------------------------- conv2d
    C("conv2d-channel-mismatch", lambda: FF.conv2d(r(1, 3, 5, 5), r(4, 2, 3, 3)), ValueError,
      r"fastconv\.conv2d: input has 3 channels but weight expects 2"),
    C("conv2d-channel-mismatch-groups", lambda: FF.conv2d(r(1, 4, 5, 5), r(4, 1, 3, 3), groups=2), ValueError,
      r"input has 4 channels but weight expects 2 \(weight.shape\[1\] = 1 x groups = 2\)"),
    C("conv2d-int-tensors", lambda: FF.conv2d(i(*X), i(*W)), TypeError,
      r"fastconv\.conv2d: input must be float32 or float64, got Long"),
    C("conv2d-complex", lambda: FF.conv2d(r(*X).to(torch.complex64), r(*W).to(torch.complex64)), TypeError,
      r"input must be float32 or float64, got ComplexFloat"),
    C("conv2d-half-with-float-weight", lambda: FF.conv2d(r(*X).half(), r(*W)), TypeError,
      r"weight must have the same dtype as input \(Half\), got Float"),
    C("conv2d-mixed-dtypes", lambda: FF.conv2d(r(*X), r(*W, dtype=torch.float64)), TypeError,
      r"weight must have the same dtype as input \(Float\), got Double"),
    C("conv2d-mixed-dtypes-bias", lambda: FF.conv2d(r(*X), r(*W), r(4, dtype=torch.float64)), TypeError,
      r"bias must have the same dtype as input \(Float\), got Double"),
    C("conv2d-device-weight", lambda: on_cpu_kernel(ops.conv2d, r(*X), meta(r(*W)), None, *CONV), RuntimeError,
      r"fastconv\.conv2d: weight is on meta but input is on cpu; move both to one device"),
    C("conv2d-device-bias", lambda: on_cpu_kernel(ops.conv2d, r(*X), r(*W), meta(r(4)), *CONV), RuntimeError,
      r"bias is on meta but input is on cpu"),
    C("conv2d-kernel-larger-than-input", lambda: FF.conv2d(r(1, 1, 4, 6), r(1, 1, 5, 5)), ValueError,
      r"kernel \(5x5 with dilation\) is larger than the padded input \(4x6\)"),
    C("conv2d-dilated-kernel-larger", lambda: FF.conv2d(r(1, 1, 6, 6), r(1, 1, 3, 3), dilation=3), ValueError,
      r"kernel \(7x7 with dilation\) is larger than the padded input \(6x6\)"),
    C("conv2d-zero-stride", lambda: FF.conv2d(r(*X), r(*W), stride=0), ValueError,
      r"stride must be >= 1, got \[0, 0\]"),
    C("conv2d-zero-stride-w", lambda: FF.conv2d(r(*X), r(*W), stride=(1, 0)), ValueError,
      r"stride must be >= 1, got \[1, 0\]"),
    C("conv2d-zero-dilation", lambda: FF.conv2d(r(*X), r(*W), dilation=0), ValueError, r"dilation must be >= 1"),
    C("conv2d-negative-padding", lambda: FF.conv2d(r(*X), r(*W), padding=-1), ValueError,
      r"padding must be >= 0, got \[-1, -1, -1, -1\]"),
    C("conv2d-groups-not-dividing-input", lambda: FF.conv2d(r(1, 3, 5, 5), r(4, 1, 3, 3), groups=2), ValueError,
      r"groups \(2\) must divide the input channels \(3\)"),
    C("conv2d-groups-not-dividing-output", lambda: FF.conv2d(r(1, 4, 5, 5), r(3, 2, 3, 3), groups=2), ValueError,
      r"groups \(2\) must divide the output channels \(3\)"),
    C("conv2d-zero-groups", lambda: FF.conv2d(r(*X), r(*W), groups=0), ValueError, r"groups must be >= 1, got 0"),
    C("conv2d-bias-size", lambda: FF.conv2d(r(*X), r(*W), r(5)), ValueError,
      r"bias must have shape \[4\] \(one value per output channel\), got \[5\]"),
    C("conv2d-bias-rank", lambda: FF.conv2d(r(*X), r(*W), r(4, 1)), ValueError, r"bias must have shape \[4\]"),
    C("conv2d-empty-weight", lambda: FF.conv2d(r(*X), r(0, 3, 3, 3)), ValueError, r"weight must have non-zero sizes"),
    C("conv2d-input-2d", lambda: FF.conv2d(r(5, 5), r(*W)), ValueError,
      r"fastconv\.conv2d: expected a 3-D \(unbatched\) or 4-D \(batched\) input, got 2-D with shape \(5, 5\)"),
    C("conv2d-input-5d", lambda: FF.conv2d(r(1, 1, 3, 5, 5), r(*W)), ValueError, r"got 5-D"),
    C("conv2d-weight-3d", lambda: FF.conv2d(r(*X), r(4, 3, 3)), ValueError,
      r"weight must be 4-D \(C_out, C_in / groups, kH, kW\), got shape \(4, 3, 3\)"),
    C("conv2d-op-input-3d", lambda: ops.conv2d(r(3, 5, 5), r(*W), None, *CONV), ValueError,
      r"fastconv\.conv2d: input must be 4-D \(N, C, H, W\), got shape \[3, 5, 5\]"),
    C("conv2d-op-padding-2-values", lambda: ops.conv2d(r(*X), r(*W), None, [1, 1], [1, 1], [1, 1], 1), ValueError,
      r"padding must have 4 values \(top, bottom, left, right\), got 2"),
    C("conv2d-op-stride-3-values", lambda: ops.conv2d(r(*X), r(*W), None, [1, 1, 1], [0] * 4, [1, 1], 1), ValueError,
      r"stride must have 2 values, got 3"),
    C("conv2d-same-strided", lambda: FF.conv2d(r(*X), r(*W), stride=2, padding="same"), ValueError,
      r"padding='same' is not supported for strided convolutions"),
    C("conv2d-padding-string", lambda: FF.conv2d(r(*X), r(*W), padding="full"), ValueError,
      r"padding must be an int, a pair, 'valid' or 'same', got 'full'"),
    C("conv2d-stride-triple", lambda: FF.conv2d(r(*X), r(*W), stride=(1, 1, 1)), ValueError,
      r"stride must be an int or a pair of ints, got \(1, 1, 1\)"),
    C("conv2d-grad-input-shape", lambda: ops.conv2d_grad_input(r(1, 4, 2, 3), r(*W), list(X), *CONV), ValueError,
      r"fastconv\.conv2d_grad_input: grad_output must have shape \[1, 4, 3, 3\], got \[1, 4, 2, 3\]"),
    C("conv2d-grad-weight-dtype",
      lambda: ops.conv2d_grad_weight(r(1, 4, 3, 3), r(*X, dtype=torch.float64), list(W), *CONV), TypeError,
      r"fastconv\.conv2d_grad_weight: input must have the same dtype as grad_output \(Float\), got Double"),
    C("conv2d-grad-weight-device",
      lambda: on_cpu_kernel(ops.conv2d_grad_weight, r(1, 4, 3, 3), meta(r(*X)), list(W), *CONV), RuntimeError,
      r"input is on meta but grad_output is on cpu"),
    C("conv2d-grad-input-int",
      lambda: ops.conv2d_grad_input(i(1, 4, 3, 3), i(*W), list(X), *CONV), TypeError,
      r"fastconv\.conv2d_grad_input: grad_output must be float32 or float64, got Long"),
    C("conv2d-grad-input-weight-dtype",
      lambda: ops.conv2d_grad_input(r(1, 4, 3, 3), r(*W, dtype=torch.float64), list(X), *CONV), TypeError,
      r"weight must have the same dtype as grad_output \(Float\), got Double"),
    C("bias-grad-channel-dim", lambda: ops.bias_grad(r(2, 3, 4, 4), 4), IndexError,
      r"fastconv\.bias_grad: channel_dim 4 is out of range for a 4-D tensor"),
    C("bias-grad-0d", lambda: ops.bias_grad(r(), 0), IndexError, r"grad_output must have at least 1 dimension"),
    C("bias-grad-int", lambda: ops.bias_grad(i(2, 3), 1), TypeError, r"grad_output must be float32 or float64"),
    # ---------------------------------------------------------------- conv1d
    C("conv1d-channel-mismatch", lambda: FF.conv1d(r(2, 3, 9), r(4, 2, 3)), ValueError,
      r"input has 3 channels but weight expects 2"),
    C("conv1d-stride-pair", lambda: FF.conv1d(r(2, 3, 9), r(4, 3, 3), stride=(1, 2)), ValueError,
      r"stride of conv1d must be an int or a 1-tuple, got \(1, 2\)"),
    C("conv1d-weight-4d", lambda: FF.conv1d(r(2, 3, 9), r(*W)), ValueError,
      r"fastconv\.conv1d: weight must be 3-D \(C_out, C_in / groups, k\), got shape \(4, 3, 3, 3\)"),
    C("conv1d-input-4d", lambda: FF.conv1d(r(*X), r(4, 3, 3)), ValueError,
      r"fastconv\.conv1d: expected a 2-D \(unbatched\) or 3-D \(batched\) input, got 4-D"),
    C("conv1d-kernel-too-long", lambda: FF.conv1d(r(2, 3, 4), r(4, 3, 5)), ValueError,
      r"kernel \(1x5 with dilation\) is larger than the padded input \(1x4\)"),
    C("conv1d-zero-stride", lambda: FF.conv1d(r(2, 3, 9), r(4, 3, 3), stride=0), ValueError,
      r"stride must be >= 1, got \[1, 0\]"),
    C("conv1d-int", lambda: FF.conv1d(i(2, 3, 9), i(4, 3, 3)), TypeError, r"input must be float32 or float64"),
    # ---------------------------------------------------------------- linear
    C("linear-feature-mismatch", lambda: FF.linear(r(2, 5), r(9, 4)), ValueError,
      r"fastconv\.linear: input has 5 features in its last dimension but weight expects 4 "
      r"\(weight shape \[9, 4\]\)"),
    C("linear-bias-size", lambda: FF.linear(r(2, 5), r(9, 5), r(8)), ValueError,
      r"fastconv\.linear: bias must have shape \[9\], got \[8\]"),
    C("linear-bias-rank", lambda: FF.linear(r(2, 5), r(9, 5), r(1, 9)), ValueError, r"bias must have shape \[9\]"),
    C("linear-weight-1d", lambda: FF.linear(r(2, 5), r(5)), ValueError,
      r"weight must be 2-D \(out_features, in_features\), got 1-D with shape \[5\]"),
    C("linear-input-0d", lambda: FF.linear(r(), r(9, 5)), ValueError, r"input must have at least 1 dimension"),
    C("linear-int", lambda: FF.linear(i(2, 5), i(9, 5)), TypeError,
      r"fastconv\.linear: input must be float32 or float64, got Long"),
    C("linear-complex", lambda: FF.linear(r(2, 5).to(torch.complex64), r(9, 5).to(torch.complex64)), TypeError, r"got ComplexFloat"),
    C("linear-mixed-dtypes", lambda: FF.linear(r(2, 5), r(9, 5, dtype=torch.float64)), TypeError,
      r"weight must have the same dtype as input \(Float\), got Double"),
    C("linear-mixed-dtypes-bias", lambda: FF.linear(r(2, 5), r(9, 5), r(9, dtype=torch.float64)), TypeError,
      r"bias must have the same dtype as input \(Float\), got Double"),
    C("linear-device", lambda: on_cpu_kernel(ops.linear, r(2, 5), meta(r(9, 5)), None), RuntimeError,
      r"fastconv\.linear: weight is on meta but input is on cpu"),
    C("linear-grad-weight-rows", lambda: ops.linear_grad_weight(r(3, 9), r(2, 5)), ValueError,
      r"grad_output \[3, 9\] and input \[2, 5\] must agree in all but the last dimension"),
    C("linear-grad-input-features", lambda: ops.linear_grad_input(r(3, 8), r(9, 5)), ValueError,
      r"grad_output must end in 9 features, got shape \[3, 8\]"),
    # ---------------------------------------------------------------- relu
    C("relu-int", lambda: FF.relu(i(3, 4)), TypeError, r"fastconv\.relu: input must be float32 or float64, got Long"),
    C("relu-bool", lambda: FF.relu(i(3, 4) > 2), TypeError, r"got Bool"),
    C("relu-complex", lambda: FF.relu(r(3, 4).to(torch.complex64)), TypeError, r"got ComplexFloat"),
    C("relu-backward-shape", lambda: ops.relu_backward(r(3, 4), r(4, 3)), ValueError,
      r"fastconv\.relu_backward: grad_output \[3, 4\] and result \[4, 3\] must have the same shape"),
    C("relu-backward-dtype", lambda: ops.relu_backward(r(3, 4), r(3, 4, dtype=torch.float64)), TypeError,
      r"result must have the same dtype as grad_output"),
    C("relu-backward-device", lambda: on_cpu_kernel(ops.relu_backward, r(3, 4), meta(r(3, 4))), RuntimeError,
      r"result is on meta but grad_output is on cpu"),
    # ---------------------------------------------------------------- leaky_relu
    C("leaky-relu-int", lambda: FF.leaky_relu(i(3, 4)), TypeError,
      r"fastconv\.leaky_relu: input must be float32 or float64, got Long"),
    C("leaky-relu-slope", lambda: FF.leaky_relu(r(3, 4), None), TypeError, r"negative_slope must be a number"),
    C("leaky-relu-backward-shape", lambda: ops.leaky_relu_backward(r(3, 4), r(4, 3), 0.1), ValueError,
      r"fastconv\.leaky_relu_backward: grad_output \[3, 4\] and self \[4, 3\] must have the same shape"),
    C("leaky-relu-backward-dtype", lambda: ops.leaky_relu_backward(r(3, 4), r(3, 4, dtype=torch.float64), 0.1),
      TypeError, r"self must have the same dtype as grad_output"),
    C("leaky-relu-backward-device", lambda: on_cpu_kernel(ops.leaky_relu_backward, r(3, 4), meta(r(3, 4)), 0.1),
      RuntimeError, r"self is on meta but grad_output is on cpu"),
    # ---------------------------------------------------------------- max_pool2d
    C("pool-zero-stride", lambda: FF.max_pool2d(r(*X), 2, stride=0), ValueError,
      r"fastconv\.max_pool2d: stride must be >= 1, got \[0, 0\]"),
    C("pool-zero-kernel", lambda: FF.max_pool2d(r(*X), 0), ValueError, r"kernel_size must be >= 1"),
    C("pool-padding-over-half-kernel", lambda: FF.max_pool2d(r(*X), 3, padding=2), ValueError,
      r"padding must be at most half of kernel_size, got padding \[2, 2\] for kernel_size \[3, 3\]"),
    C("pool-padding-over-half-kernel-w", lambda: FF.max_pool2d(r(*X), (4, 2), padding=(2, 2)), ValueError,
      r"padding must be at most half of kernel_size"),
    C("pool-negative-padding", lambda: FF.max_pool2d(r(*X), 2, padding=-1), ValueError, r"padding must be >= 0"),
    C("pool-zero-dilation", lambda: FF.max_pool2d(r(*X), 2, dilation=0), ValueError, r"dilation must be >= 1"),
    C("pool-dilated-window-larger-than-input", lambda: FF.max_pool2d(r(1, 1, 4, 4), 3, 1, dilation=2), ValueError,
      r"the window \(kernel_size \[3, 3\], dilation \[2, 2\]\) does not fit the padded input 4x4"),
    C("pool-window-larger-than-input", lambda: FF.max_pool2d(r(1, 1, 2, 2), 3), ValueError,
      r"does not fit the padded input 2x2"),
    C("pool-window-misses-input", lambda: FF.max_pool2d(r(1, 1, 1, 1), 2, stride=5, padding=1, dilation=3),
      ValueError, r"does not fit the padded input 1x1"),
    C("pool-empty-plane", lambda: FF.max_pool2d(r(1, 1, 0, 4), 2), ValueError,
      r"input must have non-zero C, H and W"),
    C("pool-input-2d", lambda: FF.max_pool2d(r(5, 5), 2), ValueError,
      r"fastconv\.max_pool2d: expected a 3-D \(unbatched\) or 4-D \(batched\) input, got 2-D"),
    C("pool-input-5d", lambda: FF.max_pool2d(r(1, 1, 1, 5, 5), 2), ValueError, r"got 5-D"),
    C("pool-op-input-3d", lambda: ops.max_pool2d(r(1, 5, 5), [2, 2], [2, 2], [0, 0], [1, 1], False), ValueError,
      r"fastconv\.max_pool2d: input must be 4-D \(N, C, H, W\), got 3-D"),
    C("pool-kernel-triple", lambda: FF.max_pool2d(r(*X), (2, 2, 2)), ValueError,
      r"kernel_size must be an int or a pair of ints"),
    C("pool-int", lambda: FF.max_pool2d(i(*X), 2), TypeError, r"input must be float32 or float64, got Long"),
    C("pool-complex", lambda: FF.max_pool2d(r(*X).to(torch.complex64), 2), TypeError, r"got ComplexFloat"),
    C("pool-backward-index-too-large",
      lambda: ops.max_pool2d_backward(r(1, 1, 2, 2), t([[[[0, 3], [100, 7]]]]), [1, 1, 5, 5], *POOL_WINDOW), IndexError,
      r"fastconv\.max_pool2d_backward: index 100 is outside the input plane of 25 elements"),
    C("pool-backward-index-negative",
      lambda: ops.max_pool2d_backward(r(1, 1, 2, 2), t([[[[0, -1], [4, 7]]]]), [1, 1, 5, 5], *POOL_WINDOW), IndexError,
      r"index -1 is outside the input plane"),
    C("pool-backward-indices-int32",
      lambda: ops.max_pool2d_backward(r(1, 1, 2, 2), t([[[[0, 1], [4, 7]]]]).int(), [1, 1, 5, 5], *POOL_WINDOW), TypeError,
      r"indices must be int64, got Int"),
    C("pool-backward-indices-shape",
      lambda: ops.max_pool2d_backward(r(1, 1, 2, 2), t([[[[0, 1, 4, 7]]]]), [1, 1, 5, 5], *POOL_WINDOW), ValueError,
      r"indices \[1, 1, 1, 4\] and grad_output \[1, 1, 2, 2\] must have the same shape"),
    C("pool-backward-input-size",
      lambda: ops.max_pool2d_backward(r(1, 1, 2, 2), t([[[[0, 1], [4, 7]]]]), [2, 1, 5, 5], *POOL_WINDOW), ValueError,
      r"input_size \[2, 1, 5, 5\] does not match grad_output \[1, 1, 2, 2\]"),
    C("pool-backward-device",
      lambda: on_cpu_kernel(ops.max_pool2d_backward, r(1, 1, 2, 2), meta(t([[[[0, 1], [4, 7]]]])), [1, 1, 5, 5], *POOL_WINDOW),
      RuntimeError, r"indices is on meta but grad_output is on cpu"),
    # ---------------------------------------------------------------- cross_entropy
    C("ce-target-too-large", lambda: FF.cross_entropy(r(4, 5), t([0, 5, 1, 2])), IndexError,
      r"fastconv\.cross_entropy: target 5 at row 1 is out of range for 5 classes "
      r"\(expected 0\.\.4 or ignore_index -100\)"),
    C("ce-target-too-large-sum", lambda: FF.cross_entropy(r(4, 5), t([0, 1, 1, 9]), reduction="sum"), IndexError,
      r"target 9 at row 3 is out of range for 5 classes"),
    C("ce-target-too-large-none", lambda: FF.cross_entropy(r(4, 5), t([7, 1, 1, 2]), reduction="none"),
      IndexError, r"target 7 at row 0 is out of range"),
    C("ce-target-negative", lambda: FF.cross_entropy(r(4, 5), t([0, -1, 1, 2])), IndexError,
      r"target -1 at row 1 is out of range for 5 classes \(expected 0\.\.4 or ignore_index -100\)"),
    C("ce-target-negative-custom-ignore",
      lambda: FF.cross_entropy(r(4, 5), t([0, -2, -1, 2]), ignore_index=-2), IndexError,
      r"target -1 at row 2 is out of range for 5 classes \(expected 0\.\.4 or ignore_index -2\)"),
    C("ce-target-negative-weighted-ls",
      lambda: FF.cross_entropy(r(4, 5), t([0, 1, -3, 2]), weight=r(5).abs(), label_smoothing=0.1), IndexError,
      r"target -3 at row 2 is out of range"),
    C("ce-target-out-of-range-spatial", lambda: FF.cross_entropy(r(2, 3, 2, 2), t([[[0, 1], [2, 3]], [[0, 0], [1, 1]]])),
      IndexError, r"target 3 at row 3 is out of range for 3 classes"),
    C("ce-target-out-of-range-unbatched", lambda: FF.cross_entropy(r(5), t(5)), IndexError,
      r"target 5 at row 0 is out of range for 5 classes"),
    C("ce-target-float", lambda: FF.cross_entropy(r(4, 5), r(4, 5).softmax(1)), NotImplementedError,
      r"class-probability targets are not supported"),
    C("ce-target-int32", lambda: FF.cross_entropy(r(4, 5), t([0, 1, 2, 3]).int()), TypeError,
      r"target must hold class indices as int64, got Int"),
    C("ce-target-shape", lambda: FF.cross_entropy(r(4, 5), t([0, 1, 2])), ValueError,
      r"target must have shape \[4\] \(one class index per row of input\), got \[3\]"),
    C("ce-target-shape-spatial", lambda: FF.cross_entropy(r(2, 3, 2, 2), i(2, 2, 3) % 3), ValueError,
      r"target shape \(2, 2, 3\) does not match input shape \(2, 3, 2, 2\)"),
    C("ce-weight-size", lambda: FF.cross_entropy(r(4, 5), t([0, 1, 2, 3]), weight=r(4)), ValueError,
      r"weight must have shape \[5\] \(one value per class\), got \[4\]"),
    C("ce-weight-dtype", lambda: FF.cross_entropy(r(4, 5), t([0, 1, 2, 3]), weight=r(5, dtype=torch.float64)),
      TypeError, r"weight must have the same dtype as input \(Float\), got Double"),
    C("ce-bad-reduction", lambda: FF.cross_entropy(r(4, 5), t([0, 1, 2, 3]), reduction="avg"), ValueError,
      r"reduction must be 'none', 'mean' or 'sum', got 'avg'"),
    C("ce-label-smoothing-above-1", lambda: FF.cross_entropy(r(4, 5), t([0, 1, 2, 3]), label_smoothing=1.5),
      ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
    C("ce-label-smoothing-negative", lambda: FF.cross_entropy(r(4, 5), t([0, 1, 2, 3]), label_smoothing=-0.1),
      ValueError, r"label_smoothing must be in \[0, 1\], got -0.1"),
    C("ce-input-0d", lambda: FF.cross_entropy(r(), t(0)), ValueError, r"input must have a class dimension"),
    C("ce-no-classes", lambda: FF.cross_entropy(r(4, 0), t([0, 0, 0, 0])), ValueError,
      r"input must have at least one class"),
    C("ce-int-input", lambda: FF.cross_entropy(i(4, 5), t([0, 1, 2, 3])), TypeError,
      r"fastconv\.cross_entropy: input must be float32 or float64, got Long"),
    C("ce-complex-input", lambda: FF.cross_entropy(r(4, 5).to(torch.complex64), t([0, 1, 2, 3])), TypeError, r"got ComplexFloat"),
    C("ce-op-input-3d", lambda: ops.cross_entropy(r(2, 4, 5), t([0, 1]), None, 1, -100, 0.0), ValueError,
      r"input must be 2-D \(N, C\), got 3-D"),
    C("ce-op-bad-reduction", lambda: ops.cross_entropy(r(2, 5), t([0, 1]), None, 3, -100, 0.0), ValueError,
      r"reduction must be 0 \(none\), 1 \(mean\) or 2 \(sum\), got 3"),
    C("ce-device-target",
      lambda: on_cpu_kernel(ops.cross_entropy, r(4, 5), meta(t([0, 1, 2, 3])), None, 1, -100, 0.0), RuntimeError,
      r"fastconv\.cross_entropy: target is on meta but input is on cpu"),
    C("ce-backward-grad-loss-shape",
      lambda: ops.cross_entropy_backward(r(4), r(4, 5), t([0, 1, 2, 3]), None, r(4), 1, -100, 0.0), ValueError,
      r"fastconv\.cross_entropy_backward: grad_loss must be a scalar, got shape \[4\]"),
    C("ce-backward-grad-loss-shape-none",
      lambda: ops.cross_entropy_backward(r(), r(4, 5), t([0, 1, 2, 3]), None, r(4), 0, -100, 0.0), ValueError,
      r"with reduction 'none' grad_loss must have shape \[4\]"),
    C("ce-backward-target-out-of-range",
      lambda: ops.cross_entropy_backward(r(), r(4, 5), t([0, 1, 5, 3]), None, r(4), 2, -100, 0.0), IndexError,
      r"fastconv\.cross_entropy_backward: target 5 at row 2 is out of range for 5 classes"),
    C("ce-backward-lse-shape",
      lambda: ops.cross_entropy_backward(r(), r(4, 5), t([0, 1, 2, 3]), None, r(3), 1, -100, 0.0), ValueError,
      r"lse must have shape \[4\], got \[3\]"),
    # ---------------------------------------------------------------- dropout
    C("dropout-p-negative", lambda: FF.dropout(r(3, 4), -0.1), ValueError,
      r"dropout probability has to be between 0 and 1, but got -0.1"),
    C("dropout-p-above-1", lambda: FF.dropout(r(3, 4), 1.5), ValueError,
      r"dropout probability has to be between 0 and 1, but got 1.5"),
    C("dropout-p-nan", lambda: FF.dropout(r(3, 4), float("nan")), ValueError,
      r"dropout probability has to be between 0 and 1, but got nan"),
    C("dropout-p-eval", lambda: FF.dropout(r(3, 4), 2.0, training=False), ValueError,
      r"dropout probability has to be between 0 and 1"),
    C("dropout-op-p-above-1", lambda: ops.dropout(r(3, 4), 1.5, seed()), ValueError,
      r"fastconv\.dropout: p must be a probability in \[0, 1\], got 1.5"),
    C("dropout-op-p-negative", lambda: ops.dropout(r(3, 4), -0.5, seed()), ValueError,
      r"p must be a probability in \[0, 1\], got -0.5"),
    C("dropout-op-seed-int32", lambda: ops.dropout(r(3, 4), 0.5, seed(torch.int32)), ValueError,
      r"seed must be a CPU int64 tensor with one element, got Int of shape \[1\] on cpu"),
    C("dropout-op-seed-2-elements", lambda: ops.dropout(r(3, 4), 0.5, seed(n=2)), ValueError,
      r"seed must be a CPU int64 tensor with one element, got Long of shape \[2\]"),
    C("dropout-op-seed-device", lambda: on_cpu_kernel(ops.dropout, r(3, 4), 0.5, meta(seed())), ValueError,
      r"seed must be a CPU int64 tensor with one element, got Long of shape \[1\] on meta"),
    C("dropout-int", lambda: FF.dropout(i(3, 4), 0.5), TypeError,
      r"fastconv\.dropout: input must be float32 or float64, got Long"),
    C("dropout-complex", lambda: FF.dropout(r(3, 4).to(torch.complex64), 0.5), TypeError, r"got ComplexFloat"),
]

# ---------------------------------------------------------------- devices: every tensor argument of every op
# The ops' tensor arguments whose device the cases above do not already check, each in valid arguments:
# (op, argument, its position, the arguments, the argument the op's check compares it with). Each gives a
# case where that argument alone is on meta, run on the kernel (on_cpu_kernel); and
# test_fake_kernel_checks_every_device runs the same calls through the fake kernels.
PLANE = t([[[[0, 1], [4, 7]]]])  # max-pool indices of a 2x2 output over a 5x5 plane
BN = (r(2, 3, 4), r(3), r(3), r(3), r(3).abs())  # a batch-norm input and four per-channel tensors
DEVICE_ARGS = [
    ("conv2d_pool", "weight", 1, lambda: (r(*X), r(*W), None, *CONV, True, [1, 1]), "input"),
    ("conv2d_pool", "bias", 2, lambda: (r(*X), r(*W), r(4), *CONV, True, [1, 1]), "input"),
    ("conv2d_grad_input", "weight", 1, lambda: (r(1, 4, 3, 3), r(*W), list(X), *CONV), "grad_output"),
    ("linear", "bias", 2, lambda: (r(2, 5), r(9, 5), r(9)), "input"),
    ("linear_grad_input", "weight", 1, lambda: (r(2, 9), r(9, 5)), "grad_output"),
    ("linear_grad_weight", "input", 1, lambda: (r(2, 9), r(2, 5)), "grad_output"),
    ("batch_norm", "weight", 1, lambda: (*BN, True, 1e-5), "input"),
    ("batch_norm", "bias", 2, lambda: (*BN, True, 1e-5), "input"),
    ("batch_norm", "running_mean", 3, lambda: (*BN, True, 1e-5), "input"),
    ("batch_norm", "running_var", 4, lambda: (*BN, True, 1e-5), "input"),
    ("batch_norm_backward", "grad_output", 0, lambda: (r(2, 3, 4), *BN[:2], r(3), r(3).abs(), True), "input"),
    ("batch_norm_backward", "weight", 2, lambda: (r(2, 3, 4), *BN[:2], r(3), r(3).abs(), True), "input"),
    ("batch_norm_backward", "mean", 3, lambda: (r(2, 3, 4), *BN[:2], r(3), r(3).abs(), True), "input"),
    ("batch_norm_backward", "invstd", 4, lambda: (r(2, 3, 4), *BN[:2], r(3), r(3).abs(), True), "input"),
    ("batch_norm_update_stats", "running_var", 1, lambda: (r(3), r(3).abs(), r(3), r(3).abs(), 0.1), "running_mean"),
    ("batch_norm_update_stats", "mean", 2, lambda: (r(3), r(3).abs(), r(3), r(3).abs(), 0.1), "running_mean"),
    ("batch_norm_update_stats", "var", 3, lambda: (r(3), r(3).abs(), r(3), r(3).abs(), 0.1), "running_mean"),
    ("local_response_norm_backward", "grad_output", 0,
     lambda: (r(2, 3, 4), r(2, 3, 4), r(2, 3, 4), r(2, 3, 4).abs() + 1, 3, 1e-4, 0.75), "input"),
    ("local_response_norm_backward", "output", 2,
     lambda: (r(2, 3, 4), r(2, 3, 4), r(2, 3, 4), r(2, 3, 4).abs() + 1, 3, 1e-4, 0.75), "input"),
    ("local_response_norm_backward", "scale", 3,
     lambda: (r(2, 3, 4), r(2, 3, 4), r(2, 3, 4), r(2, 3, 4).abs() + 1, 3, 1e-4, 0.75), "input"),
    ("cross_entropy", "weight", 2, lambda: (r(4, 5), t([0, 1, 2, 3]), r(5).abs(), 1, -100, 0.0), "input"),
    ("cross_entropy_backward", "grad_loss", 0,
     lambda: (r(), r(4, 5), t([0, 1, 2, 3]), r(5).abs(), r(4), 1, -100, 0.0), "input"),
    ("cross_entropy_backward", "target", 2,
     lambda: (r(), r(4, 5), t([0, 1, 2, 3]), r(5).abs(), r(4), 1, -100, 0.0), "input"),
    ("cross_entropy_backward", "weight", 3,
     lambda: (r(), r(4, 5), t([0, 1, 2, 3]), r(5).abs(), r(4), 1, -100, 0.0), "input"),
    ("cross_entropy_backward", "lse", 4,
     lambda: (r(), r(4, 5), t([0, 1, 2, 3]), r(5).abs(), r(4), 1, -100, 0.0), "input"),
]


def _with_meta(position, make):
    """The arguments `make` gives, with the one at `position` moved to meta."""
    args = list(make())
    args[position] = meta(args[position])
    return args


def _device_message(op, name, reference):
    return rf"fastconv\.{op}: {name} is on meta but {reference} is on cpu; move both to one device"


CASES += [C(f"{op}-device-{name}", functools.partial(lambda op, pos, make: on_cpu_kernel(getattr(ops, op),
                                                                                        *_with_meta(pos, make)),
                                                     op, position, make),
            RuntimeError, _device_message(op, name, reference))
          for op, name, position, make, reference in DEVICE_ARGS]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "duplicate case ids"

# Cases of the harness's own test: one that kills the interpreter like a segfaulting kernel would,
# and one after it that must still run.
HARNESS_CASES = {
    "harness-crash": Case("harness-crash", lambda: os.abort(), RuntimeError, ""),
    "harness-after-crash": Case("harness-after-crash", lambda: FF.relu(i(2)), TypeError, ""),
}

_RUNNER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
import test_errors
from conftest import backend_context
cases = {**test_errors.CASES_BY_ID, **test_errors.HARNESS_CASES}
with backend_context(sys.argv[2]):
    for case_id in json.loads(sys.argv[3]):
        print(json.dumps({"id": case_id, "started": True}), flush=True)
        torch.manual_seed(test_errors.SEED)
        try:
            cases[case_id].call()
            result = {"raised": None}
        except BaseException as e:
            result = {"raised": type(e).__name__, "message": str(e)}
        print(json.dumps({"id": case_id, **result}), flush=True)
"""


def _run_in_subprocess(backend_name, case_ids):
    """Runs the cases in a subprocess: {case id: result}; the result of a case that killed the
    interpreter has 'crashed' set, and the cases after it run in a fresh subprocess."""
    results, remaining = {}, list(case_ids)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([FASTCONV_PATH, os.environ.get("PYTHONPATH", "")]))
    while remaining:
        proc = subprocess.run([sys.executable, "-c", _RUNNER, str(TESTS_DIR), backend_name, json.dumps(remaining)],
                              capture_output=True, text=True, cwd=TESTS_DIR, env=env, timeout=300)
        started = None
        for line in proc.stdout.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("started"):
                started = record["id"]
            else:
                results[record["id"]] = record
                started = None
        if started is None:  # finished, or died outside any case (e.g. at import): blame what is left
            for case_id in remaining:
                results.setdefault(case_id, {"crashed": True, "returncode": proc.returncode,
                                             "stderr": proc.stderr[-3000:]})
            break
        results[started] = {"crashed": True, "returncode": proc.returncode, "stderr": proc.stderr[-3000:]}
        remaining = remaining[remaining.index(started) + 1:]
    return results


@functools.lru_cache(maxsize=None)
def _preflight(backend_name):
    return _run_in_subprocess(backend_name, [c.id for c in CASES])


def _case_param(c):
    marks = [pytest.mark.xfail(strict=True, reason=c.xfail, raises=AssertionError)] if c.xfail else []
    return pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("case", [_case_param(c) for c in CASES])
def test_bad_input_raises(backend, case):
    pre = _preflight(backend.name)[case.id]
    if pre.get("crashed"):
        pytest.fail(f"{case.id} killed the interpreter (return code {pre['returncode']}) instead of raising "
                    f"{case.exc.__name__}:\n{pre['stderr']}")
    assert pre["raised"] == case.exc.__name__, pre  # the subprocess saw the same exception
    with pytest.raises(case.exc, match=case.match):
        case.call()


def test_subprocess_harness_survives_a_crash(backend):
    results = _run_in_subprocess(backend.name, ["harness-crash", "harness-after-crash"])
    assert results["harness-crash"]["crashed"] and results["harness-crash"]["returncode"] != 0
    assert results["harness-after-crash"]["raised"] == "TypeError"


# ---------------------------------------------------------------- the public API with mixed devices

def test_mixed_meta_and_cpu_is_an_error(backend):
    with pytest.raises(RuntimeError, match="meta"):
        FF.conv2d(r(*X), meta(r(*W)))


@pytest.mark.parametrize("op, name, position, make, reference",
                         [pytest.param(*a, id=f"{a[0]}-{a[1]}") for a in DEVICE_ARGS])
def test_fake_kernel_checks_every_device(backend, op, name, position, make, reference):
    """A plain call that mixes CPU and meta tensors reaches the fake kernel, which refuses it as the
    kernel does (the cases above), naming the argument."""
    with pytest.raises(RuntimeError, match=_device_message(op, name, reference)):
        getattr(ops, op)(*_with_meta(position, make))


def test_fake_dropout_checks_the_seed_device(backend):
    with pytest.raises(ValueError, match=r"fastconv\.dropout: seed must be a CPU int64 tensor with one element, got "
                       r"torch\.int64 of shape \[1\] on meta"):
        ops.dropout(r(3, 4), 0.5, meta(seed()))


def test_meta_tensors_alone_give_shapes(backend):
    """All-meta calls run the fake kernels: right shapes, on meta, no data touched."""
    y = FF.conv2d(meta(r(2, 3, 9, 8)), meta(r(4, 3, 3, 2)), meta(r(4)), stride=2, padding=1)
    assert y.device.type == "meta" and y.shape == FF.conv2d(r(2, 3, 9, 8), r(4, 3, 3, 2), stride=2, padding=1).shape
    out, idx = FF.max_pool2d(meta(r(2, 3, 7, 9)), 3, 2, 1, ceil_mode=True, return_indices=True)
    assert out.shape == idx.shape == (2, 3, 4, 5) and idx.dtype == torch.int64


# ---------------------------------------------------------------- inputs are never modified

def _conv_inputs(layout):
    x, w, b = r(2, 3, 7, 6), r(4, 3, 3, 3), r(4)
    if layout == "channels_last":
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x, w, b = r(2, 3, 6, 7).transpose(2, 3), r(4, 6, 3, 3)[:, ::2], r(8)[::2]
    return x, w, b


def _specials(x):
    """x (contiguous) with NaN, inf and -0.0 planted: values an in-place write would change visibly."""
    x.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, -float("inf")])
    return x


OPS = {
    "conv2d": (_conv_inputs, lambda x, w, b: FF.conv2d(x, w, b, padding=1)),
    "conv2d_fused_relu": (_conv_inputs, lambda x, w, b: ops.conv2d(x, w, b, [1, 2], [1, 0, 2, 1], [1, 1], 1, True)),
    "conv1d": (lambda L: (r(2, 3, 11), r(4, 3, 3), r(4)) if L == "contiguous" else
               (r(2, 11, 3).transpose(1, 2), r(4, 3, 6)[..., ::2], r(4, 2)[:, 0]),
               lambda x, w, b: FF.conv1d(x, w, b, padding="same")),
    "linear": (lambda L: (r(3, 2, 7), r(5, 7), r(5)) if L == "contiguous" else
               (r(2, 3, 7).transpose(0, 1), r(7, 5).t(), r(10)[::2]),
               lambda x, w, b: FF.linear(x, w, b)),
    "relu": (lambda L: (_specials(r(4, 6)),) if L == "contiguous" else (r(6, 4).t(),), FF.relu),
    "leaky_relu": (lambda L: (_specials(r(4, 6)),) if L == "contiguous" else (r(6, 4).t(),),
                   lambda x: FF.leaky_relu(x, 0.2)),
    "max_pool2d": (lambda L: _conv_inputs(L)[:1], lambda x: FF.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    "batch_norm": (lambda L: _conv_inputs(L)[:1], lambda x: FF.batch_norm(x, None, None, training=True)),
    "local_response_norm": (lambda L: _conv_inputs(L)[:1], lambda x: FF.local_response_norm(x, 3, 0.1, 0.75, 2.0)),
    "avg_pool2d": (lambda L: _conv_inputs(L)[:1], lambda x: FF.avg_pool2d(x, 3, 2, 1, ceil_mode=True)),
    "adaptive_avg_pool2d": (lambda L: _conv_inputs(L)[:1], lambda x: FF.adaptive_avg_pool2d(x, (3, 2))),
    "cross_entropy": (lambda L: (r(6, 5) if L == "contiguous" else r(5, 6).t(), t([0, 4, -100, 2, 1, 3]),
                                 r(5).abs()),
                      lambda x, target, w: FF.cross_entropy(x, target, weight=w, label_smoothing=0.1)),
    "dropout": (lambda L: (r(5, 8) if L == "contiguous" else r(8, 5).t(),), lambda x: FF.dropout(x, 0.5)),
}
IMAGE_OPS = ("conv2d", "conv2d_fused_relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "local_response_norm",
             "batch_norm")


@pytest.mark.parametrize("op, layout", [(op, layout) for op in OPS
                                        for layout in ("contiguous", "channels_last", "strided")
                                        if layout != "channels_last" or op in IMAGE_OPS])
def test_inputs_are_never_modified(backend, op, layout):
    make, fn = OPS[op]
    inputs = [a.to(backend.device) for a in make(layout)]
    if layout != "contiguous":
        assert not inputs[0].is_contiguous()
    for a in inputs:
        if a.is_floating_point():
            a.requires_grad_()
    saved = [a.detach().clone() for a in inputs]
    out = fn(*inputs)
    grad = torch.randn_like(out)
    saved_grad = grad.clone()
    out.backward(grad)
    for a, s in zip(inputs, saved):
        assert_bitwise_equal(a.detach(), s)
    assert_bitwise_equal(grad, saved_grad)  # the incoming gradient is an input of backward too
