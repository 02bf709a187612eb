// max_pool2d.cu: 2-D max pooling with indices, and its deterministic backward, on the GPU.
//
// Kernels:
//   max_pool2d_forward_kernel<T>   one thread per output element (n, c, oh, ow), grid-stride. It
//       scans its window clipped to the input exactly as the CPU kernel (csrc/cpu/max_pool2d.cpp,
//       pool_one) and keeps the first maximum, or the last NaN; the index is the flat position
//       ih * W + iw in the input plane. Cost: kh * kw comparisons and loads per output (the loads
//       of neighbouring windows overlap and hit in L1/L2), sizeof(T) + 8 bytes written per output.
//   max_pool2d_gather_kernel<T>    one thread per input element (n, c, ih, iw), grid-stride. It
//       visits the outputs whose window covers it in increasing (oh, ow) order and sums, in
//       acc_t<T> from 0, the gradients of those whose index chose it, then writes dx once. That is
//       the order in which the CPU kernel adds outputs into dx, so float and double results are
//       bitwise the CPU's; there are no float atomics and no separate zeroing pass. Cost: kh * kw
//       candidate windows per input, each an 8-byte index load (and a gradient load when chosen);
//       sizeof(T) bytes written per input. An index outside the plane matches no input element, so
//       the gather reads nothing out of bounds whatever the indices hold.
//   max_pool2d_check_kernel<T>     one thread per output, after the gather: an index outside
//       [0, H * W) is recorded in the error record (the first error wins, csrc/cuda/error_record.cuh)
//       and its plane of dx, which misses that output's gradient, is overwritten with NaN (by the
//       thread that found it; threads of one plane write the same NaN). 8 bytes read per output.
// Layouts: NCHW, or channels_last (NHWC: x, y, indices, dy and dx all NHWC-contiguous, the indices
// still flat positions ih * W + iw in the plane). A thread's element is the next one in memory order
// either way -- (n, c, oh, ow) or (n, oh, ow, c) -- so a warp's loads and stores stay coalesced; a
// plane's pixels are then 1 or C elements apart.
#include "cuda/common.cuh"
#include "cuda/error_record.cuh"

namespace fastconv::FC_NS::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

// One thread per output element (n, c, oh, ow), grid-stride.
template <typename T>
__global__ void max_pool2d_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t* __restrict__ indices,
                                          PoolShape g, bool nhwc) {
  using A = acc_t<T>;
  const int64_t total = g.n * g.c * g.oh * g.ow;
  for (const int64_t o : grid_stride(total)) {
    const PlanePos out = plane_pos(o, g.c, g.oh, g.ow, nhwc);
    const int64_t oh = out.row, ow = out.col;
    int64_t h0 = oh * g.sh - g.ph;
    const int64_t h1 = h0 + (g.kh - 1) * g.dh + 1 < g.h ? h0 + (g.kh - 1) * g.dh + 1 : g.h;
    if (h0 < 0) h0 += ceil_div(-h0, g.dh) * g.dh;
    int64_t w0 = ow * g.sw - g.pw;
    const int64_t w1 = w0 + (g.kw - 1) * g.dw + 1 < g.w ? w0 + (g.kw - 1) * g.dw + 1 : g.w;
    if (w0 < 0) w0 += ceil_div(-w0, g.dw) * g.dw;
    // the input plane of the same (n, c), its pixels out.pitch apart
    const T* __restrict__ xp = x + out.base_of(g.h * g.w);
    A best = -INFINITY;
    int64_t best_i = h0 * g.w + w0;
    for (int64_t ih = h0; ih < h1; ih += g.dh)
      for (int64_t iw = w0; iw < w1; iw += g.dw) {
        const A v = to_acc(xp[(ih * g.w + iw) * out.pitch]);
        const bool take = v > best || v != v;  // the first maximum, or the last NaN
        best = take ? v : best;
        best_i = take ? ih * g.w + iw : best_i;
      }
    y[o] = from_acc<T>(best);
    indices[o] = best_i;
  }
}

// One thread per input element (n, c, ih, iw), grid-stride.
template <typename T>
__global__ void max_pool2d_gather_kernel(const T* __restrict__ dy, const int64_t* __restrict__ indices,
                                         T* __restrict__ dx, PoolShape g, bool nhwc) {
  using A = acc_t<T>;
  const int64_t total = g.n * g.c * g.h * g.w;
  for (const int64_t e : grid_stride(total)) {
    const PlanePos in = plane_pos(e, g.c, g.h, g.w, nhwc);
    const int64_t ih = in.row, iw = in.col;
    const int64_t self = ih * g.w + iw;
    const int64_t out_base = in.base_of(g.oh * g.ow);  // the output plane of the same (n, c)
    const int64_t* __restrict__ ip = indices + out_base;
    const T* __restrict__ gp = dy + out_base;
    A sum = A(0);
    // Kernel row j covers ih from output row (ih + ph - j * dh) / sh: j downwards is oh upwards.
    for (int64_t j = g.kh - 1; j >= 0; --j) {
      const int64_t th = ih + g.ph - j * g.dh;
      if (th < 0 || th % g.sh != 0) continue;
      const int64_t oh = th / g.sh;
      if (oh >= g.oh) continue;
      for (int64_t k = g.kw - 1; k >= 0; --k) {
        const int64_t tw = iw + g.pw - k * g.dw;
        if (tw < 0 || tw % g.sw != 0) continue;
        const int64_t ow = tw / g.sw;
        if (ow >= g.ow) continue;
        const int64_t o = (oh * g.ow + ow) * in.pitch;
        if (ip[o] == self) sum += to_acc(gp[o]);
      }
    }
    dx[e] = from_acc<T>(sum);
  }
}

// One thread per output element, grid-stride; runs after the gather, whose dx it overwrites.
template <typename T>
__global__ void max_pool2d_check_kernel(const int64_t* __restrict__ indices, T* __restrict__ dx, PoolShape g,
                                        bool nhwc, ErrorRecord* errors) {
  const int64_t outputs = g.oh * g.ow, plane_size = g.h * g.w;
  for (const int64_t o : grid_stride(g.n * g.c * outputs)) {
    const int64_t i = indices[o];
    if (i >= 0 && i < plane_size) continue;
    // the flat output position in NCHW order, as the CPU kernel names it
    const PlanePos out = plane_pos(o, g.c, g.oh, g.ow, nhwc);
    record_error(errors, DataError::max_pool2d_backward_index, i, (out.plane * g.oh + out.row) * g.ow + out.col,
                 plane_size);
    T* __restrict__ plane = dx + out.base_of(plane_size);
    for (int64_t e = 0; e < plane_size; ++e) plane[e * out.pitch] = from_acc<T>(acc_t<T>(NAN));
  }
}

}  // namespace

int max_pool2d_forward(DType dtype, const void* x, void* y, int64_t* indices, const PoolShape& g, bool channels_last,
                       Stream stream) {
  const int64_t outputs = g.n * g.c * g.oh * g.ow;
  if (outputs == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    err = launch(max_pool2d_forward_kernel<T>, grid_1d(outputs, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(x), static_cast<T*>(y), indices, g, channels_last);
  });
  return err;
}

int max_pool2d_backward(DType dtype, const void* dy, const int64_t* indices, void* dx, const PoolShape& g,
                        bool channels_last, ErrorRecord* errors, Stream stream) {
  const int64_t outputs = g.n * g.c * g.oh * g.ow, inputs = g.n * g.c * g.h * g.w;
  if (inputs == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    err = launch(max_pool2d_gather_kernel<T>, grid_1d(inputs, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(dy), indices, static_cast<T*>(dx), g, channels_last);
    if (err == 0)
      err = launch(max_pool2d_check_kernel<T>, grid_1d(outputs, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                   indices, static_cast<T*>(dx), g, channels_last, errors);
  });
  return err;
}

}  // namespace fastconv::FC_NS::kernels
