// dropout.cpp: inverted dropout, y = x * keep / (1 - p), on the CPU.
//
// keep(i) = uniform24(philox(counter = i / 4, key = seed)[i % 4]) >= p: one Philox call gives the
// draws of 4 consecutive elements. The mask is a pure function of (seed, i), so it is never
// stored: the backward pass is this same op applied to the gradient with the same seed. The seed
// is drawn from torch's generator by the Python wrapper, so torch.manual_seed reproduces masks
// and successive calls differ.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fastconv.h"
#include "sim/sim.h"
#include "philox.h"

namespace fastconv::cpu {
namespace {

at::Tensor dropout_impl(const at::Tensor& input, double p, uint64_t key) {
  const at::Tensor x = input.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_dropout", [&] {
    using T = scalar_t;
    const T* __restrict__ src = x.const_data_ptr<T>();
    T* __restrict__ dst = out.mutable_data_ptr<T>();
    const float threshold = static_cast<float>(p);
    const T scale = p < 1.0 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    at::parallel_for(0, (n + 3) / 4, 4096, [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) {
        const Philox4 r = philox4x32_10(static_cast<uint64_t>(q), key);
        const int64_t i0 = q * 4, cnt = std::min<int64_t>(4, n - i0);
        for (int64_t j = 0; j < cnt; ++j)
          dst[i0 + j] = uniform24(r.v[j]) >= threshold ? src[i0 + j] * scale : T(0);
      }
    });
  });
  return out;
}

at::Tensor dropout_cpu(const at::Tensor& input, double p, const at::Tensor& seed) {
  check_dropout(input, p, seed);
  const uint64_t key = static_cast<uint64_t>(seed.contiguous().const_data_ptr<int64_t>()[0]);
  return in_float32([&](const at::Tensor& input) { return dropout_impl(input, p, key); }, input);
}

}  // namespace

// Under fastconv.simulate() these ops run their CUDA kernels in the simulator (csrc/sim/sim.h).
TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("dropout", &sim::Routed<dropout_cpu, sim::dropout>::call);
}

}  // namespace fastconv::cpu
