// common.cuh: what every CUDA kernel file of fastconv includes first. The same .cu source is built two
// ways, and this header is the only place that knows which:
//   - by nvcc for GPUs (__CUDACC__): the real CUDA headers; launchers live in fastconv::cuda::kernels;
//   - by g++ for fastconv's SIMT simulator (csrc/sim/): cuda_sim.h supplies the CUDA language
//     (built-in variables, __syncthreads, warp intrinsics, atomics, __half, ...) on the CPU;
//     launchers live in fastconv::sim::kernels.
// Kernel code itself reads as ordinary CUDA. Two spellings differ from plain CUDA:
//   - launches go through fastconv::launch(kernel, grid, block, smem_bytes, stream, args...) instead
//     of kernel<<<grid, block, smem_bytes, stream>>>(args...); it returns the launch's error code
//     (0 = success), and in the simulator throws std::runtime_error with a report when the
//     simulator catches a bug (race, divergent barrier, bad shuffle mask, device assertion);
//   - dynamic shared memory is FC_DYNAMIC_SHARED(T, name) instead of `extern __shared__ T name[]`.
// What differs by compiler besides the language itself comes from here too: the message of a launch's
// error code (launch_error_string), and the tensor-core operations of cuda/mma.cuh and the asynchronous
// copies and matrix loads of cuda/async_copy.cuh, whose inline PTX (FC_INLINE_PTX) the simulator
// replaces by its own versions (sim/mma_sim.h, sim/async_sim.h).
// Below the compiler branch: the integer helpers of launch geometry (ceil_div, kWarpSize, is_aligned,
// grid_1d, grid_stride) and the storage / arithmetic type conversions, written once for every kernel file.
// Nothing here includes torch: nvcc compiles these files on machines whose torch has no CUDA.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define FC_NS cuda
#else
#define FC_NS sim
#endif
#include "cuda/kernels.h"

#if defined(__CUDACC__)

// Fully unrolls the loop that follows (register arrays indexed by its counter stay in registers).
#define FC_UNROLL _Pragma("unroll")

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define FC_DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(16) unsigned char fc_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(fc_dynamic_shared_)

// FC_INLINE_PTX(definitions): device functions written in inline PTX, compiled as they are.
#define FC_INLINE_PTX(...) __VA_ARGS__

namespace fastconv {

// kernel<<<grid, block, smem, stream>>>(args...), then the launch's error code. An empty grid is
// no launch at all (CUDA refuses a zero-sized grid).
template <typename... Params, typename... Args>
inline int launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Stream stream, Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return 0;
  kernel<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(args...);
  return static_cast<int>(cudaGetLastError());
}

// The message of an error code that launch returned.
inline const char* launch_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace fastconv

#else  // the simulator

#define FC_UNROLL
// The simulator cannot run inline PTX: it drops those definitions and supplies its own versions of
// them (the tensor-core operations: sim/mma_sim.h; cp.async and ldmatrix: sim/async_sim.h).
#define FC_INLINE_PTX(...)
#include "sim/cuda_sim.h"
#include "sim/mma_sim.h"
#include "sim/async_sim.h"

namespace fastconv {

// The message of an error code that launch returned (the simulator's launches return only 0: a bug
// they catch is thrown instead).
inline const char* launch_error_string(int code) {
  return code == 0 ? "no error" : "fastconv simulator: unknown error code";
}

}  // namespace fastconv

#endif

namespace fastconv {

// Threads of a warp, as a constant expression (CUDA's warpSize is not one in device code).
constexpr int kWarpSize = 32;

// ceil(a / b) for integers a >= 0 and b > 0, in the type of a + b.
template <typename I, typename J>
__host__ __device__ constexpr auto ceil_div(I a, J b) -> decltype(a + b) {
  static_assert(std::is_integral<I>::value && std::is_integral<J>::value, "ceil_div divides integers");
  return (a + b - 1) / b;
}

// Whether p is a multiple of `bytes` (the alignment of a vector access: 16 for a 128-bit one).
__host__ __device__ inline bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// The one-dimensional grid of a grid-stride kernel: a block per `per_block` of `work` items, at most
// max_blocks (the kernel's loop then goes round again); no blocks for no work (launch skips it).
inline dim3 grid_1d(int64_t work, int64_t per_block, int64_t max_blocks) {
  const int64_t blocks = ceil_div(work, per_block);
  return dim3(static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks));
}

// The items of a grid-stride loop over [from, n) that the calling thread takes, in order:
//   for (int64_t i : grid_stride(n)) ...
// thread t of the (one-dimensional) grid takes from + t, from + t + the grid's thread count, ...; in
// int64, so n may pass 2^31.
struct GridStride {
  struct Iterator {
    int64_t i, step;
    __device__ int64_t operator*() const { return i; }
    __device__ Iterator& operator++() {
      i += step;
      return *this;
    }
    __device__ bool operator!=(const Iterator& end) const { return i < end.i; }
  };
  int64_t first, n, step;
  __device__ Iterator begin() const { return Iterator{first, step}; }
  __device__ Iterator end() const { return Iterator{n, step}; }
};

__device__ inline GridStride grid_stride(int64_t n, int64_t from = 0) {
  return GridStride{from + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, n,
                    static_cast<int64_t>(gridDim.x) * blockDim.x};
}

// Element e of an [n, c, rows, cols] tensor stored NCHW or NHWC (channels_last), counted in memory
// order, as (plane = n c + channel, row, col); pitch = the distance between two pixels of a plane (1
// or c). For the element-wise kernels that take either layout and keep each thread on the next
// element in memory (coalesced either way).
struct PlanePos {
  int64_t plane, row, col, channels, pitch;
  // the offset of pixel 0 of the same (n, channel) plane in a tensor of this layout whose planes hold
  // `plane_size` pixels (the other side of a pooling: its input, or its output)
  __device__ int64_t base_of(int64_t plane_size) const {
    return pitch == 1 ? plane * plane_size : plane / channels * plane_size * channels + plane % channels;
  }
};
__device__ inline PlanePos plane_pos(int64_t e, int64_t c, int64_t rows, int64_t cols, bool nhwc) {
  if (nhwc) {
    const int64_t pixel = e / c, n = pixel / cols / rows;
    return PlanePos{n * c + e % c, pixel / cols % rows, pixel % cols, c, c};
  }
  return PlanePos{e / cols / rows, e / cols % rows, e % cols, c, 1};
}

// Arithmetic type of a storage type: float16 and bfloat16 are loaded, computed in float32 and rounded
// back (round-to-nearest-even), float32 and float64 compute in themselves.
template <typename T> struct Acc { using type = T; };
template <> struct Acc<__half> { using type = float; };
template <> struct Acc<__nv_bfloat16> { using type = float; };
template <typename T> using acc_t = typename Acc<T>::type;

__host__ __device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__host__ __device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__host__ __device__ __forceinline__ float to_acc(float v) { return v; }
__host__ __device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T> __host__ __device__ __forceinline__ T from_acc(acc_t<T> v) { return static_cast<T>(v); }
template <> __host__ __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __host__ __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Zero in a storage type (16-bit types have no implicit conversions under torch's nvcc flags).
template <typename T> __host__ __device__ __forceinline__ T zero() { return from_acc<T>(acc_t<T>(0)); }

}  // namespace fastconv

// FC_DISPATCH(dtype, T, body): runs body with T the storage type named by dtype (a fastconv::DType);
// an unknown dtype returns kBadDType from the enclosing launcher.
#define FC_DISPATCH(dtype, T, ...)                                   \
  switch (dtype) {                                                   \
    case ::fastconv::DType::f32: { using T = float; __VA_ARGS__; break; }          \
    case ::fastconv::DType::f64: { using T = double; __VA_ARGS__; break; }         \
    case ::fastconv::DType::f16: { using T = __half; __VA_ARGS__; break; }         \
    case ::fastconv::DType::bf16: { using T = __nv_bfloat16; __VA_ARGS__; break; } \
    default: return ::fastconv::kBadDType;                           \
  }
