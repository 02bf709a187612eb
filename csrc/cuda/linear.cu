// linear.cu: fully connected layers on the GPU through the GEMM engine of gemm.cuh (the same 64 x 64
// block tiles as convolution, on CUDA or tensor cores by dtype: a linear layer is a 1 x 1 convolution
// of a 1 x 1 image).
//   forward      y [rows, out] = x [rows, in] w^T + bias:   M = rows, N = out, K = in; bias in the epilogue
//                (or, split, in the ordered sum of the partials)
//   grad input   dx [rows, in] = dy [rows, out] w:          M = rows, N = in,  K = out
//   grad weight  dw [out, in] = dy^T x:                     M = out,  N = in,  K = rows
// Each splits K when its M x N tiles are too few to fill a large GPU (gemm::splits_for: ~512 blocks,
// at least 8 K steps a split), with the partials summed in split order (deterministic): MNIST's fc1
// forward, 128 x 9216 -> 128, is 4 tiles of 576 K steps unsplit, 288 blocks of 8 steps split.
// 2 * rows * in * out FLOPs each. The operands are read in place (no transposed copies).
#include "cuda/gemm.cuh"

namespace fastconv::FC_NS::kernels {
namespace {

// A(m, k) = a[m * a_rs + k * a_cs], B(k, n) = b[k * b_rs + n * b_cs]; out[m][n] = A B (+ bias[n]).
// A cursor is a pointer, stepped by the operand's K stride.
template <typename T>
struct Strided {
  using Storage = T;
  using A = acc_t<T>;
  const T* a_ptr;
  int64_t a_rs, a_cs;
  const T* b_ptr;
  int64_t b_rs, b_cs;
  const T* bias;
  T* out;
  A* partial;  // split-K partials [splits][M][N] when splits > 1
  int64_t M, N, K, groups, splits;
  bool a_vec = false, b_vec = false;  // rows of A / columns of B contiguous along K and 16-byte aligned
  int64_t a_jmp = 0, b_jmp = 0;
  void set_jump(int64_t j) {
    a_jmp = j * a_cs;
    b_jmp = j * b_rs;
  }

  struct Cur {
    const T* p;
  };
  __device__ Cur a_begin(int64_t, int64_t m, int64_t k) const { return Cur{a_ptr + m * a_rs + k * a_cs}; }
  __device__ const T* a_at(const Cur& c) const { return c.p; }
  __device__ void a_next(Cur& c) const { c.p += a_cs; }
  __device__ void a_jump(Cur& c) const { c.p += a_jmp; }
  __device__ Cur b_begin(int64_t, int64_t n, int64_t k) const { return Cur{b_ptr + n * b_cs + k * b_rs}; }
  __device__ const T* b_at(const Cur& c) const { return c.p; }
  __device__ void b_next(Cur& c) const { c.p += b_rs; }
  __device__ void b_jump(Cur& c) const { c.p += b_jmp; }
  __device__ const T* a_run(int64_t, int64_t m) const { return a_vec ? a_ptr + m * a_rs : nullptr; }
  __device__ const T* b_run(int64_t, int64_t n) const { return b_vec ? b_ptr + n * b_cs : nullptr; }

  struct Out {
    int64_t i;  // m N
  };
  __device__ Out out_at(int64_t, int64_t m) const { return Out{m * N}; }
  __device__ void out_next(Out& o, int dm) const { o.i += dm * N; }
  __device__ void store(const Out& o, int64_t, int split, int64_t n, A v) const {
    if (splits > 1) {
      partial[split * M * N + o.i + n] = v;
      return;
    }
    if (bias) v += to_acc(bias[n]);
    out[o.i + n] = from_acc<T>(v);
  }
};

template <typename T>
int run(Strided<T> p, bool tf32, Stream stream) {
  p.a_vec = p.a_cs == 1 && gemm::aligned_rows(p.a_ptr, p.a_rs);
  p.b_vec = p.b_rs == 1 && gemm::aligned_rows(p.b_ptr, p.b_cs);
  int err = gemm::run(p, p.splits, tf32, stream);
  if (!err) err = gemm::finish_splits(p.partial, p.bias, p.out, p.M, p.N, p.splits, stream);
  return err;
}

template <typename A>
int64_t workspace_bytes(int64_t m, int64_t n, int64_t k) {
  return gemm::split_workspace_bytes<A>(m, n, k, 1);
}
int64_t workspace_bytes(DType dtype, int64_t m, int64_t n, int64_t k) {
  return dtype == DType::f64 ? workspace_bytes<double>(m, n, k) : workspace_bytes<float>(m, n, k);
}

}  // namespace

int64_t linear_forward_workspace_bytes(DType dtype, const LinearShape& s) {
  return workspace_bytes(dtype, s.rows, s.out, s.in);
}

int linear_forward(DType dtype, const void* x, const void* w, const void* bias, void* y, void* workspace,
                   const LinearShape& s, bool tf32, Stream stream) {
  const int64_t rows = s.rows, in = s.in, out = s.out;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    const Strided<T> p{static_cast<const T*>(x), in, 1, static_cast<const T*>(w), 1, in, static_cast<const T*>(bias),
                       static_cast<T*>(y), static_cast<acc_t<T>*>(workspace), rows, out, in, 1,
                       gemm::splits_for(rows, out, in, 1)};
    err = run(p, tf32, stream);
  });
  return err;
}

int64_t linear_grad_input_workspace_bytes(DType dtype, const LinearShape& s) {
  return workspace_bytes(dtype, s.rows, s.in, s.out);
}

int linear_grad_input(DType dtype, const void* dy, const void* w, void* dx, void* workspace, const LinearShape& s,
                      bool tf32, Stream stream) {
  const int64_t rows = s.rows, in = s.in, out = s.out;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    const Strided<T> p{static_cast<const T*>(dy), out, 1, static_cast<const T*>(w), in, 1, nullptr,
                       static_cast<T*>(dx), static_cast<acc_t<T>*>(workspace), rows, in, out, 1,
                       gemm::splits_for(rows, in, out, 1)};
    err = run(p, tf32, stream);
  });
  return err;
}

int64_t linear_grad_weight_workspace_bytes(DType dtype, const LinearShape& s) {
  return workspace_bytes(dtype, s.out, s.in, s.rows);
}

int linear_grad_weight(DType dtype, const void* dy, const void* x, void* dw, void* workspace, const LinearShape& s,
                       bool tf32, Stream stream) {
  const int64_t rows = s.rows, in = s.in, out = s.out;
  int err = 0;
  FC_DISPATCH(dtype, T, {
    const Strided<T> p{static_cast<const T*>(dy), 1, out, static_cast<const T*>(x), in, 1, nullptr,
                       static_cast<T*>(dw), static_cast<acc_t<T>*>(workspace), out, in, rows, 1,
                       gemm::splits_for(out, in, rows, 1)};
    err = run(p, tf32, stream);
  });
  return err;
}

}  // namespace fastconv::FC_NS::kernels
