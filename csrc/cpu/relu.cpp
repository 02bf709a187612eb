// relu.cpp: y = max(x, 0) and its gradient dx = (y <= 0 ? 0 : dy), elementwise on the CPU.
// NaN propagates forward and backward exactly as in torch (comparisons with NaN are false). The loops are
// branch-free selects over contiguous memory, which the compiler turns into vector blends;
// at::parallel_for splits them into chunks of at least 32K elements. 1 FLOP, 8 (fwd) or 12 (bwd)
// bytes per float element: memory-bound.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstring>

#include "cpu/gemm.h"
#include "fastconv.h"
#include "sim/sim.h"

namespace fastconv::cpu {
namespace {

constexpr int64_t kGrain = 32768;

// dst[i] = f(src[i]..., 0) for i in [b, e): whole vectors of the inputs are loaded
// unconditionally and f selects lanes, so the loop is branch-free (a branch on the sign of random
// data mispredicts half the time); the tail runs the same f on scalars.
template <typename T, typename F, typename... Src>
inline void elementwise(int64_t b, int64_t e, F f, T* __restrict__ dst, const Src* __restrict__... src) {
  using V = typename Tile<T>::V;
  constexpr int W = Tile<T>::W;
  auto load = [](const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  };
  int64_t i = b;
  for (; i + W <= e; i += W) {
    const V out = f(load(src + i)..., V{});
    std::memcpy(dst + i, &out, sizeof(V));
  }
  for (; i < e; ++i) dst[i] = f(src[i]..., T(0));
}

at::Tensor relu_impl(const at::Tensor& input) {
  const at::Tensor x = input.contiguous();
  at::Tensor out = cpu::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_relu", [&] {
    const scalar_t* __restrict__ src = x.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
      elementwise<scalar_t>(b, e, [](auto v, auto zero) { return v < zero ? zero : v; }, dst, src);
    });
  });
  return out;
}

at::Tensor relu_backward_impl(const at::Tensor& grad_output, const at::Tensor& result) {
  const at::Tensor dy = grad_output.contiguous(), y = result.contiguous();
  at::Tensor dx = cpu::empty(dy.sizes(), dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_relu_backward", [&] {
    const scalar_t* __restrict__ g = dy.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ r = y.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ dst = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, dy.numel(), kGrain, [&](int64_t b, int64_t e) {
      elementwise<scalar_t>(b, e, [](auto y, auto grad, auto zero) { return y <= zero ? zero : grad; }, dst, r, g);
    });
  });
  return dx;
}

// LeakyReLU: y = (x > 0 ? x : x * slope), dx = (s > 0 ? dy : dy * slope) with s the input (or the result,
// which has the input's sign when slope > 0). NaN gives NaN (x * slope), -0.0 gives -0.0, as in torch.
at::Tensor leaky_relu_impl(const at::Tensor& input, double negative_slope) {
  const at::Tensor x = input.contiguous();
  at::Tensor out = cpu::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_leaky_relu", [&] {
    const scalar_t* __restrict__ src = x.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t slope = static_cast<scalar_t>(negative_slope);
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
      elementwise<scalar_t>(b, e, [slope](auto v, auto zero) { return v > zero ? v : v * slope; }, dst, src);
    });
  });
  return out;
}

at::Tensor leaky_relu_backward_impl(const at::Tensor& grad_output, const at::Tensor& self, double negative_slope) {
  const at::Tensor dy = grad_output.contiguous(), s = self.contiguous();
  at::Tensor dx = cpu::empty(dy.sizes(), dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_leaky_relu_backward", [&] {
    const scalar_t* __restrict__ g = dy.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ r = s.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ dst = dx.mutable_data_ptr<scalar_t>();
    const scalar_t slope = static_cast<scalar_t>(negative_slope);
    at::parallel_for(0, dy.numel(), kGrain, [&](int64_t b, int64_t e) {
      elementwise<scalar_t>(b, e, [slope](auto s, auto grad, auto zero) { return s > zero ? grad : grad * slope; },
                            dst, r, g);
    });
  });
  return dx;
}

at::Tensor leaky_relu_cpu(const at::Tensor& input, double negative_slope) {
  check_elementwise(input, "leaky_relu");
  return in_float32([&](const at::Tensor& x) { return leaky_relu_impl(x, negative_slope); }, input);
}

at::Tensor leaky_relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& self, double negative_slope) {
  check_elementwise_backward(grad_output, self, "leaky_relu_backward", "self");
  return in_float32([&](const at::Tensor& g, const at::Tensor& s) { return leaky_relu_backward_impl(g, s, negative_slope); },
                    grad_output, self);
}

at::Tensor relu_cpu(const at::Tensor& input) {
  check_elementwise(input, "relu");
  return in_float32(relu_impl, input);
}

at::Tensor relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& result) {
  check_elementwise_backward(grad_output, result, "relu_backward");
  return in_float32(relu_backward_impl, grad_output, result);
}

}  // namespace

// Under fastconv.simulate() these ops run their CUDA kernels in the simulator (csrc/sim/sim.h).
TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("relu", &sim::Routed<relu_cpu, sim::relu>::call);
  m.impl("relu_backward", &sim::Routed<relu_backward_cpu, sim::relu_backward>::call);
  m.impl("leaky_relu", &sim::Routed<leaky_relu_cpu, sim::leaky_relu>::call);
  m.impl("leaky_relu_backward", &sim::Routed<leaky_relu_backward_cpu, sim::leaky_relu_backward>::call);
}

}  // namespace fastconv::cpu
