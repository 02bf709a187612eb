// fastconv.h: what every backend shares -- argument checks with messages that name the argument,
// what was expected and what came, and the output-size arithmetic of convolution and pooling.
// Every op validates here before any kernel touches memory, so bad input is a Python exception
// (ValueError / TypeError / IndexError / RuntimeError), never a crash or garbage.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fastconv {

// Whether the CUDA (and simulated CUDA) convolution and linear kernels may round float32 operands to
// tf32 and multiply them on tensor cores (fastconv.backends.allow_tf32; off by default). The CPU
// kernels always compute in float32. Defined in registration.cpp.
bool allow_tf32();
bool set_allow_tf32(bool enabled);  // returns the previous setting

// float16 and bfloat16 are accepted by every op and computed in float32 (see compute_in_float).
inline bool is_reduced(const at::Tensor& t) {
  return t.defined() && (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16);
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || is_reduced(t), "fastconv.", op, ": ", name,
                   " must be float32 or float64, got ", s, "; float16 and bfloat16 are accepted too (computed in "
                   "float32)");
}

// Reduced-precision arguments: the op runs on float32 copies, its floating results are rounded back to
// `dtype` (float32 accumulation, as torch's own CPU kernels do for these types).
inline at::Tensor to_float(const at::Tensor& t) { return is_reduced(t) ? t.to(at::kFloat) : t; }
inline std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(to_float(*t)) : t;
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

// Output length of a sliding window over `in` padded by `pad_lo + pad_hi` (floor mode).
inline int64_t window_out(int64_t in, int64_t pad_lo, int64_t pad_hi, int64_t k, int64_t d, int64_t s) {
  return (in + pad_lo + pad_hi - d * (k - 1) - 1) / s + 1;
}

// Shape of a 2-D convolution; padding is (top, bottom, left, right) so that "same" with an even
// effective kernel (extra row/column at the bottom/right, as torch does) needs no copy of the input.
struct ConvGeometry {
  int64_t n, c_in, h, w;        // input
  int64_t c_out, kh, kw;        // weight: [c_out, c_in / groups, kh, kw]
  int64_t sh, sw, dh, dw;       // stride, dilation
  int64_t pt, pb, pl, pr;       // padding
  int64_t groups;
  int64_t oh, ow;               // output
  int64_t cin_g() const { return c_in / groups; }
  int64_t cout_g() const { return c_out / groups; }
  int64_t k_gemm() const { return cin_g() * kh * kw; }  // reduction length of one output value
};

inline ConvGeometry conv_geometry(at::IntArrayRef input, at::IntArrayRef weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                  const char* op) {
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
  ConvGeometry g{};
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

// Max-pool output length, torch's rule: in ceil mode the last window must start inside the
// input or the left padding.
// Floor division for any sign of the numerator (C++ division truncates toward zero).
inline int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

inline int64_t pool_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;  // negative: the window is larger than the padded input
  int64_t out = floor_div(ceil_mode ? span + s - 1 : span, s) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

// ----------------------------------------------------------------- per-op checks of every backend

// Two floating arguments of one op: same dtype, same device.
inline void check_pair_args(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn, const char* op) {
  check_floating(a, op, an);
  check_same_dtype(a, an, b, bn, op);
  check_same_device(a, an, b, bn, op);
}

inline void check_grad_output_shape(const at::Tensor& grad_output, const ConvGeometry& g, const char* op) {
  const std::vector<int64_t> expected{g.n, g.c_out, g.oh, g.ow};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected), "fastconv.", op,
                    ": grad_output must have shape ", at::IntArrayRef(expected), ", got ", grad_output.sizes());
}

// The optional bias of conv2d / linear, checked against the input and made contiguous (undefined without one).
inline at::Tensor checked_bias(const std::optional<at::Tensor>& bias, const at::Tensor& input, int64_t channels,
                               const char* op) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  check_pair_args(input, "input", *bias, "bias", op);
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == channels, "fastconv.", op, ": bias must have shape [",
                    channels, "]", std::string(op) == "conv2d" ? " (one value per output channel)" : "", ", got ",
                    bias->sizes());
  return bias->contiguous();
}

// bias_grad(grad_output, channel_dim): grad_output viewed as [outer, channels, inner].
struct BiasGradShape {
  int64_t dim, outer, channels, inner;
};

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

// linear(input, weight, bias): returns the output's shape.
inline std::vector<int64_t> check_linear(const at::Tensor& input, const at::Tensor& weight) {
  const char* op = "linear";
  check_pair_args(input, "input", weight, "weight", op);
  check_dim(weight, 2, op, "weight", "out_features, in_features");
  TORCH_CHECK_VALUE(input.dim() >= 1, "fastconv.linear: input must have at least 1 dimension");
  TORCH_CHECK_VALUE(input.size(-1) == weight.size(1), "fastconv.linear: input has ", input.size(-1),
                    " features in its last dimension but weight expects ", weight.size(1), " (weight shape ",
                    weight.sizes(), ")");
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = weight.size(0);
  return shape;
}

inline std::vector<int64_t> check_linear_grad_input(const at::Tensor& grad_output, const at::Tensor& weight) {
  const char* op = "linear_grad_input";
  check_pair_args(grad_output, "grad_output", weight, "weight", op);
  check_dim(weight, 2, op, "weight", "out_features, in_features");
  TORCH_CHECK_VALUE(grad_output.dim() >= 1 && grad_output.size(-1) == weight.size(0), "fastconv.", op,
                    ": grad_output must end in ", weight.size(0), " features, got shape ", grad_output.sizes());
  std::vector<int64_t> shape(grad_output.sizes().begin(), grad_output.sizes().end());
  shape.back() = weight.size(1);
  return shape;
}

inline void check_linear_grad_weight(const at::Tensor& grad_output, const at::Tensor& input) {
  const char* op = "linear_grad_weight";
  check_pair_args(grad_output, "grad_output", input, "input", op);
  TORCH_CHECK_VALUE(grad_output.dim() >= 1 && input.dim() == grad_output.dim() &&
                        input.sizes().slice(0, input.dim() - 1) ==
                            grad_output.sizes().slice(0, grad_output.dim() - 1),
                    "fastconv.", op, ": grad_output ", grad_output.sizes(), " and input ", input.sizes(),
                    " must agree in all but the last dimension");
}

inline void check_relu_backward(const at::Tensor& grad_output, const at::Tensor& result) {
  check_floating(grad_output, "relu_backward", "grad_output");
  check_same_dtype(grad_output, "grad_output", result, "result", "relu_backward");
  check_same_device(grad_output, "grad_output", result, "result", "relu_backward");
  TORCH_CHECK_VALUE(grad_output.sizes() == result.sizes(), "fastconv.relu_backward: grad_output ",
                    grad_output.sizes(), " and result ", result.sizes(), " must have the same shape");
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

struct PoolShape {
  int64_t n, c, h, w, oh, ow;
};

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

inline PoolShape check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const char* op = "max_pool2d";
  check_floating(input, op, "input");
  check_dim(input, 4, op, "input", "N, C, H, W");
  check_pool_window(kernel_size, stride, padding, dilation, op);
  PoolShape s{input.size(0), input.size(1), input.size(2), input.size(3), 0, 0};
  TORCH_CHECK_VALUE(s.h > 0 && s.w > 0 && s.c > 0, "fastconv.max_pool2d: input must have non-zero C, H and W, got ",
                    input.sizes());
  s.oh = pool_out(s.h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode);
  s.ow = pool_out(s.w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode);
  TORCH_CHECK_VALUE(s.oh >= 1 && s.ow >= 1, "fastconv.max_pool2d: the window (kernel_size ", kernel_size,
                    ", dilation ", dilation, ") does not fit the padded input ", s.h, "x", s.w);
  return s;
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
  return PoolShape{input_size[0], input_size[1], input_size[2], input_size[3], grad_output.size(2),
                   grad_output.size(3)};
}

// The message of an index outside its plane, found by any backend's backward.
[[noreturn]] inline void max_pool2d_bad_index(int64_t index, int64_t plane) {
  TORCH_CHECK_INDEX(false, "fastconv.max_pool2d_backward: index ", index, " is outside the input plane of ", plane,
                    " elements");
  __builtin_unreachable();
}

enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

// Checked and contiguous arguments of cross_entropy and its backward.
struct CrossEntropyInputs {
  at::Tensor z, target, weight;  // weight undefined without class weights
  int64_t n, c;
};

inline CrossEntropyInputs check_cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                              const std::optional<at::Tensor>& weight, int64_t reduction,
                                              double label_smoothing, const char* op) {
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
  CrossEntropyInputs a{input.contiguous(), target.contiguous(), at::Tensor(), input.size(0), input.size(1)};
  if (weight.has_value() && weight->defined()) {
    check_same_dtype(input, "input", *weight, "weight", op);
    check_same_device(input, "input", *weight, "weight", op);
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == a.c, "fastconv.", op, ": weight must have shape [",
                      a.c, "] (one value per class), got ", weight->sizes());
    a.weight = weight->contiguous();
  }
  return a;
}

inline void check_cross_entropy_backward(const CrossEntropyInputs& a, const at::Tensor& input,
                                         const at::Tensor& grad_loss, const at::Tensor& lse, int64_t reduction) {
  const char* op = "cross_entropy_backward";
  check_same_dtype(input, "input", grad_loss, "grad_loss", op);
  check_same_dtype(input, "input", lse, "lse", op);
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == a.n, "fastconv.", op, ": lse must have shape [", a.n,
                    "], got ", lse.sizes());
  if (reduction == kNone) {
    TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == a.n, "fastconv.", op,
                      ": with reduction 'none' grad_loss must have shape [", a.n, "], got ", grad_loss.sizes());
  } else {
    TORCH_CHECK_VALUE(grad_loss.numel() == 1, "fastconv.", op, ": grad_loss must be a scalar, got shape ",
                      grad_loss.sizes());
  }
}

// The message of a target outside [0, C) that is not ignore_index, found by any backend.
[[noreturn]] inline void cross_entropy_bad_target(const char* op, int64_t target, int64_t row, int64_t classes,
                                                  int64_t ignore_index) {
  if (std::string(op) == "cross_entropy")
    TORCH_CHECK_INDEX(false, "fastconv.cross_entropy: target ", target, " at row ", row, " is out of range for ",
                      classes, " classes (expected 0..", classes - 1, " or ignore_index ", ignore_index, ")");
  TORCH_CHECK_INDEX(false, "fastconv.", op, ": target ", target, " at row ", row, " is out of range for ", classes,
                    " classes");
  __builtin_unreachable();
}

}  // namespace fastconv
