// selftest.cu: kernels that test the simulator itself (tests/test_simulator.py runs them through
// torch.ops.fastconv._sim_selftest). Each "bug_*" kernel carries one deliberate, classic CUDA bug that
// a GPU would not report (it would give wrong numbers, or the right ones by luck); the simulator must
// stop it with a report. Each "ok_*" kernel is a correct use of the same feature, and must give the
// same bits in every schedule order. Built for the simulator only (nvcc never sees this file).
#include <cstring>

#include "cuda/async_copy.cuh"
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

// A 3-stage cp.async ring: each block streams `tiles` tiles of kRingTile floats from its part of the
// source (the first half of data, written by the host) through shared memory to its part of the
// output (the second half). Thread t copies 16 bytes (floats 4 t .. 4 t + 3) and 4 bytes (float
// 256 + t) of every tile, some of them zero-filled; two tiles are in flight while a third is read.
// After its wait and the barrier each thread reads the slots that a thread of the other warp copied
// (t ^ 32) and stores them to the output, which must equal the source with zeros where the copies
// zero-filled. The planted bugs: kRingNoWait reads a stage without the wait; kRingEarlyRefill issues
// the refill before the barrier, while the other warp may still read that stage (whichever of the
// read and the copy comes first in the schedule, they race); kRingWarpRefill does too, behind a
// __syncwarp, which orders the warp's own reads only (the other warp's reads all come first in every
// schedule: the copy finds them); kRingTailInFlight also refills past the last tile (zero-filling)
// and exits without waiting for those copies.
constexpr int kRingThreads = 64, kRingStages = 3, kRingTile = 5 * kRingThreads;

enum RingBug { kRingOk, kRingNoWait, kRingEarlyRefill, kRingWarpRefill, kRingTailInFlight };

// Which copies of tile k zero-fill (as a GEMM's padding and tails do): thread t's 16-byte one, its 4-byte one.
__host__ __device__ inline bool ring_wide_zero(int k, int t) { return (k + t) % 5 == 0; }
__host__ __device__ inline bool ring_narrow_zero(int k, int t) { return (3 * k + t) % 7 == 0; }

template <RingBug kBug, bool kDynamic>
__global__ void cp_async_ring(float* data, int tiles) {
  float* stages;  // kRingStages x kRingTile
  if constexpr (kDynamic) {
    FC_DYNAMIC_SHARED(float, dynamic_stages);
    stages = dynamic_stages;
  } else {
    __shared__ __align__(16) float static_stages[kRingStages][kRingTile];
    stages = &static_stages[0][0];
  }
  const int t = threadIdx.x;
  const float* in = data + size_t(blockIdx.x) * tiles * kRingTile;
  float* out = data + size_t(gridDim.x + blockIdx.x) * tiles * kRingTile;
  // thread t's copies of tile k into its stage; a zero-fill reads nothing, so its source is nullptr (the
  // reports name the line that called load)
  const auto load = [&](int k, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    float* stage = stages + (k % kRingStages) * kRingTile;
    const float* src = in + size_t(k) * kRingTile;
    const bool wide = k < tiles && !ring_wide_zero(k, t), narrow = k < tiles && !ring_narrow_zero(k, t);
    async::cp_async<16>(stage + 4 * t, wide ? src + 4 * t : nullptr, wide, file, line);
    async::cp_async<4>(stage + 4 * kRingThreads + t, narrow ? src + 4 * kRingThreads + t : nullptr, narrow, file, line);
  };
  for (int k = 0; k < kRingStages - 1; ++k) {
    load(k);  // the prologue: tiles 0 and 1 in flight
    async::cp_async_commit();
  }
  constexpr bool kEarly = kBug == kRingEarlyRefill || kBug == kRingWarpRefill;
  for (int k = 0; k < tiles; ++k) {
    // this thread's copies of tile k have landed (of its groups, only tile k + 1's may still be pending)
    if (kBug != kRingNoWait) async::cp_async_wait<kRingStages - 2>();
    const int next = k + kRingStages - 1;  // into the stage of tile k - 1
    const bool refill = next < tiles || kBug == kRingTailInFlight;
    if (kEarly && refill) {
      if (kBug == kRingWarpRefill) __syncwarp();  // orders the reads of tile k - 1 by this warp only
      load(next);  // the bugs: before the barrier, while the other warp may still read tile k - 1
    }
    __syncthreads();  // every thread's copies of tile k are visible, and every thread is done with tile k - 1
    if (!kEarly && refill) load(next);
    async::cp_async_commit();  // an empty group past the last tile keeps the wait's count of groups right
    const int u = t ^ 32;
    const float* stage = stages + (k % kRingStages) * kRingTile;
    const float4 wide = *reinterpret_cast<const float4*>(stage + 4 * u);
    float* o = out + size_t(k) * kRingTile;
    o[4 * u] = wide.x;
    o[4 * u + 1] = wide.y;
    o[4 * u + 2] = wide.z;
    o[4 * u + 3] = wide.w;
    o[4 * kRingThreads + u] = stage[4 * kRingThreads + u];
  }
}

// One warp loads a 16 x 16 tile of 16-bit values (row r, column c holds r << 8 | c; rows padded to
// 24 elements, 48 bytes, so that each starts at a 16-byte boundary) by ldmatrix: x4 and x4.trans of
// its four 8 x 8 quadrants (matrix m at rows 8 (m % 2), columns 8 (m / 2), as an mma.m16n8k16 A
// fragment takes them), x2 and x2.trans of the left two. out[12 l + i]: lane l's 12 registers (x4,
// x2, x4.trans, x2.trans); out[384 + 12 l + i]: the same registers gathered by plain shared loads by
// the layout async_copy.cuh documents. The planted bugs: kLdMisaligned moves lane 5's row address one
// element on; kLdInFlight has lane 3 refill its row by a cp.async that no wait lands before the ldmatrix.
enum LdBug { kLdOk, kLdMisaligned, kLdInFlight };

template <LdBug kBug>
__global__ void ldmatrix_tile(uint32_t* out) {
  __shared__ __align__(16) uint16_t tile[16][24];
  const int lane = threadIdx.x;
  for (int i = lane; i < 16 * 24; i += 32) tile[i / 24][i % 24] = uint16_t((i / 24) << 8 | (i % 24));
  __syncwarp();
  const int m = lane / 8;
  const uint16_t* row = &tile[8 * (m % 2) + lane % 8][8 * (m / 2)] + (kBug == kLdMisaligned && lane == 5);
  if (kBug == kLdInFlight && lane == 3) {
    async::cp_async<16>(&tile[3][0], nullptr, false);  // zero-fills row 3 of matrix 0, in flight
    async::cp_async_commit();
  }
  const uint16_t* half_row = lane < 16 ? row : nullptr;  // an x2 ignores the addresses of lanes 16-31
  uint32_t x4[4], x2[2], x4t[4], x2t[2];
  async::ldmatrix_x4(x4, row);
  async::ldmatrix_x2(x2, half_row);
  async::ldmatrix_x4_trans(x4t, row);
  async::ldmatrix_x2_trans(x2t, half_row);
  const auto pair = [&](int r0, int c0, int r1, int c1) {
    return uint32_t(tile[r0][c0]) | uint32_t(tile[r1][c1]) << 16;
  };
  const int g = lane / 4, c = 2 * (lane % 4);
  uint32_t want[12];
  for (int j = 0; j < 4; ++j) {
    const int r0 = 8 * (j % 2), c0 = 8 * (j / 2);
    want[j] = pair(r0 + g, c0 + c, r0 + g, c0 + c + 1);      // x4: row g, columns c, c + 1
    want[6 + j] = pair(r0 + c, c0 + g, r0 + c + 1, c0 + g);  // x4.trans: rows c, c + 1, column g
  }
  for (int j = 0; j < 2; ++j) {
    want[4 + j] = want[j];
    want[10 + j] = want[6 + j];
  }
  uint32_t* o = out + 12 * lane;
  for (int j = 0; j < 4; ++j) {
    o[j] = x4[j];
    o[6 + j] = x4t[j];
  }
  for (int j = 0; j < 2; ++j) {
    o[4 + j] = x2[j];
    o[10 + j] = x2t[j];
  }
  for (int i = 0; i < 12; ++i) out[384 + 12 * lane + i] = want[i];
}

// The ring's launch: two blocks, the source (the first half of out) written here.
template <RingBug kBug, bool kDynamic = false>
void run_ring(float* out, int64_t n) {
  const int blocks = 2, tiles = int(n / (2 * blocks * kRingTile));
  for (int64_t i = 0; i < n / 2; ++i) out[i] = value_of(int(i));
  const size_t smem = kDynamic ? size_t(kRingStages) * kRingTile * sizeof(float) : 0;
  launch(cp_async_ring<kBug, kDynamic>, dim3(blocks), dim3(kRingThreads), smem, nullptr, out, tiles);
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
  else if (is("ok_cp_async_ring")) run_ring<kRingOk>(out, n);
  else if (is("ok_cp_async_ring_dynamic")) run_ring<kRingOk, true>(out, n);
  else if (is("bug_cp_async_missing_wait")) run_ring<kRingNoWait>(out, n);
  else if (is("bug_cp_async_stage_reused_early")) run_ring<kRingWarpRefill>(out, n);
  else if (is("bug_cp_async_refill_races_read")) run_ring<kRingEarlyRefill>(out, n);
  else if (is("bug_cp_async_exit_in_flight")) run_ring<kRingTailInFlight>(out, n);
  else if (is("ok_ldmatrix")) launch(ldmatrix_tile<kLdOk>, dim3(1), dim3(32), 0, nullptr, reinterpret_cast<uint32_t*>(out));
  else if (is("bug_ldmatrix_misaligned")) launch(ldmatrix_tile<kLdMisaligned>, dim3(1), dim3(32), 0, nullptr, reinterpret_cast<uint32_t*>(out));
  else if (is("bug_ldmatrix_in_flight")) launch(ldmatrix_tile<kLdInFlight>, dim3(1), dim3(32), 0, nullptr, reinterpret_cast<uint32_t*>(out));
  else return false;
  return true;
}

}  // namespace fastconv::sim
