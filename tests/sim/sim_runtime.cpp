// The emulator's scheduler and instructions (declared in tests/sim/include/sim/runtime.h). Threads are
// coroutines with their own stacks (a guard page below each): on x86-64 a minimal context switch that saves
// the callee-saved registers and the FP control words (glibc's swapcontext makes a system call per switch,
// which the thousands of warp barriers of one block would pay), elsewhere ucontext.
#include "kernels/half.h"
#include "sim/runtime.h"

#include <cudaTypedefs.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#if defined(__x86_64__) && !defined(POLDER_SIM_UCONTEXT)
#define POLDER_SIM_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace sim {
namespace {

// ---- coroutines -------------------------------------------------------------------------------------------
#if POLDER_SIM_ASM_SWITCH
extern "C" void polder_sim_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .type polder_sim_switch, @function
polder_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  fnstcw (%rsp)
  stmxcsr 8(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size polder_sim_switch, .-polder_sim_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
struct Context {
  void* sp = nullptr;
};
#else
struct Context {
  ucontext_t uc;
};
#endif

constexpr size_t kStack = 256 * 1024;

enum class State { ready, block_barrier, warp_barrier, done, mbar_wait };

struct Copy {
  char* dst;
  const char* src;
  int size;
};

// A TMA box copy issued, landing when its thread next yields.
struct BulkCopy {
  uint32_t dst, bar;
  int c[5];
  uint64_t map[16];
};

struct Thread {
  Context ctx;
  char* stack = nullptr;  // lowest usable byte (the guard page is below it)
  uint3 idx;
  State state = State::ready;
  std::vector<Copy> open;                  // issued, not yet committed
  std::deque<std::vector<Copy>> groups;    // committed, oldest first
  std::vector<BulkCopy> bulk;              // TMA copies not landed yet
  uint32_t wait_bar = 0, wait_parity = 0;  // State::mbar_wait: the barrier and parity awaited
};

struct WgmmaRec {
  float* d;
  int n;
  uint64_t da, db;
  uint32_t a[4];
  bool reg_a, scale_d, trans_a, trans_b;
  MmaType type;
};

// A warpgroup's wgmma operations not run yet (WgmmaTiming::at_wait): issued, and committed groups.
struct WgPending {
  std::vector<std::vector<WgmmaRec>> open;
  std::deque<std::vector<std::vector<WgmmaRec>>> groups;
};

struct Mbar {
  uint32_t count = 0, pending = 0, phase = 0;
  int64_t tx = 0;
};

// A warp collective in progress: the lanes that arrived, the instruction they are at, and each lane's record.
struct WarpSlot {
  const char* op = nullptr;
  uint64_t key = 0;  // the instruction's variant (shuffle kind, .trans, .x4, ...): must agree across lanes
  int arrived = 0;
  void* rec[32] = {};
};

struct StaticRegion {
  uint32_t addr;
  size_t bytes;
  uint64_t poisoned_in = 0;  // the block (launch-wide serial) in which it was last poisoned
};

struct Sim {
  Context sched;
  std::vector<Thread> threads;
  std::vector<WarpSlot> warps;
  char* stacks = nullptr;
  size_t stacks_for = 0;
  int current = -1;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> dyn;  // dynamic shared memory of the running block (128-byte aligned start)
  unsigned char* dyn_base = nullptr;
  size_t dyn_bytes = 0;
  // The shared window of the running launch (as on hardware, one block's shared memory is addressed from 0
  // and a wgmma descriptor's 14-bit start field, addr >> 4, reaches 256 KiB): the static __shared__ arrays
  // from 0 in the order they register (first execution of their declaration in the launch), each at its
  // declared alignment, then the dynamic memory at the next 1024-byte boundary. The dynamic memory's address
  // is fixed when the launch first needs it (a pointer into it converted, or an address outside every static
  // array used); a static array registering after that goes past the dynamic memory.
  std::map<const void*, StaticRegion, std::greater<const void*>> statics;  // by start, descending
  uint32_t next_static = 0;
  size_t static_bytes = 0;  // the registered arrays' sizes, summed
  uint32_t dyn_addr = 0;
  bool dyn_placed = false;
  uint64_t block_serial = 0;
  std::map<const void*, int> smem_optin;
  cudaError_t last_error = 0;
  CopyTiming copy_timing = CopyTiming::at_wait;
  Counters counters;
  int arch = 8;
  int sm_count = 132;
  uint64_t clock = 0;
  std::map<uint32_t, Mbar> mbars;  // the running block's mbarriers by shared address
  std::vector<WarpSlot> wgs;       // warpgroup collectives (wgmma, setmaxnreg)
  std::vector<WgPending> wgp;      // per warpgroup
  WgmmaTiming wgmma_timing = WgmmaTiming::at_wait;
} g;

void land_bulk(const BulkCopy& c);

Thread& cur() {
  if (g.current < 0) fail("a device function was called outside a kernel launch");
  return g.threads[static_cast<size_t>(g.current)];
}

[[noreturn]] void thread_entry() {
  (*g.body)();
  Thread& t = cur();
  for (const BulkCopy& c : t.bulk) land_bulk(c);
  t.bulk.clear();
  for (const auto& grp : t.groups) g.counters.cp_async_dropped += grp.size();
  g.counters.cp_async_dropped += t.open.size();
  t.open.clear();
  t.groups.clear();
  t.state = State::done;
#if POLDER_SIM_ASM_SWITCH
  void* dummy;
  polder_sim_switch(&dummy, g.sched.sp);
#else
  setcontext(&g.sched.uc);
#endif
  std::abort();  // never resumed
}

void start_thread(Thread& t) {
#if POLDER_SIM_ASM_SWITCH
  // The frame polder_sim_switch pops: FP control words, r15..rbp, then the return address (thread_entry) and
  // a null slot that leaves rsp % 16 == 8 at thread_entry's first instruction, as after a call.
  auto* top = reinterpret_cast<uint64_t*>(t.stack + kStack);
  uint64_t* sp = top - 10;
  std::memset(sp, 0, 10 * sizeof(uint64_t));
  uint16_t fcw;
  uint32_t mxcsr;
  asm volatile("fnstcw %0" : "=m"(fcw));
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  std::memcpy(sp, &fcw, sizeof fcw);
  std::memcpy(sp + 1, &mxcsr, sizeof mxcsr);
  sp[8] = reinterpret_cast<uint64_t>(&thread_entry);
  t.ctx.sp = sp;
#else
  getcontext(&t.ctx.uc);
  t.ctx.uc.uc_stack.ss_sp = t.stack;
  t.ctx.uc.uc_stack.ss_size = kStack;
  t.ctx.uc.uc_link = nullptr;
  makecontext(&t.ctx.uc, reinterpret_cast<void (*)()>(&thread_entry), 0);
#endif
}

void resume(int i) {
  g.current = i;
  Thread& t = g.threads[static_cast<size_t>(i)];
  threadIdx = t.idx;
#if POLDER_SIM_ASM_SWITCH
  polder_sim_switch(&g.sched.sp, t.ctx.sp);
#else
  swapcontext(&g.sched.uc, &t.ctx.uc);
#endif
  g.current = -1;
}

// Back to the scheduler until this thread is made ready again.
void yield(State s) {
  Thread& t = cur();
  if (!t.bulk.empty()) {  // this thread's TMA copies land now (see tma_load)
    std::vector<BulkCopy> bulk;
    bulk.swap(t.bulk);
    for (const BulkCopy& c : bulk) land_bulk(c);
  }
  t.state = s;
#if POLDER_SIM_ASM_SWITCH
  polder_sim_switch(&t.ctx.sp, g.sched.sp);
#else
  swapcontext(&t.ctx.uc, &g.sched.uc);
#endif
  threadIdx = t.idx;
}

void ensure_stacks(size_t n) {
  if (g.stacks_for >= n) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE)), each = kStack + page;
  if (g.stacks) munmap(g.stacks, g.stacks_for * each);
  void* m =
      mmap(nullptr, n * each, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) fail("cannot map %zu thread stacks", n);
  g.stacks = static_cast<char*>(m);
  g.stacks_for = n;
  for (size_t i = 0; i < n; ++i) mprotect(g.stacks + i * each, page, PROT_NONE);  // overflow: a fault
  g.threads.assign(n, Thread{});
  for (size_t i = 0; i < n; ++i) g.threads[i].stack = g.stacks + i * each + page;
}

// No thread can run: name, per warp, where its lanes are.
[[noreturn]] void deadlock(unsigned nt) {
  std::string what;
  for (unsigned w = 0; w * 32 < nt; ++w) {
    int n[5] = {};
    for (unsigned l = w * 32; l < std::min(nt, w * 32 + 32); ++l) ++n[static_cast<int>(g.threads[l].state)];
    const char* op = g.warps[w].op          ? g.warps[w].op
                     : g.wgs[w / 4].arrived ? g.wgs[w / 4].op
                                            : "a warp collective";
    char buf[200];
    if (n[4] > 0)
      std::snprintf(buf, sizeof buf,
                    "; warp %u: %d at __syncthreads, %d at %s, %d at an mbarrier wait, %d exited", w, n[1],
                    n[2], op, n[4], n[3]);
    else
      std::snprintf(buf, sizeof buf, "; warp %u: %d at __syncthreads, %d at %s, %d exited", w, n[1], n[2], op,
                    n[3]);
    what += buf;
  }
  for (const auto& [addr, m] : g.mbars) {
    std::string warps;
    uint32_t parity = 0;
    unsigned last = ~0u;
    for (unsigned i = 0; i < nt; ++i)
      if (g.threads[i].state == State::mbar_wait && g.threads[i].wait_bar == addr && i / 32 != last) {
        parity = g.threads[i].wait_parity;
        last = i / 32;
        char w[16];
        std::snprintf(w, sizeof w, " %u", last);
        warps.append(w);
      }
    if (warps.empty()) continue;
    char buf[300];
    std::snprintf(
        buf, sizeof buf,
        "; mbarrier at shared 0x%x (phase %u, %u of %u arrivals pending, tx count %lld) awaited with "
        "parity %u by warps%s",
        addr, m.phase, m.pending, m.count, static_cast<long long>(m.tx), parity, warps.c_str());
    what += buf;
  }
  fail("deadlock in block (%u,%u,%u) of %u threads%s", blockIdx.x, blockIdx.y, blockIdx.z, nt, what.c_str());
}

void run_block(unsigned nt, bool reverse) {
  for (unsigned i = 0; i < nt; ++i) {
    Thread& t = g.threads[i];
    t.idx = {i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y)};
    t.state = State::ready;
    t.open.clear();
    t.groups.clear();
    t.bulk.clear();
    start_thread(t);
  }
  for (auto& w : g.warps) w = WarpSlot{};
  for (auto& w : g.wgs) w = WarpSlot{};
  for (auto& w : g.wgp) w = WgPending{};
  g.mbars.clear();
  const unsigned nw = (nt + 31) / 32;
  for (;;) {
    // Each warp in turn runs as far as it can (to a __syncthreads or its exit) before the next one starts:
    // the widest divergence between warps that the barriers allow, which is where a missing barrier shows.
    bool ran = false;
    for (unsigned k = 0; k < nw; ++k) {
      const unsigned w = reverse ? nw - 1 - k : k;
      for (bool again = true; again;) {
        again = false;
        for (unsigned i = w * 32; i < std::min(nt, w * 32 + 32); ++i) {
          if (g.threads[i].state != State::ready) continue;
          resume(static_cast<int>(i));
          ran = again = true;
        }
      }
    }
    unsigned done = 0, at_barrier = 0;
    for (unsigned i = 0; i < nt; ++i) {
      done += g.threads[i].state == State::done;
      at_barrier += g.threads[i].state == State::block_barrier;
    }
    if (done == nt) {
      for (size_t w = 0; w < g.wgp.size(); ++w)
        if (!g.wgp[w].open.empty() || !g.wgp[w].groups.empty())
          fail(
              "block (%u,%u,%u) ended with wgmma operations of warpgroup %zu not waited for (%zu groups, %zu "
              "uncommitted)",
              blockIdx.x, blockIdx.y, blockIdx.z, w, g.wgp[w].groups.size(), g.wgp[w].open.size());
      return;
    }
    if (at_barrier == nt - done) {
      if (done != 0)
        fail("__syncthreads reached by %u threads of block (%u,%u,%u) while %u have exited", at_barrier,
             blockIdx.x, blockIdx.y, blockIdx.z, done);
      for (unsigned i = 0; i < nt; ++i) g.threads[i].state = State::ready;
      ++g.counters.syncthreads;
      continue;
    }
    if (!ran) deadlock(nt);
  }
}

// Arrives at a warp collective with this lane's record; the last lane to arrive runs exec over all 32 records
// (while the others are suspended, so their records are alive) and releases the warp.
void collective(const char* op, uint64_t key, unsigned mask, void* rec, void (*exec)(void** recs)) {
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned nt = blockDim.x * blockDim.y * blockDim.z, w = tid / 32, lane = tid % 32;
  if (mask != 0xffffffffu) fail("%s with mask 0x%08x: only full-warp masks are modelled", op, mask);
  if (w * 32 + 32 > nt) fail("%s in a partial warp (block of %u threads): not modelled", op, nt);
  WarpSlot& s = g.warps[w];
  if (s.arrived == 0) {
    s.op = op;
    s.key = key;
  } else if (s.op != op || s.key != key) {
    fail(
        "warp %u of block (%u,%u,%u): lane %u reaches %s (variant %llu) while %d lanes wait at %s (variant "
        "%llu)",
        w, blockIdx.x, blockIdx.y, blockIdx.z, lane, op, static_cast<unsigned long long>(key), s.arrived,
        s.op, static_cast<unsigned long long>(s.key));
  }
  s.rec[lane] = rec;
  if (++s.arrived < 32) {
    yield(State::warp_barrier);
    return;
  }
  exec(s.rec);
  s.arrived = 0;
  s.op = nullptr;
  for (unsigned l = 0; l < 32; ++l)
    if (l != lane) g.threads[w * 32 + l].state = State::ready;
}

// The shared address of the dynamic memory in this launch (placed after the static arrays registered so far
// on first use).
uint32_t dyn_addr() {
  if (!g.dyn_placed) {
    g.dyn_addr = (g.next_static + 1023u) & ~1023u;
    if (g.dyn_addr + g.dyn_bytes > 0x40000u)
      fail("%zu bytes of dynamic shared memory at shared 0x%x: past the 256 KiB window (not modelled)",
           g.dyn_bytes, g.dyn_addr);
    g.next_static = g.dyn_addr + static_cast<uint32_t>((g.dyn_bytes + 127) / 128 * 128);
    g.dyn_placed = true;
  }
  return g.dyn_addr;
}

// Shared address -> pointer, checking `bytes` fit in one region and the address is `align`-aligned.
unsigned char* shared_at(uint32_t addr, size_t bytes, size_t align, const char* what) {
  if (addr % align != 0) fail("%s: shared address 0x%x is not %zu-byte aligned", what, addr, align);
  for (const auto& [p, r] : g.statics)
    if (addr >= r.addr && addr < r.addr + r.bytes) {
      if (addr + bytes > r.addr + r.bytes)
        fail("%s: shared bytes [0x%x, 0x%zx) run past a static __shared__ array of %zu bytes", what, addr,
             addr + bytes, r.bytes);
      return static_cast<unsigned char*>(const_cast<void*>(p)) + (addr - r.addr);
    }
  const uint32_t base = dyn_addr();
  if (addr >= base) {
    if (addr + bytes > base + g.dyn_bytes)
      fail("%s: shared bytes [0x%x, 0x%zx) outside the block's %zu bytes of dynamic shared memory (at 0x%x)",
           what, addr, addr + bytes, g.dyn_bytes, base);
    return g.dyn_base + (addr - base);
  }
  fail("%s: shared address 0x%x is in no shared array of the block (dynamic shared memory at 0x%x)", what,
       addr, base);
}

}  // namespace

void fail(const char* fmt, ...) {
  std::fflush(stdout);
  std::fputs("sim: ", stderr);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fputc('\n', stderr);
  std::fflush(stderr);
  std::abort();
}

Counters& counters() {
  return g.counters;
}

void set_arch(int major) {
  if (major != 8 && major != 9) fail("set_arch(%d): only 8 (sm_80) and 9 (sm_90) are modelled", major);
  g.arch = major;
}
int arch_major() {
  return g.arch;
}
size_t max_smem_optin() {
  return g.arch == 9 ? kMaxSmemOptinSm90 : kMaxSmemOptin;
}
int sm_count() {
  return g.sm_count;
}
void set_sm_count(int n) {
  if (n < 1 || n > 132) fail("set_sm_count(%d): expected 1..132", n);
  g.sm_count = n;
}
uint64_t clock64() {
  return ++g.clock;
}

cudaError_t take_last_error() {
  const cudaError_t e = g.last_error;
  g.last_error = 0;
  return e;
}
void set_last_error(cudaError_t e) {
  if (g.last_error == 0) g.last_error = e;
}

// The opt-in sizes are set by the host thread (cudaFuncSetAttribute) while a stream worker may be launching.
namespace {
std::mutex smem_optin_mutex;
}  // namespace
void set_max_dynamic_smem(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(smem_optin_mutex);
  g.smem_optin[kernel] = bytes;
}

cudaError_t check_launch_config(const void* kernel, dim3 grid, dim3 block, size_t smem) {
  constexpr cudaError_t kInvalidValue = 1, kInvalidConfiguration = 9;
  const uint64_t nt = uint64_t(block.x) * block.y * block.z;
  if (nt == 0 || nt > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    std::fprintf(stderr, "sim: launch rejected: grid (%u,%u,%u), block (%u,%u,%u)\n", grid.x, grid.y, grid.z,
                 block.x, block.y, block.z);
    return kInvalidConfiguration;
  }
  size_t allowed = 48 * 1024;
  {
    std::lock_guard<std::mutex> lock(smem_optin_mutex);
    const auto opt = g.smem_optin.find(kernel);
    if (opt != g.smem_optin.end()) allowed = std::max<size_t>(allowed, static_cast<size_t>(opt->second));
  }
  if (smem > allowed || smem > max_smem_optin()) {
    std::fprintf(stderr,
                 "sim: launch rejected: %zu bytes of dynamic shared memory, %zu allowed for this kernel "
                 "(cudaFuncSetAttribute raises 48 KiB up to %zu)\n",
                 smem, allowed, max_smem_optin());
    return kInvalidValue;
  }
  return 0;
}

cudaError_t launch_impl(const void* kernel, const std::function<void()>& body, dim3 grid, dim3 block,
                        size_t smem) {
  if (g.current >= 0) fail("a kernel launched another kernel: not modelled");
  if (const cudaError_t e = check_launch_config(kernel, grid, block, smem); e != 0) {
    set_last_error(e);
    return e;
  }
  const uint64_t nt = uint64_t(block.x) * block.y * block.z;
  ++g.counters.launches;
  ensure_stacks(nt);
  g.warps.assign((nt + 31) / 32, WarpSlot{});
  g.wgs.assign((nt + 127) / 128, WarpSlot{});
  g.wgp.assign((nt + 127) / 128, WgPending{});
  g.body = &body;
  g.dyn.assign(smem + 128, 0xFF);
  g.dyn_base = g.dyn.data() + (128 - reinterpret_cast<uintptr_t>(g.dyn.data()) % 128) % 128;
  g.dyn_bytes = smem;
  g.statics.clear();  // this kernel's arrays register afresh, from shared address 0
  g.next_static = 0;
  g.static_bytes = 0;
  g.dyn_placed = false;
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        ++g.block_serial;
        ++g.counters.blocks;
        std::memset(g.dyn_base, 0xFF, smem);
        // Alternate the order of the warps (first to last, last to first), so that a result depending on it
        // shows.
        run_block(static_cast<unsigned>(nt), g.block_serial % 2 == 0);
      }
  g.body = nullptr;
  return 0;
}

void syncthreads() {
  cur();
  yield(State::block_barrier);
}

namespace {
struct ShflRec {
  uint64_t in, out;
  int kind, arg, width;
};
void shfl_exec(void** recs) {
  for (int l = 0; l < 32; ++l) {
    auto* r = static_cast<ShflRec*>(recs[l]);
    const int w = r->width, base = l & ~(w - 1);
    int src = l;
    switch (r->kind) {
      case 0:
        src = l ^ r->arg;
        break;
      case 1:
        src = base + (r->arg & (w - 1));
        break;
      case 2:
        src = (l - base) + r->arg < w ? l + r->arg : l;
        break;
      case 3:
        src = (l - base) - r->arg >= 0 ? l - r->arg : l;
        break;
    }
    if (src < 0 || src > 31) src = l;
    r->out = static_cast<ShflRec*>(recs[src])->in;
  }
}
}  // namespace

uint64_t shfl_bits(unsigned mask, uint64_t bits, int kind, int arg, int width) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    fail("shuffle width %d: must be a power of 2 <= 32", width);
  ShflRec r{bits, 0, kind, arg, width};
  ++g.counters.shfl;
  collective("__shfl_sync", static_cast<uint64_t>(kind), mask, &r, &shfl_exec);
  return r.out;
}

namespace {
struct VoteRec {
  int pred, kind;
  unsigned out;
};
void vote_exec(void** recs) {
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l)
    if (static_cast<VoteRec*>(recs[l])->pred != 0) ballot |= 1u << l;
  const int kind = static_cast<VoteRec*>(recs[0])->kind;
  const unsigned out = kind == 0   ? ballot
                       : kind == 1 ? unsigned(ballot != 0)
                                   : unsigned(ballot == 0xffffffffu);
  for (int l = 0; l < 32; ++l) static_cast<VoteRec*>(recs[l])->out = out;
}
}  // namespace

unsigned vote(unsigned mask, int pred, int kind) {
  static const char* const names[] = {"__ballot_sync", "__any_sync", "__all_sync"};
  if (kind < 0 || kind > 2) fail("vote kind %d", kind);
  VoteRec r{pred, kind, 0};
  collective(names[kind], 0, mask, &r, &vote_exec);
  return r.out;
}

void fence() {
  cur();
}

void* dynamic_shared() {
  cur();
  return g.dyn_base;
}

void shared_static(void* p, size_t bytes) {
  cur();
  auto it = g.statics.find(p);
  if (it == g.statics.end()) {
    // The declared alignment (__align__(n)) is not visible here, but the host object has at least it: its
    // address's alignment, 16 to 1024 bytes.
    const auto host = reinterpret_cast<uintptr_t>(p);
    const uint32_t align = static_cast<uint32_t>(std::clamp<uintptr_t>(host & (~host + 1), 16, 1024));
    const uint32_t addr = (g.next_static + align - 1) & ~(align - 1);
    g.static_bytes += bytes;
    if (g.static_bytes > 48 * 1024)
      fail("static __shared__ arrays of %zu bytes in one kernel: at most 48 KiB (ptxas rejects more)",
           g.static_bytes);
    if (g.static_bytes + g.dyn_bytes > max_smem_optin())
      fail(
          "%zu bytes of static __shared__ arrays and %zu of dynamic shared memory: at most %zu in all per "
          "block",
          g.static_bytes, g.dyn_bytes, max_smem_optin());
    if (addr + bytes > 0x40000u)
      fail("static __shared__ array of %zu bytes at shared 0x%x: past the 256 KiB window (not modelled)",
           bytes, addr);
    it = g.statics.emplace(p, StaticRegion{addr, bytes}).first;
    g.next_static = addr + static_cast<uint32_t>(bytes);
  }
  if (it->second.poisoned_in != g.block_serial) {
    std::memset(p, 0xFF, bytes);
    it->second.poisoned_in = g.block_serial;
  }
}

uint32_t cvta_shared(const void* p) {
  auto* c = static_cast<const unsigned char*>(p);
  if (c >= g.dyn_base && c < g.dyn_base + g.dyn_bytes)
    return dyn_addr() + static_cast<uint32_t>(c - g.dyn_base);
  const auto it = g.statics.lower_bound(p);  // the region starting at or below p
  if (it != g.statics.end() && c < static_cast<const unsigned char*>(it->first) + it->second.bytes)
    return it->second.addr + static_cast<uint32_t>(c - static_cast<const unsigned char*>(it->first));
  // Just past the end of the dynamic memory still maps: the access through the address is what gets checked.
  if (c >= g.dyn_base && c < g.dyn_base + 0x10000) return dyn_addr() + static_cast<uint32_t>(c - g.dyn_base);
  fail("__cvta_generic_to_shared(%p): not a shared-memory address of this block", p);
}

// ---- ldmatrix ---------------------------------------------------------------------------------------------
namespace {
struct LdsmRec {
  uint32_t addr;
  uint32_t* r;
  int num;
  bool trans;
};
void ldsm_exec(void** recs) {
  const auto* r0 = static_cast<LdsmRec*>(recs[0]);
  uint16_t m[4][8][8];
  for (int i = 0; i < r0->num; ++i)
    for (int row = 0; row < 8; ++row) {
      const uint32_t addr = static_cast<LdsmRec*>(recs[8 * i + row])->addr;
      std::memcpy(m[i][row], shared_at(addr, 16, 16, "ldmatrix"), 16);
    }
  for (int l = 0; l < 32; ++l) {
    auto* r = static_cast<LdsmRec*>(recs[l]);
    const int a = l / 4, b = 2 * (l % 4);
    for (int i = 0; i < r->num; ++i) {
      const uint16_t lo = r->trans ? m[i][b][a] : m[i][a][b], hi = r->trans ? m[i][b + 1][a] : m[i][a][b + 1];
      r->r[i] = lo | (uint32_t(hi) << 16);
    }
  }
}
}  // namespace

void ldmatrix(uint32_t* r, int num, uint32_t smem_addr, bool trans) {
  if (num != 1 && num != 2 && num != 4) fail("ldmatrix .x%d: only .x1, .x2, .x4 exist", num);
  LdsmRec rec{smem_addr, r, num, trans};
  ++g.counters.ldmatrix;
  collective("ldmatrix", static_cast<uint64_t>(num * 2 + trans), 0xffffffffu, &rec, &ldsm_exec);
}

// ---- mma.sync m16n8k16
// -------------------------------------------------------------------------------------- Fragments (PTX ISA,
// "Matrix Fragments for mma.m16n8k16" with .bf16/.f16), g = lane / 4, t = lane % 4, the element with the
// lower index in a register's low 16 bits:
//   A (16 x 16, row): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B (16 x 8, col):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C, D (16 x 8, f32): c[0], c[1] = (g, 2t), (g, 2t+1); c[2], c[3] = (g+8, 2t), (g+8, 2t+1)
namespace {
struct MmaRec {
  float* d;
  uint32_t a[4], b[2];
  MmaType type;
};
float from16(uint16_t h, MmaType type) {
  if (type == MmaType::bf16) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
#if defined(__FLT16_MAX__)
  _Float16 x;
  std::memcpy(&x, &h, 2);
  return static_cast<float>(x);
#else  // clang 14: no _Float16 on x86 (see cuda_fp16.h)
  polder::f16 x;
  x.bits = h;
  return static_cast<float>(x);
#endif
}
void mma_exec(void** recs) {
  const MmaType type = static_cast<MmaRec*>(recs[0])->type;
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const auto* r = static_cast<MmaRec*>(recs[l]);
    const int g = l / 4, t = l % 4;
    const int arow[4] = {g, g + 8, g, g + 8}, acol[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int i = 0; i < 4; ++i) {
      A[arow[i]][acol[i]] = from16(static_cast<uint16_t>(r->a[i]), type);
      A[arow[i]][acol[i] + 1] = from16(static_cast<uint16_t>(r->a[i] >> 16), type);
    }
    for (int i = 0; i < 2; ++i) {
      B[2 * t + 8 * i][g] = from16(static_cast<uint16_t>(r->b[i]), type);
      B[2 * t + 8 * i + 1][g] = from16(static_cast<uint16_t>(r->b[i] >> 16), type);
    }
    for (int i = 0; i < 4; ++i) C[g + 8 * (i / 2)][2 * t + i % 2] = r->d[i];
  }
  for (int l = 0; l < 32; ++l) {
    auto* r = static_cast<MmaRec*>(recs[l]);
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
      float acc = C[row][col];
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];  // the product is exact in fp32
      r->d[i] = acc;
    }
  }
}
}  // namespace

void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, MmaType type) {
  MmaRec rec{d, {a[0], a[1], a[2], a[3]}, {b0, b1}, type};
  ++g.counters.mma;
  collective("mma.sync.m16n8k16", static_cast<uint64_t>(type), 0xffffffffu, &rec, &mma_exec);
}

// ---- cp.async --------------------------------------------------------------------------------------------
namespace {
void land(const Copy& c) {
  if (c.size > 0) std::memcpy(c.dst, c.src, static_cast<size_t>(c.size));
  std::memset(c.dst + c.size, 0, static_cast<size_t>(16 - c.size));
}
}  // namespace

void set_copy_timing(CopyTiming timing) {
  g.copy_timing = timing;
}

void cp_async16(uint32_t smem_addr, const void* src, int src_size) {
  Thread& t = cur();
  if (src_size < 0 || src_size > 16) fail("cp.async.cg: src-size %d outside 0..16", src_size);
  if (src_size > 0 && reinterpret_cast<uintptr_t>(src) % 16 != 0)
    fail("cp.async.cg: global source %p is not 16-byte aligned", src);
  unsigned char* dst = shared_at(smem_addr, 16, 16, "cp.async.cg");
  ++g.counters.cp_async;
  const Copy c{reinterpret_cast<char*>(dst), static_cast<const char*>(src), src_size};
  if (g.copy_timing == CopyTiming::at_issue)
    land(c);
  else
    t.open.push_back(c);
}

void cp_async_commit() {
  Thread& t = cur();
  t.groups.push_back(std::move(t.open));
  t.open.clear();
}

void cp_async_wait(int pending) {
  Thread& t = cur();
  while (t.groups.size() > static_cast<size_t>(pending)) {
    for (const Copy& c : t.groups.front()) land(c);
    t.groups.pop_front();
  }
}

void syncwarp(unsigned mask) {
  collective("__syncwarp", 0, mask, nullptr, [](void**) {});
}

// ---- sm_90a ----------------------------------------------------------------------------------------------
namespace {

// A collective of the calling thread's warpgroup (128 threads, all present), as `collective` for warps.
void wg_collective(const char* op, uint64_t key, void* rec, void (*exec)(void** recs)) {
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned nt = blockDim.x * blockDim.y * blockDim.z, wg = tid / 128, i = tid % 128;
  if (wg * 128 + 128 > nt) fail("%s in a partial warpgroup (block of %u threads)", op, nt);
  WarpSlot& s = g.wgs[wg];
  if (s.arrived == 0) {
    s.op = op;
    s.key = key;
  } else if (s.op != op || s.key != key) {
    fail(
        "warpgroup %u of block (%u,%u,%u): thread %u reaches %s (variant %llu) while %d threads wait at %s "
        "(variant %llu): warpgroup instructions must be executed by all 128 threads alike",
        wg, blockIdx.x, blockIdx.y, blockIdx.z, tid, op, static_cast<unsigned long long>(key), s.arrived,
        s.op, static_cast<unsigned long long>(s.key));
  }
  static void* recs[8][128];
  if (wg >= 8) fail("%s: more than 8 warpgroups", op);
  recs[wg][i] = rec;
  if (++s.arrived < 128) {
    yield(State::warp_barrier);
    return;
  }
  exec(recs[wg]);
  s.arrived = 0;
  s.op = nullptr;
  for (unsigned l = 0; l < 128; ++l)
    if (l != i) g.threads[wg * 128 + l].state = State::ready;
}

Mbar& mbar_at(uint32_t bar, const char* what) {
  shared_at(bar, 8, 8, what);
  const auto it = g.mbars.find(bar);
  if (it == g.mbars.end())
    fail("%s: shared 0x%x holds no mbarrier initialised in block (%u,%u,%u) (thread %u)", what, bar,
         blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
  return it->second;
}

// Completes the current phase where nothing is pending, waking the threads waiting on the barrier.
void mbar_settle(uint32_t bar, Mbar& m) {
  if (m.pending != 0 || m.tx != 0) return;
  ++m.phase;
  m.pending = m.count;
  ++g.counters.mbar_phases;
  for (Thread& t : g.threads)
    if (t.state == State::mbar_wait && t.wait_bar == bar) t.state = State::ready;
}

void mbar_arrive_tx(uint32_t bar, int64_t tx, const char* what) {
  Mbar& m = mbar_at(bar, what);
  if (m.pending == 0) fail("%s: mbarrier 0x%x has no pending arrival left in its phase", what, bar);
  m.tx += tx;
  --m.pending;
  mbar_settle(bar, m);
}

// The emulator's tensor map, in the opaque 128 bytes of a CUtensorMap.
struct Map {
  uint64_t magic;
  uint64_t addr;
  uint64_t dims[5];
  uint64_t strides[4];  // bytes, of dimensions 1 .. rank - 1
  uint16_t box[5];
  uint8_t estr[5];
  uint8_t rank, esize, swizzle, oob;
};
static_assert(sizeof(Map) <= sizeof(CUtensorMap), "the emulator's map fits the driver's 128 bytes");
constexpr uint64_t kMapMagic = 0x53494d544d415031ull;

// The shared byte address a swizzled copy/read uses for the linear address a: Swizzle<b,4,3>, bits [4, 4 + b)
// XOR bits [7, 7 + b), b = log2(span / 16).
uint32_t swizzle(uint32_t a, uint32_t span) {
  return span <= 16 ? a : a ^ (((a >> 7) & (span / 16 - 1)) << 4);
}
uint32_t swizzle_span(int mode) {  // CUtensorMapSwizzle -> bytes
  return mode == CU_TENSOR_MAP_SWIZZLE_128B  ? 128
         : mode == CU_TENSOR_MAP_SWIZZLE_64B ? 64
         : mode == CU_TENSOR_MAP_SWIZZLE_32B ? 32
                                             : 0;
}

CUresult encode_tiled(CUtensorMap* out, CUtensorMapDataType type, cuuint32_t rank, void* addr,
                      const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                      const cuuint32_t* estr, CUtensorMapInterleave interleave, CUtensorMapSwizzle swz,
                      CUtensorMapL2promotion, CUtensorMapFloatOOBfill oob) {
  auto bad = [](const char* fmt, auto... v) {
    std::fprintf(stderr, "sim: cuTensorMapEncodeTiled: ");
    std::fprintf(stderr, fmt, v...);
    std::fputc('\n', stderr);
    return CUDA_ERROR_INVALID_VALUE;
  };
  static const int sizes[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2};
  if (static_cast<unsigned>(type) > CU_TENSOR_MAP_DATA_TYPE_BFLOAT16) return bad("data type %d", int(type));
  const int es = sizes[type];
  if (rank < 1 || rank > 5) return bad("rank %u (expected 1..5)", rank);
  if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) return bad("interleave %d: not modelled", int(interleave));
  if (reinterpret_cast<uintptr_t>(addr) % 16 != 0)
    return bad("global address %p is not 16-byte aligned", addr);
  Map m{};
  m.magic = kMapMagic;
  m.addr = reinterpret_cast<uint64_t>(addr);
  m.rank = static_cast<uint8_t>(rank);
  m.esize = static_cast<uint8_t>(es);
  m.swizzle = static_cast<uint8_t>(swz);
  m.oob = static_cast<uint8_t>(oob);
  for (cuuint32_t i = 0; i < rank; ++i) {
    if (dims[i] == 0 || dims[i] > (uint64_t(1) << 32))
      return bad("globalDim[%u] = %llu (expected 1..2^32)", i, (unsigned long long)dims[i]);
    if (box[i] == 0 || box[i] > 256) return bad("boxDim[%u] = %u (expected 1..256)", i, box[i]);
    if (estr[i] != 1) return bad("elementStrides[%u] = %u: only 1 is modelled", i, estr[i]);
    m.dims[i] = dims[i];
    m.box[i] = static_cast<uint16_t>(box[i]);
    m.estr[i] = 1;
    if (i > 0) {
      const uint64_t st = strides[i - 1];
      if (st % 16 != 0 || st >= (uint64_t(1) << 40))
        return bad("globalStrides[%u] = %llu (expected a multiple of 16 below 2^40)", i - 1,
                   (unsigned long long)st);
      m.strides[i - 1] = st;
    }
  }
  if (box[0] * es % 16 != 0)
    return bad("boxDim[0] x element size = %u bytes (expected a multiple of 16)", box[0] * es);
  const uint32_t span = swizzle_span(swz);
  if (span != 0 && box[0] * es > span)
    return bad("boxDim[0] x element size = %u bytes exceeds the %u-byte swizzle span", box[0] * es, span);
  std::memset(out, 0, sizeof *out);
  std::memcpy(out, &m, sizeof m);
  return CUDA_SUCCESS;
}

}  // namespace

void* tensor_map_encoder() {
  PFN_cuTensorMapEncodeTiled_v12000 fn = &encode_tiled;
  return reinterpret_cast<void*>(fn);
}

void mbar_init(uint32_t bar, uint32_t count) {
  shared_at(bar, 8, 8, "mbarrier.init");
  if (count < 1 || count > (1u << 20) - 1) fail("mbarrier.init: count %u (expected 1..2^20-1)", count);
  g.mbars[bar] = Mbar{count, count, 0, 0};
}
void mbar_arrive(uint32_t bar) {
  mbar_arrive_tx(bar, 0, "mbarrier.arrive");
}
void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  mbar_arrive_tx(bar, bytes, "mbarrier.arrive.expect_tx");
}
bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  Thread& t = cur();
  if (!t.bulk.empty()) {  // a wait is where this thread's TMA copies land (before it may suspend)
    std::vector<BulkCopy> bulk;
    bulk.swap(t.bulk);
    for (const BulkCopy& c : bulk) land_bulk(c);
  }
  const Mbar& m = mbar_at(bar, "mbarrier.try_wait.parity");
  if ((m.phase & 1u) != (parity & 1u)) return true;
  ++g.counters.mbar_blocked_waits;
  t.wait_bar = bar;
  t.wait_parity = parity & 1u;
  yield(State::mbar_wait);
  return false;
}
void fence_mbarrier_init() {
  cur();
}
void fence_proxy_async() {
  cur();
}
void prefetch_tensormap(const void* map) {
  cur();
  Map m;
  std::memcpy(&m, map, sizeof m);
  if (m.magic != kMapMagic)
    fail("prefetch.tensormap: %p is not a tensor map from cuTensorMapEncodeTiled", map);
}

void setmaxnreg(bool inc, int regs) {
  if (regs < 24 || regs > 256 || regs % 8 != 0)
    fail("setmaxnreg.%s %d: the count must be a multiple of 8 in 24..256", inc ? "inc" : "dec", regs);
  ++g.counters.setmaxnreg;
  wg_collective(inc ? "setmaxnreg.inc" : "setmaxnreg.dec", static_cast<uint64_t>(regs), nullptr,
                [](void**) {});
}

void tma_load(uint32_t dst, const void* map, uint32_t bar, const int* c, int rank) {
  Thread& t = cur();
  BulkCopy b{};
  std::memcpy(b.map, map, sizeof b.map);
  Map m;
  std::memcpy(&m, b.map, sizeof m);
  if (m.magic != kMapMagic)
    fail("cp.async.bulk.tensor: %p is not a tensor map from cuTensorMapEncodeTiled", map);
  if (m.rank != rank) fail("cp.async.bulk.tensor.%dd with a tensor map of rank %d", rank, m.rank);
  if (dst % 128 != 0) fail("cp.async.bulk.tensor: shared destination 0x%x is not 128-byte aligned", dst);
  mbar_at(bar, "cp.async.bulk.tensor (its mbarrier)");
  size_t bytes = m.esize;
  for (int i = 0; i < rank; ++i) bytes *= m.box[i];
  shared_at(dst, bytes, 128, "cp.async.bulk.tensor");
  b.dst = dst;
  b.bar = bar;
  for (int i = 0; i < rank; ++i) b.c[i] = c[i];
  ++g.counters.tma;
  t.bulk.push_back(b);
}

namespace {
void land_bulk(const BulkCopy& b) {
  Map m;
  std::memcpy(&m, b.map, sizeof m);
  const uint32_t span = swizzle_span(m.swizzle);
  int64_t n = 1;
  for (int i = 0; i < m.rank; ++i) n *= m.box[i];
  for (int64_t e = 0; e < n; ++e) {
    int64_t rest = e, off = 0;
    bool inside = true;
    for (int i = 0; i < m.rank; ++i) {
      const int64_t x = b.c[i] + rest % m.box[i];
      rest /= m.box[i];
      if (x < 0 || x >= static_cast<int64_t>(m.dims[i])) inside = false;
      off += i == 0 ? x * m.esize : x * static_cast<int64_t>(m.strides[i - 1]);
    }
    unsigned char* d = shared_at(swizzle(b.dst + static_cast<uint32_t>(e * m.esize), span), m.esize, 1,
                                 "cp.async.bulk.tensor (landing)");
    if (inside)
      std::memcpy(d, reinterpret_cast<const unsigned char*>(m.addr) + off, m.esize);
    else
      std::memset(d, 0, m.esize);
  }
  Mbar& bar = mbar_at(b.bar, "cp.async.bulk.tensor complete_tx");
  bar.tx -= n * m.esize;
  mbar_settle(b.bar, bar);
}

// The shared byte address of element (mn, k) (mn < 64 for A, < N for B; k < 16) of a wgmma operand described
// by desc (PTX ISA, "Matrix Descriptor Format" and "Shared Memory Matrix Layout"; T = 8 16-bit elements per
// 16 bytes, W the swizzle span in bytes):
//   K-major,  no swizzle: ((8,m),(T,2k)):((1T,SBO),(1,LBO))   swizzled: ((8,m),(T,2k)):((W/2,SBO),(1,T))
//   MN-major, no swizzle: ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)) swizzled: ((W/2,m),(8,k)):((1,LBO),(W/2,SBO))
// (element strides, SBO/LBO in bytes), then the swizzle of the byte address.
uint32_t operand_address(uint64_t desc, bool mn_major, uint32_t mn, uint32_t k, const char* what) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
  const uint32_t base_offset = static_cast<uint32_t>((desc >> 49) & 7),
                 mode = static_cast<uint32_t>(desc >> 62);
  if (base_offset != 0) fail("%s: descriptor base offset %u: not modelled (only 0)", what, base_offset);
  const uint32_t span = mode == 1 ? 128 : mode == 2 ? 64 : mode == 3 ? 32 : 0;
  uint32_t off;
  if (span == 0)
    off = mn_major ? (mn % 8) * 2 + (mn / 8) * sbo + (k % 8) * 16 + (k / 8) * lbo
                   : (mn % 8) * 16 + (mn / 8) * sbo + (k % 8) * 2 + (k / 8) * lbo;
  else
    off = mn_major ? (mn % (span / 2)) * 2 + (mn / (span / 2)) * lbo + (k % 8) * span + (k / 8) * sbo
                   : (mn % 8) * span + (mn / 8) * sbo + k * 2;
  return swizzle(start + off, span);
}

float read16(uint32_t addr, MmaType type, const char* what) {
  uint16_t h;
  std::memcpy(&h, shared_at(addr, 2, 2, what), 2);
  return from16(h, type);
}

// Runs one wgmma.mma_async of a warpgroup (the 128 threads' records).
void wgmma_run(WgmmaRec* recs) {
  const WgmmaRec* r0 = &recs[0];
  const int n = r0->n;
  static float A[64][16], B[16][256];
  if (r0->reg_a) {
    // A registers (PTX ISA, wgmma .m64nNk16 A fragment): warp w, g = lane / 4, t = lane % 4; register r holds
    // row 16 w + g + 8 (r % 2), columns 2 t + 8 (r / 2) (low half) and + 1 (high half).
    for (int i = 0; i < 128; ++i) {
      const WgmmaRec* r = &recs[i];
      const int w = i / 32, gq = (i % 32) / 4, t = i % 4;
      for (int q = 0; q < 4; ++q) {
        const int row = 16 * w + gq + 8 * (q % 2), col = 2 * t + 8 * (q / 2);
        A[row][col] = from16(static_cast<uint16_t>(r->a[q]), r0->type);
        A[row][col + 1] = from16(static_cast<uint16_t>(r->a[q] >> 16), r0->type);
      }
    }
  } else {
    for (uint32_t m = 0; m < 64; ++m)
      for (uint32_t k = 0; k < 16; ++k)
        A[m][k] = read16(operand_address(r0->da, r0->trans_a, m, k, "wgmma A"), r0->type, "wgmma A");
  }
  for (int j = 0; j < n; ++j)
    for (uint32_t k = 0; k < 16; ++k)
      B[k][j] = read16(operand_address(r0->db, r0->trans_b, static_cast<uint32_t>(j), k, "wgmma B"), r0->type,
                       "wgmma B");
  // D (PTX ISA, wgmma .m64nNk16 D fragment): element i of thread (warp w, g, t) is row 16 w + g + 8 ((i / 2)
  // % 2), column 8 (i / 4) + 2 t + i % 2.
  for (int i = 0; i < 128; ++i) {
    WgmmaRec* r = &recs[i];
    const int w = i / 32, gq = (i % 32) / 4, t = i % 4;
    for (int e = 0; e < n / 2; ++e) {
      const int row = 16 * w + gq + 8 * ((e / 2) % 2), col = 8 * (e / 4) + 2 * t + e % 2;
      float acc = r0->scale_d ? r->d[e] : 0.0f;
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
      r->d[e] = acc;
    }
  }
}

unsigned current_wg() {
  return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) / 128;
}

// The issue: checks that the warpgroup agrees on the descriptors and runs the operation now or keeps it (the
// 128 records, A registers copied) for the commit_group / wait_group that retires it.
void wgmma_issue_exec(void** recs) {
  const auto* r0 = static_cast<WgmmaRec*>(recs[0]);
  std::vector<WgmmaRec> op(128);
  for (int i = 0; i < 128; ++i) {
    const auto* r = static_cast<WgmmaRec*>(recs[i]);
    if (r->da != r0->da || r->db != r0->db)
      fail(
          "wgmma.mma_async: thread %d of the warpgroup passes descriptors 0x%llx, 0x%llx, thread 0 0x%llx, "
          "0x%llx (must agree)",
          i, (unsigned long long)r->da, (unsigned long long)r->db, (unsigned long long)r0->da,
          (unsigned long long)r0->db);
    op[static_cast<size_t>(i)] = *r;
  }
  if (g.wgmma_timing == WgmmaTiming::at_issue)
    wgmma_run(op.data());
  else
    g.wgp[current_wg()].open.push_back(std::move(op));
}
}  // namespace

void set_wgmma_timing(WgmmaTiming timing) {
  g.wgmma_timing = timing;
}

void wgmma(float* d, int n, uint64_t da, const uint32_t* a, uint64_t db, bool scale_d, bool trans_a,
           bool trans_b, MmaType type) {
  if (n < 8 || n > 256 || n % 8 != 0)
    fail("wgmma.mma_async.m64n%dk16: N must be a multiple of 8 in 8..256", n);
  if (a && trans_a) fail("wgmma.mma_async with A in registers takes no A transpose");
  WgmmaRec rec{d, n, da, db, {}, a != nullptr, scale_d, trans_a, trans_b, type};
  if (a) std::memcpy(rec.a, a, sizeof rec.a);
  ++g.counters.wgmma;
  const uint64_t key = static_cast<uint64_t>(n) << 8 | uint64_t(rec.reg_a) << 4 | uint64_t(scale_d) << 3 |
                       uint64_t(trans_a) << 2 | uint64_t(trans_b) << 1 | uint64_t(type == MmaType::f16);
  wg_collective("wgmma.mma_async", key, &rec, &wgmma_issue_exec);
}
void wgmma_fence() {
  cur();
}
void wgmma_commit() {
  wg_collective("wgmma.commit_group", 0, nullptr, [](void**) {
    WgPending& p = g.wgp[current_wg()];
    p.groups.push_back(std::move(p.open));
    p.open.clear();
  });
}
void wgmma_wait(int pending) {
  if (pending < 0 || pending > 7) fail("wgmma.wait_group %d: expected 0..7", pending);
  wg_collective("wgmma.wait_group", static_cast<uint64_t>(pending), &pending, [](void** recs) {
    const size_t keep = static_cast<size_t>(*static_cast<int*>(recs[0]));
    WgPending& p = g.wgp[current_wg()];
    while (p.groups.size() > keep) {
      for (auto& op : p.groups.front()) wgmma_run(op.data());
      p.groups.pop_front();
    }
  });
}

}  // namespace sim
