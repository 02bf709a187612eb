// async_copy.cuh: the sm_80 data movement of the multi-stage tensor-core GEMM (gemm.cuh), one device
// function per instruction, so that the simulator can check how kernels use them:
//   cp_async<B>(dst, src, full)   cp.async.{ca,cg}.shared.global: B = 4, 8 or 16 bytes from global src
//                                 to shared dst, asynchronously; full = false zero-fills dst without
//                                 reading src (src-size 0: the padding and tails of an operand)
//   cp_async_commit()             cp.async.commit_group: closes the thread's copies issued since the
//                                 last commit into one group
//   cp_async_wait<N>()            cp.async.wait_group N: waits until at most the newest N of the
//                                 thread's groups are pending; the others' data is then in shared
//                                 memory (other threads see it after a __syncthreads, as any store).
//                                 Copies not yet committed are not waited for
//   ldmatrix_x4 / _x2 (_trans)    ldmatrix.sync.aligned.m8n8.{x4,x2}[.trans].shared.b16: a warp
//                                 collective loading 4 (2) 8 x 8 matrices of 16-bit elements; lane l
//                                 supplies the address of row l % 8 of matrix l / 8 (16 bytes,
//                                 16-byte aligned) and receives, of matrix j, in register j, the two
//                                 elements of row l / 4 at columns 2 (l % 4), 2 (l % 4) + 1 (low
//                                 half first); .trans delivers the transposed matrix (rows and
//                                 columns swapped). A 32-bit operand (tf32) loads as pairs of 16-bit
//                                 halves: register j then holds word l % 4 of row l / 4 (not with
//                                 .trans, which swaps 16-bit elements, not words).
// Under nvcc each is one inline PTX instruction (below); in the simulator (sim/async_sim.h) a copy is
// held in flight until the wait that covers it (it reads its source when issued, and lands exactly
// at that wait), and any access to its destination before then is reported, as is a copy into memory
// another thread read or wrote since the last barrier (a stage reused too early), a thread that exits
// with copies in flight, a cp.async that is misaligned or whose destination is not in shared memory,
// and an ldmatrix row address that is misaligned or outside shared memory.
#pragma once

#include "cuda/common.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "fastconv's asynchronous copies need sm_80 or newer (TORCH_CUDA_ARCH_LIST >= 8.0)"
#endif

namespace fastconv::async {

FC_INLINE_PTX(
__device__ __forceinline__ unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

template <int Bytes>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool full = true) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  const int src_bytes = full ? Bytes : 0;
  if constexpr (Bytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(shared_address(dst)), "l"(src), "n"(Bytes),
                 "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row)));
}
)

}  // namespace fastconv::async
