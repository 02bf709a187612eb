// shapes.h: the problem descriptions of fastconv's ops, written once for every side. The checks
// (csrc/fastconv.h) fill them from validated arguments; the CPU kernels (csrc/cpu/*.cpp), the
// launchers (csrc/cuda/kernels.h) and the CUDA kernels (csrc/cuda/*.cu) take them as they are.
// Plain C++ of fixed-size integers: no torch, no CUDA, no compiler-specific code, so g++, nvcc and
// the simulator build all include it. Sizes are int64 (a tensor may exceed 2^31 elements).
#pragma once

#include <cstdint>

namespace fastconv {

// Storage type of a tensor's elements, as the launchers see it.
enum class DType : int32_t { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// The reduction of cross_entropy, with torch's at::Reduction values (the op schema passes the int).
enum class Reduction : int32_t { none = 0, mean = 1, sum = 2 };

// A 2-D convolution: input [n, c_in, h, w], weight [c_out, c_in / groups, kh, kw], output
// [n, c_out, oh, ow]. Padding is (top, bottom, left, right), so that "same" with an even effective
// kernel (the extra row / column at the bottom / right, as torch does) needs no copy of the input.
struct ConvShape {
  int64_t n, c_in, h, w;   // input
  int64_t c_out, kh, kw;   // weight
  int64_t oh, ow;          // output
  int64_t sh, sw, dh, dw;  // stride, dilation
  int64_t pt, pb, pl, pr;  // padding
  int64_t groups;
  int64_t cin_g() const { return c_in / groups; }
  int64_t cout_g() const { return c_out / groups; }
  int64_t k_gemm() const { return cin_g() * kh * kw; }  // reduction length of one output value
};

// The activation a convolution applies to its outputs in its epilogue (the op's `relu` and
// `negative_slope` arguments): none, ReLU (x < 0 ? 0 : x) or LeakyReLU (x > 0 ? x : x * slope),
// each as the unfused op computes it, so NaN stays NaN and a fused result equals an unfused one.
struct Activation {
  enum Kind : int32_t { none = 0, relu = 1, leaky_relu = 2 };
  Kind kind = none;
  double slope = 0;  // of leaky_relu
};

// A 2-D max-pool: input [n, c, h, w] -> output (and indices) [n, c, oh, ow]; window kh x kw,
// stride, symmetric padding ph / pw, dilation.
struct PoolShape {
  int64_t n, c, h, w, oh, ow;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// linear: input [rows, in] (leading dimensions flattened), weight [out, in], output [rows, out].
// Average pooling, input [n, c, h, w] -> output [n, c, oh, ow]: avg_pool2d (windows kh x kw, stride,
// padding; the divisor the window's padded extent with count_include_pad, its extent inside the input
// otherwise, or divisor_override) or adaptive_avg_pool2d (output row o averages input rows
// [floor(o h / oh), ceil((o + 1) h / oh)), and so for columns). Window rows and columns are separable:
// avg_pool_range gives each output row's (column's) input range and its factor of the divisor.
struct AvgPoolShape {
  int64_t n, c, h, w, oh, ow;
  int64_t kh, kw, sh, sw, ph, pw;  // avg_pool2d only
  int64_t divisor_override;       // 0: none
  bool adaptive, count_include_pad;
};

// Input range [lo, hi) of output index o along one axis (in inputs, out outputs), and `size`, this
// axis's factor of the divisor. constexpr: the CUDA kernels call it too (--expt-relaxed-constexpr).
struct PoolRange {
  int64_t lo, hi, size;
};
constexpr PoolRange avg_pool_range(int64_t o, int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, bool adaptive,
                                   bool count_include_pad) {
  if (adaptive) {
    const int64_t lo = o * in / out, hi = ((o + 1) * in + out - 1) / out;
    return PoolRange{lo, hi, hi - lo};
  }
  int64_t lo = o * s - p, hi = lo + k < in + p ? lo + k : in + p;
  const int64_t padded = hi - lo;
  lo = lo < 0 ? 0 : lo;
  hi = hi < in ? hi : in;
  return PoolRange{lo, hi, count_include_pad ? padded : hi - lo};
}

// The output indices whose ranges may hold input index i: [first, last], a superset (check each with
// avg_pool_range); empty when first > last.
constexpr PoolRange avg_pool_cover(int64_t i, int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, bool adaptive) {
  int64_t first = adaptive ? i * out / in - 1 : (i + p - k) / s;  // (a negative numerator rounds up: still <=)
  int64_t last = adaptive ? (i + 1) * out / in + 1 : (i + p) / s;
  first = first < 0 ? 0 : first;
  last = last < out - 1 ? last : out - 1;
  return PoolRange{first, last, 0};
}

// Local response normalization across channels (torch's definition), input [n, c, inner] (inner: the
// spatial positions): s[c] = k + alpha * (sum of x[c']^2 over c' in [c - size / 2, c + (size - 1) / 2]
// within [0, c)) / size, y[c] = x[c] / s[c]^beta.
struct LrnShape {
  int64_t n, c, inner, size;
  double alpha, beta, k;
};

// Batch normalization per channel over the batch and every other dimension: input [n, c, inner].
struct BatchNormShape {
  int64_t n, c, inner;
  double eps;
  bool training, has_weight, has_bias;
  constexpr int64_t count() const { return n * inner; }  // values per channel (constexpr: CUDA calls it too)
};

struct LinearShape {
  int64_t rows, in, out;
};

// bias_grad: grad_output viewed as [outer, channels, inner], summed to [channels]; `dim` is the
// channel dimension of the original tensor.
struct BiasGradShape {
  int64_t dim, outer, channels, inner;
};

// Softmax + cross-entropy: logits [n, c], int64 targets [n], optional class weights [c].
struct CrossEntropyArgs {
  int64_t n, c;
  Reduction reduction;
  int64_t ignore_index;
  double label_smoothing;
};

}  // namespace fastconv
