// linear.cpp: y = x W^T + b on the CPU, with the register-tiled micro-kernel of gemm.h.
//
//   forward      Y[r][o]  = sum_i X[r][i] W^T[i][o]   A = rows of X,        B = W^T
//   grad input   dX[r][i] = sum_o dY[r][o] W[o][i]    A = rows of dY,       B = rows of W
//   grad weight  dW[o][i] = sum_r dY[r][o] X[r][i]    A = columns of dY,    B = rows of X
// A is read where it lies (RowsA / StridedA); B is packed once per call into NR-column panels
// (pack_b_panels), shared by all threads. x may have any number of leading
// dimensions; they are flattened into rows r. Work is split over blocks of C; each output element
// is reduced by one thread in a fixed order, so results do not depend on the thread count.
// FLOPs: 2 * rows * in * out per GEMM. Blocking: kc = 256 deep; a 256 x NR slice of B (32 KiB
// fp32) stays in L1 while the MR-row panels of A pass by.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu/gemm.h"
#include "fastconv.h"
#include "sim/sim.h"

namespace fastconv::cpu {
namespace {

// Rows k_lo .. k_hi of one NR-column panel of a row-major B: d[k][0..NR) = s_k[0..nr) (zero-padded), with
// s_k = src + k * ld; whole panels as two vectors a row.
template <typename T>
inline void copy_panel_rows(const T* src, int64_t ld, int nr, int64_t k_lo, int64_t k_hi, T* __restrict__ d) {
  constexpr int NR = Tile<T>::NR, W = Tile<T>::W;
  using V = typename Tile<T>::V;
  for (int64_t k = k_lo; k < k_hi; ++k) {
    const T* s = src + k * ld;
    if (nr == NR) {
      V v0, v1;
      std::memcpy(&v0, s, sizeof(V));
      std::memcpy(&v1, s + W, sizeof(V));
      std::memcpy(d + k * NR, &v0, sizeof(V));
      std::memcpy(d + k * NR + W, &v1, sizeof(V));
    } else {
      for (int j = 0; j < NR; ++j) d[k * NR + j] = j < nr ? s[j] : T(0);
    }
  }
}

// Packs B (K x N, B[k][n] = b[k * b_rs + n * b_cs]) once into zero-padded NR-column panels
// bp[p][k][0..NR), so that every block of C then reads contiguous panels (a strided B would also
// map its rows, ldb apart, into a few L1 sets). One pass over B, reading along its contiguous axis.
template <typename T>
void pack_b_panels(const T* b, int64_t K, int64_t N, int64_t b_rs, int64_t b_cs, T* bp) {
  constexpr int NR = Tile<T>::NR;
  const int64_t panels = ceil_div(N, NR);
  if (b_rs == 1) {  // B is the transpose of a row-major matrix (ld b_cs): W x W block transposes
    at::parallel_for(0, panels, std::max<int64_t>(1, 16384 / (K * NR)), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p)
        pack_transposed_panels(b + p * NR * b_cs, std::min<int64_t>(NR, N - p * NR), K, b_cs, bp + p * K * NR);
    });
    return;
  }
  TORCH_INTERNAL_ASSERT(b_cs == 1, "pack_b_panels: B needs unit stride along one axis");
  constexpr int64_t KB = 64;  // rows per task step: its reads and writes touch few pages
  const int64_t kblocks = ceil_div(K, KB);
  at::parallel_for(0, kblocks, std::max<int64_t>(1, 16384 / (KB * N)), [&](int64_t begin, int64_t end) {
    for (int64_t kb = begin; kb < end; ++kb) {
      const int64_t k_lo = kb * KB, k_hi = std::min(K, k_lo + KB);
      for (int64_t p = 0; p < panels; ++p)
        copy_panel_rows(b + p * NR, b_rs, (int)std::min<int64_t>(NR, N - p * NR), k_lo, k_hi, bp + p * K * NR);
    }
  });
}

// The MR x NR tiles of C[m_lo..m_hi)[n_lo..n_hi) over k in [k_lo, k_hi), k-block by k-block (kcb deep),
// with the bias on the last one. A and bp as for gemm, bp's first panel holding columns from bp_n0 on.
template <typename T>
void gemm_block_rows(int64_t N, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* bp, T* c, int64_t ldc,
                     const T* col_bias, int64_t m_lo, int64_t m_hi, int64_t n_lo, int64_t n_hi, int64_t k_lo,
                     int64_t k_hi, int64_t kcb, T* edge_a, int64_t bp_n0 = 0) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  alignas(64) T acc[MR * NR];
  Epilogue<T> ep;
  ep.col_bias = col_bias;
  const int64_t nkb = std::max<int64_t>(1, ceil_div(k_hi - k_lo, kcb));
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = k_lo + kb * kcb, kc = std::clamp<int64_t>(k_hi - k0, 0, kcb);
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += NR) {
      const int nr = (int)std::min<int64_t>(NR, n_hi - n0);
      const PackedB<T> bsrc{bp + (((n0 - bp_n0) / NR) * K + k0) * NR};
      for (int64_t m0 = m_lo; m0 < m_hi; m0 += MR) {
        const int mr = (int)std::min<int64_t>(MR, m_hi - m0);
        // ask for the C tile (for writing) now, so its cache misses overlap the FMAs below:
        // C is often larger than L2 and its rows lie far apart, which no hardware prefetcher follows
        for (int i = 0; i < mr; ++i) {
          __builtin_prefetch(c + (m0 + i) * ldc + n0, 1);
          __builtin_prefetch(c + (m0 + i) * ldc + n0 + nr - 1, 1);
        }
        // (a panel of at most W columns, the last of a narrow layer: one vector a row)
        auto tile = [&](const auto& asrc) {
          if (nr <= Tile<T>::W) micro_kernel_half<T>(kc, asrc, bsrc, acc);
          else micro_kernel<T>(kc, asrc, bsrc, acc);
        };
        if (a_cs == 1) {
          RowsA<T> asrc;  // rows past M repeat row m0; their results are not stored
          for (int i = 0; i < MR; ++i) asrc.row[i] = a + (m0 + (i < mr ? i : 0)) * a_rs + k0;
          tile(asrc);
        } else if (mr == MR) {
          tile(StridedA<T>{a + m0 + k0 * a_cs, a_cs});
        } else {
          pack_a_strided(a + m0 + k0 * a_cs, mr, kc, int64_t(1), a_cs, edge_a);
          tile(PackedA<T>{edge_a});
        }
        store_tile<T>(acc, mr, nr, c + m0 * ldc + n0, ldc, kb > 0, kb == nkb - 1, ep, m0, n0);
      }
    }
  }
}

// C[M][N] = sum_k A[m][k] B[k][n] (+ col_bias[n]) with A[m][k] = a[m * a_rs + k * a_cs], where
// a_cs == 1 (rows of A contiguous) or a_rs == 1 (columns contiguous), and B packed by pack_b_panels.
//
// Small C, long K (a first linear layer, 128 x 9216 -> 128): blocks of C would each read all of K of
// both operands, so the operands would pass through L3 once per block (29 MB for 9.4 MB of operands
// there). Such shapes are split along K instead, into a fixed number of chunks (a function of the
// shape only) that each compute the whole of C from their K range into a buffer; the buffers are then
// added in chunk order, with the bias: each operand is read once, and the result does not depend on
// the thread count.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* bp, T* c,
          const T* col_bias) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  const int64_t nkb = std::max<int64_t>(1, ceil_div(K, kKC)), kcb = ceil_div(std::max<int64_t>(K, 1), nkb);
  constexpr int64_t kSplitMinK = 4096, kSplitChunkK = 2048, kSplitMaxC = 128 * 256;
  const int64_t kchunks = M * N <= kSplitMaxC && K >= kSplitMinK ? std::min<int64_t>(8, K / kSplitChunkK) : 1;
  if (kchunks > 1) {
    // chunk boundaries on k-block boundaries
    const int64_t kbs_per_chunk = ceil_div(nkb, kchunks);
    const int64_t chunks = ceil_div(nkb, kbs_per_chunk);
    T* part = scratch<T>(4, chunks * M * N);  // (the packed B is in slot 2)
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      T* edge_a = scratch<T>(0, kcb * MR);
      for (int64_t ch = begin; ch < end; ++ch) {
        const int64_t k_lo = ch * kbs_per_chunk * kcb, k_hi = std::min(K, (ch + 1) * kbs_per_chunk * kcb);
        gemm_block_rows(N, K, a, a_rs, a_cs, bp, part + ch * M * N, N, static_cast<const T*>(nullptr), int64_t(0), M,
                        int64_t(0), N, k_lo, k_hi, kcb, edge_a);
      }
    });
    // C = bias + part[0] + part[1] + ... in chunk order, row by row
    at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(N * chunks, 1)), [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        T* __restrict__ crow = c + m * N;
        for (int64_t n = 0; n < N; ++n) {
          T v = part[m * N + n];
          for (int64_t ch = 1; ch < chunks; ++ch) v += part[(ch * M + m) * N + n];
          crow[n] = col_bias ? v + col_bias[n] : v;
        }
      }
    });
    return;
  }
  // Blocks of C of up to 128 x 256, halved until each thread has a few. Blocking changes no
  // order of summation, so the result does not depend on the thread count.
  int64_t MB = 16 * MR, NB = 8 * NR;
  const int64_t want = 4 * at::get_num_threads();
  while (ceil_div(M, MB) * ceil_div(N, NB) < want && (MB > MR || NB > NR)) {
    if (MB > MR && (MB >= NB / 2 || NB == NR)) MB /= 2;
    else NB /= 2;
  }
  const int64_t mblk = ceil_div(M, MB), nblk = ceil_div(N, NB);
  const double flops = 2.0 * std::min(MB, M) * std::min(NB, N) * K;
  at::parallel_for(0, mblk * nblk, grain_for(flops), [&](int64_t begin, int64_t end) {
    T* edge_a = scratch<T>(0, kcb * MR);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t m_lo = (item % mblk) * MB, m_hi = std::min(M, m_lo + MB);
      const int64_t n_lo = (item / mblk) * NB, n_hi = std::min(N, n_lo + NB);
      gemm_block_rows(N, K, a, a_rs, a_cs, bp, c, N, col_bias, m_lo, m_hi, n_lo, n_hi, int64_t(0), K, kcb, edge_a);
    }
  });
}

// C = A B with B given as b (K x N, B[k][n] = b[k * b_rs + n * b_cs]): packs B, then multiplies.
template <typename T>
void gemm_packing_b(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b,
                    int64_t b_rs, int64_t b_cs, T* c, const T* col_bias) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  // Few rows, a short K and many columns (the grad input and weight gradient of a first linear layer:
  // 128 x 128 -> 9216, B and C 4.7 MB each): one block of C per NB columns holds every row, so each
  // block of B serves one block of C only. Each block then packs its own columns of B (row-major B)
  // into a per-thread buffer that stays in L2, instead of all of B being packed into memory and read
  // back from there: B crosses memory once instead of three times. Blocking changes no order of
  // summation.
  constexpr int64_t NB = 8 * NR;
  if (b_cs == 1 && M <= 16 * MR && K <= 2 * kKC && ceil_div(N, NB) >= 4 * at::get_num_threads()) {
    const int64_t nkb = std::max<int64_t>(1, ceil_div(K, kKC)), kcb = ceil_div(std::max<int64_t>(K, 1), nkb);
    const int64_t nblk = ceil_div(N, NB);
    at::parallel_for(0, nblk, grain_for(2.0 * M * NB * K), [&](int64_t begin, int64_t end) {
      T* edge_a = scratch<T>(0, kcb * MR);
      T* bp = scratch<T>(2, NB * std::max<int64_t>(K, 1));
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t n_lo = blk * NB, n_hi = std::min(N, n_lo + NB);
        for (int64_t p = 0; p * NR < n_hi - n_lo; ++p)  // panels [k][NR] of columns n_lo + p NR ..
          copy_panel_rows(b + n_lo + p * NR, b_rs, (int)std::min<int64_t>(NR, n_hi - n_lo - p * NR), int64_t(0), K,
                          bp + p * K * NR);
        gemm_block_rows(N, K, a, a_rs, a_cs, bp, c, N, col_bias, int64_t(0), M, n_lo, n_hi, int64_t(0), K, kcb,
                        edge_a, n_lo);
      }
    });
    return;
  }
  T* bp = scratch<T>(2, ceil_div(N, Tile<T>::NR) * Tile<T>::NR * std::max<int64_t>(K, 1));
  pack_b_panels(b, K, N, b_rs, b_cs, bp);
  gemm(M, N, K, a, a_rs, a_cs, bp, c, col_bias);
}

// dst[m][n] = src[n][m] (+ bias[n]): src is N x M, dst M x N, both row-major. W x W blocks through
// registers (transpose_block), the edges one by one; blocks of rows of dst in parallel.
template <typename T>
void transpose_add_bias(const T* __restrict__ src, int64_t N, int64_t M, const T* bias, T* __restrict__ dst) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W;
  at::parallel_for(0, ceil_div(M, W), std::max<int64_t>(1, 4096 / std::max<int64_t>(N * W, 1)), [&](int64_t b, int64_t e) {
    for (int64_t mb = b; mb < e; ++mb) {
      const int64_t m0 = mb * W;
      int64_t n0 = 0;
      if (m0 + W <= M)
        for (; n0 + W <= N; n0 += W) {
          V blk[W];
          for (int i = 0; i < W; ++i) std::memcpy(&blk[i], src + (n0 + i) * M + m0, sizeof(V));
          transpose_block<T>(blk);
          V bv{};
          if (bias) std::memcpy(&bv, bias + n0, sizeof(V));
          for (int l = 0; l < W; ++l) {
            const V v = blk[l] + bv;
            std::memcpy(dst + (m0 + l) * N + n0, &v, sizeof(V));
          }
        }
      for (int64_t m = m0; m < std::min(M, m0 + W); ++m)
        for (int64_t n = n0; n < N; ++n) dst[m * N + n] = src[n * M + m] + (bias ? bias[n] : T(0));
    }
  });
}

// The forward of a layer with more outputs than input rows (128 x 2304 -> 512): Y^T = W X^T, so that the
// operand packed into panels is X^T (rows x in) instead of W^T (out x in, 4x larger there: the packing was
// 15% of the forward under perf, AMD EPYC Zen 4), then Y = (Y^T)^T + bias. Every output is the same sum, in
// the same order, as the direct formulation's: the same bits.
template <typename T>
void linear_transposed(const LinearShape& s, const T* x, const T* w, const T* b, T* y) {
  T* yt = scratch<T>(5, s.out * s.rows);  // (slot 5: gemm_packing_b uses 0, 2 and 4)
  gemm_packing_b<T>(s.out, s.rows, s.in, w, s.in, 1, x, 1, s.in, yt, nullptr);
  transpose_add_bias(yt, s.out, s.rows, b, y);
}

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const LinearShape s = check_linear(input, weight, bias);
  return in_float32(
      [&](const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
        at::Tensor out = cpu::empty(with_last(input.sizes(), s.out), input.options());
        if (out.numel() == 0) return out;
        const at::Tensor x = input.contiguous(), w = weight.contiguous(), b = contiguous_or_none(bias);
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_linear", [&] {
          if (s.out > s.rows && s.in > 0) {
            linear_transposed<scalar_t>(s, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                        b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                                        out.mutable_data_ptr<scalar_t>());
            return;
          }
          gemm_packing_b<scalar_t>(s.rows, s.out, s.in, x.const_data_ptr<scalar_t>(), s.in, 1,
                                   w.const_data_ptr<scalar_t>(), 1, s.in, out.mutable_data_ptr<scalar_t>(),
                                   b.defined() ? b.const_data_ptr<scalar_t>() : nullptr);
        });
        return out;
      },
      input, weight, bias);
}

at::Tensor linear_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight) {
  const LinearShape s = check_linear_grad_input(grad_output, weight);
  return in_float32(
      [&](const at::Tensor& grad_output, const at::Tensor& weight) {
        at::Tensor dx = cpu::empty(with_last(grad_output.sizes(), s.in), grad_output.options());
        if (dx.numel() == 0) return dx;
        const at::Tensor dy = grad_output.contiguous(), w = weight.contiguous();
        AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_linear_grad_input", [&] {
          gemm_packing_b<scalar_t>(s.rows, s.in, s.out, dy.const_data_ptr<scalar_t>(), s.out, 1,
                                   w.const_data_ptr<scalar_t>(), s.in, 1, dx.mutable_data_ptr<scalar_t>(), nullptr);
        });
        return dx;
      },
      grad_output, weight);
}

at::Tensor linear_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input) {
  const LinearShape s = check_linear_grad_weight(grad_output, input);
  return in_float32(
      [&](const at::Tensor& grad_output, const at::Tensor& input) {
        at::Tensor dw = cpu::empty({s.out, s.in}, grad_output.options());
        if (dw.numel() == 0) return dw;
        if (s.rows == 0) return dw.zero_();
        const at::Tensor dy = grad_output.contiguous(), x = input.contiguous();
        AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_linear_grad_weight", [&] {
          gemm_packing_b<scalar_t>(s.out, s.in, s.rows, dy.const_data_ptr<scalar_t>(), 1, s.out,
                                   x.const_data_ptr<scalar_t>(), s.in, 1, dw.mutable_data_ptr<scalar_t>(), nullptr);
        });
        return dw;
      },
      grad_output, input);
}

}  // namespace

// Under fastconv.simulate() these ops run their CUDA kernels in the simulator (csrc/sim/sim.h).
TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("linear", &sim::Routed<linear_cpu, sim::linear>::call);
  m.impl("linear_grad_input", &sim::Routed<linear_grad_input_cpu, sim::linear_grad_input>::call);
  m.impl("linear_grad_weight", &sim::Routed<linear_grad_weight_cpu, sim::linear_grad_weight>::call);
}

}  // namespace fastconv::cpu
