// dropout.cu: inverted dropout, y = keep(i) ? x * 1 / (1 - p) : 0, on the GPU.
//
// Kernel:
//   dropout_forward_kernel<T>  one thread per group of 4 consecutive elements, grid-stride.
// keep(i) = uniform24(philox4x32_10(counter = i / 4, key = seed)[i % 4]) >= p (csrc/philox.h), the
// CPU kernel's mask bit for bit (csrc/cpu/dropout.cpp): one Philox call yields the 4 draws of a
// group, so a thread owns a group. The seed is read from device memory by the kernel, so a launch
// never waits on the host for it. When x and y are aligned to a group (16 bytes for float, 8 for
// 16-bit types; 16 for double, moved as two 16-byte halves), each whole group is one vector load
// and one vector store; otherwise, and for the last partial group, elements go one by one.
// The scale is computed once on the host as the CPU does: in T for float and double, in float
// for the 16-bit types (whose product is then rounded to T).
// Cost: per 4 elements one Philox call (10 rounds of 2 32x32->64 multiplies and a few xors),
// 4 multiplies; 2 * sizeof(T) bytes per element. Memory-bound for float and double on current GPUs;
// the integer work of Philox roughly balances the bytes for the 16-bit types.
#include "cuda/common.cuh"
#include "philox.h"

namespace fastconv::FC_NS::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

// The 4 elements of one Philox draw, moved as vector accesses.
template <typename T>
struct alignas(4 * sizeof(T) < 16 ? 4 * sizeof(T) : 16) Group {
  T v[4];
};

template <typename T>
__device__ __forceinline__ T drop(T x, uint32_t bits, float p, acc_t<T> scale) {
  return uniform24(bits) >= p ? from_acc<T>(to_acc(x) * scale) : from_acc<T>(acc_t<T>(0));
}

// One thread per group of 4 consecutive elements (one Philox call), grid-stride.
template <typename T>
__global__ void dropout_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, float p,
                                       acc_t<T> scale, const int64_t* __restrict__ seed, bool packed) {
  const uint64_t key = static_cast<uint64_t>(*seed);
  const int64_t groups = ceil_div(n, 4);
  for (const int64_t q : grid_stride(groups)) {
    const Philox4 r = philox4x32_10(static_cast<uint64_t>(q), key);
    const int64_t i0 = q * 4;
    if (packed && i0 + 4 <= n) {
      const Group<T> in = reinterpret_cast<const Group<T>*>(x)[q];
      Group<T> out;
      for (int j = 0; j < 4; ++j) out.v[j] = drop(in.v[j], r.v[j], p, scale);
      reinterpret_cast<Group<T>*>(y)[q] = out;
    } else {
      const int cnt = n - i0 < 4 ? static_cast<int>(n - i0) : 4;
      for (int j = 0; j < cnt; ++j) y[i0 + j] = drop(x[i0 + j], r.v[j], p, scale);
    }
  }
}

}  // namespace

int dropout_forward(DType dtype, const void* x, void* y, int64_t n, double p, const int64_t* seed, Stream stream) {
  if (n == 0) return 0;
  int err = 0;
  const float threshold = static_cast<float>(p);
  FC_DISPATCH(dtype, T, {
    using A = acc_t<T>;
    const A scale = p < 1.0 ? static_cast<A>(1.0 / (1.0 - p)) : A(0);
    const bool packed = is_aligned(x, alignof(Group<T>)) && is_aligned(y, alignof(Group<T>));
    err = launch(dropout_forward_kernel<T>, grid_1d(ceil_div(n, 4), kThreads, kMaxBlocks), dim3(kThreads), 0, stream,
                 static_cast<const T*>(x), static_cast<T*>(y), n, threshold, scale, seed, packed);
  });
  return err;
}

}  // namespace fastconv::FC_NS::kernels
