// gemm.cuh: the tiled GEMM engine behind every CUDA convolution and linear kernel (conv2d.cu,
// linear.cu). It computes, for each group g,
//     C_g[m][n] = sum_k A_g(m, k) * B_g(k, n),   0 <= m < M, 0 <= n < N, 0 <= k < K,
// where a Problem supplies the operands element by element -- an implicit im2col, a transposed or
// strided view -- so no im2col or transposed copy ever exists in global memory, and stores each
// result through its own epilogue (bias, activation, a split-K partial).
//
// Three kernels implement it: gemm_kernel on CUDA cores (float32, float64; described here),
// gemm_simt8_kernel on CUDA cores with 8 x 8 register tiles and 128-row block tiles (float32
// problems with enough blocks to fill a large GPU; described before it), and gemm_tc_kernel on
// tensor cores (float16, bfloat16, and float32 as tf32 when allowed; described before it), chosen per
// dtype and size by gemm::run. They share the Problem interface, the grid and split-K, so every op
// runs on any.
//
// No division in the main loops. Each thread walks K along its own row of A and column of B with a
// cursor that the Problem decomposes once, in the prologue (e.g. k -> input channel, kernel row,
// kernel column, and the input coordinates they address); afterwards the cursor only moves forward,
// by one element (next) or by a fixed jump to the thread's first element of the next K step (jump,
// decomposed on the host), with adds and compares carrying from one index to the next. The few
// prologue and epilogue decompositions (a block's group, a thread's output pixel) divide by
// multiplying with a precomputed reciprocal (FastDiv): no integer-division subroutine anywhere.
//
// Tiling: a 256-thread block owns a BM x BN = 64 x 64 tile of C and walks K in steps of BK = 16.
// Each step stages a 16 x 64 slab of A and of B in shared memory (in the arithmetic type, so 16-bit
// inputs are converted once, when loaded); the slabs are double-buffered: while the block multiplies
// from one buffer, each thread's loads for the next step are already in registers, and are written
// to the other buffer after the multiply, so one __syncthreads per step suffices. Thread (ty, tx)
// of the 16 x 16 thread grid accumulates a 4 x 4 register tile, rows 4 ty .. 4 ty + 3 and columns
// 4 tx .. 4 tx + 3: per k it reads its 4 values of A and of B as one 16-byte shared load each (the
// 16 threads of a half-warp read 256 consecutive bytes of B, conflict-free; A is a broadcast).
// Loads: thread t loads elements (m = t % 64, k = 4 (t / 64) + i), i < 4, of each slab (4
// consecutive k: one cursor step each): a warp touches 32 consecutive m (or n), coalesced when the
// Problem's operand is contiguous along m (or n).
// Per step and block: 2 * 64 * 64 * 16 = 131072 FLOPs against 2 * 16 * 64 elements loaded: 64 FLOPs
// per element staged, 32 per shared-memory word read.
// Split-K: gridDim.z > 1 cuts K into gridDim.z contiguous ranges (whole BK steps); the Problem's
// store then receives the split index and writes a partial, which a second kernel sums in split
// order: deterministic, no float atomics.
// Grid: x = M tiles, y = groups x N tiles (launches of at most 65535 rows: gemm::run cuts the groups
// into several launches when there are more), z = K splits.
#pragma once

#include <cstdlib>
#include <type_traits>

#include "cuda/async_copy.cuh"
#include "cuda/common.cuh"
#include "cuda/mma.cuh"

namespace fastconv::FC_NS::kernels {
namespace gemm {

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256;
constexpr int kTM = 4, kTN = 4;  // register tile of a thread
constexpr int kLoads = kBM * kBK / kThreads;  // consecutive K elements of each slab a thread loads per step
constexpr int64_t kMaxGridY = 65535;
// Blocks from which float32 runs on the 8 x 8 SIMT kernel (two waves of 132 SMs x 2 blocks);
// FASTCONV_SIM_SIMT8_MIN_BLOCKS lowers it in the simulator, whose tests are small.
#if defined(__CUDACC__)
constexpr int64_t kSimt8MinBlocks = 528;
#else
inline const int64_t kSimt8MinBlocks = [] {
  const char* v = std::getenv("FASTCONV_SIM_SIMT8_MIN_BLOCKS");
  return v ? std::atoll(v) : int64_t(528);
}();
#endif

// n / d for 0 <= n < 2^31 and 1 <= d < 2^31 as a multiply and a shift (Granlund and Montgomery's
// round-up method: l = ceil(log2 d), mul = floor(2^32 (2^l - d) / d) + 1, n / d = (mulhi(n, mul) + n)
// >> l, exact for every 32-bit n; the sum fits 32 bits for n < 2^31). Built on the host.
struct FastDiv {
  uint32_t d = 1, mul = 1, shift = 0;
  FastDiv() = default;
  explicit FastDiv(int64_t divisor) : d(static_cast<uint32_t>(divisor)) {
    while ((uint64_t(1) << shift) < d) ++shift;
    mul = static_cast<uint32_t>((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d) / d + 1);
  }
  __host__ __device__ int div(int n) const {
    const uint32_t u = static_cast<uint32_t>(n);
    return static_cast<int>((static_cast<uint32_t>((static_cast<uint64_t>(u) * mul) >> 32) + u) >> shift);
  }
};

// A non-negative int as quotient and remainder by a divisor D (0 <= r < D), kept exact under
// additions and subtractions of values whose own QR is known: the stride arithmetic of the grad-input
// cursor, without dividing.
struct QR {
  int q, r;
};
__host__ __device__ inline void qr_sub(QR& x, const QR& y, int d) {
  x.q -= y.q;
  x.r -= y.r;
  if (x.r < 0) {
    x.r += d;
    --x.q;
  }
}
__host__ __device__ inline void qr_add(QR& x, const QR& y, int d) {
  x.q += y.q;
  x.r += y.r;
  if (x.r >= d) {
    x.r -= d;
    ++x.q;
  }
}
inline QR qr_of(int64_t v, int64_t d) { return QR{static_cast<int>(v / d), static_cast<int>(v % d)}; }

// Where a block sits in the problem, from the host: N tiles per group (as a FastDiv of blockIdx.y),
// the first group of the launch, K steps per split.
struct Tiles {
  FastDiv n_tiles;
  int group0;
  int steps;
};

// Whether a Problem offers contiguous segments of A (a_seg / a_leap).
template <typename P, typename = void>
struct HasSegments : std::false_type {};
template <typename P>
struct HasSegments<P, std::void_t<decltype(&P::set_leap)>> : std::true_type {};

// K steps of `bk` per split, for `splits` splits of K.
inline int steps_per_split(int64_t k, int64_t splits, int bk) {
  const int64_t steps = ceil_div(k, static_cast<int64_t>(bk));
  return static_cast<int>(ceil_div(steps, splits));
}

// The block's group, M and N offsets, and K range.
struct BlockTile {
  int64_t g, m0, n0, k_begin, k_end;
};
template <typename Problem>
__device__ inline BlockTile block_tile(const Problem& p, const Tiles& tl, int bk, int bm = kBM) {
  const int y = static_cast<int>(blockIdx.y), gy = tl.n_tiles.div(y);
  BlockTile b;
  b.g = tl.group0 + gy;
  b.m0 = static_cast<int64_t>(blockIdx.x) * bm;
  b.n0 = static_cast<int64_t>(y - gy * static_cast<int>(tl.n_tiles.d)) * kBN;
  b.k_begin = static_cast<int64_t>(blockIdx.z) * tl.steps * bk;
  const int64_t end = b.k_begin + static_cast<int64_t>(tl.steps) * bk;
  b.k_end = p.K < end ? p.K : end;
  return b;
}

// Problem interface (T is the storage type, A = acc_t<T> the arithmetic type):
//   int64_t M, N, K, groups;
//   ACur a_begin(g, m, k) const;      a thread's cursor on row m of A_g at k (the prologue: divides by
//                                     FastDivs only)
//   const T* a_at(const ACur&) const;  the element's address, nullptr where A is 0 (padding)
//   void a_next(ACur&) const;          k + 1
//   void a_jump(ACur&) const;          k + the jump set by set_jump
//   BCur b_begin(g, n, k), b_at, b_next, b_jump: the same for B_g(k, n)
//   const T* a_run(g, m) const;  &A_g(m, 0) when row m is contiguous along K and 16-byte aligned
//   const T* b_run(g, n) const;  (a K step of it then loads as 16-byte copies), else nullptr;
//                                used by the tensor-core kernel
//   void set_jump(int64_t d);     host: decomposes the jump d that a_jump / b_jump advance by
// and, optionally (channels-last convolutions, whose A rows are contiguous along runs of channels):
//   int a_seg(const ACur&, int len, const T*& p) const;  1: the len elements from the cursor on are
//                                 contiguous, from p; 2: they are all 0 (padding); 0: neither
//   void a_leap(ACur&) const;  void set_leap(int64_t d);  k + d (the tensor-core kernel's K step)
//   Out out_at(g, m) const;  void out_next(Out&, int d) const;   an output row's cursor; m + d
//   void store(const Out&, g, split, n, A value) const;
// Cursors are positioned past the operand's end as freely as inside it: the kernels read only the
// elements with k < K (their own k counter) of rows and columns inside the problem.

// Four consecutive values of a shared slab row, read as one (float: one 128-bit shared load; double: two).
template <typename A>
struct __align__(16) Quad {
  A v[4];
};

// One block of 256 threads per (M tile, group x N tile, K split); see the file comment. Launch bounds
// of two blocks per SM leave it up to 128 registers (float32); float64, whose accumulators and
// staged values take two registers each, gets 255 (one block per SM): at 128 the grad-input
// cursor's float64 build spilled on sm_90.
template <typename A, typename Problem>
__global__ void __launch_bounds__(kThreads, sizeof(A) == 8 ? 1 : 2) gemm_kernel(Problem p, Tiles tl) {
  __shared__ __align__(16) A as[2][kBK][kBM];
  __shared__ __align__(16) A bs[2][kBK][kBN];
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
  const BlockTile bt = block_tile(p, tl, kBK);
  const int64_t g = bt.g, m0 = bt.m0, n0 = bt.n0, k_end = bt.k_end;

  // this thread's row of the A slab and column of the B slab, and its 4 consecutive K elements
  const int lm = t % kBM, lk = (t / kBM) * kLoads;
  const bool m_in = m0 + lm < p.M, n_in = n0 + lm < p.N;
  auto ac = p.a_begin(g, m_in ? m0 + lm : 0, bt.k_begin + lk);
  auto bc = p.b_begin(g, n_in ? n0 + lm : 0, bt.k_begin + lk);
  int64_t kl = bt.k_begin + lk;  // K index of the next element this thread loads
  A ra[kLoads], rb[kLoads];
  const auto load = [&]() {
    FC_UNROLL
    for (int i = 0; i < kLoads; ++i) {
      const bool k_in = kl + i < k_end;
      const auto* pa = p.a_at(ac);
      const auto* pb = p.b_at(bc);
      ra[i] = m_in && k_in && pa ? to_acc(*pa) : A(0);
      rb[i] = n_in && k_in && pb ? to_acc(*pb) : A(0);
      if (i + 1 < kLoads) {
        p.a_next(ac);
        p.b_next(bc);
      } else {
        p.a_jump(ac);
        p.b_jump(bc);
      }
    }
    kl += kBK;
  };
  const auto stage = [&](int buf) {
    FC_UNROLL
    for (int i = 0; i < kLoads; ++i) {
      as[buf][lk + i][lm] = ra[i];
      bs[buf][lk + i][lm] = rb[i];
    }
  };

  A acc[kTM][kTN];
  for (int i = 0; i < kTM; ++i)
    for (int j = 0; j < kTN; ++j) acc[i][j] = A(0);

  int buf = 0;
  if (bt.k_begin < k_end) {
    load();
    stage(0);
  }
  __syncthreads();
  for (int64_t k0 = bt.k_begin; k0 < k_end; k0 += kBK) {
    const bool more = k0 + kBK < k_end;
    if (more) load();  // in flight while the block multiplies this step
    for (int kk = 0; kk < kBK; ++kk) {
      const Quad<A> a = *reinterpret_cast<const Quad<A>*>(&as[buf][kk][ty * kTM]);
      const Quad<A> b = *reinterpret_cast<const Quad<A>*>(&bs[buf][kk][tx * kTN]);
      for (int i = 0; i < kTM; ++i)
        for (int j = 0; j < kTN; ++j) acc[i][j] += a.v[i] * b.v[j];
    }
    if (more) stage(buf ^ 1);  // the other buffer: nobody reads it during this step
    __syncthreads();
    buf ^= 1;
  }

  const int64_t m_first = m0 + ty * kTM;
  if (m_first >= p.M) return;
  auto out = p.out_at(g, m_first);
  for (int i = 0; i < kTM; ++i) {
    if (m_first + i >= p.M) break;
    if (i > 0) p.out_next(out, 1);
    for (int j = 0; j < kTN; ++j) {
      const int64_t n = n0 + tx * kTN + j;
      if (n < p.N) p.store(out, g, blockIdx.z, n, acc[i][j]);
    }
  }
}

// ------------------------------------------------------------------------------ SIMT, 8 x 8
// The float32 SIMT kernel for problems with enough tiles to fill a large GPU: a 128-thread block per
// 128 x 64 tile (kS8M x kBN), K in steps of 16 in double-buffered shared memory as above, each thread
// accumulating 8 x 8 results: rows 4 ty + i and 64 + 4 ty + i, columns 4 tx + j and 32 + 4 tx + j
// (i, j < 4; ty < 16, tx < 8), so that per k its four 16-byte shared loads are one wavefront each (a
// warp reads 4 distinct A quads, broadcast, and 8 consecutive B quads) for 64 FMAs -- twice the FMAs
// per shared load of the 4 x 4 kernel, and a block tile that reads 2 x 128 x 64 x 16 FLOPs' worth of
// operands with 192 x 16 elements (85 FLOPs per element staged against 64).
// Loads: thread t fills rows t % 64 and 64 + t % 64 of the A slab and column t % 64 of the B slab at
// k = 8 (t / 64) .. 8 (t / 64) + 7 (the cursor jump is 9, as the tf32 kernel's).
constexpr int kS8M = 128, kS8Threads = 128, kS8Loads = 8;

template <typename Problem>
__global__ void __launch_bounds__(kS8Threads, 2) gemm_simt8_kernel(Problem p, Tiles tl) {
  __shared__ __align__(16) float as[2][kBK][kS8M];
  __shared__ __align__(16) float bs[2][kBK][kBN];
  const int t = threadIdx.x, tx = t % 8, ty = t / 8;
  const BlockTile bt = block_tile(p, tl, kBK, kS8M);
  const int64_t g = bt.g, m0 = bt.m0, n0 = bt.n0, k_end = bt.k_end;

  const int lr = t % 64, lk = (t / 64) * kS8Loads;
  const bool m_in0 = m0 + lr < p.M, m_in1 = m0 + 64 + lr < p.M, n_in = n0 + lr < p.N;
  auto ac0 = p.a_begin(g, m_in0 ? m0 + lr : 0, bt.k_begin + lk);
  auto ac1 = p.a_begin(g, m_in1 ? m0 + 64 + lr : 0, bt.k_begin + lk);
  auto bc = p.b_begin(g, n_in ? n0 + lr : 0, bt.k_begin + lk);
  int64_t kl = bt.k_begin + lk;
  float ra0[kS8Loads], ra1[kS8Loads], rb[kS8Loads];
  const auto load = [&]() {
    FC_UNROLL
    for (int i = 0; i < kS8Loads; ++i) {
      const bool k_in = kl + i < k_end;
      const float* pa0 = p.a_at(ac0);
      const float* pa1 = p.a_at(ac1);
      const float* pb = p.b_at(bc);
      ra0[i] = m_in0 && k_in && pa0 ? *pa0 : 0.0f;
      ra1[i] = m_in1 && k_in && pa1 ? *pa1 : 0.0f;
      rb[i] = n_in && k_in && pb ? *pb : 0.0f;
      if (i + 1 < kS8Loads) {
        p.a_next(ac0);
        p.a_next(ac1);
        p.b_next(bc);
      } else {
        p.a_jump(ac0);
        p.a_jump(ac1);
        p.b_jump(bc);
      }
    }
    kl += kBK;
  };
  const auto stage = [&](int buf) {
    FC_UNROLL
    for (int i = 0; i < kS8Loads; ++i) {
      as[buf][lk + i][lr] = ra0[i];
      as[buf][lk + i][64 + lr] = ra1[i];
      bs[buf][lk + i][lr] = rb[i];
    }
  };

  float acc[8][8];
  FC_UNROLL
  for (int i = 0; i < 8; ++i)
    FC_UNROLL
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

  int buf = 0;
  if (bt.k_begin < k_end) {
    load();
    stage(0);
  }
  __syncthreads();
  for (int64_t k0 = bt.k_begin; k0 < k_end; k0 += kBK) {
    const bool more = k0 + kBK < k_end;
    if (more) load();
    FC_UNROLL
    for (int kk = 0; kk < kBK; ++kk) {
      const Quad<float> a0 = *reinterpret_cast<const Quad<float>*>(&as[buf][kk][ty * 4]);
      const Quad<float> a1 = *reinterpret_cast<const Quad<float>*>(&as[buf][kk][64 + ty * 4]);
      const Quad<float> b0 = *reinterpret_cast<const Quad<float>*>(&bs[buf][kk][tx * 4]);
      const Quad<float> b1 = *reinterpret_cast<const Quad<float>*>(&bs[buf][kk][32 + tx * 4]);
      FC_UNROLL
      for (int i = 0; i < 4; ++i)
        FC_UNROLL
        for (int j = 0; j < 4; ++j) {
          acc[i][j] += a0.v[i] * b0.v[j];
          acc[i][4 + j] += a0.v[i] * b1.v[j];
          acc[4 + i][j] += a1.v[i] * b0.v[j];
          acc[4 + i][4 + j] += a1.v[i] * b1.v[j];
        }
    }
    if (more) stage(buf ^ 1);
    __syncthreads();
    buf ^= 1;
  }

  FC_UNROLL
  for (int h = 0; h < 2; ++h) {  // the two groups of 4 rows
    const int64_t m_first = m0 + 64 * h + ty * 4;
    if (m_first >= p.M) break;
    auto out = p.out_at(g, m_first);
    FC_UNROLL
    for (int i = 0; i < 4; ++i) {
      if (m_first + i >= p.M) break;
      if (i > 0) p.out_next(out, 1);
      FC_UNROLL
      for (int j = 0; j < 8; ++j) {
        const int64_t n = n0 + (j < 4 ? tx * 4 + j : 32 + tx * 4 + j - 4);
        if (n < p.N) p.store(out, g, blockIdx.z, n, acc[4 * h + i][j]);
      }
    }
  }
}

// The grid of sum_splits_kernel: blocks of kSumThreads, at most kSumMaxBlocks of them.
constexpr int kSumThreads = 256;
constexpr int64_t kSumMaxBlocks = 4096;

// out[i] = sum over s < splits of partial[s * count + i], in split order; one thread per element,
// grid-stride.
template <typename T, typename A>
__global__ void sum_splits_kernel(const A* __restrict__ partial, T* __restrict__ out, int64_t count, int splits) {
  for (const int64_t i : grid_stride(count)) {
    A s = partial[i];
    for (int z = 1; z < splits; ++z) s += partial[z * count + i];
    out[i] = from_acc<T>(s);
  }
}

// ---------------------------------------------------------------------------- tensor cores
// The tensor-core variant (float16 / bfloat16 inputs; float32 inputs when tf32 is allowed), same
// Problem interface, same 64 x 64 block tile, same grid and split-K, accumulating in float32:
// 128 threads = 4 warps in a 2 x 2 arrangement, each warp owning a 32 x 32 quarter of the tile as
// 2 x 4 mma tiles of 16 x 8 (32 float accumulators per thread). A K step is 16 32-bit words of K:
// 32 elements for 16-bit inputs (2 x m16n8k16 per mma tile), 16 for tf32 (2 x m16n8k8).
//
// Shared memory holds each slab row-major along K, as the packed words the fragments want:
// as[m][word], bs[n][word], rows padded to 20 words (80 bytes: 16-byte aligned rows for cp.async and
// ldmatrix, and the 8 rows of one ldmatrix phase start 20 words apart, so they hit 32 different
// banks). A ring of kTcStages = 3 stages (30 KiB) is filled asynchronously: in the iteration that
// multiplies step i, the block issues the copies of step i + 2 into the stage step i - 1 used, so two
// steps of loads are in flight behind every multiply.
//
// Loads: thread t fills words 8 (t / 64) .. 8 (t / 64) + 7 of row t % 64 of each slab (consecutive
// lanes take consecutive m or n, as in the SIMT kernel), by the cheapest way the operand allows:
//   - a row contiguous along K and 16-byte aligned (a_run / b_run: linear's inputs and weights,
//     convolution's filters), a whole step: two 16-byte cp.async (LDGSTS.128);
//   - a segment of the row contiguous for the thread's 8 words (a_seg: a channels-last input, where
//     K runs along the channels of one tap), aligned: the same two 16-byte copies (or zeros);
//   - float32 (tf32) elements otherwise: one 4-byte cp.async each;
//   - 16-bit elements: a 4-byte cp.async per pair of K-adjacent elements that are adjacent and
//     aligned in memory; other pairs are loaded into registers, packed, and stored to the stage after
//     the multiply (their loads in flight during it);
//   - zeros (padding, K tails, rows outside the problem) are stored at once.
// Fragments come from shared memory by ldmatrix.x4 (no .trans: both slabs are K-contiguous rows,
// which is the layout mma's row-major A and column-major B fragments take directly): one per 16 x 8
// words of A (a whole m16 fragment) and one per two n8 fragments of B. tf32 words arrive as the raw
// float32 bits and are rounded to tf32 (cvt.rna) in registers.
// Per K step and block: 2 * 64 * 64 * 32 = 262144 FLOPs (16-bit) on 2 * 64 * 32 elements: 64 FLOPs
// per element staged. Launch bounds of three blocks per SM (up to 168 registers; 90 KiB of shared
// memory).
constexpr int kTcThreads = 128, kTcWords = 16, kTcRow = 20, kTcStages = 3;

// Whether rows `stride` elements apart from `base` all start on 16 bytes (a_run / b_run may then
// hand them out, with their elements contiguous).
template <typename T>
inline bool aligned_rows(const T* base, int64_t stride) {
  return is_aligned(base, 16) && (stride * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}
constexpr int kTcWordLoads = kBM * kTcWords / kTcThreads;  // words of each slab a thread loads per step

template <typename Kind>
__device__ __forceinline__ uint32_t word_of(const typename Kind::In* v) {
  if constexpr (Kind::kPerWord == 2)
    return mma::pack(v[0], v[1]);
  else
    return __float_as_uint(v[0]);
}

// One operand's share of a step for one thread: the 8 words of its slab row. Words that cannot be
// copied asynchronously wait in `reg` (bit i of `pending`: word i) until store_pending.
struct TcPending {
  uint32_t reg[kTcWordLoads];
  uint32_t pending;
};

// Issues this thread's 8 words of one operand for the step starting at k0 into `dst` (its row of the
// stage). `run`: the row's contiguous base or nullptr; `in`: the row is inside the problem; the
// cursor functions walk its elements (and are advanced past the step, when used).
template <typename Kind, typename T, typename Cur, typename At, typename Next, typename Jump, typename Seg,
          typename Leap>
__device__ __forceinline__ void tc_issue(uint32_t* dst, TcPending& st, const T* run, bool in, int64_t k0, int64_t k_end,
                                         int lw, Cur& cur, At at, Next next, Jump jump, Seg seg, Leap leap) {
  constexpr int E = Kind::kPerWord, BK = kTcWords * E;
  st.pending = 0;
  const int64_t first = k0 + lw * E;
  if (!in) {  // a row outside the problem: zeros, stored at once (nothing to wait for)
    FC_UNROLL
    for (int h = 0; h < kTcWordLoads / 4; ++h) reinterpret_cast<uint4*>(dst)[h] = make_uint4(0, 0, 0, 0);
    return;
  }
  if (run && k0 + BK <= k_end) {
    FC_UNROLL
    for (int h = 0; h < kTcWordLoads / 4; ++h) async::cp_async<16>(dst + 4 * h, run + first + 4 * E * h);
    return;
  }
  if (!run && k0 + BK <= k_end) {  // a contiguous (or all-zero) segment of the row: 16-byte copies
    const T* sp = nullptr;
    const int kind = seg(cur, kTcWordLoads * E, sp);
    if (kind == 2 || (kind == 1 && is_aligned(sp, 16))) {
      FC_UNROLL
      for (int h = 0; h < kTcWordLoads / 4; ++h) {
        if (kind == 1)
          async::cp_async<16>(dst + 4 * h, sp + 4 * E * h);
        else
          reinterpret_cast<uint4*>(dst)[h] = make_uint4(0, 0, 0, 0);
      }
      leap(cur);
      return;
    }
  }
  FC_UNROLL
  for (int i = 0; i < kTcWordLoads; ++i) {
    const T* e[E];
    FC_UNROLL
    for (int j = 0; j < E; ++j) {
      const int64_t k = first + i * E + j;
      e[j] = k < k_end ? (run ? run + k : at(cur)) : nullptr;
      if (!run) {
        if (i * E + j + 1 < kTcWordLoads * E)
          next(cur);
        else
          jump(cur);
      }
    }
    if constexpr (E == 1) {
      if (e[0])
        async::cp_async<4>(dst + i, e[0]);
      else
        dst[i] = 0;  // padding
    } else {
      if (!e[0] && !e[1]) {
        dst[i] = 0;
      } else if (e[0] && e[1] == e[0] + 1 && is_aligned(e[0], 4)) {
        async::cp_async<4>(dst + i, e[0]);
      } else {
        const T v[2] = {e[0] ? *e[0] : zero<T>(), e[1] ? *e[1] : zero<T>()};
        st.reg[i] = word_of<Kind>(v);
        st.pending |= 1u << i;
      }
    }
  }
}

__device__ __forceinline__ void tc_store_pending(uint32_t* dst, const TcPending& st) {
  FC_UNROLL
  for (int i = 0; i < kTcWordLoads; ++i)
    if (st.pending & (1u << i)) dst[i] = st.reg[i];
}

template <typename Kind, typename Problem>
__global__ void __launch_bounds__(kTcThreads, 3) gemm_tc_kernel(Problem p, Tiles tl) {
  using In = typename Kind::In;
  constexpr int E = Kind::kPerWord, BK = kTcWords * E, S = kTcStages;
  __shared__ __align__(16) uint32_t as[S][kBM][kTcRow];
  __shared__ __align__(16) uint32_t bs[S][kBN][kTcRow];
  const int t = threadIdx.x, lane = t % kWarpSize, warp = t / kWarpSize;
  const int wm = warp % 2, wn = warp / 2, grp = lane / 4, tig = lane % 4;
  const BlockTile bt = block_tile(p, tl, BK);
  const int64_t g = bt.g, m0 = bt.m0, n0 = bt.n0, k_end = bt.k_end;

  const int lm = t % kBM, lw = (t / kBM) * kTcWordLoads;
  const bool m_in = m0 + lm < p.M, n_in = n0 + lm < p.N;
  const In* const a_run = m_in ? p.a_run(g, m0 + lm) : nullptr;
  const In* const b_run = n_in ? p.b_run(g, n0 + lm) : nullptr;
  auto ac = p.a_begin(g, m_in ? m0 + lm : 0, bt.k_begin + lw * E);
  auto bc = p.b_begin(g, n_in ? n0 + lm : 0, bt.k_begin + lw * E);
  TcPending pa, pb;
  // issues the step at k0 into stage s
  const auto a_seg = [&](const auto& c, int len, const In*& sp) -> int {
    if constexpr (HasSegments<Problem>::value)
      return p.a_seg(c, len, sp);
    else
      return 0;
  };
  const auto a_leap = [&](auto& c) {
    if constexpr (HasSegments<Problem>::value) p.a_leap(c);
  };
  const auto no_seg = [](const auto&, int, const In*&) { return 0; };
  const auto no_leap = [](auto&) {};
  const auto issue = [&](int s, int64_t k0) {
    tc_issue<Kind>(&as[s][lm][lw], pa, a_run, m_in, k0, k_end, lw, ac,
                   [&](const auto& c) { return p.a_at(c); }, [&](auto& c) { p.a_next(c); },
                   [&](auto& c) { p.a_jump(c); }, a_seg, a_leap);
    tc_issue<Kind>(&bs[s][lm][lw], pb, b_run, n_in, k0, k_end, lw, bc,
                   [&](const auto& c) { return p.b_at(c); }, [&](auto& c) { p.b_next(c); },
                   [&](auto& c) { p.b_jump(c); }, no_seg, no_leap);
  };
  const auto store_pending = [&](int s) {
    tc_store_pending(&as[s][lm][lw], pa);
    tc_store_pending(&bs[s][lm][lw], pb);
  };

  float acc[2][4][4];
  FC_UNROLL
  for (int i = 0; i < 2; ++i)
    FC_UNROLL
    for (int j = 0; j < 4; ++j)
      FC_UNROLL
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

  // the first S - 1 steps, one commit group each (empty past the end, so the group count per
  // iteration stays fixed)
  FC_UNROLL
  for (int s = 0; s < S - 1; ++s) {
    const int64_t k0 = bt.k_begin + s * BK;
    if (k0 < k_end) {
      issue(s, k0);
      store_pending(s);
    }
    async::cp_async_commit();
  }
  // ldmatrix row addresses of this lane (lane l: row l % 8 of matrix l / 8): A matrices 0-3 are rows
  // 0-7 / 8-15 at words 0-3 / 4-7 (fragment registers a0..a3); B matrices 0-3 are words 0-3 / 4-7 of
  // n rows 0-7, then of n rows 8-15 (b0, b1 of two n8 fragments)
  const int a_row = wm * 32 + lane % 8 + 8 * ((lane / 8) % 2), a_word = 4 * (lane / 16);
  const int b_row = wn * 32 + lane % 8 + 8 * (lane / 16), b_word = 4 * ((lane / 8) % 2);
  int read = 0, write = S - 1;
  for (int64_t k0 = bt.k_begin; k0 < k_end; k0 += BK) {
    async::cp_async_wait<S - 2>();  // this thread's copies of step `read` have landed
    __syncthreads();                // everyone's have, and everyone is done with stage `write`
    const int64_t k_next = k0 + (S - 1) * BK;
    const bool more = k_next < k_end;
    if (more) issue(write, k_next);
    async::cp_async_commit();
    FC_UNROLL
    for (int ks = 0; ks < kTcWords / 8; ++ks) {  // one mma K (8 words) at a time
      uint32_t af[2][4], bf[4][2];
      FC_UNROLL
      for (int mi = 0; mi < 2; ++mi) async::ldmatrix_x4(af[mi], &as[read][a_row + mi * 16][ks * 8 + a_word]);
      FC_UNROLL
      for (int nj = 0; nj < 2; ++nj) {
        uint32_t q[4];
        async::ldmatrix_x4(q, &bs[read][b_row + nj * 16][ks * 8 + b_word]);
        bf[2 * nj][0] = q[0];
        bf[2 * nj][1] = q[1];
        bf[2 * nj + 1][0] = q[2];
        bf[2 * nj + 1][1] = q[3];
      }
      if constexpr (E == 1) {
        FC_UNROLL
        for (int mi = 0; mi < 2; ++mi)
          FC_UNROLL
          for (int r = 0; r < 4; ++r) af[mi][r] = mma::to_tf32(__uint_as_float(af[mi][r]));
        FC_UNROLL
        for (int ni = 0; ni < 4; ++ni)
          FC_UNROLL
          for (int r = 0; r < 2; ++r) bf[ni][r] = mma::to_tf32(__uint_as_float(bf[ni][r]));
      }
      FC_UNROLL
      for (int mi = 0; mi < 2; ++mi)
        FC_UNROLL
        for (int ni = 0; ni < 4; ++ni) mma::mma_sync<Kind>(acc[mi][ni], af[mi], bf[ni]);
    }
    if (more) store_pending(write);  // read at iteration read + S - 1, after two barriers
    read = read + 1 == S ? 0 : read + 1;
    write = write + 1 == S ? 0 : write + 1;
  }
  async::cp_async_wait<0>();  // only empty groups are left; none may outlive the thread

  // rows of this thread's accumulators: base + 8 q for q = 2 mi + r / 2
  const int64_t m_first = m0 + wm * 32 + grp;
  if (m_first >= p.M) return;
  auto out = p.out_at(g, m_first);
  FC_UNROLL
  for (int q = 0; q < 4; ++q) {
    if (m_first + 8 * q >= p.M) break;
    if (q > 0) p.out_next(out, 8);
    FC_UNROLL
    for (int ni = 0; ni < 4; ++ni)
      FC_UNROLL
      for (int c = 0; c < 2; ++c) {
        const int64_t n = n0 + wn * 32 + ni * 8 + 2 * tig + c;
        if (n < p.N) p.store(out, g, blockIdx.z, n, acc[q / 2][ni][2 * (q % 2) + c]);
      }
  }
}

}  // namespace gemm
}  // namespace fastconv::FC_NS::kernels

namespace fastconv::FC_NS::kernels {
namespace gemm {

// Runs a Problem on the right engine: tensor cores for float16 / bfloat16 (float32 accumulators),
// and for float32 when tf32 is allowed; a SIMT kernel otherwise (float32: 8 x 8 or 4 x 4 by size,
// float64: 4 x 4). The cursors' jump and leap are the kernel's (set on this copy of the Problem).
// Grids of more than 65535 group x N tiles are launched in slices of whole groups.
template <typename P>
int run(P p, int64_t splits, bool tf32, Stream stream) {
  using T = typename P::Storage;
  constexpr bool tensor_cores_16 = std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;
  const bool tc = tensor_cores_16 || (std::is_same<T, float>::value && tf32);
  const int per_word = tensor_cores_16 ? 2 : 1;
  const int bk = tc ? kTcWords * per_word : kBK;
  const int64_t n_tiles = ceil_div(p.N, static_cast<int64_t>(kBN));
  if (n_tiles > kMaxGridY) return kTooLarge;
  // float32 on CUDA cores: the 8 x 8 kernel's 128-row tiles where they still give the GPU two waves of
  // blocks (132 SMs x 2), else the 4 x 4 kernel's 64-row ones
  const bool simt8 = std::is_same<T, float>::value && !tc &&
                     ceil_div(p.M, static_cast<int64_t>(kS8M)) * n_tiles * p.groups * splits >= kSimt8MinBlocks;
  const int64_t bm = simt8 ? kS8M : kBM;
  // jump: from a thread's last element of one step to its first of the next (a step, less the elements
  // it loads, + 1); leap: a whole step
  p.set_jump(tc ? bk - kTcWordLoads * per_word + 1 : simt8 ? kBK - kS8Loads + 1 : kBK - kLoads + 1);
  if constexpr (HasSegments<P>::value) p.set_leap(bk);
  const int64_t per_launch = kMaxGridY / n_tiles;
  for (int64_t g0 = 0; g0 < p.groups; g0 += per_launch) {
    const int64_t groups = p.groups - g0 < per_launch ? p.groups - g0 : per_launch;
    const dim3 grid(static_cast<unsigned>(ceil_div(p.M, bm)), static_cast<unsigned>(groups * n_tiles),
                    static_cast<unsigned>(splits));
    const Tiles tl{FastDiv(n_tiles), static_cast<int>(g0), steps_per_split(p.K, splits, bk)};
    int err = 0;
    if constexpr (std::is_same<T, __half>::value)
      err = launch(gemm_tc_kernel<mma::F16, P>, grid, dim3(kTcThreads), 0, stream, p, tl);
    else if constexpr (std::is_same<T, __nv_bfloat16>::value)
      err = launch(gemm_tc_kernel<mma::BF16, P>, grid, dim3(kTcThreads), 0, stream, p, tl);
    else if constexpr (std::is_same<T, float>::value)
      err = tf32     ? launch(gemm_tc_kernel<mma::TF32, P>, grid, dim3(kTcThreads), 0, stream, p, tl)
            : simt8 ? launch(gemm_simt8_kernel<P>, grid, dim3(kS8Threads), 0, stream, p, tl)
                    : launch(gemm_kernel<float, P>, grid, dim3(kThreads), 0, stream, p, tl);
    else
      err = launch(gemm_kernel<typename P::A, P>, grid, dim3(kThreads), 0, stream, p, tl);
    if (err) return err;
  }
  return 0;
}

// How many K splits a reduction GEMM (the weight gradients) uses: enough blocks to fill a large GPU
// (~512), each split at least 8 K steps long.
inline int64_t splits_for(int64_t m, int64_t n, int64_t k, int64_t groups) {
  const int64_t tiles = ceil_div(m, kBM) * ceil_div(n, kBN) * groups;
  const int64_t steps = ceil_div(k, kBK);
  int64_t splits = 512 / (tiles > 0 ? tiles : 1);
  if (splits > steps / 8) splits = steps / 8;
  if (splits > 256) splits = 256;
  return splits < 1 ? 1 : splits;
}

// Bytes of the split-K partials of an M x N x groups result (none when one split does).
template <typename A>
int64_t split_workspace_bytes(int64_t m, int64_t n, int64_t k, int64_t groups) {
  const int64_t splits = splits_for(m, n, k, groups);
  return splits > 1 ? splits * m * n * groups * static_cast<int64_t>(sizeof(A)) : 0;
}

// out[m][n] = bias[n] + the split-ordered sum of partial[s][m][n]: split-K with a bias. Blocks of 256
// threads along n (coalesced), rows strided over the grid's y: no division.
template <typename T, typename A>
__global__ void sum_splits_bias_kernel(const A* __restrict__ partial, const T* __restrict__ bias, T* __restrict__ out,
                                       int64_t rows, int64_t cols, int splits) {
  const int64_t count = rows * cols;
  for (int64_t m = blockIdx.y; m < rows; m += gridDim.y)
    for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < cols;
         n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = m * cols + n;
      A s = partial[i];
      for (int z = 1; z < splits; ++z) s += partial[z * count + i];
      out[i] = from_acc<T>(s + to_acc(bias[n]));
    }
}

// A launcher's tail for a split-K result: nothing when one split wrote the output itself, else the
// ordered sum of the partials into it.
template <typename T, typename A>
int finish_splits(const A* partial, T* out, int64_t count, int64_t splits, Stream stream) {
  if (splits <= 1 || count == 0) return 0;
  return launch(sum_splits_kernel<T, A>, grid_1d(count, kSumThreads, kSumMaxBlocks), dim3(kSumThreads), 0, stream,
                partial, out, count, static_cast<int>(splits));
}
// The same for a [rows, cols] result with a bias per column (bias null: finish_splits).
template <typename T, typename A>
int finish_splits(const A* partial, const T* bias, T* out, int64_t rows, int64_t cols, int64_t splits, Stream stream) {
  if (!bias) return finish_splits(partial, out, rows * cols, splits, stream);
  if (splits <= 1 || rows * cols == 0) return 0;
  const int64_t col_blocks = ceil_div(cols, static_cast<int64_t>(kSumThreads));
  const dim3 grid(static_cast<unsigned>(col_blocks < 64 ? col_blocks : 64),
                  static_cast<unsigned>(rows < kMaxGridY ? rows : kMaxGridY));
  return launch(sum_splits_bias_kernel<T, A>, grid, dim3(kSumThreads), 0, stream, partial, bias, out, rows, cols,
                static_cast<int>(splits));
}

}  // namespace gemm
}  // namespace fastconv::FC_NS::kernels
