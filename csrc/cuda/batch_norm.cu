// batch_norm.cu: batch normalization, its backward and the running statistics' update on the GPU,
// with the CPU kernel's formulas (csrc/cpu/batch_norm.cpp).
//
// Kernels:
//   bn_stats_kernel<T>     one block of 256 threads per channel: strided partial sums in double, a fixed
//       tree, the mean; then the centred squares the same way (two passes, for accuracy): mean, invstd
//       and the unbiased variance (or the running statistics when not training).
//   bn_apply_kernel<T>     one thread per element, grid-stride: y = x * scale[c] + shift[c].
//   bn_grad_sums_kernel<T> one block per channel: sum dy and sum dy (x - mean) in one pass (double,
//       fixed tree): dbias and dweight.
//   bn_grad_input_kernel<T> one thread per element: dx from the channel's sums.
//   bn_update_kernel<T>    one thread per channel: running = (1 - momentum) running + momentum batch.
// The reductions' order is fixed by the block's shape: the same result whatever the schedule.
#include "cuda/common.cuh"

namespace fastconv::FC_NS::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

// Thread t's values of channel c: flat positions t, t + kThreads, ... of the channel's N * inner, at
// offset (n * C + c) * inner + r, stepped without divisions after the first.
struct ChannelWalk {
  int64_t n, r, inner, stride_n;
  __device__ ChannelWalk(const BatchNormShape& g, int64_t c) : n(threadIdx.x / g.inner), r(threadIdx.x % g.inner),
                                                              inner(g.inner), stride_n(g.c * g.inner) {
    base = c * g.inner;
  }
  int64_t base;
  __device__ bool more(int64_t N) const { return n < N; }
  __device__ int64_t offset() const { return n * stride_n + base + r; }
  __device__ void next() {
    r += kThreads;
    while (r >= inner) r -= inner, ++n;
  }
};

// the block's sum of v (every thread's value), by a fixed tree; every thread gets it
__device__ __forceinline__ double block_sum(double v, double* partial) {
  const int t = threadIdx.x;
  partial[t] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (t < half) partial[t] += partial[t + half];
    __syncthreads();
  }
  const double total = partial[0];
  __syncthreads();  // partial is reused by the next call
  return total;
}

template <typename T>
__global__ void bn_stats_kernel(const T* __restrict__ x, const T* __restrict__ rm,
                                                           const T* __restrict__ rv, T* __restrict__ mean,
                                                           T* __restrict__ invstd, T* __restrict__ var_out,
                                                           BatchNormShape g) {
  __shared__ double partial[kThreads];
  const int64_t c = blockIdx.x, M = g.count();
  double mu, var;
  if (g.training) {
    double sum = 0;
    for (ChannelWalk it(g, c); it.more(g.n); it.next()) sum += static_cast<double>(to_acc(x[it.offset()]));
    mu = block_sum(sum, partial) / static_cast<double>(M);
    double sq = 0;
    for (ChannelWalk it(g, c); it.more(g.n); it.next()) {
      const double d = static_cast<double>(to_acc(x[it.offset()])) - mu;
      sq += d * d;
    }
    sq = block_sum(sq, partial);
    var = sq / static_cast<double>(M);
    // (the unbiased variance: the check guarantees M > 1 when training)
    if (threadIdx.x == 0) var_out[c] = from_acc<T>(static_cast<acc_t<T>>(sq / static_cast<double>(M - 1)));
  } else {
    mu = static_cast<double>(to_acc(rm[c]));
    var = static_cast<double>(to_acc(rv[c]));
    if (threadIdx.x == 0) var_out[c] = rv[c];
  }
  if (threadIdx.x == 0) {
    mean[c] = from_acc<T>(static_cast<acc_t<T>>(mu));
    invstd[c] = from_acc<T>(static_cast<acc_t<T>>(1.0 / sqrt(var + g.eps)));
  }
}

template <typename T>
__global__ void bn_apply_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                const T* __restrict__ mean, const T* __restrict__ invstd, T* __restrict__ y,
                                BatchNormShape g) {
  using A = acc_t<T>;
  const int64_t total = g.n * g.c * g.inner;
  for (const int64_t e : grid_stride(total)) {
    const int64_t c = (e / g.inner) % g.c;
    const A sc = to_acc(invstd[c]) * (w ? to_acc(w[c]) : A(1));
    const A shift = (b ? to_acc(b[c]) : A(0)) - to_acc(mean[c]) * sc;
    y[e] = from_acc<T>(to_acc(x[e]) * sc + shift);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bn_grad_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                               const T* __restrict__ mean, const T* __restrict__ invstd,
                                                               T* __restrict__ dw, T* __restrict__ db,
                                                               BatchNormShape g) {
  __shared__ double partial[kThreads];
  const int64_t c = blockIdx.x;
  const double mu = static_cast<double>(to_acc(mean[c]));
  double sg = 0, sgx = 0;
  for (ChannelWalk it(g, c); it.more(g.n); it.next()) {
    const int64_t o = it.offset();
    const double gv = static_cast<double>(to_acc(dy[o]));
    sg += gv;
    sgx += gv * (static_cast<double>(to_acc(x[o])) - mu);
  }
  sg = block_sum(sg, partial);
  sgx = block_sum(sgx, partial);
  if (threadIdx.x == 0) {
    db[c] = from_acc<T>(static_cast<acc_t<T>>(sg));
    dw[c] = from_acc<T>(static_cast<acc_t<T>>(sgx * static_cast<double>(to_acc(invstd[c]))));
  }
}

template <typename T>
__global__ void bn_grad_input_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                     const T* __restrict__ mean, const T* __restrict__ invstd,
                                     const T* __restrict__ dw, const T* __restrict__ db, T* __restrict__ dx,
                                     BatchNormShape g) {
  using A = acc_t<T>;
  const int64_t total = g.n * g.c * g.inner;
  const A inv_m = A(1) / static_cast<A>(g.count());
  for (const int64_t e : grid_stride(total)) {
    const int64_t c = (e / g.inner) % g.c;
    const A is = to_acc(invstd[c]), scale = (w ? to_acc(w[c]) : A(1)) * is;
    // dweight = sum_gx * invstd, so sum_gx * invstd^2 / M = dweight * invstd / M
    const A k1 = g.training ? to_acc(db[c]) * inv_m : A(0), k2 = g.training ? to_acc(dw[c]) * is * inv_m : A(0);
    dx[e] = from_acc<T>((to_acc(dy[e]) - k1 - (to_acc(x[e]) - to_acc(mean[c])) * k2) * scale);
  }
}

template <typename T>
__global__ void bn_update_kernel(T* __restrict__ rm, T* __restrict__ rv, const T* __restrict__ mean,
                                 const T* __restrict__ var, int64_t channels, double momentum) {
  for (const int64_t c : grid_stride(channels)) {
    rm[c] = from_acc<T>(static_cast<acc_t<T>>((1.0 - momentum) * static_cast<double>(to_acc(rm[c])) +
                                              momentum * static_cast<double>(to_acc(mean[c]))));
    rv[c] = from_acc<T>(static_cast<acc_t<T>>((1.0 - momentum) * static_cast<double>(to_acc(rv[c])) +
                                              momentum * static_cast<double>(to_acc(var[c]))));
  }
}

}  // namespace

int batch_norm_forward(DType dtype, const void* x, const void* w, const void* b, const void* rm, const void* rv,
                       void* y, void* mean, void* invstd, void* var, const BatchNormShape& g, Stream stream) {
  if (g.c == 0 || (g.training && g.count() == 0)) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    err = launch(bn_stats_kernel<T>, dim3(static_cast<unsigned>(g.c)), dim3(kThreads), 0, stream,
                 static_cast<const T*>(x), static_cast<const T*>(rm), static_cast<const T*>(rv), static_cast<T*>(mean),
                 static_cast<T*>(invstd), static_cast<T*>(var), g);
    const int64_t total = g.n * g.c * g.inner;
    if (err == 0 && total > 0)
      err = launch(bn_apply_kernel<T>, grid_1d(total, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                   static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b),
                   static_cast<const T*>(mean), static_cast<const T*>(invstd), static_cast<T*>(y), g);
  });
  return err;
}

int batch_norm_backward(DType dtype, const void* dy, const void* x, const void* w, const void* mean,
                        const void* invstd, void* dx, void* dw, void* db, const BatchNormShape& g, Stream stream) {
  const int64_t total = g.n * g.c * g.inner;
  if (total == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    err = launch(bn_grad_sums_kernel<T>, dim3(static_cast<unsigned>(g.c)), dim3(kThreads), 0, stream,
                 static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(mean),
                 static_cast<const T*>(invstd), static_cast<T*>(dw), static_cast<T*>(db), g);
    if (err == 0)
      err = launch(bn_grad_input_kernel<T>, grid_1d(total, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                   static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(w),
                   static_cast<const T*>(mean), static_cast<const T*>(invstd), static_cast<const T*>(dw),
                   static_cast<const T*>(db), static_cast<T*>(dx), g);
  });
  return err;
}

int batch_norm_update_stats(DType dtype, void* rm, void* rv, const void* mean, const void* var, int64_t channels,
                            double momentum, Stream stream) {
  if (channels == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    err = launch(bn_update_kernel<T>, grid_1d(channels, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<T*>(rm), static_cast<T*>(rv), static_cast<const T*>(mean), static_cast<const T*>(var),
                 channels, momentum);
  });
  return err;
}

}  // namespace fastconv::FC_NS::kernels
