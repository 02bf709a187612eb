// batch_norm.cpp: batch normalization (training and inference), its fused backward and the running
// statistics' update, on the CPU.
//
// Per channel c over its M = N * inner values (N rows of `inner` contiguous values, C * inner apart):
//   training   mean = sum x / M, var = sum (x - mean)^2 / M (two passes, for accuracy), invstd =
//              1 / sqrt(var + eps); the unbiased var * M / (M - 1) is returned for the running stats
//   inference  mean, var = the running statistics
//   y = x * scale + shift, scale = invstd * weight, shift = bias - mean * scale
// Backward, one pass over (dy, x) for both sums: sum_g = sum dy, sum_gx = sum dy (x - mean);
//   dbias = sum_g, dweight = sum_gx * invstd,
//   dx = weight * invstd * (dy - sum_g / M - (x - mean) * sum_gx * invstd^2 / M)   (training)
//   dx = weight * invstd * dy                                                        (inference)
// Sums: W lanes of partial sums per row in the computation type, each row's lanes then added in
// double, rows in order. A channel is owned by one thread: results are bitwise the same for any
// thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/gemm.h"
#include "fastconv.h"
#include "sim/sim.h"

namespace fastconv::cpu {
namespace {

template <typename T>
inline typename Tile<T>::V load(const T* p) {
  typename Tile<T>::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
void bn_forward(const BatchNormShape& s, const T* x, const T* w, const T* b, const T* rm, const T* rv, T* y, T* mean,
                T* invstd, T* var_out) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W;
  const int64_t C = s.c, I = s.inner, M = s.count();
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double mu, var;
      if (s.training) {
        double sum = 0;
        for (int64_t n = 0; n < s.n; ++n) {
          const T* r = x + (n * C + c) * I;
          sum += row_sum<T>(I, [&](int64_t i) { return load(r + i); }, [&](int64_t i) { return double(r[i]); });
        }
        mu = sum / double(M);
        const T m = static_cast<T>(mu);
        double sq = 0;
        for (int64_t n = 0; n < s.n; ++n) {
          const T* r = x + (n * C + c) * I;
          sq += row_sum<T>(I, [&](int64_t i) { const V d = load(r + i) - m; return d * d; },
                           [&](int64_t i) { const double d = double(r[i]) - mu; return d * d; });
        }
        var = sq / double(M);
        var_out[c] = static_cast<T>(M > 1 ? sq / double(M - 1) : std::numeric_limits<double>::quiet_NaN());
      } else {
        mu = double(rm[c]);
        var = double(rv[c]);
        var_out[c] = rv[c];
      }
      const double is = 1.0 / std::sqrt(var + s.eps);
      mean[c] = static_cast<T>(mu);
      invstd[c] = static_cast<T>(is);
      const double sc = is * (w ? double(w[c]) : 1.0);
      const T scale = static_cast<T>(sc), shift = static_cast<T>((b ? double(b[c]) : 0.0) - mu * sc);
      for (int64_t n = 0; n < s.n; ++n) {
        const T* r = x + (n * C + c) * I;
        T* o = y + (n * C + c) * I;
        int64_t i = 0;
        for (; i + W <= I; i += W) {
          const V v = load(r + i) * scale + shift;
          std::memcpy(o + i, &v, sizeof(V));
        }
        for (; i < I; ++i) o[i] = r[i] * scale + shift;
      }
    }
  });
}

template <typename T>
void bn_backward(const BatchNormShape& s, const T* dy, const T* x, const T* w, const T* mean, const T* invstd, T* dx,
                 T* dw, T* db) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W;
  const int64_t C = s.c, I = s.inner, M = s.count();
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const T m = mean[c];
      double sum_g = 0, sum_gx = 0;
      for (int64_t n = 0; n < s.n; ++n) {  // both sums in one pass over the row
        const T* g = dy + (n * C + c) * I;
        const T* r = x + (n * C + c) * I;
        V lg{}, lgx{};
        int64_t i = 0;
        for (; i + W <= I; i += W) {
          const V gv = load(g + i);
          lg += gv;
          lgx += gv * (load(r + i) - m);
        }
        double rg = 0, rgx = 0;
        for (int l = 0; l < W; ++l) rg += lg[l], rgx += lgx[l];
        for (; i < I; ++i) rg += double(g[i]), rgx += double(g[i]) * (double(r[i]) - double(m));
        sum_g += rg;
        sum_gx += rgx;
      }
      const double is = double(invstd[c]), wc = w ? double(w[c]) : 1.0;
      db[c] = static_cast<T>(sum_g);
      dw[c] = static_cast<T>(sum_gx * is);
      const T scale = static_cast<T>(wc * is);
      const T k1 = static_cast<T>(s.training ? sum_g / double(M) : 0.0);
      const T k2 = static_cast<T>(s.training ? sum_gx * is * is / double(M) : 0.0);
      for (int64_t n = 0; n < s.n; ++n) {
        const T* g = dy + (n * C + c) * I;
        const T* r = x + (n * C + c) * I;
        T* o = dx + (n * C + c) * I;
        int64_t i = 0;
        for (; i + W <= I; i += W) {
          const V v = (load(g + i) - k1 - (load(r + i) - m) * k2) * scale;
          std::memcpy(o + i, &v, sizeof(V));
        }
        for (; i < I; ++i) o[i] = (g[i] - k1 - (r[i] - m) * k2) * scale;
      }
    }
  });
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_cpu(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double eps) {
  const BatchNormShape s = check_batch_norm(input, weight, bias, running_mean, running_var, training, eps);
  return in_float32(
      [&](const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
          const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var) {
        const at::Tensor x = input.contiguous();
        const auto w = contiguous_or_none(weight), b = contiguous_or_none(bias), rm = contiguous_or_none(running_mean),
                   rv = contiguous_or_none(running_var);
        at::Tensor y = cpu::empty(x.sizes(), x.options());
        at::Tensor mean = at::empty({s.c}, x.options()), invstd = at::empty({s.c}, x.options()),
                   var = at::empty({s.c}, x.options());
        if (s.c == 0) return std::make_tuple(y, mean, invstd, var);
        if (x.numel() == 0 && s.training) {  // no values: statistics undefined, nothing to normalise
          mean.fill_(std::numeric_limits<double>::quiet_NaN());
          invstd.fill_(std::numeric_limits<double>::quiet_NaN());
          var.fill_(std::numeric_limits<double>::quiet_NaN());
          return std::make_tuple(y, mean, invstd, var);
        }
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_batch_norm", [&] {
          bn_forward<scalar_t>(s, x.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(w), ptr_or_null<scalar_t>(b),
                               ptr_or_null<scalar_t>(rm), ptr_or_null<scalar_t>(rv), y.mutable_data_ptr<scalar_t>(),
                               mean.mutable_data_ptr<scalar_t>(), invstd.mutable_data_ptr<scalar_t>(),
                               var.mutable_data_ptr<scalar_t>());
        });
        return std::make_tuple(y, mean, invstd, var);
      },
      input, weight, bias, running_mean, running_var);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cpu(const at::Tensor& grad_output,
                                                                       const at::Tensor& input,
                                                                       const std::optional<at::Tensor>& weight,
                                                                       const at::Tensor& mean, const at::Tensor& invstd,
                                                                       bool training) {
  const BatchNormShape s = check_batch_norm_backward(grad_output, input, weight, mean, invstd, training);
  return in_float32(
      [&](const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
          const at::Tensor& mean, const at::Tensor& invstd) {
        const at::Tensor dy = grad_output.contiguous(), x = input.contiguous(), mu = mean.contiguous(),
                         is = invstd.contiguous();
        const auto w = contiguous_or_none(weight);
        at::Tensor dx = cpu::empty(x.sizes(), x.options());
        at::Tensor dw = at::zeros({s.c}, x.options()), db = at::zeros({s.c}, x.options());
        if (x.numel() == 0) return std::make_tuple(dx, dw, db);
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_batch_norm_backward", [&] {
          bn_backward<scalar_t>(s, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(w),
                                mu.const_data_ptr<scalar_t>(), is.const_data_ptr<scalar_t>(),
                                dx.mutable_data_ptr<scalar_t>(), dw.mutable_data_ptr<scalar_t>(),
                                db.mutable_data_ptr<scalar_t>());
        });
        return std::make_tuple(dx, dw, db);
      },
      grad_output, input, weight, mean, invstd);
}

void batch_norm_update_stats_cpu(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
                                 const at::Tensor& var, double momentum) {
  const int64_t C = check_batch_norm_update_stats(running_mean, running_var, mean, var, momentum);
  const at::Tensor m = mean.contiguous(), v = var.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(), "fastconv_bn_update", [&] {
    scalar_t* rm = running_mean.mutable_data_ptr<scalar_t>();
    scalar_t* rv = running_var.mutable_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      rm[c] = static_cast<scalar_t>((1.0 - momentum) * double(rm[c]) + momentum * double(mp[c]));
      rv[c] = static_cast<scalar_t>((1.0 - momentum) * double(rv[c]) + momentum * double(vp[c]));
    }
  });
}

}  // namespace

// Under fastconv.simulate() these ops run their CUDA kernels in the simulator (csrc/sim/sim.h).
TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("batch_norm", &sim::Routed<batch_norm_cpu, sim::batch_norm>::call);
  m.impl("batch_norm_backward", &sim::Routed<batch_norm_backward_cpu, sim::batch_norm_backward>::call);
  m.impl("batch_norm_update_stats", &sim::Routed<batch_norm_update_stats_cpu, sim::batch_norm_update_stats>::call);
}

}  // namespace fastconv::cpu
