// dropout.cpp: inverted dropout, y = x * keep / (1 - p), on the CPU.
//
// keep(i) = uniform24(philox(counter = i / 4, key = seed)[i % 4]) >= p: one Philox call gives the
// draws of 4 consecutive elements. The mask is a pure function of (seed, i), so it is never
// stored: the backward pass is this same op applied to the gradient with the same seed. The seed
// is drawn from torch's generator by the Python wrapper, so torch.manual_seed reproduces masks
// and successive calls differ.
//
// Philox runs on 16 (AVX-512) or 8 (AVX2) counters at once, one per vector lane: its 32x32 -> 64-bit
// products are vpmuludq on the even and the shifted odd lanes. The bits are those of the scalar
// philox4x32_10 (the tests compare with the CUDA kernel, which uses it), so masks do not depend on
// the machine. Since uniform24(b) = (b >> 8) / 2^24 exactly, uniform24(b) >= p is the integer test
// (b >> 8) >= ceil(p * 2^24).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "fastconv.h"
#include "sim/sim.h"
#include "philox.h"

namespace fastconv::cpu {
namespace {

// philox_lanes(q0, key, out): philox4x32_10 of the kPhiloxLanes counters q0, q0 + 1, ..., word j of
// counter q0 + l written to out[4 * l + j], so out holds the draws of 4 * kPhiloxLanes consecutive
// elements in element order (the 4 x kPhiloxLanes words are transposed on the way out).
#if defined(__AVX512F__)
constexpr int kPhiloxLanes = 16;
inline void philox_lanes(uint64_t q0, uint64_t key, uint32_t* out) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // counters q0 + lane: the low word may wrap into the high word within the block
  const __m512i lo = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)q0), lane);
  const __mmask16 carry = _mm512_cmplt_epu32_mask(lo, lane);
  __m512i c0 = lo;
  __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32((int)(uint32_t)(q0 >> 32)), carry,
                                     _mm512_set1_epi32((int)(uint32_t)(q0 >> 32)), _mm512_set1_epi32(1));
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  const __m512i m0 = _mm512_set1_epi32((int)0xD2511F53u), m1 = _mm512_set1_epi32((int)0xCD9E8D57u);
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int round = 0; round < 10; ++round) {
    // 32x32 -> 64-bit products: even lanes directly, odd lanes shifted down
    const __m512i e0 = _mm512_mul_epu32(c0, m0), o0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
    const __m512i e1 = _mm512_mul_epu32(c2, m1), o1 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
    const __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(e0, 32), o0);
    const __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, e0, _mm512_slli_epi64(o0, 32));
    const __m512i hi1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(e1, 32), o1);
    const __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, e1, _mm512_slli_epi64(o1, 32));
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)k0));
    c1 = lo1;
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)k1));
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // 4 x 16 -> element order: transpose words within 128-bit chunks, then the chunks
  const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
  const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
  const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
  const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u2, u3, 0x44);
  const __m512i v2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
  _mm512_storeu_si512(out, _mm512_shuffle_i32x4(v0, v1, 0x88));
  _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(v0, v1, 0xDD));
  _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(v2, v3, 0x88));
  _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(v2, v3, 0xDD));
}
#elif defined(__AVX2__)
constexpr int kPhiloxLanes = 8;
inline void philox_lanes(uint64_t q0, uint64_t key, uint32_t* out) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lo = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)q0), lane);
  // carry where lo < lane (unsigned): compare with the sign bit flipped
  const __m256i flip = _mm256_set1_epi32((int)0x80000000u);
  const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(lane, flip), _mm256_xor_si256(lo, flip));
  __m256i c0 = lo;
  __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32((int)(uint32_t)(q0 >> 32)), carry);  // carry is -1
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  const __m256i m0 = _mm256_set1_epi32((int)0xD2511F53u), m1 = _mm256_set1_epi32((int)0xCD9E8D57u);
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i e0 = _mm256_mul_epu32(c0, m0), o0 = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), m0);
    const __m256i e1 = _mm256_mul_epu32(c2, m1), o1 = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), m1);
    const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(e0, 32), o0, 0xAA);
    const __m256i lo0 = _mm256_blend_epi32(e0, _mm256_slli_epi64(o0, 32), 0xAA);
    const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(e1, 32), o1, 0xAA);
    const __m256i lo1 = _mm256_blend_epi32(e1, _mm256_slli_epi64(o1, 32), 0xAA);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
    c1 = lo1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
  const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  _mm256_storeu_si256((__m256i*)out, _mm256_permute2x128_si256(u0, u1, 0x20));
  _mm256_storeu_si256((__m256i*)(out + 8), _mm256_permute2x128_si256(u2, u3, 0x20));
  _mm256_storeu_si256((__m256i*)(out + 16), _mm256_permute2x128_si256(u0, u1, 0x31));
  _mm256_storeu_si256((__m256i*)(out + 24), _mm256_permute2x128_si256(u2, u3, 0x31));
}
#else
constexpr int kPhiloxLanes = 1;
inline void philox_lanes(uint64_t q0, uint64_t key, uint32_t* out) {
  const Philox4 r = philox4x32_10(q0, key);
  for (int j = 0; j < 4; ++j) out[j] = r.v[j];
}
#endif

// dst[i] = keep(i) ? src[i] * scale : 0 for the elements of quads [q_begin, q_end) (quad q: elements
// 4q .. 4q + 3), n elements in all.
template <typename T>
void dropout_quads(const T* __restrict__ src, T* __restrict__ dst, int64_t q_begin, int64_t q_end,
                   int64_t n, uint64_t key, int32_t keep_from, T scale) {
  constexpr int kBlock = 4 * kPhiloxLanes;
  alignas(64) uint32_t bits[kBlock];
  int64_t q = q_begin;
  for (; q + kPhiloxLanes <= q_end && (q + kPhiloxLanes) * 4 <= n; q += kPhiloxLanes) {
    philox_lanes(static_cast<uint64_t>(q), key, bits);
    const T* s = src + q * 4;
    T* d = dst + q * 4;
    if constexpr (std::is_same_v<T, float> && kPhiloxLanes == 16) {
#if defined(__AVX512F__)
      for (int e = 0; e < kBlock; e += 16) {
        const __m512i b = _mm512_srli_epi32(_mm512_load_si512(bits + e), 8);
        const __mmask16 keep = _mm512_cmpge_epi32_mask(b, _mm512_set1_epi32(keep_from));
        _mm512_storeu_ps(d + e, _mm512_maskz_mul_ps(keep, _mm512_loadu_ps(s + e), _mm512_set1_ps(scale)));
      }
#endif
    } else if constexpr (std::is_same_v<T, float> && kPhiloxLanes == 8) {
#if defined(__AVX2__)
      for (int e = 0; e < kBlock; e += 8) {
        const __m256i b = _mm256_srli_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(bits + e)), 8);
        const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(b, _mm256_set1_epi32(keep_from - 1)));
        _mm256_storeu_ps(d + e, _mm256_and_ps(keep, _mm256_mul_ps(_mm256_loadu_ps(s + e), _mm256_set1_ps(scale))));
      }
#endif
    } else {
      for (int e = 0; e < kBlock; ++e) d[e] = static_cast<int32_t>(bits[e] >> 8) >= keep_from ? s[e] * scale : T(0);
    }
  }
  for (; q < q_end; ++q) {  // the quads past the last whole block
    const Philox4 r = philox4x32_10(static_cast<uint64_t>(q), key);
    const int64_t i0 = q * 4, cnt = std::min<int64_t>(4, n - i0);
    for (int64_t j = 0; j < cnt; ++j)
      dst[i0 + j] = static_cast<int32_t>(r.v[j] >> 8) >= keep_from ? src[i0 + j] * scale : T(0);
  }
}

at::Tensor dropout_impl(const at::Tensor& input, double p, uint64_t key) {
  const at::Tensor x = input.contiguous();
  at::Tensor out = cpu::empty(x.sizes(), x.options());
  const int64_t n = x.numel();
  // uniform24(b) >= float(p)  <=>  (b >> 8) >= ceil(float(p) * 2^24); float(p) * 2^24 is exact
  const int32_t keep_from = static_cast<int32_t>(std::ceil(static_cast<double>(static_cast<float>(p)) * 16777216.0));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_dropout", [&] {
    using T = scalar_t;
    const T* src = x.const_data_ptr<T>();
    T* dst = out.mutable_data_ptr<T>();
    const T scale = p < 1.0 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    at::parallel_for(0, (n + 3) / 4, 4096, [&](int64_t b, int64_t e) {
      dropout_quads<T>(src, dst, b, e, n, key, keep_from, scale);
    });
  });
  return out;
}

at::Tensor dropout_cpu(const at::Tensor& input, double p, const at::Tensor& seed) {
  check_dropout(input, p, seed);
  const uint64_t key = static_cast<uint64_t>(seed.contiguous().const_data_ptr<int64_t>()[0]);
  return in_float32([&](const at::Tensor& input) { return dropout_impl(input, p, key); }, input);
}

}  // namespace

// Under fastconv.simulate() these ops run their CUDA kernels in the simulator (csrc/sim/sim.h).
TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("dropout", &sim::Routed<dropout_cpu, sim::dropout>::call);
}

}  // namespace fastconv::cpu
