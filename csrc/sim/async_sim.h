// async_sim.h: the simulator's versions of the asynchronous copies and matrix loads of
// csrc/cuda/async_copy.cuh, whose inline PTX g++ cannot compile. Included by csrc/cuda/common.cuh
// after mma_sim.h when nvcc is not the compiler. The signatures are async_copy.cuh's, plus the
// caller's file and line (the defaults) for the reports; the work is done by the runtime
// (csrc/sim/runtime.cpp), outside the access hooks, which checks it against the race checker's
// shadow of shared memory:
//   - cp_async checks its alignment, that dst lies in shared memory, memory-checks the source (a
//     zero-fill copy reads nothing), and that no other thread touched dst since the last barrier (a
//     stage reused too early); then it holds the copy in flight in the thread's open group, and
//     every access to those bytes is reported until a wait lands them;
//   - cp_async_commit closes the open group (an empty one too, as in PTX);
//   - cp_async_wait<N> lands every copy of the thread's committed groups but the newest N: the
//     bytes arrive then, and count as the issuing thread's writes at that moment (other threads
//     read them after a __syncthreads, as any store); copies of the open group stay in flight;
//   - ldmatrix_* is a warp collective (the whole warp, as .aligned demands): each lane's row
//     address is checked (16-byte aligned, in shared memory), its row read as a read by that lane,
//     and the registers filled by the PTX ISA's fragment layout (async_copy.cuh).
// A thread that exits with copies in flight is reported too.
#pragma once

#include <cstdint>

#include "sim/cuda_sim.h"

namespace fcsim {

void cp_async(Site site, void* dst, const void* src, int bytes, bool full);
void cp_async_commit();
void cp_async_wait(int pending);
// One lane's part of ldmatrix.sync.aligned.m8n8.x{matrices}[.trans].shared.b16: `row` is the address
// this lane supplies, regs (`matrices` registers) receive its fragment.
void ldmatrix(Site site, int matrices, bool trans, const void* row, uint32_t* regs);

}  // namespace fcsim

namespace fastconv::async {

template <int Bytes>
inline void cp_async(void* dst_shared, const void* src_global, bool full = true, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  fcsim::cp_async(fcsim::Site{file, line}, dst_shared, src_global, Bytes, full);
}

inline void cp_async_commit() { fcsim::cp_async_commit(); }

// A wait makes shared memory change under the thread: a compiler barrier, as after every meeting point.
template <int N>
inline void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group takes a count of groups");
  fcsim::cp_async_wait(N);
  fcsim::clobber();
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  fcsim::ldmatrix(fcsim::Site{file, line}, 4, false, row, r);
  fcsim::clobber();
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  fcsim::ldmatrix(fcsim::Site{file, line}, 4, true, row, r);
  fcsim::clobber();
}
inline void ldmatrix_x2(uint32_t (&r)[2], const void* row, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  fcsim::ldmatrix(fcsim::Site{file, line}, 2, false, row, r);
  fcsim::clobber();
}
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  fcsim::ldmatrix(fcsim::Site{file, line}, 2, true, row, r);
  fcsim::clobber();
}

}  // namespace fastconv::async
