// selftest.cu: kernels that test the simulator itself (tests/test_simulator.py runs them through
// torch.ops.fastconv._sim_selftest). Each "bug_*" kernel carries one deliberate, classic CUDA bug that
// a GPU would not report (it would give wrong numbers, or the right ones by luck); the simulator must
// stop it with a report. Each "ok_*" kernel is a correct use of the same feature, and must give the
// same bits in every schedule order. Built for the simulator only (nvcc never sees this file).
#include <cstring>

#include "cuda/common.cuh"
#include "cuda/mma.cuh"

namespace fastconv::sim {
namespace {

constexpr int kBlock = 256;

__device__ float value_of(int i) { return float((i * 37) % 101) * 0.25f - 12.0f; }

// One block per 256 values: a shared-memory tree down to 32 values, then warp shuffles.
template <bool kSyncEachLevel>
__global__ void reduce(float* out) {
  __shared__ float partial[kBlock];
  const int t = threadIdx.x;
  partial[t] = value_of(blockIdx.x * kBlock + t);
  __syncthreads();
  for (int half = kBlock / 2; half >= 32; half /= 2) {
    if (t < half) partial[t] += partial[t + half];
    if (kSyncEachLevel) __syncthreads();  // the bug variant forgets this barrier
  }
  if (t < 32) {
    float v = partial[t];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (t == 0) out[blockIdx.x] = v;
  }
}

// Scan with __shfl_up_sync, a ballot and __syncthreads_count, one block of 64 threads:
// out[t] = inclusive prefix sum of (t % 3) in its warp, out[64 + w] = popcount of the warp's ballot
// of odd lanes, out[66] = number of threads with t % 5 == 0.
__global__ void warp_ops(float* out) {
  const int t = threadIdx.x, lane = t % 32;
  int v = t % 3;
  for (int d = 1; d < 32; d *= 2) {
    const int up = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += up;
  }
  out[t] = float(v);
  const unsigned odd = __ballot_sync(0xffffffffu, lane & 1);
  if (lane == 0) out[64 + t / 32] = float(__popc(odd));
  const int fives = __syncthreads_count(t % 5 == 0);
  if (t == 0) out[66] = float(fives);
}

// Lanes exchange two rounds of values through shared memory, ordered by __syncwarp; the bug variant
// lets a lane overwrite its slot before its partner has read the first round.
template <bool kSyncwarp>
__global__ void warp_exchange(float* out) {
  __shared__ float slot[32];
  const int lane = threadIdx.x;
  slot[lane] = value_of(lane);
  __syncwarp();
  const float first = slot[31 - lane];
  if (kSyncwarp) __syncwarp();
  slot[lane] = value_of(lane + 32);
  __syncwarp();
  out[lane] = first + 2.0f * slot[31 - lane];
}

// Dynamic shared memory: reverse the block's values.
__global__ void dynamic_reverse(float* out) {
  FC_DYNAMIC_SHARED(float, buffer);
  const int t = threadIdx.x;
  buffer[t] = value_of(t);
  __syncthreads();
  out[t] = buffer[blockDim.x - 1 - t];
}

// Integer atomics across blocks: out[0] counts every thread of the grid.
__global__ void count_threads(int* counter) { atomicAdd(counter, 1); }

// Half of the block skips a barrier.
__global__ void divergent_barrier(float* out) {
  const int t = threadIdx.x;
  if (t < 32) __syncthreads();
  out[t] = 1.0f;
}

// Threads past the end return early, then the rest meet at a barrier.
__global__ void early_exit_barrier(float* out, int n) {
  __shared__ float tile[kBlock];
  const int t = threadIdx.x;
  if (t >= n) return;
  tile[t] = value_of(t);
  __syncthreads();  // the threads that returned early never arrive
  out[t] = tile[n - 1 - t];
}

// Every lane names only the low half-warp in its mask.
__global__ void shfl_mask_excludes_caller(float* out) {
  const int t = threadIdx.x;
  out[t] = __shfl_sync(0x0000ffffu, value_of(t), 0);
}

// The high half-warp has returned; the rest shuffle with a full mask.
__global__ void shfl_exited_lanes(float* out) {
  const int t = threadIdx.x;
  if (t >= 16) return;
  out[t] = __shfl_xor_sync(0xffffffffu, value_of(t), 1);
}

// A correct mask (the low half-warp), but the source lane 20 is not in it: its value is undefined.
__global__ void shfl_inactive_source(float* out) {
  const int t = threadIdx.x;
  if (t < 16) out[t] = __shfl_sync(0x0000ffffu, value_of(t), 20);
}

// Lanes 0-15 wait at a shuffle for lanes 16-31, which wait at a barrier.
__global__ void shfl_vs_barrier(float* out) {
  const int t = threadIdx.x;
  float v = value_of(t);
  if (t < 16)
    v = __shfl_sync(0xffffffffu, v, 0);
  else
    __syncthreads();
  out[t] = v;
}

// The last thread writes one element past the end of the output.
__global__ void out_of_bounds_write(float* out, int n) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t <= n) out[t] = value_of(t);
}

// Reads a shared slot that no thread wrote.
__global__ void uninitialised_shared(float* out) {
  __shared__ float tile[64];
  const int t = threadIdx.x;
  if (t < 32) tile[t] = value_of(t);
  __syncthreads();
  out[t] = tile[t];
}

// One warp computes D = A B + C on the tensor cores (one mma.sync of Kind): every lane packs its
// fragment registers from the row-major matrices A (16 x K), B (K x 8), C (16 x 8) by the PTX ISA
// layouts (see cuda/mma.cuh) and stores D back by the accumulator layout. The entries are
// value_of of their index, exact in every operand type, and every product and sum is exact in
// float32, so D has one right answer. kSwap (the bug) exchanges A registers 1 and 2, i.e. rows
// g + 8 with columns + 8: a fragment index slip the simulator must show as a wrong D. kDiverge (the
// other bug) lets only the low half-warp reach the mma.
template <typename Kind, bool kSwap, bool kDiverge>
__global__ void mma_tile(float* out) {
  using In = typename Kind::In;
  constexpr int K = Kind::kK;
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const auto A = [](int r, int k) { return value_of(r * K + k); };
  const auto B = [](int k, int n) { return value_of(1000 + k * 8 + n); };
  const auto C = [](int r, int n) { return value_of(2000 + r * 8 + n); };
  uint32_t a[4], b[2];
  float d[4];
  if constexpr (Kind::kPerWord == 2) {
    for (int r = 0; r < 4; ++r) {  // register r: elements 2r, 2r + 1
      const int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
      a[r] = mma::pack(from_acc<In>(A(row, col)), from_acc<In>(A(row, col + 1)));
    }
    for (int r = 0; r < 2; ++r) b[r] = mma::pack(from_acc<In>(B(2 * t + 8 * r, g)), from_acc<In>(B(2 * t + 8 * r + 1, g)));
  } else {
    for (int i = 0; i < 4; ++i) a[i] = mma::to_tf32(A(g + 8 * (i % 2), t + 4 * (i / 2)));
    for (int i = 0; i < 2; ++i) b[i] = mma::to_tf32(B(t + 4 * i, g));
  }
  for (int i = 0; i < 4; ++i) d[i] = C(g + 8 * (i / 2), 2 * t + i % 2);
  if (kSwap) {
    const uint32_t r1 = a[1];
    a[1] = a[2];
    a[2] = r1;
  }
  if (kDiverge && lane >= 16) return;
  mma::mma_sync<Kind>(d, a, b);
  for (int i = 0; i < 4; ++i) out[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
}

}  // namespace

// Runs the self-test kernel `name` writing into out (n floats); returns false for an unknown name.
bool selftest(const char* name, float* out, int64_t n) {
  const auto is = [&](const char* s) { return std::strcmp(name, s) == 0; };
  const unsigned blocks = unsigned(n / kBlock);
  if (is("ok_reduce")) launch(reduce<true>, dim3(blocks), dim3(kBlock), 0, nullptr, out);
  else if (is("bug_reduce_missing_syncthreads")) launch(reduce<false>, dim3(blocks), dim3(kBlock), 0, nullptr, out);
  else if (is("ok_warp_ops")) launch(warp_ops, dim3(1), dim3(64), 0, nullptr, out);
  else if (is("ok_warp_exchange")) launch(warp_exchange<true>, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("bug_warp_exchange_missing_syncwarp")) launch(warp_exchange<false>, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("ok_dynamic_shared")) launch(dynamic_reverse, dim3(1), dim3(unsigned(n)), size_t(n) * 4, nullptr, out);
  else if (is("ok_atomics") && (reinterpret_cast<int*>(out)[0] = 0, true)) launch(count_threads, dim3(unsigned(n)), dim3(96), 0, nullptr, reinterpret_cast<int*>(out));
  else if (is("bug_divergent_barrier")) launch(divergent_barrier, dim3(1), dim3(64), 0, nullptr, out);
  else if (is("bug_early_exit_barrier")) launch(early_exit_barrier, dim3(1), dim3(kBlock), 0, nullptr, out, int(n));
  else if (is("bug_shfl_mask_excludes_caller")) launch(shfl_mask_excludes_caller, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("bug_shfl_exited_lanes")) launch(shfl_exited_lanes, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("ok_shfl_inactive_source")) launch(shfl_inactive_source, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("bug_shfl_vs_barrier")) launch(shfl_vs_barrier, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("bug_out_of_bounds_write"))
    launch(out_of_bounds_write, dim3(unsigned((n + 64) / 64)), dim3(64), 0, nullptr, out, int(n));
  else if (is("bug_uninitialised_shared")) launch(uninitialised_shared, dim3(1), dim3(64), 0, nullptr, out);
  else if (is("ok_mma_f16")) launch(mma_tile<mma::F16, false, false>, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("ok_mma_bf16")) launch(mma_tile<mma::BF16, false, false>, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("ok_mma_tf32")) launch(mma_tile<mma::TF32, false, false>, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("bug_mma_f16_swapped_registers")) launch(mma_tile<mma::F16, true, false>, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("bug_mma_tf32_swapped_registers")) launch(mma_tile<mma::TF32, true, false>, dim3(1), dim3(32), 0, nullptr, out);
  else if (is("bug_mma_divergent")) launch(mma_tile<mma::F16, false, true>, dim3(1), dim3(32), 0, nullptr, out);
  else return false;
  return true;
}

}  // namespace fastconv::sim
