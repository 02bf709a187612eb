// cross_entropy.cu: softmax + cross-entropy fused, forward and backward, on the GPU. The semantics are
// those of csrc/cpu/cross_entropy.cpp (class weights, ignore_index, label smoothing eps, reduction
// none/mean/sum, mean over zero total weight is NaN, rows whose max is +-inf use m = 0):
//   lse_i  = m + log(sum_c exp(z_c - m)),   loss_i = (1 - eps) w[t] (lse_i - z_t) + eps/C sum_c w[c] (lse_i - z_c)
//   dz_c   = scale * (exp(z_c - lse_i) * coef_sum - eps/C w[c]) - [c == t] scale (1 - eps) w[t]
//
// Kernels (T the storage type, A = acc_t<T> the arithmetic type: float for float/half/bf16, double for double):
//   ce_rows_warp<T>   forward for C <= 1024: one warp per row, 8 rows per 256-thread block, grid-stride
//                     over rows. Lane l walks columns l, l + 32, ... once with an online log-sum-exp
//                     (running max m and s = sum exp(z - m), s rescaled by exp(m_old - m_new) when the max
//                     grows: one exp per logit); the 32 partial (m, s) pairs merge by xor shuffles, so every
//                     lane ends with lse. With label smoothing a second pass over the row (then in L1)
//                     reduces sum_c w[c] (lse - z_c) the same way. Lane 0 writes lse and the row loss.
//   ce_rows_block<T>  forward for C > 1024: one 512-thread block per row, grid-stride over rows; the same
//                     passes with a block all-reduce (xor shuffles within each warp, the 16 warp partials
//                     through shared memory, merged again by shuffles in every warp).
//                     Both write each row's loss to `loss` (reduction none) or, as (loss_i, w[t] or 0)
//                     in double, to the workspace; ignored rows give 0, and a row whose target is out of
//                     [0, C) is recorded in the error record (csrc/cuda/error_record.cuh) and gives NaN
//                     (its lse too, and so the reduced loss).
//   ce_reduce<T>      mean/sum: ONE 256-thread block; thread k sums rows k, k + 256, ... in double, then a
//                     fixed tree in shared memory. The order depends on nothing but n, so the result is
//                     deterministic (no float atomics); loss = total / denom (NaN for denom 0) or total.
//   ce_backward_prep<T>  one 256-thread block: wsum = sum_c w[c] and, for mean, denom = sum of w[t] over
//                     rows not ignored, in double with the same fixed tree; writes the scale
//                     grad[0] / denom and eps/C * wsum to the workspace (device to device: the host never
//                     sees the gradient).
//   ce_backward<T>    one thread per logit, grid-stride over n*C in int64 (row and column stepped without
//                     a division per element); softmax recomputed from z and the saved lse, so no
//                     probability buffer exists. A row whose target is out of [0, C) gets NaN, and its
//                     column-0 thread records it.
// Cost: forward reads the logits once, n*C*sizeof(T) bytes (twice with smoothing, the second read from
// L1/L2 while the rows in flight fit there), with 1 exp and ~4 flops per logit; backward reads z and
// writes dz, 2*n*C*sizeof(T) bytes, with 1 exp and ~6 flops per logit. Both are bandwidth bound, so the
// design goal is one pass over the logits with coalesced loads: a warp per row keeps small rows from
// idling most of a block, a block per row keeps long rows from serialising on one warp.
#include "cuda/common.cuh"
#include "cuda/error_record.cuh"

namespace fastconv::FC_NS::kernels {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kRowsPerWarpBlock = 8;
constexpr int kWarpBlock = kWarpSize * kRowsPerWarpBlock;
constexpr int64_t kWarpRowMaxC = 1024;
constexpr int kRowBlock = 512;
constexpr int kRowBlockWarps = kRowBlock / kWarpSize;
constexpr int kReduceBlock = 256;
constexpr int kElemBlock = 256;
constexpr int64_t kMaxBlocks = 4096;

__device__ __forceinline__ float ce_exp(float x) { return expf(x); }
__device__ __forceinline__ double ce_exp(double x) { return exp(x); }
__device__ __forceinline__ float ce_log(float x) { return logf(x); }
__device__ __forceinline__ double ce_log(double x) { return log(x); }
__device__ __forceinline__ float ce_fmax(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double ce_fmax(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float ce_fmin(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double ce_fmin(double a, double b) { return fmin(a, b); }

template <typename T>
__device__ __forceinline__ acc_t<T> class_weight(const T* w, int64_t c) {
  return w ? to_acc(w[c]) : acc_t<T>(1);
}

// Online log-sum-exp of a set of logits: m = their max (fmax, so NaN never wins; -inf when empty) and
// s = sum exp(z - m). Where m is +-inf an equal logit counts 1 instead of exp(inf - inf) = NaN; the
// result then only depends on whether s is NaN (lse_final), and a later finite max multiplies those
// counts by exp(-inf) = 0. A NaN logit makes s NaN for good.
template <typename A>
__device__ __forceinline__ void lse_push(A& m, A& s, A z) {
  if (z > m) {
    s = s * ce_exp(m - z) + A(1);
    m = z;
  } else {
    s += z == m ? A(1) : ce_exp(z - m);
  }
}

// (m, s) <- the state of the union of two sets. Symmetric in its operands, bit for bit, so both lanes
// of a shuffle pair end with the same value.
template <typename A>
__device__ __forceinline__ void lse_merge(A& m, A& s, A m2, A s2) {
  const A hi = ce_fmax(m, m2);
  const A lo = ce_fmin(m, m2);
  const A s_hi = m >= m2 ? s : s2;
  const A s_lo = m >= m2 ? s2 : s;
  s = s_hi + s_lo * (lo == hi ? A(1) : ce_exp(lo - hi));
  m = hi;
}

// lse of a row from its merged state; the CPU's m = 0 for a +-inf max gives lse = m (or NaN with a NaN).
template <typename A>
__device__ __forceinline__ A lse_final(A m, A s) {
  if (isinf(m)) return isnan(s) ? A(NAN) : m;
  return m + ce_log(s);
}

// All-reduces of a warp: every lane gets the same result.
template <typename A>
__device__ __forceinline__ void warp_lse(A& m, A& s) {
  for (int off = kWarpSize / 2; off > 0; off >>= 1) {
    const A m2 = __shfl_xor_sync(kFullMask, m, off);
    const A s2 = __shfl_xor_sync(kFullMask, s, off);
    lse_merge(m, s, m2, s2);
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int off = kWarpSize / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// All-reduces of a kRowBlock-thread block, called by every thread; `sh_*` hold one value per warp and
// may be reused once these return (they end with a barrier).
template <typename A>
__device__ __forceinline__ void block_lse(A& m, A& s, A* sh_m, A* sh_s) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  warp_lse(m, s);
  if (lane == 0) {
    sh_m[warp] = m;
    sh_s[warp] = s;
  }
  __syncthreads();
  m = lane < kRowBlockWarps ? sh_m[lane] : A(-INFINITY);
  s = lane < kRowBlockWarps ? sh_s[lane] : A(0);
  warp_lse(m, s);
  __syncthreads();
}

template <typename A>
__device__ __forceinline__ A block_sum(A v, A* sh) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = warp_sum(lane < kRowBlockWarps ? sh[lane] : A(0));
  __syncthreads();
  return v;
}

// Sums over a kReduceBlock-thread block in a fixed tree; thread 0 gets the totals.
__device__ __forceinline__ void block_tree_sum2(double& a, double& b, double* sh_a, double* sh_b) {
  const int tid = threadIdx.x;
  sh_a[tid] = a;
  sh_b[tid] = b;
  __syncthreads();
  for (int half = kReduceBlock / 2; half > 0; half >>= 1) {
    if (tid < half) {
      sh_a[tid] += sh_a[tid + half];
      sh_b[tid] += sh_b[tid + half];
    }
    __syncthreads();
  }
  a = sh_a[0];
  b = sh_b[0];
}

template <typename T>
struct RowParams {
  const T* z;              // [n, C]
  const int64_t* target;   // [n]
  const T* w;              // [C] or null
  int64_t n, C, ignore_index;
  acc_t<T> hard;           // 1 - eps, rounded to A as the CPU does
  acc_t<T> soft;           // eps / C
  bool smoothing;          // eps > 0
  T* lse;                  // [n]
  T* loss_rows;            // [n] for reduction none, else null
  double2* ws_rows;        // [n] (loss_i, w[t] or 0) for mean/sum, else null
  ErrorRecord* errors;
};

// The row's outputs, written by one thread once lse (and the smoothing sum) are known.
template <typename T>
__device__ __forceinline__ void finish_row(const RowParams<T>& p, int64_t row, int64_t t, acc_t<T> l,
                                           acc_t<T> smooth) {
  using A = acc_t<T>;
  A lse = l, loss = A(0), wt = A(0);
  if (t != p.ignore_index) {
    if (t < 0 || t >= p.C) {
      record_error(p.errors, DataError::cross_entropy_target, t, row, p.C, p.ignore_index);
      lse = loss = A(NAN);
    } else {
      wt = class_weight(p.w, t);
      loss = p.hard * wt * (l - to_acc(p.z[row * p.C + t]));
      if (p.smoothing) loss += p.soft * smooth;
    }
  }
  p.lse[row] = from_acc<T>(lse);
  if (p.loss_rows) {
    p.loss_rows[row] = from_acc<T>(loss);
  } else {
    p.ws_rows[row] = make_double2(static_cast<double>(loss), static_cast<double>(wt));
  }
}

template <typename T>
__device__ __forceinline__ bool smooth_row(const RowParams<T>& p, int64_t t) {
  return p.smoothing && t != p.ignore_index && t >= 0 && t < p.C;
}

// Forward, C <= 1024: warp w of block b takes rows b*8 + w, then + 8*gridDim.x, ...; lane l reads
// columns l, l + 32, ... (coalesced).
template <typename T>
__global__ void ce_rows_warp(RowParams<T> p) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kRowsPerWarpBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerWarpBlock + threadIdx.x / kWarpSize; row < p.n;
       row += row_stride) {
    const T* zr = p.z + row * p.C;
    A m = A(-INFINITY), s = A(0);
    for (int64_t c = lane; c < p.C; c += kWarpSize) lse_push(m, s, to_acc(zr[c]));
    warp_lse(m, s);
    const A l = lse_final(m, s);
    const int64_t t = p.target[row];
    A smooth = A(0);
    if (smooth_row(p, t)) {
      A part = A(0);
      for (int64_t c = lane; c < p.C; c += kWarpSize) part += class_weight(p.w, c) * (l - to_acc(zr[c]));
      smooth = warp_sum(part);
    }
    if (lane == 0) finish_row(p, row, t, l, smooth);
  }
}

// Forward, C > 1024: block b takes rows b, b + gridDim.x, ...; thread k reads columns k, k + 512, ...
template <typename T>
__global__ void ce_rows_block(RowParams<T> p) {
  using A = acc_t<T>;
  __shared__ A sh_m[kRowBlockWarps];
  __shared__ A sh_s[kRowBlockWarps];
  for (int64_t row = blockIdx.x; row < p.n; row += gridDim.x) {
    const T* zr = p.z + row * p.C;
    A m = A(-INFINITY), s = A(0);
    for (int64_t c = threadIdx.x; c < p.C; c += kRowBlock) lse_push(m, s, to_acc(zr[c]));
    block_lse(m, s, sh_m, sh_s);
    const A l = lse_final(m, s);
    const int64_t t = p.target[row];
    A smooth = A(0);
    if (smooth_row(p, t)) {
      A part = A(0);
      for (int64_t c = threadIdx.x; c < p.C; c += kRowBlock) part += class_weight(p.w, c) * (l - to_acc(zr[c]));
      smooth = block_sum(part, sh_s);
    }
    if (threadIdx.x == 0) finish_row(p, row, t, l, smooth);
  }
}

// Mean/sum of the row losses: one block; thread k takes rows k, k + 256, ..., then a fixed tree.
template <typename T>
__global__ void ce_reduce(const double2* rows, int64_t n, Reduction reduction, T* loss) {
  __shared__ double sh_total[kReduceBlock];
  __shared__ double sh_denom[kReduceBlock];
  double total = 0, denom = 0;
  for (int64_t i = threadIdx.x; i < n; i += kReduceBlock) {
    const double2 r = rows[i];
    total += r.x;
    denom += r.y;
  }
  block_tree_sum2(total, denom, sh_total, sh_denom);
  if (threadIdx.x == 0) {
    const double v = reduction == Reduction::mean ? (denom == 0 ? static_cast<double>(NAN) : total / denom) : total;
    loss[0] = from_acc<T>(static_cast<acc_t<T>>(v));
  }
}

// Backward constants: one block; thread k takes classes k, k + 256, ... and (mean) rows k, k + 256, ...,
// then a fixed tree. ws[0] = grad[0] / denom rounded to A (mean/sum), ws[1] = eps/C * wsum rounded to A.
template <typename T>
__global__ void ce_backward_prep(const T* grad, const int64_t* target, const T* w, int64_t n, int64_t C,
                                 int64_t ignore_index, Reduction reduction, double soft, double* ws) {
  using A = acc_t<T>;
  __shared__ double sh_wsum[kReduceBlock];
  __shared__ double sh_denom[kReduceBlock];
  double wsum = 0, denom = 0;
  for (int64_t c = threadIdx.x; c < C; c += kReduceBlock) wsum += static_cast<double>(class_weight(w, c));
  if (reduction == Reduction::mean) {
    for (int64_t i = threadIdx.x; i < n; i += kReduceBlock) {
      const int64_t t = target[i];
      if (t != ignore_index && t >= 0 && t < C) denom += static_cast<double>(class_weight(w, t));
    }
  }
  block_tree_sum2(wsum, denom, sh_wsum, sh_denom);
  if (threadIdx.x == 0) {
    if (reduction != Reduction::mean) denom = 1;
    else if (denom == 0) denom = static_cast<double>(NAN);
    ws[0] = reduction != Reduction::none
                ? static_cast<double>(static_cast<A>(static_cast<double>(to_acc(grad[0])) / denom))
                : 0.0;
    ws[1] = static_cast<double>(static_cast<A>(soft * wsum));
  }
}

template <typename T>
struct BackParams {
  const T* grad;           // [n] (reduction none) or [1]
  const T* z;              // [n, C]
  const int64_t* target;   // [n]
  const T* w;              // [C] or null
  const T* lse;            // [n]
  int64_t n, C, ignore_index;
  Reduction reduction;
  double one_minus_eps;
  acc_t<T> soft;           // eps / C
  const double* ws;        // from ce_backward_prep
  T* dz;                   // [n, C]
  ErrorRecord* errors;
};

// Backward: thread k of the grid takes logits k, k + stride, ... of the flattened [n, C]; (row, column)
// advance by (stride / C, stride % C) with one carry instead of a division per element.
template <typename T>
__global__ void ce_backward(BackParams<T> p) {
  using A = acc_t<T>;
  const int64_t total = p.n * p.C;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kElemBlock;
  const int64_t drow = stride / p.C, dcol = stride % p.C;
  int64_t k = static_cast<int64_t>(blockIdx.x) * kElemBlock + threadIdx.x;
  int64_t i = k / p.C, c = k % p.C;
  const A shared_scale = static_cast<A>(p.ws[0]);
  const A soft_total = static_cast<A>(p.ws[1]);
  for (; k < total; k += stride) {
    const int64_t t = p.target[i];
    A v = A(0);
    if (t != p.ignore_index) {
      if (t < 0 || t >= p.C) {
        if (c == 0) record_error(p.errors, DataError::cross_entropy_backward_target, t, i, p.C, p.ignore_index);
        v = A(NAN);
      } else {
        const A scale = p.reduction == Reduction::none ? to_acc(p.grad[i]) : shared_scale;
        const A hard = static_cast<A>(p.one_minus_eps * static_cast<double>(class_weight(p.w, t)));
        const A coef_sum = hard + soft_total;
        v = scale * (ce_exp(to_acc(p.z[k]) - to_acc(p.lse[i])) * coef_sum - p.soft * class_weight(p.w, c));
        if (c == t) v -= scale * hard;
      }
    }
    p.dz[k] = from_acc<T>(v);
    i += drow;
    c += dcol;
    if (c >= p.C) {
      c -= p.C;
      ++i;
    }
  }
}

template <typename T>
int forward_impl(const void* logits, const int64_t* target, const void* weight, const CrossEntropyArgs& a,
                 void* loss, void* lse, void* workspace, ErrorRecord* errors, Stream stream) {
  using A = acc_t<T>;
  double2* ws_rows = a.reduction != Reduction::none ? static_cast<double2*>(workspace) : nullptr;
  if (a.n > 0) {
    RowParams<T> p;
    p.z = static_cast<const T*>(logits);
    p.target = target;
    p.w = static_cast<const T*>(weight);
    p.n = a.n;
    p.C = a.c;
    p.ignore_index = a.ignore_index;
    p.hard = static_cast<A>(1.0 - a.label_smoothing);
    p.soft = static_cast<A>(a.label_smoothing / static_cast<double>(a.c));
    p.smoothing = a.label_smoothing > 0;
    p.lse = static_cast<T*>(lse);
    p.loss_rows = a.reduction == Reduction::none ? static_cast<T*>(loss) : nullptr;
    p.ws_rows = ws_rows;
    p.errors = errors;
    const int rc = a.c <= kWarpRowMaxC
                       ? launch(ce_rows_warp<T>, grid_1d(a.n, kRowsPerWarpBlock, kMaxBlocks), dim3(kWarpBlock), 0,
                                stream, p)
                       : launch(ce_rows_block<T>, grid_1d(a.n, 1, kMaxBlocks), dim3(kRowBlock), 0, stream, p);
    if (rc != 0) return rc;
  }
  // Reduced losses are written even for n == 0 (mean NaN, sum 0), as on the CPU.
  if (a.reduction != Reduction::none) {
    return launch(ce_reduce<T>, dim3(1), dim3(kReduceBlock), 0, stream, static_cast<const double2*>(ws_rows), a.n,
                  a.reduction, static_cast<T*>(loss));
  }
  return 0;
}

template <typename T>
int backward_impl(const void* grad_loss, const void* logits, const int64_t* target, const void* weight,
                  const void* lse, const CrossEntropyArgs& a, void* dlogits, void* workspace, ErrorRecord* errors,
                  Stream stream) {
  using A = acc_t<T>;
  if (a.n == 0 || a.c == 0) return 0;
  const double soft = a.label_smoothing / static_cast<double>(a.c);
  double* ws = static_cast<double*>(workspace);
  const int rc = launch(ce_backward_prep<T>, dim3(1), dim3(kReduceBlock), 0, stream,
                        static_cast<const T*>(grad_loss), target, static_cast<const T*>(weight), a.n, a.c,
                        a.ignore_index, a.reduction, soft, ws);
  if (rc != 0) return rc;
  BackParams<T> p;
  p.grad = static_cast<const T*>(grad_loss);
  p.z = static_cast<const T*>(logits);
  p.target = target;
  p.w = static_cast<const T*>(weight);
  p.lse = static_cast<const T*>(lse);
  p.n = a.n;
  p.C = a.c;
  p.ignore_index = a.ignore_index;
  p.reduction = a.reduction;
  p.one_minus_eps = 1.0 - a.label_smoothing;
  p.soft = static_cast<A>(soft);
  p.ws = ws;
  p.dz = static_cast<T*>(dlogits);
  p.errors = errors;
  return launch(ce_backward<T>, grid_1d(a.n * a.c, kElemBlock, kMaxBlocks), dim3(kElemBlock), 0, stream, p);
}

}  // namespace

int64_t cross_entropy_workspace_bytes(const CrossEntropyArgs& a) {
  // forward mean/sum: one (loss, weight) pair of doubles per row; backward: two doubles.
  const int64_t rows = a.reduction != Reduction::none ? a.n * static_cast<int64_t>(2 * sizeof(double)) : 0;
  const int64_t constants = 2 * sizeof(double);
  return rows > constants ? rows : constants;
}

int cross_entropy_forward(DType dtype, const void* logits, const int64_t* target, const void* weight,
                          const CrossEntropyArgs& a, void* loss, void* lse, void* workspace, ErrorRecord* errors,
                          Stream stream) {
  int rc = 0;
  FC_DISPATCH(dtype, T, rc = forward_impl<T>(logits, target, weight, a, loss, lse, workspace, errors, stream));
  return rc;
}

int cross_entropy_backward(DType dtype, const void* grad_loss, const void* logits, const int64_t* target,
                           const void* weight, const void* lse, const CrossEntropyArgs& a, void* dlogits,
                           void* workspace, ErrorRecord* errors, Stream stream) {
  int rc = 0;
  FC_DISPATCH(dtype, T,
              rc = backward_impl<T>(grad_loss, logits, target, weight, lse, a, dlogits, workspace, errors, stream));
  return rc;
}

}  // namespace fastconv::FC_NS::kernels
