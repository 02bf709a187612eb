// local_response_norm.cu: local response normalization across channels and its backward on the GPU,
// with the CPU kernel's formulas (csrc/cpu/local_response_norm.cpp).
//
// Kernels (one thread per element (n, c, i), grid-stride; consecutive threads take consecutive spatial
// positions i, so every load of a channel row is coalesced):
//   lrn_forward_kernel<T>   scale = k + alpha * (sum of the window's squares, in channel order) / size,
//       y = x * scale^-beta. Cost: `size` loads per element (the neighbouring channels' rows hit in L2).
//   lrn_backward_kernel<T>  dx[j] = dy[j] scale[j]^-beta - (2 alpha beta / size) x[j] * sum over the
//       channels c whose window holds j of dy[c] y[c] / scale[c]. Cost: 3 `size` + 3 loads per element.
// Sums are in acc_t<T> in channel order: the same result whatever the schedule.
#include "cuda/common.cuh"

namespace fastconv::FC_NS::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

// a^b in the computation type: powf for float (as the CPU kernel's std::pow on floats), pow for double
__device__ __forceinline__ float lrn_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double lrn_pow(double a, double b) { return pow(a, b); }

template <typename T>
__global__ void lrn_forward_kernel(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ scale, LrnShape g) {
  using A = acc_t<T>;
  const int64_t total = g.n * g.c * g.inner;
  const int64_t lo_off = g.size / 2, hi_off = (g.size - 1) / 2;
  for (const int64_t e : grid_stride(total)) {
    const int64_t i = e % g.inner, rest = e / g.inner;
    const int64_t c = rest % g.c, n = rest / g.c;
    const int64_t c_lo = c - lo_off < 0 ? 0 : c - lo_off, c_hi = c + hi_off < g.c - 1 ? c + hi_off : g.c - 1;
    const T* xn = x + n * g.c * g.inner + i;
    A sum = A(0);
    for (int64_t cc = c_lo; cc <= c_hi; ++cc) {
      const A v = to_acc(xn[cc * g.inner]);
      sum += v * v;
    }
    const A sc = sum / static_cast<A>(g.size) * static_cast<A>(g.alpha) + static_cast<A>(g.k);
    scale[e] = from_acc<T>(sc);
    y[e] = from_acc<T>(to_acc(x[e]) / lrn_pow(sc, static_cast<A>(g.beta)));
  }
}

template <typename T>
__global__ void lrn_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                                    const T* __restrict__ scale, T* __restrict__ dx, LrnShape g) {
  using A = acc_t<T>;
  const int64_t total = g.n * g.c * g.inner;
  const int64_t lo_off = g.size / 2, hi_off = (g.size - 1) / 2;
  const A factor = static_cast<A>(2.0 * g.alpha * g.beta / static_cast<double>(g.size));
  for (const int64_t e : grid_stride(total)) {
    const int64_t i = e % g.inner, rest = e / g.inner;
    const int64_t j = rest % g.c, n = rest / g.c;
    const int64_t c_lo = j - hi_off < 0 ? 0 : j - hi_off, c_hi = j + lo_off < g.c - 1 ? j + lo_off : g.c - 1;
    const int64_t base = n * g.c * g.inner + i;
    A sum = A(0);
    for (int64_t c = c_lo; c <= c_hi; ++c) {
      const int64_t o = base + c * g.inner;
      sum += to_acc(dy[o]) * to_acc(y[o]) / to_acc(scale[o]);
    }
    dx[e] = from_acc<T>(to_acc(dy[e]) / lrn_pow(to_acc(scale[e]), static_cast<A>(g.beta)) - factor * to_acc(x[e]) * sum);
  }
}

}  // namespace

int lrn_forward(DType dtype, const void* x, void* y, void* scale, const LrnShape& g, Stream stream) {
  const int64_t total = g.n * g.c * g.inner;
  if (total == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    err = launch(lrn_forward_kernel<T>, grid_1d(total, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(x), static_cast<T*>(y), static_cast<T*>(scale), g);
  });
  return err;
}

int lrn_backward(DType dtype, const void* dy, const void* x, const void* y, const void* scale, void* dx,
                 const LrnShape& g, Stream stream) {
  const int64_t total = g.n * g.c * g.inner;
  if (total == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    err = launch(lrn_backward_kernel<T>, grid_1d(total, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(y),
                 static_cast<const T*>(scale), static_cast<T*>(dx), g);
  });
  return err;
}

}  // namespace fastconv::FC_NS::kernels
