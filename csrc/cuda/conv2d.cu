// conv2d.cu: 2-D convolution forward and backward on the GPU, as implicit GEMMs on the engine of
// gemm.cuh (64 x 64 block tiles, double-buffered shared memory; CUDA cores with 4 x 4 register tiles
// for float32 / float64, tensor cores for float16 / bfloat16 and tf32), one GEMM per group, every
// stride / padding / dilation / groups (depthwise too). Per group g:
//   forward      M = N*OH*OW (output pixels), N = C_out/g, K = C_in/g*KH*KW:
//                A(m, k) = x at the input pixel that kernel tap k of output pixel m reads (0 in the
//                padding), B(k, n) = w[n][k]; the epilogue adds the bias and applies the ReLU, so a
//                fused Conv2d + ReLU never writes the pre-activation. 2*M*N*K FLOPs.
//   grad input   M = N*H*W (input pixels), N = C_in/g, K = C_out/g*KH*KW: the transposed convolution,
//                A(m, k) = dy at the output pixel whose tap k covers input pixel m (0 where none does:
//                off the stride grid, or outside the output), B(k, n) = w[co][n][kh][kw].
//   grad weight  M = C_out/g, N = C_in/g*KH*KW, K = N*OH*OW: A(m, k) = dy, B(k, n) = the input pixel
//                that tap n of output pixel k reads. K is long, so it is split over blocks (split-K)
//                whose partials are summed in split order by a second kernel: deterministic.
//   bias_grad    coalesced sums in double, in a fixed order: one block per channel of a [N, C, H, W]
//                gradient, one per 32 channels of a [rows, C] one (see the kernels).
// No im2col buffer exists, and no integer division runs in a main loop: each thread's cursor on its
// row of A and column of B (below, per direction) is decomposed once, in the prologue, by
// multiply-shift divisions (gemm::FastDiv), then carried forward with adds and compares (see
// gemm.cuh). In 32-bit arithmetic: the glue refuses GEMMs with M, N or K of 2^31 or more. Addresses
// stay 64-bit.
#include "cuda/gemm.cuh"

namespace fastconv::FC_NS::kernels {
namespace {

using gemm::FastDiv;
using gemm::QR;

// The sizes the cursors compute with, as 32-bit ints (the glue refuses convolutions with a GEMM
// dimension of 2^31 or more, and every plane and coordinate is smaller than those).
struct Dims {
  int h, w, kh, kw, oh, ow, sh, sw, dh, dw, pt, pl, taps;
  explicit Dims(const ConvShape& s)
      : h(int(s.h)), w(int(s.w)), kh(int(s.kh)), kw(int(s.kw)), oh(int(s.oh)), ow(int(s.ow)), sh(int(s.sh)),
        sw(int(s.sw)), dh(int(s.dh)), dw(int(s.dw)), pt(int(s.pt)), pl(int(s.pl)), taps(int(s.kh * s.kw)) {}
};

// An NCHW output row's cursor: &out[img][0][pix] for GEMM row m = (img, pix) of planes of `plane`
// pixels and `channels` channels; moved forward by dm rows without dividing (dm may pass a plane).
template <typename T>
struct PlaneRow {
  T* p;
  int pix;
  __device__ static PlaneRow at(T* out, int64_t m, const FastDiv& div_plane, int64_t channels) {
    const int mi = int(m), img = div_plane.div(mi), pix = mi - img * int(div_plane.d);
    return PlaneRow{out + img * channels * int64_t(div_plane.d) + pix, pix};
  }
  __device__ void next(int dm, int64_t plane, int64_t channels) {
    pix += dm;
    p += dm;
    while (pix >= plane) {
      pix -= int(plane);
      p += (channels - 1) * plane;
    }
  }
};

// A kernel tap (kh, kw) and the input coordinates (ih, iw) it reads for one output pixel, moved over
// the taps row by row (kw fastest) with adds: what the forward cursors of both layouts carry.
struct Tap {
  int ih, iw, kh, kw;
  // the next tap; true when that wraps past the last kernel row, back to (0, 0)
  __device__ bool next(const Dims& d) {
    iw += d.dw;
    if (++kw < d.kw) return false;
    kw = 0;
    iw -= d.kw * d.dw;
    ih += d.dh;
    if (++kh < d.kh) return false;
    kh = 0;
    ih -= d.kh * d.dh;
    return true;
  }
  // q columns and r rows further (q < kw, r < kh, a carry each); true when that wraps past the last row
  __device__ bool add(int q, int r, const Dims& d) {
    kw += q;
    iw += q * d.dw;
    if (kw >= d.kw) {
      kw -= d.kw;
      iw -= d.kw * d.dw;
      ++kh;
      ih += d.dh;
    }
    kh += r;
    ih += r * d.dh;
    if (kh < d.kh) return false;
    kh -= d.kh;
    ih -= d.kh * d.dh;
    return true;
  }
  __device__ bool inside(const Dims& d) const { return unsigned(ih) < unsigned(d.h) && unsigned(iw) < unsigned(d.w); }
};
// tap (kh, kw) of output pixel (oh, ow)
__device__ inline Tap tap_of(int oh, int ow, int kh, int kw, const Dims& d) {
  return Tap{oh * d.sh - d.pt + kh * d.dh, ow * d.sw - d.pl + kw * d.dw, kh, kw};
}

// What a grad-input cursor steps by, as QRs by the stride: dh, dw, kh dh and kw dw.
struct StrideSteps {
  QR dh, dw, kh, kw;
  StrideSteps() = default;
  explicit StrideSteps(const ConvShape& s)
      : dh(gemm::qr_of(s.dh, s.sh)), dw(gemm::qr_of(s.dw, s.sw)), kh(gemm::qr_of(s.kh * s.dh, s.sh)),
        kw(gemm::qr_of(s.kw * s.dw, s.sw)) {}
};
// A jump's kernel columns and rows (q, r), and q dw, r dh as QRs by the stride.
struct BackJump {
  int q = 0, r = 0;
  QR w{}, h{};
  BackJump() = default;
  BackJump(int q_, int r_, const Dims& d)
      : q(q_), r(r_), w(gemm::qr_of(int64_t(q_) * d.dw, d.sw)), h(gemm::qr_of(int64_t(r_) * d.dh, d.sh)) {}
};
__device__ inline QR qr_by(int v, const FastDiv& div) {
  const int q = div.div(v);
  return QR{q, v - q * int(div.d)};
}
// The tap of a grad-input cursor: kernel tap (kh, kw) of input pixel (ih, iw), with nh = ih + pt -
// kh dh and nw = iw + pl - kw dw as QRs by the stride: the tap lands on output pixel (nh / sh, nw /
// sw) when both remainders are 0 and the quotients inside the output. Moved over the taps row by row
// with the precomputed QRs, as Tap.
struct BackTap {
  int kh, kw;
  QR nh, nw;
  __device__ bool lands(const Dims& d) const {
    return nh.r == 0 && nw.r == 0 && unsigned(nh.q) < unsigned(d.oh) && unsigned(nw.q) < unsigned(d.ow);
  }
  __device__ int64_t pixel(const Dims& d) const { return int64_t(nh.q) * d.ow + nw.q; }
  __device__ bool next(const Dims& d, const StrideSteps& s) {
    gemm::qr_sub(nw, s.dw, d.sw);
    if (++kw < d.kw) return false;
    kw = 0;
    gemm::qr_add(nw, s.kw, d.sw);
    gemm::qr_sub(nh, s.dh, d.sh);
    if (++kh < d.kh) return false;
    kh = 0;
    gemm::qr_add(nh, s.kh, d.sh);
    return true;
  }
  __device__ bool add(const BackJump& j, const Dims& d, const StrideSteps& s) {
    kw += j.q;
    gemm::qr_sub(nw, j.w, d.sw);
    if (kw >= d.kw) {
      kw -= d.kw;
      gemm::qr_add(nw, s.kw, d.sw);
      ++kh;
      gemm::qr_sub(nh, s.dh, d.sh);
    }
    kh += j.r;
    gemm::qr_sub(nh, j.h, d.sh);
    if (kh < d.kh) return false;
    kh -= d.kh;
    gemm::qr_add(nh, s.kh, d.sh);
    return true;
  }
};
__device__ inline BackTap back_tap(int ih, int iw, int kh, int kw, const Dims& d, const FastDiv& div_sh,
                                   const FastDiv& div_sw) {
  BackTap t{kh, kw, qr_by(ih + d.pt, div_sh), qr_by(iw + d.pl, div_sw)};
  gemm::qr_sub(t.nh, qr_by(kh * d.dh, div_sh), d.sh);
  gemm::qr_sub(t.nw, qr_by(kw * d.dw, div_sw), d.sw);
  return t;
}

// A jump of j K elements over (channel, kernel row, kernel column): j = (c taps + r kw + q).
struct TapJump {
  int c, r, q;
  TapJump() = default;
  TapJump(int64_t j, const Dims& d)
      : c(int(j / d.taps)), r(int(j % d.taps / d.kw)), q(int(j % d.taps % d.kw)) {}
};

// The forward's filters in both layouts, as its B operand and in its epilogue: B(k, n) = w[g N + n][k]
// (a filter is contiguous along K: a pointer cursor, and 16-byte copies of whole steps when the rows
// are aligned); a result gets the bias, then the activation as the relu and leaky_relu kernels compute
// them (NaN stays NaN, as in the CPU kernel).
template <typename T>
struct Filters {
  const T* w;
  const T* bias;
  Activation act;
  int64_t N, K;
  bool b_vec = false;  // filters contiguous along K with 16-byte aligned rows
  int64_t jmp_k = 0;

  struct BCur {
    const T* p;
  };
  __device__ BCur b_begin(int64_t g, int64_t n, int64_t k) const { return BCur{w + (g * N + n) * K + k}; }
  __device__ const T* b_at(const BCur& c) const { return c.p; }
  __device__ void b_next(BCur& c) const { ++c.p; }
  __device__ void b_jump(BCur& c) const { c.p += jmp_k; }
  __device__ const T* b_run(int64_t g, int64_t n) const { return b_vec ? w + (g * N + n) * K : nullptr; }
  __device__ const T* a_run(int64_t, int64_t) const { return nullptr; }
  __device__ acc_t<T> finish(int64_t co, acc_t<T> v) const {
    using A = acc_t<T>;
    if (bias) v += to_acc(bias[co]);
    if (act.kind == Activation::relu) v = v < A(0) ? A(0) : v;
    else if (act.kind == Activation::leaky_relu) v = v > A(0) ? v : v * A(act.slope);
    return v;
  }
};

// Forward: row m of A = output pixel (img, oh, ow); k = (ci, kh, kw). The cursor holds the input
// channel's plane, the kernel tap and the input coordinates it reads, and carries kw -> kh -> ci.
template <typename T>
struct ConvForward : Filters<T> {
  using Storage = T;
  using A = acc_t<T>;
  using F = Filters<T>;
  using F::N;
  const T* x;
  T* y;
  Dims d;
  int64_t c_in, cin_g, c_out, plane, pixels;  // plane = h w, pixels = oh ow
  int64_t M, groups;
  FastDiv div_pixels, div_ow, div_taps, div_kw;
  TapJump jmp{};

  ConvForward(const T* x_, const T* w_, const T* bias_, T* y_, const ConvShape& s, Activation a)
      : F{w_, bias_, a, s.cout_g(), s.k_gemm()}, x(x_), y(y_), d(s), c_in(s.c_in), cin_g(s.cin_g()), c_out(s.c_out),
        plane(s.h * s.w), pixels(s.oh * s.ow), M(s.n * s.oh * s.ow), groups(s.groups), div_pixels(s.oh * s.ow),
        div_ow(s.ow), div_taps(s.kh * s.kw), div_kw(s.kw) {}
  void set_jump(int64_t j) {
    jmp = TapJump(j, d);
    this->jmp_k = j;
  }

  struct ACur {
    const T* chan;  // x[img][g cin_g + ci]
    Tap tap;
  };
  __device__ ACur a_begin(int64_t g, int64_t m, int64_t k) const {
    const int mi = int(m), img = div_pixels.div(mi), r = mi - img * int(pixels), oh = div_ow.div(r),
              ow = r - oh * d.ow;
    const int ki = int(k), ci = div_taps.div(ki), t = ki - ci * d.taps, kh = div_kw.div(t), kw = t - kh * d.kw;
    return ACur{x + (img * c_in + g * cin_g + ci) * plane, tap_of(oh, ow, kh, kw, d)};
  }
  __device__ const T* a_at(const ACur& c) const {
    return c.tap.inside(d) ? c.chan + c.tap.ih * d.w + c.tap.iw : nullptr;
  }
  __device__ void a_next(ACur& c) const {
    if (c.tap.next(d)) c.chan += plane;
  }
  __device__ void a_jump(ACur& c) const {
    if (c.tap.add(jmp.q, jmp.r, d)) c.chan += plane;
    c.chan += jmp.c * plane;
  }
  using Out = PlaneRow<T>;  // &y[img][0][pix]
  __device__ Out out_at(int64_t, int64_t m) const { return Out::at(y, m, div_pixels, c_out); }
  __device__ void out_next(Out& o, int dm) const { o.next(dm, pixels, c_out); }
  __device__ void store(const Out& o, int64_t g, int, int64_t n, A v) const {
    const int64_t co = g * N + n;
    o.p[co * pixels] = from_acc<T>(this->finish(co, v));
  }
};

// Grad input: row m of A = input pixel (img, ih, iw); k = (co, kh, kw); A(m, k) = dy at the output
// pixel whose tap (kh, kw) covers the input pixel, if one does. With nh = ih + pt - kh dh, the tap
// lands on output row nh / sh when sh divides nh: the cursor keeps nh (and nw) as quotient and
// remainder by the stride, updated by the precomputed QRs of dh, kh dh, ... without dividing.
template <typename T>
struct ConvGradInput {
  using Storage = T;
  using A = acc_t<T>;
  const T* dy;
  const T* w;
  T* dx;
  Dims d;
  int64_t c_in, c_out, cout_g, plane, out_plane;  // h w, oh ow
  int64_t M, N, K, groups;
  FastDiv div_plane, div_w, div_taps, div_kw, div_sh, div_sw;
  StrideSteps steps;
  TapJump jmp{};
  BackJump bj{};

  ConvGradInput(const T* dy_, const T* w_, T* dx_, const ConvShape& s)
      : dy(dy_), w(w_), dx(dx_), d(s), c_in(s.c_in), c_out(s.c_out), cout_g(s.cout_g()), plane(s.h * s.w),
        out_plane(s.oh * s.ow), M(s.n * s.h * s.w), N(s.cin_g()), K(s.cout_g() * s.kh * s.kw), groups(s.groups),
        div_plane(s.h * s.w), div_w(s.w), div_taps(s.kh * s.kw), div_kw(s.kw), div_sh(s.sh), div_sw(s.sw),
        steps(s) {}
  void set_jump(int64_t j) {
    jmp = TapJump(j, d);
    bj = BackJump(jmp.q, jmp.r, d);
  }

  struct ACur {
    const T* chan;  // dy[img][g cout_g + co]
    BackTap tap;
  };
  __device__ ACur a_begin(int64_t g, int64_t m, int64_t k) const {
    const int mi = int(m), img = div_plane.div(mi), r = mi - img * int(plane), ih = div_w.div(r), iw = r - ih * d.w;
    const int ki = int(k), co = div_taps.div(ki), t = ki - co * d.taps, kh = div_kw.div(t), kw = t - kh * d.kw;
    return ACur{dy + (img * c_out + g * cout_g + co) * out_plane, back_tap(ih, iw, kh, kw, d, div_sh, div_sw)};
  }
  __device__ const T* a_at(const ACur& c) const { return c.tap.lands(d) ? c.chan + c.tap.pixel(d) : nullptr; }
  __device__ void a_next(ACur& c) const {
    if (c.tap.next(d, steps)) c.chan += out_plane;
  }
  __device__ void a_jump(ACur& c) const {
    if (c.tap.add(bj, d, steps)) c.chan += out_plane;
    c.chan += jmp.c * out_plane;
  }
  // column n = input channel ci of group g: B(k, n) = w[g cout_g + co][ci][kh][kw] for k = (co, t)
  struct BCur {
    const T* p;
    int t;
  };
  __device__ BCur b_begin(int64_t g, int64_t n, int64_t k) const {
    const int ki = int(k), co = div_taps.div(ki), t = ki - co * d.taps;
    return BCur{w + ((g * cout_g + co) * N + n) * d.taps + t, t};
  }
  __device__ const T* b_at(const BCur& c) const { return c.p; }
  __device__ void b_next(BCur& c) const {
    ++c.p;
    if (++c.t == d.taps) {
      c.t = 0;
      c.p += (N - 1) * d.taps;
    }
  }
  __device__ void b_jump(BCur& c) const {
    const int dt = jmp.r * d.kw + jmp.q;
    c.t += dt;
    c.p += dt;
    if (c.t >= d.taps) {
      c.t -= d.taps;
      c.p += (N - 1) * d.taps;
    }
    c.p += jmp.c * N * d.taps;
  }
  __device__ const T* a_run(int64_t, int64_t) const { return nullptr; }
  __device__ const T* b_run(int64_t, int64_t) const { return nullptr; }

  using Out = PlaneRow<T>;  // &dx[img][0][pix]
  __device__ Out out_at(int64_t, int64_t m) const { return Out::at(dx, m, div_plane, c_in); }
  __device__ void out_next(Out& o, int dm) const { o.next(dm, plane, c_in); }
  __device__ void store(const Out& o, int64_t g, int, int64_t n, A v) const {
    o.p[(g * N + n) * plane] = from_acc<T>(v);
  }
};

// What the two grad-weight Problems (NCHW, NHWC) share: the sizes, the jump over k = (img, oh, ow),
// a B column's walk over the output pixels (its tap's input coordinates carried along ow -> oh ->
// image) and the epilogue into dw or the split-K partials. The layouts differ in the order of n =
// (ci, kh, kw), in A's cursor and in the address of an input pixel.
template <typename T>
struct WeightGemm {
  using Storage = T;
  using A = acc_t<T>;
  const T* dy;
  const T* x;
  T* dw;
  A* partial;  // split-K partials [splits][c_out][N] when splits > 1
  Dims d;
  int64_t c_in, cin_g, c_out, plane, pixels;  // h w, oh ow
  int64_t M, N, K, groups, splits;
  FastDiv div_pixels, div_ow, div_kw;
  int j_img = 0, j_pix = 0, j_oh = 0, j_ow = 0;  // the jump over (img, pixel) and (img, oh, ow)

  WeightGemm(const T* dy_, const T* x_, T* dw_, A* partial_, const ConvShape& s, int64_t m, int64_t n, int64_t k,
             int64_t splits_)
      : dy(dy_), x(x_), dw(dw_), partial(partial_), d(s), c_in(s.c_in), cin_g(s.cin_g()), c_out(s.c_out),
        plane(s.h * s.w), pixels(s.oh * s.ow), M(m), N(n), K(k), groups(s.groups), splits(splits_),
        div_pixels(s.oh * s.ow), div_ow(s.ow), div_kw(s.kw) {}
  void set_jump(int64_t j) {
    j_img = int(j / pixels);
    j_pix = int(j % pixels);
    j_oh = j_pix / d.ow;
    j_ow = j_pix % d.ow;
  }

  struct BCur {
    const T* img;  // the image's pixel data of the column's input channel (NCHW: its plane)
    int ih, iw, oh, ow;
  };
  // the column of tap (kh, kw) whose channel's data starts at chan (image 0), at k
  __device__ BCur walk(const T* chan, int kh, int kw, int64_t k) const {
    const int ki = int(k), img = div_pixels.div(ki), r = ki - img * int(pixels), oh = div_ow.div(r), ow = r - oh * d.ow;
    return BCur{chan + img * c_in * plane, oh * d.sh + kh * d.dh - d.pt, ow * d.sw + kw * d.dw - d.pl, oh, ow};
  }
  __device__ bool inside(const BCur& c) const {
    return unsigned(c.ih) < unsigned(d.h) && unsigned(c.iw) < unsigned(d.w);
  }
  __device__ void b_next(BCur& c) const {
    c.iw += d.sw;
    if (++c.ow == d.ow) {
      c.ow = 0;
      c.iw -= d.ow * d.sw;
      c.ih += d.sh;
      if (++c.oh == d.oh) {
        c.oh = 0;
        c.ih -= d.oh * d.sh;
        c.img += c_in * plane;
      }
    }
  }
  __device__ void b_jump(BCur& c) const {
    c.ow += j_ow;
    c.iw += j_ow * d.sw;
    if (c.ow >= d.ow) {
      c.ow -= d.ow;
      c.iw -= d.ow * d.sw;
      ++c.oh;
      c.ih += d.sh;
    }
    c.oh += j_oh;
    c.ih += j_oh * d.sh;
    if (c.oh >= d.oh) {
      c.oh -= d.oh;
      c.ih -= d.oh * d.sh;
      c.img += c_in * plane;
    }
    c.img += j_img * c_in * plane;
  }
  // dy is contiguous along K only within an image (NCHW: a_seg), x never
  __device__ const T* a_run(int64_t, int64_t) const { return nullptr; }
  __device__ const T* b_run(int64_t, int64_t) const { return nullptr; }

  struct Out {
    int64_t i;  // (g M + m) N
  };
  __device__ Out out_at(int64_t g, int64_t m) const { return Out{(g * M + m) * N}; }
  __device__ void out_next(Out& o, int dm) const { o.i += dm * N; }
  __device__ void store(const Out& o, int64_t, int split, int64_t n, A v) const {
    if (splits > 1)
      partial[split * c_out * N + o.i + n] = v;
    else
      dw[o.i + n] = from_acc<T>(v);
  }
};

// Grad weight, NCHW: row m of A = output channel co of group g, k = (img, oh, ow): A(m, k) = dy
// (contiguous within each image's plane: segments); column n of B = (ci, kh, kw): B(k, n) = the input
// pixel that tap (kh, kw) of output pixel (oh, ow) reads.
template <typename T>
struct ConvGradWeight : WeightGemm<T> {
  using W = WeightGemm<T>;
  using W::c_out, W::cin_g, W::d, W::div_kw, W::dy, W::j_img, W::j_pix, W::M, W::pixels, W::plane, W::x;
  FastDiv div_taps;
  int l_img = 0, l_pix = 0;  // the leap (a K step) over (img, pixel)

  ConvGradWeight(const T* dy_, const T* x_, T* dw_, typename W::A* partial_, const ConvShape& s, int64_t m,
                 int64_t n, int64_t k, int64_t splits_)
      : W(dy_, x_, dw_, partial_, s, m, n, k, splits_), div_taps(s.kh * s.kw) {}
  void set_leap(int64_t j) {
    l_img = int(j / pixels);
    l_pix = int(j % pixels);
  }

  struct ACur {
    const T* p;  // dy[img][g M + m][pix]
    int pix;
  };
  __device__ ACur a_begin(int64_t g, int64_t m, int64_t k) const {
    const int ki = int(k), img = this->div_pixels.div(ki), pix = ki - img * int(pixels);
    return ACur{dy + (img * c_out + g * M + m) * pixels + pix, pix};
  }
  __device__ const T* a_at(const ACur& c) const { return c.p; }
  __device__ void a_next(ACur& c) const {
    ++c.p;
    if (++c.pix == pixels) {
      c.pix = 0;
      c.p += (c_out - 1) * pixels;
    }
  }
  __device__ void step(ACur& c, int d_img, int d_pix) const {
    c.pix += d_pix;
    c.p += d_pix;
    if (c.pix >= pixels) {
      c.pix -= int(pixels);
      c.p += (c_out - 1) * pixels;
    }
    c.p += d_img * c_out * pixels;
  }
  __device__ void a_jump(ACur& c) const { step(c, j_img, j_pix); }
  // a segment that stays inside an image's plane loads as 16-byte copies (the leap then steps the
  // cursor a whole K step)
  __device__ int a_seg(const ACur& c, int len, const T*& p) const {
    if (c.pix + len > pixels) return 0;
    p = c.p;
    return 1;
  }
  __device__ void a_leap(ACur& c) const { step(c, l_img, l_pix); }
  __device__ typename W::BCur b_begin(int64_t g, int64_t n, int64_t k) const {
    const int ni = int(n), ci = div_taps.div(ni), t = ni - ci * d.taps, kh = div_kw.div(t), kw = t - kh * d.kw;
    return this->walk(x + (g * cin_g + ci) * plane, kh, kw, k);
  }
  __device__ const T* b_at(const typename W::BCur& c) const {
    return this->inside(c) ? c.img + c.ih * d.w + c.iw : nullptr;
  }
};

// ------------------------------------------------------------------------------- channels last
// NHWC tensors (torch.channels_last) put the channels innermost, so the GEMMs order K with the
// channel fastest: k = (kh kw_size + kw) c + channel. Then a row of the forward (and grad-input) A is
// contiguous along runs of c channels of one tap, and a K step of it loads as 16-byte copies
// (a_seg); a filter [c_out][kh][kw][c_in / g] is contiguous along K as in NCHW. Outputs are stored
// NHWC: y[m][co], one row per pixel.

// A jump of j K elements over (kernel row, kernel column, channel of c): j = (r kw + q) c + e.
struct ChannelJump {
  int r, q, e;
  ChannelJump() = default;
  ChannelJump(int64_t j, int64_t c, const Dims& d)
      : r(int(j / c / d.kw)), q(int(j / c % d.kw)), e(int(j % c)) {}
};

template <typename T>
struct ConvForwardNhwc : Filters<T> {
  using Storage = T;
  using A = acc_t<T>;
  using F = Filters<T>;
  using F::N;
  const T* x;
  T* y;
  Dims d;
  int cin_g;
  int64_t c_in, c_out, plane, pixels;
  int64_t M, groups;
  FastDiv div_pixels, div_ow, div_cin, div_kw;
  ChannelJump jmp{}, lp{};

  ConvForwardNhwc(const T* x_, const T* w_, const T* bias_, T* y_, const ConvShape& s, Activation a)
      : F{w_, bias_, a, s.cout_g(), s.k_gemm()}, x(x_), y(y_), d(s), cin_g(int(s.cin_g())), c_in(s.c_in),
        c_out(s.c_out), plane(s.h * s.w), pixels(s.oh * s.ow), M(s.n * s.oh * s.ow), groups(s.groups),
        div_pixels(s.oh * s.ow), div_ow(s.ow), div_cin(s.cin_g()), div_kw(s.kw) {}
  void set_jump(int64_t j) {
    jmp = ChannelJump(j, cin_g, d);
    this->jmp_k = j;
  }
  void set_leap(int64_t j) { lp = ChannelJump(j, cin_g, d); }

  struct ACur {
    const T* img;  // &x[img][0][0][g cin_g]
    Tap tap;
    int ci;
  };
  __device__ ACur a_begin(int64_t g, int64_t m, int64_t k) const {
    const int mi = int(m), img = div_pixels.div(mi), r = mi - img * int(pixels), oh = div_ow.div(r),
              ow = r - oh * d.ow;
    const int ki = int(k), t = div_cin.div(ki), ci = ki - t * cin_g, kh = div_kw.div(t), kw = t - kh * d.kw;
    return ACur{x + img * plane * c_in + g * cin_g, tap_of(oh, ow, kh, kw, d), ci};
  }
  __device__ const T* pixel(const ACur& c) const { return c.img + (int64_t(c.tap.ih) * d.w + c.tap.iw) * c_in + c.ci; }
  __device__ const T* a_at(const ACur& c) const { return c.tap.inside(d) ? pixel(c) : nullptr; }
  // (the tap only wraps past the last kernel row beyond K, where nothing is read)
  __device__ void a_next(ACur& c) const {
    if (++c.ci == cin_g) {
      c.ci = 0;
      c.tap.next(d);
    }
  }
  __device__ void add(ACur& c, const ChannelJump& j) const {
    c.ci += j.e;
    if (c.ci >= cin_g) {
      c.ci -= cin_g;
      c.tap.next(d);
    }
    c.tap.add(j.q, j.r, d);
  }
  __device__ void a_jump(ACur& c) const { add(c, jmp); }
  __device__ void a_leap(ACur& c) const { add(c, lp); }
  __device__ int a_seg(const ACur& c, int len, const T*& p) const {
    if (c.ci + len > cin_g) return 0;
    if (!c.tap.inside(d)) return 2;
    p = pixel(c);
    return 1;
  }

  struct Out {
    T* p;  // &y[m][0]
  };
  __device__ Out out_at(int64_t, int64_t m) const { return Out{y + m * c_out}; }
  __device__ void out_next(Out& o, int dm) const { o.p += dm * c_out; }
  __device__ void store(const Out& o, int64_t g, int, int64_t n, A v) const {
    const int64_t co = g * N + n;
    o.p[co] = from_acc<T>(this->finish(co, v));
  }
};

// Grad input, NHWC: row m = input pixel, k = (kh, kw, co) with the output channel fastest; A(m, k)
// = dy[img][oh][ow][g cout_g + co] at the output pixel the tap lands on (the stride QRs as in NCHW);
// B(k, n) = w[g cout_g + co][kh][kw][n].
template <typename T>
struct ConvGradInputNhwc {
  using Storage = T;
  using A = acc_t<T>;
  const T* dy;
  const T* w;
  T* dx;
  Dims d;
  int cout_g, cin_g;
  int64_t c_in, c_out, plane, out_plane;
  int64_t M, N, K, groups;
  FastDiv div_plane, div_w, div_cout, div_kw, div_sh, div_sw;
  StrideSteps steps;
  ChannelJump jmp{}, lp{};
  BackJump bj{}, bl{};

  ConvGradInputNhwc(const T* dy_, const T* w_, T* dx_, const ConvShape& s)
      : dy(dy_), w(w_), dx(dx_), d(s), cout_g(int(s.cout_g())), cin_g(int(s.cin_g())), c_in(s.c_in), c_out(s.c_out),
        plane(s.h * s.w), out_plane(s.oh * s.ow), M(s.n * s.h * s.w), N(s.cin_g()), K(s.cout_g() * s.kh * s.kw),
        groups(s.groups), div_plane(s.h * s.w), div_w(s.w), div_cout(s.cout_g()), div_kw(s.kw), div_sh(s.sh),
        div_sw(s.sw), steps(s) {}
  void set_jump(int64_t j) {
    jmp = ChannelJump(j, cout_g, d);
    bj = BackJump(jmp.q, jmp.r, d);
  }
  void set_leap(int64_t j) {
    lp = ChannelJump(j, cout_g, d);
    bl = BackJump(lp.q, lp.r, d);
  }

  struct ACur {
    const T* img;  // &dy[img][0][0][g cout_g]
    BackTap tap;
    int co;
  };
  __device__ ACur a_begin(int64_t g, int64_t m, int64_t k) const {
    const int mi = int(m), img = div_plane.div(mi), r = mi - img * int(plane), ih = div_w.div(r), iw = r - ih * d.w;
    const int ki = int(k), t = div_cout.div(ki), co = ki - t * cout_g, kh = div_kw.div(t), kw = t - kh * d.kw;
    return ACur{dy + img * out_plane * c_out + g * cout_g, back_tap(ih, iw, kh, kw, d, div_sh, div_sw), co};
  }
  __device__ const T* pixel(const ACur& c) const { return c.img + c.tap.pixel(d) * c_out + c.co; }
  __device__ const T* a_at(const ACur& c) const { return c.tap.lands(d) ? pixel(c) : nullptr; }
  // (the tap only wraps past the last kernel row beyond K, where nothing is read)
  __device__ void a_next(ACur& c) const {
    if (++c.co == cout_g) {
      c.co = 0;
      c.tap.next(d, steps);
    }
  }
  __device__ void add(ACur& c, const ChannelJump& j, const BackJump& b) const {
    c.co += j.e;
    if (c.co >= cout_g) {
      c.co -= cout_g;
      c.tap.next(d, steps);
    }
    c.tap.add(b, d, steps);
  }
  __device__ void a_jump(ACur& c) const { add(c, jmp, bj); }
  __device__ void a_leap(ACur& c) const { add(c, lp, bl); }
  __device__ int a_seg(const ACur& c, int len, const T*& p) const {
    if (c.co + len > cout_g) return 0;
    if (!c.tap.lands(d)) return 2;
    p = pixel(c);
    return 1;
  }
  struct BCur {
    const T* p;  // &w[g cout_g + co][kh][kw][n]
    int co;
  };
  __device__ BCur b_begin(int64_t g, int64_t n, int64_t k) const {
    const int ki = int(k), t = div_cout.div(ki), co = ki - t * cout_g;
    return BCur{w + ((g * cout_g + co) * d.taps + t) * cin_g + n, co};
  }
  __device__ const T* b_at(const BCur& c) const { return c.p; }
  __device__ void b_next(BCur& c) const {
    if (++c.co == cout_g) {
      c.co = 0;
      c.p += cin_g - int64_t(cout_g - 1) * d.taps * cin_g;
    } else {
      c.p += int64_t(d.taps) * cin_g;
    }
  }
  __device__ void b_jump(BCur& c) const {
    c.co += jmp.e;
    c.p += int64_t(jmp.e) * d.taps * cin_g;
    if (c.co >= cout_g) {
      c.co -= cout_g;
      c.p += cin_g - int64_t(cout_g) * d.taps * cin_g;
    }
    c.p += int64_t(jmp.r * d.kw + jmp.q) * cin_g;
  }
  __device__ const T* a_run(int64_t, int64_t) const { return nullptr; }
  __device__ const T* b_run(int64_t, int64_t) const { return nullptr; }

  struct Out {
    T* p;  // &dx[m][0]
  };
  __device__ Out out_at(int64_t, int64_t m) const { return Out{dx + m * c_in}; }
  __device__ void out_next(Out& o, int dm) const { o.p += dm * c_in; }
  __device__ void store(const Out& o, int64_t g, int, int64_t n, A v) const { o.p[g * N + n] = from_acc<T>(v); }
};

// Grad weight, NHWC: row m = output channel co of group g, k = (img, oh, ow): A(m, k) =
// dy[img][oh][ow][g M + m]; column n = (kh, kw, ci) with the channel fastest: B(k, n) = the input
// pixel's channel g cin_g + ci that tap (kh, kw) of output pixel k reads; dw stored [co][kh][kw][ci].
template <typename T>
struct ConvGradWeightNhwc : WeightGemm<T> {
  using W = WeightGemm<T>;
  using W::c_in, W::c_out, W::cin_g, W::d, W::div_kw, W::dy, W::M, W::x;
  FastDiv div_cin;
  int64_t j_k = 0;

  ConvGradWeightNhwc(const T* dy_, const T* x_, T* dw_, typename W::A* partial_, const ConvShape& s, int64_t m,
                     int64_t n, int64_t k, int64_t splits_)
      : W(dy_, x_, dw_, partial_, s, m, n, k, splits_), div_cin(s.cin_g()) {}
  void set_jump(int64_t j) {
    W::set_jump(j);
    j_k = j;
  }

  struct ACur {
    const T* p;  // &dy[k][g M + m]
  };
  __device__ ACur a_begin(int64_t g, int64_t m, int64_t k) const { return ACur{dy + k * c_out + g * M + m}; }
  __device__ const T* a_at(const ACur& c) const { return c.p; }
  __device__ void a_next(ACur& c) const { c.p += c_out; }
  __device__ void a_jump(ACur& c) const { c.p += j_k * c_out; }
  __device__ typename W::BCur b_begin(int64_t g, int64_t n, int64_t k) const {
    const int ni = int(n), t = div_cin.div(ni), ci = ni - t * int(cin_g), kh = div_kw.div(t), kw = t - kh * d.kw;
    return this->walk(x + g * cin_g + ci, kh, kw, k);
  }
  __device__ const T* b_at(const typename W::BCur& c) const {
    return this->inside(c) ? c.img + (int64_t(c.ih) * d.w + c.iw) * c_in : nullptr;
  }
};

// bias_grad: db[c] = sum over (o, i) of dy[o][c][i], dy viewed as [outer, channels, inner], summed in
// double in a fixed order (deterministic). Two mappings keep the loads coalesced:
// Channel blocks (inner > 1, a convolution's [N, C, H, W]): one block of 256 threads per channel;
// thread t takes the flat positions t, t + 256, ... of the channel's outer x inner values, with
// (o, i) carried forward by the precomputed (256 / inner, 256 % inner) -- no division per element --
// so a warp reads 32 consecutive values of a plane; then a fixed tree over the 256 partial sums.
constexpr int kBiasThreads = 256;
template <typename T>
__global__ void __launch_bounds__(kBiasThreads) bias_grad_planes_kernel(const T* __restrict__ dy, T* __restrict__ db,
                                                                        int64_t outer, int64_t channels, int64_t inner,
                                                                        int64_t step_o, int64_t step_i) {
  __shared__ double partial[kBiasThreads];
  const int64_t c = blockIdx.x;
  const int t = threadIdx.x;
  // (o, i) of flat position t; t < 256, so one small loop instead of a division
  int64_t o = 0, i = t;
  while (i >= inner) {
    i -= inner;
    ++o;
  }
  double sum = 0;
  while (o < outer) {
    sum += static_cast<double>(to_acc(dy[(o * channels + c) * inner + i]));
    o += step_o;
    i += step_i;
    if (i >= inner) {
      i -= inner;
      ++o;
    }
  }
  partial[t] = sum;
  __syncthreads();
  for (int half = kBiasThreads / 2; half > 0; half /= 2) {
    if (t < half) partial[t] += partial[t + half];
    __syncthreads();
  }
  if (t == 0) db[c] = from_acc<T>(static_cast<acc_t<T>>(partial[0]));
}

// Row blocks (inner == 1, a linear layer's [rows, C]): a block of 32 x 8 threads owns 32 consecutive
// channels; thread (x, y) sums rows y, y + 8, ... of channel 32 blockIdx.x + x (a warp reads 128
// consecutive bytes of a row), then the 8 partial sums of a channel are added in row order.
constexpr int kBiasCols = 32, kBiasRows = 8;
template <typename T>
__global__ void __launch_bounds__(kBiasCols* kBiasRows) bias_grad_rows_kernel(const T* __restrict__ dy,
                                                                               T* __restrict__ db, int64_t outer,
                                                                               int64_t channels) {
  __shared__ double partial[kBiasRows][kBiasCols];
  const int x = threadIdx.x % kBiasCols, y = threadIdx.x / kBiasCols;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBiasCols + x;
  double sum = 0;
  if (c < channels)
    for (int64_t o = y; o < outer; o += kBiasRows) sum += static_cast<double>(to_acc(dy[o * channels + c]));
  partial[y][x] = sum;
  __syncthreads();
  if (y == 0 && c < channels) {
    for (int r = 1; r < kBiasRows; ++r) sum += partial[r][x];
    db[c] = from_acc<T>(static_cast<acc_t<T>>(sum));
  }
}

}  // namespace

int conv2d_forward(DType dtype, const void* x, const void* w, const void* bias, void* y, const ConvShape& s,
                   Activation act, bool channels_last, bool tf32, Stream stream) {
  int err = 0;
  FC_DISPATCH(dtype, T, {
    const T *xp = static_cast<const T*>(x), *wp = static_cast<const T*>(w), *bp = static_cast<const T*>(bias);
    T* yp = static_cast<T*>(y);
    if (channels_last) {
      ConvForwardNhwc<T> p(xp, wp, bp, yp, s, act);
      p.b_vec = gemm::aligned_rows(p.w, p.K);
      err = gemm::run(p, 1, tf32, stream);
    } else {
      ConvForward<T> p(xp, wp, bp, yp, s, act);
      p.b_vec = gemm::aligned_rows(p.w, p.K);
      err = gemm::run(p, 1, tf32, stream);
    }
  });
  return err;
}

int conv2d_grad_input(DType dtype, const void* dy, const void* w, void* dx, const ConvShape& s, bool channels_last,
                      bool tf32, Stream stream) {
  int err = 0;
  FC_DISPATCH(dtype, T, {
    const T *dyp = static_cast<const T*>(dy), *wp = static_cast<const T*>(w);
    T* dxp = static_cast<T*>(dx);
    err = channels_last ? gemm::run(ConvGradInputNhwc<T>(dyp, wp, dxp, s), 1, tf32, stream)
                        : gemm::run(ConvGradInput<T>(dyp, wp, dxp, s), 1, tf32, stream);
  });
  return err;
}

namespace {
struct WeightGemmSize {
  int64_t m, n, k, splits;
};
WeightGemmSize weight_gemm(const ConvShape& s) {
  const int64_t m = s.c_out / s.groups, n = s.c_in / s.groups * s.kh * s.kw, k = s.n * s.oh * s.ow;
  return WeightGemmSize{m, n, k, gemm::splits_for(m, n, k, s.groups)};
}
}  // namespace

int64_t conv2d_grad_weight_workspace_bytes(DType dtype, const ConvShape& s) {
  const WeightGemmSize g = weight_gemm(s);
  return dtype == DType::f64 ? gemm::split_workspace_bytes<double>(g.m, g.n, g.k, s.groups)
                             : gemm::split_workspace_bytes<float>(g.m, g.n, g.k, s.groups);
}

int conv2d_grad_weight(DType dtype, const void* dy, const void* x, void* dw, void* workspace, const ConvShape& s,
                       bool channels_last, bool tf32, Stream stream) {
  const WeightGemmSize g = weight_gemm(s);
  int err = 0;
  FC_DISPATCH(dtype, T, {
    using A = acc_t<T>;
    const T *dyp = static_cast<const T*>(dy), *xp = static_cast<const T*>(x);
    T* dwp = static_cast<T*>(dw);
    A* part = static_cast<A*>(workspace);
    err = channels_last
              ? gemm::run(ConvGradWeightNhwc<T>(dyp, xp, dwp, part, s, g.m, g.n, g.k, g.splits), g.splits, tf32, stream)
              : gemm::run(ConvGradWeight<T>(dyp, xp, dwp, part, s, g.m, g.n, g.k, g.splits), g.splits, tf32, stream);
    if (!err) err = gemm::finish_splits(part, dwp, s.c_out * g.n, g.splits, stream);
  });
  return err;
}

int bias_grad(DType dtype, const void* dy, void* db, const BiasGradShape& s, Stream stream) {
  if (s.channels == 0) return 0;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    if (s.inner == 1)
      err = launch(bias_grad_rows_kernel<T>, dim3(static_cast<unsigned>(ceil_div(s.channels, int64_t(kBiasCols)))),
                   dim3(kBiasCols * kBiasRows), 0, stream, static_cast<const T*>(dy), static_cast<T*>(db), s.outer,
                   s.channels);
    else
      err = launch(bias_grad_planes_kernel<T>, dim3(static_cast<unsigned>(s.channels)), dim3(kBiasThreads), 0, stream,
                   static_cast<const T*>(dy), static_cast<T*>(db), s.outer, s.channels, s.inner,
                   int64_t(kBiasThreads) / s.inner, int64_t(kBiasThreads) % s.inner);
  });
  return err;
}

}  // namespace fastconv::FC_NS::kernels
