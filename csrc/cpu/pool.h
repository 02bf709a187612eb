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
#include <limits>

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

template <typename T>
inline void pool_plane(const T* __restrict__ x, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t kh, int64_t kw,
                int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, T* __restrict__ y,
                int64_t* __restrict__ idx) {
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
    for (int64_t ow = 0; ow < ow_a; ++ow) edge(ow);
    for (int64_t ow = ow_b; ow < OW; ++ow) edge(ow);
    if (ow_a == ow_b) continue;
    // The interior, one window element at a time across the whole row (in the same order per
    // output as pool_one), so the loop over outputs is branch-free and vectorisable.
    for (int64_t ow = ow_a; ow < ow_b; ++ow) {
      yrow[ow] = -std::numeric_limits<T>::infinity();
      irow[ow] = h0 * W + ow * sw - pw;
    }
    for (int64_t ih = h0; ih < h1; ih += dh)
      for (int64_t j = 0; j < kw; ++j) {
        const int64_t off = ih * W + j * dw - pw;
        for (int64_t ow = ow_a; ow < ow_b; ++ow) {
          const T v = x[off + ow * sw];
          const bool take = v > yrow[ow] || v != v;
          yrow[ow] = take ? v : yrow[ow];
          irow[ow] = take ? off + ow * sw : irow[ow];
        }
      }
  }
}

}  // namespace fastconv::cpu
