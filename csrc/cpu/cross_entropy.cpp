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
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "fastconv.h"

namespace fastconv::cpu {
namespace {

enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

struct CeArgs {
  at::Tensor z, target, weight;  // contiguous
  int64_t n, c;
};

CeArgs check_ce(const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                int64_t reduction, double label_smoothing, const char* op) {
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
  CeArgs a{input.contiguous(), target.contiguous(), at::Tensor(), input.size(0), input.size(1)};
  if (weight.has_value() && weight->defined()) {
    check_same_dtype(input, "input", *weight, "weight", op);
    check_same_device(input, "input", *weight, "weight", op);
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == a.c, "fastconv.", op, ": weight must have shape [",
                      a.c, "] (one value per class), got ", weight->sizes());
    a.weight = weight->contiguous();
  }
  return a;
}

template <typename T>
T class_weight(const T* w, int64_t c) { return w ? w[c] : T(1); }

std::tuple<at::Tensor, at::Tensor> cross_entropy_cpu(const at::Tensor& input, const at::Tensor& target,
                                                     const std::optional<at::Tensor>& weight, int64_t reduction,
                                                     int64_t ignore_index, double label_smoothing) {
  if (is_reduced(input)) {
    if (weight.has_value() && weight->defined()) check_same_dtype(input, "input", *weight, "weight", "cross_entropy");
    auto [loss, lse] = cross_entropy_cpu(to_float(input), target, to_float(weight), reduction, ignore_index,
                                         label_smoothing);
    return {loss.to(input.scalar_type()), lse.to(input.scalar_type())};
  }
  const char* op = "cross_entropy";
  const CeArgs a = check_ce(input, target, weight, reduction, label_smoothing, op);
  at::Tensor lse = at::empty({a.n}, a.z.options());
  at::Tensor rows = at::empty({a.n}, a.z.options());
  at::Tensor loss = reduction == kNone ? rows : at::empty({}, a.z.options());
  AT_DISPATCH_FLOATING_TYPES(a.z.scalar_type(), "fastconv_cross_entropy", [&] {
    using T = scalar_t;
    const T* z = a.z.const_data_ptr<T>();
    const int64_t* t = a.target.const_data_ptr<int64_t>();
    const T* w = a.weight.defined() ? a.weight.const_data_ptr<T>() : nullptr;
    T* lse_p = lse.mutable_data_ptr<T>();
    T* row_p = rows.mutable_data_ptr<T>();
    const int64_t C = a.c;
    const double eps = label_smoothing;
    at::parallel_for(0, a.n, std::max<int64_t>(64, 65536 / C), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T* zi = z + i * C;
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t c = 0; c < C; ++c) m = std::fmax(m, zi[c]);
        if (std::isinf(m)) m = T(0);  // all -inf (or +inf) rows: keep the arithmetic NaN-free where torch is
        T s = 0;
        for (int64_t c = 0; c < C; ++c) s += std::exp(zi[c] - m);
        const T l = m + std::log(s);
        lse_p[i] = l;
        const int64_t ti = t[i];
        if (ti == ignore_index) {
          row_p[i] = T(0);
          continue;
        }
        TORCH_CHECK_INDEX(ti >= 0 && ti < C, "fastconv.cross_entropy: target ", ti, " at row ", i,
                          " is out of range for ", C, " classes (expected 0..", C - 1, " or ignore_index ",
                          ignore_index, ")");
        T loss_i = T(1.0 - eps) * class_weight(w, ti) * (l - zi[ti]);
        if (eps > 0) {
          T smooth = 0;
          for (int64_t c = 0; c < C; ++c) smooth += class_weight(w, c) * (l - zi[c]);
          loss_i += T(eps / C) * smooth;
        }
        row_p[i] = loss_i;
      }
    });
    if (reduction != kNone) {
      double total = 0, denom = 0;
      for (int64_t i = 0; i < a.n; ++i) {
        total += row_p[i];
        if (t[i] != ignore_index) denom += class_weight(w, t[i]);
      }
      // mean over zero total weight is NaN, as in torch, even where the smoothing term alone is not 0
      const double mean = denom == 0 ? std::numeric_limits<double>::quiet_NaN() : total / denom;
      loss.mutable_data_ptr<T>()[0] = static_cast<T>(reduction == kMean ? mean : total);
    }
  });
  return {loss, lse};
}

at::Tensor cross_entropy_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                                      const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                                      int64_t reduction, int64_t ignore_index, double label_smoothing) {
  if (is_reduced(input)) {
    check_same_dtype(input, "input", grad_loss, "grad_loss", "cross_entropy_backward");
    return cross_entropy_backward_cpu(to_float(grad_loss), to_float(input), target, to_float(weight), to_float(lse),
                                      reduction, ignore_index, label_smoothing).to(input.scalar_type());
  }
  const char* op = "cross_entropy_backward";
  const CeArgs a = check_ce(input, target, weight, reduction, label_smoothing, op);
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
  at::Tensor dz = at::empty({a.n, a.c}, a.z.options());
  const at::Tensor gl = grad_loss.contiguous(), ls = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES(a.z.scalar_type(), "fastconv_cross_entropy_backward", [&] {
    using T = scalar_t;
    const T* z = a.z.const_data_ptr<T>();
    const int64_t* t = a.target.const_data_ptr<int64_t>();
    const T* w = a.weight.defined() ? a.weight.const_data_ptr<T>() : nullptr;
    const T* g = gl.const_data_ptr<T>();
    const T* l = ls.const_data_ptr<T>();
    T* out = dz.mutable_data_ptr<T>();
    const int64_t C = a.c;
    const double eps = label_smoothing;
    double wsum = 0;  // sum_c w[c]
    for (int64_t c = 0; c < C; ++c) wsum += class_weight(w, c);
    double denom = 1;
    if (reduction == kMean) {
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
        TORCH_CHECK_INDEX(ti >= 0 && ti < C, "fastconv.cross_entropy_backward: target ", ti, " at row ", i,
                          " is out of range for ", C, " classes");
        const T scale = static_cast<T>((reduction == kNone ? double(g[i]) : double(g[0])) / denom);
        const T hard = T((1.0 - eps) * double(class_weight(w, ti)));
        const T soft = T(eps / C);
        const T coef_sum = hard + T(eps / C * wsum);
        const T* zi = z + i * C;
        for (int64_t c = 0; c < C; ++c)
          oi[c] = scale * (std::exp(zi[c] - l[i]) * coef_sum - soft * class_weight(w, c));
        oi[ti] -= scale * hard;
      }
    });
  });
  return dz;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("cross_entropy", &cross_entropy_cpu);
  m.impl("cross_entropy_backward", &cross_entropy_backward_cpu);
}

}  // namespace fastconv::cpu
