// runtime.cpp: fastconv's SIMT simulator -- CUDA kernels (csrc/cuda/*.cu compiled by g++ against
// cuda_sim.h) executed on the CPU with CUDA's execution model, and checked while they run.
//
// Execution. One fiber per CUDA thread, each on its own mmap'ed stack with a guard page (pooled per
// OS thread). A block's fibers run on one OS thread, one at a time: a fiber runs until it reaches a
// meeting point (__syncthreads, a warp collective) or exits, then the scheduler picks the next ready
// fiber. The order in which threads run between meeting points is forward, reverse or seeded-random
// (Options::order), so a kernel that leans on one interleaving shows it. Blocks are spread over a
// small pool of worker threads. The context switch is hand-written for x86-64 (callee-saved
// registers, MXCSR and the x87 control word: ~10 ns); other machines use ucontext (FCSIM_UCONTEXT
// forces it on x86-64 too, to test that path).
//
// What the simulator checks and what it does not model: README.md, section "Running CUDA without a GPU".
//
// How the checks see what they check: a report carries the kernel, block, thread and (through
// addr2line) the source line. The shared-memory race check and the global-memory bounds check (the
// buffers a launch declares: BufferScope) see memory through the instrumentation of the kernel
// files: setup.py compiles each csrc/cuda/*.cu (and csrc/sim/selftest.cu) as C++ with gcc's
// -fsanitize=thread but does not link ThreadSanitizer; the instrumentation turns every load and
// store the compiler cannot prove thread-private into a call of __tsan_readN / __tsan_writeN, and
// this file defines those hooks. The simulated instructions that move shared memory themselves
// (cp.async and its groups, ldmatrix: sim/async_sim.h) run here, out of the hooks' sight, and update
// the same shadow: a copy in flight marks its bytes, which every access checks until the wait that
// lands it; a landed copy counts as its thread's write at the wait, an ldmatrix row as its lane's
// read. The simulator stops a block at its first report (the offending access is not made) and the
// launch throws std::runtime_error with the report.
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__) || defined(FCSIM_UCONTEXT)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "sim/async_sim.h"
#include "sim/cuda_sim.h"
#include "sim/runtime.h"

#ifndef FASTCONV_SIM_HOOKS
#define FASTCONV_SIM_HOOKS 0
#endif

namespace fcsim {
namespace {

// ------------------------------------------------------------------------------------ options

std::atomic<int> g_order{int(Order::forward)};
std::atomic<uint64_t> g_seed{0};
std::atomic<bool> g_race_check{true};
std::atomic<bool> g_memcheck{true};
std::atomic<uint64_t> g_launches{0}, g_blocks{0}, g_threads{0};

const char* order_name(Order o) {
  return o == Order::forward ? "forward" : o == Order::reverse ? "reverse" : "random";
}

// -------------------------------------------------------------------------- context switching

#if defined(__x86_64__) && !defined(FCSIM_UCONTEXT)
// fcsim_switch(save, to): saves the callee-saved state on the current stack, stores the stack
// pointer in *save, and resumes the context whose stack pointer is `to`.
// fcsim_fiber_entry: where a fresh fiber's first switch returns to; calls r13(r12).
asm(R"(
  .text
  .p2align 4
  .globl fcsim_switch
  .hidden fcsim_switch
  .type fcsim_switch, @function
fcsim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fcsim_switch, .-fcsim_switch

  .p2align 4
  .globl fcsim_fiber_entry
  .hidden fcsim_fiber_entry
  .type fcsim_fiber_entry, @function
fcsim_fiber_entry:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size fcsim_fiber_entry, .-fcsim_fiber_entry
)");
#endif

}  // namespace
}  // namespace fcsim

#if defined(__x86_64__) && !defined(FCSIM_UCONTEXT)
extern "C" void fcsim_switch(void** save, void* to);
extern "C" void fcsim_fiber_entry();
#endif

namespace fcsim {
namespace {

struct Stack {
  char* lo = nullptr;  // usable [lo, lo + size); a PROT_NONE guard page sits below lo
  size_t size = 0;
};

size_t stack_bytes() {
  static const size_t bytes = [] {
    const char* env = std::getenv("FASTCONV_SIM_STACK_KB");
    const long kb = env ? std::atol(env) : 0;
    return size_t(kb > 0 ? kb : 256) * 1024;
  }();
  return bytes;
}

Stack make_stack() {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const size_t size = (stack_bytes() + page - 1) / page * page;
  void* base = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) throw std::runtime_error("fastconv simulator: cannot map a fiber stack");
  mprotect(base, page, PROT_NONE);
  return Stack{static_cast<char*>(base) + page, size};
}

enum class State : uint8_t { ready, barrier, warp, exited };

// Kinds of warp collective; lanes that meet must agree on it.
enum WarpKind : int { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3, kBallot = 4, kAny = 5, kAll = 6,
                      kSyncwarp = 7, kMma = 8, kLdmatrixX4 = 9, kLdmatrixX4Trans = 10, kLdmatrixX2 = 11,
                      kLdmatrixX2Trans = 12 };

const char* warp_kind_name(int kind) {
  static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp", "mma.sync",
                                "ldmatrix.x4", "ldmatrix.x4.trans", "ldmatrix.x2", "ldmatrix.x2.trans"};
  return names[kind];
}

struct Block;

// A cp.async in flight: issued, its bytes not yet in shared memory.
struct AsyncCopy {
  uintptr_t dst;
  uint32_t group;          // the issuing thread's commit count at issue: the copy's group once committed
  uint32_t code;           // its call site (site_code)
  uint32_t epoch, wepoch;  // the barrier and warp intervals it was issued in
  uint8_t bytes;
  bool full;               // false: zero-fill
  unsigned char data[16];  // the source bytes, read at issue
};

struct Fiber {
  void* sp = nullptr;
#if !defined(__x86_64__) || defined(FCSIM_UCONTEXT)
  ucontext_t uc;
#endif
  Stack stack;
  Coords coords;
  Block* block = nullptr;
  struct Worker* worker = nullptr;  // the OS thread's state (saves a thread-local lookup per access)
  int tid = 0, warp = 0, lane = 0;
  State state = State::ready;
  Site site{};       // the meeting point it waits at
  int kind = 0;      // its kind (barrier: 0 plain, 1 count, 2 and, 3 or; warp: WarpKind)
  unsigned mask = 0;
  int arg = 0, width = 32, size = 4;
  uint64_t in = 0, out = 0;
  void* asan_fake = nullptr;
  std::vector<AsyncCopy> copies;  // its copies in flight, in issue order (so in group order)
  uint32_t committed = 0;         // groups it has closed (cp.async.commit_group)
};

struct WarpOp {
  int kind;
  unsigned mask, arrived;
  int width, size;
  Site site;
  void (*fn)(void* const*);  // kMma: what the collective computes
};

struct Launch {
  const void* kernel;
  dim3 grid, block;
  size_t smem;
  void (*thunk)(const void*);
  const void* ctx;
  size_t ctx_bytes;
  int nthreads;
  int64_t nblocks;
  Options opt;
  bool hooks;  // race check / memcheck possible
  std::vector<Buffer> buffers;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::string report;
};

struct Block {
  Launch* L = nullptr;
  uint3 idx{};
  int64_t linear = 0;
  int nthreads = 0, nwarps = 0;
  int alive = 0, at_barrier = 0, exited = 0;
  int first_exited = -1;
  Site barrier_site{};
  int barrier_kind = 0, barrier_tid = -1;
  long long barrier_acc = 0;
  uint32_t epoch = 1;
  std::vector<uint32_t> warp_epoch;
  std::vector<unsigned> exited_lanes;          // per warp
  std::vector<std::vector<WarpOp>> pending;    // per warp
  std::deque<Fiber*> ready;
  std::mt19937_64 rng;
  bool failed = false;
  std::string error;
  int in_flight = 0;        // cp.async copies of its threads not yet landed: 0 spares the accesses a lookup
  std::vector<Site> sites;  // the call sites that shadow entries name by site_code
};

// Per granule (2 bytes) of shared memory: the last writer and the last reader of this block, with the
// barrier / warp intervals of their accesses (0 = none), and whether a cp.async is writing it.
struct Shadow {
  uint32_t gen;
  uint32_t w_epoch, w_wepoch, r_epoch, r_wepoch;
  uint32_t w_pc, r_pc, r2_pc;  // where they were made, for the report (code_str)
  uint16_t w_tid, r_tid;
  uint16_t r2_tid;              // another thread that read in the reader's interval
  uint8_t r_multi;              // r2_tid is valid
  uint8_t flight;               // a cp.async of this block is writing the granule (its copy: find_copy)
};

struct Region {
  uintptr_t lo = 0;
  size_t size = 0;
  std::vector<Shadow> shadow;
  bool contains(uintptr_t a) const { return a - lo < size; }
};

// The state of one OS thread that runs blocks.
struct Worker {
  std::vector<std::unique_ptr<Fiber>> fibers;
  void* sched_sp = nullptr;
#if !defined(__x86_64__) || defined(FCSIM_UCONTEXT)
  ucontext_t sched_uc;
#endif
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  Region tls;                      // this library's thread-local block: every static __shared__ array
  Region dyn;                      // dynamic shared memory
  std::unique_ptr<unsigned char[]> dyn_mem;
  size_t dyn_capacity = 0;
  uint32_t gen = 0;                // blocks run by this worker: shadow entries of older blocks are stale
  Block* block = nullptr;
};

thread_local Fiber* g_cur = nullptr;
thread_local Worker* g_worker = nullptr;
thread_local std::vector<Buffer> g_scope;  // the BufferScope of the launching thread
thread_local volatile int tls_anchor = 0;

struct Image {
  uintptr_t lo = ~uintptr_t(0), hi = 0;
  const char* path = nullptr;
  uintptr_t base = 0;
  size_t tls_size = 0;
  uintptr_t tls_data = 0;
};

int find_image(dl_phdr_info* info, size_t, void* data) {
  auto* img = static_cast<Image*>(data);
  if (!info->dlpi_name || std::strcmp(info->dlpi_name, img->path) != 0) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD) {
      img->lo = std::min<uintptr_t>(img->lo, info->dlpi_addr + ph.p_vaddr);
      img->hi = std::max<uintptr_t>(img->hi, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
    } else if (ph.p_type == PT_TLS) {
      img->tls_size = ph.p_memsz;
    }
  }
  img->tls_data = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
  return 1;
}

// This library's image and the calling thread's instance of its thread-local block.
Image this_image() {
  Image img;
  Dl_info dl;
  if (!dladdr(reinterpret_cast<void*>(&find_image), &dl) || !dl.dli_fname) return img;
  img.path = dl.dli_fname;
  img.base = reinterpret_cast<uintptr_t>(dl.dli_fbase);
  tls_anchor = 1;  // touch a thread_local of this library, so that its block exists for this thread
  dl_iterate_phdr(&find_image, &img);
  return img;
}

const Image& image() {
  static const Image img = this_image();
  return img;
}

Worker* worker() {
  if (!g_worker) {
    g_worker = new Worker;  // one per OS thread, for the life of the thread
    const Image img = this_image();
    g_worker->tls.lo = img.tls_data;
    g_worker->tls.size = img.tls_data ? img.tls_size : 0;
    g_worker->tls.shadow.assign((g_worker->tls.size + 1) / 2, Shadow{});
  }
  return g_worker;
}

// ----------------------------------------------------------------------------------- reports

std::string hex(uintptr_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// "function at file:line" for a code address, through addr2line (only on the report path).
std::string describe_code(const void* pc, bool function_only = false) {
  Dl_info dl;
  if (!pc || !dladdr(pc, &dl) || !dl.dli_fname) return hex(reinterpret_cast<uintptr_t>(pc));
  const uintptr_t offset = reinterpret_cast<uintptr_t>(pc) - reinterpret_cast<uintptr_t>(dl.dli_fbase);
  std::string fallback = std::string(dl.dli_fname) + "+" + hex(offset);
  const std::string cmd = "addr2line -C -f -e '" + std::string(dl.dli_fname) + "' " + hex(offset) + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return fallback;
  char func[4096] = {0}, where[4096] = {0};
  const bool ok = std::fgets(func, sizeof func, p) && std::fgets(where, sizeof where, p);
  pclose(p);
  if (!ok) return fallback;
  func[std::strcspn(func, "\n")] = 0;
  where[std::strcspn(where, "\n")] = 0;
  if (function_only) return func[0] != '?' ? std::string(func) : fallback;
  std::string w = where;
  const size_t csrc = w.find("csrc/");
  if (csrc != std::string::npos) w = w.substr(csrc);
  const size_t disc = w.find(" (discriminator");
  if (disc != std::string::npos) w = w.substr(0, disc);
  if (w.rfind("??", 0) == 0) return fallback;
  return w + " (in " + func + ")";
}

std::string site_str(Site s) {
  std::string f = s.file ? s.file : "?";
  const size_t csrc = f.find("csrc/");
  if (csrc != std::string::npos) f = f.substr(csrc);
  return f + ":" + std::to_string(s.line);
}

bool same_site(Site a, Site b) {
  return a.line == b.line && (a.file == b.file || (a.file && b.file && std::strcmp(a.file, b.file) == 0));
}

// Where an access was made, as the shadow of shared memory and the reports name it (a "code"): the
// offset in the library image of the instruction after it (the access hook's return address), or,
// with kSiteCode set, the index of a call site (file, line) in the block's list: the site of a
// simulated instruction (cp.async, ldmatrix), which has no instruction of its own in the kernel.
constexpr uint32_t kSiteCode = 0x80000000u;

uint32_t site_code(Block& b, Site site) {
  for (size_t i = b.sites.size(); i-- > 0;)  // a kernel has few such sites; the latest is the likeliest
    if (same_site(b.sites[i], site)) return kSiteCode | uint32_t(i);
  b.sites.push_back(site);
  return kSiteCode | uint32_t(b.sites.size() - 1);
}

Site code_site(const Block& b, uint32_t code) { return b.sites[code & ~kSiteCode]; }

std::string thread_str(const Block& b, int tid) {
  const dim3 bd = b.L->block;
  const unsigned x = tid % bd.x, y = (tid / bd.x) % bd.y, z = tid / (bd.x * bd.y);
  std::ostringstream s;
  s << "thread (" << x << "," << y << "," << z << ")";
  if (tid >= 32 || b.nthreads > 32) s << " [warp " << tid / 32 << " lane " << tid % 32 << "]";
  return s.str();
}

std::string where_str(const Block& b) {
  const Launch& L = *b.L;
  std::ostringstream s;
  s << "kernel " << describe_code(L.kernel, true) << ", block (" << b.idx.x << "," << b.idx.y << "," << b.idx.z
    << ") of grid (" << L.grid.x << "," << L.grid.y << "," << L.grid.z << "), block size (" << L.block.x << ","
    << L.block.y << "," << L.block.z << "), " << order_name(L.opt.order) << " order";
  return s.str();
}

void block_fail(Block& b, const std::string& what) {
  if (b.failed) return;
  b.failed = true;
  b.error = "fastconv simulator: " + what + "\n  in " + where_str(b);
}

// ------------------------------------------------------------------------------------ fibers

void fiber_main(Fiber* f);
#if !defined(__x86_64__) || defined(FCSIM_UCONTEXT)
void fiber_main_uc(unsigned hi, unsigned lo);
#endif

void init_fiber(Fiber* f) {
#if defined(__SANITIZE_ADDRESS__)
  // the frames left by the previous block's run of this fiber may hold poisoned redzones
  __asan_unpoison_memory_region(f->stack.lo, f->stack.size);
#endif
#if defined(__x86_64__) && !defined(FCSIM_UCONTEXT)
  char* top = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(f->stack.lo + f->stack.size) & ~uintptr_t(15));
  auto* sp = reinterpret_cast<uint64_t*>(top - 80);  // see fcsim_switch: mxcsr/fpucw, r15..rbp, return address
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  sp[0] = 0;
  std::memcpy(&sp[0], &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(&sp[0]) + 4, &fpucw, 2);
  sp[1] = 0;                                            // r15
  sp[2] = 0;                                            // r14
  sp[3] = reinterpret_cast<uint64_t>(&fiber_main);      // r13: the function
  sp[4] = reinterpret_cast<uint64_t>(f);                // r12: its argument
  sp[5] = 0;                                            // rbx
  sp[6] = 0;                                            // rbp
  sp[7] = reinterpret_cast<uint64_t>(&fcsim_fiber_entry);
  f->sp = sp;
#else
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stack.lo;
  f->uc.uc_stack.ss_size = f->stack.size;
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, reinterpret_cast<void (*)()>(&fiber_main_uc), 2, unsigned(uintptr_t(f) >> 32),
              unsigned(uintptr_t(f)));
#endif
}

// scheduler -> fiber f, until f yields back
void resume(Worker* w, Fiber* f) {
  g_cur = f;
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack.lo, f->stack.size);
#endif
#if defined(__x86_64__) && !defined(FCSIM_UCONTEXT)
  fcsim_switch(&w->sched_sp, f->sp);
#else
  swapcontext(&w->sched_uc, &f->uc);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  g_cur = nullptr;
}

// fiber -> scheduler; returns when the scheduler resumes the fiber (never, if `final`)
void yield(Fiber* f, bool final) {
  Worker* w = g_worker;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(final ? nullptr : &f->asan_fake, w->sched_bottom, w->sched_size);
#endif
#if defined(__x86_64__) && !defined(FCSIM_UCONTEXT)
  fcsim_switch(&f->sp, w->sched_sp);
#else
  swapcontext(&f->uc, &w->sched_uc);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(f->asan_fake, &w->sched_bottom, &w->sched_size);
#endif
}

// A report from inside a fiber: the block stops here, the fiber is never resumed.
[[noreturn]] void fail(Fiber* f, const std::string& what) {
  block_fail(*f->block, what);
  yield(f, true);
  __builtin_trap();
}

std::string lanes_str(unsigned m) {
  std::ostringstream s;
  s << hex(m);
  return s.str();
}

[[noreturn]] void report_exit_in_flight(Fiber* f) {
  const Block& b = *f->block;
  const size_t open = size_t(std::count_if(f->copies.begin(), f->copies.end(),
                                           [&](const AsyncCopy& c) { return c.group == f->committed; }));
  std::ostringstream s;
  s << thread_str(b, f->tid) << " exits with " << f->copies.size() << " cp.async cop"
    << (f->copies.size() == 1 ? "y" : "ies") << " in flight (the oldest issued at "
    << site_str(code_site(b, f->copies.front().code)) << ")";
  if (open) s << ", " << open << " of them never committed";
  s << ": no cp.async.wait_group covers them (a thread waits for its copies, cp.async.wait_group 0, before it exits)";
  fail(f, s.str());
}

void thread_exits(Fiber* f) {
  Block& b = *f->block;
  if (b.at_barrier > 0)
    fail(f, thread_str(b, f->tid) + " exits while " + std::to_string(b.at_barrier) +
                " thread(s) of its block wait at __syncthreads() at " + site_str(b.barrier_site) + " (" +
                thread_str(b, b.barrier_tid) + " among them): barrier divergence");
  for (const WarpOp& op : b.pending[f->warp])
    if (op.mask >> f->lane & 1u)
      fail(f, thread_str(b, f->tid) + " exits while lanes " + lanes_str(op.arrived) + " of its warp wait for it at " +
                  warp_kind_name(op.kind) + " at " + site_str(op.site) + " with mask " + lanes_str(op.mask));
  if (!f->copies.empty()) report_exit_in_flight(f);
  f->state = State::exited;
  --b.alive;
  ++b.exited;
  b.exited_lanes[f->warp] |= 1u << f->lane;
  if (b.first_exited < 0) b.first_exited = f->tid;
}

void fiber_main(Fiber* f) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &g_worker->sched_bottom, &g_worker->sched_size);
#endif
  const Launch& L = *f->block->L;
  try {
    L.thunk(L.ctx);
  } catch (const std::exception& e) {
    fail(f, std::string("a C++ exception escaped the kernel: ") + e.what());
  }
  thread_exits(f);
  yield(f, true);
  __builtin_trap();
}

#if !defined(__x86_64__) || defined(FCSIM_UCONTEXT)
void fiber_main_uc(unsigned hi, unsigned lo) {
  fiber_main(reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo)));
}
#endif

Fiber* current(const char* what) {
  Fiber* f = g_cur;
  if (!f) {
    std::fprintf(stderr, "fastconv simulator: %s called outside a simulated kernel\n", what);
    std::abort();
  }
  return f;
}

// ----------------------------------------------------------------------------------- scheduling

void push_ordered(Block& b, std::vector<Fiber*>& list) {
  switch (b.L->opt.order) {
    case Order::forward: break;
    case Order::reverse: std::reverse(list.begin(), list.end()); break;
    case Order::random: std::shuffle(list.begin(), list.end(), b.rng); break;
  }
  for (Fiber* f : list) {
    f->state = State::ready;
    b.ready.push_back(f);
  }
}

void release_barrier(Block& b, Worker* w) {
  long long result = b.barrier_acc;
  if (b.barrier_kind == 2) result = b.barrier_acc == b.at_barrier;  // and: every thread's predicate held
  if (b.barrier_kind == 3) result = b.barrier_acc > 0;              // or
  std::vector<Fiber*> list;
  for (int t = 0; t < b.nthreads; ++t) {
    Fiber* f = w->fibers[t].get();
    if (f->state == State::barrier) {
      f->out = static_cast<uint64_t>(result);
      list.push_back(f);
    }
  }
  b.at_barrier = 0;
  ++b.epoch;
  push_ordered(b, list);
}

std::string deadlock_report(Block& b, Worker* w) {
  std::ostringstream s;
  s << "deadlock: every live thread waits and no meeting point can complete";
  int shown = 0;
  for (int t = 0; t < b.nthreads && shown < 6; ++t) {
    const Fiber* f = w->fibers[t].get();
    if (f->state == State::barrier) {
      s << "\n  " << thread_str(b, t) << " waits at __syncthreads() at " << site_str(f->site);
      ++shown;
    } else if (f->state == State::warp) {
      s << "\n  " << thread_str(b, t) << " waits at " << warp_kind_name(f->kind) << " at " << site_str(f->site)
        << " with mask " << lanes_str(f->mask);
      ++shown;
    }
  }
  return s.str();
}

void run_block(Worker* w, Launch& L, int64_t linear) {
  Block b;
  b.L = &L;
  b.linear = linear;
  b.idx = uint3{unsigned(linear % L.grid.x), unsigned(linear / L.grid.x % L.grid.y),
                unsigned(linear / (int64_t(L.grid.x) * L.grid.y))};
  b.nthreads = L.nthreads;
  b.nwarps = (L.nthreads + 31) / 32;
  b.warp_epoch.assign(b.nwarps, 1);
  b.exited_lanes.assign(b.nwarps, 0);
  b.pending.assign(b.nwarps, {});
  b.rng.seed(L.opt.seed * 0x9E3779B97F4A7C15ull + uint64_t(linear) + 1);
  b.alive = b.nthreads;
  ++w->gen;
  w->block = &b;
  if (L.smem) std::memset(w->dyn_mem.get(), 0xff, L.smem);  // poison: NaN in every float type

  while (int(w->fibers.size()) < b.nthreads) {
    auto f = std::make_unique<Fiber>();
    f->stack = make_stack();
    w->fibers.push_back(std::move(f));
  }
  std::vector<Fiber*> list;
  for (int t = 0; t < b.nthreads; ++t) {
    Fiber* f = w->fibers[t].get();
    f->block = &b;
    f->worker = w;
    f->tid = t;
    f->warp = t / 32;
    f->lane = t % 32;
    f->coords.thread_idx = uint3{unsigned(t % L.block.x), unsigned(t / L.block.x % L.block.y),
                                 unsigned(t / (L.block.x * L.block.y))};
    f->coords.block_idx = b.idx;
    f->coords.block_dim = L.block;
    f->coords.grid_dim = L.grid;
    f->copies.clear();
    f->committed = 0;
    init_fiber(f);
    list.push_back(f);
  }
  push_ordered(b, list);

  while (!b.failed) {
    while (!b.ready.empty() && !b.failed) {
      Fiber* f = b.ready.front();
      b.ready.pop_front();
      resume(w, f);
    }
    if (b.failed || b.alive == 0) break;
    if (b.at_barrier == b.alive) {
      release_barrier(b, w);
      continue;
    }
    block_fail(b, deadlock_report(b, w));
  }
  w->block = nullptr;
  if (b.failed) {
    std::lock_guard<std::mutex> lock(L.mu);
    if (!L.failed.exchange(true)) L.report = b.error;
  }
}

// ------------------------------------------------------------------------------ the worker pool

class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool;  // never destroyed: workers may outlive static destructors
    return *pool;
  }

  // Runs every block of L on the calling thread and the workers.
  void run(Launch& L) {
    std::lock_guard<std::mutex> one_launch_at_a_time(launch_mu_);
    const int helpers = int(std::min<int64_t>(L.nblocks - 1, int64_t(threads_) - 1));
    if (helpers > 0) {
      ensure_started();
      std::unique_lock<std::mutex> lock(mu_);
      job_ = &L;
      ++job_id_;
      busy_ = int(workers_.size());
      cv_.notify_all();
    }
    work(L);
    if (helpers > 0) {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, [&] { return busy_ == 0; });
      job_ = nullptr;
    }
  }

 private:
  Pool() {
    const char* env = std::getenv("FASTCONV_SIM_THREADS");
    const int hw = int(std::thread::hardware_concurrency());
    threads_ = env && std::atoi(env) > 0 ? std::atoi(env) : std::max(1, hw);
    pthread_atfork(nullptr, nullptr, [] { Pool::get().after_fork(); });
  }

  static void work(Launch& L) {
    Worker* w = worker();
    if (L.smem > w->dyn_capacity) {
      w->dyn_mem.reset(new unsigned char[L.smem]);
      w->dyn_capacity = L.smem;
    }
    w->dyn.lo = reinterpret_cast<uintptr_t>(w->dyn_mem.get());
    w->dyn.size = L.smem;
    if (w->dyn.shadow.size() < (L.smem + 1) / 2) w->dyn.shadow.resize((L.smem + 1) / 2);
    for (int64_t i; !L.failed && (i = L.next.fetch_add(1)) < L.nblocks;) run_block(w, L, i);
  }

  void ensure_started() {
    if (!workers_.empty()) return;
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { loop(); });
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      Launch* L;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return job_id_ != seen; });
        seen = job_id_;
        L = job_;
      }
      if (L) work(*L);
      std::lock_guard<std::mutex> lock(mu_);
      if (--busy_ == 0) done_cv_.notify_all();
    }
  }

  // The child of a fork has none of the parent's worker threads: start afresh (the old objects leak).
  void after_fork() {
    new (&launch_mu_) std::mutex;
    new (&mu_) std::mutex;
    new (&cv_) std::condition_variable;
    new (&done_cv_) std::condition_variable;
    for (auto& t : workers_) t.detach();
    workers_.release_all();
    job_ = nullptr;
    busy_ = 0;
  }

  struct Threads : std::vector<std::thread> {
    void release_all() {
      // std::thread objects of threads that do not exist in this process: forget them unjoined
      auto* raw = new std::vector<std::thread>(std::move(*this));
      (void)raw;
      clear();
    }
  };

  int threads_ = 1;
  std::mutex launch_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  Threads workers_;
  Launch* job_ = nullptr;
  uint64_t job_id_ = 0;
  int busy_ = 0;
};

// --------------------------------------------------------------------------- memory accesses

uint32_t pc_offset(const void* pc) {
  return uint32_t(reinterpret_cast<uintptr_t>(pc) - image().base);
}

std::string code_str(const Block& b, uint32_t code) {
  if (code & kSiteCode) return site_str(code_site(b, code));
  return describe_code(reinterpret_cast<const void*>(image().base + code - 1));
}

// The shared-memory region that holds all of [a, a + n), and its name for the reports; nullptr if none.
Region* shared_region(Worker* w, uintptr_t a, size_t n, const char** name) {
  if (w->tls.contains(a) && w->tls.contains(a + n - 1)) {
    *name = "static shared";
    return &w->tls;
  }
  if (w->dyn.contains(a) && w->dyn.contains(a + n - 1)) {
    *name = "dynamic shared";
    return &w->dyn;
  }
  return nullptr;
}

// Whether an earlier access by thread `other` in barrier interval e (warp interval we) is unordered
// with one that f makes now: no barrier since, and no __syncwarp since if both are in one warp.
inline bool unordered_with(const Fiber* f, uint32_t e, uint32_t we, int other) {
  const Block& b = *f->block;
  return e == b.epoch && !(other / 32 == f->warp && we != b.warp_epoch[f->warp]);
}

// The reports below name the thread f that makes the access; the fiber that runs may be another
// (an ldmatrix checks every lane's row on the lane that completes it), and it is the one that stops.

[[noreturn]] __attribute__((noinline)) void report_unwritten(Fiber* f, const char* region_name, size_t offset,
                                                             size_t n, uint32_t code) {
  fail(g_cur, thread_str(*f->block, f->tid) + " reads " + std::to_string(n) + " bytes of " + region_name +
                  " memory (offset " + hex(offset) + ") that no thread of this block has written\n  read at " +
                  code_str(*f->block, code));
}

[[noreturn]] __attribute__((noinline)) void report_race(Fiber* f, const char* region_name, size_t offset, size_t n,
                                                        bool write, uint32_t code, bool other_wrote, int other,
                                                        uint32_t other_code) {
  const Block& b = *f->block;
  const char* mine = write ? "writes" : "reads";
  const char* theirs = other_wrote ? "wrote" : "read";
  fail(g_cur, std::string("shared-memory race: ") + thread_str(b, f->tid) + " " + mine + " " + std::to_string(n) +
                  " bytes of " + region_name + " memory (offset " + hex(offset) + ") that " + thread_str(b, other) +
                  " " + theirs + " in the same barrier interval (no __syncthreads() or __syncwarp() orders them)\n  " +
                  mine + " at " + code_str(b, code) + "\n  " + theirs + " at " + code_str(b, other_code));
}

// What touches a granule that a cp.async is writing.
enum class Access { read, write, copy };

// The copy in flight that writes the byte at a (a granule marked in flight has one), and its thread.
std::pair<const Fiber*, const AsyncCopy*> find_copy(const Block& b, const Worker* w, uintptr_t a) {
  for (int t = 0; t < b.nthreads; ++t)
    for (const AsyncCopy& c : w->fibers[t]->copies)
      if (a - c.dst < c.bytes) return {w->fibers[t].get(), &c};
  return {nullptr, nullptr};
}

// An access by f to a granule that a cp.async has not finished writing. If the copy was issued by
// another thread in this barrier interval, unordered with the access, the two race: the stage was
// refilled while it was still being read (or the access wanted the copy's data and has neither the
// wait nor the barrier). Otherwise the access comes too early: no wait has landed the copy.
[[noreturn]] __attribute__((noinline)) void report_in_flight(Fiber* f, const Region& r, const char* region_name,
                                                             size_t granule, size_t n, Access access, uint32_t code) {
  const Block& b = *f->block;
  const auto [issuer, copy] = find_copy(b, f->worker, r.lo + granule * 2);
  const std::string who = thread_str(b, f->tid), offset = hex(granule * 2), bytes = std::to_string(n);
  const char* does = access == Access::read ? " reads " : access == Access::write ? " writes " : "'s cp.async writes ";
  const char* at = access == Access::read ? "read at " : access == Access::write ? "write at " : "copy issued at ";
  const std::string copy_at = site_str(code_site(b, copy->code));
  if (issuer != f && unordered_with(f, copy->epoch, copy->wepoch, issuer->tid))
    fail(g_cur, "shared-memory race: " + who + does + bytes + " bytes of " + region_name + " memory (offset " + offset +
                    ") that a cp.async of " + thread_str(b, issuer->tid) + ", issued in the same barrier interval, is "
                    "writing (no __syncthreads() orders them: a stage reused too early, refilled while other threads "
                    "still read it, or an access to the copy's data before cp.async.wait_group and __syncthreads())\n  " +
                    at + code_str(b, code) + "\n  copy issued at " + copy_at);
  const char* what = access == Access::read ? "read" : access == Access::write ? "write" : "cp.async";
  std::string s = std::string(what) + " of shared memory that a cp.async has not finished writing: no "
                  "cp.async.wait_group covers the copy issued at " + copy_at + " by " + thread_str(b, issuer->tid);
  if (copy->group == issuer->committed) s += " (never committed: a wait covers committed groups only)";
  s += "; " + who + does + bytes + " bytes of " + region_name + " memory (offset " + offset + ")";
  if (issuer != f)
    s += " (the issuing thread waits for its copy; other threads access the bytes after a __syncthreads() that "
         "follows that wait)";
  fail(g_cur, s + "\n  " + at + code_str(b, code));
}

// A cp.async by f into memory that another thread accessed in this barrier interval.
[[noreturn]] __attribute__((noinline)) void report_reuse(Fiber* f, const char* region_name, size_t offset, size_t n,
                                                         uint32_t code, bool other_wrote, int other,
                                                         uint32_t other_code) {
  const Block& b = *f->block;
  const char* theirs = other_wrote ? "wrote" : "read";
  fail(g_cur, "shared-memory race: " + thread_str(b, f->tid) + "'s cp.async writes " + std::to_string(n) +
                  " bytes of " + region_name + " memory (offset " + hex(offset) + ") that " + thread_str(b, other) +
                  " " + theirs + " in the same barrier interval (no __syncthreads() orders them: a stage reused too "
                  "early, refilled while other threads still use it)\n  copy issued at " + code_str(b, code) + "\n  " +
                  theirs + " at " + code_str(b, other_code));
}

void shared_access(Fiber* f, Region& r, const char* region_name, uintptr_t a, size_t n, bool write, uint32_t code) {
  const Block& b = *f->block;
  const uint32_t gen = f->worker->gen, epoch = b.epoch, wepoch = b.warp_epoch[f->warp];
  const int tid = f->tid, warp = f->warp;
  const bool copies = b.in_flight != 0;  // only then can a granule be in flight
  // an earlier access by `other` in interval (e, we) is unordered with this one (unordered_with, on
  // the values loaded once)
  const auto unordered = [&](uint32_t e, uint32_t we, int other) {
    return e == epoch && !(other / 32 == warp && we != wepoch);
  };
  const size_t first = (a - r.lo) / 2, last = std::min((a + n - 1 - r.lo) / 2, r.shadow.size() - 1);
  for (size_t g = first; g <= last; ++g) {
    Shadow& s = r.shadow[g];
    if (s.gen != gen) {
      if (!write) report_unwritten(f, region_name, g * 2, n, code);
      s = Shadow{};
      s.gen = gen;
    }
    if (copies && s.flight) report_in_flight(f, r, region_name, g, n, write ? Access::write : Access::read, code);
    if (s.w_epoch && s.w_tid != tid && unordered(s.w_epoch, s.w_wepoch, s.w_tid))
      report_race(f, region_name, g * 2, n, write, code, true, s.w_tid, s.w_pc);
    const bool reader_unordered = s.r_epoch && unordered(s.r_epoch, s.r_wepoch, s.r_tid);
    if (write) {
      if (reader_unordered) {
        if (s.r_tid != tid) report_race(f, region_name, g * 2, n, true, code, false, s.r_tid, s.r_pc);
        if (s.r_multi && s.r2_tid != tid) report_race(f, region_name, g * 2, n, true, code, false, s.r2_tid, s.r2_pc);
      }
      s.w_epoch = epoch;
      s.w_wepoch = wepoch;
      s.w_tid = uint16_t(tid);
      s.w_pc = code;
      s.r_epoch = 0;
      s.r_multi = 0;
    } else {
      if (reader_unordered && s.r_tid != tid) {  // remember the other reader of this interval
        s.r2_tid = s.r_tid;
        s.r2_pc = s.r_pc;
        s.r_multi = 1;
      } else if (!reader_unordered) {
        s.r_multi = 0;
      }
      s.r_epoch = epoch;
      s.r_wepoch = wepoch;
      s.r_tid = uint16_t(tid);
      s.r_pc = code;
    }
  }
}

// A cp.async by f into [a, a + n): checked like a write that lasts until the copy lands (no other
// thread may have touched the bytes since the last barrier), then marked in flight, which every
// access checks until the wait that lands the copy (land_copy).
void issue_copy(Fiber* f, Region& r, const char* region_name, uintptr_t a, size_t n, uint32_t code) {
  const uint32_t gen = f->worker->gen;
  const int tid = f->tid;
  for (size_t g = (a - r.lo) / 2, last = (a + n - 1 - r.lo) / 2; g <= last; ++g) {
    Shadow& s = r.shadow[g];
    if (s.gen != gen) {
      s = Shadow{};
      s.gen = gen;
    }
    if (s.flight) report_in_flight(f, r, region_name, g, n, Access::copy, code);
    if (s.w_epoch && s.w_tid != tid && unordered_with(f, s.w_epoch, s.w_wepoch, s.w_tid))
      report_reuse(f, region_name, g * 2, n, code, true, s.w_tid, s.w_pc);
    if (s.r_epoch && unordered_with(f, s.r_epoch, s.r_wepoch, s.r_tid)) {
      if (s.r_tid != tid) report_reuse(f, region_name, g * 2, n, code, false, s.r_tid, s.r_pc);
      if (s.r_multi && s.r2_tid != tid) report_reuse(f, region_name, g * 2, n, code, false, s.r2_tid, s.r2_pc);
    }
    s.flight = 1;
  }
}

// A wait lands f's copy c: its bytes arrive, and to the race checker they are f's write now.
void land_copy(Fiber* f, const AsyncCopy& c) {
  if (c.full)
    std::memcpy(reinterpret_cast<void*>(c.dst), c.data, c.bytes);
  else
    std::memset(reinterpret_cast<void*>(c.dst), 0, c.bytes);
  const Block& b = *f->block;
  if (!b.L->hooks || !b.L->opt.race_check) return;
  const char* name;
  Region& r = *shared_region(f->worker, c.dst, c.bytes, &name);  // checked at issue
  for (size_t g = (c.dst - r.lo) / 2, last = (c.dst + c.bytes - 1 - r.lo) / 2; g <= last; ++g) {
    Shadow& s = r.shadow[g];
    s.flight = 0;
    s.w_epoch = b.epoch;
    s.w_wepoch = b.warp_epoch[f->warp];
    s.w_tid = uint16_t(f->tid);
    s.w_pc = c.code;
    s.r_epoch = 0;
    s.r_multi = 0;
  }
}

void global_access(Fiber* f, uintptr_t a, size_t n, bool write, uint32_t code) {
  const Launch& L = *f->block->L;
  if (a - reinterpret_cast<uintptr_t>(f->stack.lo) < f->stack.size) return;  // its own stack
  if (a - reinterpret_cast<uintptr_t>(f) < sizeof(Fiber)) return;          // its coordinates
  if (a - reinterpret_cast<uintptr_t>(L.ctx) < L.ctx_bytes) return;          // the kernel's arguments
  const Image& img = image();
  if (a >= img.lo && a < img.hi) return;  // the library's own constants and globals
  const Buffer* nearest = nullptr;
  intptr_t nearest_gap = 0;
  for (const Buffer& buf : L.buffers) {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(buf.ptr);
    if (a >= lo && a + n <= lo + buf.bytes) return;
    const intptr_t gap = a >= lo ? intptr_t(a + n - (lo + buf.bytes)) : intptr_t(lo - a);
    if (!nearest || std::abs(gap) < std::abs(nearest_gap)) {
      nearest = &buf;
      nearest_gap = gap;
    }
  }
  std::ostringstream s;
  s << "out-of-bounds global " << (write ? "write" : "read") << " of " << n << " bytes at " << hex(a) << " by "
    << thread_str(*f->block, f->tid);
  if (nearest) {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(nearest->ptr);
    const uintptr_t end = lo + nearest->bytes;
    if (a >= end)
      s << ": it starts " << (a - end) << " bytes past the end of '" << nearest->name << "'";
    else if (a >= lo)
      s << ": it runs " << (a + n - end) << " bytes past the end of '" << nearest->name << "'";
    else
      s << ": it starts " << (lo - a) << " bytes before the start of '" << nearest->name << "'";
    s << " (" << nearest->bytes << " bytes at " << hex(lo) << ")";
  }
  s << "\n  " << (write ? "write" : "read") << " at " << code_str(*f->block, code);
  fail(f, s.str());
}

inline void on_access(const void* p, size_t n, bool write, const void* pc) {
  Fiber* f = g_cur;
  if (!f || !f->block->L->hooks) return;
  Worker* w = f->worker;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const Launch& L = *f->block->L;
  if (w->tls.contains(a)) {
    if (L.opt.race_check) shared_access(f, w->tls, "static shared", a, n, write, pc_offset(pc));
    return;
  }
  if (w->dyn.contains(a)) {
    if (L.opt.race_check) shared_access(f, w->dyn, "dynamic shared", a, n, write, pc_offset(pc));
    return;
  }
  if (L.opt.memcheck && !L.buffers.empty()) global_access(f, a, n, write, pc_offset(pc));
}

}  // namespace

// ------------------------------------------------------------------------------- public entry

void set_options(const Options& o) {
  g_order = int(o.order);
  g_seed = o.seed;
  g_race_check = o.race_check;
  g_memcheck = o.memcheck;
}

Options options() {
  Options o;
  o.order = Order(g_order.load());
  o.seed = g_seed;
  o.race_check = g_race_check;
  o.memcheck = g_memcheck;
  return o;
}

// setup.py defines FASTCONV_SIM_HOOKS=1 when it compiles the kernel files with the access hooks.
Stats stats() { return Stats{g_launches.load(), g_blocks.load(), g_threads.load()}; }

bool instrumented() { return FASTCONV_SIM_HOOKS != 0; }

BufferScope::BufferScope(std::initializer_list<Buffer> buffers) {
  g_scope.insert(g_scope.end(), buffers.begin(), buffers.end());
}
BufferScope::~BufferScope() { g_scope.clear(); }

void launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*thunk)(const void*),
            const void* ctx, size_t ctx_bytes) {
  const int64_t nthreads = int64_t(block.x) * block.y * block.z;
  if (nthreads < 1 || nthreads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.y > 65535 ||
      grid.z > 65535 || dynamic_shared_bytes > 227 * 1024) {
    std::ostringstream s;
    s << "fastconv simulator: invalid launch configuration of kernel " << describe_code(kernel, true) << ": grid ("
      << grid.x << "," << grid.y << "," << grid.z << "), block (" << block.x << "," << block.y << "," << block.z
      << "), " << dynamic_shared_bytes << " bytes of dynamic shared memory (CUDA allows at most 1024 threads "
      << "per block, block.z <= 64, grid.y and grid.z <= 65535, 227 KiB of shared memory)";
    throw std::runtime_error(s.str());
  }
  Launch L;
  L.kernel = kernel;
  L.grid = grid;
  L.block = block;
  L.smem = dynamic_shared_bytes;
  L.thunk = thunk;
  L.ctx = ctx;
  L.ctx_bytes = ctx_bytes;
  L.nthreads = int(nthreads);
  L.nblocks = int64_t(grid.x) * grid.y * grid.z;
  L.opt = options();
  L.hooks = instrumented();
  L.buffers = g_scope;
  g_launches += 1;
  g_blocks += uint64_t(L.nblocks);
  g_threads += uint64_t(L.nblocks) * uint64_t(L.nthreads);
  Pool::get().run(L);
  if (L.failed) throw std::runtime_error(L.report);
}

// ------------------------------------------------------------------ meeting points (in fibers)

const Coords& coords() { return current("threadIdx")->coords; }

void* dynamic_shared() {
  current("dynamic shared memory");
  return g_worker->dyn_mem.get();
}

namespace {

uint64_t barrier(Site site, int kind, int predicate) {
  Fiber* f = current("__syncthreads");
  Block& b = *f->block;
  if (b.exited > 0)
    fail(f, thread_str(b, f->tid) + " reaches __syncthreads() at " + site_str(site) + " after " +
                thread_str(b, b.first_exited) + " of its block has exited: barrier divergence (every thread of a "
                "block must reach every __syncthreads())");
  if (b.at_barrier > 0 && (!same_site(b.barrier_site, site) || b.barrier_kind != kind))
    fail(f, thread_str(b, f->tid) + " waits at __syncthreads() at " + site_str(site) + " while " +
                thread_str(b, b.barrier_tid) + " waits at the one at " + site_str(b.barrier_site) +
                ": barrier divergence");
  for (const WarpOp& op : b.pending[f->warp])
    if (op.mask >> f->lane & 1u)
      fail(f, thread_str(b, f->tid) + " waits at __syncthreads() at " + site_str(site) + " while lanes " +
                  lanes_str(op.arrived) + " of its warp wait for it at " + warp_kind_name(op.kind) + " at " +
                  site_str(op.site));
  if (b.at_barrier == 0) {
    b.barrier_site = site;
    b.barrier_kind = kind;
    b.barrier_tid = f->tid;
    b.barrier_acc = 0;
  }
  b.barrier_acc += predicate != 0;
  ++b.at_barrier;
  f->state = State::barrier;
  f->site = site;
  yield(f, false);
  return f->out;
}

constexpr uint64_t kPoison4 = 0x7fc0dead;             // a quiet NaN as float; 2143346349 as int
constexpr uint64_t kPoison8 = 0x7ff8deaddeaddeadull;  // a quiet NaN as double

void complete(Block& b, Worker* w, int warp, const WarpOp& op) {
  Fiber* lanes[32] = {};
  for (int l = 0; l < 32; ++l)
    if (op.mask >> l & 1u) lanes[l] = w->fibers[warp * 32 + l].get();
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l)
    if (lanes[l] && lanes[l]->in) ballot |= 1u << l;
  if (op.fn) {
    void* data[32] = {};
    for (int l = 0; l < 32; ++l)
      if (lanes[l]) data[l] = reinterpret_cast<void*>(uintptr_t(lanes[l]->in));
    op.fn(data);
  }
  std::vector<Fiber*> list;
  for (int l = 0; l < 32; ++l) {
    Fiber* f = lanes[l];
    if (!f) continue;
    switch (op.kind) {
      case kBallot: f->out = ballot; break;
      case kAny: f->out = ballot != 0; break;
      case kAll: f->out = ballot == op.mask; break;
      case kSyncwarp:
      case kMma:
      case kLdmatrixX4:
      case kLdmatrixX4Trans:
      case kLdmatrixX2:
      case kLdmatrixX2Trans: f->out = 0; break;
      default: {
        const int width = op.width, base = l & ~(width - 1), arg = f->arg;
        int src = l;
        if (op.kind == kShflIdx) src = base + (arg & (width - 1));
        if (op.kind == kShflUp) src = (l - base) >= arg ? l - arg : l;
        if (op.kind == kShflDown) src = (l - base) + arg < width ? l + arg : l;
        if (op.kind == kShflXor) {
          src = l ^ arg;
          if (src < base || src >= base + width) src = l;
        }
        const bool active = src >= 0 && src < 32 && lanes[src];
        f->out = active ? lanes[src]->in : (op.size == 8 ? kPoison8 : kPoison4);
      }
    }
    list.push_back(f);
  }
  if (op.kind == kSyncwarp) ++b.warp_epoch[warp];
  push_ordered(b, list);
}

uint64_t warp_op(Site site, int kind, unsigned mask, uint64_t in, int size, int arg, int width,
                 void (*fn)(void* const*) = nullptr) {
  Fiber* f = current(warp_kind_name(kind));
  Block& b = *f->block;
  Worker* w = g_worker;
  // the caller, for a report (built only when there is one to make)
  const auto who = [&] {
    return thread_str(b, f->tid) + " calls " + warp_kind_name(kind) + " at " + site_str(site) + " with mask " +
           lanes_str(mask);
  };
  if (!(mask >> f->lane & 1u)) fail(f, who() + ", which excludes the calling lane " + std::to_string(f->lane));
  const int lanes_here = std::min(32, b.nthreads - f->warp * 32);
  const unsigned exist = lanes_here == 32 ? ~0u : (1u << lanes_here) - 1;
  if (mask & ~exist)
    fail(f, who() + ", which names lanes " + lanes_str(mask & ~exist) + " that do not exist (this warp has " +
                std::to_string(lanes_here) + " threads)");
  if (mask & b.exited_lanes[f->warp])
    fail(f, who() + ", which names lanes " + lanes_str(mask & b.exited_lanes[f->warp]) + " that have exited");
  if (kind <= kShflXor && (width < 1 || width > 32 || (width & (width - 1))))
    fail(f, who() + " and width " + std::to_string(width) + ": width must be a power of 2 from 1 to 32");
  auto& pending = b.pending[f->warp];
  WarpOp* op = nullptr;
  for (WarpOp& p : pending) {
    if (p.mask == mask) {
      if (p.kind != kind || p.width != width || p.size != size || p.fn != fn)
        fail(f, who() + " while lanes " + lanes_str(p.arrived) + " of its warp wait at " + warp_kind_name(p.kind) +
                    " at " + site_str(p.site) + " with the same mask: the lanes meet at different collectives");
      op = &p;
    } else if (p.mask & mask) {
      fail(f, who() + " while lanes " + lanes_str(p.arrived) + " of its warp wait at " + warp_kind_name(p.kind) + " at " +
                  site_str(p.site) + " with mask " + lanes_str(p.mask) + ": the lanes disagree on the mask");
    }
  }
  if (!op) {
    pending.push_back(WarpOp{kind, mask, 0u, width, size, site, fn});
    op = &pending.back();
  }
  op->arrived |= 1u << f->lane;
  f->state = State::warp;
  f->site = site;
  f->kind = kind;
  f->mask = mask;
  f->in = in;
  f->arg = arg;
  if (op->arrived == op->mask) {
    const WarpOp done = *op;
    pending.erase(pending.begin() + (op - pending.data()));
    complete(b, w, f->warp, done);
  }
  yield(f, false);
  return f->out;
}

}  // namespace

void syncthreads(Site site) { barrier(site, 0, 0); }

int syncthreads_reduce(Site site, int kind, int predicate) { return int(barrier(site, kind + 1, predicate)); }

void syncwarp(Site site, unsigned mask) { warp_op(site, kSyncwarp, mask, 0, 4, 0, 32); }

unsigned vote(Site site, int kind, unsigned mask, int predicate) {
  return unsigned(warp_op(site, kBallot + kind, mask, predicate != 0, 4, 0, 32));
}

uint64_t shuffle(Site site, int kind, unsigned mask, uint64_t bits, int size, int arg, int width) {
  return warp_op(site, kind, mask, bits, size, arg, width);
}

void warp_collective(Site site, unsigned mask, void* data, void (*fn)(void* const* lanes)) {
  warp_op(site, kMma, mask, uint64_t(reinterpret_cast<uintptr_t>(data)), 8, 0, 32, fn);
}

unsigned activemask() {
  Fiber* f = current("__activemask");
  const Block& b = *f->block;
  const int lanes_here = std::min(32, b.nthreads - f->warp * 32);
  const unsigned exist = lanes_here == 32 ? ~0u : (1u << lanes_here) - 1;
  return exist & ~b.exited_lanes[f->warp];
}

void device_assert_failed(const char* condition, Site site) {
  Fiber* f = current("device assertion");
  fail(f, "device assertion `" + std::string(condition) + "` failed at " + site_str(site) + " in " +
              thread_str(*f->block, f->tid));
}

// ------------------------------------------------- asynchronous copies and ldmatrix (in fibers)

void cp_async(Site site, void* dst, const void* src, int bytes, bool full) {
  Fiber* f = current("cp.async");
  Block& b = *f->block;
  const Launch& L = *b.L;
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  const auto bad = [&](const std::string& why) {
    fail(f, thread_str(b, f->tid) + "'s cp.async of " + std::to_string(bytes) + " bytes at " + site_str(site) +
                " from " + hex(s) + " to " + hex(d) + ": " + why);
  };
  if (d % bytes) bad("the destination is not aligned to " + std::to_string(bytes) + " bytes");
  if (full && s % bytes) bad("the source is not aligned to " + std::to_string(bytes) + " bytes");
  const char* name;
  Region* r = shared_region(f->worker, d, size_t(bytes), &name);
  if (!r) bad("the destination is not in shared memory");
  if (full && (f->worker->tls.contains(s) || f->worker->dyn.contains(s)))
    bad("the source is in shared memory (cp.async copies global memory to shared memory)");
  const uint32_t code = site_code(b, site);
  if (full && L.hooks && L.opt.memcheck && !L.buffers.empty()) global_access(f, s, size_t(bytes), false, code);
  if (L.hooks && L.opt.race_check) issue_copy(f, *r, name, d, size_t(bytes), code);
  AsyncCopy c{d, f->committed, code, b.epoch, b.warp_epoch[f->warp], uint8_t(bytes), full, {}};
  if (full) std::memcpy(c.data, src, size_t(bytes));  // a zero-fill copy reads nothing
  f->copies.push_back(c);
  ++b.in_flight;
}

void cp_async_commit() { ++current("cp.async.commit_group")->committed; }

void cp_async_wait(int pending) {
  Fiber* f = current("cp.async.wait_group");
  if (f->committed <= uint32_t(pending)) return;
  const uint32_t complete = f->committed - uint32_t(pending);  // groups [0, complete) complete now
  size_t n = 0;
  for (; n < f->copies.size() && f->copies[n].group < complete; ++n) land_copy(f, f->copies[n]);
  f->copies.erase(f->copies.begin(), f->copies.begin() + ptrdiff_t(n));
  f->block->in_flight -= int(n);
}

namespace {

// One lane's part of an ldmatrix, on its stack while it waits at the collective.
struct LdmatrixLane {
  const void* row;
  uint32_t* regs;
  Site site;
};

// Runs once per warp-wide ldmatrix, on the lane that arrives last: checks the row each supplying lane
// names and reads it (as that lane's read, for the race checker), then hands every lane its fragment:
// register j of lane l holds the elements (low half first) of matrix j at row l / 4, columns
// 2 (l % 4) and 2 (l % 4) + 1, or with .trans at rows 2 (l % 4) and 2 (l % 4) + 1, column l / 4.
template <int Matrices, bool Trans>
void ldmatrix_rows(void* const* lanes) {
  constexpr int kind = Matrices == 4 ? (Trans ? kLdmatrixX4Trans : kLdmatrixX4) : (Trans ? kLdmatrixX2Trans : kLdmatrixX2);
  Fiber* cur = g_cur;
  Block& b = *cur->block;
  Worker* w = cur->worker;
  const bool race_check = b.L->hooks && b.L->opt.race_check;
  uint16_t m[Matrices][8][8];
  for (int l = 0; l < 8 * Matrices; ++l) {  // lane l supplies row l % 8 of matrix l / 8
    const LdmatrixLane& lane = *static_cast<const LdmatrixLane*>(lanes[l]);
    Fiber* f = w->fibers[cur->warp * 32 + l].get();
    const uintptr_t a = reinterpret_cast<uintptr_t>(lane.row);
    const auto bad = [&](const char* why) {
      fail(cur, std::string(warp_kind_name(kind)) + " at " + site_str(lane.site) + ": lane " + std::to_string(l) +
                    ", " + thread_str(b, f->tid) + ", supplies " + hex(a) + " as the address of row " +
                    std::to_string(l % 8) + " of matrix " + std::to_string(l / 8) + ", which " + why);
    };
    if (a % 16) bad("is not 16-byte aligned (a row is 8 16-bit elements starting at a 16-byte boundary)");
    const char* name;
    Region* r = shared_region(w, a, 16, &name);
    if (!r) bad("does not hold 16 bytes of shared memory (ldmatrix reads shared memory only)");
    if (race_check) shared_access(f, *r, name, a, 16, false, site_code(b, lane.site));
    std::memcpy(m[l / 8][l % 8], lane.row, 16);
  }
  for (int l = 0; l < 32; ++l) {
    const LdmatrixLane& lane = *static_cast<const LdmatrixLane*>(lanes[l]);
    const int g = l / 4, c = 2 * (l % 4);
    for (int j = 0; j < Matrices; ++j) {
      const uint32_t lo = Trans ? m[j][c][g] : m[j][g][c], hi = Trans ? m[j][c + 1][g] : m[j][g][c + 1];
      lane.regs[j] = lo | hi << 16;
    }
  }
}

}  // namespace

void ldmatrix(Site site, int matrices, bool trans, const void* row, uint32_t* regs) {
  LdmatrixLane lane{row, regs, site};
  const int kind = matrices == 4 ? (trans ? kLdmatrixX4Trans : kLdmatrixX4) : (trans ? kLdmatrixX2Trans : kLdmatrixX2);
  void (*const rows)(void* const*) = matrices == 4 ? (trans ? &ldmatrix_rows<4, true> : &ldmatrix_rows<4, false>)
                                                   : (trans ? &ldmatrix_rows<2, true> : &ldmatrix_rows<2, false>);
  warp_op(site, kind, 0xffffffffu, uint64_t(reinterpret_cast<uintptr_t>(&lane)), 8, 0, 32, rows);
}

// ---------------------------------------------------------------------------------- 16-bit floats

float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    const float v = float(mant) * (1.0f / 16777216.0f);  // mant * 2^-24, exact
    std::memcpy(&bits, &v, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return uint16_t(sign | 0x7e00 | ((ax >> 13) & 0x3ff));  // NaN stays NaN (quiet)
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00);                         // rounds to infinity
  if (ax < 0x38800000u) {  // below the smallest normal half: a subnormal or zero
    float a;
    std::memcpy(&a, &ax, 4);
    return uint16_t(sign | uint32_t(std::nearbyint(a * 16777216.0f)));  // units of 2^-24, ties to even
  }
  const uint32_t r = ax - 0x38000000u;  // exponent rebiased from 127 to 15
  return uint16_t(sign | ((r + 0xfff + ((r >> 13) & 1)) >> 13));
}

uint16_t float_to_bfloat16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40);  // NaN stays NaN (quiet)
  return uint16_t((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

}  // namespace fcsim

// ------------------------------------------------------------------------------------- atomics

namespace {

template <typename T, typename F>
T atomic_update(T* address, F f) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  auto* p = reinterpret_cast<Bits*>(address);
  Bits old_bits = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    T old_value;
    std::memcpy(&old_value, &old_bits, sizeof(T));
    const T new_value = f(old_value);
    Bits new_bits;
    std::memcpy(&new_bits, &new_value, sizeof(T));
    if (__atomic_compare_exchange_n(p, &old_bits, new_bits, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
      return old_value;
  }
}

}  // namespace

#define FCSIM_ATOMIC_DEFS(T)                                                                              \
  T atomicAdd(T* address, T value) { return atomic_update(address, [&](T old) { return static_cast<T>(old + value); }); } \
  T atomicExch(T* address, T value) { return atomic_update(address, [&](T) { return value; }); }             \
  T atomicCAS(T* address, T compare, T value) {                                                             \
    T expected = compare;                                                                                   \
    __atomic_compare_exchange(address, &expected, &value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);        \
    return expected;                                                                                        \
  }
#define FCSIM_ATOMIC_MINMAX_DEFS(T)                                                                     \
  T atomicMin(T* address, T value) { return atomic_update(address, [&](T old) { return value < old ? value : old; }); } \
  T atomicMax(T* address, T value) { return atomic_update(address, [&](T old) { return old < value ? value : old; }); }
FCSIM_ATOMIC_DEFS(int)
FCSIM_ATOMIC_DEFS(unsigned)
FCSIM_ATOMIC_DEFS(long long)
FCSIM_ATOMIC_DEFS(unsigned long long)
FCSIM_ATOMIC_DEFS(float)
FCSIM_ATOMIC_DEFS(double)
FCSIM_ATOMIC_MINMAX_DEFS(int)
FCSIM_ATOMIC_MINMAX_DEFS(unsigned)
FCSIM_ATOMIC_MINMAX_DEFS(long long)
FCSIM_ATOMIC_MINMAX_DEFS(unsigned long long)

// ---------------------------------------------------------- the kernel translation unit's hooks
// gcc's -fsanitize=thread instrumentation of the kernel files calls these for every memory
// access it cannot prove thread-private; the address and size go to the checks above. Hidden, so
// that they never interpose on a real ThreadSanitizer runtime in the same process.
#define FCSIM_HOOK extern "C" __attribute__((visibility("hidden")))
#define FCSIM_ACCESS_HOOKS(n)                                                                     \
  FCSIM_HOOK void __tsan_read##n(void* p) { fcsim::on_access(p, n, false, __builtin_return_address(0)); }  \
  FCSIM_HOOK void __tsan_write##n(void* p) { fcsim::on_access(p, n, true, __builtin_return_address(0)); }  \
  FCSIM_HOOK void __tsan_unaligned_read##n(void* p) { fcsim::on_access(p, n, false, __builtin_return_address(0)); } \
  FCSIM_HOOK void __tsan_unaligned_write##n(void* p) { fcsim::on_access(p, n, true, __builtin_return_address(0)); }
FCSIM_ACCESS_HOOKS(1)
FCSIM_ACCESS_HOOKS(2)
FCSIM_ACCESS_HOOKS(4)
FCSIM_ACCESS_HOOKS(8)
FCSIM_ACCESS_HOOKS(16)
FCSIM_HOOK void __tsan_read_range(void* p, unsigned long n) {
  if (n) fcsim::on_access(p, n, false, __builtin_return_address(0));
}
FCSIM_HOOK void __tsan_write_range(void* p, unsigned long n) {
  if (n) fcsim::on_access(p, n, true, __builtin_return_address(0));
}
FCSIM_HOOK void __tsan_init() {}
FCSIM_HOOK void __tsan_func_entry(void*) {}
FCSIM_HOOK void __tsan_func_exit() {}
FCSIM_HOOK void __tsan_vptr_read(void**) {}
FCSIM_HOOK void __tsan_vptr_update(void**, void*) {}
