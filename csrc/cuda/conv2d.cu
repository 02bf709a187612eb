// conv2d.cu: 2-D convolution forward and backward on the GPU, as implicit GEMMs on the engine of
// gemm.cuh (64 x 64 block tiles, double-buffered shared memory; CUDA cores with 4 x 4 register tiles
// for float32 / float64, tensor cores for float16 / bfloat16 and tf32), one GEMM per group, every
// stride / padding / dilation / groups (depthwise too). Per group g:
//   forward      M = N*OH*OW (output pixels), N = C_out/g, K = C_in/g*KH*KW:
//                A(m, k) = x at the input pixel that kernel tap k of output pixel m reads (0 in the
//                padding), B(k, n) = w[n][k]; the epilogue adds the bias and applies the ReLU, so a
//                fused Conv2d + ReLU never writes the pre-activation. 2*M*N*K FLOPs.
//   grad input   M = N*H*W (input pixels), N = C_in/g, K = C_out/g*KH*KW: the transposed convolution,
//                A(m, k) = dy at the output pixel whose tap k covers input pixel m (0 where none does:
//                off the stride grid, or outside the output), B(k, n) = w[co][n][kh][kw].
//   grad weight  M = C_out/g, N = C_in/g*KH*KW, K = N*OH*OW: A(m, k) = dy, B(k, n) = the input pixel
//                that tap n of output pixel k reads. K is long, so it is split over blocks (split-K)
//                whose partials are summed in split order by a second kernel: deterministic.
//   bias_grad    one block per channel: each thread sums a strided subset in double, then a fixed
//                tree in shared memory. outer * inner loads per channel.
// No im2col buffer exists: each thread decomposes its own row of A once per block (image and
// output pixel) and its column of B once, then only the reduction index per element, in 32-bit
// arithmetic (64-bit division is a long subroutine on the GPU): the glue refuses GEMMs with M, N or
// K of 2^31 or more. Addresses stay 64-bit.
#include "cuda/gemm.cuh"

namespace fastconv::FC_NS::kernels {
namespace {

template <typename T>
struct ConvForward {
  using Storage = T;
  using A = acc_t<T>;
  const T* x;
  const T* w;
  const T* bias;
  T* y;
  ConvShape s;
  Activation act;
  int64_t M, N, K, groups;

  struct Row {
    const T* image;   // the input channels of group g of this pixel's image
    int64_t ih0, iw0; // input coordinates of tap (0, 0)
  };
  __device__ Row a_row(int64_t g, int64_t m) const {
    const int pixels = int(s.oh * s.ow), img = int(m) / pixels, r = int(m) - img * pixels, oh = r / int(s.ow),
              ow = r - oh * int(s.ow);
    return Row{x + (img * s.c_in + g * (s.c_in / s.groups)) * s.h * s.w, oh * s.sh - s.pt, ow * s.sw - s.pl};
  }
  __device__ T a(const Row& r, int64_t k) const {
    const int taps = int(s.kh * s.kw), ci = int(k) / taps, t = int(k) - ci * taps, kh = t / int(s.kw),
              kw = t - kh * int(s.kw);
    const int64_t ih = r.ih0 + kh * s.dh, iw = r.iw0 + kw * s.dw;
    return ih >= 0 && ih < s.h && iw >= 0 && iw < s.w ? r.image[(ci * s.h + ih) * s.w + iw] : zero<T>();
  }
  __device__ const T* b_col(int64_t g, int64_t n) const { return w + (g * N + n) * K; }
  __device__ T b(const T* filter, int64_t k) const { return filter[k]; }
  // a filter is contiguous along K: 16-byte loads when its rows are aligned
  bool b_vec = false;
  __device__ const T* a_run(const Row&) const { return nullptr; }
  __device__ const T* b_run(const T* filter) const { return b_vec ? filter : nullptr; }
  __device__ void store(int64_t g, int, int64_t m, int64_t n, A v) const {
    const int64_t co = g * N + n;
    const int pixels = int(s.oh * s.ow), img = int(m) / pixels;
    if (bias) v += to_acc(bias[co]);
    // as the relu and leaky_relu kernels compute them: NaN stays NaN, as in the CPU kernel
    if (act.kind == Activation::relu) v = v < A(0) ? A(0) : v;
    else if (act.kind == Activation::leaky_relu) v = v > A(0) ? v : v * A(act.slope);
    y[(img * s.c_out + co) * pixels + (int(m) - img * pixels)] = from_acc<T>(v);
  }
};

template <typename T>
struct ConvGradInput {
  using Storage = T;
  using A = acc_t<T>;
  const T* dy;
  const T* w;
  T* dx;
  ConvShape s;
  int64_t M, N, K, groups;

  struct Row {
    const T* grad;    // the output channels of group g of this pixel's image
    int64_t ih, iw;   // padded input coordinates of the pixel
  };
  __device__ Row a_row(int64_t g, int64_t m) const {
    const int pixels = int(s.h * s.w), img = int(m) / pixels, r = int(m) - img * pixels, ih = r / int(s.w),
              iw = r - ih * int(s.w);
    return Row{dy + (img * s.c_out + g * (s.c_out / s.groups)) * s.oh * s.ow, ih + s.pt, iw + s.pl};
  }
  __device__ T a(const Row& r, int64_t k) const {
    const int taps = int(s.kh * s.kw), co = int(k) / taps, t = int(k) - co * taps, kh = t / int(s.kw),
              kw = t - kh * int(s.kw);
    const int nh = int(r.ih - kh * s.dh), nw = int(r.iw - kw * s.dw);  // oh * sh, ow * sw if a tap lands here
    if (nh < 0 || nw < 0 || nh % int(s.sh) != 0 || nw % int(s.sw) != 0) return zero<T>();
    const int oh = nh / int(s.sh), ow = nw / int(s.sw);
    return oh < s.oh && ow < s.ow ? r.grad[(co * s.oh + oh) * s.ow + ow] : zero<T>();
  }
  // column n = input channel ci of group g: w[g * cout_g + co][ci][kh][kw] for k = (co, kh, kw)
  __device__ const T* b_col(int64_t g, int64_t n) const {
    return w + (g * (s.c_out / s.groups) * N + n) * s.kh * s.kw;
  }
  __device__ T b(const T* filter, int64_t k) const {
    const int taps = int(s.kh * s.kw), co = int(k) / taps;
    return filter[int64_t(co) * N * taps + (int(k) - co * taps)];
  }
  __device__ const T* a_run(const Row&) const { return nullptr; }
  __device__ const T* b_run(const T*) const { return nullptr; }
  __device__ void store(int64_t g, int, int64_t m, int64_t n, A v) const {
    const int pixels = int(s.h * s.w), img = int(m) / pixels;
    dx[(img * s.c_in + g * N + n) * pixels + (int(m) - img * pixels)] = from_acc<T>(v);
  }
};

template <typename T>
struct ConvGradWeight {
  using Storage = T;
  using A = acc_t<T>;
  const T* dy;
  const T* x;
  T* dw;
  A* partial;  // split-K partials [splits][c_out][N] when splits > 1
  ConvShape s;
  int64_t M, N, K, groups, splits;

  // row m = output channel co of group g: dy[img][g * cout_g + co][oh][ow] for k = (img, oh, ow)
  __device__ const T* a_row(int64_t g, int64_t m) const { return dy + (g * M + m) * s.oh * s.ow; }
  __device__ T a(const T* grad, int64_t k) const {
    const int pixels = int(s.oh * s.ow), img = int(k) / pixels;
    return grad[int64_t(img) * s.c_out * pixels + (int(k) - img * pixels)];
  }
  struct Col {
    const T* channel;  // input channel g * cin_g + ci of image 0
    int64_t dh0, dw0;  // input offset of tap (kh, kw) from output pixel (0, 0)
  };
  __device__ Col b_col(int64_t g, int64_t n) const {
    const int taps = int(s.kh * s.kw), ci = int(n) / taps, t = int(n) - ci * taps, kh = t / int(s.kw),
              kw = t - kh * int(s.kw);
    return Col{x + (g * (s.c_in / s.groups) + ci) * s.h * s.w, kh * s.dh - s.pt, kw * s.dw - s.pl};
  }
  __device__ T b(const Col& c, int64_t k) const {
    const int pixels = int(s.oh * s.ow), img = int(k) / pixels, r = int(k) - img * pixels, oh = r / int(s.ow),
              ow = r - oh * int(s.ow);
    const int64_t ih = oh * s.sh + c.dh0, iw = ow * s.sw + c.dw0;
    return ih >= 0 && ih < s.h && iw >= 0 && iw < s.w ? c.channel[int64_t(img) * s.c_in * s.h * s.w + ih * s.w + iw]
                                                      : zero<T>();
  }
  __device__ const T* a_run(const T*) const { return nullptr; }  // contiguous only within an image
  __device__ const T* b_run(const Col&) const { return nullptr; }
  __device__ void store(int64_t g, int split, int64_t m, int64_t n, A v) const {
    const int64_t i = (g * M + m) * N + n;
    if (splits > 1)
      partial[split * s.c_out * N + i] = v;
    else
      dw[i] = from_acc<T>(v);
  }
};

// One block of 256 threads per channel c: strided partial sums in double, then a fixed tree.
template <typename T>
__global__ void __launch_bounds__(256) bias_grad_kernel(const T* __restrict__ dy, T* __restrict__ db, int64_t outer,
                                                         int64_t channels, int64_t inner) {
  __shared__ double partial[256];
  const int64_t c = blockIdx.x, count = outer * inner;
  double sum = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t o = i / inner;
    sum += static_cast<double>(to_acc(dy[(o * channels + c) * inner + (i - o * inner)]));
  }
  const int t = threadIdx.x;
  partial[t] = sum;
  __syncthreads();
  for (int half = 128; half > 0; half /= 2) {
    if (t < half) partial[t] += partial[t + half];
    __syncthreads();
  }
  if (t == 0) db[c] = from_acc<T>(static_cast<acc_t<T>>(partial[0]));
}

}  // namespace

int conv2d_forward(DType dtype, const void* x, const void* w, const void* bias, void* y, const ConvShape& s,
                   Activation act, bool tf32, Stream stream) {
  int err = 0;
  FC_DISPATCH(dtype, T, {
    ConvForward<T> p{static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias),
                     static_cast<T*>(y), s, act, s.n * s.oh * s.ow, s.c_out / s.groups,
                     s.c_in / s.groups * s.kh * s.kw, s.groups};
    p.b_vec = gemm::aligned_rows(p.w, p.K);
    err = gemm::run(p, 1, tf32, stream);
  });
  return err;
}

int conv2d_grad_input(DType dtype, const void* dy, const void* w, void* dx, const ConvShape& s, bool tf32,
                      Stream stream) {
  int err = 0;
  FC_DISPATCH(dtype, T, {
    const ConvGradInput<T> p{static_cast<const T*>(dy), static_cast<const T*>(w), static_cast<T*>(dx), s,
                             s.n * s.h * s.w, s.c_in / s.groups, s.c_out / s.groups * s.kh * s.kw, s.groups};
    err = gemm::run(p, 1, tf32, stream);
  });
  return err;
}

namespace {
struct WeightGemmSize {
  int64_t m, n, k, splits;
};
WeightGemmSize weight_gemm(const ConvShape& s) {
  const int64_t m = s.c_out / s.groups, n = s.c_in / s.groups * s.kh * s.kw, k = s.n * s.oh * s.ow;
  return WeightGemmSize{m, n, k, gemm::splits_for(m, n, k, s.groups)};
}
}  // namespace

int64_t conv2d_grad_weight_workspace_bytes(DType dtype, const ConvShape& s) {
  const WeightGemmSize g = weight_gemm(s);
  return dtype == DType::f64 ? gemm::split_workspace_bytes<double>(g.m, g.n, g.k, s.groups)
                             : gemm::split_workspace_bytes<float>(g.m, g.n, g.k, s.groups);
}

int conv2d_grad_weight(DType dtype, const void* dy, const void* x, void* dw, void* workspace, const ConvShape& s,
                       bool tf32, Stream stream) {
  const WeightGemmSize g = weight_gemm(s);
  int err = 0;
  FC_DISPATCH(dtype, T, {
    using A = acc_t<T>;
    const ConvGradWeight<T> p{static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dw),
                              static_cast<A*>(workspace), s, g.m, g.n, g.k, s.groups, g.splits};
    err = gemm::run(p, g.splits, tf32, stream);
    if (!err) err = gemm::finish_splits(p.partial, p.dw, s.c_out * g.n, g.splits, stream);
  });
  return err;
}

int bias_grad(DType dtype, const void* dy, void* db, const BiasGradShape& s, Stream stream) {
  if (s.channels == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    err = launch(bias_grad_kernel<T>, dim3(static_cast<unsigned>(s.channels)), dim3(256), 0, stream,
                 static_cast<const T*>(dy), static_cast<T*>(db), s.outer, s.channels, s.inner);
  });
  return err;
}

}  // namespace fastconv::FC_NS::kernels
