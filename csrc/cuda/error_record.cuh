// error_record.cuh: how a kernel thread records an error it finds in the data (ErrorRecord,
// csrc/cuda/kernels.h), for the kernel files that check their data (max_pool2d.cu, cross_entropy.cu).
// Include after cuda/common.cuh.
#pragma once

namespace fastconv {

// Records (op, value, where, extent, ignore_index) in *r unless an error is already there: the first
// error wins. Called only on the error path, by any number of threads at once.
__device__ __forceinline__ void record_error(ErrorRecord* r, DataError op, int64_t value, int64_t where,
                                             int64_t extent, int64_t ignore_index = 0) {
  if (*static_cast<volatile int32_t*>(&r->claimed) != 0) return;  // taken: skip the atomic
  if (atomicCAS(&r->claimed, 0, 1) != 0) return;
  r->value = value;
  r->where = where;
  r->extent = extent;
  r->ignore_index = ignore_index;
#if defined(__CUDACC__)
  __threadfence_system();  // the values reach host memory before `op` does
#endif
  // (the simulator's atomics are sequentially consistent: the stores above are visible before this one)
  atomicExch(&r->op, static_cast<int32_t>(op));
}

}  // namespace fastconv
