// avg_pool2d.cu: average pooling (avg_pool2d, adaptive_avg_pool2d) and its backward on the GPU.
//
// Windows and divisors come from avg_pool_range (csrc/shapes.h), the formula the CPU kernel uses.
// Kernels:
//   avg_pool2d_forward_kernel<T>   one thread per output element (n, c, oh, ow), grid-stride: the sum
//       of its window in acc_t<T>, row by row, over its divisor. Cost: kh * kw loads per output (the
//       loads of neighbouring windows overlap and hit in L1/L2), sizeof(T) bytes written.
//   avg_pool2d_gather_kernel<T>    one thread per input element (n, c, ih, iw), grid-stride: it visits
//       the outputs whose window covers it (candidates from avg_pool_cover, each checked against its
//       range) in increasing (oh, ow) order and sums their gradient over their divisor, then writes dx
//       once: no atomics, no zeroing pass, the same result whatever the schedule.
// Both take NCHW or channels_last (NHWC) tensors, a thread's element the next in memory order either
// way (PlanePos, common.cuh), so loads and stores stay coalesced and no layout copy is made.
#include "cuda/common.cuh"

namespace fastconv::FC_NS::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

__device__ __forceinline__ PoolRange row_range(const AvgPoolShape& g, int64_t oh) {
  return avg_pool_range(oh, g.h, g.oh, g.kh, g.sh, g.ph, g.adaptive, g.count_include_pad);
}
__device__ __forceinline__ PoolRange col_range(const AvgPoolShape& g, int64_t ow) {
  return avg_pool_range(ow, g.w, g.ow, g.kw, g.sw, g.pw, g.adaptive, g.count_include_pad);
}
template <typename A>
__device__ __forceinline__ A divisor(const AvgPoolShape& g, const PoolRange& r, const PoolRange& c) {
  return static_cast<A>(g.divisor_override ? g.divisor_override : r.size * c.size);
}

// One thread per output element (n, c, oh, ow), grid-stride.
template <typename T>
__global__ void avg_pool2d_forward_kernel(const T* __restrict__ x, T* __restrict__ y, AvgPoolShape g, bool nhwc) {
  using A = acc_t<T>;
  const int64_t total = g.n * g.c * g.oh * g.ow;
  for (const int64_t o : grid_stride(total)) {
    const PlanePos out = plane_pos(o, g.c, g.oh, g.ow, nhwc);
    const PoolRange r = row_range(g, out.row), c = col_range(g, out.col);
    const T* xp = x + out.base_of(g.h * g.w);
    A sum = A(0);
    for (int64_t ih = r.lo; ih < r.hi; ++ih)
      for (int64_t iw = c.lo; iw < c.hi; ++iw) sum += to_acc(xp[(ih * g.w + iw) * out.pitch]);
    y[o] = from_acc<T>(sum / divisor<A>(g, r, c));
  }
}

// One thread per input element (n, c, ih, iw), grid-stride.
template <typename T>
__global__ void avg_pool2d_gather_kernel(const T* __restrict__ dy, T* __restrict__ dx, AvgPoolShape g, bool nhwc) {
  using A = acc_t<T>;
  const int64_t total = g.n * g.c * g.h * g.w;
  for (const int64_t e : grid_stride(total)) {
    const PlanePos in = plane_pos(e, g.c, g.h, g.w, nhwc);
    const int64_t ih = in.row, iw = in.col;
    const PoolRange rows = avg_pool_cover(ih, g.h, g.oh, g.kh, g.sh, g.ph, g.adaptive);
    const PoolRange cols = avg_pool_cover(iw, g.w, g.ow, g.kw, g.sw, g.pw, g.adaptive);
    const T* gp = dy + in.base_of(g.oh * g.ow);
    A sum = A(0);
    for (int64_t oh = rows.lo; oh <= rows.hi; ++oh) {
      const PoolRange r = row_range(g, oh);
      if (ih < r.lo || ih >= r.hi) continue;
      for (int64_t ow = cols.lo; ow <= cols.hi; ++ow) {
        const PoolRange c = col_range(g, ow);
        if (iw < c.lo || iw >= c.hi) continue;
        sum += to_acc(gp[(oh * g.ow + ow) * in.pitch]) / divisor<A>(g, r, c);
      }
    }
    dx[e] = from_acc<T>(sum);
  }
}

}  // namespace

int avg_pool2d_forward(DType dtype, const void* x, void* y, const AvgPoolShape& g, bool channels_last,
                       Stream stream) {
  const int64_t outputs = g.n * g.c * g.oh * g.ow;
  if (outputs == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    err = launch(avg_pool2d_forward_kernel<T>, grid_1d(outputs, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(x), static_cast<T*>(y), g, channels_last);
  });
  return err;
}

int avg_pool2d_backward(DType dtype, const void* dy, void* dx, const AvgPoolShape& g, bool channels_last,
                        Stream stream) {
  const int64_t inputs = g.n * g.c * g.h * g.w;
  if (inputs == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    err = launch(avg_pool2d_gather_kernel<T>, grid_1d(inputs, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(dy), static_cast<T*>(dx), g, channels_last);
  });
  return err;
}

}  // namespace fastconv::FC_NS::kernels
