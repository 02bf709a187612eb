// kernels.h: the launchers of fastconv's CUDA kernels, the one interface between the torch glue
// (csrc/cuda/glue.cpp) and the kernel files (csrc/cuda/*.cu). Plain C++ with raw pointers and sizes:
// no torch and no CUDA headers, so both sides include it anywhere.
//
// The launchers are declared in fastconv::FC_NS::kernels, where the includer defines FC_NS: `cuda` for
// the nvcc build, `sim` for the simulator build of the same sources, so both link into one library.
// Every launcher enqueues its kernels on `stream` (a cudaStream_t; ignored by the simulator), never
// synchronises, and returns 0 or the first CUDA error code. Pointers are device pointers of
// contiguous tensors; sizes are element counts (int64: a tensor may exceed 2^31 elements).
#pragma once

#include <cstdint>

#include "shapes.h"

namespace fastconv {

using Stream = void*;

// Launcher errors of fastconv's own, above CUDA's error codes.
constexpr int kBadDType = 100000;
// A GEMM whose N tiles (N / 64, rounded up) exceed the 65535 rows of a grid.
constexpr int kTooLarge = 100001;

// The op whose kernel found bad data (ErrorRecord::op).
enum class DataError : int32_t {
  none = 0,
  max_pool2d_backward_index = 1,     // an index outside its input plane
  cross_entropy_target = 2,          // a target outside [0, C) that is not ignore_index
  cross_entropy_backward_target = 3,
};

// Where kernels record an error they find in the data (an index outside its plane, a target outside
// [0, C)), so that no launcher needs a value back from the device: one record per device, in host
// memory that the device writes directly (pinned and mapped on a GPU, ordinary memory in the
// simulator), owned by the glue (csrc/cuda/glue.cpp), which builds the error's message from it alone,
// raises it and clears it. The first error wins: the thread whose atomicCAS turns `claimed` from 0 to 1
// writes the values, then publishes `op` last (after a system-wide fence), so a host that reads
// op != 0 reads complete values; every later error leaves the record as it is. Kernels also write NaN
// into the outputs the bad value affects, so nothing computed from it passes for a result.
struct ErrorRecord {
  int32_t claimed;       // 0 free, 1 taken by the thread that fills it
  int32_t op;            // a DataError, written last: none while the record is free or being filled
  int64_t value;         // the bad index or target
  int64_t where;         // its flat output position (max-pool) or its row (cross-entropy)
  int64_t extent;        // the input plane's size (max-pool) or the number of classes
  int64_t ignore_index;  // cross_entropy's, for the message
};

}  // namespace fastconv

#ifndef FC_NS
#error "define FC_NS (cuda or sim) before including cuda/kernels.h"
#endif

namespace fastconv::FC_NS::kernels {

// The message of an error code returned by a launcher.
const char* error_string(int code);

// y = max(x, 0); NaN propagates. n elements.
int relu_forward(DType dtype, const void* x, void* y, int64_t n, Stream stream);
// dx = (y <= 0 ? 0 : dy), with y the forward result.
int relu_backward(DType dtype, const void* dy, const void* y, void* dx, int64_t n, Stream stream);
// y = (x > 0 ? x : x * slope); NaN propagates. n elements.
int leaky_relu_forward(DType dtype, const void* x, void* y, int64_t n, double slope, Stream stream);
// dx = (s > 0 ? dy : dy * slope), with s the forward input (or its result, when slope > 0).
int leaky_relu_backward(DType dtype, const void* dy, const void* s, void* dx, int64_t n, double slope, Stream stream);

// y = keep(i) ? x * 1 / (1 - p) : 0, keep(i) = uniform24(philox4x32_10(i / 4, *seed)[i % 4]) >= p
// (csrc/philox.h): the CPU kernel's mask, bit for bit. `seed` points to one int64 in device memory.
int dropout_forward(DType dtype, const void* x, void* y, int64_t n, double p, const int64_t* seed, Stream stream);

// Max-pool forward: y and flat indices ih * w + iw per output (the first maximum, or the last NaN, as
// the CPU kernel).
// channels_last: x, y and the indices NHWC-contiguous (the indices still plane positions).
int max_pool2d_forward(DType dtype, const void* x, void* y, int64_t* indices, const PoolShape& g, bool channels_last,
                       Stream stream);
// Max-pool backward by gathering (deterministic, no atomics on floats): each input element sums, in
// output order, the gradients of the windows that cover it and chose it. Then an index outside its
// input plane is recorded in `*errors` (DataError::max_pool2d_backward_index: the index, its flat output
// position, the plane's size) and makes its plane of dx NaN.
int max_pool2d_backward(DType dtype, const void* dy, const int64_t* indices, void* dx, const PoolShape& g,
                        bool channels_last, ErrorRecord* errors, Stream stream);

// Average pooling (avg_pool2d and adaptive_avg_pool2d, windows from avg_pool_range in csrc/shapes.h):
// y = the window sums over their divisors.
// channels_last: x and y (dy and dx) NHWC-contiguous.
int avg_pool2d_forward(DType dtype, const void* x, void* y, const AvgPoolShape& g, bool channels_last, Stream stream);
// Its backward by gathering: each input element sums the gradients of the windows that cover it over
// their divisors, in output order (deterministic, no atomics).
int avg_pool2d_backward(DType dtype, const void* dy, void* dx, const AvgPoolShape& g, bool channels_last,
                        Stream stream);

// Batch normalization: the statistics (batch or running, csrc/shapes.h BatchNormShape) into mean,
// invstd and var (unbiased when training), then y. w, b, rm, rv may be null where absent.
int batch_norm_forward(DType dtype, const void* x, const void* w, const void* b, const void* rm, const void* rv,
                       void* y, void* mean, void* invstd, void* var, const BatchNormShape& g, Stream stream);
// Its backward: dweight, dbias (per-channel sums) and dx. w may be null.
int batch_norm_backward(DType dtype, const void* dy, const void* x, const void* w, const void* mean,
                        const void* invstd, void* dx, void* dw, void* db, const BatchNormShape& g, Stream stream);
// running = (1 - momentum) running + momentum batch, in place, for `channels` values.
int batch_norm_update_stats(DType dtype, void* rm, void* rv, const void* mean, const void* var, int64_t channels,
                            double momentum, Stream stream);

// Local response normalization across channels: y and scale (k + alpha * the window's mean square).
int lrn_forward(DType dtype, const void* x, void* y, void* scale, const LrnShape& g, Stream stream);
// Its backward from the forward's input, output and scale.
int lrn_backward(DType dtype, const void* dy, const void* x, const void* y, const void* scale, void* dx,
                 const LrnShape& g, Stream stream);

// Convolution as implicit GEMM (csrc/cuda/gemm.cuh): y = act(conv(x, w) + bias), `act` none, ReLU or
// LeakyReLU (shapes.h; the pre-activation is never written). bias may be null. Every GEMM launcher takes `tf32`: float32
// operands are then rounded to tf32 and multiplied on tensor cores (float16 / bfloat16 always are).
// `channels_last`: every tensor of the call (x, w, y; dy, w, dx; dy, x, dw) is NHWC-contiguous
// (torch.channels_last; a weight [c_out, kh, kw, c_in / groups]); else all are NCHW-contiguous.
int conv2d_forward(DType dtype, const void* x, const void* w, const void* bias, void* y, const ConvShape& s,
                   Activation act, bool channels_last, bool tf32, Stream stream);
// dx = the transposed convolution of dy with w.
int conv2d_grad_input(DType dtype, const void* dy, const void* w, void* dx, const ConvShape& s, bool channels_last,
                      bool tf32, Stream stream);
// dw = the correlation of dy with x, reduced over n * oh * ow in split-K blocks whose partials (in
// `workspace`, of conv2d_grad_weight_workspace_bytes) are summed in a fixed order.
int64_t conv2d_grad_weight_workspace_bytes(DType dtype, const ConvShape& s);
int conv2d_grad_weight(DType dtype, const void* dy, const void* x, void* dw, void* workspace, const ConvShape& s,
                       bool channels_last, bool tf32, Stream stream);
// db[c] = sum of dy[o][c][i] over o < outer, i < inner (a per-channel bias's gradient), in a fixed order.
int bias_grad(DType dtype, const void* dy, void* db, const BiasGradShape& s, Stream stream);

// Linear layers through the same engine: y [rows, out] = x [rows, in] w^T [in, out] + bias.
// Every linear GEMM whose output tiles under-fill a large GPU splits K (the forward's and grad input's
// too: a batch of 128 x 9216 -> 128 is 4 tiles); the partials go to `workspace` (of the matching
// *_workspace_bytes, 0 when one split does) and are summed in split order (deterministic).
int64_t linear_forward_workspace_bytes(DType dtype, const LinearShape& s);
int linear_forward(DType dtype, const void* x, const void* w, const void* bias, void* y, void* workspace,
                   const LinearShape& s, bool tf32, Stream stream);
int64_t linear_grad_input_workspace_bytes(DType dtype, const LinearShape& s);
int linear_grad_input(DType dtype, const void* dy, const void* w, void* dx, void* workspace, const LinearShape& s,
                      bool tf32, Stream stream);
int64_t linear_grad_weight_workspace_bytes(DType dtype, const LinearShape& s);
int linear_grad_weight(DType dtype, const void* dy, const void* x, void* dw, void* workspace, const LinearShape& s,
                       bool tf32, Stream stream);

// Bytes of device workspace that cross_entropy_forward / _backward need for a problem.
int64_t cross_entropy_workspace_bytes(const CrossEntropyArgs& a);
// Fused softmax + cross-entropy forward: lse [n] and loss ([n] for reduction none, else one value).
// A row whose target is neither ignore_index nor in [0, c) is recorded in `*errors`
// (DataError::cross_entropy_target: the target, its row, c, ignore_index); its lse and loss are NaN,
// and so is a reduced loss.
int cross_entropy_forward(DType dtype, const void* logits, const int64_t* target, const void* weight,
                          const CrossEntropyArgs& a, void* loss, void* lse, void* workspace, ErrorRecord* errors,
                          Stream stream);
// Backward: dlogits [n, c] from grad_loss ([n] or one value) and the saved lse. A bad target is recorded
// as in the forward (DataError::cross_entropy_backward_target); its row of dlogits is NaN.
int cross_entropy_backward(DType dtype, const void* grad_loss, const void* logits, const int64_t* target,
                           const void* weight, const void* lse, const CrossEntropyArgs& a, void* dlogits,
                           void* workspace, ErrorRecord* errors, Stream stream);

}  // namespace fastconv::FC_NS::kernels
