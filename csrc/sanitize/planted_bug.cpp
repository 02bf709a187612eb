// planted_bug.cpp: a DELIBERATELY WRONG kernel, compiled only into sanitized builds
// (FASTCONV_SANITIZE=1, see scripts/sanitize.sh) and never into the normal extension.
//
// It is the positive control of the sanitizer step: scripts/sanitize.sh calls
// torch.ops.fastconv._planted_oob_write in a subprocess and requires AddressSanitizer to report a
// heap-buffer-overflow in this file. If that report is missing, the sanitizer is silently off
// (flags lost, runtime not loaded, symbolizer missing) and a clean run of the test subset proves
// nothing.
//
// The op shifts the flattened input right by one: out[0] = 0, out[i] = x[i - 1]. The bug is the
// classic one of shift/stencil kernels: the loop runs over the *input* elements and writes
// out[i + 1] for every i in [0, n), so the last input element is stored to out[n], one element
// past the end of the output allocation. (The correct loop stops at n - 1.)
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fastconv.h"

namespace fastconv::sanitize {
namespace {

template <typename T>
void planted_oob_write_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t n) {
  if (n > 0) dst[0] = T(0);
  // one task per chunk of input elements; each writes the output element after its own
  at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      dst[i + 1] = src[i];  // DELIBERATELY WRONG: i = n - 1 writes dst[n], one past the end
  });
}

at::Tensor planted_oob_write_cpu(const at::Tensor& input) {
  check_floating(input, "_planted_oob_write", "x");
  const at::Tensor x = input.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_planted_oob_write", [&] {
    planted_oob_write_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                       x.numel());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastconv, m) {
  m.def("_planted_oob_write(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("_planted_oob_write", &planted_oob_write_cpu);
}

}  // namespace fastconv::sanitize
