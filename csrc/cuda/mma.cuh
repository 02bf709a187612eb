// mma.cuh: the warp-level tensor-core multiply-accumulate behind the tensor-core GEMM (gemm.cuh),
// one device function per operand kind, so the fragment index math of every kernel that uses them
// is checked where it matters:
//   - under nvcc it is one PTX instruction, mma.sync.aligned.m16n8k16 (float16, bfloat16) or
//     m16n8k8 (tf32), row-major A, column-major B, float32 accumulators (sm_80 or newer);
//   - in the simulator it is a warp collective (every lane must reach it with the whole warp, as
//     .aligned demands) that scatters each lane's registers into the 16 x K matrix A, the K x 8
//     matrix B and the 16 x 8 accumulator by the PTX ISA's fragment layouts, multiplies, and
//     gathers each lane's results back by the same layouts. A kernel that packs a fragment wrongly
//     gets a wrong product in the simulator, as it would on a GPU.
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 / mma.m16n8k8"), with
// g = lane / 4 and t = lane % 4:
//   m16n8k16 .f16/.bf16: A: 4 registers of 2 elements (low half = element 2j, high = 2j + 1):
//       element i (0..7) at row g + 8 * ((i / 2) % 2), column 2 t + i % 2 + 8 * (i / 4);
//     B: 2 registers of 2 elements: element i (0..3) at row (k) 2 t + i % 2 + 8 * (i / 2), column g;
//   m16n8k8 .tf32: A: element i (0..3) at row g + 8 * (i % 2), column t + 4 * (i / 2);
//     B: element i (0..1) at row t + 4 i, column g;
//   C/D (both): element i (0..3) at row g + 8 * (i / 2), column 2 t + i % 2.
// The hardware reads only the 19 high bits of a tf32 operand (sign, exponent, 10 mantissa bits);
// to_tf32 rounds a float32 to them (nearest, ties away from zero, like cvt.rna.tf32.f32).
#pragma once

#include "cuda/common.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "fastconv's tensor-core kernels need sm_80 or newer (TORCH_CUDA_ARCH_LIST >= 8.0)"
#endif

namespace fastconv::mma {

// The operand kinds: the storage type loaded into the fragments, elements per 32-bit register, K of
// one instruction.
struct F16 {
  using In = __half;
  static constexpr int kPerWord = 2, kK = 16;
};
struct BF16 {
  using In = __nv_bfloat16;
  static constexpr int kPerWord = 2, kK = 16;
};
struct TF32 {
  using In = float;
  static constexpr int kPerWord = 1, kK = 8;
};

// Two 16-bit elements as one fragment register (lo = the lower-indexed element).
__device__ __forceinline__ uint32_t pack(__half lo, __half hi) {
  return uint32_t(__half_as_ushort(lo)) | uint32_t(__half_as_ushort(hi)) << 16;
}
__device__ __forceinline__ uint32_t pack(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return uint32_t(__bfloat16_as_ushort(lo)) | uint32_t(__bfloat16_as_ushort(hi)) << 16;
}

#if defined(__CUDACC__)

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// d += A B for one warp's 16 x 8 tile.
template <typename Kind>
__device__ void mma_sync(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_sync<F16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_sync<BF16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_sync<TF32>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

#else  // the simulator

inline uint32_t to_tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u)  // inf stays inf; NaN stays NaN (quieted, so no payload bit is lost)
    return (u & 0x7fffffffu) == 0x7f800000u ? u : (u | 0x00400000u) & 0xffffe000u;
  return (u + 0x1000u) & 0xffffe000u;  // nearest, ties away from zero (a carry into the exponent is right)
}

namespace detail {

struct Lane {
  float* d;
  const uint32_t* a;
  const uint32_t* b;
};

inline float operand(F16, uint32_t bits) { return fcsim::half_bits_to_float(uint16_t(bits)); }
inline float operand(BF16, uint32_t bits) {
  const uint32_t u = (bits & 0xffffu) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float operand(TF32, uint32_t bits) {
  const uint32_t u = bits & 0xffffe000u;  // the bits the hardware reads
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Runs once per warp-wide mma, on the lane that arrives last, with every lane's registers. It reads
// the other lanes' registers (on their own stacks), so it is kept out of the access hooks.
template <typename Kind>
__attribute__((no_sanitize("thread"))) void warp_mma(void* const* lanes) {
  constexpr int K = Kind::kK;
  float A[16][K], B[K][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const Lane& L = *static_cast<const Lane*>(lanes[lane]);
    const int g = lane / 4, t = lane % 4;
    if constexpr (Kind::kPerWord == 2) {
      for (int i = 0; i < 8; ++i)
        A[g + 8 * ((i / 2) % 2)][2 * t + i % 2 + 8 * (i / 4)] = operand(Kind{}, L.a[i / 2] >> (16 * (i % 2)));
      for (int i = 0; i < 4; ++i) B[2 * t + i % 2 + 8 * (i / 2)][g] = operand(Kind{}, L.b[i / 2] >> (16 * (i % 2)));
    } else {
      for (int i = 0; i < 4; ++i) A[g + 8 * (i % 2)][t + 4 * (i / 2)] = operand(Kind{}, L.a[i]);
      for (int i = 0; i < 2; ++i) B[t + 4 * i][g] = operand(Kind{}, L.b[i]);
    }
    for (int i = 0; i < 4; ++i) C[g + 8 * (i / 2)][2 * t + i % 2] = L.d[i];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const Lane& L = *static_cast<const Lane*>(lanes[lane]);
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
      float acc = C[row][col];
      for (int k = 0; k < K; ++k) acc = std::fma(A[row][k], B[k][col], acc);  // products are exact in float32
      L.d[i] = acc;
    }
  }
}

}  // namespace detail

template <typename Kind>
inline void mma_sync(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  detail::Lane lane{d, a, b};
  fcsim::warp_collective(FCSIM_SITE, 0xffffffffu, &lane, &detail::warp_mma<Kind>);
  fcsim::clobber();
}

#endif

}  // namespace fastconv::mma
