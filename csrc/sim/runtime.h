// runtime.h: how the rest of fastconv drives the SIMT simulator (csrc/sim/runtime.cpp): its options,
// and the device buffers a launch may touch. Plain C++, no torch and no CUDA.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

namespace fcsim {

// The order in which a block's threads run between two barriers (and after each warp-collective):
// a correct kernel gives bitwise-identical results in all three; a missing barrier rarely does.
enum class Order : int { forward = 0, reverse = 1, random = 2 };

struct Options {
  Order order = Order::forward;
  uint64_t seed = 0;       // of the random order
  bool race_check = true;  // shared-memory races and reads of unwritten shared memory
  bool memcheck = true;    // global accesses outside the launch's buffers
};

void set_options(const Options& options);
Options options();

// True when the kernel translation unit was compiled with the access hooks (-fsanitize=thread
// instrumentation resolved to the simulator's hooks): race_check and memcheck need them.
bool instrumented();

// What the simulator has run in this process, counted at each launch.
struct Stats {
  uint64_t launches, blocks, threads;
};
Stats stats();

// A device buffer: the memory check accepts global accesses inside the buffers of the launch.
struct Buffer {
  const void* ptr;
  size_t bytes;
  const char* name;  // for the reports: the tensor's role ("input", "indices", ...)
};

// The buffers that launches made by this thread may touch, for the scope's lifetime. Without a
// scope, launches are not memory-checked.
class BufferScope {
 public:
  BufferScope(std::initializer_list<Buffer> buffers);
  ~BufferScope();
  BufferScope(const BufferScope&) = delete;
  BufferScope& operator=(const BufferScope&) = delete;
};

}  // namespace fcsim
