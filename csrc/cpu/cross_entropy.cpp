// cross_entropy.cpp: softmax and cross-entropy fused into one forward and one backward op.
//
// Forward, one row of logits z (C classes) per task:
//   lse  = m + log(sum_c exp(z_c - m)),  m = max_c z_c          (the log-sum-exp, kept for backward)
//   loss = (1 - eps) * w[t] * (lse - z_t) + eps / C * sum_c w[c] * (lse - z_c)
// with class weights w (1 without), label smoothing eps, and target t; rows whose target is
// ignore_index give 0. reduction: 0 none, 1 mean (divided by the sum of w[t] over rows not
// ignored, torch's definition, NaN when that is 0), 2 sum. Row losses are summed in row order in
// double, so the result does not depend on the thread count.
// Backward, fused as softmax minus the smoothed one-hot:
//   dz_c = scale * (softmax_c * sum_j coef_j - coef_c),
//   coef_c = (1 - eps) * w[t] * [c == t] + eps / C * w[c]
// softmax recomputed from z and the saved lse, so no probability buffer is kept. Cost: 3 passes
// over the logits forward (max, exp-sum, weighted sums), 1 backward.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/gemm.h"
#include "fastconv.h"
#include "sim/sim.h"

namespace fastconv::cpu {
namespace {

template <typename T>
T class_weight(const T* w, int64_t c) { return w ? w[c] : T(1); }

// e^x for the lanes of a float vector: x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2
// (ln2 split in two parts, so r is exact), e^r by Cephes' degree-5 minimax polynomial (relative
// error about 1e-7), times 2^n built in the exponent bits. Below ln(2^-126) the result is 0 (no
// subnormals), above ln(2^127.5) it is inf (a softmax only asks for e^x with x <= 0), and NaN stays NaN.
inline Tile<float>::V exp_lanes(Tile<float>::V x) {
  using V = Tile<float>::V;
  typedef int32_t I __attribute__((vector_size(sizeof(V))));
  typedef uint32_t U __attribute__((vector_size(sizeof(V))));
  constexpr float kLo = -87.33654f, kHi = 88.37626f;  // ln(2^-126), ln(2^127.5): n stays in [-126, 127]
  const I lo = x < kLo, hi = x > kHi;  // lane masks; a NaN lane is in neither
  const V xc = lo ? kLo + V{} : (hi ? kHi + V{} : x);
  const V n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const V r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  V p = 1.9875691500e-4f + V{};
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V y = p * (r * r) + r + 1.0f;
  const U bits = (U)(__builtin_convertvector(n, I) + 127) << 23;  // 2^n
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  const V e = y * scale;
  return lo ? V{} : (hi ? std::numeric_limits<float>::infinity() + V{} : e);
}

// dst[c] = exp(src[c] - shift) for c < n: float through exp_lanes, W lanes at a time, the last
// partial vector padded (so every element takes the same arithmetic wherever it lies); double
// through std::exp.
template <typename T>
inline void exp_shifted(const T* __restrict__ src, T shift, T* __restrict__ dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    using V = Tile<float>::V;
    constexpr int W = Tile<float>::W;
    int64_t c = 0;
    for (; c + W <= n; c += W) {
      V v;
      std::memcpy(&v, src + c, sizeof(V));
      const V e = exp_lanes(v - shift);
      std::memcpy(dst + c, &e, sizeof(V));
    }
    if (c < n) {
#if defined(__AVX512F__)
      if constexpr (W == 16) {  // a masked load and store (lane by lane, the vector went through memory)
        const __mmask16 k = (__mmask16)((1u << (n - c)) - 1);
        const V v = (V)_mm512_maskz_loadu_ps(k, src + c);
        _mm512_mask_storeu_ps(dst + c, k, (__m512)exp_lanes(v - shift));
        return;
      }
#endif
      V v{};
      for (int l = 0; l < n - c; ++l) v[l] = src[c + l];
      const V e = exp_lanes(v - shift);
      for (int l = 0; l < n - c; ++l) dst[c + l] = e[l];
    }
  } else {
    for (int64_t c = 0; c < n; ++c) dst[c] = std::exp(src[c] - shift);
  }
}

// Rows of scratch for exp_shifted: one row of C per thread.
template <typename T>
T* exp_row(int64_t C) { return scratch<T>(0, C); }

std::tuple<at::Tensor, at::Tensor> cross_entropy_impl(const CrossEntropyArgs& a, const at::Tensor& input,
                                                      const at::Tensor& target, const std::optional<at::Tensor>& weight) {
  const char* op = "cross_entropy";
  const at::Tensor zc = input.contiguous(), tc = target.contiguous(), wc = contiguous_or_none(weight);
  const int64_t ignore_index = a.ignore_index;
  at::Tensor lse = cpu::empty({a.n}, zc.options());
  at::Tensor rows = cpu::empty({a.n}, zc.options());
  at::Tensor loss = a.reduction == Reduction::none ? rows : cpu::empty({}, zc.options());
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "fastconv_cross_entropy", [&] {
    using T = scalar_t;
    const T* z = zc.const_data_ptr<T>();
    const int64_t* t = tc.const_data_ptr<int64_t>();
    const T* w = wc.defined() ? wc.const_data_ptr<T>() : nullptr;
    T* lse_p = lse.mutable_data_ptr<T>();
    T* row_p = rows.mutable_data_ptr<T>();
    const int64_t C = a.c;
    const double eps = a.label_smoothing;
    at::parallel_for(0, a.n, std::max<int64_t>(64, 65536 / C), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T* zi = z + i * C;
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t c = 0; c < C; ++c) m = zi[c] > m ? zi[c] : m;  // fmax: a NaN logit is passed over
        if (std::isinf(m)) m = T(0);  // all -inf (or +inf) rows: keep the arithmetic NaN-free where torch is
        T* ex = exp_row<T>(C);
        exp_shifted(zi, m, ex, C);
        T s = 0;
        for (int64_t c = 0; c < C; ++c) s += ex[c];
        const T l = m + std::log(s);
        lse_p[i] = l;
        const int64_t ti = t[i];
        if (ti == ignore_index) {
          row_p[i] = T(0);
          continue;
        }
        if (ti < 0 || ti >= C) cross_entropy_bad_target(op, ti, i, C, expected_targets(C, ignore_index));
        T loss_i = T(1.0 - eps) * class_weight(w, ti) * (l - zi[ti]);
        if (eps > 0) {
          T smooth = 0;
          for (int64_t c = 0; c < C; ++c) smooth += class_weight(w, c) * (l - zi[c]);
          loss_i += T(eps / C) * smooth;
        }
        row_p[i] = loss_i;
      }
    });
    if (a.reduction != Reduction::none) {
      double total = 0, denom = 0;
      for (int64_t i = 0; i < a.n; ++i) {
        total += row_p[i];
        if (t[i] != ignore_index) denom += class_weight(w, t[i]);
      }
      // mean over zero total weight is NaN, as in torch, even where the smoothing term alone is not 0
      const double mean = denom == 0 ? std::numeric_limits<double>::quiet_NaN() : total / denom;
      loss.mutable_data_ptr<T>()[0] = static_cast<T>(a.reduction == Reduction::mean ? mean : total);
    }
  });
  return {loss, lse};
}

at::Tensor cross_entropy_backward_impl(const CrossEntropyArgs& a, const at::Tensor& grad_loss, const at::Tensor& input,
                                       const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                       const at::Tensor& lse) {
  const char* op = "cross_entropy_backward";
  const at::Tensor zc = input.contiguous(), tc = target.contiguous(), wc = contiguous_or_none(weight);
  const int64_t ignore_index = a.ignore_index;
  at::Tensor dz = cpu::empty({a.n, a.c}, zc.options());
  const at::Tensor gl = grad_loss.contiguous(), ls = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "fastconv_cross_entropy_backward", [&] {
    using T = scalar_t;
    const T* z = zc.const_data_ptr<T>();
    const int64_t* t = tc.const_data_ptr<int64_t>();
    const T* w = wc.defined() ? wc.const_data_ptr<T>() : nullptr;
    const T* g = gl.const_data_ptr<T>();
    const T* l = ls.const_data_ptr<T>();
    T* out = dz.mutable_data_ptr<T>();
    const int64_t C = a.c;
    const double eps = a.label_smoothing;
    double wsum = 0;  // sum_c w[c]
    for (int64_t c = 0; c < C; ++c) wsum += class_weight(w, c);
    double denom = 1;
    if (a.reduction == Reduction::mean) {
      denom = 0;
      for (int64_t i = 0; i < a.n; ++i)
        if (t[i] != ignore_index) denom += class_weight(w, t[i]);
      if (denom == 0) denom = std::numeric_limits<double>::quiet_NaN();  // NaN gradients, like the loss
    }
    at::parallel_for(0, a.n, std::max<int64_t>(64, 65536 / C), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        T* oi = out + i * C;
        const int64_t ti = t[i];
        if (ti == ignore_index) {
          for (int64_t c = 0; c < C; ++c) oi[c] = T(0);
          continue;
        }
        if (ti < 0 || ti >= C) cross_entropy_bad_target(op, ti, i, C, "");
        const T scale = static_cast<T>((a.reduction == Reduction::none ? double(g[i]) : double(g[0])) / denom);
        const T hard = T((1.0 - eps) * double(class_weight(w, ti)));
        const T soft = T(eps / C);
        const T coef_sum = hard + T(eps / C * wsum);
        exp_shifted(z + i * C, l[i], oi, C);  // the softmax, in place in the gradient's row
        for (int64_t c = 0; c < C; ++c) oi[c] = scale * (oi[c] * coef_sum - soft * class_weight(w, c));
        oi[ti] -= scale * hard;
      }
    });
  });
  return dz;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_cpu(const at::Tensor& input, const at::Tensor& target,
                                                     const std::optional<at::Tensor>& weight, int64_t reduction,
                                                     int64_t ignore_index, double label_smoothing) {
  const CrossEntropyArgs a = check_cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing);
  return in_float32(
      [&](const at::Tensor& input, const std::optional<at::Tensor>& weight) {
        return cross_entropy_impl(a, input, target, weight);
      },
      input, weight);
}

at::Tensor cross_entropy_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                                      const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                                      int64_t reduction, int64_t ignore_index, double label_smoothing) {
  const CrossEntropyArgs a = check_cross_entropy_backward(grad_loss, input, target, weight, lse, reduction,
                                                          ignore_index, label_smoothing);
  return in_float32(
      [&](const at::Tensor& grad_loss, const at::Tensor& input, const std::optional<at::Tensor>& weight,
          const at::Tensor& lse) { return cross_entropy_backward_impl(a, grad_loss, input, target, weight, lse); },
      grad_loss, input, weight, lse);
}

}  // namespace

// Under fastconv.simulate() these ops run their CUDA kernels in the simulator (csrc/sim/sim.h).
TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("cross_entropy", &sim::Routed<cross_entropy_cpu, sim::cross_entropy>::call);
  m.impl("cross_entropy_backward", &sim::Routed<cross_entropy_backward_cpu, sim::cross_entropy_backward>::call);
}

}  // namespace fastconv::cpu
