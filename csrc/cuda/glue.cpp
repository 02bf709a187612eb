// glue.cpp: torch tensors -> the raw-pointer launchers of csrc/cuda/kernels.h, written once and
// compiled twice:
//   - as it is, against a CUDA build of torch: fastconv::cuda::*, registered for CUDA tensors;
//   - with FASTCONV_SIM defined (csrc/sim/glue.cpp): fastconv::sim::*, the same ops on CPU tensors
//     with the kernels run by the SIMT simulator; the CPU registrations route to them under
//     fastconv.simulate() (csrc/sim/sim.h).
// Each op checks its arguments with the checks every backend shares (csrc/fastconv.h), so bad input
// gives the same exception on every device, makes its inputs contiguous, allocates its outputs and
// launches on the current stream. No op reads device memory on the host: errors a kernel finds in the
// data (an index outside its plane, a target outside [0, C)) go to the device's error record (see
// "Errors the kernels find in the data" below), which every op polls when it starts.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <atomic>
#include <limits>
#include <new>

#include "fastconv.h"

#if defined(FASTCONV_SIM)
#define FC_NS sim
#include "sim/runtime.h"
#include "sim/sim.h"
#else
#define FC_NS cuda
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime_api.h>

#include <array>
#include <mutex>
#endif

#include "cuda/kernels.h"

namespace fastconv::FC_NS {
namespace {

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: TORCH_CHECK_TYPE(false, "fastconv: no CUDA kernel for dtype ", t.scalar_type());
  }
}

void check_launch(int code, const char* op) {
  TORCH_CHECK(code == 0, "fastconv.", op, ": kernel launch failed: ", kernels::error_string(code));
}

// Launch limits: the kernels of batch_norm's statistics and of bias_grad run one block per channel, and a
// CUDA grid's x dimension holds at most 2^31 - 1 blocks (every other kernel of this glue outside the
// GEMMs has a grid-stride 1-D grid of at most 4096 blocks, or a single block).
void check_channel_blocks(int64_t channels, const char* op) {
  TORCH_CHECK_VALUE(channels <= std::numeric_limits<int32_t>::max(), "fastconv.", op, ": the CUDA kernels take at "
                    "most 2^31 - 1 channels (one block each), got ", channels);
}

#if defined(FASTCONV_SIM)
Stream stream_of(const at::Tensor&) { return nullptr; }
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
fcsim::Buffer buf(const at::Tensor& t, const char* name) {
  return fcsim::Buffer{t.defined() ? t.const_data_ptr() : nullptr, t.defined() ? t.nbytes() : 0, name};
}
// The buffers a launch may touch: the simulator's memory check reports any other global access.
#define FC_BUFFERS(...) const fcsim::BufferScope fc_buffers_{__VA_ARGS__}
#else
Stream stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }
using DeviceGuard = c10::cuda::CUDAGuard;
#define FC_BUFFERS(...) (void)0
#endif

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

// ------------------------------------------------------------ errors the kernels find in the data
//
// A kernel that finds bad data writes it into its device's ErrorRecord (csrc/cuda/kernels.h) and NaN
// into the outputs it affects; nothing waits for it. Every op first polls its device's record (one
// volatile read of host memory: no synchronisation, no device memory read) and raises a recorded error
// there, with the exception type and message of the CPU kernels, clearing the record; so does
// fastconv.check_errors (the _check_errors op) after synchronising the current stream. On a GPU a
// kernel's error is therefore raised by the first fastconv op that starts after the kernel has finished,
// or by check_errors. The simulator's launches are synchronous, so its ops also poll right after the
// launches that may record one and raise their own error, as the CPU kernels do, unless
// fastconv.simulate(defer_errors=True) asks for the GPU's behaviour.

// A device's record: where the host reads it and the address the kernels write it at.
struct RecordAddress {
  ErrorRecord* host;
  ErrorRecord* device;
};

#if defined(FASTCONV_SIM)
// The simulator's device is the CPU: one record in ordinary memory.
ErrorRecord g_sim_record{};
std::atomic<bool> g_defer_errors{false};

ErrorRecord* polled_record(const at::Tensor&) { return &g_sim_record; }
RecordAddress error_record(const at::Tensor&) { return {&g_sim_record, &g_sim_record}; }
// The record among the buffers a launch may touch (FC_BUFFERS).
#define FC_RECORD_BUFFER(r) fcsim::Buffer{(r).device, sizeof(ErrorRecord), "error record"}
#else
// One record per GPU, allocated by the first op on it that may record an error, and kept for the life of
// the process: pinned host memory, mapped into the device's address space (cudaHostAllocMapped; with
// unified addressing the two addresses are equal), portable to every context.
std::array<std::atomic<ErrorRecord*>, C10_COMPILE_TIME_MAX_GPUS> g_host_records{};
std::array<ErrorRecord*, C10_COMPILE_TIME_MAX_GPUS> g_device_records{};
std::mutex g_records_mutex;

// The record an op on `t`'s device polls: none where no op on it has allocated one (then none can be set).
ErrorRecord* polled_record(const at::Tensor& t) {
  if (!t.is_cuda()) return nullptr;
  return g_host_records[t.get_device()].load(std::memory_order_acquire);
}

// The record of `t`'s device, allocated on first use (under the op's device guard).
RecordAddress error_record(const at::Tensor& t) {
  const int index = t.get_device();
  if (ErrorRecord* host = g_host_records[index].load(std::memory_order_acquire))
    return {host, g_device_records[index]};
  const std::lock_guard<std::mutex> lock(g_records_mutex);
  ErrorRecord* host = g_host_records[index].load(std::memory_order_relaxed);
  if (host == nullptr) {
    void* p = nullptr;
    C10_CUDA_CHECK(cudaHostAlloc(&p, sizeof(ErrorRecord), cudaHostAllocMapped | cudaHostAllocPortable));
    host = new (p) ErrorRecord{};
    void* d = nullptr;
    C10_CUDA_CHECK(cudaHostGetDevicePointer(&d, p, 0));
    g_device_records[index] = static_cast<ErrorRecord*>(d);
    g_host_records[index].store(host, std::memory_order_release);
  }
  return {host, g_device_records[index]};
}
#endif

// Raises the error recorded in `*r`, if any, and clears the record. The kernels publish `op` last, so
// once it is seen the other fields are complete.
void raise_recorded(ErrorRecord* r) {
  if (r == nullptr) return;
  volatile ErrorRecord* v = r;
  const auto op = static_cast<DataError>(v->op);
  if (op == DataError::none) return;
  std::atomic_thread_fence(std::memory_order_acquire);
  const int64_t value = v->value, where = v->where, extent = v->extent, ignore_index = v->ignore_index;
  v->op = static_cast<int32_t>(DataError::none);
  std::atomic_thread_fence(std::memory_order_release);
  v->claimed = 0;  // free for the next error
  switch (op) {
    case DataError::max_pool2d_backward_index: max_pool2d_bad_index(value, extent);
    case DataError::cross_entropy_target:
      cross_entropy_bad_target("cross_entropy", value, where, extent, expected_targets(extent, ignore_index));
    case DataError::cross_entropy_backward_target:
      cross_entropy_bad_target("cross_entropy_backward", value, where, extent, "");
    case DataError::none: break;
  }
  TORCH_CHECK(false, "fastconv: the error record holds an unknown error code ", static_cast<int>(op));
}

// At the start of every op: the error a kernel recorded on the device of `t` (the op's device).
void raise_pending(const at::Tensor& t) { raise_recorded(polled_record(t)); }

// After the launches of an op that may record an error: in the simulator, whose launches have finished,
// the op's own error (unless deferred); on a GPU nothing, since the kernels may still be running.
void raise_if_synchronous(const RecordAddress& r) {
#if defined(FASTCONV_SIM)
  if (!g_defer_errors.load(std::memory_order_relaxed)) raise_recorded(r.host);
#else
  (void)r;
#endif
}

}  // namespace

#if defined(FASTCONV_SIM)
bool set_defer_errors(bool enabled) { return g_defer_errors.exchange(enabled); }
#endif

// _check_errors(Tensor device): raises the error a kernel recorded on the tensor's device; on a GPU after
// synchronising the device's current stream, so that every kernel enqueued on it has finished.
void check_errors(const at::Tensor& device) {
#if !defined(FASTCONV_SIM)
  c10::cuda::getCurrentCUDAStream(device.get_device()).synchronize();
#endif
  raise_pending(device);
}

namespace {
// Whether a convolution runs channels-last: its 4-d activation (input, or grad_output) is laid out
// NHWC. The kernels then read and write NHWC directly (the weight, small, is made NHWC if it is
// not), and the result is NHWC too, as torch's own convolution gives. The element-wise ops keep the
// layout of their main tensor the same way (their kernels run over memory in order), so a
// channels_last net stays NHWC through its activations without copies.
bool channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}
at::MemoryFormat format_of(bool nhwc) { return nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous; }
at::MemoryFormat format_of(const at::Tensor& t) { return format_of(channels_last(t)); }
}  // namespace

at::Tensor relu(const at::Tensor& input) {
  raise_pending(input);
  check_elementwise(input, "relu");
  const at::MemoryFormat f = format_of(input);
  const at::Tensor x = input.contiguous(f);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(f));
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(x, "input"), buf(y, "output"));
  check_launch(kernels::relu_forward(dtype_of(x), x.const_data_ptr(), y.mutable_data_ptr(), x.numel(), stream_of(x)),
               "relu");
  return y;
}

at::Tensor relu_backward(const at::Tensor& grad_output, const at::Tensor& result) {
  raise_pending(grad_output);
  check_elementwise_backward(grad_output, result, "relu_backward");
  const at::MemoryFormat f = format_of(grad_output);
  const at::Tensor dy = grad_output.contiguous(f), y = result.contiguous(f);
  at::Tensor dx = at::empty(dy.sizes(), dy.options().memory_format(f));
  DeviceGuard guard(dy.device());
  FC_BUFFERS(buf(dy, "grad_output"), buf(y, "result"), buf(dx, "grad_input"));
  check_launch(kernels::relu_backward(dtype_of(dy), dy.const_data_ptr(), y.const_data_ptr(), dx.mutable_data_ptr(),
                                      dy.numel(), stream_of(dy)),
               "relu_backward");
  return dx;
}

at::Tensor leaky_relu(const at::Tensor& input, double negative_slope) {
  raise_pending(input);
  check_elementwise(input, "leaky_relu");
  const at::MemoryFormat f = format_of(input);
  const at::Tensor x = input.contiguous(f);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(f));
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(x, "input"), buf(y, "output"));
  check_launch(kernels::leaky_relu_forward(dtype_of(x), x.const_data_ptr(), y.mutable_data_ptr(), x.numel(),
                                           negative_slope, stream_of(x)),
               "leaky_relu");
  return y;
}

at::Tensor leaky_relu_backward(const at::Tensor& grad_output, const at::Tensor& self, double negative_slope) {
  raise_pending(grad_output);
  check_elementwise_backward(grad_output, self, "leaky_relu_backward", "self");
  const at::MemoryFormat f = format_of(grad_output);
  const at::Tensor dy = grad_output.contiguous(f), s = self.contiguous(f);
  at::Tensor dx = at::empty(dy.sizes(), dy.options().memory_format(f));
  DeviceGuard guard(dy.device());
  FC_BUFFERS(buf(dy, "grad_output"), buf(s, "self"), buf(dx, "grad_input"));
  check_launch(kernels::leaky_relu_backward(dtype_of(dy), dy.const_data_ptr(), s.const_data_ptr(), dx.mutable_data_ptr(),
                                            dy.numel(), negative_slope, stream_of(dy)),
               "leaky_relu_backward");
  return dx;
}

namespace {
at::Tensor avg_pool_forward(const AvgPoolShape& s, const at::Tensor& input, const char* op) {
  const bool nhwc = channels_last(input);
  const at::MemoryFormat f = format_of(nhwc);
  const at::Tensor x = input.contiguous(f);
  at::Tensor y = at::empty({s.n, s.c, s.oh, s.ow}, x.options().memory_format(f));
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(x, "input"), buf(y, "output"));
  check_launch(
      kernels::avg_pool2d_forward(dtype_of(x), x.const_data_ptr(), y.mutable_data_ptr(), s, nhwc, stream_of(x)), op);
  return y;
}

at::Tensor avg_pool_backward(const AvgPoolShape& s, const at::Tensor& grad_output, const char* op) {
  const bool nhwc = channels_last(grad_output);
  const at::MemoryFormat f = format_of(nhwc);
  const at::Tensor dy = grad_output.contiguous(f);
  at::Tensor dx = at::empty({s.n, s.c, s.h, s.w}, dy.options().memory_format(f));
  DeviceGuard guard(dy.device());
  FC_BUFFERS(buf(dy, "grad_output"), buf(dx, "grad_input"));
  check_launch(
      kernels::avg_pool2d_backward(dtype_of(dy), dy.const_data_ptr(), dx.mutable_data_ptr(), s, nhwc, stream_of(dy)),
      op);
  return dx;
}
}  // namespace

at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad, int64_t divisor_override) {
  raise_pending(input);
  return avg_pool_forward(
      check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override), input,
      "avg_pool2d");
}

at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               int64_t divisor_override) {
  raise_pending(grad_output);
  return avg_pool_backward(check_avg_pool2d(grad_output, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                            divisor_override, "avg_pool2d_backward", input_size),
                           grad_output, "avg_pool2d_backward");
}

at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
  raise_pending(input);
  return avg_pool_forward(check_adaptive_avg_pool2d(input, output_size), input, "adaptive_avg_pool2d");
}

at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  raise_pending(grad_output);
  return avg_pool_backward(check_adaptive_avg_pool2d(grad_output, {}, "adaptive_avg_pool2d_backward", input_size),
                           grad_output, "adaptive_avg_pool2d_backward");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double eps) {
  raise_pending(input);
  const BatchNormShape s = check_batch_norm(input, weight, bias, running_mean, running_var, training, eps);
  const at::Tensor x = input.contiguous(), w = contiguous_or_none(weight), b = contiguous_or_none(bias),
                   rm = contiguous_or_none(running_mean), rv = contiguous_or_none(running_var);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor mean = at::empty({s.c}, x.options()), invstd = at::empty({s.c}, x.options()),
             var = at::empty({s.c}, x.options());
  if (s.training && s.count() == 0) {  // no values: statistics undefined, nothing to normalise
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    invstd.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {y, mean, invstd, var};
  }
  check_channel_blocks(s.c, "batch_norm");
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(x, "input"), buf(w, "weight"), buf(b, "bias"), buf(rm, "running_mean"), buf(rv, "running_var"),
             buf(y, "output"), buf(mean, "mean"), buf(invstd, "invstd"), buf(var, "var"));
  check_launch(kernels::batch_norm_forward(dtype_of(x), x.const_data_ptr(), ptr_or_null(w), ptr_or_null(b),
                                           ptr_or_null(rm), ptr_or_null(rv), y.mutable_data_ptr(),
                                           mean.mutable_data_ptr(), invstd.mutable_data_ptr(), var.mutable_data_ptr(),
                                           s, stream_of(x)),
               "batch_norm");
  return {y, mean, invstd, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(const at::Tensor& grad_output,
                                                                   const at::Tensor& input,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const at::Tensor& mean, const at::Tensor& invstd,
                                                                   bool training) {
  raise_pending(input);
  const BatchNormShape s = check_batch_norm_backward(grad_output, input, weight, mean, invstd, training);
  const at::Tensor dy = grad_output.contiguous(), x = input.contiguous(), w = contiguous_or_none(weight),
                   mu = mean.contiguous(), is = invstd.contiguous();
  check_channel_blocks(s.c, "batch_norm_backward");
  at::Tensor dx = at::empty(x.sizes(), x.options());
  // The kernels write every channel's sums; with no values they do not run, and the sums are zero.
  const auto sums = [&] { return x.numel() == 0 ? at::zeros({s.c}, x.options()) : at::empty({s.c}, x.options()); };
  at::Tensor dw = sums(), db = sums();
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(dy, "grad_output"), buf(x, "input"), buf(w, "weight"), buf(mu, "mean"), buf(is, "invstd"),
             buf(dx, "grad_input"), buf(dw, "grad_weight"), buf(db, "grad_bias"));
  check_launch(kernels::batch_norm_backward(dtype_of(x), dy.const_data_ptr(), x.const_data_ptr(), ptr_or_null(w),
                                            mu.const_data_ptr(), is.const_data_ptr(), dx.mutable_data_ptr(),
                                            dw.mutable_data_ptr(), db.mutable_data_ptr(), s, stream_of(x)),
               "batch_norm_backward");
  return {dx, dw, db};
}

void batch_norm_update_stats(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
                             const at::Tensor& var, double momentum) {
  raise_pending(running_mean);
  const int64_t C = check_batch_norm_update_stats(running_mean, running_var, mean, var, momentum);
  const at::Tensor m = mean.contiguous(), v = var.contiguous();
  DeviceGuard guard(running_mean.device());
  FC_BUFFERS(buf(running_mean, "running_mean"), buf(running_var, "running_var"), buf(m, "mean"), buf(v, "var"));
  check_launch(kernels::batch_norm_update_stats(dtype_of(m), running_mean.mutable_data_ptr(),
                                                running_var.mutable_data_ptr(), m.const_data_ptr(), v.const_data_ptr(),
                                                C, momentum, stream_of(m)),
               "batch_norm_update_stats");
}

std::tuple<at::Tensor, at::Tensor> local_response_norm(const at::Tensor& input, int64_t size, double alpha,
                                                       double beta, double k) {
  raise_pending(input);
  const LrnShape s = check_local_response_norm(input, size, alpha, beta, k);
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options()), scale = at::empty(x.sizes(), x.options());
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(x, "input"), buf(y, "output"), buf(scale, "scale"));
  check_launch(kernels::lrn_forward(dtype_of(x), x.const_data_ptr(), y.mutable_data_ptr(), scale.mutable_data_ptr(), s,
                                    stream_of(x)),
               "local_response_norm");
  return {y, scale};
}

at::Tensor local_response_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& output, const at::Tensor& scale, int64_t size, double alpha,
                                        double beta) {
  raise_pending(input);
  const LrnShape s = check_local_response_norm_backward(grad_output, input, output, scale, size, alpha, beta);
  const at::Tensor dy = grad_output.contiguous(), x = input.contiguous(), y = output.contiguous(),
                   sc = scale.contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options());
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(dy, "grad_output"), buf(x, "input"), buf(y, "output"), buf(sc, "scale"), buf(dx, "grad_input"));
  check_launch(kernels::lrn_backward(dtype_of(x), dy.const_data_ptr(), x.const_data_ptr(), y.const_data_ptr(),
                                     sc.const_data_ptr(), dx.mutable_data_ptr(), s, stream_of(x)),
               "local_response_norm_backward");
  return dx;
}

at::Tensor dropout(const at::Tensor& input, double p, const at::Tensor& seed) {
  raise_pending(input);
  check_dropout(input, p, seed);
  const at::Tensor x = input.contiguous(), s = seed.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(x, "input"), buf(s, "seed"), buf(y, "output"));
  check_launch(kernels::dropout_forward(dtype_of(x), x.const_data_ptr(), y.mutable_data_ptr(), x.numel(), p,
                                        s.const_data_ptr<int64_t>(), stream_of(x)),
               "dropout");
  return y;
}

namespace {
// The GEMM kernels decompose their indices in 32 bits.
void check_gemm_size(int64_t m, int64_t n, int64_t k, const char* op) {
  constexpr int64_t kLimit = int64_t(1) << 31;
  TORCH_CHECK_VALUE(m < kLimit && n < kLimit && k < kLimit, "fastconv.", op, ": the CUDA kernels index GEMMs of up to "
                    "2^31 - 1 rows, columns and reduction terms; this one is ", m, " x ", n, " x ", k);
}

at::Tensor workspace(int64_t bytes, const at::Tensor& like) {
  return at::empty({bytes}, like.options().dtype(at::kByte));
}

}  // namespace

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool relu,
                  double negative_slope) {
  raise_pending(input);
  const char* op = "conv2d";
  const ConvShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const Activation act = check_activation(relu, negative_slope, op);
  const bool nhwc = channels_last(input);
  const at::MemoryFormat format = format_of(nhwc);
  at::Tensor y = at::empty({s.n, s.c_out, s.oh, s.ow}, input.options().memory_format(format));
  if (y.numel() == 0) return y;
  check_gemm_size(s.n * s.oh * s.ow, s.cout_g(), s.k_gemm(), op);
  const at::Tensor x = input.contiguous(format), w = weight.contiguous(format), b = contiguous_or_none(bias);
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(x, "input"), buf(w, "weight"), buf(b, "bias"), buf(y, "output"));
  check_launch(kernels::conv2d_forward(dtype_of(x), x.const_data_ptr(), w.const_data_ptr(), ptr_or_null(b),
                                       y.mutable_data_ptr(), s, act, nhwc, allow_tf32(), stream_of(x)),
               op);
  return y;
}

at::Tensor conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef input_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups) {
  raise_pending(grad_output);
  const char* op = "conv2d_grad_input";
  const ConvShape s = check_conv2d_backward(op, grad_output, weight, "weight", input_size,
                                            weight.sizes(), stride, padding, dilation, groups);
  const bool nhwc = channels_last(grad_output) && input_size.size() == 4;
  const at::MemoryFormat format = format_of(nhwc);
  at::Tensor dx = at::empty(input_size, grad_output.options().memory_format(format));
  if (dx.numel() == 0) return dx;
  check_gemm_size(s.n * s.h * s.w, s.cin_g(), s.cout_g() * s.kh * s.kw, op);
  const at::Tensor dy = grad_output.contiguous(format), w = weight.contiguous(format);
  DeviceGuard guard(dy.device());
  FC_BUFFERS(buf(dy, "grad_output"), buf(w, "weight"), buf(dx, "grad_input"));
  check_launch(kernels::conv2d_grad_input(dtype_of(dy), dy.const_data_ptr(), w.const_data_ptr(), dx.mutable_data_ptr(),
                                          s, nhwc, allow_tf32(), stream_of(dy)),
               op);
  return dx;
}

at::Tensor conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef weight_size,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              int64_t groups) {
  raise_pending(grad_output);
  const char* op = "conv2d_grad_weight";
  const ConvShape s = check_conv2d_backward(op, grad_output, input, "input", input.sizes(),
                                            weight_size, stride, padding, dilation, groups);
  // channels-last when either activation is (both are then read NHWC); dw comes out NHWC too
  const bool nhwc = (channels_last(grad_output) || channels_last(input)) && grad_output.dim() == 4 &&
                    input.dim() == 4;
  const at::MemoryFormat format = format_of(nhwc);
  at::Tensor dw = at::empty(weight_size, grad_output.options().memory_format(format));
  if (dw.numel() == 0) return dw;
  check_gemm_size(s.cout_g(), s.k_gemm(), s.n * s.oh * s.ow, op);
  const at::Tensor dy = grad_output.contiguous(format), x = input.contiguous(format);
  at::Tensor ws = workspace(kernels::conv2d_grad_weight_workspace_bytes(dtype_of(dy), s), dy);
  DeviceGuard guard(dy.device());
  FC_BUFFERS(buf(dy, "grad_output"), buf(x, "input"), buf(dw, "grad_weight"), buf(ws, "workspace"));
  check_launch(kernels::conv2d_grad_weight(dtype_of(dy), dy.const_data_ptr(), x.const_data_ptr(), dw.mutable_data_ptr(),
                                           ws.mutable_data_ptr(), s, nhwc, allow_tf32(), stream_of(dy)),
               op);
  return dw;
}

at::Tensor bias_grad(const at::Tensor& grad_output, int64_t channel_dim) {
  raise_pending(grad_output);
  const BiasGradShape s = check_bias_grad(grad_output, channel_dim);
  check_channel_blocks(s.channels, "bias_grad");
  const at::Tensor dy = grad_output.contiguous();
  at::Tensor db = at::empty({s.channels}, dy.options());
  DeviceGuard guard(dy.device());
  FC_BUFFERS(buf(dy, "grad_output"), buf(db, "grad_bias"));
  check_launch(kernels::bias_grad(dtype_of(dy), dy.const_data_ptr(), db.mutable_data_ptr(), s, stream_of(dy)),
               "bias_grad");
  return db;
}

at::Tensor linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  raise_pending(input);
  const LinearShape s = check_linear(input, weight, bias);
  at::Tensor y = at::empty(with_last(input.sizes(), s.out), input.options());
  if (y.numel() == 0) return y;
  check_gemm_size(s.rows, s.out, s.in, "linear");
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), b = contiguous_or_none(bias);
  at::Tensor ws = workspace(kernels::linear_forward_workspace_bytes(dtype_of(x), s), x);
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(x, "input"), buf(w, "weight"), buf(b, "bias"), buf(y, "output"), buf(ws, "workspace"));
  check_launch(kernels::linear_forward(dtype_of(x), x.const_data_ptr(), w.const_data_ptr(), ptr_or_null(b),
                                       y.mutable_data_ptr(), ws.mutable_data_ptr(), s, allow_tf32(), stream_of(x)),
               "linear");
  return y;
}

at::Tensor linear_grad_input(const at::Tensor& grad_output, const at::Tensor& weight) {
  raise_pending(grad_output);
  const LinearShape s = check_linear_grad_input(grad_output, weight);
  at::Tensor dx = at::empty(with_last(grad_output.sizes(), s.in), grad_output.options());
  if (dx.numel() == 0) return dx;
  check_gemm_size(s.rows, s.in, s.out, "linear_grad_input");
  const at::Tensor dy = grad_output.contiguous(), w = weight.contiguous();
  at::Tensor ws = workspace(kernels::linear_grad_input_workspace_bytes(dtype_of(dy), s), dy);
  DeviceGuard guard(dy.device());
  FC_BUFFERS(buf(dy, "grad_output"), buf(w, "weight"), buf(dx, "grad_input"), buf(ws, "workspace"));
  check_launch(kernels::linear_grad_input(dtype_of(dy), dy.const_data_ptr(), w.const_data_ptr(), dx.mutable_data_ptr(),
                                          ws.mutable_data_ptr(), s, allow_tf32(), stream_of(dy)),
               "linear_grad_input");
  return dx;
}

at::Tensor linear_grad_weight(const at::Tensor& grad_output, const at::Tensor& input) {
  raise_pending(grad_output);
  const LinearShape s = check_linear_grad_weight(grad_output, input);
  at::Tensor dw = at::empty({s.out, s.in}, grad_output.options());
  if (dw.numel() == 0) return dw;
  check_gemm_size(s.out, s.in, s.rows, "linear_grad_weight");
  const at::Tensor dy = grad_output.contiguous(), x = input.contiguous();
  at::Tensor ws = workspace(kernels::linear_grad_weight_workspace_bytes(dtype_of(dy), s), dy);
  DeviceGuard guard(dy.device());
  FC_BUFFERS(buf(dy, "grad_output"), buf(x, "input"), buf(dw, "grad_weight"), buf(ws, "workspace"));
  check_launch(kernels::linear_grad_weight(dtype_of(dy), dy.const_data_ptr(), x.const_data_ptr(), dw.mutable_data_ptr(),
                                           ws.mutable_data_ptr(), s, allow_tf32(), stream_of(dy)),
               "linear_grad_weight");
  return dw;
}

std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, bool ceil_mode) {
  raise_pending(input);
  const PoolShape s = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  const bool nhwc = channels_last(input);
  const at::MemoryFormat f = format_of(nhwc);
  const at::Tensor x = input.contiguous(f);
  at::Tensor y = at::empty({s.n, s.c, s.oh, s.ow}, x.options().memory_format(f));
  at::Tensor idx = at::empty({s.n, s.c, s.oh, s.ow}, x.options().dtype(at::kLong).memory_format(f));
  DeviceGuard guard(x.device());
  FC_BUFFERS(buf(x, "input"), buf(y, "output"), buf(idx, "indices"));
  check_launch(kernels::max_pool2d_forward(dtype_of(x), x.const_data_ptr(), y.mutable_data_ptr(),
                                           idx.mutable_data_ptr<int64_t>(), s, nhwc, stream_of(x)),
               "max_pool2d");
  return {y, idx};
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices, at::IntArrayRef input_size,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation) {
  raise_pending(grad_output);
  const PoolShape s =
      check_max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride, padding, dilation);
  const bool nhwc = channels_last(grad_output) && input_size.size() == 4;
  const at::MemoryFormat f = format_of(nhwc);
  const at::Tensor dy = grad_output.contiguous(f), ix = indices.contiguous(f);
  at::Tensor dx = at::empty(input_size, dy.options().memory_format(f));
  DeviceGuard guard(dy.device());
  const RecordAddress errors = error_record(dy);
  {
    FC_BUFFERS(buf(dy, "grad_output"), buf(ix, "indices"), buf(dx, "grad_input"), FC_RECORD_BUFFER(errors));
    check_launch(kernels::max_pool2d_backward(dtype_of(dy), dy.const_data_ptr(), ix.const_data_ptr<int64_t>(),
                                              dx.mutable_data_ptr(), s, nhwc, errors.device, stream_of(dy)),
                 "max_pool2d_backward");
  }
  raise_if_synchronous(errors);
  return dx;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                                 const std::optional<at::Tensor>& weight, int64_t reduction,
                                                 int64_t ignore_index, double label_smoothing) {
  raise_pending(input);
  const char* op = "cross_entropy";
  const CrossEntropyArgs a = check_cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing);
  const at::Tensor z = input.contiguous(), t = target.contiguous(), w = contiguous_or_none(weight);
  at::Tensor lse = at::empty({a.n}, z.options());
  at::Tensor loss = a.reduction == Reduction::none ? at::empty({a.n}, z.options()) : at::empty({}, z.options());
  at::Tensor ws = workspace(kernels::cross_entropy_workspace_bytes(a), z);
  DeviceGuard guard(z.device());
  const RecordAddress errors = error_record(z);
  {
    FC_BUFFERS(buf(z, "input"), buf(t, "target"), buf(w, "weight"), buf(lse, "lse"), buf(loss, "loss"),
               buf(ws, "workspace"), FC_RECORD_BUFFER(errors));
    check_launch(kernels::cross_entropy_forward(dtype_of(z), z.const_data_ptr(), t.const_data_ptr<int64_t>(),
                                                ptr_or_null(w), a, loss.mutable_data_ptr(), lse.mutable_data_ptr(),
                                                ws.mutable_data_ptr(), errors.device, stream_of(z)),
                 op);
  }
  raise_if_synchronous(errors);
  return {loss, lse};
}

at::Tensor cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                                  const std::optional<at::Tensor>& weight, const at::Tensor& lse, int64_t reduction,
                                  int64_t ignore_index, double label_smoothing) {
  raise_pending(input);
  const char* op = "cross_entropy_backward";
  const CrossEntropyArgs a = check_cross_entropy_backward(grad_loss, input, target, weight, lse, reduction,
                                                          ignore_index, label_smoothing);
  const at::Tensor z = input.contiguous(), t = target.contiguous(), w = contiguous_or_none(weight);
  const at::Tensor g = grad_loss.contiguous(), l = lse.contiguous();
  at::Tensor dz = at::empty({a.n, a.c}, z.options());
  at::Tensor ws = workspace(kernels::cross_entropy_workspace_bytes(a), z);
  DeviceGuard guard(z.device());
  const RecordAddress errors = error_record(z);
  {
    FC_BUFFERS(buf(g, "grad_loss"), buf(z, "input"), buf(t, "target"), buf(w, "weight"), buf(l, "lse"),
               buf(dz, "grad_input"), buf(ws, "workspace"), FC_RECORD_BUFFER(errors));
    check_launch(kernels::cross_entropy_backward(dtype_of(z), g.const_data_ptr(), z.const_data_ptr(),
                                                 t.const_data_ptr<int64_t>(), ptr_or_null(w), l.const_data_ptr(), a,
                                                 dz.mutable_data_ptr(), ws.mutable_data_ptr(), errors.device,
                                                 stream_of(z)),
                 op);
  }
  raise_if_synchronous(errors);
  return dz;
}

}  // namespace fastconv::FC_NS

#if defined(FASTCONV_SIM)
TORCH_LIBRARY_IMPL(fastconv, CPU, m) { m.impl("_check_errors", &fastconv::sim::check_errors); }
#else
TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("_check_errors", &fastconv::cuda::check_errors);
  m.impl("conv2d", &fastconv::cuda::conv2d);
  m.impl("conv2d_grad_input", &fastconv::cuda::conv2d_grad_input);
  m.impl("conv2d_grad_weight", &fastconv::cuda::conv2d_grad_weight);
  m.impl("bias_grad", &fastconv::cuda::bias_grad);
  m.impl("linear", &fastconv::cuda::linear);
  m.impl("linear_grad_input", &fastconv::cuda::linear_grad_input);
  m.impl("linear_grad_weight", &fastconv::cuda::linear_grad_weight);
  m.impl("relu", &fastconv::cuda::relu);
  m.impl("relu_backward", &fastconv::cuda::relu_backward);
  m.impl("leaky_relu", &fastconv::cuda::leaky_relu);
  m.impl("leaky_relu_backward", &fastconv::cuda::leaky_relu_backward);
  m.impl("batch_norm", &fastconv::cuda::batch_norm);
  m.impl("batch_norm_backward", &fastconv::cuda::batch_norm_backward);
  m.impl("batch_norm_update_stats", &fastconv::cuda::batch_norm_update_stats);
  m.impl("local_response_norm", &fastconv::cuda::local_response_norm);
  m.impl("local_response_norm_backward", &fastconv::cuda::local_response_norm_backward);
  m.impl("avg_pool2d", &fastconv::cuda::avg_pool2d);
  m.impl("avg_pool2d_backward", &fastconv::cuda::avg_pool2d_backward);
  m.impl("adaptive_avg_pool2d", &fastconv::cuda::adaptive_avg_pool2d);
  m.impl("adaptive_avg_pool2d_backward", &fastconv::cuda::adaptive_avg_pool2d_backward);
  m.impl("dropout", &fastconv::cuda::dropout);
  m.impl("max_pool2d", &fastconv::cuda::max_pool2d);
  m.impl("max_pool2d_backward", &fastconv::cuda::max_pool2d_backward);
  m.impl("cross_entropy", &fastconv::cuda::cross_entropy);
  m.impl("cross_entropy_backward", &fastconv::cuda::cross_entropy_backward);
}
#endif
