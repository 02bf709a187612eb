// cuda_sim.h: the CUDA language for g++, so that csrc/cuda/*.cu runs on the CPU in fastconv's SIMT
// simulator (csrc/sim/runtime.cpp). Included by csrc/cuda/common.cuh when nvcc is not the compiler.
//
// What it maps, and how:
//   __global__ __device__ __host__ __forceinline__ __launch_bounds__ __align__   plain C++ (or nothing)
//   __shared__                 static thread_local: one copy per OS thread, and a block owns its OS thread
//                              while it runs, so every block sees its own shared memory
//   threadIdx blockIdx blockDim gridDim   the coordinates of the fiber that is running (one fiber per
//                              CUDA thread); warpSize is 32
//   __syncthreads(_count/_and/_or), __syncwarp, __shfl*_sync, __ballot/__any/__all_sync, __activemask
//                              meeting points: the calling fiber yields to the scheduler until every
//                              thread it waits for has arrived; the call site (file, line) goes with
//                              it, for the reports
//   atomics                    real atomics (blocks run on several OS threads at once)
//   __half, __nv_bfloat16      16-bit storage types, float arithmetic, round-to-nearest-even
//   fastconv::launch           the simulator's grid launch (synchronous; throws on a detected bug)
//
// The kernel translation unit is compiled with -fsanitize=thread but linked against the simulator's
// own __tsan_* hooks (not ThreadSanitizer): every load and store the compiler cannot prove private
// reports its address, which is how the race checker and the global-memory bounds check see shared
// and global accesses. Host code of the .cu files is unaffected (the hooks ignore accesses made
// outside a simulated thread).
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local
#define __constant__ static const

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define FCSIM_VECTOR2(T, name, align)                                                 \
  struct __attribute__((aligned(align))) name {                                        \
    T x, y;                                                                            \
  };                                                                                   \
  inline name make_##name(T x, T y) { return name{x, y}; }
#define FCSIM_VECTOR4(T, name, align)                                                 \
  struct __attribute__((aligned(align))) name {                                        \
    T x, y, z, w;                                                                      \
  };                                                                                   \
  inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
FCSIM_VECTOR2(float, float2, 8)
FCSIM_VECTOR4(float, float4, 16)
FCSIM_VECTOR2(double, double2, 16)
FCSIM_VECTOR2(int, int2, 8)
FCSIM_VECTOR4(int, int4, 16)
FCSIM_VECTOR2(unsigned, uint2, 8)
FCSIM_VECTOR4(unsigned, uint4, 16)
#undef FCSIM_VECTOR2
#undef FCSIM_VECTOR4

namespace fcsim {

// Where a meeting point was called from, for the reports.
struct Site {
  const char* file;
  int line;
};
#define FCSIM_SITE (::fcsim::Site{__FILE__, __LINE__})

struct Coords {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};

// The running fiber's coordinates. Constant for the life of a simulated thread, so `const` lets the
// compiler keep them in registers across a kernel.
__attribute__((const)) const Coords& coords();

void syncthreads(Site site);
int syncthreads_reduce(Site site, int kind, int predicate);  // kind: 0 count, 1 and, 2 or
void syncwarp(Site site, unsigned mask);
constexpr unsigned mask_or_full() { return 0xffffffffu; }  // __syncwarp() is __syncwarp(0xffffffff)
constexpr unsigned mask_or_full(unsigned mask) { return mask; }
unsigned vote(Site site, int kind, unsigned mask, int predicate);  // kind: 0 ballot, 1 any, 2 all
unsigned activemask();
// A warp shuffle of `size` bytes (4 or 8) of value bits; kind: 0 idx, 1 up, 2 down, 3 xor.
uint64_t shuffle(Site site, int kind, unsigned mask, uint64_t bits, int size, int arg, int width);
// A warp-wide operation the simulator has no CUDA built-in for (the tensor-core mma.sync): every lane
// of `mask` calls it with its own `data`; when the last one arrives, fn runs once with the data of
// all 32 lanes (nullptr for lanes outside the mask), then they all go on. The meeting is checked
// like a shuffle's (mask, exited lanes, lanes at different collectives).
void warp_collective(Site site, unsigned mask, void* data, void (*fn)(void* const* lanes));

// A compiler barrier after every meeting point: shared memory may have changed while this thread
// waited, whatever the optimiser can prove about who else could name it.
inline void clobber() { asm volatile("" ::: "memory"); }

template <typename T>
inline T shfl(Site site, int kind, unsigned mask, T value, int arg, int width = 32) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "the simulator shuffles 4- and 8-byte values");
  static_assert(std::is_trivially_copyable<T>::value, "shuffled values must be trivially copyable");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = shuffle(site, kind, mask, bits, int(sizeof(T)), arg, width);
  clobber();
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Device assertion: the block stops and the launch reports the condition, kernel, block and thread.
[[noreturn]] void device_assert_failed(const char* condition, Site site);

// Runs `grid` x `block` simulated threads of `kernel` (for the reports: its address), each calling
// thunk(ctx); returns when the grid has finished. Throws std::runtime_error with a report if the
// simulator caught a bug.
void launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*thunk)(const void*),
            const void* ctx, size_t ctx_bytes);

// The running block's dynamic shared memory (FC_DYNAMIC_SHARED).
void* dynamic_shared();

float half_bits_to_float(uint16_t h);
uint16_t float_to_half_bits(float f);        // round to nearest even
uint16_t float_to_bfloat16_bits(float f);    // round to nearest even

}  // namespace fcsim

#define threadIdx (::fcsim::coords().thread_idx)
#define blockIdx (::fcsim::coords().block_idx)
#define blockDim (::fcsim::coords().block_dim)
#define gridDim (::fcsim::coords().grid_dim)
#define warpSize 32

#define __syncthreads() (::fcsim::syncthreads(FCSIM_SITE), ::fcsim::clobber())
#define __syncthreads_count(p) ::fcsim::syncthreads_reduce(FCSIM_SITE, 0, (p))
#define __syncthreads_and(p) ::fcsim::syncthreads_reduce(FCSIM_SITE, 1, (p))
#define __syncthreads_or(p) ::fcsim::syncthreads_reduce(FCSIM_SITE, 2, (p))
#define __syncwarp(...) (::fcsim::syncwarp(FCSIM_SITE, ::fcsim::mask_or_full(__VA_ARGS__)), ::fcsim::clobber())
#define __ballot_sync(mask, p) ::fcsim::vote(FCSIM_SITE, 0, (mask), (p))
#define __any_sync(mask, p) (::fcsim::vote(FCSIM_SITE, 1, (mask), (p)) != 0)
#define __all_sync(mask, p) (::fcsim::vote(FCSIM_SITE, 2, (mask), (p)) != 0)
#define __activemask() ::fcsim::activemask()
#define __shfl_sync(mask, v, ...) ::fcsim::shfl(FCSIM_SITE, 0, (mask), (v), __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) ::fcsim::shfl(FCSIM_SITE, 1, (mask), (v), __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) ::fcsim::shfl(FCSIM_SITE, 2, (mask), (v), __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) ::fcsim::shfl(FCSIM_SITE, 3, (mask), (v), __VA_ARGS__)
#define FC_DEVICE_ASSERT(cond) ((cond) ? (void)0 : ::fcsim::device_assert_failed(#cond, FCSIM_SITE))

#define FC_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::fcsim::dynamic_shared())

// ------------------------------------------------------------------------------------- atomics
// Each returns the old value, as in CUDA. Out of line (csrc/sim/runtime.cpp), so that the kernel
// translation unit's access hooks see none of their memory traffic.
#define FCSIM_ATOMIC(T)                      \
  T atomicAdd(T* address, T value);          \
  T atomicExch(T* address, T value);         \
  T atomicCAS(T* address, T compare, T value);
#define FCSIM_ATOMIC_MINMAX(T)               \
  T atomicMin(T* address, T value);          \
  T atomicMax(T* address, T value);
FCSIM_ATOMIC(int)
FCSIM_ATOMIC(unsigned)
FCSIM_ATOMIC(long long)
FCSIM_ATOMIC(unsigned long long)
FCSIM_ATOMIC(float)
FCSIM_ATOMIC(double)
FCSIM_ATOMIC_MINMAX(int)
FCSIM_ATOMIC_MINMAX(unsigned)
FCSIM_ATOMIC_MINMAX(long long)
FCSIM_ATOMIC_MINMAX(unsigned long long)
#undef FCSIM_ATOMIC
#undef FCSIM_ATOMIC_MINMAX

// ---------------------------------------------------------------------- loads, bits, fast math
template <typename T>
__forceinline__ T __ldg(const T* p) {
  return *p;
}

inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }

// The fast-math intrinsics compute the accurate function: the simulator checks index math and
// synchronisation, not the last bits of __expf.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }

// CUDA's integer min/max overloads of device code.
#define FCSIM_MINMAX(T)                             \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
FCSIM_MINMAX(int)
FCSIM_MINMAX(unsigned)
FCSIM_MINMAX(long)
FCSIM_MINMAX(unsigned long)
FCSIM_MINMAX(long long)
FCSIM_MINMAX(unsigned long long)
#undef FCSIM_MINMAX

// ------------------------------------------------------------------------- 16-bit float types
struct __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(fcsim::float_to_half_bits(f)) {}
  operator float() const { return fcsim::half_bits_to_float(__x); }
};

struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(fcsim::float_to_bfloat16_bits(f)) {}
  operator float() const {
    const uint32_t bits = uint32_t(__x) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};

inline float __half2float(__half h) { return float(h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }

// ---------------------------------------------------------------------------------- launches
namespace fastconv {

template <typename Body>
void fcsim_run_body(const void* body) {
  (*static_cast<const Body*>(body))();
}

// The simulator's kernel<<<grid, block, smem, stream>>>(args...): runs the whole grid before it
// returns (the stream is ignored: simulated launches are synchronous). Returns 0 like a successful
// launch; a bug the simulator catches is thrown as std::runtime_error.
template <typename... Params, typename... Args>
inline int launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, void* /*stream*/,
                  Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return 0;
  auto body = [kernel, args...]() { kernel(args...); };
  ::fcsim::launch(reinterpret_cast<const void*>(kernel), grid, block, smem, &fcsim_run_body<decltype(body)>, &body,
                  sizeof(body));
  return 0;
}

}  // namespace fastconv
