// registration.cpp: the schema of every fastconv op, defined once. Backends register kernels for
// these names in their own TORCH_LIBRARY_IMPL blocks; autograd and fake (shape) kernels live in
// fastconv/ops.py.
//
// Conventions: padding of conv2d is (top, bottom, left, right); `reduction` of cross_entropy is
// 0 = none, 1 = mean, 2 = sum (torch's at::Reduction); dropout's `seed` is an int64 tensor of one
// element drawn from torch's generator, so the mask is a pure function of (seed, element index).
#include <Python.h>
#include <torch/library.h>

#include <atomic>

#include "fastconv.h"
#include "sim/sim.h"

namespace fastconv {
namespace {
std::atomic<bool> g_allow_tf32{false};
}
bool allow_tf32() { return g_allow_tf32.load(std::memory_order_relaxed); }
bool set_allow_tf32(bool enabled) { return g_allow_tf32.exchange(enabled); }
}  // namespace fastconv

TORCH_LIBRARY(fastconv, m) {
  // relu=True applies an activation in the epilogue: ReLU, or LeakyReLU where negative_slope > 0.
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
        "int[2] dilation, int groups, bool relu=False, float negative_slope=0.0) -> Tensor");
  // conv2d (with its activation) followed by max-pooling of its output by non-overlapping pool[0] x pool[1]
  // windows, in one op: returns the pooled output and the indices of the maxima in the conv output planes.
  m.def("conv2d_pool(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, "
        "int groups, bool relu, int[2] pool, float negative_slope=0.0) -> (Tensor, Tensor)");
  m.def("conv2d_grad_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, int[2] stride, "
        "int[4] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_grad_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, int[2] stride, "
        "int[4] padding, int[2] dilation, int groups) -> Tensor");
  m.def("bias_grad(Tensor grad_output, int channel_dim) -> Tensor");
  m.def("linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_grad_input(Tensor grad_output, Tensor weight) -> Tensor");
  m.def("linear_grad_weight(Tensor grad_output, Tensor input) -> Tensor");
  m.def("relu(Tensor input) -> Tensor");
  m.def("relu_backward(Tensor grad_output, Tensor result) -> Tensor");
  m.def("leaky_relu(Tensor input, float negative_slope) -> Tensor");
  // `self` is the forward's input, or its result when negative_slope > 0 (the same sign either way)
  m.def("leaky_relu_backward(Tensor grad_output, Tensor self, float negative_slope) -> Tensor");
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[4] input_size, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def("avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
        "bool count_include_pad, int divisor_override) -> Tensor");
  m.def("avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size, int[2] kernel_size, int[2] stride, "
        "int[2] padding, bool ceil_mode, bool count_include_pad, int divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size) -> Tensor");
  // (output, mean, invstd, var): the statistics used (the batch's when training, else the running ones);
  // var is the unbiased batch variance that the running statistics take when training
  m.def("batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
        "bool training, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor mean, Tensor invstd, "
        "bool training) -> (Tensor, Tensor, Tensor)");
  // running = (1 - momentum) * running + momentum * batch, in place
  m.def("batch_norm_update_stats(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, Tensor var, "
        "float momentum) -> ()");
  // (output, scale): scale = k + alpha * mean of the window's squares, kept for the backward
  m.def("local_response_norm(Tensor input, int size, float alpha, float beta, float k) -> (Tensor, Tensor)");
  m.def("local_response_norm_backward(Tensor grad_output, Tensor input, Tensor output, Tensor scale, int size, "
        "float alpha, float beta) -> Tensor");
  m.def("cross_entropy(Tensor input, Tensor target, Tensor? weight, int reduction, int ignore_index, "
        "float label_smoothing) -> (Tensor, Tensor)");
  m.def("cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, "
        "Tensor lse, int reduction, int ignore_index, float label_smoothing) -> Tensor");
  m.def("dropout(Tensor input, float p, Tensor seed) -> Tensor");
  // Raises the error a kernel found in the data on `device`'s device and recorded there (after
  // synchronising its current stream on a GPU), and clears it: fastconv.check_errors.
  m.def("_check_errors(Tensor device) -> ()");
  // The tf32 switch of the CUDA GEMM kernels (fastconv.backends.allow_tf32).
  m.def("_set_allow_tf32(bool enabled) -> bool", &fastconv::set_allow_tf32);
  m.def("_allow_tf32() -> bool", &fastconv::allow_tf32);
  // The cache of the CPU ops' output memory (csrc/cpu/alloc.cpp; fastconv.backends.cpu_cache).
  m.def("_cpu_cache_stats() -> int[]", &fastconv::cpu::cache_stats);
  m.def("_cpu_cache_empty() -> ()", &fastconv::cpu::cache_empty);
#if !defined(FASTCONV_NO_SIMULATOR)
  // The SIMT simulator (fastconv.simulate): its switch and options, and its self-test kernels; a build
  // without it (FASTCONV_SIM=0) has none of these ops.
  m.def("_sim_configure(bool enabled, int order, int seed, bool race_check, bool memcheck) -> ()",
        &fastconv::sim::configure);
  m.def("_sim_selftest(str name, int n) -> Tensor", &fastconv::sim::selftest);
  m.def("_sim_stats() -> int[]", &fastconv::sim::stats);
  m.def("_sim_defer_errors(bool enabled) -> bool", &fastconv::sim::set_defer_errors);
#endif
}

// The extension is a plain shared library whose static initialisers register the ops above;
// `import fastconv._C` only needs a module object to exist.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastconv's compiled kernels", -1, nullptr};
  return PyModule_Create(&module);
}
