// winograd.h: stride-1, dilation-1 convolution as Winograd F(4x4, 3x3) (3x3 kernels) and F(2x2, 5x5)
// (5x5 kernels) on the CPU.
//
// An m x m block of outputs ("tile") of one channel needs a 6x6 patch d of the input (m = 4 for 3x3
// kernels, m = 2 for 5x5: m + R - 1 = 6 either way). With the transforms below (interpolation points 0,
// 1, -1, 2, -2 and infinity),
//   y = A^T [ sum_c (G g_c G^T) .* (B^T d_c B) ] A
// gives the m^2 outputs from 36 products per input channel instead of m^2 R^2 (144 for 3x3, 100 for
// 5x5). B^T (6 x 6) depends on the points only, so both kernel sizes share the input transform; G (6 x R)
// evaluates the filter at the points (row p: [1, p, .., p^(R-1)] times the Lagrange factor of p: 1/4,
// -1/6, -1/6, 1/24, 1/24, and for infinity the leading coefficient), and A^T (m x 6) the powers 0 .. m-1
// of the points (infinity adding into the highest). Summed over the input channels, each of the 36
// points xi is a GEMM of its own:
//   M[xi][co][t] = sum_c U[xi][co][c] * V[xi][c][t],   U = G g G^T (weights), V = B^T d B (input)
// FLOPs per tile and channel pair: 72 instead of the direct convolution's 288 (3x3: 4x fewer) or 200
// (5x5, 2x2 tiles: 2.8x fewer); the transforms cost O(C + M) per tile, not O(C * M).
//
// Layout. A work item is (a few images, group[, a range of panels when the batch is too small to
// keep the threads busy]). Its images' C planes are copied, zero-padded, into scratch (m th + R - 1
// rows of m tw + R - 1, so that every 6x6 patch lies inside); their tiles are numbered in one sequence
// (image, tile row, tile column) and cut into panels of NR tiles, one tile per vector lane, so every
// transform is whole-vector arithmetic over NR tiles. Per panel: the patches are gathered and
// transformed channel by channel into V[xi][c][NR] -- for each xi the packed B operand of gemm.h's
// micro-kernel --, multiplied by U[xi] (packed A panels of MR output channels, prepared once per
// call) into M[co][xi][NR], and transformed back into m x m tiles with the bias and ReLU, written
// straight into the output planes (tiles across the planes' right or bottom edge cropped; a staging
// copy of 4 th x 4 tw planes copied out in rows measured 2-12% slower on AMD EPYC Zen 5, AVX-512, and
// 2% faster on one layer, 32 -> 64 at 24 x 24). Loop order per panel: xi outer, output-channel panels inner, so the B panel
// (C x NR) and U[xi] (C x M) stay in L1 while the MR x NR tiles are computed.
//
// Grad input of such a layer is the same computation on grad_output, padded by R - 1 - padding, with
// the kernel flipped and its channel axes swapped (conv2d.cpp). Grad weight is the transposed map:
//   dW[co][c] = G^T [ sum_t (A dY_t A^T)[co] .* (B^T d_t B)[c] ] G
// a GEMM over tiles per xi (grad_weight_batch below).
//
// Each output is computed by one work item in a fixed order: results do not depend on the thread
// count. Rounding: the transforms add a few ulps per stage; bench/winograd_accuracy.py measures the
// error against float64 next to torch's float32 error.
#pragma once

#include <ATen/Parallel.h>

#include <vector>

#include "cpu/gemm.h"

namespace fastconv::cpu::winograd {

constexpr int kIn = 6;     // input tile edge: m + R - 1
constexpr int kXi = 36;    // transformed points: kIn * kIn

// The output tile edge m of F(m x m, R x R): 4 for R = 3, 2 for R = 5.
template <int R>
constexpr int out_edge() {
  static_assert(R == 3 || R == 5, "Winograd takes 3x3 and 5x5 kernels");
  return kIn - R + 1;
}

// ---------------------------------------------------------------- the 1-D transforms
// A 2-D transform applies its 1-D map along both axes of a tile. X is a scalar or a vector type;
// s is the distance between the six (or four, or three) elements read, vs (us, ...) between those written.

// v = B^T d
template <typename X>
inline void input_1d(const X* d, int s, X* v, int vs) {
  const X d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
  v[0] = 4 * d0 - 5 * d2 + d4;
  v[vs] = d3 + d4 - 4 * (d1 + d2);
  v[2 * vs] = d4 - d3 + 4 * (d1 - d2);
  v[3 * vs] = d4 - d2 + 2 * (d3 - d1);
  v[4 * vs] = d4 - d2 + 2 * (d1 - d3);
  v[5 * vs] = 4 * d1 - 5 * d3 + d5;
}

// y = A^T m (6 -> m)
template <int R, typename X>
inline void output_1d(const X* m, int s, X* y, int ys) {
  const X m0 = m[0], m1 = m[s], m2 = m[2 * s], m3 = m[3 * s], m4 = m[4 * s], m5 = m[5 * s];
  const X p12 = m1 + m2, n12 = m1 - m2, p34 = m3 + m4, n34 = m3 - m4;
  y[0] = m0 + p12 + p34;
  if constexpr (R == 3) {
    y[ys] = n12 + 2 * n34;
    y[2 * ys] = p12 + 4 * p34;
    y[3 * ys] = n12 + 8 * n34 + m5;
  } else {
    y[ys] = n12 + 2 * n34 + m5;
  }
}

// u = G g (R -> 6; true divisions: products with rounded reciprocals pushed one output of test_winograd
// past its float32 tolerance)
template <int R, typename X>
inline void weight_1d(const X* g, int s, X* u, int us) {
  if constexpr (R == 3) {
    const X g0 = g[0], g1 = g[s], g2 = g[2 * s];
    u[0] = g0 / 4;
    u[us] = -(g0 + g1 + g2) / 6;
    u[2 * us] = -(g0 - g1 + g2) / 6;
    u[3 * us] = g0 / 24 + g1 / 12 + g2 / 6;
    u[4 * us] = g0 / 24 - g1 / 12 + g2 / 6;
    u[5 * us] = g2;
  } else {
    const X g0 = g[0], g1 = g[s], g2 = g[2 * s], g3 = g[3 * s], g4 = g[4 * s];
    const X even = g0 + g2 + g4, odd = g1 + g3, even2 = g0 + 4 * g2 + 16 * g4, odd2 = 2 * g1 + 8 * g3;
    u[0] = g0 / 4;
    u[us] = -(even + odd) / 6;
    u[2 * us] = -(even - odd) / 6;
    u[3 * us] = (even2 + odd2) / 24;
    u[4 * us] = (even2 - odd2) / 24;
    u[5 * us] = g4;
  }
}

// z = A y (the transpose of output_1d: m -> 6)
template <int R, typename X>
inline void grad_output_1d(const X* y, int s, X* z, int zs) {
  if constexpr (R == 3) {
    const X y0 = y[0], y1 = y[s], y2 = y[2 * s], y3 = y[3 * s];
    const X e = y0 + y2, o = y1 + y3, e4 = y0 + 4 * y2, o8 = 2 * y1 + 8 * y3;
    z[0] = y0;
    z[zs] = e + o;
    z[2 * zs] = e - o;
    z[3 * zs] = e4 + o8;
    z[4 * zs] = e4 - o8;
    z[5 * zs] = y3;
  } else {
    const X y0 = y[0], y1 = y[s];
    z[0] = y0;
    z[zs] = y0 + y1;
    z[2 * zs] = y0 - y1;
    z[3 * zs] = y0 + 2 * y1;
    z[4 * zs] = y0 - 2 * y1;
    z[5 * zs] = y1;
  }
}

// g = G^T s (the transpose of weight_1d: 6 -> R)
template <int R, typename X>
inline void grad_weight_1d(const X* s6, int s, X* g, int gs) {
  const X s0 = s6[0], s1 = s6[s], s2 = s6[2 * s], s3 = s6[3 * s], s4 = s6[4 * s], s5 = s6[5 * s];
  if constexpr (R == 3) {
    g[0] = s0 / 4 - (s1 + s2) / 6 + (s3 + s4) / 24;
    g[gs] = (s2 - s1) / 6 + (s3 - s4) / 12;
    g[2 * gs] = (s3 + s4 - s1 - s2) / 6 + s5;
  } else {
    const X p12 = s1 + s2, n21 = s2 - s1, p34 = s3 + s4, n34 = s3 - s4;
    g[0] = s0 / 4 - p12 / 6 + p34 / 24;
    g[gs] = n21 / 6 + n34 / 12;
    g[2 * gs] = (p34 - p12) / 6;
    g[3 * gs] = n21 / 6 + n34 / 3;
    g[4 * gs] = 2 * p34 / 3 - p12 / 6 + s5;
  }
}

// 2-D, on scalars: out[i][j] (out_n x out_n) from in[k][l] (in_n x in_n), both row-major, by f on the
// columns into tmp and then on the rows (the weights and the weight gradient; the tiles' transforms
// are fused with their gather and store below).
template <int in_n, int out_n, typename X, typename F>
inline void transform_2d(const X* in, X* out, F f) {
  X tmp[out_n * in_n];
  for (int l = 0; l < in_n; ++l) f(in + l, in_n, tmp + l, in_n);            // columns: tmp[i][l]
  for (int i = 0; i < out_n; ++i) f(tmp + i * in_n, 1, out + i * out_n, 1);  // rows
}

// ---------------------------------------------------------------- weights

// U for a set of R x R filters: u[gi][xi][ip][c][MR] = (G w(gi, m, c) G^T)[xi], m = ip * MR + i,
// zero for the padding rows m >= M. w(gi, m, c, r) returns tap r = kh * R + kw of filter (m, c).
template <typename T, int R, typename Weight>
std::vector<T, AlignedAllocator<T>> transform_weights(int64_t groups, int64_t M, int64_t C, Weight w) {
  constexpr int MR = Tile<T>::MR;
  const int64_t m_panels = ceil_div(M, MR);
  std::vector<T, AlignedAllocator<T>> u(groups * kXi * m_panels * C * MR);
  // a panel of MR filters at a time, one filter per lane of a vector (the same operations as on scalars,
  // so the same bits): the MR values of each point go out as one contiguous run, and each of the 36
  // point streams is written sequentially
  typedef T VW __attribute__((vector_size(8 * sizeof(T))));
  static_assert(MR <= 8, "a panel's filters fit the lanes");
  at::parallel_for(0, groups * m_panels, std::max<int64_t>(1, 512 / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t gi = row / m_panels, ip = row % m_panels;
      const int rows = (int)std::min<int64_t>(MR, M - ip * MR);
      for (int64_t c = 0; c < C; ++c) {
        VW g[R * R] = {}, t[kXi];
        for (int r = 0; r < R * R; ++r)
          for (int i = 0; i < rows; ++i) g[r][i] = w(gi, ip * MR + i, c, r);
        transform_2d<R, kIn>(g, t, [](const VW* a, int s, VW* o, int os) { weight_1d<R>(a, s, o, os); });
        for (int xi = 0; xi < kXi; ++xi)
          std::memcpy(u.data() + (((gi * kXi + xi) * m_panels + ip) * C + c) * MR, &t[xi], sizeof(T) * MR);
      }
    }
  });
  return u;
}

// ---------------------------------------------------------------- the batch of tiles

typedef float V8 __attribute__((vector_size(32)));  // 8 lanes: the transposes below work on 8 x 8 blocks

// Where a convolution reads and writes: group g's C planes, from channel g * C of each image
// (channels_in per image, H x W), read as if zero-padded by (top, left); its M planes, from channel
// g * M (channels_out per image, OH x OW).
struct Planes {
  int64_t channels_in, H, W, top, left;
  int64_t channels_out, OH, OW;
};

// The tile grid of one image and how a work item covers the batch. The input of `images` images is
// copied zero-padded into an Hp x Wp scratch per plane that holds every patch (Hp = m th + R - 1), so the
// gather needs no bounds checks; it stays in L2 while the item runs, and the input tensor is read in
// long runs.
struct Grid {
  int64_t th, tw, per_image;  // tiles per column and row, and per image
  int64_t Hp, Wp;             // padded input plane
  int64_t images;             // images per work item
  int64_t splits;             // work items per chunk of images (a batch too small for the threads)
};

// `threads`: the threads to keep busy (0: none -- the grouping must then not depend on the thread count,
// as the weight gradient's summation order follows it).
// The padded input planes of one work item stay within this: 1 MiB, which measured best on 4x4 maps, where
// an image is one tile and 28 images of 256 channels are needed to fill a panel. Intel Xeon (2 MiB of L2 a
// core), grad input of 128 -> 256 at 4x4: 5.8 ms with 512 KiB, 3.1 ms with 1 MiB, 3.3 ms with 1.5 MiB; AMD
// EPYC Zen 4 (1 MiB of L2), with 512 KiB / 1 MiB / 1.25 MiB: 6.1 / 4.8 / 5.0 ms, and 256 -> 256 at 4x4 forward
// 11.0 / 8.9 / 7.9 ms, grad input 11.0 / 7.9 / 8.2 ms, the larger maps unchanged (2 threads, batch 128, `FASTCONV_WINOGRAD_PAD_KIB=1024
// python bench/conv_layers.py 128,256,4,3 256,256,4,3 64,128,8,3 32,64,16,3`). FASTCONV_WINOGRAD_PAD_KIB
// overrides it, for measurements.
inline const int64_t kWinogradPadBudget = [] {
  const char* e = std::getenv("FASTCONV_WINOGRAD_PAD_KIB");
  return (e && *e ? std::atoll(e) : int64_t(1024)) << 10;
}();

template <int R>
Grid make_grid(int64_t n, int64_t groups, const Planes& pl, int nr, int64_t threads) {
  constexpr int kOut = out_edge<R>();
  Grid g;
  g.th = ceil_div(pl.OH, kOut);
  g.tw = ceil_div(pl.OW, kOut);
  g.per_image = g.th * g.tw;
  g.Hp = kOut * g.th + R - 1;
  g.Wp = kOut * g.tw + R - 1;
  // Images per item: the fewest (up to a panel's lanes) whose tiles fill at least 90% of the panels'
  // lanes, as long as there are still two items per thread and their padded input planes stay within
  // kWinogradPadBudget (an 8 x 8 output has 4 tiles an image: 8 images fill the 32 lanes of an AVX-512 panel; a
  // 4 x 4 output has one, and 32 images do).
  const int64_t image_bytes = pl.channels_in / std::max<int64_t>(groups, 1) * g.Hp * g.Wp * int64_t(sizeof(float));
  g.images = 1;
  for (int64_t k = 1; k <= nr; ++k) {
    if (k > 1 && (ceil_div(n, k) * groups < 2 * threads || k * image_bytes > kWinogradPadBudget)) break;
    g.images = k;
    if (10 * k * g.per_image >= 9 * round_up<float>(k * g.per_image, nr)) break;
  }
  // Then, with threads to keep busy, more images per item where that shortens the busiest thread's share
  // (items a thread times panels an item) within the same limits: a 4 x 4 output reaches 90% at 29 images,
  // which cuts a batch of 128 into 5 items, 3 on one of two threads and 2 on the other; 32 images make 4
  // (128 -> 256 at 4x4: forward 3.4 -> 2.4-2.6 ms, grad input 4.4-5.0 -> 3.8-4.3 ms, AMD EPYC Zen 4, 2 threads).
  if (threads > 0) {
    auto share = [&](int64_t k) {
      return ceil_div(ceil_div(n, k) * groups, threads) * ceil_div(k * g.per_image, nr);
    };
    for (int64_t k = g.images + 1; k <= nr; ++k) {
      if (ceil_div(n, k) * groups < 2 * threads || k * image_bytes > kWinogradPadBudget) break;
      if (10 * k * g.per_image < 9 * round_up<float>(k * g.per_image, nr)) continue;
      if (share(k) < share(g.images)) g.images = k;
    }
  }
  const int64_t panels = ceil_div(g.images * g.per_image, nr);
  g.splits = std::clamp<int64_t>(ceil_div(2 * threads, ceil_div(n, g.images) * groups), 1, panels);
  return g;
}

// Where the tiles of a pass lie in a stack of padded planes: tile t is tile t % per_image (row-major,
// tw to a row) of image t / per_image, whose planes start image_stride apart; a P x P patch's corner
// is at (m ty, m tx) of a plane with row pitch `pitch`, m = `edge`.
struct PatchGrid {
  int64_t per_image, tw, pitch, image_stride, edge;
};

// The corners of tiles t0 .. t0 + nr (fewer where t_end comes first) in the first channel's plane:
// off[l] for lane l, found by stepping (image, tile row, tile column) -- one division per panel, not
// one per lane and channel (a 64-bit division costs tens of cycles on some cores). Returns the lanes
// that hold a tile. Also gives each lane's tile row and column when ty / tx are given.
inline int tile_corners(const PatchGrid& g, int64_t t0, int64_t t_end, int nr, int64_t* off,
                        int64_t* img = nullptr, int64_t* ty_out = nullptr, int64_t* tx_out = nullptr) {
  const int lanes = (int)std::clamp<int64_t>(t_end - t0, 0, nr);
  if (lanes == 0) return 0;
  int64_t im = t0 / g.per_image, r = t0 % g.per_image, ty = r / g.tw, tx = r % g.tw;
  const int64_t th = g.per_image / g.tw;
  for (int l = 0; l < lanes; ++l) {
    off[l] = im * g.image_stride + g.edge * (ty * g.pitch + tx);
    if (img) img[l] = im, ty_out[l] = ty, tx_out[l] = tx;
    if (++tx == g.tw) {
      tx = 0;
      if (++ty == th) ty = 0, ++im;
    }
  }
  return lanes;
}

// Gathers the P x P patches of the `lanes` tiles whose corners are corner[0 .. lanes) in the padded
// plane `plane` and transforms them by the 1-D map f (P -> 6) on the rows and then on the columns:
// point xi of lane l goes to out[xi * out_stride + l]. Lanes from `lanes` to NR are zero.
// Eight lanes at a time: each lane's patch row is one 8-float load (the floats beyond the patch are
// unused; the scratch has slack for the last ones), an 8 x 8 transpose turns eight such rows into
// P vectors of one patch element each, and the row transform is applied to them right away.
template <int NR, int P, typename F>
inline void gather_transform(const float* plane, const int64_t* corner, int lanes, int64_t pitch, float* out,
                             int64_t out_stride, F f) {
  static_assert(P <= 8, "a patch row is one 8-float load");
  for (int h = 0; h < NR / 8; ++h) {
    const int here = std::clamp(lanes - 8 * h, 0, 8);
    V8 tmp[P * kIn];  // tmp[r][j']: patch row r transformed
    for (int r = 0; r < P; ++r) {
      V8 rows[8];
      for (int i = 0; i < 8; ++i) {
        if (i < here) std::memcpy(&rows[i], plane + corner[8 * h + i] + r * pitch, sizeof(V8));
        else rows[i] = V8{};
      }
      transpose_square<float, 8>(rows);
      f(rows, 1, tmp + r * kIn, 1);
    }
    for (int j = 0; j < kIn; ++j) {
      V8 col[kIn];
      f(tmp + j, kIn, col, 1);
      for (int k = 0; k < kIn; ++k) std::memcpy(out + (k * kIn + j) * out_stride + 8 * h, &col[k], sizeof(V8));
    }
  }
}

inline void input_v8(const V8* a, int s, V8* o, int os) { input_1d(a, s, o, os); }
template <int R>
inline void grad_output_v8(const V8* a, int s, V8* o, int os) { grad_output_1d<R>(a, s, o, os); }

// The output transform of one output channel of a panel, fused with the store: m holds the 36
// transformed points of tiles t0 .. t0 + NR as m[xi][l]; y = A^T m A (+ bias, then ReLU) is stored
// where `out` says. Eight lanes at a time: a 4 x 4 tile's 16 outputs are 16 vectors of eight tiles, and
// two 8 x 8 transposes give each tile its four rows of four, stored as 16-byte runs; a 2 x 2 tile's 4
// outputs, one transpose (of them and four unused vectors) its two rows of two, stored as 8-byte runs.
//
// Where transform_scatter writes the tiles of a panel: lane l's m x m tile starts at off[l] from the
// output channel's plane in the first image (rows `pitch` apart), and keeps its first rows[l] rows and
// cols[l] columns (the tiles that cross the plane's right or bottom edge are cropped). Computed once per
// panel (tile_outputs) and used for every output channel.
template <int NR>
struct TileOut {
  int64_t off[NR];
  int8_t rows[NR], cols[NR];
  bool row_run[NR / 8];  // eight lanes 8 h .. 8 h + 7: whole tiles side by side in one tile row
  bool whole[NR / 8];    // ... all whole tiles, in runs side by side (run_starts: bit j, lane 8 h + j starts one)
  uint8_t run_starts[NR / 8];
  int lanes;
  int64_t pitch;
};

template <int NR, int R>
inline void tile_outputs(const Grid& g, int64_t t0, int64_t t_end, int64_t image_stride, int64_t OH, int64_t OW,
                         TileOut<NR>& to) {
  constexpr int kOut = out_edge<R>();
  int64_t corner[NR], img[NR], ty[NR], tx[NR];
  const PatchGrid pg{g.per_image, g.tw, 0, 0, kOut};
  to.lanes = tile_corners(pg, t0, t_end, NR, corner, img, ty, tx);
  to.pitch = OW;
  for (int l = 0; l < to.lanes; ++l) {
    const int64_t y0 = kOut * ty[l], x0 = kOut * tx[l];
    to.off[l] = img[l] * image_stride + y0 * OW + x0;
    to.rows[l] = (int8_t)std::min<int64_t>(kOut, OH - y0);
    to.cols[l] = (int8_t)std::min<int64_t>(kOut, OW - x0);
  }
  for (int h = 0; h < NR / 8; ++h) {
    bool whole = 8 * h + 8 <= to.lanes;
    uint8_t starts = 0;
    for (int j = 0; whole && j < 8; ++j) {
      const int l = 8 * h + j;
      whole = to.rows[l] == kOut && to.cols[l] == kOut;
      if (j == 0 || to.off[l] != to.off[l - 1] + kOut) starts |= uint8_t(1u << j);
    }
    to.whole[h] = whole;
    to.run_starts[h] = starts;
    to.row_run[h] = whole && starts == 1;
  }
}

template <int NR, int R>
inline void transform_scatter(const float* __restrict__ m, float bias, const Act<float>& act, float* __restrict__ base,
                              const TileOut<NR>& to) {
  constexpr int kOut = out_edge<R>();
  for (int h = 0; h < NR / 8 && 8 * h < to.lanes; ++h) {
    V8 in[kXi], tmp[kOut * kIn], y[8 * ((kOut * kOut + 7) / 8)];
    for (int k = 0; k < kXi; ++k) std::memcpy(&in[k], m + k * NR + 8 * h, sizeof(V8));
    for (int l = 0; l < kIn; ++l) output_1d<R>(in + l, kIn, tmp + l, kIn);
    for (int i = 0; i < kOut; ++i) output_1d<R>(tmp + i * kIn, 1, y + i * kOut, 1);
    for (int k = 0; k < kOut * kOut; ++k) y[k] = act(y[k] + bias);
    const int here = std::min(8, to.lanes - 8 * h);
    if constexpr (kOut == 2) {
      // Output row r of eight whole 2 x 2 tiles is 16 floats, the tiles' two columns interleaved: a (tiles
      // 0-3) and b (tiles 4-7), two shuffles instead of a transpose and 16 two-float stores.
      typedef int32_t I8 __attribute__((vector_size(32)));
      constexpr I8 lo{0, 8, 1, 9, 2, 10, 3, 11}, hi{4, 12, 5, 13, 6, 14, 7, 15};
      auto output_row = [&](int r, V8& a, V8& b) {
        a = __builtin_shuffle(y[2 * r], y[2 * r + 1], lo);
        b = __builtin_shuffle(y[2 * r], y[2 * r + 1], hi);
      };
      if (to.row_run[h]) {  // side by side in one tile row: two 8-float stores a row
        float* o = base + to.off[8 * h];
        for (int r = 0; r < 2; ++r) {
          V8 a, b;
          output_row(r, a, b);
          std::memcpy(o + r * to.pitch, &a, sizeof(V8));
          std::memcpy(o + r * to.pitch + 8, &b, sizeof(V8));
        }
        continue;
      }
#if defined(__AVX512F__) && defined(__AVX512DQ__)
      // in a few runs (a tile row ends among them): each run of tiles stored from its place in the row's
      // 16 floats by a permute and a masked store
      if (to.whole[h]) {
        for (int r = 0; r < 2; ++r) {
          V8 a, b;
          output_row(r, a, b);
          const __m512 v = _mm512_insertf32x8(_mm512_castps256_ps512((__m256)a), (__m256)b, 1);
          for (int j0 = 0; j0 < 8;) {
            int j1 = j0 + 1;
            while (j1 < 8 && !(to.run_starts[h] >> j1 & 1)) ++j1;
            const __m512 from = _mm512_permutexvar_ps(_mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7,
                                                                                        6, 5, 4, 3, 2, 1, 0),
                                                                       _mm512_set1_epi32(2 * j0)),
                                                      v);
            _mm512_mask_storeu_ps(base + to.off[8 * h + j0] + r * to.pitch, (__mmask16)((1u << (2 * (j1 - j0))) - 1),
                                  from);
            j0 = j1;
          }
        }
        continue;
      }
#endif
    }
    // each transpose of eight vectors gives every lane two of its tile's rows (rows 2 kb and 2 kb + 1)
    for (int kb = 0; kb < (kOut * kOut + 7) / 8; ++kb) {
      V8* rows = y + 8 * kb;  // tile rows 2 kb, 2 kb + 1
      for (int k = kOut * kOut - 8 * kb; k < 8; ++k) rows[k] = V8{};
      transpose_square<float, 8>(rows);
      for (int j = 0; j < here; ++j) {
        const int l = 8 * h + j, nrow = to.rows[l] - 2 * kb;
        float* o = base + to.off[l] + 2 * kb * to.pitch;
        const float* v = reinterpret_cast<const float*>(&rows[j]);
        if (to.cols[l] == kOut) {
          if (nrow > 0) std::memcpy(o, v, sizeof(float) * kOut);
          if (nrow > 1) std::memcpy(o + to.pitch, v + kOut, sizeof(float) * kOut);
        } else {  // a tile across the right edge
          for (int x = 0; x < to.cols[l]; ++x) {
            if (nrow > 0) o[x] = v[x];
            if (nrow > 1) o[to.pitch + x] = v[kOut + x];
          }
        }
      }
    }
  }
}

// A stride-1 R x R convolution of a batch by Winograd F(m x m, R x R): for every image and group, the
// group's C planes of `src` zero-padded and cropped as `pl` says, convolved with the group's
// transformed filters u (transform_weights<float, R>, M rows) into its M planes of `dst`, with bias and
// activation.
template <int R>
void conv_batch(int64_t n, int64_t groups, const float* src, int64_t C, const float* u, int64_t M,
                       float* dst, const Planes& pl, const float* bias, const Act<float>& act) {
  using T = float;
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  static_assert(NR % 8 == 0, "a panel is whole 8-lane blocks");
  typedef T VN __attribute__((vector_size(NR * sizeof(T))));  // one lane per tile of a panel
  const Grid grid = make_grid<R>(n, groups, pl, NR, at::get_num_threads());
  const int64_t m_panels = ceil_div(M, MR), chunks = ceil_div(n, grid.images);
  const int64_t in_plane = grid.Hp * grid.Wp;
  const int64_t panels = ceil_div(grid.images * grid.per_image, NR);
  const PatchGrid patches{grid.per_image, grid.tw, grid.Wp, C * in_plane, out_edge<R>()};
  // One vector more than C per point: the 36 stores of a transformed patch are then not all 4 KiB apart
  // (which would put them in one L1 set for C = 64).
  const int64_t xi_stride = (C + 1) * NR;
  const double flops = 2.0 * kXi * m_panels * MR * C * NR * panels / grid.splits;
  at::parallel_for(0, chunks * groups * grid.splits, grain_for(flops), [&](int64_t begin, int64_t end) {
    T* v = scratch<T>(0, kXi * xi_stride);                                    // [xi][c][NR]
    VN* m = reinterpret_cast<VN*>(scratch<T>(1, m_panels * MR * kXi * NR));  // [co][xi] vectors
    T* pad = scratch<T>(3, grid.images * C * in_plane + 8);                   // [image][c] padded planes
    for (int64_t item = begin; item < end; ++item) {
      const int64_t sp = item % grid.splits, gi = (item / grid.splits) % groups, chunk = item / (grid.splits * groups);
      const int64_t n0 = chunk * grid.images, imgs = std::min(grid.images, n - n0), tiles = imgs * grid.per_image;
      const int64_t p_begin = sp * panels / grid.splits, p_end = (sp + 1) * panels / grid.splits;
      for (int64_t k = 0; k < imgs; ++k)
        pad_planes(src + ((n0 + k) * pl.channels_in + gi * C) * pl.H * pl.W, C, pl.H, pl.W, pl.top,
                   pl.left, grid.Hp, grid.Wp, pad + k * C * in_plane, k + 1 == imgs ? int64_t(8) : int64_t(0));
      // the next item of this thread, if it pads other images: their planes, prefetched panel by panel
      PrefetchPlan next;
      if (item + 1 < end) {
        const int64_t gi1 = ((item + 1) / grid.splits) % groups, chunk1 = (item + 1) / (grid.splits * groups);
        if (gi1 != gi || chunk1 != chunk) {
          const int64_t n1 = chunk1 * grid.images;
          next = PrefetchPlan{reinterpret_cast<const char*>(src + (n1 * pl.channels_in + gi1 * C) * pl.H * pl.W),
                              std::min(grid.images, n - n1), int64_t(sizeof(T)) * C * pl.H * pl.W,
                              int64_t(sizeof(T)) * pl.channels_in * pl.H * pl.W};
        }
      }
      for (int64_t p = p_begin; p < p_end; ++p) {
        const int64_t t0 = p * NR;
        int64_t corner[NR];
        const int lanes = tile_corners(patches, t0, tiles, NR, corner);
        for (int64_t c = 0; c < C; ++c)
          gather_transform<NR, kIn>(pad + c * in_plane, corner, lanes, grid.Wp, v + c * NR, xi_stride, input_v8);
        const T* ug = u + gi * kXi * m_panels * C * MR;
        for (int xi = 0; xi < kXi; ++xi) {
          next.step((p - p_begin) * kXi + xi, (p_end - p_begin) * kXi);
          for (int64_t ip = 0; ip < m_panels; ++ip) {
            micro_kernel<T>(C, PackedA<T>{ug + (xi * m_panels + ip) * C * MR}, PackedB<T>{v + xi * xi_stride},
                            reinterpret_cast<T*>(&m[ip * MR * kXi + xi]), kXi * NR);
          }
        }
        TileOut<NR> to;
        tile_outputs<NR, R>(grid, t0, tiles, pl.channels_out * pl.OH * pl.OW, pl.OH, pl.OW, to);
        for (int64_t co = 0; co < M; ++co)
          transform_scatter<NR, R>(reinterpret_cast<const T*>(m + co * kXi), bias ? bias[gi * M + co] : T(0), act,
                                   dst + (n0 * pl.channels_out + gi * M + co) * pl.OH * pl.OW, to);
      }
    }
  });
}

// ---------------------------------------------------------------- grad weight

// Number of image chunks of the weight-gradient reduction: up to 8, fewer where the chunks' sums
// (36 points x the channel pairs each) would pass 64 MiB (but not for that below 2) -- a function of the
// shape only, never of the thread count.
// A chunk also holds at least `min_images` images (a GEMM depth of 64 tiles): on 4x4 maps, one tile an
// image, 8 chunks of 16 images made every GEMM 32 tiles deep of which 16 were padding, and each chunk's
// sums (4.7 MB for 128 -> 256) were written and read back for 16 tiles' worth of products.
inline int64_t grad_weight_chunks(int64_t n, int64_t bytes_per_chunk, int64_t min_images = 1) {
  constexpr int64_t kBudget = int64_t(64) << 20;
  const int64_t fit = std::clamp<int64_t>(kBudget / std::max<int64_t>(bytes_per_chunk, 1), 2, 8);
  return std::max<int64_t>(1, std::min({n, fit, n / std::max<int64_t>(min_images, 1)}));
}

// dW of a stride-1 R x R convolution (groups of M filters over C channels; pl describes x as the input
// and dy as the output, as for the forward pass):
//   S[xi][co][c] = sum over tiles t of Z[xi][co][t] * V[xi][c][t],  Z = A dY_t A^T, V = B^T x_t B
//   dW[co][c] = G^T S[.][co][c] G
// Per (chunk of images, group) work item, passes of a few images are padded into scratch (x as for
// the forward pass, dY to whole m x m tiles), and blocks of kBlock tiles are transformed with one
// tile per lane into V[xi][c][t] and Z[xi][co][t]. For each xi, V is transposed into panels of NR
// channels and multiplied: A = Z's rows (MR output channels, read where they lie), B = the V panel,
// the GEMM depth being the block's tiles; the MR x NR tile is added into the item's S. Chunks are
// fixed by the batch size and the layer shape and their S are added in chunk order: bitwise the same
// for any thread count.
template <int R>
void grad_weight_batch(int64_t n, int64_t groups, const float* x, int64_t C, const float* dy, int64_t M,
                              float* dw, const Planes& pl) {
  using T = float;
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  constexpr int64_t kBlock = 2 * NR;  // tiles per block: the depth of one GEMM
  constexpr int kOut = out_edge<R>();
  const Grid grid = make_grid<R>(n, groups, pl, NR, 0);  // passes of images: the same for any thread count
  const int64_t m_panels = ceil_div(M, MR), Mp = m_panels * MR, c_panels = ceil_div(C, NR), Cp = c_panels * NR;
  const int64_t nchunks =
      grad_weight_chunks(n, groups * kXi * Mp * Cp * int64_t(sizeof(T)), ceil_div(2 * NR, grid.per_image));
  const int64_t in_plane = grid.Hp * grid.Wp, Hq = kOut * grid.th, Wq = kOut * grid.tw, dy_plane = Hq * Wq;
  const PatchGrid x_patches{grid.per_image, grid.tw, grid.Wp, C * in_plane, kOut};
  const PatchGrid dy_patches{grid.per_image, grid.tw, Wq, M * dy_plane, kOut};
  // A vector more than the channels per point, so that the 36 stores of a transformed patch do not fall
  // into one L1 set (C * kBlock floats is a multiple of 4 KiB).
  const int64_t v_stride = C * kBlock + NR, z_stride = M * kBlock + NR;
  // the chunks' sums in the calling thread's scratch (slot 2: the items use 0, 1, 3, 4 and 5): tens of MB,
  // which a fresh allocation would page-fault in on every call
  T* sums = scratch<T>(2, nchunks * groups * kXi * Mp * Cp);
  const double flops = 2.0 * kXi * Mp * Cp * grid.per_image * n / nchunks;
  at::parallel_for(0, nchunks * groups, grain_for(flops), [&](int64_t begin, int64_t end) {
    T* v = scratch<T>(0, kXi * v_stride);  // [xi][c][t]
    T* z = scratch<T>(1, kXi * z_stride);  // [xi][co][t]
    T* xpad = scratch<T>(3, grid.images * C * in_plane + 8);
    T* dypad = scratch<T>(4, grid.images * M * dy_plane + 8);
    T* vp = scratch<T>(5, Cp * kBlock);        // one xi of V as [channel panel][t][NR]
    alignas(64) T acc[MR * NR];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t gi = item % groups, chunk = item / groups;
      T* S = sums + item * kXi * Mp * Cp;  // item == chunk * groups + gi
      std::memset(S, 0, sizeof(T) * kXi * Mp * Cp);
      const int64_t n_begin = chunk * n / nchunks, n_end = (chunk + 1) * n / nchunks;
      for (int64_t n0 = n_begin; n0 < n_end; n0 += grid.images) {
        const int64_t imgs = std::min(grid.images, n_end - n0), tiles = imgs * grid.per_image;
        for (int64_t k = 0; k < imgs; ++k) {
          const bool last = k + 1 == imgs;
          pad_planes(x + ((n0 + k) * pl.channels_in + gi * C) * pl.H * pl.W, C, pl.H, pl.W, pl.top,
                     pl.left, grid.Hp, grid.Wp, xpad + k * C * in_plane, last ? int64_t(8) : int64_t(0));
          pad_planes(dy + ((n0 + k) * pl.channels_out + gi * M) * pl.OH * pl.OW, M, pl.OH, pl.OW,
                     int64_t(0), int64_t(0), Hq, Wq, dypad + k * M * dy_plane, last ? int64_t(8) : int64_t(0));
        }
        // the next pass's images of x and dy, prefetched block by block
        PrefetchPlan next_x, next_dy;
        if (n0 + grid.images < n_end) {
          const int64_t n1 = n0 + grid.images, imgs1 = std::min(grid.images, n_end - n1);
          next_x = PrefetchPlan{reinterpret_cast<const char*>(x + (n1 * pl.channels_in + gi * C) * pl.H * pl.W), imgs1,
                                int64_t(sizeof(T)) * C * pl.H * pl.W, int64_t(sizeof(T)) * pl.channels_in * pl.H * pl.W};
          next_dy = PrefetchPlan{reinterpret_cast<const char*>(dy + (n1 * pl.channels_out + gi * M) * pl.OH * pl.OW),
                                 imgs1, int64_t(sizeof(T)) * M * pl.OH * pl.OW,
                                 int64_t(sizeof(T)) * pl.channels_out * pl.OH * pl.OW};
        }
        const int64_t blocks = ceil_div(tiles, kBlock);
        for (int64_t tb = 0; tb < tiles; tb += kBlock) {
          const int64_t depth = round_up<T>(std::min(kBlock, tiles - tb), NR);
          for (int64_t t0 = tb; t0 < tb + depth; t0 += NR) {
            const int64_t lane0 = t0 - tb;
            int64_t x_corner[NR], dy_corner[NR];
            const int lanes = tile_corners(x_patches, t0, tiles, NR, x_corner);
            tile_corners(dy_patches, t0, tiles, NR, dy_corner);
            for (int64_t c = 0; c < C; ++c)
              gather_transform<NR, kIn>(xpad + c * in_plane, x_corner, lanes, grid.Wp, v + c * kBlock + lane0,
                                        v_stride, input_v8);
            for (int64_t co = 0; co < M; ++co)
              gather_transform<NR, kOut>(dypad + co * dy_plane, dy_corner, lanes, Wq, z + co * kBlock + lane0,
                                         z_stride, grad_output_v8<R>);
          }
          for (int xi = 0; xi < kXi; ++xi) {
            next_x.step(tb / kBlock * kXi + xi, blocks * kXi);
            next_dy.step(tb / kBlock * kXi + xi, blocks * kXi);
            pack_transposed_panels(v + xi * v_stride, C, depth, kBlock, vp);
            T* Sx = S + xi * Mp * Cp;
            for (int64_t ip = 0; ip < m_panels; ++ip) {
              RowsA<T> rows;  // the padding rows past M repeat row M - 1; their sums are never read
              for (int i = 0; i < MR; ++i) rows.row[i] = z + xi * z_stride + std::min<int64_t>(ip * MR + i, M - 1) * kBlock;
              for (int64_t cp = 0; cp < c_panels; ++cp) {
                micro_kernel<T>(depth, rows, PackedB<T>{vp + cp * depth * NR}, acc);
                store_tile<T>(acc, MR, NR, Sx + ip * MR * Cp + cp * NR, Cp, true, false, Epilogue<T>{}, 0, 0);
              }
            }
          }
        }
      }
    }
  });
  // dW[gi * M + co][c] = G^T (sum over chunks, in order, of S) G
  at::parallel_for(0, groups * M, std::max<int64_t>(1, 256 / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t gi = row / M, co = row % M;
      for (int64_t c = 0; c < C; ++c) {
        T s[kXi], g[R * R];
        for (int xi = 0; xi < kXi; ++xi) {
          T sum = 0;
          for (int64_t ch = 0; ch < nchunks; ++ch) sum += sums[(((ch * groups + gi) * kXi + xi) * Mp + co) * Cp + c];
          s[xi] = sum;
        }
        transform_2d<kIn, R>(s, g, [](const T* a, int st, T* o, int os) { grad_weight_1d<R>(a, st, o, os); });
        std::memcpy(dw + (row * C + c) * R * R, g, sizeof(g));
      }
    }
  });
}

}  // namespace fastconv::cpu::winograd
