// max_pool2d.cpp: 2-D max pooling with indices, and its deterministic backward, on the CPU.
//
// Forward: one (n, c) plane per task, pooled by pool_plane (cpu/pool.h): the first maximum of each
// window, or the last NaN; indices are flat positions ih * W + iw in the input plane, torch's convention.
// Backward: dX = 0, then each output adds its gradient at its index. A plane is owned by one
// task and its outputs are visited in order, so overlapping windows sum in a fixed order: no
// atomics, bitwise-reproducible results. (The window arguments are not needed here; the CUDA
// backward, which gathers instead of scattering, uses them.)
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstring>

#include "cpu/pool.h"
#include "fastconv.h"
#include "sim/sim.h"

namespace fastconv::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> max_pool2d_impl(const PoolShape& s, const at::Tensor& input) {
  const int64_t N = s.n, C = s.c, H = s.h, W = s.w, OH = s.oh, OW = s.ow;
  const at::Tensor x = input.contiguous();
  at::Tensor y = cpu::empty({N, C, OH, OW}, x.options());
  at::Tensor idx = cpu::empty({N, C, OH, OW}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_max_pool2d", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    int64_t* ip = idx.mutable_data_ptr<int64_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / (OH * OW * s.kh * s.kw));
    at::parallel_for(0, N * C, grain, [&](int64_t b, int64_t e) {
      for (int64_t plane = b; plane < e; ++plane)
        pool_plane(xp + plane * H * W, H, W, OH, OW, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.dh, s.dw,
                   yp + plane * OH * OW, ip + plane * OH * OW);
    });
  });
  return {y, idx};
}

at::Tensor max_pool2d_backward_impl(const PoolShape& s, const at::Tensor& grad_output, const at::Tensor& indices) {
  const int64_t planes = s.n * s.c, HW = s.h * s.w, OHW = s.oh * s.ow;
  // Each plane is zeroed by the thread that then adds into it, while it is in cache: one pass over dx
  // instead of a fill followed by the scatter.
  at::Tensor dx = cpu::empty({s.n, s.c, s.h, s.w}, grad_output.options());
  const at::Tensor dy = grad_output.contiguous(), ix = indices.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_max_pool2d_backward", [&] {
    const scalar_t* g = dy.const_data_ptr<scalar_t>();
    const int64_t* id = ix.const_data_ptr<int64_t>();
    scalar_t* out = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, HW)), [&](int64_t b, int64_t e) {
      for (int64_t plane = b; plane < e; ++plane) {
        const scalar_t* gp = g + plane * OHW;
        const int64_t* ip = id + plane * OHW;
        scalar_t* op_ = out + plane * HW;
        std::memset(op_, 0, sizeof(scalar_t) * HW);
        for (int64_t o = 0; o < OHW; ++o) {
          const int64_t i = ip[o];
          if (i < 0 || i >= HW) max_pool2d_bad_index(i, HW);
          op_[i] += gp[o];
        }
      }
    });
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  const PoolShape s = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  return in_float32([&](const at::Tensor& input) { return max_pool2d_impl(s, input); }, input);
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  const PoolShape s =
      check_max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride, padding, dilation);
  return in_float32([&](const at::Tensor& grad_output) { return max_pool2d_backward_impl(s, grad_output, indices); },
                    grad_output);
}

}  // namespace

// Under fastconv.simulate() these ops run their CUDA kernels in the simulator (csrc/sim/sim.h).
TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("max_pool2d", &sim::Routed<max_pool2d_cpu, sim::max_pool2d>::call);
  m.impl("max_pool2d_backward", &sim::Routed<max_pool2d_backward_cpu, sim::max_pool2d_backward>::call);
}

}  // namespace fastconv::cpu
