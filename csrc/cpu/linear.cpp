// linear.cpp: y = x W^T + b on the CPU, through the same packed GEMM as convolution (gemm.h).
//
//   forward      Y[r][o]  = sum_i X[r][i] W[o][i]   A = X (rows),   B = W^T (packed transposed)
//   grad input   dX[r][i] = sum_o dY[r][o] W[o][i]  A = dY,         B = W
//   grad weight  dW[o][i] = sum_r dY[r][o] X[r][i]  A = dY^T,       B = X
// x may have any number of leading dimensions; they are flattened into rows r. Work is split
// over (row block, column block) of the output; each output element is reduced by one thread in
// a fixed order, so results do not depend on the thread count. FLOPs: 2 * rows * in * out per
// GEMM; with MC x NC output blocks each packed operand element is reused MC or NC times.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/gemm.h"
#include "fastconv.h"

namespace fastconv::cpu {
namespace {

// C[M][N] = sum_k A[m][k] B[k][n] with A[m][k] = a[m * ars + k * acs], B[k][n] = b[k * brs + n * bcs].
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t ars, int64_t acs, const T* b, int64_t brs,
          int64_t bcs, T* c, const T* col_bias) {
  const int64_t MC = 8 * Tile<T>::MR, NC = 4 * Tile<T>::NR;
  const int64_t mblk = ceil_div(M, MC), nblk = ceil_div(N, NC);
  const int64_t n_kblocks = std::max<int64_t>(1, ceil_div(K, kKC));
  at::parallel_for(0, mblk * nblk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t m0 = (item / nblk) * MC, n0 = (item % nblk) * NC;
      const int64_t mlen = std::min(MC, M - m0), nlen = std::min(NC, N - n0);
      auto pack_a = [&](int64_t kb, T* dst) {
        const int64_t k0 = kb * kKC, kc = std::min(kKC, K - k0);
        pack_a_strided(a + m0 * ars + k0 * acs, mlen, kc, ars, acs, dst);
        return kc;
      };
      auto pack_b = [&](int64_t kb, int64_t kc, T* dst) {
        pack_b_strided(b + kb * kKC * brs + n0 * bcs, kc, nlen, brs, bcs, dst);
      };
      Epilogue<T> ep;
      ep.col_bias = col_bias;
      gemm_block<T>(mlen, nlen, n_kblocks, pack_a, pack_b, c + m0 * N + n0, N, false, ep, m0, n0);
    }
  });
}

void check_pair_args(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn, const char* op) {
  check_floating(a, op, an);
  check_same_dtype(a, an, b, bn, op);
  check_same_device(a, an, b, bn, op);
}

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const char* op = "linear";
  check_pair_args(input, "input", weight, "weight", op);
  check_dim(weight, 2, op, "weight", "out_features, in_features");
  TORCH_CHECK_VALUE(input.dim() >= 1, "fastconv.linear: input must have at least 1 dimension");
  const int64_t in = weight.size(1), out_f = weight.size(0);
  TORCH_CHECK_VALUE(input.size(-1) == in, "fastconv.linear: input has ", input.size(-1),
                    " features in its last dimension but weight expects ", in, " (weight shape ",
                    weight.sizes(), ")");
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = *bias;
    check_pair_args(input, "input", b, "bias", op);
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == out_f, "fastconv.linear: bias must have shape [", out_f,
                      "], got ", b.sizes());
    b = b.contiguous();
  }
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = out_f;
  at::Tensor out = at::empty(out_shape, input.options());
  if (out.numel() == 0) return out;
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const int64_t rows = out.numel() / out_f;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_linear", [&] {
    gemm<scalar_t>(rows, out_f, in, x.const_data_ptr<scalar_t>(), in, 1, w.const_data_ptr<scalar_t>(), 1, in,
                   out.mutable_data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr);
  });
  return out;
}

at::Tensor linear_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight) {
  const char* op = "linear_grad_input";
  check_pair_args(grad_output, "grad_output", weight, "weight", op);
  check_dim(weight, 2, op, "weight", "out_features, in_features");
  const int64_t in = weight.size(1), out_f = weight.size(0);
  TORCH_CHECK_VALUE(grad_output.dim() >= 1 && grad_output.size(-1) == out_f, "fastconv.", op,
                    ": grad_output must end in ", out_f, " features, got shape ", grad_output.sizes());
  std::vector<int64_t> shape(grad_output.sizes().begin(), grad_output.sizes().end());
  shape.back() = in;
  at::Tensor dx = at::empty(shape, grad_output.options());
  if (dx.numel() == 0) return dx;
  const at::Tensor dy = grad_output.contiguous(), w = weight.contiguous();
  const int64_t rows = dx.numel() / in;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_linear_grad_input", [&] {
    gemm<scalar_t>(rows, in, out_f, dy.const_data_ptr<scalar_t>(), out_f, 1, w.const_data_ptr<scalar_t>(), in, 1,
                   dx.mutable_data_ptr<scalar_t>(), nullptr);
  });
  return dx;
}

at::Tensor linear_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input) {
  const char* op = "linear_grad_weight";
  check_pair_args(grad_output, "grad_output", input, "input", op);
  TORCH_CHECK_VALUE(grad_output.dim() >= 1 && input.dim() == grad_output.dim() &&
                        input.sizes().slice(0, input.dim() - 1) ==
                            grad_output.sizes().slice(0, grad_output.dim() - 1),
                    "fastconv.", op, ": grad_output ", grad_output.sizes(), " and input ", input.sizes(),
                    " must agree in all but the last dimension");
  const int64_t in = input.size(-1), out_f = grad_output.size(-1);
  at::Tensor dw = at::empty({out_f, in}, grad_output.options());
  if (dw.numel() == 0) return dw;
  const int64_t rows = in > 0 ? input.numel() / in : 0;
  if (rows == 0) return dw.zero_();
  const at::Tensor dy = grad_output.contiguous(), x = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_linear_grad_weight", [&] {
    gemm<scalar_t>(out_f, in, rows, dy.const_data_ptr<scalar_t>(), 1, out_f, x.const_data_ptr<scalar_t>(), in, 1,
                   dw.mutable_data_ptr<scalar_t>(), nullptr);
  });
  return dw;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_grad_input", &linear_grad_input_cpu);
  m.impl("linear_grad_weight", &linear_grad_weight_cpu);
}

}  // namespace fastconv::cpu
