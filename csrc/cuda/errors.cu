// errors.cu: the message of a launcher's error code (csrc/cuda/kernels.h): fastconv's own codes here,
// the launch's (CUDA's, or the simulator's) from launch_error_string (common.cuh).
#include "cuda/common.cuh"

namespace fastconv::FC_NS::kernels {

const char* error_string(int code) {
  if (code == kBadDType) return "fastconv: unsupported dtype for a CUDA kernel";
  if (code == kTooLarge) return "fastconv: a GEMM dimension is too large for one CUDA grid (more than 65535 x 64 columns)";
  return launch_error_string(code);
}

}  // namespace fastconv::FC_NS::kernels
