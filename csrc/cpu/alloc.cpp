// alloc.cpp: the memory of the CPU ops' outputs, from a cache of blocks that keeps freed memory mapped.
//
// A training step allocates the same activations and gradients, tens of megabytes each, every
// step. glibc serves such sizes with fresh mmap()s or re-grown heap, so the step touches new pages
// again and again: one page fault per 4 KiB, ~3.6 us each on a virtual machine (bench/RESULTS.md),
// which is 10-15 ms of a 50-ms MNIST step. Here a freed block of 64 KiB or more is kept, still mapped
// and already faulted in, and the next request of about its size (the block at most 1/8 larger)
// takes it. Smaller requests go to malloc, which reuses them without faults.
//
// The cache holds at most FASTCONV_CPU_CACHE_MB of free blocks (default: an eighth of the RAM, at
// most 2 GiB; 0 turns caching off); past that the largest free blocks are unmapped. Blocks in use
// are never limited, only the free ones kept. fastconv.backends.cpu_cache() reports and empties it.
// FASTCONV_CPU_CACHE_POISON=1 fills every block handed out with 0xFF bytes (NaN in floating point),
// so a kernel that reads an output element before writing it fails its tests instead of reading
// whatever an earlier tensor left; the test suite sets it. Under AddressSanitizer caching is off, so
// a use after free is still caught.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>

#include "fastconv.h"

namespace fastconv::cpu {
namespace {

constexpr size_t kCachedFrom = size_t(64) << 10;  // smaller requests go to malloc
constexpr size_t kGranule = size_t(64) << 10;     // cached block sizes are multiples of this

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kUnderAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kUnderAsan = true;
#else
constexpr bool kUnderAsan = false;
#endif
#else
constexpr bool kUnderAsan = false;
#endif

struct Block {
  void* base;
  size_t size;  // 0: from malloc
};

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  TORCH_CHECK(end != v && *end == '\0' && x >= 0, name, " must be a non-negative integer, got '", v, "'");
  return x;
}

size_t default_cap() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const size_t ram = pages > 0 && page > 0 ? size_t(pages) * size_t(page) : size_t(8) << 30;
  return std::min(ram / 8, size_t(2) << 30);
}

class BlockCache final : public c10::Allocator {
 public:
  BlockCache()
      : cap_(kUnderAsan ? 0 : size_t(env_int("FASTCONV_CPU_CACHE_MB", int64_t(default_cap() >> 20))) << 20),
        poison_(env_int("FASTCONV_CPU_CACHE_POISON", 0) != 0) {}

  c10::DataPtr allocate(size_t n) override {
    Block* b = take(n);
    if (poison_ && b->base != nullptr) std::memset(b->base, 0xFF, n);
    return {b->base, b, &BlockCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // {bytes in free blocks, free blocks, bytes in blocks in use, blocks in use, requests served from
  //  the cache, requests that mapped new memory, the cap}
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {int64_t(free_bytes_), int64_t(free_.size()), int64_t(used_bytes_), int64_t(used_blocks_),
            int64_t(hits_), int64_t(misses_), int64_t(cap_)};
  }

  void empty() {
    std::vector<Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& kv : free_) drop.push_back(kv.second);
      free_.clear();
      free_bytes_ = 0;
    }
    for (Block* b : drop) unmap(b);
  }

 private:
  Block* take(size_t n) {
    if (n < kCachedFrom || cap_ == 0) {
      void* p = nullptr;
      if (n > 0 && posix_memalign(&p, 64, n) != 0) p = nullptr;
      TORCH_CHECK(n == 0 || p != nullptr, "fastconv: out of memory allocating ", n, " bytes");
      return new Block{p, 0};
    }
    const size_t size = (n + kGranule - 1) / kGranule * kGranule;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= size + size / 8) {
        Block* b = it->second;
        free_.erase(it);
        free_bytes_ -= b->size;
        used_bytes_ += b->size;
        ++used_blocks_;
        ++hits_;
        return b;
      }
      ++misses_;
    }
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {  // free what the cache holds and try once more
      empty();
      p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    TORCH_CHECK(p != MAP_FAILED, "fastconv: out of memory allocating ", n, " bytes");
    std::lock_guard<std::mutex> lock(mutex_);
    used_bytes_ += size;
    ++used_blocks_;
    return new Block{p, size};
  }

  static void unmap(Block* b) {
    munmap(b->base, b->size);
    delete b;
  }

  static void release(void* ctx);

  void give_back(Block* b) {
    std::vector<Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      used_bytes_ -= b->size;
      --used_blocks_;
      free_.emplace(b->size, b);
      free_bytes_ += b->size;
      while (free_bytes_ > cap_ && !free_.empty()) {  // unmap the largest free blocks first
        auto last = std::prev(free_.end());
        free_bytes_ -= last->first;
        drop.push_back(last->second);
        free_.erase(last);
      }
    }
    for (Block* d : drop) unmap(d);
  }

  const size_t cap_;
  const bool poison_;
  std::mutex mutex_;
  std::multimap<size_t, Block*> free_;  // by size
  size_t free_bytes_ = 0, used_bytes_ = 0, used_blocks_ = 0, hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors may be freed after static destructors have run.
BlockCache& cache() {
  static BlockCache* c = new BlockCache();
  return *c;
}

void BlockCache::release(void* ctx) {
  Block* b = static_cast<Block*>(ctx);
  if (b->size == 0) {
    std::free(b->base);
    delete b;
  } else {
    cache().give_back(b);
  }
}

}  // namespace

std::vector<int64_t> cache_stats() { return cache().stats(); }
void cache_empty() { cache().empty(); }

at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  return at::detail::empty_generic(sizes, &cache(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

}  // namespace fastconv::cpu
