// mma_sim.h: the simulator's versions of the tensor-core operations of csrc/cuda/mma.cuh, whose
// inline PTX g++ cannot compile. Included by csrc/cuda/common.cuh after cuda_sim.h when nvcc is not
// the compiler; mma.cuh defines the operand kinds they are instantiated with.
//   - to_tf32 rounds a float32 to the 19 bits the hardware reads, as cvt.rna.tf32.f32 does;
//   - mma_sync<Kind> is a warp collective (every lane must reach it with the whole warp, as .aligned
//     demands) that scatters each lane's registers into the 16 x K matrix A, the K x 8 matrix B and
//     the 16 x 8 accumulator by the PTX ISA's fragment layouts (listed in mma.cuh), multiplies, and
//     gathers each lane's results back by the same layouts. A kernel that packs a fragment wrongly
//     gets a wrong product in the simulator, as it would on a GPU. Its reports name the kernel's line
//     that called it, as for the other warp collectives.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "sim/cuda_sim.h"

namespace fastconv::mma {

// Nearest, ties away from zero; the low 13 bits cleared.
inline uint32_t to_tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u)  // inf stays inf; NaN stays NaN (quieted, so no payload bit is lost)
    return (u & 0x7fffffffu) == 0x7f800000u ? u : (u | 0x00400000u) & 0xffffe000u;
  return (u + 0x1000u) & 0xffffe000u;  // a carry into the exponent is right
}

namespace detail {

struct Lane {
  float* d;
  const uint32_t* a;
  const uint32_t* b;
};

// The value of one operand element from its bits in a fragment register (the low 16 bits for the
// 16-bit kinds), by the kind's storage type: float16, bfloat16, or float32 read as tf32.
inline float operand(__half, uint32_t bits) { return fcsim::half_bits_to_float(uint16_t(bits)); }
inline float operand(__nv_bfloat16, uint32_t bits) {
  const uint32_t u = (bits & 0xffffu) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float operand(float, uint32_t bits) {
  const uint32_t u = bits & 0xffffe000u;  // the bits the hardware reads
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Runs once per warp-wide mma, on the lane that arrives last, with every lane's registers. It reads
// the other lanes' registers (on their own stacks), so it is kept out of the access hooks.
template <typename Kind>
__attribute__((no_sanitize("thread"))) void warp_mma(void* const* lanes) {
  using In = typename Kind::In;
  constexpr int K = Kind::kK;
  float A[16][K], B[K][8], C[16][8];
  for (int lane = 0; lane < warpSize; ++lane) {
    const Lane& L = *static_cast<const Lane*>(lanes[lane]);
    const int g = lane / 4, t = lane % 4;
    if constexpr (Kind::kPerWord == 2) {
      for (int i = 0; i < 8; ++i)
        A[g + 8 * ((i / 2) % 2)][2 * t + i % 2 + 8 * (i / 4)] = operand(In{}, L.a[i / 2] >> (16 * (i % 2)));
      for (int i = 0; i < 4; ++i) B[2 * t + i % 2 + 8 * (i / 2)][g] = operand(In{}, L.b[i / 2] >> (16 * (i % 2)));
    } else {
      for (int i = 0; i < 4; ++i) A[g + 8 * (i % 2)][t + 4 * (i / 2)] = operand(In{}, L.a[i]);
      for (int i = 0; i < 2; ++i) B[t + 4 * i][g] = operand(In{}, L.b[i]);
    }
    for (int i = 0; i < 4; ++i) C[g + 8 * (i / 2)][2 * t + i % 2] = L.d[i];
  }
  for (int lane = 0; lane < warpSize; ++lane) {
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

// d += A B for one warp's 16 x 8 tile. The reports name the caller's file and line (the defaults).
template <typename Kind>
inline void mma_sync(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  detail::Lane lane{d, a, b};
  fcsim::warp_collective(fcsim::Site{file, line}, 0xffffffffu, &lane, &detail::warp_mma<Kind>);
  fcsim::clobber();
}

}  // namespace fastconv::mma
