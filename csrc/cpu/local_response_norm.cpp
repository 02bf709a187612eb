// local_response_norm.cpp: local response normalization across channels (AlexNet's "contrast
// normalization") and its backward on the CPU.
//
// Forward, with w(c) = [c - size / 2, c + (size - 1) / 2] within [0, C):
//   scale[c] = k + alpha * (sum over c' in w(c) of x[c']^2) / size,  y[c] = x[c] * scale[c]^-beta
// the window's sum formed as torch forms it (the squares in channel order, then / size, * alpha, + k).
// Backward, with W(j) = {c : j in w(c)} = [j - (size - 1) / 2, j + size / 2]:
//   dx[j] = dy[j] * scale[j]^-beta - (2 alpha beta / size) x[j] * sum over c in W(j) of dy[c] y[c] / scale[c]
// Per image, both run channel by channel over whole rows of spatial positions (vectors along the row):
// a row of window sums, then the row of outputs. Each output is computed by one thread in a fixed
// order: results are bitwise the same for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "cpu/gemm.h"
#include "fastconv.h"
#include "sim/sim.h"

namespace fastconv::cpu {
namespace {

constexpr int64_t kChunk = 1024;  // spatial positions per task step: rows of window sums stay in L1

template <typename T>
void lrn_forward(const LrnShape& s, const T* x, T* y, T* scale) {
  const int64_t C = s.c, S = s.inner, chunks = ceil_div(S, kChunk);
  const int64_t lo_off = s.size / 2, hi_off = (s.size - 1) / 2;
  const T alpha = static_cast<T>(s.alpha), beta = static_cast<T>(s.beta), k = static_cast<T>(s.k);
  const T size = static_cast<T>(s.size);
  at::parallel_for(0, s.n * chunks, std::max<int64_t>(1, 64 / std::max<int64_t>(1, C)), [&](int64_t b, int64_t e) {
    std::vector<T> acc(kChunk);
    for (int64_t item = b; item < e; ++item) {
      const int64_t n = item / chunks, s0 = (item % chunks) * kChunk, len = std::min(kChunk, S - s0);
      const T* xn = x + n * C * S + s0;
      for (int64_t c = 0; c < C; ++c) {
        std::fill(acc.begin(), acc.begin() + len, T(0));
        const int64_t c_lo = std::max<int64_t>(0, c - lo_off), c_hi = std::min<int64_t>(C - 1, c + hi_off);
        for (int64_t cc = c_lo; cc <= c_hi; ++cc) {
          const T* row = xn + cc * S;
          for (int64_t i = 0; i < len; ++i) acc[i] += row[i] * row[i];
        }
        const T* xr = xn + c * S;
        T* yr = y + n * C * S + c * S + s0;
        T* sr = scale + n * C * S + c * S + s0;
        for (int64_t i = 0; i < len; ++i) {
          const T sc = acc[i] / size * alpha + k;
          sr[i] = sc;
          yr[i] = xr[i] / std::pow(sc, beta);
        }
      }
    }
  });
}

template <typename T>
void lrn_backward(const LrnShape& s, const T* dy, const T* x, const T* y, const T* scale, T* dx) {
  const int64_t C = s.c, S = s.inner, chunks = ceil_div(S, kChunk);
  const int64_t lo_off = s.size / 2, hi_off = (s.size - 1) / 2;
  const T beta = static_cast<T>(s.beta), factor = static_cast<T>(2.0 * s.alpha * s.beta / double(s.size));
  at::parallel_for(0, s.n * chunks, std::max<int64_t>(1, 64 / std::max<int64_t>(1, C)), [&](int64_t b, int64_t e) {
    std::vector<T> acc(kChunk);
    for (int64_t item = b; item < e; ++item) {
      const int64_t n = item / chunks, s0 = (item % chunks) * kChunk, len = std::min(kChunk, S - s0);
      const int64_t base = n * C * S + s0;
      for (int64_t j = 0; j < C; ++j) {
        std::fill(acc.begin(), acc.begin() + len, T(0));
        // the channels c whose window holds j
        const int64_t c_lo = std::max<int64_t>(0, j - hi_off), c_hi = std::min<int64_t>(C - 1, j + lo_off);
        for (int64_t c = c_lo; c <= c_hi; ++c) {
          const T* g = dy + base + c * S;
          const T* yr = y + base + c * S;
          const T* sr = scale + base + c * S;
          for (int64_t i = 0; i < len; ++i) acc[i] += g[i] * yr[i] / sr[i];
        }
        const T* g = dy + base + j * S;
        const T* xr = x + base + j * S;
        const T* sr = scale + base + j * S;
        T* d = dx + base + j * S;
        for (int64_t i = 0; i < len; ++i) d[i] = g[i] / std::pow(sr[i], beta) - factor * xr[i] * acc[i];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> forward_impl(const LrnShape& s, const at::Tensor& input) {
  const at::Tensor x = input.contiguous();
  at::Tensor y = cpu::empty(x.sizes(), x.options()), scale = cpu::empty(x.sizes(), x.options());
  if (x.numel() == 0) return {y, scale};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_local_response_norm", [&] {
    lrn_forward<scalar_t>(s, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                          scale.mutable_data_ptr<scalar_t>());
  });
  return {y, scale};
}

at::Tensor backward_impl(const LrnShape& s, const at::Tensor& grad_output, const at::Tensor& input,
                         const at::Tensor& output, const at::Tensor& scale) {
  const at::Tensor dy = grad_output.contiguous(), x = input.contiguous(), y = output.contiguous(),
                   sc = scale.contiguous();
  at::Tensor dx = cpu::empty(x.sizes(), x.options());
  if (x.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_local_response_norm_backward", [&] {
    lrn_backward<scalar_t>(s, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                           sc.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>());
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor> local_response_norm_cpu(const at::Tensor& input, int64_t size, double alpha,
                                                           double beta, double k) {
  const LrnShape s = check_local_response_norm(input, size, alpha, beta, k);
  return in_float32([&](const at::Tensor& x) { return forward_impl(s, x); }, input);
}

at::Tensor local_response_norm_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                            const at::Tensor& output, const at::Tensor& scale, int64_t size,
                                            double alpha, double beta) {
  const LrnShape s = check_local_response_norm_backward(grad_output, input, output, scale, size, alpha, beta);
  return in_float32([&](const at::Tensor& g, const at::Tensor& x, const at::Tensor& y,
                        const at::Tensor& sc) { return backward_impl(s, g, x, y, sc); },
                    grad_output, input, output, scale);
}

}  // namespace

// Under fastconv.simulate() these ops run their CUDA kernels in the simulator (csrc/sim/sim.h).
TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("local_response_norm", &sim::Routed<local_response_norm_cpu, sim::local_response_norm>::call);
  m.impl("local_response_norm_backward",
         &sim::Routed<local_response_norm_backward_cpu, sim::local_response_norm_backward>::call);
}

}  // namespace fastconv::cpu
