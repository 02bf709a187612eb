// glue.cpp (simulator): the torch glue of the CUDA kernels compiled for the simulator -- CPU tensors
// in, the CUDA kernels run on the CPU (see csrc/cuda/glue.cpp) -- plus the switch that routes the
// CPU registrations to it (fastconv.simulate()) and the simulator's self-test entry point.
#define FASTCONV_SIM 1
#include "cuda/glue.cpp"

#include <ATen/ops/full.h>

#include <atomic>

namespace fastconv::sim {

bool selftest(const char* name, float* out, int64_t n);  // csrc/sim/selftest.cu

namespace {
std::atomic<bool> g_active{false};
}

bool active() { return g_active.load(std::memory_order_relaxed); }

void configure(bool enabled, int64_t order, int64_t seed, bool race_check, bool memcheck) {
  TORCH_CHECK_VALUE(order >= 0 && order <= 2, "fastconv.simulate: order must be 0 (forward), 1 (reverse) or 2 "
                    "(random), got ", order);
  TORCH_CHECK_VALUE(!(race_check || memcheck) || fcsim::instrumented(), "fastconv.simulate: this build of fastconv "
                    "compiled its kernels for the simulator without the access hooks, so race_check and memcheck are "
                    "unavailable (rebuild without FASTCONV_SIM_HOOKS=0)");
  fcsim::Options o;
  o.order = static_cast<fcsim::Order>(order);
  o.seed = static_cast<uint64_t>(seed);
  o.race_check = race_check;
  o.memcheck = memcheck;
  fcsim::set_options(o);
  g_active = enabled;
}

std::vector<int64_t> stats() {
  const fcsim::Stats s = fcsim::stats();
  return {int64_t(s.launches), int64_t(s.blocks), int64_t(s.threads)};
}

at::Tensor selftest(const std::string& name, int64_t n) {
  TORCH_CHECK_VALUE(n >= 1 && n <= (1 << 20), "fastconv._sim_selftest: n must be in [1, 2^20], got ", n);
  at::Tensor out = at::full({n}, std::numeric_limits<float>::quiet_NaN(), at::kFloat);
  FC_BUFFERS(buf(out, "out"));
  TORCH_CHECK_VALUE(selftest(name.c_str(), out.mutable_data_ptr<float>(), n), "fastconv._sim_selftest: no self-test "
                    "kernel named '", name, "'");
  return out;
}

}  // namespace fastconv::sim
