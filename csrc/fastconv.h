// fastconv.h: what every backend shares -- argument checks with messages that name the argument,
// what was expected and what came, and the output-size arithmetic of convolution and pooling.
// Every op validates here before any kernel touches memory, so bad input is a Python exception
// (ValueError / TypeError / IndexError / RuntimeError), never a crash or garbage.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fastconv {

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

}  // namespace fastconv
