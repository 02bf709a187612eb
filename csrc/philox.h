// philox.h: the Philox-4x32-10 counter-based generator (Salmon, Moraes, Dror, Shaw, "Parallel
// random numbers: as easy as 1, 2, 3", SC 2011). A pure function of (key, counter): element i of
// a tensor always draws the same bits for a given seed, on any backend, in any thread order.
// Plain C++ with no torch headers: CPU kernels and CUDA kernels include the same file.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTCONV_HD __host__ __device__ __forceinline__
#else
#define FASTCONV_HD inline
#endif

namespace fastconv {

struct Philox4 {
  uint32_t v[4];
};

FASTCONV_HD Philox4 philox4x32_10(uint64_t counter, uint64_t key) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = (uint64_t)kMul0 * c0, p1 = (uint64_t)kMul1 * c2;
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in [0, 1) with 24 random bits: exact in float and double.
FASTCONV_HD float uniform24(uint32_t bits) { return (float)(bits >> 8) * (1.0f / 16777216.0f); }

}  // namespace fastconv
