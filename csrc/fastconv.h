// fastconv.h: what every backend shares -- one check entry per op, which validates every argument
// (dtypes, float16 / bfloat16 included; devices; shapes) with a message that names the argument, what
// was expected and what came, and returns the op's torch-free problem description (csrc/shapes.h) that
// the CPU kernel and the CUDA launcher both take. Every op runs its check before any kernel touches
// memory, so bad input is a Python exception (ValueError / TypeError / IndexError / RuntimeError),
// never a crash or garbage. Also here: the output-size arithmetic of convolution and pooling, and
// in_float32, the one place where the CPU kernels turn 16-bit arguments into float32.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <cstdint>
#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "shapes.h"

namespace fastconv {

// Whether the CUDA (and simulated CUDA) convolution and linear kernels may round float32 operands to
// tf32 and multiply them on tensor cores (fastconv.backends.allow_tf32; off by default). The CPU
// kernels always compute in float32. Defined in registration.cpp.
bool allow_tf32();
bool set_allow_tf32(bool enabled);  // returns the previous setting

// ------------------------------------------------------------------------ argument checks, by kind

// float16 and bfloat16 are accepted by every op; the CPU kernels compute them in float32 (in_float32).
inline bool is_reduced(const at::Tensor& t) {
  return t.defined() && (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16);
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || is_reduced(t), "fastconv.", op, ": ", name,
                   " must be float32 or float64, got ", s, "; float16 and bfloat16 are accepted too (computed in "
                   "float32)");
}

inline void check_same_dtype(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn,
                             const char* op) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fastconv.", op, ": ", bn,
                   " must have the same dtype as ", an, " (", a.scalar_type(), "), got ", b.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn,
                              const char* op) {
  TORCH_CHECK(a.device() == b.device(), "fastconv.", op, ": ", bn, " is on ", b.device(), " but ", an,
              " is on ", a.device(), "; move both to one device");
}

// Two floating arguments of one op: same dtype, same device.
inline void check_pair_args(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn, const char* op) {
  check_floating(a, op, an);
  check_same_dtype(a, an, b, bn, op);
  check_same_device(a, an, b, bn, op);
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name,
                      const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, "fastconv.", op, ": ", name, " must be ", dim, "-D (", layout,
                    "), got ", t.dim(), "-D with shape ", t.sizes());
}

inline void check_pair(at::IntArrayRef v, const char* op, const char* name, int64_t min_value) {
  TORCH_CHECK_VALUE(v.size() == 2, "fastconv.", op, ": ", name, " must have 2 values, got ", v.size());
  for (int64_t x : v)
    TORCH_CHECK_VALUE(x >= min_value, "fastconv.", op, ": ", name, " must be >= ", min_value,
                      ", got ", v);
}

// The optional bias of conv2d / linear: same dtype and device as `input`, shape [channels]; `hint`
// follows the expected shape in the message.
inline void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& input, int64_t channels,
                       const char* op, const char* hint) {
  if (!bias.has_value() || !bias->defined()) return;
  check_pair_args(input, "input", *bias, "bias", op);
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == channels, "fastconv.", op, ": bias must have shape [",
                    channels, "]", hint, ", got ", bias->sizes());
}

// An optional tensor argument made contiguous; undefined when absent.
inline at::Tensor contiguous_or_none(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

// ---------------------------------------------------------- float16 / bfloat16 on the CPU kernels

// A 16-bit argument as float32; any other argument (float32 / float64 tensors, sizes, flags) as it is.
inline at::Tensor to_float(const at::Tensor& t) { return is_reduced(t) ? t.to(at::kFloat) : t; }
inline std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(to_float(*t)) : t;
}
template <typename A> const A& to_float(const A& a) { return a; }

inline std::optional<at::ScalarType> reduced_dtype_of(const at::Tensor& t) {
  return is_reduced(t) ? std::optional<at::ScalarType>(t.scalar_type()) : std::nullopt;
}
inline std::optional<at::ScalarType> reduced_dtype_of(const std::optional<at::Tensor>& t) {
  return t.has_value() ? reduced_dtype_of(*t) : std::nullopt;
}
template <typename A> std::optional<at::ScalarType> reduced_dtype_of(const A&) { return std::nullopt; }

// A floating result rounded to `dtype`; integer results (max-pool indices) as they are.
inline at::Tensor round_to(const at::Tensor& t, at::ScalarType dtype) {
  return t.is_floating_point() ? t.to(dtype) : t;
}
template <typename... T> std::tuple<T...> round_to(const std::tuple<T...>& t, at::ScalarType dtype) {
  return std::apply([&](const auto&... r) { return std::tuple<T...>(round_to(r, dtype)...); }, t);
}

// in_float32(body, args...): body(args...), except that 16-bit tensors among args are passed as float32
// copies and the floating results are rounded back to that 16-bit dtype: float32 accumulation and one
// rounding, as torch's own CPU kernels do for these types. The CPU kernels call it after the op's check
// (which has seen the arguments as they came, 16-bit types included), with the arguments that hold
// values; index tensors (targets, indices, seeds) are not passed to it.
template <typename F, typename... A>
auto in_float32(F&& body, const A&... args) {
  std::optional<at::ScalarType> dtype;
  ((dtype = dtype ? dtype : reduced_dtype_of(args)), ...);
  if (!dtype) return body(args...);
  return round_to(body(to_float(args)...), *dtype);
}

// ------------------------------------------------------------------ CPU output memory

namespace cpu {
// A contiguous CPU tensor, uninitialised, whose memory comes from fastconv's cache of freed blocks
// (csrc/cpu/alloc.cpp): what the CPU kernels allocate their outputs and large scratch with.
at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options);
std::vector<int64_t> cache_stats();  // fastconv.backends.cpu_cache() reads these
void cache_empty();
}  // namespace cpu

// ---------------------------------------------------------------------- window arithmetic

// Output length of a sliding window over `in` padded by `pad_lo + pad_hi` (floor mode).
inline int64_t window_out(int64_t in, int64_t pad_lo, int64_t pad_hi, int64_t k, int64_t d, int64_t s) {
  return (in + pad_lo + pad_hi - d * (k - 1) - 1) / s + 1;
}

// Floor division for any sign of the numerator (C++ division truncates toward zero).
inline int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

// Max-pool output length, torch's rule: in ceil mode the last window must start inside the
// input or the left padding.
inline int64_t pool_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;  // negative: the window is larger than the padded input
  int64_t out = floor_div(ceil_mode ? span + s - 1 : span, s) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

// ------------------------------------------------------------------------------------ conv2d

// The shape of a convolution from the sizes of its input and weight and its window arguments.
inline ConvShape conv_shape(at::IntArrayRef input, at::IntArrayRef weight, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, const char* op) {
  TORCH_CHECK_VALUE(input.size() == 4, "fastconv.", op, ": input must be 4-D (N, C, H, W), got shape ", input);
  TORCH_CHECK_VALUE(weight.size() == 4, "fastconv.", op,
                    ": weight must be 4-D (C_out, C_in / groups, kH, kW), got shape ", weight);
  check_pair(stride, op, "stride", 1);
  check_pair(dilation, op, "dilation", 1);
  TORCH_CHECK_VALUE(padding.size() == 4, "fastconv.", op,
                    ": padding must have 4 values (top, bottom, left, right), got ", padding.size());
  for (int64_t p : padding)
    TORCH_CHECK_VALUE(p >= 0, "fastconv.", op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK_VALUE(groups >= 1, "fastconv.", op, ": groups must be >= 1, got ", groups);
  ConvShape g{};
  g.n = input[0]; g.c_in = input[1]; g.h = input[2]; g.w = input[3];
  g.c_out = weight[0]; g.kh = weight[2]; g.kw = weight[3];
  g.sh = stride[0]; g.sw = stride[1]; g.dh = dilation[0]; g.dw = dilation[1];
  g.pt = padding[0]; g.pb = padding[1]; g.pl = padding[2]; g.pr = padding[3];
  g.groups = groups;
  TORCH_CHECK_VALUE(g.c_in % groups == 0, "fastconv.", op, ": groups (", groups,
                    ") must divide the input channels (", g.c_in, ")");
  TORCH_CHECK_VALUE(g.c_out % groups == 0, "fastconv.", op, ": groups (", groups,
                    ") must divide the output channels (", g.c_out, ")");
  TORCH_CHECK_VALUE(g.c_out > 0 && g.kh > 0 && g.kw > 0, "fastconv.", op,
                    ": weight must have non-zero sizes, got shape ", weight);
  TORCH_CHECK_VALUE(weight[1] * groups == g.c_in, "fastconv.", op, ": input has ", g.c_in,
                    " channels but weight expects ", weight[1] * groups, " (weight.shape[1] = ", weight[1],
                    " x groups = ", groups, ")");
  const int64_t eff_h = g.dh * (g.kh - 1) + 1, eff_w = g.dw * (g.kw - 1) + 1;
  TORCH_CHECK_VALUE(g.h + g.pt + g.pb >= eff_h && g.w + g.pl + g.pr >= eff_w, "fastconv.", op,
                    ": kernel (", eff_h, "x", eff_w, " with dilation) is larger than the padded input (",
                    g.h + g.pt + g.pb, "x", g.w + g.pl + g.pr, ")");
  g.oh = window_out(g.h, g.pt, g.pb, g.kh, g.dh, g.sh);
  g.ow = window_out(g.w, g.pl, g.pr, g.kw, g.dw, g.sw);
  return g;
}

inline void check_grad_output_shape(const at::Tensor& grad_output, const ConvShape& g, const char* op) {
  const std::vector<int64_t> expected{g.n, g.c_out, g.oh, g.ow};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected), "fastconv.", op,
                    ": grad_output must have shape ", at::IntArrayRef(expected), ", got ", grad_output.sizes());
}

// conv2d(input, weight, bias, stride, padding, dilation, groups), and the convolution of conv2d_pool
// (`op` names the one checked).
inline ConvShape check_conv2d(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                              const char* op = "conv2d") {
  check_pair_args(input, "input", weight, "weight", op);
  const ConvShape g = conv_shape(input.sizes(), weight.sizes(), stride, padding, dilation, groups, op);
  check_bias(bias, input, g.c_out, op, " (one value per output channel)");
  return g;
}

// The epilogue activation of conv2d / conv2d_pool from their `relu` and `negative_slope` arguments:
// relu=False is none, a zero slope ReLU, any other LeakyReLU. The slope must be finite and >= 0:
// the backward of a fused activation reads its gradient off the sign of the output, which is the
// input's sign only then (apply leaky_relu separately for a negative slope).
inline Activation check_activation(bool relu, double negative_slope, const char* op) {
  if (!relu) return Activation{};
  TORCH_CHECK_VALUE(std::isfinite(negative_slope) && negative_slope >= 0, "fastconv.", op,
                    ": a fused leaky ReLU needs a finite negative_slope >= 0 (its backward reads the sign of "
                    "the output), got ", negative_slope, "; apply fastconv.functional.leaky_relu separately");
  return negative_slope == 0 ? Activation{Activation::relu, 0.0} : Activation{Activation::leaky_relu, negative_slope};
}

// conv2d_grad_input(grad_output, weight, input_size, ...) and conv2d_grad_weight(grad_output, input,
// weight_size, ...): `other` (named `other_name`) is the op's tensor argument besides grad_output; the
// convolution's input and weight sizes come from it and from the size argument.
inline ConvShape check_conv2d_backward(const char* op, const at::Tensor& grad_output, const at::Tensor& other,
                                       const char* other_name, at::IntArrayRef input_size,
                                       at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, int64_t groups) {
  check_pair_args(grad_output, "grad_output", other, other_name, op);
  const ConvShape g = conv_shape(input_size, weight_size, stride, padding, dilation, groups, op);
  check_grad_output_shape(grad_output, g, op);
  return g;
}

// bias_grad(grad_output, channel_dim): grad_output viewed as [outer, channels, inner].
inline BiasGradShape check_bias_grad(const at::Tensor& grad_output, int64_t channel_dim) {
  check_floating(grad_output, "bias_grad", "grad_output");
  TORCH_CHECK_INDEX(grad_output.dim() > 0, "fastconv.bias_grad: grad_output must have at least 1 dimension");
  const int64_t cd = channel_dim < 0 ? channel_dim + grad_output.dim() : channel_dim;
  TORCH_CHECK_INDEX(cd >= 0 && cd < grad_output.dim(), "fastconv.bias_grad: channel_dim ", channel_dim,
                    " is out of range for a ", grad_output.dim(), "-D tensor");
  BiasGradShape s{cd, 1, grad_output.size(cd), 1};
  for (int64_t d = 0; d < cd; ++d) s.outer *= grad_output.size(d);
  for (int64_t d = cd + 1; d < grad_output.dim(); ++d) s.inner *= grad_output.size(d);
  return s;
}

// ------------------------------------------------------------------------------------ linear

// `sizes` with its last value replaced: the shape of a linear layer's output or input gradient.
inline std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> shape(sizes.begin(), sizes.end());
  shape.back() = last;
  return shape;
}

// The product of all but the last size: the rows of a linear layer's GEMM.
inline int64_t leading_rows(at::IntArrayRef sizes) {
  int64_t rows = 1;
  for (size_t d = 0; d + 1 < sizes.size(); ++d) rows *= sizes[d];
  return rows;
}

// linear(input, weight, bias): output [..., out] = input [..., in] weight^T + bias.
inline LinearShape check_linear(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias) {
  const char* op = "linear";
  check_pair_args(input, "input", weight, "weight", op);
  check_dim(weight, 2, op, "weight", "out_features, in_features");
  TORCH_CHECK_VALUE(input.dim() >= 1, "fastconv.linear: input must have at least 1 dimension");
  TORCH_CHECK_VALUE(input.size(-1) == weight.size(1), "fastconv.linear: input has ", input.size(-1),
                    " features in its last dimension but weight expects ", weight.size(1), " (weight shape ",
                    weight.sizes(), ")");
  check_bias(bias, input, weight.size(0), op, "");
  return LinearShape{leading_rows(input.sizes()), weight.size(1), weight.size(0)};
}

inline LinearShape check_linear_grad_input(const at::Tensor& grad_output, const at::Tensor& weight) {
  const char* op = "linear_grad_input";
  check_pair_args(grad_output, "grad_output", weight, "weight", op);
  check_dim(weight, 2, op, "weight", "out_features, in_features");
  TORCH_CHECK_VALUE(grad_output.dim() >= 1 && grad_output.size(-1) == weight.size(0), "fastconv.", op,
                    ": grad_output must end in ", weight.size(0), " features, got shape ", grad_output.sizes());
  return LinearShape{leading_rows(grad_output.sizes()), weight.size(1), weight.size(0)};
}

inline LinearShape check_linear_grad_weight(const at::Tensor& grad_output, const at::Tensor& input) {
  const char* op = "linear_grad_weight";
  check_pair_args(grad_output, "grad_output", input, "input", op);
  TORCH_CHECK_VALUE(grad_output.dim() >= 1 && input.dim() == grad_output.dim() &&
                        input.sizes().slice(0, input.dim() - 1) ==
                            grad_output.sizes().slice(0, grad_output.dim() - 1),
                    "fastconv.", op, ": grad_output ", grad_output.sizes(), " and input ", input.sizes(),
                    " must agree in all but the last dimension");
  return LinearShape{leading_rows(input.sizes()), input.size(-1), grad_output.size(-1)};
}

// ------------------------------------------------------------------------ elementwise, dropout

// An elementwise op of one floating tensor (relu): any shape.
inline void check_elementwise(const at::Tensor& input, const char* op) { check_floating(input, op, "input"); }

// The backward of an elementwise op from its forward result (relu_backward) or input (leaky_relu_backward,
// `name` = "self"): two floating tensors of one dtype, device and shape.
inline void check_elementwise_backward(const at::Tensor& grad_output, const at::Tensor& result, const char* op,
                                       const char* name = "result") {
  check_pair_args(grad_output, "grad_output", result, name, op);
  TORCH_CHECK_VALUE(grad_output.sizes() == result.sizes(), "fastconv.", op, ": grad_output ", grad_output.sizes(),
                    " and ", name, " ", result.sizes(), " must have the same shape");
}

// The seed is one int64 on the input's device (a kernel reads it there: no host round trip).
inline void check_dropout(const at::Tensor& input, double p, const at::Tensor& seed) {
  check_floating(input, "dropout", "input");
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, "fastconv.dropout: p must be a probability in [0, 1], got ", p);
  TORCH_CHECK_VALUE(seed.scalar_type() == at::kLong && seed.numel() == 1 && seed.device() == input.device(),
                    "fastconv.dropout: seed must be a ", input.is_cpu() ? std::string("CPU") : input.device().str(),
                    " int64 tensor with one element, got ", seed.scalar_type(), " of shape ", seed.sizes(), " on ",
                    seed.device());
}

// -------------------------------------------------------------------------------- max_pool2d

inline void check_pool_window(at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, const char* op) {
  check_pair(kernel_size, op, "kernel_size", 1);
  check_pair(stride, op, "stride", 1);
  check_pair(padding, op, "padding", 0);
  check_pair(dilation, op, "dilation", 1);
  for (int i = 0; i < 2; ++i)
    TORCH_CHECK_VALUE(padding[i] <= kernel_size[i] / 2, "fastconv.", op, ": padding must be at most half of "
                      "kernel_size, got padding ", padding, " for kernel_size ", kernel_size);
}

// A pool's shape from its (checked) window arguments; the sizes are filled by the caller.
inline PoolShape pool_window(at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
  PoolShape g{};
  g.kh = k[0]; g.kw = k[1]; g.sh = s[0]; g.sw = s[1]; g.ph = p[0]; g.pw = p[1]; g.dh = d[0]; g.dw = d[1];
  return g;
}

inline PoolShape check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const char* op = "max_pool2d";
  check_floating(input, op, "input");
  check_dim(input, 4, op, "input", "N, C, H, W");
  check_pool_window(kernel_size, stride, padding, dilation, op);
  PoolShape s = pool_window(kernel_size, stride, padding, dilation);
  s.n = input.size(0); s.c = input.size(1); s.h = input.size(2); s.w = input.size(3);
  TORCH_CHECK_VALUE(s.h > 0 && s.w > 0 && s.c > 0, "fastconv.max_pool2d: input must have non-zero C, H and W, got ",
                    input.sizes());
  s.oh = pool_out(s.h, s.kh, s.sh, s.ph, s.dh, ceil_mode);
  s.ow = pool_out(s.w, s.kw, s.sw, s.pw, s.dw, ceil_mode);
  TORCH_CHECK_VALUE(s.oh >= 1 && s.ow >= 1, "fastconv.max_pool2d: the window (kernel_size ", kernel_size,
                    ", dilation ", dilation, ") does not fit the padded input ", s.h, "x", s.w);
  return s;
}

// conv2d_pool: a convolution whose output is max-pooled by non-overlapping pool[0] x pool[1] windows
// (kernel = stride = pool, no padding, floor mode: MaxPool2d(pool) after the Conv2d).
inline std::pair<ConvShape, PoolShape> check_conv2d_pool(const at::Tensor& input, const at::Tensor& weight,
                                                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                         at::IntArrayRef padding, at::IntArrayRef dilation,
                                                         int64_t groups, at::IntArrayRef pool) {
  const ConvShape g = check_conv2d(input, weight, bias, stride, padding, dilation, groups, "conv2d_pool");
  TORCH_CHECK_VALUE(pool.size() == 2 && pool[0] >= 1 && pool[1] >= 1,
                    "fastconv.conv2d_pool: pool must be two positive ints, got ", pool);
  const PoolShape s{g.n, g.c_out, g.oh, g.ow, g.oh / pool[0], g.ow / pool[1], pool[0], pool[1], pool[0], pool[1],
                    0, 0, 1, 1};
  TORCH_CHECK_VALUE(s.oh >= 1 && s.ow >= 1, "fastconv.conv2d_pool: the pooling window ", pool,
                    " does not fit the convolution's ", g.oh, "x", g.ow, " output");
  return {g, s};
}

// The window arguments are those of the forward call; the backward kernels that gather (CUDA) need
// them to find the windows that cover an input element.
inline PoolShape check_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                           at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                           at::IntArrayRef stride, at::IntArrayRef padding,
                                           at::IntArrayRef dilation) {
  const char* op = "max_pool2d_backward";
  check_floating(grad_output, op, "grad_output");
  check_same_device(grad_output, "grad_output", indices, "indices", op);
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "fastconv.", op, ": indices must be int64, got ",
                   indices.scalar_type());
  check_dim(grad_output, 4, op, "grad_output", "N, C, OH, OW");
  TORCH_CHECK_VALUE(indices.sizes() == grad_output.sizes(), "fastconv.", op, ": indices ", indices.sizes(),
                    " and grad_output ", grad_output.sizes(), " must have the same shape");
  TORCH_CHECK_VALUE(input_size.size() == 4 && input_size[0] == grad_output.size(0) &&
                        input_size[1] == grad_output.size(1),
                    "fastconv.", op, ": input_size ", input_size, " does not match grad_output ",
                    grad_output.sizes());
  check_pool_window(kernel_size, stride, padding, dilation, op);
  PoolShape s = pool_window(kernel_size, stride, padding, dilation);
  s.n = input_size[0]; s.c = input_size[1]; s.h = input_size[2]; s.w = input_size[3];
  s.oh = grad_output.size(2); s.ow = grad_output.size(3);
  return s;
}

// ----------------------------------------------------------------------------- avg_pool2d

// avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override) with
// torch's arguments (divisor_override 0: none), or, with `input_size`, the shape of its backward.
inline AvgPoolShape check_avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                     int64_t divisor_override, const char* op = "avg_pool2d",
                                     std::optional<at::IntArrayRef> input_size = std::nullopt) {
  const bool backward = input_size.has_value();
  check_floating(input, op, backward ? "grad_output" : "input");
  check_dim(input, 4, op, backward ? "grad_output" : "input", backward ? "N, C, OH, OW" : "N, C, H, W");
  const int64_t one[2] = {1, 1};
  check_pool_window(kernel_size, stride, padding, one, op);
  TORCH_CHECK_VALUE(divisor_override >= 0, "fastconv.", op, ": divisor_override must be positive (0: none), got ",
                    divisor_override);
  AvgPoolShape s{};
  s.kh = kernel_size[0]; s.kw = kernel_size[1]; s.sh = stride[0]; s.sw = stride[1];
  s.ph = padding[0]; s.pw = padding[1];
  s.divisor_override = divisor_override;
  s.count_include_pad = count_include_pad;
  if (backward) {
    TORCH_CHECK_VALUE(input_size->size() == 4 && (*input_size)[0] == input.size(0) && (*input_size)[1] == input.size(1),
                      "fastconv.", op, ": input_size ", *input_size, " does not match grad_output ", input.sizes());
    s.n = (*input_size)[0]; s.c = (*input_size)[1]; s.h = (*input_size)[2]; s.w = (*input_size)[3];
  } else {
    s.n = input.size(0); s.c = input.size(1); s.h = input.size(2); s.w = input.size(3);
  }
  TORCH_CHECK_VALUE(s.h > 0 && s.w > 0 && s.c > 0, "fastconv.", op, ": input must have non-zero C, H and W, got ",
                    backward ? *input_size : input.sizes());
  s.oh = pool_out(s.h, s.kh, s.sh, s.ph, 1, ceil_mode);
  s.ow = pool_out(s.w, s.kw, s.sw, s.pw, 1, ceil_mode);
  TORCH_CHECK_VALUE(s.oh >= 1 && s.ow >= 1, "fastconv.", op, ": the window (kernel_size ", kernel_size,
                    ") does not fit the padded input ", s.h, "x", s.w);
  if (backward)
    TORCH_CHECK_VALUE(input.size(2) == s.oh && input.size(3) == s.ow, "fastconv.", op, ": grad_output ",
                      input.sizes(), " is not the output of pooling an input of size ", *input_size);
  return s;
}

// adaptive_avg_pool2d(input, output_size), or, with `input_size`, the shape of its backward.
inline AvgPoolShape check_adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size,
                                              const char* op = "adaptive_avg_pool2d",
                                              std::optional<at::IntArrayRef> input_size = std::nullopt) {
  const bool backward = input_size.has_value();
  check_floating(input, op, backward ? "grad_output" : "input");
  check_dim(input, 4, op, backward ? "grad_output" : "input", backward ? "N, C, OH, OW" : "N, C, H, W");
  AvgPoolShape s{};
  s.adaptive = true;
  if (backward) {
    TORCH_CHECK_VALUE(input_size->size() == 4 && (*input_size)[0] == input.size(0) && (*input_size)[1] == input.size(1),
                      "fastconv.", op, ": input_size ", *input_size, " does not match grad_output ", input.sizes());
    s.n = (*input_size)[0]; s.c = (*input_size)[1]; s.h = (*input_size)[2]; s.w = (*input_size)[3];
    s.oh = input.size(2); s.ow = input.size(3);
  } else {
    TORCH_CHECK_VALUE(output_size.size() == 2 && output_size[0] >= 1 && output_size[1] >= 1, "fastconv.", op,
                      ": output_size must be two positive ints, got ", output_size);
    s.n = input.size(0); s.c = input.size(1); s.h = input.size(2); s.w = input.size(3);
    s.oh = output_size[0]; s.ow = output_size[1];
  }
  TORCH_CHECK_VALUE(s.h > 0 && s.w > 0 && s.c > 0, "fastconv.", op, ": input must have non-zero C, H and W, got ",
                    backward ? *input_size : input.sizes());
  TORCH_CHECK_VALUE(s.oh >= 1 && s.ow >= 1, "fastconv.", op, ": output size must be positive, got ", s.oh, "x", s.ow);
  return s;
}

// ----------------------------------------------------------------------------- batch_norm

// The (N, C, inner) view of a batch-norm input of at least 2 dimensions.
inline BatchNormShape batch_norm_shape(const at::Tensor& input, bool training) {
  BatchNormShape s{};
  s.n = input.size(0);
  s.c = input.size(1);
  s.inner = s.n * s.c == 0 ? 0 : input.numel() / (s.n * s.c);
  s.training = training;
  return s;
}

// batch_norm(input, weight, bias, running_mean, running_var, training, eps): input (N, C, *); the
// optional per-channel tensors of size C, the input's dtype and device; the running statistics both or
// neither, needed when not training; more than one value per channel when training.
inline BatchNormShape check_batch_norm(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& running_mean,
                                       const std::optional<at::Tensor>& running_var, bool training, double eps) {
  const char* op = "batch_norm";
  check_floating(input, op, "input");
  TORCH_CHECK_VALUE(input.dim() >= 2, "fastconv.batch_norm: input must have at least 2 dimensions (N, C, *), got shape ",
                    input.sizes());
  BatchNormShape s = batch_norm_shape(input, training);
  s.eps = eps;
  auto per_channel = [&](const std::optional<at::Tensor>& t, const char* name) {
    if (!t || !t->defined()) return false;
    check_pair_args(input, "input", *t, name, op);
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == s.c, "fastconv.batch_norm: ", name, " must have one value per "
                      "channel (", s.c, "), got shape ", t->sizes());
    return true;
  };
  s.has_weight = per_channel(weight, "weight");
  s.has_bias = per_channel(bias, "bias");
  const bool has_mean = per_channel(running_mean, "running_mean"), has_var = per_channel(running_var, "running_var");
  TORCH_CHECK_VALUE(has_mean == has_var, "fastconv.batch_norm: running_mean and running_var must both be given or "
                    "both be None");
  TORCH_CHECK_VALUE(training || has_mean, "fastconv.batch_norm: running_mean and running_var are needed when not "
                    "training");
  TORCH_CHECK_VALUE(!training || s.count() > 1 || input.numel() == 0, "fastconv.batch_norm: expected more than 1 "
                    "value per channel when training, got input of shape ", input.sizes());
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "fastconv.batch_norm: eps must be finite and >= 0, got ", eps);
  return s;
}

// batch_norm_backward(grad_output, input, weight, mean, invstd, training): mean and invstd are the
// forward's (batch statistics when training, the running ones otherwise).
inline BatchNormShape check_batch_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                const std::optional<at::Tensor>& weight, const at::Tensor& mean,
                                                const at::Tensor& invstd, bool training) {
  const char* op = "batch_norm_backward";
  check_pair_args(input, "input", grad_output, "grad_output", op);
  TORCH_CHECK_VALUE(grad_output.sizes() == input.sizes(), "fastconv.", op, ": grad_output ", grad_output.sizes(),
                    " and input ", input.sizes(), " must have the same shape");
  TORCH_CHECK_VALUE(input.dim() >= 2, "fastconv.", op, ": input must have at least 2 dimensions, got shape ",
                    input.sizes());
  BatchNormShape s = batch_norm_shape(input, training);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{mean, "mean"}, {invstd, "invstd"}}) {
    check_pair_args(input, "input", t, name, op);
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == s.c, "fastconv.", op, ": ", name, " must have one value per channel (",
                      s.c, "), got shape ", t.sizes());
  }
  if (weight && weight->defined()) {
    check_pair_args(input, "input", *weight, "weight", op);
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == s.c, "fastconv.", op, ": weight must have one value per "
                      "channel (", s.c, "), got shape ", weight->sizes());
    s.has_weight = true;
  }
  return s;
}

// batch_norm_update_stats(running_mean, running_var, mean, var, momentum): four tensors of C values.
inline int64_t check_batch_norm_update_stats(const at::Tensor& running_mean, const at::Tensor& running_var,
                                             const at::Tensor& mean, const at::Tensor& var, double momentum) {
  const char* op = "batch_norm_update_stats";
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{running_var, "running_var"}, {mean, "mean"},
                                {var, "var"}}) {
    check_pair_args(running_mean, "running_mean", t, name, op);
    TORCH_CHECK_VALUE(t.sizes() == running_mean.sizes() && t.dim() == 1, "fastconv.", op, ": ", name, " ", t.sizes(),
                      " and running_mean ", running_mean.sizes(), " must be the same 1-D shape");
  }
  TORCH_CHECK_VALUE(running_mean.dim() == 1, "fastconv.", op, ": running_mean must be 1-D, got ", running_mean.sizes());
  TORCH_CHECK_VALUE(running_mean.is_contiguous() && running_var.is_contiguous(), "fastconv.", op,
                    ": running_mean and running_var must be contiguous (they are updated in place)");
  TORCH_CHECK_VALUE(std::isfinite(momentum), "fastconv.", op, ": momentum must be finite, got ", momentum);
  return running_mean.size(0);
}

// ----------------------------------------------------------------------- local_response_norm

// local_response_norm(input, size, alpha, beta, k): input (N, C, *) with at least 3 dimensions; the
// backward's tensors (grad_output, output, scale) have the input's shape, dtype and device.
inline LrnShape check_local_response_norm(const at::Tensor& input, int64_t size, double alpha, double beta, double k,
                                          const char* op = "local_response_norm") {
  check_floating(input, op, "input");
  TORCH_CHECK_VALUE(input.dim() >= 3, "fastconv.", op, ": input must have at least 3 dimensions (N, C, *), got shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(size >= 1, "fastconv.", op, ": size must be a positive int, got ", size);
  TORCH_CHECK_VALUE(std::isfinite(alpha) && std::isfinite(beta) && std::isfinite(k), "fastconv.", op,
                    ": alpha, beta and k must be finite, got ", alpha, ", ", beta, ", ", k);
  LrnShape s{};
  s.n = input.size(0);
  s.c = input.size(1);
  s.inner = input.numel() / std::max<int64_t>(1, s.n * s.c);
  if (s.n * s.c == 0) s.inner = 0;
  s.size = size; s.alpha = alpha; s.beta = beta; s.k = k;
  return s;
}

inline LrnShape check_local_response_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                   const at::Tensor& output, const at::Tensor& scale, int64_t size,
                                                   double alpha, double beta) {
  const char* op = "local_response_norm_backward";
  const LrnShape s = check_local_response_norm(input, size, alpha, beta, 0.0, op);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_output, "grad_output"},
                                {output, "output"}, {scale, "scale"}}) {
    check_pair_args(input, "input", t, name, op);
    TORCH_CHECK_VALUE(t.sizes() == input.sizes(), "fastconv.", op, ": ", name, " ", t.sizes(), " and input ",
                      input.sizes(), " must have the same shape");
  }
  return s;
}

// The message of an index outside its plane, found by any backend's backward.
[[noreturn]] inline void max_pool2d_bad_index(int64_t index, int64_t plane) {
  TORCH_CHECK_INDEX(false, "fastconv.max_pool2d_backward: index ", index, " is outside the input plane of ", plane,
                    " elements");
  __builtin_unreachable();
}

// ----------------------------------------------------------------------------- cross_entropy

// cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing) and the checks its
// backward shares (`op` names the one checked).
inline CrossEntropyArgs check_cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                            const std::optional<at::Tensor>& weight, int64_t reduction,
                                            int64_t ignore_index, double label_smoothing,
                                            const char* op = "cross_entropy") {
  check_floating(input, op, "input");
  check_dim(input, 2, op, "input", "N, C");
  check_same_device(input, "input", target, "target", op);
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, "fastconv.", op,
                   ": target must hold class indices as int64, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == input.size(0), "fastconv.", op,
                    ": target must have shape [", input.size(0), "] (one class index per row of input), got ",
                    target.sizes());
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2, "fastconv.", op,
                    ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, "fastconv.", op,
                    ": label_smoothing must be in [0, 1], got ", label_smoothing);
  TORCH_CHECK_VALUE(input.size(1) > 0, "fastconv.", op, ": input must have at least one class");
  const CrossEntropyArgs a{input.size(0), input.size(1), static_cast<Reduction>(reduction), ignore_index,
                           label_smoothing};
  if (weight.has_value() && weight->defined()) {
    check_same_dtype(input, "input", *weight, "weight", op);
    check_same_device(input, "input", *weight, "weight", op);
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == a.c, "fastconv.", op, ": weight must have shape [",
                      a.c, "] (one value per class), got ", weight->sizes());
  }
  return a;
}

// cross_entropy_backward(grad_loss, input, target, weight, lse, ...): lse is the forward's second result.
inline CrossEntropyArgs check_cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& input,
                                                     const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                                     const at::Tensor& lse, int64_t reduction, int64_t ignore_index,
                                                     double label_smoothing) {
  const char* op = "cross_entropy_backward";
  const CrossEntropyArgs a =
      check_cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing, op);
  check_same_dtype(input, "input", grad_loss, "grad_loss", op);
  check_same_dtype(input, "input", lse, "lse", op);
  check_same_device(input, "input", grad_loss, "grad_loss", op);
  check_same_device(input, "input", lse, "lse", op);
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == a.n, "fastconv.", op, ": lse must have shape [", a.n,
                    "], got ", lse.sizes());
  if (a.reduction == Reduction::none) {
    TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == a.n, "fastconv.", op,
                      ": with reduction 'none' grad_loss must have shape [", a.n, "], got ", grad_loss.sizes());
  } else {
    TORCH_CHECK_VALUE(grad_loss.numel() == 1, "fastconv.", op, ": grad_loss must be a scalar, got shape ",
                      grad_loss.sizes());
  }
  return a;
}

// What the forward's message of a bad target adds: the values it expected.
inline std::string expected_targets(int64_t classes, int64_t ignore_index) {
  return c10::str(" (expected 0..", classes - 1, " or ignore_index ", ignore_index, ")");
}

// The message of a target outside [0, C) that is not ignore_index, found by any backend; `hint` ends it.
[[noreturn]] inline void cross_entropy_bad_target(const char* op, int64_t target, int64_t row, int64_t classes,
                                                  const std::string& hint) {
  TORCH_CHECK_INDEX(false, "fastconv.", op, ": target ", target, " at row ", row, " is out of range for ", classes,
                    " classes", hint);
  __builtin_unreachable();
}

namespace sim {
// fastconv.simulate(defer_errors=...): whether the simulated ops leave an error their kernels found in
// the data to the next op or fastconv.check_errors(), as on a GPU, instead of raising it themselves;
// returns the previous setting. Defined in csrc/cuda/glue.cpp (simulator build).
bool set_defer_errors(bool enabled);
}  // namespace sim

}  // namespace fastconv
