// sim.h: fastconv's ops on the SIMT simulator, as the CPU backend sees them.
//
// The torch glue of the CUDA kernels (csrc/cuda/glue.cpp) is compiled a second time for the
// simulator (csrc/sim/glue.cpp), into the functions declared here: the same arguments as the ops,
// CPU tensors, and the CUDA kernels run on the CPU. Under fastconv.simulate() (active() is true) the
// CPU registration of every op routes to them. A build without the simulator (FASTCONV_NO_SIMULATOR)
// declares them but defines none of them.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fastconv::sim {

bool active();

// torch.ops.fastconv._sim_configure: turns routing on or off and sets the simulator's options
// (order: 0 forward, 1 reverse, 2 random).
void configure(bool enabled, int64_t order, int64_t seed, bool race_check, bool memcheck);
// torch.ops.fastconv._sim_stats: [launches, blocks, threads] simulated in this process.
std::vector<int64_t> stats();
// torch.ops.fastconv._sim_selftest: runs one of the simulator's self-test kernels (csrc/sim/selftest.cu)
// on n floats and returns them.
at::Tensor selftest(const std::string& name, int64_t n);

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool relu,
                  double negative_slope);
at::Tensor conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef input_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
at::Tensor conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef weight_size,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
at::Tensor bias_grad(const at::Tensor& grad_output, int64_t channel_dim);
at::Tensor linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias);
at::Tensor linear_grad_input(const at::Tensor& grad_output, const at::Tensor& weight);
at::Tensor linear_grad_weight(const at::Tensor& grad_output, const at::Tensor& input);
at::Tensor relu(const at::Tensor& input);
at::Tensor relu_backward(const at::Tensor& grad_output, const at::Tensor& result);
at::Tensor leaky_relu(const at::Tensor& input, double negative_slope);
at::Tensor leaky_relu_backward(const at::Tensor& grad_output, const at::Tensor& self, double negative_slope);
at::Tensor dropout(const at::Tensor& input, double p, const at::Tensor& seed);
at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad, int64_t divisor_override);
at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               int64_t divisor_override);
at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(const at::Tensor& grad_output,
                                                                   const at::Tensor& input,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const at::Tensor& mean, const at::Tensor& invstd,
                                                                   bool training);
void batch_norm_update_stats(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
                             const at::Tensor& var, double momentum);
std::tuple<at::Tensor, at::Tensor> local_response_norm(const at::Tensor& input, int64_t size, double alpha, double beta,
                                                       double k);
at::Tensor local_response_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& output, const at::Tensor& scale, int64_t size, double alpha,
                                        double beta);
at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, at::IntArrayRef input_size);
std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, bool ceil_mode);
at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices, at::IntArrayRef input_size,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation);
std::tuple<at::Tensor, at::Tensor> cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                                 const std::optional<at::Tensor>& weight, int64_t reduction,
                                                 int64_t ignore_index, double label_smoothing);
at::Tensor cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                                  const std::optional<at::Tensor>& weight, const at::Tensor& lse, int64_t reduction,
                                  int64_t ignore_index, double label_smoothing);

// Routed<cpu_kernel, sim_kernel>::call, registered as an op's CPU kernel: the simulated CUDA kernel
// under fastconv.simulate(), the CPU kernel otherwise. A build without the simulator (setup.py defines
// FASTCONV_NO_SIMULATOR for FASTCONV_SIM=0) calls the CPU kernel only: Sim is then only named as a
// template argument, which refers to no symbol, so the functions above need no definition.
template <auto Cpu, auto Sim>
struct Routed;
template <typename R, typename... A, R (*Cpu)(A...), R (*Sim)(A...)>
struct Routed<Cpu, Sim> {
#if defined(FASTCONV_NO_SIMULATOR)
  static R call(A... args) { return Cpu(args...); }
#else
  static R call(A... args) { return active() ? Sim(args...) : Cpu(args...); }
#endif
};

}  // namespace fastconv::sim
