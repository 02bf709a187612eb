// conv2d.cpp: 2-D convolution on the CPU: Winograd F(4x4, 3x3) and F(2x2, 5x5) for float32 3x3 and 5x5
// stride-1 layers (winograd.h), otherwise direct GEMMs that read their B operand straight from the (padded) image.
//
// Forward, per (image n, group g, range of NR-pixel panels):
//   C[co][p] = sum_k W[co][k] * col[k][p],  k = (ci, kh, kw) of the group, p = (oh, ow)
//   With unit stride, row k of the im2col matrix is the zero-padded image shifted by a constant, so
//   the micro-kernel loads B vectors from the padded copy of the image (ShiftedB) and nothing but the
//   weights is packed. A stride-(sh, sw) layer is turned into the same thing by splitting the padded
//   image into its sh * sw phase planes (padded[a + sh i][b + sw j]): tap (kh, kw) is then a unit-
//   stride shift of one phase plane (phase_planes, shift_table). The image is copied once per
//   (image, group), into a scratch that stays in L2 while every output channel is computed from it.
//   On small maps (8x8, 4x4, ...), where the padded pitch would leave a quarter of a panel's lanes
//   empty, the im2col columns of a block of images are built instead and the GEMM runs over them
//   (im2col_conv_batch; the grad weight likewise).
// Grad input: with unit stride, a forward convolution of grad_output with the flipped kernel (the
//   direct path); with a larger stride, dcol = W^T dY as a GEMM, scattered back (col2im).
// Grad weight, per (chunk of images, g):
//   dW[co][k] = sum_{n in chunk, p} dY[n][co][p] * col_n[k][p]
//   with A = MR shifted rows of the image's phase planes (read where they lie) and B = dY transposed
//   into NR-channel panels; the reduction over pixels is the GEMM depth. Images are split into a fixed
//   number of chunks that depends only on the batch size, each chunk sums into its own buffer, and
//   the buffers are added in chunk order: the result is bitwise the same whatever the thread count.
//   A first layer (3x3, stride 1, up to 3 input channels) computes each dW[co][k] as a dot product
//   along the pixels instead (grad_weight_first_layer), with the same chunks.
// Grad bias: a per-channel sum in a fixed order, accumulated in double.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <array>
#include <optional>
#include <type_traits>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/gemm.h"
#include "cpu/pool.h"
#include "cpu/winograd.h"
#include "fastconv.h"
#include "sim/sim.h"

namespace fastconv::cpu {
namespace {

// Packs the panels of one k-block of an implicit-GEMM B operand whose row k is produced by
// row(k, p, count, dst): rows k0..k0+kc of columns p0..p0+plen, as [kc][NR] panels.
template <typename T, typename Row>
void pack_b_rows(int64_t kc, int64_t p0, int64_t plen, T* __restrict__ dst, Row&& row) {
  constexpr int NR = Tile<T>::NR;
  for (int64_t k = 0; k < kc; ++k)
    for (int64_t jp = 0; jp * NR < plen; ++jp) {
      T* d = dst + jp * kc * NR + k * NR;
      const int64_t cnt = std::min<int64_t>(NR, plen - jp * NR);
      row(k, p0 + jp * NR, cnt, d);
      for (int64_t j = cnt; j < NR; ++j) d[j] = T(0);
    }
}

// ---------------------------------------------------------------- direct paths
//
// With unit stride, row k = (ci, kh, kw) of the im2col matrix of a zero-padded image is the image
// itself shifted by off[k] = ci*Hp*Wp + kh*dh*Wp + kw*dw, if outputs are laid out on the padded
// row pitch (j = oh*Wp + ow; the Wp - OW extra columns per row are computed and dropped). So the
// micro-kernel loads its B vectors straight from the padded image (ShiftedB): nothing is packed
// but the weights, once per call, and the image, once per (image, group), into a padded copy that
// stays in L2 while every output channel is computed from it. With stride (sh, sw) the copy is the
// image's sh * sw phase planes instead, each Hp x Wp with Hp = OH + (kh - 1) dh / sh (and so for Wp),
// and off[k] points tap k into its phase plane (shift_table): the same GEMM, no products wasted.

constexpr int64_t kDirectKC = 1024;  // depth of one k-block of the direct path (A panel: 32 KiB fp32)
constexpr int64_t kDirectJB = 2048;  // pixels per block of the direct weight gradient (B chunk: 256 KiB fp32)

// The valid output columns of the NR-wide panel starting at j0 of the padded-pitch grid: runs
// (t, len) of panel lanes and where they go in the OH x OW plane.
struct Segment {
  int t, len;
  int64_t dst;
};

template <typename T>
int panel_segments(int64_t j0, int64_t J, int64_t Wp, int64_t OW, Segment* segs) {
  constexpr int NR = Tile<T>::NR;
  int n = 0;
  int64_t oh = j0 / Wp, ow = j0 % Wp;
  for (int t = 0; t < NR && j0 + t < J;) {
    const int run = (int)std::min<int64_t>(NR - t, Wp - ow);
    const int valid = (int)std::clamp<int64_t>(OW - ow, 0, run);
    const int64_t dst = oh * OW + ow;
    if (valid > 0 && n > 0 && segs[n - 1].t + segs[n - 1].len == t && segs[n - 1].dst + segs[n - 1].len == dst)
      segs[n - 1].len += valid;  // continues the previous run (no dropped columns: a 1-wide kernel)
    else if (valid > 0)
      segs[n++] = Segment{t, valid, dst};
    t += run;
    ow = 0;
    ++oh;
  }
  return n;
}

// d[0..len) (= or +=) a[0..len) + bias, then the activation `act`: whole vectors held in registers (one
// pass over d), and the last partial vector as a masked load and store where AVX-512 has masks, else one
// by one.
template <typename T>
inline void store_run(const T* __restrict__ a, T* __restrict__ d, int len, T bias, bool load_c, const Act<T>& act) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W;
  const V zero{};
  int l = 0;
  for (; l + W <= len; l += W) {
    V v;
    std::memcpy(&v, a + l, sizeof(V));
    v += bias;
    if (load_c) {
      V c;
      std::memcpy(&c, d + l, sizeof(V));
      v += c;
    }
    v = act(v);
    std::memcpy(d + l, &v, sizeof(V));
  }
  if (l == len) return;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    const __mmask16 k = (__mmask16)((1u << (len - l)) - 1);
    if constexpr (std::is_same_v<T, float>) {
      __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, a + l), _mm512_set1_ps(bias));
      if (load_c) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, d + l));
      v = act(v);
      _mm512_mask_storeu_ps(d + l, k, v);
      return;
    } else if constexpr (std::is_same_v<T, double>) {
      __m512d v = _mm512_add_pd(_mm512_maskz_loadu_pd((__mmask8)k, a + l), _mm512_set1_pd(bias));
      if (load_c) v = _mm512_add_pd(v, _mm512_maskz_loadu_pd((__mmask8)k, d + l));
      v = act(v);
      _mm512_mask_storeu_pd(d + l, (__mmask8)k, v);
      return;
    }
  }
#endif
#pragma GCC novector
  for (; l < len; ++l) {
    T v = a[l] + bias;
    if (load_c) v += d[l];
    d[l] = act(v);
  }
}

// Writes (or, with load_c, adds) the valid runs of an MR x NR tile into M planes; on the last
// k-block adds the bias and applies the activation.
template <typename T>
void store_segments(const T* __restrict__ acc, int mr, const Segment* segs, int nseg, T* __restrict__ c,
                    int64_t plane, bool load_c, bool last, const T* row_bias, const Act<T>& act) {
  constexpr int NR = Tile<T>::NR;
  for (int i = 0; i < mr; ++i) {
    const T bias = last && row_bias ? row_bias[i] : T(0);
    for (int s = 0; s < nseg; ++s)
      store_run(acc + i * NR + segs[s].t, c + i * plane + segs[s].dst, segs[s].len, bias, load_c, last ? act : Act<T>{});
  }
}

// out[m][oh][ow] (M planes of OH x OW) = sum_k A[m][k] * xpad[off[k] + oh*Wp + ow], A packed as
// ceil(M/MR) panels of [K][MR], for the NR-pixel panels [p_begin, p_end) of the padded-pitch grid.
// One image of one group, on the calling thread. With `row_panels` the panels are NR pixels of one
// output row each (ceil(OW / NR) a row, the last one partial): every tile is then stored as one run,
// which is what matters when K is small and the stores cost as much as the FMAs (a first layer);
// otherwise they tile the padded-pitch grid without gaps, wasting only the Wp - OW pad columns.
template <typename T>
void direct_conv_image(const T* xpad, const int64_t* off, const T* a_packed, int64_t M, int64_t K, int64_t OH,
                       int64_t OW, int64_t Wp, T* out, const T* row_bias, const Act<T>& act, int64_t p_begin,
                       int64_t p_end, bool row_panels) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  const int64_t J = OH * Wp, m_panels = ceil_div(M, MR), per_row = ceil_div(OW, NR);
  const int64_t nkb = std::max<int64_t>(1, ceil_div(K, kDirectKC)), kcb = ceil_div(std::max<int64_t>(K, 1), nkb);
  alignas(64) T acc[MR * NR];
  Segment segs[NR];
  for (int64_t p = p_begin; p < p_end; ++p) {
    int64_t j0;
    int nseg;
    if (row_panels) {
      const int64_t oh = p / per_row, ow0 = (p % per_row) * NR;
      j0 = oh * Wp + ow0;
      segs[0] = Segment{0, (int)std::min<int64_t>(NR, OW - ow0), oh * OW + ow0};
      nseg = 1;
    } else {
      j0 = p * NR;
      if (j0 >= J) break;
      nseg = panel_segments<T>(j0, J, Wp, OW, segs);
    }
    if (nseg == 0) continue;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t k0 = kb * kcb, kc = std::clamp<int64_t>(K - k0, 0, kcb);
      for (int64_t ip = 0; ip < m_panels; ++ip) {
        const int mr = (int)std::min<int64_t>(MR, M - ip * MR);
        micro_kernel<T>(kc, PackedA<T>{a_packed + (ip * K + k0) * MR}, ShiftedB<T>{xpad + j0, off + k0}, acc);
        store_segments(acc, mr, segs, nseg, out + ip * MR * OH * OW, OH * OW, kb > 0, kb == nkb - 1,
                       row_bias ? row_bias + ip * MR : nullptr, act);
      }
    }
  }
}

// How many pixel ranges each (image, group) of a direct convolution is cut into: one, unless there
// are fewer (image, group) pairs than twice the threads -- then a batch of one still uses every core
// (each range pads its own copy of the image; every output is still computed by one range).
inline int64_t direct_splits(int64_t images, int64_t panels) {
  return std::clamp<int64_t>(ceil_div(2 * at::get_num_threads(), images), 1, std::max<int64_t>(panels, 1));
}

// off[k] for k = (c, kh, kw) over a stack of phase planes of Hq x Wq (phase_planes): tap (kh, kw) of a
// stride-(sh, sw) window reads phase plane (c, kh dh mod sh, kw dw mod sw) shifted by
// (kh dh div sh, kw dw div sw). With unit stride the phase planes are the padded planes themselves.
inline std::vector<int64_t> shift_table(int64_t C, int64_t KH, int64_t KW, int64_t dh, int64_t dw, int64_t sh,
                                        int64_t sw, int64_t Hq, int64_t Wq) {
  std::vector<int64_t> off(C * KH * KW);
  for (int64_t c = 0, k = 0; c < C; ++c)
    for (int64_t kh = 0; kh < KH; ++kh)
      for (int64_t kw = 0; kw < KW; ++kw) {
        const int64_t plane = (c * sh + kh * dh % sh) * sw + kw * dw % sw;
        off[k++] = plane * Hq * Wq + (kh * dh / sh) * Wq + kw * dw / sw;
      }
  return off;
}

// phase_planes for sw = 2: each input row (y = a + sh i - top) is copied zero-padded into a scratch row
// of 2 Wq (+ a vector) floats, whose even and odd columns are phase planes (c, a, 0) and (c, a, 1): two
// vector loads and two fixed shuffles give W lanes of each, instead of a strided gather per element.
template <typename T, int... k>
void deinterleave_planes(const T* __restrict__ src, int64_t C, int64_t H, int64_t W, int64_t top, int64_t left,
                         int64_t sh, int64_t Hq, int64_t Wq, T* __restrict__ dst, std::integer_sequence<int, k...>) {
  using V = typename Tile<T>::V;
  constexpr int L = Tile<T>::W;
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef I IV __attribute__((vector_size(sizeof(V))));
  constexpr IV even{(2 * k)...}, odd{(2 * k + 1)...};
  const int64_t len = round_up<T>(2 * Wq, 2 * L);  // the scratch row, whole vector pairs
  T* row = scratch<T>(4, len);
  const int64_t u_lo = std::clamp<int64_t>(left, 0, 2 * Wq), u_hi = std::clamp<int64_t>(W + left, u_lo, 2 * Wq);
  std::memset(row, 0, sizeof(T) * len);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t a = 0; a < sh; ++a) {
      T* __restrict__ p0 = dst + (c * sh + a) * 2 * Hq * Wq;
      T* __restrict__ p1 = p0 + Hq * Wq;
      for (int64_t i = 0; i < Hq; ++i) {
        const int64_t y = a + sh * i - top;
        if (y < 0 || y >= H) {
          std::memset(p0 + i * Wq, 0, sizeof(T) * Wq);
          std::memset(p1 + i * Wq, 0, sizeof(T) * Wq);
          continue;
        }
        std::memcpy(row + u_lo, src + (c * H + y) * W + u_lo - left, sizeof(T) * (u_hi - u_lo));  // the rest stays 0
        int64_t j = 0;
        for (; j + L <= Wq; j += L) {
          V v0, v1;
          std::memcpy(&v0, row + 2 * j, sizeof(V));
          std::memcpy(&v1, row + 2 * j + L, sizeof(V));
          const V e = __builtin_shuffle(v0, v1, even), o = __builtin_shuffle(v0, v1, odd);
          std::memcpy(p0 + i * Wq + j, &e, sizeof(V));
          std::memcpy(p1 + i * Wq + j, &o, sizeof(V));
        }
        for (; j < Wq; ++j) {
          p0[i * Wq + j] = row[2 * j];
          p1[i * Wq + j] = row[2 * j + 1];
        }
      }
    }
}

// The phase planes of C planes of H x W padded by (top, left): plane (c, a, b), Hq x Wq, holds
// padded[a + sh i][b + sw j] of channel c (zero outside the input), so that a stride-(sh, sw)
// convolution is, tap by tap, a unit-stride one over them (shift_table). Unit stride: pad_planes.
template <typename T>
void phase_planes(const T* __restrict__ src, int64_t C, int64_t H, int64_t W, int64_t top, int64_t left, int64_t sh,
                  int64_t sw, int64_t Hq, int64_t Wq, T* __restrict__ dst, int64_t slack) {
  if (sh == 1 && sw == 1) {
    pad_planes(src, C, H, W, top, left, Hq, Wq, dst, slack);
    return;
  }
  if (sw == 2) {  // both column phases of a row at once: the padded row, split by fixed shuffles
    deinterleave_planes(src, C, H, W, top, left, sh, Hq, Wq, dst, std::make_integer_sequence<int, Tile<T>::W>{});
    std::memset(dst + C * sh * sw * Hq * Wq, 0, sizeof(T) * slack);
    return;
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t a = 0; a < sh; ++a)
      for (int64_t b = 0; b < sw; ++b) {
        T* __restrict__ plane = dst + ((c * sh + a) * sw + b) * Hq * Wq;
        // columns j with 0 <= b + sw j - left < W
        const int64_t j_lo = std::clamp<int64_t>(ceil_div(std::max<int64_t>(left - b, 0), sw), 0, Wq);
        const int64_t j_hi = std::clamp<int64_t>(W + left - b > 0 ? ceil_div(W + left - b, sw) : 0, j_lo, Wq);
        for (int64_t i = 0; i < Hq; ++i) {
          T* __restrict__ d = plane + i * Wq;
          const int64_t y = a + sh * i - top;
          if (y < 0 || y >= H) {
            std::memset(d, 0, sizeof(T) * Wq);
            continue;
          }
          const T* __restrict__ row = src + (c * H + y) * W + b - left;
          for (int64_t j = 0; j < j_lo; ++j) d[j] = T(0);
          for (int64_t j = j_lo; j < j_hi; ++j) d[j] = row[sw * j];
          for (int64_t j = j_hi; j < Wq; ++j) d[j] = T(0);
        }
      }
  std::memset(dst + C * sh * sw * Hq * Wq, 0, sizeof(T) * slack);
}

// The phase planes' size for an output of OH x OW: every tap's shifted window fits.
inline int64_t phase_extent(int64_t out, int64_t k, int64_t d, int64_t s) { return out + (k - 1) * d / s; }

// Below this GEMM depth direct_conv_image tiles output rows (row_panels): measured on the first
// layers (K = 9, 27), where the stores of split panels cost as much as the FMAs.
constexpr int64_t kRowPanelMaxK = 64;

// ---------------------------------------------------------------- small maps: im2col over a block of images
//
// On a small output (8x8, 4x4, 2x2 maps of 128-256 channels: the late layers of YOLO- and ResNet-style
// nets) the padded-pitch panels of direct_conv_image waste most of their lanes: a 4x4 output on a pitch
// of 6 is 24 pixels, one NR = 32 panel of which 16 lanes are kept. There the im2col columns of a block of
// S images are built first, [K][S * OH * OW] with every pixel valid (row pitch `ld`), and the GEMM runs
// over them: the B operand of the forward and grad input, the A rows of the grad weight.

// Whether the padded-pitch panels of one image waste more than a quarter of their lanes (FASTCONV_CPU_SMALLMAP=1
// or 0 forces the im2col path on or off, for tests and measurements).
template <typename T>
bool use_im2col_blocks(int64_t OH, int64_t OW, int64_t Wp) {
  const char* e = std::getenv("FASTCONV_CPU_SMALLMAP");  // (read per call, as FASTCONV_CPU_CONV: tests set it)
  if (e && *e) return std::atoi(e) > 0;
  constexpr int NR = Tile<T>::NR;
  return 4 * OH * OW < 3 * ceil_div(OH * Wp, NR) * NR;
}

// Images per block of the im2col path, for n images: enough for about `cols` columns (the grad
// weight's reduction depth), at most 1 MiB of columns (they stay in L2), then evened out over the
// blocks n needs (16 images in blocks of 14 would leave a block of 2).
template <typename T>
int64_t im2col_block_images(int64_t K, int64_t P, int64_t n, int64_t cols = 256) {
  const int64_t cap = std::max<int64_t>(1, (int64_t(1) << 20) / (int64_t)sizeof(T) / std::max<int64_t>(K * P, 1));
  n = std::max<int64_t>(n, 1);
  const int64_t s = std::clamp<int64_t>(ceil_div(cols, P), 1, std::min(cap, n));
  return ceil_div(n, ceil_div(n, s));
}

// The row pitch of a block's columns: W lanes of slack after each row (im2col_block over-copies).
template <typename T>
int64_t im2col_pitch(int64_t cols) { return round_up<T>(cols, Tile<T>::W) + Tile<T>::W; }

// col[k][s * P + oh * OW + ow] (row pitch ld) = tap k of output (oh, ow) of image s, for the S images
// whose C planes (of H x W) start at src + s * image_stride: each image's phase planes go to `pad`
// (padded by top / left; `off` = shift_table over them), then every (tap, output row) is one run of OW
// values. Runs are copied as whole vectors, later runs overwriting what an earlier one wrote past its
// end, and the row slack (im2col_pitch) taking what the last one does: one vector load and store for
// a run of a small map. The slack is zeroed last (the panels of the last columns read into it).
template <typename T>
void im2col_block(const T* src, int64_t image_stride, int64_t S, int64_t C, int64_t H, int64_t W, int64_t top,
                  int64_t left, int64_t sh, int64_t sw, int64_t Hp, int64_t Wp, const int64_t* off, int64_t K,
                  int64_t OH, int64_t OW, T* pad, int64_t slack, T* __restrict__ col, int64_t ld) {
  using V = typename Tile<T>::V;
  constexpr int L = Tile<T>::W;
  const int64_t P = OH * OW;
  for (int64_t s = 0; s < S; ++s) {
    phase_planes(src + s * image_stride, C, H, W, top, left, sh, sw, Hp, Wp, pad, slack);
    for (int64_t k = 0; k < K; ++k) {
      const T* __restrict__ from = pad + off[k];
      T* __restrict__ to = col + k * ld + s * P;
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t i = 0; i < OW; i += L) {
          V v;
          std::memcpy(&v, from + oh * Wp + i, sizeof(V));
          std::memcpy(to + oh * OW + i, &v, sizeof(V));
        }
    }
  }
  for (int64_t k = 0; k < K; ++k) std::memset(col + k * ld + S * P, 0, sizeof(T) * (ld - S * P));  // the slack
}

// The runs of pixels [j0, j0 + NR) of a block of images of P pixels each, in the output (image s at
// s * image_stride, pixel p at p): one per image the panel touches.
template <typename T>
int block_segments(int64_t j0, int64_t J, int64_t P, int64_t image_stride, Segment* segs) {
  constexpr int NR = Tile<T>::NR;
  int n = 0;
  for (int64_t j = j0, end = std::min(j0 + NR, J); j < end;) {
    const int64_t s = j / P, len = std::min(end, (s + 1) * P) - j;
    segs[n++] = Segment{(int)(j - j0), (int)len, s * image_stride + (j - s * P)};
    j += len;
  }
  return n;
}

// direct_conv_batch on small maps: per (block of S images, group), im2col_block, then every NR-pixel
// panel of the block's columns times every A panel, stored image by image (block_segments). A 1x1 unit-
// stride unpadded convolution whose planes are whole vectors (4x4 maps) builds no columns: they are its
// input planes, side by side, and each vector of a panel is read from its image's planes (SplitB). On
// 256 -> 128 at 4x4 (batch 128) the padded copy and the columns were 27% of the forward's time (perf,
// AMD EPYC Zen 4, AVX-512).
template <typename T>
void im2col_conv_batch(const ConvShape& g, const T* src, int64_t channels_src, int64_t C, int64_t H, int64_t W,
                       int64_t top, int64_t left, int64_t sh, int64_t sw, const T* a, int64_t M, int64_t K, T* dst,
                       int64_t channels_dst, int64_t OH, int64_t OW, const T* bias, const Act<T>& act) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR, L = Tile<T>::W;
  const int64_t Hp = phase_extent(OH, g.kh, g.dh, sh), Wp = phase_extent(OW, g.kw, g.dw, sw), P = OH * OW;
  const int64_t m_panels = ceil_div(M, MR), slack = (g.kw - 1) * g.dw + 2 * L;
  const std::vector<int64_t> off = shift_table(C, g.kh, g.kw, g.dh, g.dw, sh, sw, Hp, Wp);
  const int64_t S = im2col_block_images<T>(K, P, g.n), blocks = ceil_div(g.n, S);
  // k-blocks as the direct path's (k-blocks of 128-1024 measured within 4% of each other on 128 -> 256
  // at 4x4, the deepest fastest: fewer passes over the output)
  const int64_t nkb = std::max<int64_t>(1, ceil_div(K, kDirectKC)), kcb = ceil_div(std::max<int64_t>(K, 1), nkb);
  const double flops = 2.0 * M * K * S * P;
  const bool in_place = g.kh == 1 && g.kw == 1 && sh == 1 && sw == 1 && top == 0 && left == 0 && OH == H &&
                        OW == W && P % L == 0;
  at::parallel_for(0, blocks * g.groups, grain_for(flops), [&](int64_t begin, int64_t end) {
    const int64_t ld = im2col_pitch<T>(S * P);
    T* pad = in_place ? nullptr : scratch<T>(3, C * sh * sw * Hp * Wp + slack);
    T* col = in_place ? nullptr : scratch<T>(5, std::max<int64_t>(K, 1) * ld);
    alignas(64) T acc[MR * NR];
    Segment segs[NR];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t gi = item % g.groups, n0 = item / g.groups * S, count = std::min(S, g.n - n0), J = count * P;
      const T* planes = src + (n0 * channels_src + gi * C) * H * W;  // the group's planes of image n0
      if (!in_place)
        im2col_block(planes, channels_src * H * W, count, C, H, W, top, left, sh, sw, Hp, Wp, off.data(), K, OH, OW,
                     pad, slack, col, ld);
      T* out = dst + (n0 * channels_dst + gi * M) * P;
      for (int64_t j0 = 0; j0 < J; j0 += NR) {
        const int nseg = block_segments<T>(j0, J, P, channels_dst * P, segs);
        // (in place: column j is pixel j % P of image j / P; a vector past the block's end repeats the first)
        const int64_t j1 = j0 + L < J ? j0 + L : j0;
        const T* lo = planes + j0 / P * channels_src * P + j0 % P;
        const T* hi = planes + j1 / P * channels_src * P + j1 % P;
        for (int64_t kb = 0; kb < nkb; ++kb) {
          const int64_t k0 = kb * kcb, kc = std::clamp<int64_t>(K - k0, 0, kcb);
          for (int64_t ip = 0; ip < m_panels; ++ip) {
            const int mr = (int)std::min<int64_t>(MR, M - ip * MR);
            const PackedA<T> asrc{a + (gi * m_panels + ip) * K * MR + k0 * MR};
            if (in_place) micro_kernel<T>(kc, asrc, SplitB<T>{lo + k0 * P, hi + k0 * P, P}, acc);
            else micro_kernel<T>(kc, asrc, StridedB<T>{col + k0 * ld + j0, ld}, acc);
            store_segments(acc, mr, segs, nseg, out + ip * MR * P, P, kb > 0, kb == nkb - 1,
                           bias ? bias + gi * M + ip * MR : nullptr, act);
          }
        }
      }
    }
  });
}

// A convolution of a batch by direct_conv_image: for every image, group and split of the output's pixel
// panels, copy the group's C planes of `src` (channels_src planes of H x W an image), padded by (top,
// left), into phase planes of Hp x Wp (phase_planes; with unit stride, the padded planes), then multiply
// by the group's packed A (M rows, K = C * kh * kw) into its M planes of `dst` (channels_dst planes of
// OH x OW an image), window stride (sh, sw).
template <typename T>
void direct_conv_batch(const ConvShape& g, const T* src, int64_t channels_src, int64_t C, int64_t H, int64_t W,
                       int64_t top, int64_t left, int64_t sh, int64_t sw, const T* a, int64_t M, int64_t K, T* dst,
                       int64_t channels_dst, int64_t OH, int64_t OW, const T* bias, const Act<T>& act) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  const int64_t Hp = phase_extent(OH, g.kh, g.dh, sh), Wp = phase_extent(OW, g.kw, g.dw, sw);
  if (use_im2col_blocks<T>(OH, OW, Wp)) {
    im2col_conv_batch(g, src, channels_src, C, H, W, top, left, sh, sw, a, M, K, dst, channels_dst, OH, OW, bias, act);
    return;
  }
  const int64_t m_panels = ceil_div(M, MR), slack = NR + (g.kw - 1) * g.dw + 1;
  const std::vector<int64_t> off = shift_table(C, g.kh, g.kw, g.dh, g.dw, sh, sw, Hp, Wp);
  // (with Wp == OW, a 1-wide kernel, the padded-pitch grid has no dropped columns and a panel is one run)
  const bool row_panels = K <= kRowPanelMaxK && Wp != OW;
  const int64_t panels = row_panels ? OH * ceil_div(OW, NR) : ceil_div(OH * Wp, NR);
  const int64_t splits = direct_splits(g.n * g.groups, panels);
  const double flops = 2.0 * M * K * OH * OW / splits;
  at::parallel_for(0, g.n * g.groups * splits, grain_for(flops), [&](int64_t begin, int64_t end) {
    T* pad = scratch<T>(3, C * sh * sw * Hp * Wp + slack);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t sp = item % splits, gi = (item / splits) % g.groups, n = item / (splits * g.groups);
      phase_planes(src + (n * channels_src + gi * C) * H * W, C, H, W, top, left, sh, sw, Hp, Wp, pad, slack);
      direct_conv_image(pad, off.data(), a + gi * m_panels * K * MR, M, K, OH, OW, Wp,
                        dst + (n * channels_dst + gi * M) * OH * OW, bias ? bias + gi * M : nullptr, act,
                        sp * panels / splits, (sp + 1) * panels / splits, row_panels);
    }
  });
}

// Unit-stride grad input is the convolution of grad_output, padded by the dilated kernel extent
// minus the forward padding, with the kernel flipped and its channel axes swapped.
template <typename T>
void grad_input_direct(const ConvShape& g, const T* dy, const T* w, T* dx) {
  constexpr int MR = Tile<T>::MR;
  const int64_t khw = g.kh * g.kw, K = g.cout_g() * khw, M = g.cin_g(), m_panels = ceil_div(M, MR);
  std::vector<T, AlignedAllocator<T>> a(g.groups * m_panels * K * MR, T(0));
  for (int64_t gi = 0; gi < g.groups; ++gi)
    for (int64_t ci = 0; ci < M; ++ci)
      for (int64_t co = 0; co < g.cout_g(); ++co)
        for (int64_t r = 0; r < khw; ++r) {  // A[ci][(co, r)] = W[co][ci][flipped r]
          const int64_t k = co * khw + r;
          a[((gi * m_panels + ci / MR) * K + k) * MR + ci % MR] =
              w[((gi * g.cout_g() + co) * M + ci) * khw + (khw - 1 - r)];
        }
  direct_conv_batch(g, dy, g.c_out, g.cout_g(), g.oh, g.ow, (g.kh - 1) * g.dh - g.pt, (g.kw - 1) * g.dw - g.pl,
                    int64_t(1), int64_t(1), a.data(), M, K, dx, g.c_in, g.h, g.w, static_cast<const T*>(nullptr),
                    Act<T>{});
}

// ---------------------------------------------------------------- grad weight of a first layer
//
// A first layer's weight gradient (3x3 taps over 1-3 input channels: K = 9 or 27; with AVX-512 also 5x5:
// K = 25 to 75) is a small matrix reduced over every pixel of the batch, and the tiled GEMM below must
// first transpose the whole of dY into panels for it (whose NR lanes of output channels a layer of 6
// fills a fifth of). Here instead each dW[co][c][kh][kw] is a dot product along the pixels, W pixels a
// vector: CB output channels x CI input channels x R x R taps of accumulators in registers, each step one
// vector of dY' (the gradient on the padded pitch, zero in the dropped columns) per output channel and
// the R shifted vectors of each of the CI x R input rows. Each image's sums are added into its
// chunk's vector partials, which are summed across their lanes (in double) once per chunk; the chunks
// are added in chunk order: deterministic, for any thread count.

#if defined(__AVX512F__) || FASTCONV_WIDE_TILES
constexpr int kFirstLayerAcc = 27;  // accumulators a pass: 27 of the 32 registers
#else
constexpr int kFirstLayerAcc = 9;   // of the 16
#endif

// FASTCONV_CPU_FIRST_LAYER_GW=0 turns the dot products off (for tests and measurements)
inline bool first_layer_grad_weight_enabled() {
  const char* e = std::getenv("FASTCONV_CPU_FIRST_LAYER_GW");
  return !(e && *e == '0');
}

// Whether grad_weight_first_layer takes the layer: 3x3 taps, unit stride, unit column dilation (the taps
// of a row are adjacent), at most 3 input channels a group; and 5x5 taps where the accumulators fit
// (AVX-512) and there are at most 16 output channels a group, where the GEMM's panels of output channels
// are mostly empty: AMD EPYC Zen 4, batch 128, grad weight ms, GEMM / dot products
// (`FASTCONV_CPU_FIRST_LAYER_GW=0` / `=1 python bench/conv_layers.py 1,6,28,5 3,16,20,5 3,32,32,5`):
// 1 -> 6 at 28x28 1.23 / 0.33, 3 -> 16 at 20x20 1.58 / 1.35, 3 -> 32 at 32x32 4.30 / 6.27.
inline bool first_layer_grad_weight(const ConvShape& g) {
  const bool taps = (g.kh == 3 && g.kw == 3) || (g.kh == 5 && g.kw == 5 && kFirstLayerAcc >= 25 && g.cout_g() <= 16);
  return taps && g.sh == 1 && g.sw == 1 && g.dw == 1 && g.cin_g() <= 3 && first_layer_grad_weight_enabled();
}

// part[cb][(ci * R + kh) * R + kw] += sum over the J (whole vectors) pixels j of dy[cb][j] * x[ci][kh][j + kw]
template <typename T, int CI, int CB, int R = 3>
void first_layer_dots(const T* const* dy, const T* const* x, int64_t J, typename Tile<T>::V* __restrict__ part) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W, KT = CI * R * R;
  const T* d[CB];
  const T* r[CI * R];
  for (int b = 0; b < CB; ++b) d[b] = dy[b];
  for (int t = 0; t < CI * R; ++t) r[t] = x[t];
  V acc[CB][KT];
#pragma GCC unroll 32
  for (int b = 0; b < CB; ++b)
#pragma GCC unroll 32
    for (int t = 0; t < KT; ++t) acc[b][t] = V{};
  for (int64_t j = 0; j < J; j += W) {
    V gv[CB];
#pragma GCC unroll 4
    for (int b = 0; b < CB; ++b) std::memcpy(&gv[b], d[b] + j, sizeof(V));
#pragma GCC unroll 15
    for (int t = 0; t < CI * R; ++t)
#pragma GCC unroll 5
      for (int kw = 0; kw < R; ++kw) {
        V xv;
        std::memcpy(&xv, r[t] + j + kw, sizeof(V));
#pragma GCC unroll 4
        for (int b = 0; b < CB; ++b) acc[b][t * R + kw] += gv[b] * xv;
      }
  }
#pragma GCC unroll 32
  for (int b = 0; b < CB; ++b)
#pragma GCC unroll 32
    for (int t = 0; t < KT; ++t) part[b * KT + t] += acc[b][t];
}

template <typename T, int R>
void grad_weight_first_layer_r(const ConvShape& g, const T* dy, const T* x, T* dw, int64_t nchunks) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W, RR = R * R;
  const int64_t C = g.cin_g(), K = C * RR, M = g.cout_g();
  const int64_t Hp = g.oh + (R - 1) * g.dh, Wp = g.ow + R - 1, J = round_up<T>(g.oh * Wp, W);  // (the extra pixels: zero dY')
  // one input channel a pass, and as many output channels as the accumulators allow: 3x3 with AVX-512, 3
  // (3 dY vectors and 9 input vectors a step for 27 FMAs; 3 channels a pass, 27 input vectors for 27
  // FMAs, measured 1.13x slower on 3 -> 32 at 32x32 than the tiled GEMM, this 0.85x); 5x5, 1 (1 dY vector
  // and 25 input vectors a step for 25 FMAs)
  constexpr int CI = 1, CB = kFirstLayerAcc / RR;
  static_assert(CB >= 1, "a pass holds one output channel's taps");
  const auto dots = &first_layer_dots<T, CI, CB, R>;
  std::vector<double> sums(nchunks * g.groups * M * K);
  at::parallel_for(0, nchunks * g.groups, 1, [&](int64_t begin, int64_t end) {
    const int64_t plane = Hp * Wp, slack = J - g.oh * Wp + (R - 1) + W;  // the last rows' taps read this far past
    T* xpad = scratch<T>(3, C * plane + slack);
    T* dypad = scratch<T>(1, (M + 3) * J);  // (+ zero rows for a last, partial pass of CB channels)
    V* part = reinterpret_cast<V*>(scratch<T>(0, (M + 3) * K * W));  // [co][k] vector partials of the chunk
    std::fill(dypad + M * J, dypad + (M + 3) * J, T(0));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t gi = item % g.groups, chunk = item / g.groups;
      std::fill(part, part + (M + 3) * K, V{});
      for (int64_t n = chunk * g.n / nchunks; n < (chunk + 1) * g.n / nchunks; ++n) {
        pad_planes(x + (n * g.c_in + gi * C) * g.h * g.w, C, g.h, g.w, g.pt, g.pl, Hp, Wp, xpad, slack);
        for (int64_t co = 0; co < M; ++co) {
          T* d = dypad + co * J;
          pad_planes(dy + (n * g.c_out + gi * M + co) * g.oh * g.ow, int64_t(1), g.oh, g.ow, int64_t(0), int64_t(0),
                     g.oh, Wp, d, int64_t(0));
          std::fill(d + g.oh * Wp, d + J, T(0));
        }
        for (int64_t co = 0; co < M; co += CB)
          for (int64_t c0 = 0; c0 < C; c0 += CI) {
            const T* drows[CB];
            const T* xrows[CI * R];
            for (int b = 0; b < CB; ++b) drows[b] = dypad + (co + b) * J;
            for (int c = 0; c < CI; ++c)
              for (int kh = 0; kh < R; ++kh) xrows[c * R + kh] = xpad + (c0 + c) * plane + kh * g.dh * Wp;
            // part rows of CB channels, their taps c0 * R^2 .. (c0 + CI) * R^2: a pass writes CB x CI * R^2
            // consecutive partials only when CI == C; otherwise through a scratch block
            if (CI == C) {
              dots(drows, xrows, J, part + co * K);
            } else {
              V tmp[CB * CI * RR] = {};
              dots(drows, xrows, J, tmp);
              for (int b = 0; b < CB; ++b)
                for (int t = 0; t < CI * RR; ++t) part[(co + b) * K + c0 * RR + t] += tmp[b * CI * RR + t];
            }
          }
      }
      double* out = sums.data() + item * M * K;
      for (int64_t i = 0; i < M * K; ++i) {
        double s = 0;
        for (int l = 0; l < W; ++l) s += double(part[i][l]);
        out[i] = s;
      }
    }
  });
  for (int64_t gi = 0; gi < g.groups; ++gi)
    for (int64_t i = 0; i < M * K; ++i) {
      double s = 0;
      for (int64_t ch = 0; ch < nchunks; ++ch) s += sums[(ch * g.groups + gi) * M * K + i];
      dw[gi * M * K + i] = static_cast<T>(s);
    }
}

// 5x5 (AVX-512: 25 accumulators fit) or 3x3.
template <typename T>
void grad_weight_first_layer(const ConvShape& g, const T* dy, const T* x, T* dw, int64_t nchunks) {
  if constexpr (kFirstLayerAcc >= 25)
    if (g.kh == 5) return grad_weight_first_layer_r<T, 5>(g, dy, x, dw, nchunks);
  grad_weight_first_layer_r<T, 3>(g, dy, x, dw, nchunks);
}

// Unit-stride grad weight: dW^T[k][co] = sum_j xpad[off[k] + j] * dY'[j][co] over the padded-pitch
// grid j, with dY' the gradient transposed into NR-channel panels and zero on the dropped columns.
// A comes from MR shifted rows of the padded image (RowsA), B from the dY' panel; each MR x NR
// tile runs over a whole block of pixels in registers and is then added, as two vectors a row, into
// the chunk's [k][co] sum. The chunk sums are added in chunk order and transposed into dW[co][k].
template <typename T>
void grad_weight_direct(const ConvShape& g, const T* dy, const T* x, T* dw, int64_t nchunks) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  const int64_t K = g.k_gemm(), M = g.cout_g(), c_panels = ceil_div(M, NR), k_panels = ceil_div(K, MR);
  const int64_t CoP = c_panels * NR;  // row length of a chunk sum: output channels padded to NR
  const int64_t Hp = phase_extent(g.oh, g.kh, g.dh, g.sh), Wp = phase_extent(g.ow, g.kw, g.dw, g.sw), J = g.oh * Wp;
  const std::vector<int64_t> off = shift_table(g.cin_g(), g.kh, g.kw, g.dh, g.dw, g.sh, g.sw, Hp, Wp);
  std::vector<T, AlignedAllocator<T>> sums(nchunks * g.groups * K * CoP);
  const double flops = 2.0 * M * K * J * g.n / nchunks;
  // small maps (use_im2col_blocks): blocks of S images, their im2col columns `col` of pitch ld
  const int64_t P = g.oh * g.ow, ld_images = ceil_div(g.n, nchunks);  // (the largest chunk)
  const int64_t S = im2col_block_images<T>(K, P, ld_images, 512), ld = im2col_pitch<T>(S * P);
  const bool blocks = use_im2col_blocks<T>(g.oh, g.ow, Wp);
  const int64_t J_max = blocks ? S * P : J;
  // A 1x1 unit-stride unpadded layer on planes of a power of two of pixels (4x4, 2x2) builds no columns: its
  // input planes are the rows, read image after image (ImageRowsA). On 256 -> 128 at 4x4 the padded copy and
  // the columns were a third of the kernel's time (perf, AMD EPYC Zen 4, AVX-512).
  const int p_shift = __builtin_ctzll((unsigned long long)std::max<int64_t>(P, 1));
  const bool in_place = blocks && g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0 &&
                        g.oh == g.h && g.ow == g.w && P == (int64_t(1) << p_shift);
  at::parallel_for(0, nchunks * g.groups, grain_for(flops), [&](int64_t begin, int64_t end) {
    // the last rows' taps read up to this far past the planes (im2col_block: a vector more)
    const int64_t slack = (g.kw - 1) * g.dw + 1 + (blocks ? 2 * Tile<T>::W : 0);
    T* xpad = scratch<T>(3, g.cin_g() * g.sh * g.sw * Hp * Wp + slack);
    T* d = scratch<T>(0, c_panels * J_max * NR);
    T* dypad = scratch<T>(1, M * J_max);
    T* col = blocks && !in_place ? scratch<T>(5, std::max<int64_t>(K, 1) * ld) : nullptr;
    alignas(64) T acc[MR * NR];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t gi = item % g.groups, chunk = item / g.groups;
      T* c = sums.data() + item * K * CoP;  // item == chunk * groups + gi
      // dW^T[k][co] += sum_{j < jlen} A[k][j] B[j][co]: A's rows are rows[k] + j (shifted image rows, or
      // im2col rows), B is dY transposed into the NR-channel panels of d (jlen pixels each). The item's
      // first block of pixels writes every tile of c (no zeroing first), the others add to them.
      bool fresh = true;
      // a_of(k, j0, rows): the A source of rows[0 .. MR) (k-rows of dW^T) from pixel j0 on
      auto accumulate_a = [&](auto&& a_of, int64_t jlen) {
        for (int64_t j0 = 0; j0 < jlen; j0 += kDirectJB) {
          const int64_t jl = std::min(kDirectJB, jlen - j0);
          for (int64_t cp = 0; cp < c_panels; ++cp)
            for (int64_t kp = 0; kp < k_panels; ++kp) {
              const int mr = (int)std::min<int64_t>(MR, K - kp * MR);
              int64_t rows[MR];
              for (int i = 0; i < MR; ++i) rows[i] = i < mr ? kp * MR + i : 0;
              micro_kernel<T>(jl, a_of(rows, j0), PackedB<T>{d + (cp * jlen + j0) * NR}, acc);
              store_tile<T>(acc, mr, NR, c + kp * MR * CoP + cp * NR, CoP, !fresh, false, Epilogue<T>{}, 0, 0);
            }
          fresh = false;
        }
      };
      auto accumulate = [&](auto&& row_of, int64_t jlen) {
        accumulate_a([&](const int64_t* rows, int64_t j0) {
          RowsA<T> a;
          for (int i = 0; i < MR; ++i) a.row[i] = row_of(rows[i]) + j0;
          return a;
        }, jlen);
      };
      const int64_t n_lo = chunk * g.n / nchunks, n_hi = (chunk + 1) * g.n / nchunks;
      if (blocks) {  // small maps: im2col over blocks of S images, every pixel a valid one
        for (int64_t n0 = n_lo; n0 < n_hi; n0 += S) {
          const int64_t count = std::min(S, n_hi - n0), Jb = count * P;
          const T* planes = x + (n0 * g.c_in + gi * g.cin_g()) * g.h * g.w;
          if (!in_place)
            im2col_block(planes, g.c_in * g.h * g.w, count, g.cin_g(), g.h, g.w, g.pt, g.pl, g.sh, g.sw, Hp, Wp,
                         off.data(), K, g.oh, g.ow, xpad, slack, col, ld);
          for (int64_t s = 0; s < count; ++s)
            for (int64_t co = 0; co < M; ++co)
              copy_run(dypad + co * Jb + s * P, dy + ((n0 + s) * g.c_out + gi * M + co) * P, P);
          pack_transposed_panels(dypad, M, Jb, Jb, d);
          if (in_place)  // the im2col row of input channel k is its planes, image after image
            accumulate_a([&](const int64_t* rows, int64_t j0) {
              ImageRowsA<T> a;
              for (int i = 0; i < MR; ++i) a.row[i] = planes + rows[i] * P;
              a.shift = p_shift, a.stride = g.c_in * P, a.k0 = j0;
              return a;
            }, Jb);
          else
            accumulate([&](int64_t k) { return col + k * ld; }, Jb);
        }
        continue;
      }
      for (int64_t n = n_lo; n < n_hi; ++n) {
        phase_planes(x + (n * g.c_in + gi * g.cin_g()) * g.h * g.w, g.cin_g(), g.h, g.w, g.pt, g.pl, g.sh, g.sw, Hp,
                     Wp, xpad, slack);
        // dY' = the gradient on the padded pitch (zero in the dropped columns), transposed into panels
        pad_planes(dy + (n * g.c_out + gi * M) * g.oh * g.ow, M, g.oh, g.ow, int64_t(0), int64_t(0), g.oh, Wp,
                   dypad, int64_t(0));
        pack_transposed_panels(dypad, M, J, J, d);
        accumulate([&](int64_t k) { return xpad + off[k]; }, J);
      }
    }
  });
  // the chunks' sums added in chunk order, a W x W block (rows k, lanes co) at a time in vectors, then
  // transposed so that each output channel's W values of k go out as one run
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W;
  const int64_t kblocks = ceil_div(K, W), cblocks = ceil_div(M, W);
  at::parallel_for(0, g.groups * kblocks, std::max<int64_t>(1, 32768 / (W * M * nchunks)), [&](int64_t begin,
                                                                                                int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t gi = item / kblocks, k0 = item % kblocks * W;
      const int kn = (int)std::min<int64_t>(W, K - k0);
      for (int64_t cb = 0; cb < cblocks; ++cb) {
        const int64_t co0 = cb * W;
        V rows[W];
        for (int r = 0; r < W; ++r) {
          V acc{};
          if (r < kn)
            for (int64_t ch = 0; ch < nchunks; ++ch) {
              V v;
              std::memcpy(&v, sums.data() + ((ch * g.groups + gi) * K + k0 + r) * CoP + co0, sizeof(V));
              acc += v;
            }
          rows[r] = acc;
        }
        transpose_block<T>(rows);
        for (int c = 0; c < W && co0 + c < M; ++c)
          std::memcpy(dw + (gi * M + co0 + c) * K + k0, &rows[c], sizeof(T) * kn);
      }
    }
  });
}

// ---------------------------------------------------------------- Winograd (3x3 and 5x5, stride 1)

// Which algorithm a float32 3x3 or 5x5 stride-1 dilation-1 layer uses. FASTCONV_CPU_CONV=winograd or =gemm
// forces one (for tests and measurements); otherwise Winograd where it measured faster than the direct
// GEMM (batch 128, AMD EPYC AVX2 + FMA, 2 threads; the transforms cost O(C + M) per tile, the products
// O(C * M), so small channel counts favour the GEMM):
//   forward      C_in >= 16          (8 -> 16 at 32x32: equal; 8 -> 64 at 16x16: GEMM 10% faster;
//                                     16 -> 16: Winograd 18% faster)
//   grad input   C_out >= 8          (faster in every case measured, 64 -> 8 included)
//   grad weight  min(C_in, C_out) >= 16 and C_in * C_out >= 512
//                                    (16 -> 16: GEMM 13% faster; 16 -> 32: Winograd 7%; 32 -> 64 at
//                                     15x15: 26%; 8 -> 64: GEMM 17% faster)
constexpr int64_t kWinogradMinForward = 16, kWinogradMinGradInput = 8, kWinogradMinGradWeight = 16;
constexpr int64_t kWinogradMinGradWeightProduct = 512;
// ... and an output of at least a minimum of pixels that differs between the two kinds of core measured
// (2 threads, batch 128, GEMM / Winograd ms):
//   AMD EPYC Zen 5, AVX-512:      128 -> 128 at 8x8 9.1 / 14.0; 64 -> 64 at 13x13 4.8 / 6.4; 32 -> 64 at
//                                 15x15 3.7 / 3.7; 32 -> 32 at 30x30 6.5 / 6.1; 32 -> 64 at 24x24 8.6 / 7.0
//                                 -> at least 16 x 16
//   Intel Xeon (AMX-era), AVX-512: 128 -> 128 at 8x8 12.4 / 12.3; 64 -> 64 at 13x13 7.2 / 6.4; 32 -> 64 at
//                                 15x15 4.8 / 3.6; 64 -> 64 at 16x16 10.6 / 8.3; 32 -> 32 at 30x30 9.4 / 6.8
//                                 -> at least 8 x 8
// (the Intel figures after the Winograd tile addressing lost its per-lane divisions; the AMD ones before).
inline int64_t winograd_min_grad_weight_pixels() {
  static const int64_t px = __builtin_cpu_is("amd") ? 256 : 64;
  return px;
}
// 5x5 kernels (F(2x2, 5x5)) take the forward and grad input thresholds of 3x3 ones, and Winograd for the
// grad weight where C_in * C_out >= 1024, on any output size (AMD EPYC Zen 4, AVX-512, 2 threads, batch 128,
// GEMM / Winograd ms, `python bench/conv_layers.py 16,32,20,5 32,64,16,5 64,64,8,5 3,32,32,5`):
//   forward      16 -> 32 at 20x20 8.1 / 6.5; 32 -> 64 at 16x16 20.5 / 9.8; 64 -> 64 at 8x8 10.9 / 4.5;
//                3 -> 32 at 32x32 5.0 / 7.7
//   grad input   8.3 / 6.2; 20.8 / 10.0; 11.3 / 4.7; 9.7 / 8.9 (the same layers)
//   grad weight  8.0 / 9.2; 20.4 / 11.1; 11.7 / 8.1; 4.6 / 16.9
constexpr int64_t kWinograd5MinGradWeightProduct = 1024;

enum class Algo { kAuto, kWinograd, kGemm };

inline Algo forced_algo() {
  const char* e = std::getenv("FASTCONV_CPU_CONV");
  if (!e || !*e || !std::strcmp(e, "auto")) return Algo::kAuto;
  if (!std::strcmp(e, "winograd")) return Algo::kWinograd;
  if (!std::strcmp(e, "gemm")) return Algo::kGemm;
  TORCH_CHECK(false, "FASTCONV_CPU_CONV must be auto, winograd or gemm, not '", e, "'");
}

// The kernel sizes Winograd takes: 3x3 (F(4x4, 3x3)) and 5x5 (F(2x2, 5x5)).
inline bool winograd_kernel(const ConvShape& g) { return g.kh == g.kw && (g.kh == 3 || g.kh == 5); }

template <typename T>
bool use_winograd(const ConvShape& g, bool faster) {
  if (!std::is_same_v<T, float> || !winograd_kernel(g) || g.sh != 1 || g.sw != 1 || g.dh != 1 || g.dw != 1)
    return false;
  switch (forced_algo()) {
    case Algo::kWinograd: return true;
    case Algo::kGemm: return false;
    default: return faster;
  }
}

// The forward pass of a layer as its weight preparation (Winograd's U, or the packed A panels of the
// direct GEMM), done once, and runs over slices of the batch.
template <typename T>
class ForwardPlan {
 public:
  ForwardPlan(const ConvShape& g, const T* w) : g_(g), winograd_(use_winograd<T>(g, g.cin_g() >= kWinogradMinForward)) {
    const int64_t M = g.cout_g(), C = g.cin_g();
    if constexpr (std::is_same_v<T, float>) {
      if (winograd_) {
        const int64_t taps = g.kh * g.kw;
        auto tap = [&](int64_t gi, int64_t m, int64_t c, int r) { return w[((gi * M + m) * C + c) * taps + r]; };
        weights_ = g.kh == 3 ? winograd::transform_weights<float, 3>(g.groups, M, C, tap)
                             : winograd::transform_weights<float, 5>(g.groups, M, C, tap);
        return;
      }
    }
    constexpr int MR = Tile<T>::MR;
    const int64_t K = g.k_gemm(), m_panels = ceil_div(M, MR);
    weights_.resize(g.groups * m_panels * std::max<int64_t>(K, 1) * MR);
    for (int64_t gi = 0; gi < g.groups; ++gi)
      pack_a_strided(w + gi * M * K, M, K, K, int64_t(1), weights_.data() + gi * m_panels * K * MR);
  }

  // The outputs of images [n0, n0 + count) of x, into `count` images of C_out x OH x OW at out.
  void run(const T* x, int64_t n0, int64_t count, const T* bias, const Activation& act, T* out) const {
    const ConvShape& g = g_;
    const T* xs = x + n0 * g.c_in * g.h * g.w;
    if constexpr (std::is_same_v<T, float>) {
      if (winograd_) {
        (g.kh == 3 ? winograd::conv_batch<3> : winograd::conv_batch<5>)(
            count, g.groups, xs, g.cin_g(), weights_.data(), g.cout_g(), out,
            winograd::Planes{g.c_in, g.h, g.w, g.pt, g.pl, g.c_out, g.oh, g.ow}, bias, Act<float>(act));
        return;
      }
    }
    ConvShape slice = g;
    slice.n = count;
    direct_conv_batch(slice, xs, g.c_in, g.cin_g(), g.h, g.w, g.pt, g.pl, g.sh, g.sw, weights_.data(), g.cout_g(),
                      g.k_gemm(), out, g.c_out, g.oh, g.ow, bias, Act<T>(act));
  }

 private:
  ConvShape g_;
  bool winograd_;
  std::vector<T, AlignedAllocator<T>> weights_;
};

// Grad input: grad_output padded by R - 1 - padding, convolved with the flipped kernel, channels swapped.
template <typename T>
void grad_input_winograd(const ConvShape& g, const T* dy, const T* w, T* dx) {
  if constexpr (std::is_same_v<T, float>) {
    const int64_t M = g.cin_g(), C = g.cout_g(), taps = g.kh * g.kw;
    auto tap = [&](int64_t gi, int64_t m, int64_t c, int r) { return w[((gi * C + c) * M + m) * taps + taps - 1 - r]; };
    const auto u = g.kh == 3 ? winograd::transform_weights<float, 3>(g.groups, M, C, tap)
                             : winograd::transform_weights<float, 5>(g.groups, M, C, tap);
    (g.kh == 3 ? winograd::conv_batch<3> : winograd::conv_batch<5>)(
        g.n, g.groups, dy, C, u.data(), M, dx,
        winograd::Planes{g.c_out, g.oh, g.ow, g.kh - 1 - g.pt, g.kw - 1 - g.pl, g.c_in, g.h, g.w}, nullptr,
        Act<float>{});
  }
}

// ---------------------------------------------------------------- packed paths (any stride)

// Strided grad input as a GEMM into columns and a scatter back (col2im), per (image, group) and
// block of output pixels:
//   dcol[r][p] = sum_co W[co][r] * dY[co][p],  r = (ci, kh, kw), p = (oh, ow)
//   dX[ci][oh * sh - pt + kh * dh][ow * sw - pl + kw * dw] += dcol[r][p]
// (A transposed implicit GEMM, gathering dY on the input grid, would gather mostly zeros -- 3 of 4 for
// stride 2 -- and pay a division per element to find them; this GEMM does only the useful products.)
// Each image is scattered by one thread, rows r in order: deterministic for any thread count.
template <typename T>
void grad_input_col2im(const ConvShape& g, const T* dy, const T* w, T* dx) {
  constexpr int NR = Tile<T>::NR;
  const int64_t P = g.oh * g.ow, khw = g.kh * g.kw, R = g.cin_g() * khw, K = g.cout_g(), Q = g.h * g.w;
  const int64_t n_kblocks = ceil_div(K, kKC);
  // pixels per block: the column buffer (R x NB) stays near 1 MiB
  const int64_t NB = std::clamp<int64_t>(round_up<T>(262144 / std::max<int64_t>(R, 1), NR), NR, 4096);
  const double flops = 2.0 * R * K * P;
  at::parallel_for(0, g.n * g.groups, grain_for(flops), [&](int64_t begin, int64_t end) {
    T* dcol = scratch<T>(5, R * std::min(NB, P));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t gi = item % g.groups, n = item / g.groups;
      const T* wg = w + gi * K * R;
      const T* dyg = dy + (n * g.c_out + gi * K) * P;
      T* dxg = dx + (n * g.c_in + gi * g.cin_g()) * Q;
      std::memset(dxg, 0, sizeof(T) * g.cin_g() * Q);
      for (int64_t p0 = 0; p0 < P; p0 += NB) {
        const int64_t plen = std::min(NB, P - p0);
        auto pack_a = [&](int64_t kb, T* dst) {
          const int64_t k0 = kb * kKC, kc = std::min(kKC, K - k0);
          pack_a_strided(wg + k0 * R, R, kc, int64_t(1), R, dst);
          return kc;
        };
        auto pack_b = [&](int64_t kb, int64_t kc, T* dst) {
          pack_b_rows<T>(kc, p0, plen, dst, [&](int64_t k, int64_t p, int64_t cnt, T* d) {
            std::memcpy(d, dyg + (kb * kKC + k) * P + p, sizeof(T) * cnt);
          });
        };
        gemm_block<T>(R, plen, n_kblocks, pack_a, pack_b, dcol, plen, false, Epilogue<T>{});
        for (int64_t r = 0; r < R; ++r) {
          const int64_t ci = r / khw, kh = (r % khw) / g.kw, kw = r % g.kw;
          const T* col = dcol + r * plen;
          T* plane = dxg + ci * Q;
          for (int64_t p = p0; p < p0 + plen;) {  // one output row (or the part of it in the block) at a time
            const int64_t oh = p / g.ow, ow0 = p % g.ow, run = std::min(g.ow - ow0, p0 + plen - p);
            const int64_t ih = oh * g.sh - g.pt + kh * g.dh;
            if (ih >= 0 && ih < g.h) {
              T* row = plane + ih * g.w;
              const T* c = col + (p - p0);
              for (int64_t j = 0; j < run; ++j) {
                const int64_t iw = (ow0 + j) * g.sw - g.pl + kw * g.dw;
                if (iw >= 0 && iw < g.w) row[iw] += c[j];
              }
            }
            p += run;
          }
        }
      }
    }
  });
}

// Number of image chunks of the weight-gradient reduction: a function of the batch size only.
inline int64_t weight_grad_chunks(int64_t n) { return std::min<int64_t>(n, 8); }

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      bool relu, double negative_slope) {
  const ConvShape g = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const Activation act = check_activation(relu, negative_slope, "conv2d");
  return in_float32(
      [&](const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
        at::Tensor out = cpu::empty({g.n, g.c_out, g.oh, g.ow}, input.options());
        if (out.numel() == 0) return out;
        const at::Tensor x = input.contiguous(), w = weight.contiguous(), b = contiguous_or_none(bias);
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_conv2d", [&] {
          ForwardPlan<scalar_t>(g, w.const_data_ptr<scalar_t>())
              .run(x.const_data_ptr<scalar_t>(), 0, g.n, b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, act,
                   out.mutable_data_ptr<scalar_t>());
        });
        return out;
      },
      input, weight, bias);
}

at::Tensor conv2d_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                 at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups) {
  const ConvShape g = check_conv2d_backward("conv2d_grad_input", grad_output, weight, "weight", input_size,
                                            weight.sizes(), stride, padding, dilation, groups);
  return in_float32(
      [&](const at::Tensor& grad_output, const at::Tensor& weight) {
        at::Tensor dx = cpu::empty(input_size, grad_output.options());
        if (dx.numel() == 0) return dx;
        if (grad_output.numel() == 0) return dx.zero_();
        const at::Tensor dy = grad_output.contiguous(), w = weight.contiguous();
        AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_conv2d_grad_input", [&] {
          auto impl = use_winograd<scalar_t>(g, g.cout_g() >= kWinogradMinGradInput) ? grad_input_winograd<scalar_t>
                      : g.sh == 1 && g.sw == 1          ? grad_input_direct<scalar_t>
                                                        : grad_input_col2im<scalar_t>;
          impl(g, dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>());
        });
        return dx;
      },
      grad_output, weight);
}

// dW: Winograd where it measured faster, otherwise the direct GEMM over phase planes (any stride), whose
// per-chunk sums are added in chunk order (bitwise the same for any thread count).
template <typename T>
void grad_weight(const ConvShape& g, const T* dy, const T* x, T* dw) {
  if constexpr (std::is_same_v<T, float>) {
    const bool faster = std::min(g.cin_g(), g.cout_g()) >= kWinogradMinGradWeight &&
                        (g.kh == 5 ? g.cin_g() * g.cout_g() >= kWinograd5MinGradWeightProduct
                                   : g.cin_g() * g.cout_g() >= kWinogradMinGradWeightProduct &&
                                         g.oh * g.ow >= winograd_min_grad_weight_pixels());
    if (use_winograd<T>(g, faster)) {
      (g.kh == 3 ? winograd::grad_weight_batch<3> : winograd::grad_weight_batch<5>)(
          g.n, g.groups, x, g.cin_g(), dy, g.cout_g(), dw,
          winograd::Planes{g.c_in, g.h, g.w, g.pt, g.pl, g.c_out, g.oh, g.ow});
      return;
    }
  }
  if (first_layer_grad_weight(g)) {
    grad_weight_first_layer<T>(g, dy, x, dw, weight_grad_chunks(g.n));
    return;
  }
  grad_weight_direct<T>(g, dy, x, dw, weight_grad_chunks(g.n));
}

at::Tensor conv2d_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                  at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups) {
  const ConvShape g = check_conv2d_backward("conv2d_grad_weight", grad_output, input, "input", input.sizes(),
                                            weight_size, stride, padding, dilation, groups);
  return in_float32(
      [&](const at::Tensor& grad_output, const at::Tensor& input) {
        at::Tensor dw = cpu::empty(weight_size, grad_output.options());
        if (dw.numel() == 0) return dw;
        if (grad_output.numel() == 0) return dw.zero_();
        const at::Tensor dy = grad_output.contiguous(), x = input.contiguous();
        AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_conv2d_grad_weight", [&] {
          grad_weight<scalar_t>(g, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                dw.mutable_data_ptr<scalar_t>());
        });
        return dw;
      },
      grad_output, input);
}

// conv2d_pool: the convolution (with its ReLU) and the max-pooling of its output by non-overlapping
// windows, one slice of the batch at a time: each slice's pre-pool outputs (about 4 MiB) go to a buffer
// that stays in cache between the two, so the full-size pre-pool tensor is never written to memory.
// Outputs and indices are those of conv2d followed by max_pool2d, bit for bit: every output of the
// convolution is computed the same way whatever the slice it falls in.
// With a 16-bit `rounding` type (the op's arguments were float16 / bfloat16, computed in float32), the
// convolution's outputs are rounded to it before they are pooled, as conv2d's 16-bit output would be:
// the maxima (and so the indices) are those of the unfused ops.
template <typename T>
void conv_pool(const ConvShape& g, const PoolShape& ps, const T* x, const T* w, const T* bias, const Activation& act, T* stage,
               int64_t slice, T* out, int64_t* idx, std::optional<at::ScalarType> rounding) {
  const ForwardPlan<T> plan(g, w);
  const int64_t plane = g.oh * g.ow, pooled = ps.oh * ps.ow;
  for (int64_t n0 = 0; n0 < g.n; n0 += slice) {
    const int64_t count = std::min(slice, g.n - n0);
    plan.run(x, n0, count, bias, act, stage);
    if (rounding) {
      const int64_t total = count * g.c_out * plane;
      if (*rounding == at::kBFloat16)
        for (int64_t i = 0; i < total; ++i) stage[i] = static_cast<T>(static_cast<float>(c10::BFloat16(stage[i])));
      else
        for (int64_t i = 0; i < total; ++i) stage[i] = static_cast<T>(static_cast<float>(c10::Half(stage[i])));
    }
    at::parallel_for(0, count * g.c_out, std::max<int64_t>(1, 32768 / plane), [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p)
        pool_plane(stage + p * plane, g.oh, g.ow, ps.oh, ps.ow, ps.kh, ps.kw, ps.sh, ps.sw, int64_t(0), int64_t(0),
                   int64_t(1), int64_t(1), out + (n0 * g.c_out + p) * pooled, idx + (n0 * g.c_out + p) * pooled);
    });
  }
}

std::tuple<at::Tensor, at::Tensor> conv2d_pool_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                                   bool relu, at::IntArrayRef pool, double negative_slope) {
  const auto shapes = check_conv2d_pool(input, weight, bias, stride, padding, dilation, groups, pool);
  const Activation act = check_activation(relu, negative_slope, "conv2d_pool");
  const ConvShape& g = shapes.first;
  const PoolShape& ps = shapes.second;
  const std::optional<at::ScalarType> rounding =
      is_reduced(input) ? std::optional<at::ScalarType>(input.scalar_type()) : std::nullopt;
  return in_float32(
      [&](const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
        at::Tensor out = cpu::empty({g.n, g.c_out, ps.oh, ps.ow}, input.options());
        at::Tensor idx = cpu::empty({g.n, g.c_out, ps.oh, ps.ow}, input.options().dtype(at::kLong));
        if (out.numel() == 0) return std::make_tuple(out, idx);
        const at::Tensor x = input.contiguous(), w = weight.contiguous(), b = contiguous_or_none(bias);
        const int64_t image_bytes = g.c_out * g.oh * g.ow * int64_t(x.element_size());
        const int64_t slice =
            std::min(g.n, std::max<int64_t>(4 * at::get_num_threads(), (int64_t(4) << 20) / image_bytes));
        at::Tensor stage = cpu::empty({slice, g.c_out, g.oh, g.ow}, input.options());
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_conv2d_pool", [&] {
          conv_pool<scalar_t>(g, ps, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                              b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, act,
                              stage.mutable_data_ptr<scalar_t>(), slice, out.mutable_data_ptr<scalar_t>(),
                              idx.mutable_data_ptr<int64_t>(), rounding);
        });
        return std::make_tuple(out, idx);
      },
      input, weight, bias);
}

#if !defined(FASTCONV_NO_SIMULATOR)
// Under fastconv.simulate(): the simulated CUDA convolution, then the simulated max-pooling.
std::tuple<at::Tensor, at::Tensor> conv2d_pool_sim(const at::Tensor& input, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                                   bool relu, at::IntArrayRef pool, double negative_slope) {
  check_conv2d_pool(input, weight, bias, stride, padding, dilation, groups, pool);
  const at::Tensor y = sim::conv2d(input, weight, bias, stride, padding, dilation, groups, relu, negative_slope);
  const int64_t zero[2] = {0, 0}, one[2] = {1, 1};
  return sim::max_pool2d(y, pool, pool, zero, one, false);
}
#endif

// Sum of grad_output over every dimension but `channel_dim`: the gradient of a per-channel bias.
at::Tensor bias_grad_impl(const BiasGradShape& shape, const at::Tensor& grad_output) {
  const at::Tensor g = grad_output.contiguous();
  const int64_t C = shape.channels, outer = shape.outer, inner = shape.inner;
  at::Tensor out = cpu::empty({C}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "fastconv_bias_grad", [&] {
    const scalar_t* src = g.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    using V = Tile<scalar_t>::V;
    if (inner == 1) {
      // one value per (row, channel) (a linear layer's bias, a 1x1 map): each channel's sum in double, row
      // after row, as below, but a block of channels at a time along the rows (a stride-C walk per channel
      // measured 185 us for 128 x 512)
      constexpr int64_t kBlock = 256;
      at::parallel_for(0, ceil_div(C, kBlock), grain_for(double(outer) * kBlock), [&](int64_t b, int64_t e) {
        for (int64_t blk = b; blk < e; ++blk) {
          const int64_t c0 = blk * kBlock, n = std::min(kBlock, C - c0);
          double acc[kBlock] = {};
          for (int64_t o = 0; o < outer; ++o) {
            const scalar_t* __restrict__ row = src + o * C + c0;
            for (int64_t j = 0; j < n; ++j) acc[j] += double(row[j]);
          }
          for (int64_t j = 0; j < n; ++j) dst[c0 + j] = static_cast<scalar_t>(acc[j]);
        }
      });
      return;
    }
    at::parallel_for(0, C, grain_for(double(outer) * inner), [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        double s = 0;  // each row's sum (row_sum), then the rows in double, in order
        for (int64_t o = 0; o < outer; ++o) {
          const scalar_t* row = src + (o * C + c) * inner;
          s += row_sum<scalar_t>(
              inner, [&](int64_t i) { V v; std::memcpy(&v, row + i, sizeof(V)); return v; },
              [&](int64_t i) { return double(row[i]); });
        }
        dst[c] = static_cast<scalar_t>(s);
      }
    });
  });
  return out;
}

at::Tensor bias_grad_cpu(const at::Tensor& grad_output, int64_t channel_dim) {
  const BiasGradShape shape = check_bias_grad(grad_output, channel_dim);
  return in_float32([&](const at::Tensor& grad_output) { return bias_grad_impl(shape, grad_output); }, grad_output);
}

}  // namespace

// Under fastconv.simulate() these ops run their CUDA kernels in the simulator (csrc/sim/sim.h).
TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d", &sim::Routed<conv2d_cpu, sim::conv2d>::call);
#if defined(FASTCONV_NO_SIMULATOR)
  m.impl("conv2d_pool", &conv2d_pool_cpu);
#else
  m.impl("conv2d_pool", &sim::Routed<conv2d_pool_cpu, conv2d_pool_sim>::call);
#endif
  m.impl("conv2d_grad_input", &sim::Routed<conv2d_grad_input_cpu, sim::conv2d_grad_input>::call);
  m.impl("conv2d_grad_weight", &sim::Routed<conv2d_grad_weight_cpu, sim::conv2d_grad_weight>::call);
  m.impl("bias_grad", &sim::Routed<bias_grad_cpu, sim::bias_grad>::call);
}

}  // namespace fastconv::cpu
