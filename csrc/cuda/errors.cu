// errors.cu: the message of a launcher's error code (csrc/cuda/kernels.h).
#include "cuda/common.cuh"

namespace fastconv::FC_NS::kernels {

const char* error_string(int code) {
  if (code == kBadDType) return "fastconv: unsupported dtype for a CUDA kernel";
#if defined(__CUDACC__)
  return cudaGetErrorString(static_cast<cudaError_t>(code));
#else
  return code == 0 ? "no error" : "fastconv simulator: unknown error code";
#endif
}

}  // namespace fastconv::FC_NS::kernels
