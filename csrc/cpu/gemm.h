// gemm.h: the register-blocked GEMM machinery behind every CPU convolution and linear kernel.
//
// The heart is micro_kernel: an MR x NR tile of C held in vector registers and updated by kc
// rank-1 steps, each one broadcast A element times two B vectors. Where A and B come from is a
// template parameter (the operand sources below), so one micro-kernel serves every layout:
//   - packed panels ([kc][MR] of A, [kc][NR] of B), zero-padded to MR / NR;
//   - operands read where they lie: rows of a matrix (linear), or the zero-padded image shifted
//     by a constant per k (stride-1 convolution: implicit GEMM with no im2col at all).
// gemm_block is the GotoBLAS arrangement for packed operands (strided convolutions):
//
//   for each k-block kb:                 pack_a(kb) -> ceil(mlen/MR) panels, each [kc][MR]
//                                        pack_b(kb) -> ceil(nlen/NR) panels, each [kc][NR]
//     for each B panel (stays in L1):
//       for each A panel (streams from L2):
//         micro-kernel, then the epilogue: store (or add) the valid part of the tile, and on the
//         last k-block add the bias and apply ReLU
//
// Tile sizes: with AVX-512 a vector is 16 floats / 8 doubles; the tile is MR = 8 rows by NR = 2
// vectors, i.e. 16 accumulator registers, 2 B loads and 8 broadcast-FMAs per k step: enough
// independent FMAs to cover the FMA latency on two ports. Without AVX-512 the vector is 32 bytes
// and MR = 6 keeps the 12 accumulators within 16 registers. kc = 256 keeps one B panel
// (256 x 32 floats = 32 KiB) in L1. Per micro-kernel call: 2 * MR * NR * kc FLOPs for
// (MR + NR) * kc loads, i.e. 10.7 FLOPs per loaded element for float.
#pragma once

#include <algorithm>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#include "shapes.h"

namespace fastconv::cpu {

// FASTCONV_WIDE_TILES=1 selects the AVX-512 tiling on any machine (the compiler splits the 64-byte
// vectors in two): a way to test the AVX-512 tile sizes where there is no AVX-512.
#if defined(__AVX512F__) || FASTCONV_WIDE_TILES
constexpr int kVecBytes = 64;
constexpr int kMR = 8;
#else
constexpr int kVecBytes = 32;
constexpr int kMR = 6;
#endif
constexpr int64_t kKC = 256;  // depth of one k-block

template <typename T>
struct Tile {
  static constexpr int W = kVecBytes / sizeof(T);  // lanes of one vector
  static constexpr int MR = kMR;
  static constexpr int NR = 2 * W;
  typedef T V __attribute__((vector_size(kVecBytes)));
};

template <typename T>
constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Spreads the prefetch of the planes a work item will pad next over the steps of the current one, so
// that their memory reads overlap its arithmetic instead of stalling the copy (a core streams from
// memory at a fraction of the bandwidth when it waits for each line). `runs` contiguous spans of
// `bytes` each, `stride` bytes apart; step `step` of `steps` asks for its share of them into L2.
struct PrefetchPlan {
  const char* base = nullptr;
  int64_t runs = 0, bytes = 0, stride = 0;
  void step(int64_t step, int64_t steps) const {
    if (!base || steps <= 0) return;
    const int64_t total = runs * bytes, lo = total * step / steps, hi = total * (step + 1) / steps;
    for (int64_t b = lo / 64 * 64; b < hi; b += 64) {
      const int64_t r = b / bytes, o = b % bytes;
      __builtin_prefetch(base + r * stride + o, 0, 2);
    }
  }
};

// Iterations per parallel task such that each task does at least ~1 MFLOP (~10 us): smaller
// problems run on the calling thread instead of paying for a fork/join of the thread pool.
inline int64_t grain_for(double flops_per_item) {
  constexpr double kMinTaskFlops = 1e6;
  return std::max<int64_t>(1, (int64_t)(kMinTaskFlops / std::max(flops_per_item, 1.0)));
}

// One growable scratch buffer per thread and slot; packing buffers live here so that a kernel call
// allocates nothing in its inner loops. Aligned to 128 bytes: a vector of NR lanes (winograd.h) is
// that wide with AVX-512.
template <typename T>
T* scratch(int slot, int64_t elems) {
  struct Buf {
    void* p = nullptr;
    size_t bytes = 0;
    ~Buf() { std::free(p); }
  };
  static thread_local Buf bufs[6];
  Buf& b = bufs[slot];
  const size_t need = round_up<T>(elems * (int64_t)sizeof(T) + 128, 128);
  if (b.bytes < need) {
    std::free(b.p);
    b.p = std::aligned_alloc(128, need);
    if (!b.p) throw std::bad_alloc();
    b.bytes = need;
  }
  return static_cast<T*>(b.p);
}

// Sum of f(i) over a row of n values, f giving whole vectors (fv, W lanes of partial sums) and single
// values for the tail (fs); the lanes are then added in double, in order: vectorised, and a fixed
// summation order (batch_norm's statistics, bias_grad).
template <typename T, typename FV, typename FS>
inline double row_sum(int64_t n, FV fv, FS fs) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W;
  V lanes{};
  int64_t i = 0;
  for (; i + W <= n; i += W) lanes += fv(i);
  double s = 0;
  for (int l = 0; l < W; ++l) s += lanes[l];
  for (; i < n; ++i) s += fs(i);
  return s;
}

// std::vector storage aligned to 64 bytes (packed weights), not zero-filled.
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) {
    void* p = std::aligned_alloc(64, round_up<T>(n * sizeof(T) + 64, 64));
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  // Elements are default-initialised (arithmetic ones left as they are, not zeroed): every user writes
  // what it later reads, and zeroing megabytes of packed weights first measured a few percent of a call.
  template <typename U>
  void construct(U* p) { ::new (static_cast<void*>(p)) U; }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) { ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const { return true; }
};

template <typename T>
struct Epilogue {
  const T* row_bias = nullptr;  // bias[m], added to row m (conv: one per output channel)
  const T* col_bias = nullptr;  // bias[n], added to column n (linear: one per output feature)
};

// A convolution's epilogue activation (shapes.h), applied to a scalar or a vector of T (GCC vectors,
// __m256 / __m512 included) as relu and leaky_relu's own kernels compute it: ReLU as v < 0 ? 0 : v,
// LeakyReLU as v > 0 ? v : v * slope. Both keep NaN (max instructions would not).
template <typename T>
struct Act {
  Activation::Kind kind = Activation::none;
  T slope = 0;
  Act() = default;
  explicit Act(const Activation& a) : kind(a.kind), slope(static_cast<T>(a.slope)) {}
  explicit operator bool() const { return kind != Activation::none; }
  template <typename V>
  V operator()(V v) const {
    const V zero{};
    if (kind == Activation::relu) return v < zero ? zero : v;
    if (kind == Activation::leaky_relu) return v > zero ? v : v * slope;
    return v;
  }
};

// Operand sources of the micro-kernel. A gives one scalar a(k, i) per row i < MR, B gives the two
// vectors b(k, 0..W) and b(k, W..NR). Packed sources read panels; the others read operands where
// they lie, which is what lets stride-1 convolution skip im2col packing altogether:
//   ShiftedB: B[k][j] = base[off[k] + j]   (row k of im2col is the padded image shifted by off[k])
//   RowsA:    A[i][k] = row[i][k]          (MR rows read where they lie)
//   StridedA: A[i][k] = p[k * ld + i]      (MR adjacent elements per k)
template <typename T>
struct PackedA {
  const T* __restrict__ p;
  T get(int64_t k, int i) const { return p[k * Tile<T>::MR + i]; }
};
template <typename T>
struct RowsA {
  const T* row[Tile<T>::MR];
  T get(int64_t k, int i) const { return row[i][k]; }
};
// A[i][k] = row[i][j * stride + p] for k = k0 + j * 2^shift + p (p < 2^shift): rows that run on, image
// after image, through planes of 2^shift values `stride` apart (a 1x1 convolution's input read in place as
// the im2col rows of a block of images)
template <typename T>
struct ImageRowsA {
  const T* row[Tile<T>::MR];
  int shift;
  int64_t stride, k0;
  T get(int64_t k, int i) const {
    const int64_t kk = k0 + k;
    return row[i][(kk >> shift) * stride + (kk & ((int64_t(1) << shift) - 1))];
  }
};
template <typename T>
struct StridedA {
  const T* __restrict__ p;
  int64_t ld;
  T get(int64_t k, int i) const { return p[k * ld + i]; }
};
template <typename T>
struct PackedB {
  const T* __restrict__ p;
  const T* at(int64_t k) const { return p + k * Tile<T>::NR; }
};
template <typename T>
struct StridedB {  // B[k][j] = p[k * ld + j]: rows of a matrix read where they lie
  const T* p;
  int64_t ld;
  const T* at(int64_t k) const { return p + k * ld; }
};
template <typename T>
struct ShiftedB {
  const T* base;
  const int64_t* __restrict__ off;
  const T* at(int64_t k) const { return base + off[k]; }
};
// B[k][0..W) = lo[k * ld ..], B[k][W..NR) = hi[k * ld ..]: the two vectors of a row from two places (the
// planes of two images, where a 1x1 convolution's columns are its input as it lies)
template <typename T>
struct SplitB {
  const T* lo;
  const T* hi;
  int64_t ld;
  const T* at(int64_t k) const { return lo + k * ld; }
  const T* high(int64_t k) const { return hi + k * ld; }
};

// Whether a B source places its second vector itself (high(k)); otherwise it follows the first.
template <typename B, typename = void>
struct has_high : std::false_type {};
template <typename B>
struct has_high<B, std::void_t<decltype(std::declval<const B&>().high(int64_t(0)))>> : std::true_type {};

// acc[MR][NR] = sum_k a(k, 0..MR) (outer) b(k, 0..NR), row i stored at acc_out + i * ld
template <typename T, typename A, typename B>
inline void micro_kernel(int64_t kc, const A a, const B b, T* __restrict__ acc_out, int64_t ld = Tile<T>::NR) {
  using Tl = Tile<T>;
  using V = typename Tl::V;
  constexpr int MR = Tl::MR, W = Tl::W;
  V c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) { c0[i] = V{}; c1[i] = V{}; }
  for (int64_t k = 0; k < kc; ++k) {
    const T* bk = b.at(k);
    const T* bh;
    if constexpr (has_high<B>::value) bh = b.high(k);
    else bh = bk + W;
    V b0, b1;
    std::memcpy(&b0, bk, sizeof(V));
    std::memcpy(&b1, bh, sizeof(V));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T ai = a.get(k, i);
      c0[i] += ai * b0;
      c1[i] += ai * b1;
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    std::memcpy(acc_out + i * ld, &c0[i], sizeof(V));
    std::memcpy(acc_out + i * ld + W, &c1[i], sizeof(V));
  }
}

// The first vector of each row only (acc[i][0..W)): for a panel of at most W valid columns (a layer of 10
// outputs) half the FMAs of micro_kernel, each lane computed by the same operations (the same bits).
template <typename T, typename A, typename B>
inline void micro_kernel_half(int64_t kc, const A a, const B b, T* __restrict__ acc_out, int64_t ld = Tile<T>::NR) {
  using Tl = Tile<T>;
  using V = typename Tl::V;
  constexpr int MR = Tl::MR;
  V c0[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) c0[i] = V{};
  for (int64_t k = 0; k < kc; ++k) {
    V b0;
    std::memcpy(&b0, b.at(k), sizeof(V));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) c0[i] += a.get(k, i) * b0;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) std::memcpy(acc_out + i * ld, &c0[i], sizeof(V));
}

// C[0..mr)[0..nr) (= or +=) acc, then the bias if this is the last k-block. Full-width
// tiles take the vector path (two vectors a row); edge tiles a scalar one.
template <typename T>
inline void store_tile(const T* __restrict__ acc, int mr, int nr, T* __restrict__ c, int64_t ldc,
                       bool load_c, bool last, const Epilogue<T>& ep, int64_t m0, int64_t n0) {
  using V = typename Tile<T>::V;
  constexpr int NR = Tile<T>::NR, W = Tile<T>::W;
  if (nr == NR) {
    V cb0{}, cb1{};
    if (last && ep.col_bias) {
      std::memcpy(&cb0, ep.col_bias + n0, sizeof(V));
      std::memcpy(&cb1, ep.col_bias + n0 + W, sizeof(V));
    }
    for (int i = 0; i < mr; ++i) {
      T* crow = c + i * ldc;
      V v0, v1;
      std::memcpy(&v0, acc + i * NR, sizeof(V));
      std::memcpy(&v1, acc + i * NR + W, sizeof(V));
      if (load_c) {
        V c0, c1;
        std::memcpy(&c0, crow, sizeof(V));
        std::memcpy(&c1, crow + W, sizeof(V));
        v0 += c0;
        v1 += c1;
      }
      if (last) {
        const T rb = ep.row_bias ? ep.row_bias[m0 + i] : T(0);
        v0 += rb + cb0;
        v1 += rb + cb1;
      }
      std::memcpy(crow, &v0, sizeof(V));
      std::memcpy(crow + W, &v1, sizeof(V));
    }
    return;
  }
  for (int i = 0; i < mr; ++i) {
    T* __restrict__ crow = c + i * ldc;
    const T* __restrict__ arow = acc + i * NR;
    const T rb = last && ep.row_bias ? ep.row_bias[m0 + i] : T(0);
#pragma GCC novector
    for (int j = 0; j < nr; ++j) {
      T v = arow[j] + rb;
      if (load_c) v += crow[j];
      if (last && ep.col_bias) v += ep.col_bias[n0 + j];
      crow[j] = v;
    }
  }
}

// Computes one block of C on the calling thread. pack_a(kb, dst) packs k-block kb of A and
// returns its depth kc (<= kKC); pack_b(kb, kc, dst) packs the same k-block of B.
template <typename T, typename PackA, typename PackB>
void gemm_block(int64_t mlen, int64_t nlen, int64_t n_kblocks, PackA&& pack_a, PackB&& pack_b, T* c,
                int64_t ldc, bool accumulate, const Epilogue<T>& ep, int64_t m_offset = 0,
                int64_t n_offset = 0) {
  using Tl = Tile<T>;
  constexpr int MR = Tl::MR, NR = Tl::NR;
  const int64_t m_panels = ceil_div(mlen, MR), n_panels = ceil_div(nlen, NR);
  T* abuf = scratch<T>(0, m_panels * MR * kKC);
  T* bbuf = scratch<T>(1, n_panels * NR * kKC);
  alignas(64) T acc[MR * NR];
  for (int64_t kb = 0; kb < n_kblocks; ++kb) {
    const int64_t kc = pack_a(kb, abuf);
    pack_b(kb, kc, bbuf);
    const bool load_c = accumulate || kb > 0, last = kb == n_kblocks - 1;
    for (int64_t jp = 0; jp < n_panels; ++jp) {
      const int nr = (int)std::min<int64_t>(NR, nlen - jp * NR);
      for (int64_t ip = 0; ip < m_panels; ++ip) {
        const int mr = (int)std::min<int64_t>(MR, mlen - ip * MR);
        micro_kernel<T>(kc, PackedA<T>{abuf + ip * kc * MR}, PackedB<T>{bbuf + jp * kc * NR}, acc);
        store_tile<T>(acc, mr, nr, c + ip * MR * ldc + jp * NR, ldc, load_c, last, ep,
                      m_offset + ip * MR, n_offset + jp * NR);
      }
    }
  }
}

// Transposes a W x W block held as W vectors of type V (W lanes of T), in log2(W) stages: stage h
// swaps, in every pair of rows (r, r + h) with r & h == 0, the h-wide blocks off the diagonal
// (two-input lane shuffles). The shuffle masks are compile-time constants (built from index packs),
// so each stage compiles to fixed shuffles (unpck / shufps / vperm2f128 for 8 floats) instead of
// variable permutes.
template <typename IV, int W, int h, int... k>
constexpr IV transpose_mask(std::integer_sequence<int, k...>, bool hi) {
  return hi ? IV{((k & h) ? W + k : k + h)...} : IV{((k & h) ? W + k - h : k)...};
}

template <typename T, int W, int h, typename V>
inline void transpose_stage(V* rows) {
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef I IV __attribute__((vector_size(sizeof(V))));
  constexpr IV lo = transpose_mask<IV, W, h>(std::make_integer_sequence<int, W>{}, false);
  constexpr IV hi = transpose_mask<IV, W, h>(std::make_integer_sequence<int, W>{}, true);
  for (int r = 0; r < W; ++r)
    if (!(r & h)) {
      const V a = rows[r], b = rows[r + h];
      rows[r] = __builtin_shuffle(a, b, lo);
      rows[r + h] = __builtin_shuffle(a, b, hi);
    }
  if constexpr (h > 1) transpose_stage<T, W, h / 2>(rows);
}

template <typename T, int W, typename V>
inline void transpose_square(V* rows) {
  static_assert(sizeof(V) == W * sizeof(T), "W lanes of T per vector");
  transpose_stage<T, W, W / 2>(rows);
}

// The same for one full vector register (Tile<T>::W lanes).
template <typename T>
inline void transpose_block(typename Tile<T>::V* rows) {
  transpose_square<T, Tile<T>::W>(rows);
}

// Panels of a transpose: dst[p][c][t] = src[(p * NR + t) * ld + c] for c < cols, t < NR, zero
// where p * NR + t >= rows. Whole W x W blocks go through transpose_block; the last cols % W
// columns are copied one by one.
template <typename T>
void pack_transposed_panels(const T* __restrict__ src, int64_t rows, int64_t cols, int64_t ld,
                            T* __restrict__ dst) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W, NR = Tile<T>::NR;
  for (int64_t p = 0; p * NR < rows; ++p) {
    T* __restrict__ d = dst + p * cols * NR;
    int64_t c0 = 0;
    for (; c0 + W <= cols; c0 += W)
      for (int half = 0; half < 2; ++half) {
        V blk[W];
        for (int i = 0; i < W; ++i) {
          const int64_t r = p * NR + half * W + i;
          if (r < rows) std::memcpy(&blk[i], src + r * ld + c0, sizeof(V));
          else blk[i] = V{};
        }
        transpose_block<T>(blk);
        for (int l = 0; l < W; ++l) std::memcpy(d + (c0 + l) * NR + half * W, &blk[l], sizeof(V));
      }
    for (int64_t c = c0; c < cols; ++c)
      for (int t = 0; t < NR; ++t) {
        const int64_t r = p * NR + t;
        d[c * NR + t] = r < rows ? src[r * ld + c] : T(0);
      }
  }
}

// A[i][k] = src[i * rs + k * cs] for i < rows, k < kc, packed as panels [kc][MR] (zero rows pad).
template <typename T>
void pack_a_strided(const T* __restrict__ src, int64_t rows, int64_t kc, int64_t rs, int64_t cs,
                    T* __restrict__ dst) {
  constexpr int MR = Tile<T>::MR;
  for (int64_t p = 0; p * MR < rows; ++p) {
    T* __restrict__ d = dst + p * kc * MR;
    const int mr = (int)std::min<int64_t>(MR, rows - p * MR);
    if (mr < MR) std::memset(d, 0, sizeof(T) * kc * MR);
    const T* __restrict__ s = src + p * MR * rs;
    if (rs == 1) {  // rows adjacent in memory: copy MR-long runs
      for (int64_t k = 0; k < kc; ++k)
        for (int i = 0; i < mr; ++i) d[k * MR + i] = s[k * cs + i];
    } else {        // walk each row along k
      for (int i = 0; i < mr; ++i)
        for (int64_t k = 0; k < kc; ++k) d[k * MR + i] = s[i * rs + k * cs];
    }
  }
}

// d[0..n) = s[0..n) in whole vectors, then a masked vector (AVX-512) or single elements: the short rows
// of the padded copies (30 to 60 floats) would otherwise each be a call to memmove, which measured
// 2-3x slower than the memory bandwidth there (an Intel Xeon, AVX-512).
template <typename T>
__attribute__((optimize("no-tree-loop-distribute-patterns"))) inline void copy_run(T* __restrict__ d,
                                                                                   const T* __restrict__ s,
                                                                                   int64_t n) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    V v;
    std::memcpy(&v, s + i, sizeof(V));
    std::memcpy(d + i, &v, sizeof(V));
  }
  if (i == n) return;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && sizeof(T) == 4) {
    const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(d + i, k, _mm512_maskz_loadu_ps(k, s + i));
    return;
  } else if constexpr (sizeof(V) == 64 && sizeof(T) == 8) {
    const __mmask8 k = (__mmask8)((1u << (n - i)) - 1);
    _mm512_mask_storeu_pd(d + i, k, _mm512_maskz_loadu_pd(k, s + i));
    return;
  }
#endif
  for (; i < n; ++i) d[i] = s[i];
}

// dst = C planes of Hp x Wp holding src (C planes of H x W) placed at (top, left) -- either may
// be negative, which crops -- with zeros elsewhere, then `slack` zeros.
template <typename T>
__attribute__((optimize("no-tree-loop-distribute-patterns"))) void pad_planes(const T* __restrict__ src, int64_t C, int64_t H, int64_t W, int64_t top, int64_t left, int64_t Hp,
                int64_t Wp, T* __restrict__ dst, int64_t slack) {
  const int64_t x_lo = std::clamp<int64_t>(left, 0, Wp), x_hi = std::clamp<int64_t>(W + left, x_lo, Wp);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t y = 0; y < Hp; ++y) {
      T* __restrict__ d = dst + (c * Hp + y) * Wp;
      const int64_t sy = y - top;
      if (sy < 0 || sy >= H) {
        std::memset(d, 0, sizeof(T) * Wp);
        continue;
      }
      const T* __restrict__ s = src + (c * H + sy) * W - left;
      for (int64_t x = 0; x < x_lo; ++x) d[x] = T(0);
      copy_run(d + x_lo, s + x_lo, x_hi - x_lo);
      for (int64_t x = x_hi; x < Wp; ++x) d[x] = T(0);
    }
  std::memset(dst + C * Hp * Wp, 0, sizeof(T) * slack);
}

}  // namespace fastconv::cpu
