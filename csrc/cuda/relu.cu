// relu.cu: y = max(x, 0) and its gradient dx = (y <= 0 ? 0 : dy), and LeakyReLU, elementwise on the GPU.
//
// Kernels:
//   relu_forward_kernel<T>         y = (x < 0 ? 0 : x)
//   relu_backward_kernel<T>        dx = (y <= 0 ? 0 : dy)
//   leaky_relu_forward_kernel<T>   y = (x > 0 ? x : x * slope)
//   leaky_relu_backward_kernel<T>  dx = (s > 0 ? dy : dy * slope), s the input (or the result, slope > 0)
// All run the same grid-stride loop (elementwise below). When every pointer is 16-byte aligned,
// each thread moves one 16-byte pack per step (4 floats, 2 doubles or 8 halves / bfloat16s: one
// 128-bit load per input and one 128-bit store), and the n % pack elements of the tail are done one
// by one; otherwise every element is done one by one. The comparison is made in acc_t<T> (exact for
// every storage type) and the kept value is copied bit for bit from the input, so NaN stays NaN
// (comparisons with NaN are false) and -0.0 stays -0.0, as in the CPU kernel (csrc/cpu/relu.cpp).
// Cost: 1 comparison per element; 2 * sizeof(T) bytes per element forward, 3 * sizeof(T) backward.
// Memory-bound: the 128-bit accesses keep few memory instructions in flight per byte, and a
// grid capped at 4096 blocks of 256 threads saturates HBM while each thread does several packs.
#include "cuda/common.cuh"

namespace fastconv::FC_NS::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

// 16 bytes of T, moved as one 128-bit access.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

struct ReluForward {
  template <typename T>
  __device__ __forceinline__ T operator()(T x) const {
    return to_acc(x) < acc_t<T>(0) ? from_acc<T>(acc_t<T>(0)) : x;
  }
};

// LeakyReLU (the slope in acc_t<T>): x > 0 keeps x bit for bit, otherwise x * slope rounded once.
struct LeakyForward {
  double slope;
  template <typename T>
  __device__ __forceinline__ T operator()(T x) const {
    const acc_t<T> v = to_acc(x);
    return v > acc_t<T>(0) ? x : from_acc<T>(v * static_cast<acc_t<T>>(slope));
  }
};

// dx = (s > 0 ? dy : dy * slope), s the forward input (or its result when slope > 0).
struct LeakyBackward {
  double slope;
  template <typename T>
  __device__ __forceinline__ T operator()(T s, T dy) const {
    return to_acc(s) > acc_t<T>(0) ? dy : from_acc<T>(to_acc(dy) * static_cast<acc_t<T>>(slope));
  }
};

struct ReluBackward {
  template <typename T>
  __device__ __forceinline__ T operator()(T y, T dy) const {
    return to_acc(y) <= acc_t<T>(0) ? from_acc<T>(acc_t<T>(0)) : dy;
  }
};

// f lane by lane over whole packs (passed by value: each is one 128-bit load).
template <typename F, typename P, typename... Rest>
__device__ __forceinline__ P map_pack(F f, P first, Rest... rest) {
  P out;
  for (int k = 0; k < P::kSize; ++k) out.v[k] = f(first.v[k], rest.v[k]...);
  return out;
}

// dst[i] = f(src[i]...) for i in [0, n), grid-stride: pack p of 16 bytes by thread p mod the grid
// when `packed`, then the tail (and every element when not packed) element i by thread i mod the grid.
template <typename T, typename F, typename... Src>
__device__ __forceinline__ void elementwise(F f, int64_t n, bool packed, T* __restrict__ dst,
                                            const Src* __restrict__... src) {
  using P = Pack<T>;
  int64_t done = 0;
  if (packed) {
    const int64_t packs = n / P::kSize;
    for (const int64_t p : grid_stride(packs)) {
      reinterpret_cast<P*>(dst)[p] = map_pack(f, reinterpret_cast<const P*>(src)[p]...);
    }
    done = packs * P::kSize;
  }
  for (const int64_t i : grid_stride(n, done)) dst[i] = f(src[i]...);
}

// One thread per 16-byte pack (or per element when unaligned), grid-stride.
template <typename T>
__global__ void relu_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, bool packed) {
  elementwise<T>(ReluForward{}, n, packed, y, x);
}

// One thread per 16-byte pack (or per element when unaligned), grid-stride.
template <typename T>
__global__ void relu_backward_kernel(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx,
                                     int64_t n, bool packed) {
  elementwise<T>(ReluBackward{}, n, packed, dx, y, dy);
}

// One thread per 16-byte pack (or per element when unaligned), grid-stride.
template <typename T>
__global__ void leaky_relu_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, bool packed,
                                          double slope) {
  elementwise<T>(LeakyForward{slope}, n, packed, y, x);
}

// One thread per 16-byte pack (or per element when unaligned), grid-stride.
template <typename T>
__global__ void leaky_relu_backward_kernel(const T* __restrict__ s, const T* __restrict__ dy, T* __restrict__ dx,
                                           int64_t n, bool packed, double slope) {
  elementwise<T>(LeakyBackward{slope}, n, packed, dx, s, dy);
}

}  // namespace

int leaky_relu_forward(DType dtype, const void* x, void* y, int64_t n, double slope, Stream stream) {
  if (n == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    const bool packed = is_aligned(x, 16) && is_aligned(y, 16);
    const int64_t work = packed ? ceil_div(n, Pack<T>::kSize) : n;
    err = launch(leaky_relu_forward_kernel<T>, grid_1d(work, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(x), static_cast<T*>(y), n, packed, slope);
  });
  return err;
}

int leaky_relu_backward(DType dtype, const void* dy, const void* s, void* dx, int64_t n, double slope, Stream stream) {
  if (n == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    const bool packed = is_aligned(dy, 16) && is_aligned(s, 16) && is_aligned(dx, 16);
    const int64_t work = packed ? ceil_div(n, Pack<T>::kSize) : n;
    err = launch(leaky_relu_backward_kernel<T>, grid_1d(work, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(s), static_cast<const T*>(dy), static_cast<T*>(dx), n, packed, slope);
  });
  return err;
}

int relu_forward(DType dtype, const void* x, void* y, int64_t n, Stream stream) {
  if (n == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    const bool packed = is_aligned(x, 16) && is_aligned(y, 16);
    const int64_t work = packed ? ceil_div(n, Pack<T>::kSize) : n;
    err = launch(relu_forward_kernel<T>, grid_1d(work, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(x), static_cast<T*>(y), n, packed);
  });
  return err;
}

int relu_backward(DType dtype, const void* dy, const void* y, void* dx, int64_t n, Stream stream) {
  if (n == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    const bool packed = is_aligned(dy, 16) && is_aligned(y, 16) && is_aligned(dx, 16);
    const int64_t work = packed ? ceil_div(n, Pack<T>::kSize) : n;
    err = launch(relu_backward_kernel<T>, grid_1d(work, kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(y), static_cast<const T*>(dy), static_cast<T*>(dx), n, packed);
  });
  return err;
}

}  // namespace fastconv::FC_NS::kernels
