// mma.cuh: the warp-level tensor-core multiply-accumulate behind the tensor-core GEMM (gemm.cuh),
// one device function per operand kind, so the fragment index math of every kernel that uses them
// is checked where it matters:
//   - under nvcc it is one PTX instruction, mma.sync.aligned.m16n8k16 (float16, bfloat16) or
//     m16n8k8 (tf32), row-major A, column-major B, float32 accumulators (sm_80 or newer): the
//     inline PTX at the end of this file;
//   - in the simulator it is a warp collective that scatters each lane's registers into A, B and the
//     accumulator by the fragment layouts below, multiplies, and gathers each lane's results back by
//     the same layouts (csrc/sim/mma_sim.h, which common.cuh supplies in place of the inline PTX).
//     A kernel that packs a fragment wrongly gets a wrong product in the simulator, as on a GPU.
// Every lane must reach mma_sync with its whole warp, as .aligned demands.
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

// The inline PTX, which the simulator replaces (FC_INLINE_PTX, common.cuh).
FC_INLINE_PTX(
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
)

}  // namespace fastconv::mma
