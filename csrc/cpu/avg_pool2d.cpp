// avg_pool2d.cpp: average pooling (avg_pool2d, adaptive_avg_pool2d) and its backward on the CPU.
//
// Both ops are one computation: output (oh, ow) of a plane is the sum of input rows [r.lo, r.hi) and
// columns [c.lo, c.hi) over r.size * c.size (or divisor_override), with r = avg_pool_range(oh, ...) and
// c = avg_pool_range(ow, ...) (csrc/shapes.h): the windows are separable. The ranges are computed once
// per call. Forward, per output row: the window's input rows are added into a row of column sums
// (whole vectors along the row), then each output sums its columns of that row. A global average
// (an adaptive 1 x 1 output) is a plane sum in vector lanes, and its backward a fill. Backward, per output row: each output's gradient over its
// divisor is added into a row of column contributions, which is then added into the window's input
// rows. Work is split over planes, each owned by one thread and done in a fixed order: results are
// bitwise the same for any thread count. Sums are in the computation type (float for float32 and the
// 16-bit types, double for float64), as torch's CPU kernels do.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "cpu/gemm.h"
#include "fastconv.h"
#include "sim/sim.h"

namespace fastconv::cpu {
namespace {

struct Ranges {
  std::vector<PoolRange> rows, cols;
};

Ranges ranges_of(const AvgPoolShape& s) {
  Ranges r;
  for (int64_t o = 0; o < s.oh; ++o)
    r.rows.push_back(avg_pool_range(o, s.h, s.oh, s.kh, s.sh, s.ph, s.adaptive, s.count_include_pad));
  for (int64_t o = 0; o < s.ow; ++o)
    r.cols.push_back(avg_pool_range(o, s.w, s.ow, s.kw, s.sw, s.pw, s.adaptive, s.count_include_pad));
  return r;
}

template <typename T>
T divisor_of(const AvgPoolShape& s, const PoolRange& r, const PoolRange& c) {
  return static_cast<T>(s.divisor_override ? s.divisor_override : r.size * c.size);
}

// acc[0..n) += src[0..n), whole vectors then one by one
template <typename T>
inline void add_row(T* __restrict__ acc, const T* __restrict__ src, int64_t n) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    V a, b;
    std::memcpy(&a, acc + i, sizeof(V));
    std::memcpy(&b, src + i, sizeof(V));
    a += b;
    std::memcpy(acc + i, &a, sizeof(V));
  }
  for (; i < n; ++i) acc[i] += src[i];
}

template <typename T>
void avg_pool_forward(const AvgPoolShape& s, const T* x, T* y) {
  const Ranges rg = ranges_of(s);
  const int64_t H = s.h, W = s.w, OH = s.oh, OW = s.ow, HW = H * W;
  const bool global = s.adaptive && OH == 1 && OW == 1;
  at::parallel_for(0, s.n * s.c, std::max<int64_t>(1, 32768 / HW), [&](int64_t b, int64_t e) {
    std::vector<T> colsum(W);
    for (int64_t plane = b; plane < e; ++plane) {
      const T* xp = x + plane * HW;
      T* yp = y + plane * OH * OW;
      if (global) {  // the plane as one run: W lanes of partial sums, then the lanes in order
        using V = typename Tile<T>::V;
        constexpr int L = Tile<T>::W;
        V lanes{};
        int64_t i = 0;
        for (; i + L <= HW; i += L) {
          V v;
          std::memcpy(&v, xp + i, sizeof(V));
          lanes += v;
        }
        T sum = 0;
        for (int l = 0; l < L; ++l) sum += lanes[l];
        for (; i < HW; ++i) sum += xp[i];
        yp[0] = sum / divisor_of<T>(s, rg.rows[0], rg.cols[0]);
        continue;
      }
      for (int64_t oh = 0; oh < OH; ++oh) {
        const PoolRange& r = rg.rows[oh];
        std::memset(colsum.data(), 0, sizeof(T) * W);
        for (int64_t ih = r.lo; ih < r.hi; ++ih) add_row(colsum.data(), xp + ih * W, W);
        for (int64_t ow = 0; ow < OW; ++ow) {
          const PoolRange& c = rg.cols[ow];
          T sum = 0;
          for (int64_t iw = c.lo; iw < c.hi; ++iw) sum += colsum[iw];
          yp[oh * OW + ow] = sum / divisor_of<T>(s, r, c);
        }
      }
    }
  });
}

template <typename T>
void avg_pool_backward(const AvgPoolShape& s, const T* dy, T* dx) {
  const Ranges rg = ranges_of(s);
  const int64_t H = s.h, W = s.w, OH = s.oh, OW = s.ow, HW = H * W;
  at::parallel_for(0, s.n * s.c, std::max<int64_t>(1, 32768 / HW), [&](int64_t b, int64_t e) {
    std::vector<T> contrib(W);
    for (int64_t plane = b; plane < e; ++plane) {
      const T* gp = dy + plane * OH * OW;
      T* dp = dx + plane * HW;
      if (s.adaptive && OH == 1 && OW == 1) {  // a global average: every input gets the same share
        const T share = gp[0] / divisor_of<T>(s, rg.rows[0], rg.cols[0]);
        for (int64_t i = 0; i < HW; ++i) dp[i] = share;
        continue;
      }
      std::memset(dp, 0, sizeof(T) * HW);
      for (int64_t oh = 0; oh < OH; ++oh) {
        const PoolRange& r = rg.rows[oh];
        std::memset(contrib.data(), 0, sizeof(T) * W);
        for (int64_t ow = 0; ow < OW; ++ow) {
          const PoolRange& c = rg.cols[ow];
          const T g = gp[oh * OW + ow] / divisor_of<T>(s, r, c);
          for (int64_t iw = c.lo; iw < c.hi; ++iw) contrib[iw] += g;
        }
        for (int64_t ih = r.lo; ih < r.hi; ++ih) add_row(dp + ih * W, contrib.data(), W);
      }
    }
  });
}

at::Tensor forward_impl(const AvgPoolShape& s, const at::Tensor& input) {
  const at::Tensor x = input.contiguous();
  at::Tensor y = cpu::empty({s.n, s.c, s.oh, s.ow}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_avg_pool2d", [&] {
    avg_pool_forward<scalar_t>(s, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

at::Tensor backward_impl(const AvgPoolShape& s, const at::Tensor& grad_output) {
  const at::Tensor dy = grad_output.contiguous();
  at::Tensor dx = cpu::empty({s.n, s.c, s.h, s.w}, dy.options());
  if (dx.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_avg_pool2d_backward", [&] {
    avg_pool_backward<scalar_t>(s, dy.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>());
  });
  return dx;
}

at::Tensor avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, bool ceil_mode, bool count_include_pad, int64_t divisor_override) {
  const AvgPoolShape s = check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                          divisor_override);
  return in_float32([&](const at::Tensor& x) { return forward_impl(s, x); }, input);
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   bool ceil_mode, bool count_include_pad, int64_t divisor_override) {
  const AvgPoolShape s = check_avg_pool2d(grad_output, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                          divisor_override, "avg_pool2d_backward", input_size);
  return in_float32([&](const at::Tensor& g) { return backward_impl(s, g); }, grad_output);
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef output_size) {
  const AvgPoolShape s = check_adaptive_avg_pool2d(input, output_size);
  return in_float32([&](const at::Tensor& x) { return forward_impl(s, x); }, input);
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  const AvgPoolShape s = check_adaptive_avg_pool2d(grad_output, {}, "adaptive_avg_pool2d_backward", input_size);
  return in_float32([&](const at::Tensor& g) { return backward_impl(s, g); }, grad_output);
}

}  // namespace

// Under fastconv.simulate() these ops run their CUDA kernels in the simulator (csrc/sim/sim.h).
TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("avg_pool2d", &sim::Routed<avg_pool2d_cpu, sim::avg_pool2d>::call);
  m.impl("avg_pool2d_backward", &sim::Routed<avg_pool2d_backward_cpu, sim::avg_pool2d_backward>::call);
  m.impl("adaptive_avg_pool2d", &sim::Routed<adaptive_avg_pool2d_cpu, sim::adaptive_avg_pool2d>::call);
  m.impl("adaptive_avg_pool2d_backward",
         &sim::Routed<adaptive_avg_pool2d_backward_cpu, sim::adaptive_avg_pool2d_backward>::call);
}

}  // namespace fastconv::cpu
