// pool.h: the max-pooling of one plane, shared by max_pool2d.cpp and the convolution fused with its
// pooling (conv2d.cpp).
//
// Each output scans its window (clipped to the input, with dilation) and keeps the first maximum, or
// the last NaN (NaN propagates as in torch). Outputs whose window lies inside the input columns are
// computed a window element at a time across the row: a branch-free loop over outputs that the
// compiler vectorises. Indices are flat positions ih * W + iw in the input plane, torch's convention.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

namespace fastconv::cpu {

// One output of a plane: its window clipped to the input, scanned row by row.
template <typename T>
inline void pool_one(const T* __restrict__ x, int64_t W, int64_t h0, int64_t h1, int64_t dh, int64_t w0, int64_t w1,
                     int64_t dw, T* __restrict__ y, int64_t* __restrict__ idx) {
  T best = -std::numeric_limits<T>::infinity();
  int64_t best_i = h0 * W + w0;
  for (int64_t ih = h0; ih < h1; ih += dh)
    for (int64_t iw = w0; iw < w1; iw += dw) {
      const T v = x[ih * W + iw];
      const bool take = v > best || v != v;  // the first maximum, or the last NaN
      best = take ? v : best;
      best_i = take ? ih * W + iw : best_i;
    }
  *y = best;
  *idx = best_i;
}

// The common 2 x 2, stride-2 window with no padding or dilation, whole vectors at a time: each output
// row is read as pairs of input vectors per input row, split into their even and odd columns by two
// fixed shuffles, and the four window elements are compared in pool_one's order (so the first maximum,
// or the last NaN, wins exactly as there). Outputs ow0 .. ow0 + L * floor((OW - ow0) / L) of every row
// are done with L lanes; returns the first output column not done (pool_2x2 goes on with L / 2 lanes,
// pool_plane does the rest one by one).
template <typename T, int... k>
inline int64_t pool_2x2_rows(const T* __restrict__ x, int64_t W, int64_t OH, int64_t OW, int64_t ow0,
                             T* __restrict__ y, int64_t* __restrict__ idx, std::integer_sequence<int, k...>) {
  constexpr int L = sizeof...(k);  // lanes
  typedef T V __attribute__((vector_size(L * sizeof(T))));
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef I IV __attribute__((vector_size(L * sizeof(T))));
  typedef int64_t LV __attribute__((vector_size(L * sizeof(int64_t))));
  constexpr IV even{(2 * k)...}, odd{(2 * k + 1)...}, lane{(2 * k)...};
  const int64_t done = ow0 + (OW - ow0) / L * L;
  if (done == ow0) return ow0;
  for (int64_t oh = 0; oh < OH; ++oh) {
    const T* r0 = x + 2 * oh * W;
    const T* r1 = r0 + W;
    for (int64_t ow = ow0; ow < done; ow += L) {
      V a0, a1, b0, b1;
      std::memcpy(&a0, r0 + 2 * ow, sizeof(V));
      std::memcpy(&a1, r0 + 2 * ow + L, sizeof(V));
      std::memcpy(&b0, r1 + 2 * ow, sizeof(V));
      std::memcpy(&b1, r1 + 2 * ow + L, sizeof(V));
      const V v[4] = {__builtin_shuffle(a0, a1, even), __builtin_shuffle(a0, a1, odd),
                      __builtin_shuffle(b0, b1, even), __builtin_shuffle(b0, b1, odd)};
      const I start = (I)(2 * oh * W + 2 * ow);
      const I where[4] = {0, 1, (I)W, (I)W + 1};
      V best = v[0];  // the first element is taken over -infinity unless it is -infinity: the same value
      IV at = lane + start;
      for (int e = 1; e < 4; ++e) {
        const IV take = (v[e] > best) | (v[e] != v[e]);
        best = take ? v[e] : best;
        at = take ? lane + (I)(start + where[e]) : at;
      }
      std::memcpy(y + oh * OW + ow, &best, sizeof(V));
      const LV at64 = __builtin_convertvector(at, LV);
      std::memcpy(idx + oh * OW + ow, &at64, sizeof(LV));
    }
  }
  return done;
}

// 64-, 32- and then 16-byte vectors (rows of 12 outputs: 8 + 4 lanes of float).
template <typename T>
inline int64_t pool_2x2(const T* __restrict__ x, int64_t W, int64_t OH, int64_t OW, T* __restrict__ y,
                        int64_t* __restrict__ idx) {
  constexpr int L = 64 / sizeof(T);
  int64_t ow = pool_2x2_rows(x, W, OH, OW, 0, y, idx, std::make_integer_sequence<int, L>{});
  ow = pool_2x2_rows(x, W, OH, OW, ow, y, idx, std::make_integer_sequence<int, L / 2>{});
  return pool_2x2_rows(x, W, OH, OW, ow, y, idx, std::make_integer_sequence<int, L / 4>{});
}

template <typename T>
inline void pool_plane(const T* __restrict__ x, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t kh, int64_t kw,
                int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, T* __restrict__ y,
                int64_t* __restrict__ idx) {
  int64_t ow_from = 0;  // outputs per row already done
  if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0 && dh == 1 && dw == 1 && 2 * OH <= H &&
      2 * OW <= W && H * W < (int64_t(1) << 31))
    ow_from = pool_2x2(x, W, OH, OW, y, idx);
  // Outputs whose window lies wholly inside the input columns: ow in [ow_a, ow_b).
  const int64_t ow_a = std::min(OW, (pw + sw - 1) / sw);
  const int64_t ow_b = std::max(ow_a, std::min(OW, (W - 1 - (kw - 1) * dw + pw) >= 0
                                                        ? (W - 1 - (kw - 1) * dw + pw) / sw + 1 : int64_t(0)));
  for (int64_t oh = 0; oh < OH; ++oh) {
    int64_t h0 = oh * sh - ph;
    const int64_t h1 = std::min(h0 + (kh - 1) * dh + 1, H);
    while (h0 < 0) h0 += dh;
    T* __restrict__ yrow = y + oh * OW;
    int64_t* __restrict__ irow = idx + oh * OW;
    auto edge = [&](int64_t ow) {
      int64_t w0 = ow * sw - pw;
      const int64_t w1 = std::min(w0 + (kw - 1) * dw + 1, W);
      while (w0 < 0) w0 += dw;
      pool_one(x, W, h0, h1, dh, w0, w1, dw, yrow + ow, irow + ow);
    };
    for (int64_t ow = ow_from; ow < ow_a; ++ow) edge(ow);
    for (int64_t ow = std::max(ow_b, ow_from); ow < OW; ++ow) edge(ow);
    const int64_t ow_lo = std::max(ow_a, ow_from);
    if (ow_lo >= ow_b) continue;
    // The interior, one window element at a time across the whole row (in the same order per
    // output as pool_one), so the loop over outputs is branch-free and vectorisable.
    for (int64_t ow = ow_lo; ow < ow_b; ++ow) {
      yrow[ow] = -std::numeric_limits<T>::infinity();
      irow[ow] = h0 * W + ow * sw - pw;
    }
    for (int64_t ih = h0; ih < h1; ih += dh)
      for (int64_t j = 0; j < kw; ++j) {
        const int64_t off = ih * W + j * dw - pw;
        for (int64_t ow = ow_lo; ow < ow_b; ++ow) {
          const T v = x[off + ow * sw];
          const bool take = v > yrow[ow] || v != v;
          yrow[ow] = take ? v : yrow[ow];
          irow[ow] = take ? off + ow * sw : irow[ow];
        }
      }
  }
}

}  // namespace fastconv::cpu
