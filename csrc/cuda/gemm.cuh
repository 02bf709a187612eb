// gemm.cuh: the tiled GEMM engine behind every CUDA convolution and linear kernel (conv2d.cu,
// linear.cu). It computes, for each group g,
//     C_g[m][n] = sum_k A_g(m, k) * B_g(k, n),   0 <= m < M, 0 <= n < N, 0 <= k < K,
// where a Problem supplies the operands element by element -- an implicit im2col, a transposed or
// strided view -- so no im2col or transposed copy ever exists in global memory, and stores each
// result through its own epilogue (bias, ReLU, a split-K partial).
//
// Two kernels implement it: gemm_kernel on CUDA cores (float32, float64; described here) and
// gemm_tc_kernel on tensor cores (float16, bfloat16, and float32 as tf32 when allowed; described
// before it below), chosen per dtype by gemm::run. They share the Problem interface, the block tile,
// the grid and split-K, so every op runs on either.
//
// Tiling: a 256-thread block owns a BM x BN = 64 x 64 tile of C and walks K in steps of BK = 16.
// Each step stages a 16 x 64 slab of A and of B in shared memory (in the arithmetic type, so 16-bit
// inputs are converted once, when loaded); the slabs are double-buffered: while the block multiplies
// from one buffer, each thread's loads for the next step are already in registers, and are written
// to the other buffer after the multiply, so one __syncthreads per step suffices. Thread (ty, tx)
// of the 16 x 16 thread grid accumulates a 4 x 4 register tile, rows 4 ty .. 4 ty + 3 and columns
// 4 tx .. 4 tx + 3: per k it reads its 4 values of A and of B as one 16-byte shared load each (the
// 16 threads of a half-warp read 256 consecutive bytes of B, conflict-free; A is a broadcast).
// Loads: thread t loads element (m = t % 64, k = t / 64 + 4 i), i < 4, of each slab: a warp touches
// 32 consecutive m (or n), coalesced when the Problem's operand is contiguous along m (or n).
// Per step and block: 2 * 64 * 64 * 16 = 131072 FLOPs against 2 * 16 * 64 elements loaded: 64 FLOPs
// per element staged, 32 per shared-memory word read.
// Split-K: gridDim.z > 1 cuts K into gridDim.z contiguous ranges (whole BK steps); the Problem's
// store then receives the split index and writes a partial, which a second kernel sums in split
// order: deterministic, no float atomics.
// Grid: x = M tiles, y = groups * N tiles, z = K splits.
#pragma once

#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/mma.cuh"

namespace fastconv::FC_NS::kernels {
namespace gemm {

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256;
constexpr int kTM = 4, kTN = 4;  // register tile of a thread
constexpr int kLoads = kBM * kBK / kThreads;  // elements of each slab a thread loads per step

// The grid of a problem of `groups` GEMMs of M x N, K cut into `splits` ranges.
inline dim3 grid_for(int64_t m, int64_t n, int64_t groups, int64_t splits) {
  return dim3(static_cast<unsigned>(ceil_div(m, kBM)), static_cast<unsigned>(groups * ceil_div(n, kBN)),
              static_cast<unsigned>(splits));
}

// K steps of `bk` per split, for `splits` splits of K (K < 2^31: 32-bit division, which the GPU inlines).
__host__ __device__ inline int steps_per_split(int64_t k, int splits, int bk = kBK) {
  const int steps = static_cast<int>(ceil_div(k, bk));
  return ceil_div(steps, splits);
}

// Problem interface (T is the storage type, A = acc_t<T> the arithmetic type):
//   int64_t M, N, K, groups;
//   Row a_row(g, m) const;          what a thread precomputes for its row m of A (once per block)
//   T a(const Row&, k) const;       A_g(m, k), 0 outside the operand
//   Col b_col(g, n) const;  T b(const Col&, k) const;   the same for B_g(k, n)
//   void store(g, split, m, n, A value) const;
//   const T* a_run(const Row&) const;  &A_g(m, 0) when row m is contiguous along K and 16-byte
//   const T* b_run(const Col&) const;  aligned (a K step of it then loads as 16-byte vectors), else
//                                      nullptr; used by the tensor-core kernel
// Four consecutive values of a shared slab row, read as one (float: one 128-bit shared load; double: two).
template <typename A>
struct __align__(16) Quad {
  A v[4];
};

// One block of 256 threads per (M tile, group x N tile, K split); see the file comment. Launch bounds
// of two blocks per SM leave it up to 128 registers (ptxas's default choice spilled some variants).
template <typename A, typename Problem>
__global__ void __launch_bounds__(kThreads, 2) gemm_kernel(Problem p) {
  __shared__ __align__(16) A as[2][kBK][kBM];
  __shared__ __align__(16) A bs[2][kBK][kBN];
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
  const int ntiles = static_cast<int>(ceil_div(p.N, kBN));
  const int64_t g = static_cast<int>(blockIdx.y) / ntiles;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM, n0 = static_cast<int64_t>(blockIdx.y % ntiles) * kBN;
  const int64_t per_split = steps_per_split(p.K, static_cast<int>(gridDim.z));
  const int64_t k_begin = blockIdx.z * per_split * kBK;
  const int64_t k_end = p.K < k_begin + per_split * kBK ? p.K : k_begin + per_split * kBK;

  // this thread's row of the A slab and column of the B slab
  const int lm = t % kBM, lk = t / kBM;
  const bool m_in = m0 + lm < p.M, n_in = n0 + lm < p.N;
  const auto row = p.a_row(g, m_in ? m0 + lm : 0);
  const auto col = p.b_col(g, n_in ? n0 + lm : 0);
  A ra[kLoads], rb[kLoads];
  const auto load = [&](int64_t k0) {
    for (int i = 0; i < kLoads; ++i) {
      const int64_t k = k0 + lk + i * (kThreads / kBM);
      ra[i] = m_in && k < k_end ? to_acc(p.a(row, k)) : A(0);
      rb[i] = n_in && k < k_end ? to_acc(p.b(col, k)) : A(0);
    }
  };
  const auto stage = [&](int buf) {
    for (int i = 0; i < kLoads; ++i) {
      as[buf][lk + i * (kThreads / kBM)][lm] = ra[i];
      bs[buf][lk + i * (kThreads / kBM)][lm] = rb[i];
    }
  };

  A acc[kTM][kTN];
  for (int i = 0; i < kTM; ++i)
    for (int j = 0; j < kTN; ++j) acc[i][j] = A(0);

  int buf = 0;
  if (k_begin < k_end) {
    load(k_begin);
    stage(0);
  }
  __syncthreads();
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBK) {
    const bool more = k0 + kBK < k_end;
    if (more) load(k0 + kBK);  // in flight while the block multiplies this step
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

  for (int i = 0; i < kTM; ++i) {
    const int64_t m = m0 + ty * kTM + i;
    if (m >= p.M) continue;
    for (int j = 0; j < kTN; ++j) {
      const int64_t n = n0 + tx * kTN + j;
      if (n < p.N) p.store(g, blockIdx.z, m, n, acc[i][j]);
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
// Shared memory holds each slab row-major along K, as the packed registers the fragments want:
// as[m][word], bs[n][word], rows padded to 20 words so that the 32 lanes of a fragment load
// (rows g = 0..7, words t = 0..3) hit 32 different banks. Double-buffered like the SIMT kernel
// (registers hold the next step's words while the block multiplies); 20 KiB of shared memory.
// Loads: thread t loads row (m or n) t % 64 of the slab, words 8 (t / 64) .. 8 (t / 64) + 7:
// consecutive lanes take consecutive m (or n), as in the SIMT kernel, and each lane packs its two
// 16-bit elements of a word itself, then writes its 8 words to shared memory as two 16-byte stores
// (conflict-free: the 8 rows of a quarter-warp start 20 words apart). Where the Problem says an
// operand row is contiguous along K and 16-byte aligned (a_run / b_run: linear's inputs and
// weights, convolution's filters), a full K step of it comes from global memory as two 16-byte
// loads per thread instead of 8 or 16 element loads.
// Per K step and block: 2 * 64 * 64 * 32 = 262144 FLOPs (16-bit) on 2 * 64 * 32 elements: 64 FLOPs
// per element staged, as the SIMT kernel, at tensor-core rate. Launch bounds of three blocks per SM
// (up to 168 registers; 60 KiB of shared memory): at four, linear's variants spilled on sm_80.
constexpr int kTcThreads = 128, kTcWords = 16, kTcRow = 20;

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
    return mma::to_tf32(v[0]);
}

template <typename Kind, typename Problem>
__global__ void __launch_bounds__(kTcThreads, 3) gemm_tc_kernel(Problem p) {
  using In = typename Kind::In;
  constexpr int E = Kind::kPerWord, BK = kTcWords * E;  // K elements per step
  __shared__ __align__(16) uint32_t as[2][kBM][kTcRow];
  __shared__ __align__(16) uint32_t bs[2][kBN][kTcRow];
  const int t = threadIdx.x, lane = t % kWarpSize, warp = t / kWarpSize;
  const int wm = warp % 2, wn = warp / 2, grp = lane / 4, tig = lane % 4;
  const int ntiles = static_cast<int>(ceil_div(p.N, kBN));
  const int64_t g = static_cast<int>(blockIdx.y) / ntiles;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM, n0 = static_cast<int64_t>(blockIdx.y % ntiles) * kBN;
  const int64_t per_split = steps_per_split(p.K, static_cast<int>(gridDim.z), BK);
  const int64_t k_begin = blockIdx.z * per_split * BK;
  const int64_t k_end = p.K < k_begin + per_split * BK ? p.K : k_begin + per_split * BK;

  const int lm = t % kBM, lw = t / kBM;
  const bool m_in = m0 + lm < p.M, n_in = n0 + lm < p.N;
  const auto row = p.a_row(g, m_in ? m0 + lm : 0);
  const auto col = p.b_col(g, n_in ? n0 + lm : 0);
  const In* const a_run = m_in ? p.a_run(row) : nullptr;
  const In* const b_run = n_in ? p.b_run(col) : nullptr;
  uint32_t ra[kTcWordLoads], rb[kTcWordLoads];
  // this thread's 8 words of one operand's row for the step at k0: two 16-byte loads when the row
  // is a contiguous run and the step is whole, else element by element (0 outside the operand)
  const auto load_row = [&](uint32_t(&r)[kTcWordLoads], const In* run, bool in, int64_t k0, auto element) {
    const int64_t first = k0 + lw * kTcWordLoads * E;
    if (run && k0 + BK <= k_end) {
      const uint4* v = reinterpret_cast<const uint4*>(run + first);
      FC_UNROLL
      for (int h = 0; h < 2; ++h) {
        const uint4 q = v[h];
        const uint32_t w[4] = {q.x, q.y, q.z, q.w};
        FC_UNROLL
        for (int j = 0; j < 4; ++j) r[4 * h + j] = E == 2 ? w[j] : mma::to_tf32(__uint_as_float(w[j]));
      }
      return;
    }
    FC_UNROLL
    for (int i = 0; i < kTcWordLoads; ++i) {
      In v[E];
      FC_UNROLL
      for (int e = 0; e < E; ++e) {
        const int64_t k = first + i * E + e;
        v[e] = in && k < k_end ? element(k) : zero<In>();
      }
      r[i] = word_of<Kind>(v);
    }
  };
  const auto load = [&](int64_t k0) {
    load_row(ra, a_run, m_in, k0, [&](int64_t k) { return p.a(row, k); });
    load_row(rb, b_run, n_in, k0, [&](int64_t k) { return p.b(col, k); });
  };
  const auto stage = [&](int buf) {
    uint4* a = reinterpret_cast<uint4*>(&as[buf][lm][lw * kTcWordLoads]);
    uint4* b = reinterpret_cast<uint4*>(&bs[buf][lm][lw * kTcWordLoads]);
    a[0] = make_uint4(ra[0], ra[1], ra[2], ra[3]);
    a[1] = make_uint4(ra[4], ra[5], ra[6], ra[7]);
    b[0] = make_uint4(rb[0], rb[1], rb[2], rb[3]);
    b[1] = make_uint4(rb[4], rb[5], rb[6], rb[7]);
  };

  float acc[2][4][4];
  FC_UNROLL
  for (int i = 0; i < 2; ++i)
    FC_UNROLL
    for (int j = 0; j < 4; ++j)
      FC_UNROLL
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

  int buf = 0;
  if (k_begin < k_end) {
    load(k_begin);
    stage(0);
  }
  __syncthreads();
  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
    const bool more = k0 + BK < k_end;
    if (more) load(k0 + BK);
    FC_UNROLL
    for (int ks = 0; ks < kTcWords / 8; ++ks) {  // one mma K (8 words) at a time
      const int w0 = ks * 8 + tig;
      uint32_t af[2][4], bf[4][2];
      FC_UNROLL
      for (int mi = 0; mi < 2; ++mi) {
        const int r = wm * 32 + mi * 16 + grp;
        af[mi][0] = as[buf][r][w0];
        af[mi][1] = as[buf][r + 8][w0];
        af[mi][2] = as[buf][r][w0 + 4];
        af[mi][3] = as[buf][r + 8][w0 + 4];
      }
      FC_UNROLL
      for (int ni = 0; ni < 4; ++ni) {
        const int c = wn * 32 + ni * 8 + grp;
        bf[ni][0] = bs[buf][c][w0];
        bf[ni][1] = bs[buf][c][w0 + 4];
      }
      FC_UNROLL
      for (int mi = 0; mi < 2; ++mi)
        FC_UNROLL
        for (int ni = 0; ni < 4; ++ni) mma::mma_sync<Kind>(acc[mi][ni], af[mi], bf[ni]);
    }
    if (more) stage(buf ^ 1);
    __syncthreads();
    buf ^= 1;
  }

  FC_UNROLL

  for (int mi = 0; mi < 2; ++mi)
    FC_UNROLL
    for (int ni = 0; ni < 4; ++ni)
      FC_UNROLL
      for (int r = 0; r < 4; ++r) {
        const int64_t m = m0 + wm * 32 + mi * 16 + grp + 8 * (r / 2);
        const int64_t n = n0 + wn * 32 + ni * 8 + 2 * tig + r % 2;
        if (m < p.M && n < p.N) p.store(g, blockIdx.z, m, n, acc[mi][ni][r]);
      }
}

}  // namespace gemm
}  // namespace fastconv::FC_NS::kernels

namespace fastconv::FC_NS::kernels {
namespace gemm {

// Runs a Problem on the right engine: tensor cores for float16 / bfloat16 (float32 accumulators),
// and for float32 when tf32 is allowed; the SIMT kernel otherwise (float32, float64).
template <typename P>
int run(const P& p, int64_t splits, bool tf32, Stream stream) {
  using T = typename P::Storage;
  const dim3 grid = grid_for(p.M, p.N, p.groups, splits);
  if constexpr (std::is_same<T, __half>::value)
    return launch(gemm_tc_kernel<mma::F16, P>, grid, dim3(kTcThreads), 0, stream, p);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value)
    return launch(gemm_tc_kernel<mma::BF16, P>, grid, dim3(kTcThreads), 0, stream, p);
  else if constexpr (std::is_same<T, float>::value)
    return tf32 ? launch(gemm_tc_kernel<mma::TF32, P>, grid, dim3(kTcThreads), 0, stream, p)
                : launch(gemm_kernel<float, P>, grid, dim3(kThreads), 0, stream, p);
  else
    return launch(gemm_kernel<typename P::A, P>, grid, dim3(kThreads), 0, stream, p);
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

// A launcher's tail for a split-K result: nothing when one split wrote the output itself, else the
// ordered sum of the partials into it.
template <typename T, typename A>
int finish_splits(const A* partial, T* out, int64_t count, int64_t splits, Stream stream) {
  if (splits <= 1 || count == 0) return 0;
  return launch(sum_splits_kernel<T, A>, grid_1d(count, kSumThreads, kSumMaxBlocks), dim3(kSumThreads), 0, stream,
                partial, out, count, static_cast<int>(splits));
}

}  // namespace gemm
}  // namespace fastconv::FC_NS::kernels
