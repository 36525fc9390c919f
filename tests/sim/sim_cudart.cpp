// The emulated CUDA device's runtime (declared in tests/sim/include/sim/cudart.h): one H100 per process, each
// stream a worker thread, device memory one PROT_NONE arena that only device work may open (a SIGSEGV handler
// opens a block for a device operation and kills a host thread that touches it), vector clocks that tell
// whether a free on one stream is ordered after every other stream's use of the block.
//
// Locks, always taken in this order: Runtime::device (one kernel at a time: the block scheduler is not
// thread-safe), Runtime::mu (streams, events, clocks), Memory::mu (allocator, accounting, uses), and the
// spinlock `g_spin` (the block map's structure and open counts; the signal handler takes only it).
// Global state is allocated once and never destroyed, so worker threads never see it torn down at exit.
#include <cuda_runtime.h>

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace sim {
void* tensor_map_encoder();  // sim_runtime.cpp
}

namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr size_t kPage = 4096;
constexpr int kRuntimeVersion = 13000;

// ---- knobs -----------------------------------------------------------------------------------------------
struct Knobs {
  size_t memory = size_t(80) << 30;
  int driver = kRuntimeVersion, devices = 1;
  bool shared_gpu = false;  // POLDER_SIM_SHARED_GPU=1: every process reports the same device UUID
};

size_t parse_bytes(const char* s) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s, &end, 10);
  if (errno != 0 || end == s) sim::fail("POLDER_SIM_MEMORY=%s is not a byte count (e.g. 80G, 512M)", s);
  size_t shift = 0;
  switch (*end) {
    case 'k':
    case 'K':
      shift = 10;
      ++end;
      break;
    case 'm':
    case 'M':
      shift = 20;
      ++end;
      break;
    case 'g':
    case 'G':
      shift = 30;
      ++end;
      break;
    default:
      break;
  }
  if (*end == 'i') ++end;
  if (*end == 'B' || *end == 'b') ++end;
  if (*end != '\0' || v == 0) sim::fail("POLDER_SIM_MEMORY=%s is not a byte count (e.g. 80G, 512M)", s);
  return size_t(v) << shift;
}

int parse_int(const char* name, const char* s) {
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < 0) sim::fail("%s=%s is not a non-negative integer", name, s);
  return static_cast<int>(v);
}

const Knobs& knobs() {
  static const Knobs k = [] {
    Knobs r;
    if (const char* s = std::getenv("POLDER_SIM_MEMORY")) r.memory = parse_bytes(s);
    if (const char* s = std::getenv("POLDER_SIM_DRIVER")) r.driver = parse_int("POLDER_SIM_DRIVER", s);
    if (const char* s = std::getenv("POLDER_SIM_DEVICES")) r.devices = parse_int("POLDER_SIM_DEVICES", s);
    if (const char* s = std::getenv("POLDER_SIM_SHARED_GPU")) r.shared_gpu = std::string(s) == "1";
    return r;
  }();
  return k;
}

// ---- vector clocks ---------------------------------------------------------------------------------------
using VClock = std::vector<uint64_t>;  // by stream id: the last operation of that stream ordered before
void merge(VClock& a, const VClock& b) {
  if (a.size() < b.size()) a.resize(b.size(), 0);
  for (size_t i = 0; i < b.size(); ++i) a[i] = std::max(a[i], b[i]);
}
uint64_t at(const VClock& c, int id) {
  return static_cast<size_t>(id) < c.size() ? c[static_cast<size_t>(id)] : 0;
}

// ---- streams and events ----------------------------------------------------------------------------------
struct Stream;
struct Op {
  std::string what;
  std::function<void()> fn;
  uint64_t seq = 0;
  VClock clock;
  std::vector<std::pair<Stream*, uint64_t>> deps;  // (stream, seq) that must have completed first
  bool host_code = false;                          // cudaLaunchHostFunc: host code, no device access
};

struct Stream {
  int id = 0;
  std::string name;
  bool blocking = true, legacy = false;
  std::deque<Op> q;  // the front is the running (or next) operation; popped when it completes
  uint64_t issued = 0, completed = 0;
  VClock clock;  // of the last operation issued
  std::thread* worker = nullptr;
  bool stop = false;
  std::condition_variable cv;
};

struct Event {
  unsigned flags = 0;
  bool recorded = false;
  Stream* stream = nullptr;
  uint64_t seq = 0, gen = 0;
  VClock clock;
  bool timed = false;
  SteadyClock::time_point time;
};

struct Runtime {
  std::mutex device, mu;
  std::condition_variable done;  // some operation completed
  std::vector<Stream*> streams;  // by id; 0 is the legacy default stream; never freed
  std::unordered_set<Stream*> live;
  Stream* legacy = nullptr;
  VClock host;  // what the host has seen complete
  std::unordered_map<cudaEvent_t, std::shared_ptr<Event>> events;
  std::unordered_map<const void*, std::string> kernel_names;
};

std::atomic<cudaError_t> g_sticky{0};
std::atomic<bool> g_unloading{false};
Runtime* g_rt = nullptr;
thread_local cudaError_t t_last_error = 0;
thread_local Stream* t_stream = nullptr;  // the worker's stream
thread_local const Op* t_op = nullptr;    // the operation the worker runs

// ---- device memory ---------------------------------------------------------------------------------------
enum class Source : uint8_t { malloc, malloc_async };
struct Use {
  int stream;
  uint64_t seq;
  std::string what;
};
struct Block {
  uintptr_t start = 0;
  size_t bytes = 0, asked = 0;  // bytes: whole pages
  uint64_t gen = 0;
  bool live = true, free_pending = false;
  int opens = 0;
  Source source = Source::malloc;
  int alloc_stream = -1, freed_stream = -1;  // -1: the host (cudaMalloc / cudaFree)
  std::vector<Use> uses;                     // the latest use per stream
};

struct Memory {
  std::mutex mu;
  char* base = nullptr;
  size_t arena = 0, capacity = 0;
  std::map<size_t, size_t> free_by_off;              // offset -> bytes
  std::set<std::pair<size_t, size_t>> free_by_size;  // (bytes, offset)
  std::map<uintptr_t, Block> blocks;                 // live and freed blocks by start; disjoint
  uint64_t gen = 0;
  size_t malloc_bytes = 0, pool_used = 0, pool_reserved = 0, pool_used_high = 0, pool_reserved_high = 0,
         pool_threshold = 0, lib_bytes = 0;
  std::map<uintptr_t, size_t> pinned;
};
Memory* g_mem = nullptr;
std::atomic<uintptr_t> g_lo{0}, g_hi{0};
std::atomic_flag g_spin = ATOMIC_FLAG_INIT;

struct Spin {
  Spin() {
    while (g_spin.test_and_set(std::memory_order_acquire)) {
    }
  }
  ~Spin() { g_spin.clear(std::memory_order_release); }
  Spin(const Spin&) = delete;
  Spin& operator=(const Spin&) = delete;
};

// Blocks the calling thread opened (device operation or DeviceAccess scope); POD so the handler can append.
struct Opened {
  uintptr_t start;
  uint64_t gen;
};
constexpr int kMaxOpen = 1024, kMaxScopes = 64;
thread_local Opened t_open[kMaxOpen];
thread_local int t_nopen = 0;
thread_local int t_device = 0;  // > 0: this thread runs device work and may open blocks
thread_local int t_marks[kMaxScopes];
thread_local int t_nscopes = 0;

bool in_arena(uintptr_t a) {
  return a >= g_lo.load(std::memory_order_relaxed) && a < g_hi.load(std::memory_order_relaxed);
}

// The block containing a (live or freed), under g_spin or Memory::mu with structure changes excluded.
Block* find_block(uintptr_t a) {
  auto& m = g_mem->blocks;
  auto it = m.upper_bound(a);
  if (it == m.begin()) return nullptr;
  --it;
  return a < it->first + it->second.bytes ? &it->second : nullptr;
}

void stream_label(char* out, size_t n, int id) {
  if (id < 0)
    std::snprintf(out, n, "the host");
  else if (id == 0)
    std::snprintf(out, n, "default stream");
  else
    std::snprintf(out, n, "stream#%d", id);
}
std::string stream_label(int id) {
  char b[32];
  stream_label(b, sizeof b, id);
  return b;
}

// Opens b for the calling thread (under g_spin).
void open_locked(Block& b) {
  if (t_nopen == kMaxOpen) {
    const char msg[] = "sim: a device operation touched more than 1024 blocks of device memory\n";
    (void)!write(2, msg, sizeof msg - 1);
    std::abort();
  }
  if (b.opens++ == 0) mprotect(reinterpret_cast<void*>(b.start), b.bytes, PROT_READ | PROT_WRITE);
  t_open[t_nopen++] = Opened{b.start, b.gen};
}

void open_ptr(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (!in_arena(a)) return;
  Spin s;
  if (Block* b = find_block(a); b && b->live) open_locked(*b);
}

void close_from(int mark) {
  Spin s;
  for (int i = mark; i < t_nopen; ++i) {
    Block* b = find_block(t_open[i].start);
    if (b && b->live && b->gen == t_open[i].gen && --b->opens == 0)
      mprotect(reinterpret_cast<void*>(b->start), b->bytes, PROT_NONE);
  }
  t_nopen = mark;
}

// ---- the SIGSEGV handler ---------------------------------------------------------------------------------
struct sigaction g_prev_segv;
std::atomic<bool> g_have_prev{false};

// The nearest live block below a, for reports of accesses past a block's end.
const Block* block_below(uintptr_t a) {
  Spin s;
  auto& m = g_mem->blocks;
  for (auto it = m.upper_bound(a); it != m.begin();) {
    --it;
    if (it->second.live) return &it->second;
  }
  return nullptr;
}

void describe_and_abort(uintptr_t a, bool write_access, Block* b) {
  static char msg[1024];
  char who[192], where[96], extra[256];
  if (t_device > 0 && t_op)
    std::snprintf(who, sizeof who, "device operation '%.160s'", t_op->what.c_str());
  else if (t_device > 0)
    std::snprintf(who, sizeof who, "device work");
  else
    std::snprintf(who, sizeof who, "host thread");
  stream_label(where, sizeof where, b ? b->alloc_stream : -1);
  const char* verb = write_access ? "wrote" : "read";
  if (b && b->live) {
    std::snprintf(extra, sizeof extra,
                  "(block of %zu bytes allocated by %s%s%s); copy it to the host with cudaMemcpy first",
                  b->asked, b->source == Source::malloc ? "cudaMalloc" : "cudaMallocAsync",
                  b->source == Source::malloc ? "" : " on ", b->source == Source::malloc ? "" : where);
  } else if (b) {
    char freer[32];
    stream_label(freer, sizeof freer, b->freed_stream);
    std::snprintf(extra, sizeof extra, "use after free: block of %zu bytes freed %s%s", b->asked,
                  b->freed_stream < 0 ? "by cudaFree on " : "on ", freer);
  } else if (const Block* below = block_below(a)) {
    std::snprintf(extra, sizeof extra,
                  "outside every allocation (%lu bytes past the end of the block of %zu bytes at 0x%lx)",
                  static_cast<unsigned long>(a - (below->start + below->asked)), below->asked,
                  static_cast<unsigned long>(below->start));
  } else {
    std::snprintf(extra, sizeof extra, "outside every allocation");
  }
  std::snprintf(msg, sizeof msg, "sim: %s %s device memory at 0x%lx %s\n", who, verb,
                static_cast<unsigned long>(a), extra);
  (void)!write(2, msg, std::strlen(msg));
  std::abort();
}

void on_segv(int sig, siginfo_t* si, void* uctx) {
  const auto a = reinterpret_cast<uintptr_t>(si->si_addr);
  if (si->si_code > 0 && in_arena(a)) {
    bool write_access = false;
#if defined(__x86_64__)
    write_access = (static_cast<ucontext_t*>(uctx)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
    (void)uctx;
#endif
    Block* b;
    {
      Spin s;
      b = find_block(a);
      if (b && b->live && t_device > 0) {
        open_locked(*b);
        return;  // the access runs again, now allowed
      }
    }
    describe_and_abort(a, write_access, b);
  }
  // Not ours: the previous handler (or the default action) gets the fault when the instruction runs again.
  if (g_have_prev.load() && g_prev_segv.sa_sigaction != on_segv)
    sigaction(sig, &g_prev_segv, nullptr);
  else
    signal(sig, SIG_DFL);
}

// Other code (Catch2 installs one per test case) may replace the handler; every runtime call and every
// device operation puts it back, keeping the replaced one to chain to.
void ensure_handler() {
  struct sigaction cur;
  sigaction(SIGSEGV, nullptr, &cur);
  if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_segv) return;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  struct sigaction prev;
  sigaction(SIGSEGV, &sa, &prev);
  if (!((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction == on_segv)) {
    g_prev_segv = prev;
    g_have_prev.store(true);
  }
}

// ---- allocator
// ---------------------------------------------------------------------------------------------
size_t in_use_locked() {
  return g_mem->malloc_bytes + g_mem->pool_used + g_mem->lib_bytes;
}

void report_oom(const char* who, size_t asked) {
  Memory& m = *g_mem;
  std::fprintf(stderr,
               "sim: out of device memory: %s asked for %zu bytes, %zu in use (pool %zu, cudaMalloc %zu, "
               "libraries %zu) of %zu\n",
               who, asked, in_use_locked(), m.pool_used, m.malloc_bytes, m.lib_bytes, m.capacity);
}

void add_free_range(size_t off, size_t bytes) {
  Memory& m = *g_mem;
  auto next = m.free_by_off.lower_bound(off);
  if (next != m.free_by_off.end() && next->first == off + bytes) {
    bytes += next->second;
    m.free_by_size.erase({next->second, next->first});
    next = m.free_by_off.erase(next);
  }
  if (next != m.free_by_off.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      off = prev->first;
      bytes += prev->second;
      m.free_by_size.erase({prev->second, prev->first});
      m.free_by_off.erase(prev);
    }
  }
  m.free_by_off[off] = bytes;
  m.free_by_size.insert({bytes, off});
}

// Best fit; false when no free range is large enough.
bool take_range(size_t bytes, size_t* off) {
  Memory& m = *g_mem;
  auto it = m.free_by_size.lower_bound({bytes, 0});
  if (it == m.free_by_size.end()) return false;
  const auto [have, at] = *it;
  m.free_by_size.erase(it);
  m.free_by_off.erase(at);
  if (have > bytes) {
    m.free_by_off[at + bytes] = have - bytes;
    m.free_by_size.insert({have - bytes, at + bytes});
  }
  *off = at;
  return true;
}

// A new block of n bytes (0xFF-filled), or nullptr with the out-of-memory line. Under Memory::mu.
void* alloc_locked(size_t n, Source source, int stream, const char* who) {
  Memory& m = *g_mem;
  const size_t bytes = (n + kPage - 1) / kPage * kPage;
  size_t off = 0;
  // One PROT_NONE guard page after every block (address space only): a kernel running past the end of its
  // block faults instead of opening the neighbour.
  if (in_use_locked() + bytes > m.capacity || !take_range(bytes + kPage, &off)) {
    report_oom(who, n);
    return nullptr;
  }
  char* p = m.base + off;
  mprotect(p, bytes, PROT_READ | PROT_WRITE);
  std::memset(p, 0xFF, bytes);
  mprotect(p, bytes, PROT_NONE);
  const auto start = reinterpret_cast<uintptr_t>(p);
  Block b;
  b.start = start;
  b.bytes = bytes;
  b.asked = n;
  b.gen = ++m.gen;
  b.source = source;
  b.alloc_stream = stream;
  {
    Spin s;
    // Records of freed blocks this range reuses go.
    auto it = m.blocks.upper_bound(start);
    if (it != m.blocks.begin()) --it;
    while (it != m.blocks.end() && it->first < start + bytes) {
      if (it->first + it->second.bytes > start)
        it = m.blocks.erase(it);
      else
        ++it;
    }
    m.blocks.emplace(start, std::move(b));
  }
  if (source == Source::malloc) {
    m.malloc_bytes += bytes;
  } else {
    m.pool_used += bytes;
    m.pool_reserved = std::max(m.pool_reserved, m.pool_used);
    m.pool_used_high = std::max(m.pool_used_high, m.pool_used);
    m.pool_reserved_high = std::max(m.pool_reserved_high, m.pool_reserved);
  }
  return p;
}

// Frees a live block (under Memory::mu): PROT_NONE, pages dropped (reallocation fills them with 0xFF again).
void free_locked(Block& b, int stream) {
  Memory& m = *g_mem;
  {
    Spin s;
    b.live = false;
    b.opens = 0;
    b.freed_stream = stream;
    mprotect(reinterpret_cast<void*>(b.start), b.bytes, PROT_NONE);
  }
  madvise(reinterpret_cast<void*>(b.start), b.bytes, MADV_DONTNEED);
  b.uses.clear();
  if (b.source == Source::malloc)
    m.malloc_bytes -= b.bytes;
  else
    m.pool_used -= b.bytes;
  add_free_range(b.start - reinterpret_cast<uintptr_t>(m.base), b.bytes + kPage);
}

// The live block starting exactly at p (under Memory::mu), or nullptr.
Block* live_block_at(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (!in_arena(a)) return nullptr;
  Block* b = find_block(a);
  return b && b->live && b->start == a ? b : nullptr;
}

void add_use(Block& b, int stream, uint64_t seq, const std::string& what) {
  for (Use& u : b.uses)
    if (u.stream == stream) {
      if (u.seq < seq) {
        u.seq = seq;
        u.what = what;
      }
      return;
    }
  b.uses.push_back(Use{stream, seq, what});
}

// The cross-stream free check: every other stream's recorded use must be ordered before the free.
void check_free(const Block& b, int stream, const VClock& clock, const char* op) {
  for (const Use& u : b.uses) {
    if (u.stream == stream || at(clock, u.stream) >= u.seq) continue;
    std::fprintf(stderr,
                 "sim: block 0x%lx (%zu bytes) freed on %s (op '%s') while %s may still use it (op '%s' "
                 "launched before without an event wait)\n",
                 static_cast<unsigned long>(b.start), b.asked, stream_label(stream).c_str(), op,
                 stream_label(u.stream).c_str(), u.what.c_str());
    cudaError_t none = 0;
    g_sticky.compare_exchange_strong(none, cudaErrorIllegalAddress);
    return;
  }
}

// Where [p, p + n) lies: on the host, in one live block, or somewhere invalid (why says where).
enum class Where { host, device, bad };
Where classify(const void* p, size_t n, std::string* why) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (!in_arena(a)) return Where::host;
  std::lock_guard<std::mutex> lock(g_mem->mu);
  const Block* b = find_block(a);
  char buf[160];
  if (!b) {
    std::snprintf(buf, sizeof buf, "0x%lx is in device memory but in no allocation",
                  static_cast<unsigned long>(a));
  } else if (!b->live) {
    std::snprintf(buf, sizeof buf, "0x%lx is in a freed block", static_cast<unsigned long>(a));
  } else if (a + n > b->start + b->asked) {
    std::snprintf(buf, sizeof buf, "[0x%lx, +%zu) runs past the end of its block of %zu bytes",
                  static_cast<unsigned long>(a), n, b->asked);
  } else {
    return Where::device;
  }
  *why = buf;
  return Where::bad;
}

// Why p cannot be freed (under Memory::mu): b is its live block, if any.
std::string free_problem(const void* p, const Block* b) {
  if (b) return "already freed by cudaFreeAsync (not reached by its stream yet)";
  const auto a = reinterpret_cast<uintptr_t>(p);
  const Block* in = in_arena(a) ? find_block(a) : nullptr;
  if (in && !in->live && in->start == a) return "already freed on " + stream_label(in->freed_stream);
  if (in && in->live)
    return "points inside a block of " + std::to_string(in->asked) + " bytes, not at its start";
  return "not a pointer cudaMalloc or cudaMallocAsync returned";
}

bool is_pinned(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_mem->mu);
  auto it = g_mem->pinned.upper_bound(a);
  if (it == g_mem->pinned.begin()) return false;
  --it;
  return a < it->first + it->second;
}

// ---- initialisation, fork and exit
// -------------------------------------------------------------------------
Runtime& rt() {
  return *g_rt;
}

Stream* new_stream_locked(bool blocking, bool legacy) {
  Runtime& r = rt();
  auto* s = new Stream;
  s->id = static_cast<int>(r.streams.size());
  s->name = stream_label(s->id);
  s->blocking = blocking;
  s->legacy = legacy;
  r.streams.push_back(s);
  r.live.insert(s);
  return s;
}

void worker_main(Stream* s);

void ensure_worker_locked(Stream* s) {
  if (!s->worker) s->worker = new std::thread(worker_main, s);
}

void fork_prepare() {
  rt().device.lock();
  rt().mu.lock();
  g_mem->mu.lock();
  while (g_spin.test_and_set(std::memory_order_acquire)) {
  }
}
void fork_parent() {
  g_spin.clear(std::memory_order_release);
  g_mem->mu.unlock();
  rt().mu.unlock();
  rt().device.unlock();
}
// The child has only the forking thread: condition variables are made anew, workers start again on demand
// (an operation that was running reruns from the start).
void fork_child() {
  g_spin.clear(std::memory_order_release);
  g_mem->mu.unlock();
  rt().mu.unlock();
  rt().device.unlock();
  new (&rt().done) std::condition_variable;
  for (Stream* s : rt().streams) {
    new (&s->cv) std::condition_variable;
    s->worker = nullptr;  // the parent's thread object is abandoned
    if (!s->q.empty()) ensure_worker_locked(s);
  }
}

// At exit the workers skip what is queued, finish the running operation (waiting at most two seconds: one
// may be blocked on the host) and are joined, before static destructors run.
void at_exit() {
  g_unloading.store(true);
  if (t_stream) return;  // exit() called on a worker
  Runtime& r = rt();
  std::unique_lock<std::mutex> lock(r.mu);
  for (Stream* s : r.streams) {
    s->stop = true;
    s->cv.notify_all();
  }
  r.done.notify_all();
  const bool drained = r.done.wait_for(lock, std::chrono::seconds(2), [&] {
    for (Stream* s : r.streams)
      if (s->worker && s->completed < s->issued) return false;
    return true;
  });
  std::vector<std::thread*> workers;
  for (Stream* s : r.streams)
    if (s->worker) workers.push_back(std::exchange(s->worker, nullptr));
  lock.unlock();
  for (std::thread* w : workers) drained ? w->join() : w->detach();
}

void init_memory() {
  const size_t cap = knobs().memory;
  auto* m = new Memory;
  m->capacity = cap;
  // Twice the capacity of address space (never committed): fragmentation does not fail an allocation that
  // fits.
  m->arena = ((cap + kPage - 1) / kPage) * kPage * 2;
  void* base = mmap(nullptr, m->arena, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) sim::fail("cannot reserve %zu bytes of address space for device memory", m->arena);
  m->base = static_cast<char*>(base);
  m->free_by_off[0] = m->arena;
  m->free_by_size.insert({m->arena, 0});
  g_mem = m;
  g_lo.store(reinterpret_cast<uintptr_t>(base));
  g_hi.store(reinterpret_cast<uintptr_t>(base) + m->arena);
}

void init() {
  static std::once_flag once;
  std::call_once(once, [] {
    sim::set_arch(9);
    init_memory();
    g_rt = new Runtime;
    {
      std::lock_guard<std::mutex> lock(g_rt->mu);
      g_rt->legacy = new_stream_locked(true, true);
    }
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    std::atexit(at_exit);
  });
}

cudaError_t record_error(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

// The gate of every runtime call: driver and device knobs, teardown, the sticky error.
cudaError_t enter() {
  const Knobs& k = knobs();
  if (k.driver < kRuntimeVersion) return cudaErrorInsufficientDriver;
  if (k.devices == 0) return cudaErrorNoDevice;
  init();
  if (g_unloading.load()) return cudaErrorCudartUnloading;
  ensure_handler();
  return g_sticky.load();
}
#define SIM_ENTER()                                                                 \
  do {                                                                              \
    if (const cudaError_t e_ = enter(); e_ != cudaSuccess) return record_error(e_); \
  } while (0)

// ---- operations ------------------------------------------------------------------------------------------
Stream* resolve(cudaStream_t h) {
  Runtime& r = rt();
  if (h == nullptr || h == cudaStreamLegacy || h == cudaStreamPerThread) return r.legacy;
  auto* s = reinterpret_cast<Stream*>(h);
  return r.live.count(s) ? s : nullptr;
}

cudaStream_t handle(Stream* s) {
  return s->legacy ? cudaStreamLegacy : reinterpret_cast<cudaStream_t>(s);
}

struct Extra {
  std::vector<std::pair<Stream*, uint64_t>> deps;
  VClock clock;
  bool host_code = false;
};

// Appends an operation to s (under Runtime::mu): its dependencies (the legacy stream's implicit
// synchronisation, extra waits), its clock, and the uses of the device blocks `pointers` point into.
const Op& enqueue_locked(Stream* s, std::string what, std::function<void()> fn,
                         const std::vector<const void*>& pointers, Extra extra = {}) {
  Runtime& r = rt();
  Op op;
  op.what = std::move(what);
  op.fn = std::move(fn);
  op.seq = ++s->issued;
  op.host_code = extra.host_code;
  op.deps = std::move(extra.deps);
  VClock c = s->clock;
  merge(c, r.host);
  merge(c, extra.clock);
  if (s->legacy) {
    for (Stream* o : r.live)
      if (o->blocking && !o->legacy && o->issued > 0) {
        if (o->completed < o->issued) op.deps.push_back({o, o->issued});
        merge(c, o->clock);
      }
  } else if (s->blocking && r.legacy->issued > 0) {
    if (r.legacy->completed < r.legacy->issued) op.deps.push_back({r.legacy, r.legacy->issued});
    merge(c, r.legacy->clock);
  }
  if (c.size() <= static_cast<size_t>(s->id)) c.resize(static_cast<size_t>(s->id) + 1, 0);
  c[static_cast<size_t>(s->id)] = op.seq;
  s->clock = c;
  op.clock = std::move(c);
  if (!pointers.empty()) {
    std::lock_guard<std::mutex> lock(g_mem->mu);
    for (const void* p : pointers) {
      const auto a = reinterpret_cast<uintptr_t>(p);
      if (!in_arena(a)) continue;
      if (Block* b = find_block(a); b && b->live) add_use(*b, s->id, op.seq, op.what);
    }
  }
  ensure_worker_locked(s);
  s->q.push_back(std::move(op));
  s->cv.notify_one();
  return s->q.back();
}

cudaError_t enqueue_on(cudaStream_t h, std::string what, std::function<void()> fn,
                       const std::vector<const void*>& pointers, uint64_t* seq = nullptr) {
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  Stream* s = resolve(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  const Op& op = enqueue_locked(s, std::move(what), std::move(fn), pointers);
  if (seq) *seq = op.seq;
  return cudaSuccess;
}

void run_op(Stream* s, Op& op) {
  ensure_handler();
  t_op = &op;
  if (!op.host_code) ++t_device;
  try {
    op.fn();
  } catch (const std::exception& e) {
    sim::device_fault(cudaErrorLaunchFailure, op.what, e.what());
  } catch (...) {
    sim::device_fault(cudaErrorLaunchFailure, op.what, "an exception that is not a std::exception");
  }
  if (!op.host_code) --t_device;
  if (t_nopen > 0) {  // blocks the operation opened (its uses, for the cross-stream free check)
    std::lock_guard<std::mutex> lock(g_mem->mu);
    for (int i = 0; i < t_nopen; ++i) {
      Block* b = find_block(t_open[i].start);
      if (b && b->live && b->gen == t_open[i].gen) add_use(*b, s->id, op.seq, op.what);
    }
  }
  close_from(0);
  t_op = nullptr;
}

bool deps_done(const Op& op) {
  for (const auto& [o, seq] : op.deps)
    if (o->completed < seq) return false;
  return true;
}

void worker_main(Stream* s) {
  t_stream = s;
  Runtime& r = rt();
  std::unique_lock<std::mutex> lock(r.mu);
  for (;;) {
    s->cv.wait(lock, [&] { return !s->q.empty() || s->stop; });
    if (s->q.empty()) return;
    Op& op = s->q.front();
    r.done.wait(lock, [&] { return deps_done(op) || g_unloading.load(); });
    const bool skip = g_sticky.load() != 0 || g_unloading.load();
    lock.unlock();
    if (!skip) run_op(s, op);
    lock.lock();
    s->completed = op.seq;
    s->q.pop_front();
    r.done.notify_all();
  }
}

// A host wait (under Runtime::mu) that reports, once, what every unfinished stream is at when it has waited a
// minute: a host function that never returns, a collective some rank never joins.
template <typename Pred>
void host_wait(std::unique_lock<std::mutex>& lock, const char* api, Pred done) {
  Runtime& r = rt();
  if (t_stream)  // CUDA forbids runtime calls in stream callbacks; a wait there could never end
    sim::fail("%s called by '%s' on %s's worker: a stream operation cannot wait for the device", api,
              t_op ? t_op->what.c_str() : "?", t_stream->name.c_str());
  const auto start = SteadyClock::now();
  bool reported = false;
  while (!r.done.wait_for(lock, std::chrono::seconds(5), done)) {
    if (reported || SteadyClock::now() - start < std::chrono::seconds(60)) continue;
    reported = true;
    std::fprintf(stderr, "sim: %s has waited 60 s (a deadlock?); unfinished streams:\n", api);
    for (Stream* s : r.streams) {
      if (s->q.empty()) continue;
      const Op& op = s->q.front();
      std::fprintf(stderr, "sim:   %s at '%s'%s, %zu more queued\n", s->name.c_str(), op.what.c_str(),
                   deps_done(op) ? "" : " (waiting for another stream)", s->q.size() - 1);
    }
  }
}

// Blocks until s has completed `seq`; the host then knows everything ordered before it.
void wait_for(Stream* s, uint64_t seq, const VClock* clock) {
  Runtime& r = rt();
  std::unique_lock<std::mutex> lock(r.mu);
  host_wait(lock, "cudaMemcpy", [&] { return s->completed >= seq; });
  if (clock) merge(r.host, *clock);
}

void trim_pool() {
  std::lock_guard<std::mutex> lock(g_mem->mu);
  Memory& m = *g_mem;
  if (m.pool_reserved > m.pool_threshold) m.pool_reserved = std::max(m.pool_used, m.pool_threshold);
}

void sync_stream(Stream* s) {
  Runtime& r = rt();
  std::unique_lock<std::mutex> lock(r.mu);
  const uint64_t seq = s->issued;
  const VClock clock = s->clock;
  host_wait(lock, "cudaStreamSynchronize", [&] { return s->completed >= seq; });
  merge(r.host, clock);
}

void sync_device() {
  Runtime& r = rt();
  std::unique_lock<std::mutex> lock(r.mu);
  std::vector<std::pair<Stream*, uint64_t>> targets;
  VClock clock;
  for (Stream* s : r.streams) {
    targets.push_back({s, s->issued});
    merge(clock, s->clock);
  }
  host_wait(lock, "cudaDeviceSynchronize", [&] {
    for (const auto& [s, seq] : targets)
      if (s->completed < seq) return false;
    return true;
  });
  merge(r.host, clock);
}

// The symbol of the function at k from its module's ELF symbol table (kernels are not exported, so dladdr
// alone names only the module); empty when the module is stripped.
std::string elf_function_name(const void* k) {
  Dl_info info, self;
  if (!k || !dladdr(k, &info)) return {};
  if (info.dli_sname && info.dli_saddr == k) return info.dli_sname;
  const bool main_program =
      dladdr(reinterpret_cast<void*>(&elf_function_name), &self) && self.dli_fbase == info.dli_fbase;
  const char* path = main_program ? "/proc/self/exe" : info.dli_fname;
  if (!path || !*path) return {};
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  struct stat st;
  void* map =
      fstat(fd, &st) == 0 ? mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  close(fd);
  if (map == MAP_FAILED) return {};
  const auto* base = static_cast<const char*>(map);
  const size_t size = size_t(st.st_size);
  std::string name;
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
  if (size >= sizeof *eh && std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 &&
      eh->e_ident[EI_CLASS] == ELFCLASS64 && eh->e_shoff + size_t(eh->e_shnum) * sizeof(Elf64_Shdr) <= size) {
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff);
    const uintptr_t want = reinterpret_cast<uintptr_t>(k) -
                           (eh->e_type == ET_DYN ? reinterpret_cast<uintptr_t>(info.dli_fbase) : 0);
    for (int i = 0; i < eh->e_shnum && name.empty(); ++i) {
      if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum) continue;
      const Elf64_Shdr& strs = sh[sh[i].sh_link];
      if (sh[i].sh_offset + sh[i].sh_size > size || strs.sh_offset + strs.sh_size > size) continue;
      const auto* sym = reinterpret_cast<const Elf64_Sym*>(base + sh[i].sh_offset);
      for (size_t j = 0; j < sh[i].sh_size / sizeof(Elf64_Sym); ++j)
        if (ELF64_ST_TYPE(sym[j].st_info) == STT_FUNC && sym[j].st_value == want &&
            sym[j].st_name < strs.sh_size) {
          name = base + strs.sh_offset + sym[j].st_name;
          break;
        }
    }
  }
  munmap(map, size);
  return name;
}

std::string kernel_name(const void* k) {
  Runtime& r = rt();
  {
    std::lock_guard<std::mutex> lock(r.mu);
    if (auto it = r.kernel_names.find(k); it != r.kernel_names.end()) return it->second;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "kernel %p", k);
  std::string name = buf;
  if (const std::string sym = elf_function_name(k); !sym.empty()) {
    int status = 0;
    char* d = abi::__cxa_demangle(sym.c_str(), nullptr, nullptr, &status);
    name = "kernel " + (status == 0 && d ? std::string(d) : sym);
    std::free(d);
  }
  std::lock_guard<std::mutex> lock(r.mu);
  r.kernel_names.emplace(k, name);
  return name;
}

const char* kind_name(cudaMemcpyKind k) {
  switch (k) {
    case cudaMemcpyHostToHost:
      return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice:
      return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost:
      return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice:
      return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault:
      return "cudaMemcpyDefault";
  }
  return "an unknown cudaMemcpyKind";
}

// Checks a copy's kind against where dst and src lie; *dst_dev / *src_dev say which side is device memory.
cudaError_t check_copy(const char* api, void* dst, size_t dst_span, const void* src, size_t src_span,
                       cudaMemcpyKind kind, bool* dst_dev, bool* src_dev) {
  std::string why;
  const Where d = dst_span ? classify(dst, dst_span, &why) : Where::host;
  if (d == Where::bad) {
    std::fprintf(stderr, "sim: %s: destination %s\n", api, why.c_str());
    return cudaErrorInvalidValue;
  }
  const Where s = src_span ? classify(src, src_span, &why) : Where::host;
  if (s == Where::bad) {
    std::fprintf(stderr, "sim: %s: source %s\n", api, why.c_str());
    return cudaErrorInvalidValue;
  }
  *dst_dev = d == Where::device;
  *src_dev = s == Where::device;
  if (kind == cudaMemcpyDefault) return cudaSuccess;
  const bool want_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool want_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) {
    std::fprintf(stderr, "sim: %s: kind %d is not a cudaMemcpyKind\n", api, static_cast<int>(kind));
    return cudaErrorInvalidValue;
  }
  if (want_dst != *dst_dev || want_src != *src_dev) {
    std::fprintf(stderr, "sim: %s: %s but dst %p is %s memory and src %p is %s memory\n", api,
                 kind_name(kind), dst, *dst_dev ? "device" : "host", src, *src_dev ? "device" : "host");
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

// A 1-D or 2-D copy as a device operation: the device sides are opened, pageable host sources are taken at
// the call (as CUDA stages them), pageable host destinations make the call synchronous.
cudaError_t copy_2d(const char* api, void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                    size_t height, cudaMemcpyKind kind, cudaStream_t stream, bool synchronous) {
  SIM_ENTER();
  if (width == 0 || height == 0) return cudaSuccess;
  if (width > dpitch || width > spitch || !dst || !src) {
    std::fprintf(stderr, "sim: %s: width %zu with pitches %zu / %zu (or a null pointer)\n", api, width,
                 dpitch, spitch);
    return record_error(cudaErrorInvalidValue);
  }
  const size_t dspan = dpitch * (height - 1) + width, sspan = spitch * (height - 1) + width;
  bool dst_dev = false, src_dev = false;
  if (cudaError_t e = check_copy(api, dst, dspan, src, sspan, kind, &dst_dev, &src_dev))
    return record_error(e);
  std::shared_ptr<std::vector<char>> staged;
  if (!src_dev && !is_pinned(src) && !synchronous) {
    staged = std::make_shared<std::vector<char>>(sspan);
    std::memcpy(staged->data(), src, sspan);
  }
  const bool wait = synchronous || (!dst_dev && !is_pinned(dst));
  auto fn = [=] {
    const char* s = staged ? staged->data() : static_cast<const char*>(src);
    if (dst_dev) open_ptr(dst);
    if (src_dev) open_ptr(src);
    for (size_t row = 0; row < height; ++row)
      std::memmove(static_cast<char*>(dst) + row * dpitch, s + row * spitch, width);
  };
  std::vector<const void*> ptrs;
  if (dst_dev) ptrs.push_back(dst);
  if (src_dev) ptrs.push_back(src);
  Runtime& r = rt();
  Stream* s;
  uint64_t seq;
  VClock clock;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    s = resolve(stream);
    if (!s) return record_error(cudaErrorInvalidResourceHandle);
    const Op& op = enqueue_locked(s, api, fn, ptrs);
    seq = op.seq;
    clock = op.clock;
  }
  if (wait) wait_for(s, seq, &clock);
  return record_error(wait ? g_sticky.load() : cudaSuccess);
}

cudaError_t memset_on(const char* api, void* p, int value, size_t n, cudaStream_t stream) {
  SIM_ENTER();
  if (n == 0) return cudaSuccess;
  std::string why;
  const Where w = classify(p, n, &why);
  if (w != Where::device) {
    if (w == Where::host)
      std::fprintf(stderr, "sim: %s: %p is not device memory\n", api, p);
    else
      std::fprintf(stderr, "sim: %s: %s\n", api, why.c_str());
    return record_error(cudaErrorInvalidValue);
  }
  auto fn = [p, value, n] {
    open_ptr(p);
    std::memset(p, value, n);
  };
  return record_error(enqueue_on(stream, api, fn, {p}));
}

std::shared_ptr<Event> find_event(cudaEvent_t e) {
  auto it = rt().events.find(e);
  return it == rt().events.end() ? nullptr : it->second;
}

}  // namespace

// ---- errors
// ------------------------------------------------------------------------------------------------
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError:
      return "cudaErrorInitializationError";
    case cudaErrorCudartUnloading:
      return "cudaErrorCudartUnloading";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    case cudaErrorInsufficientDriver:
      return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    case cudaErrorIllegalAddress:
      return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources:
      return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported:
      return "cudaErrorNotSupported";
    case cudaErrorUnknown:
      return "cudaErrorUnknown";
  }
  return "unrecognized error code";
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInitializationError:
      return "initialization error";
    case cudaErrorCudartUnloading:
      return "driver shutting down";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer";
    case cudaErrorInsufficientDriver:
      return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorNotReady:
      return "device not ready";
    case cudaErrorIllegalAddress:
      return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources:
      return "too many resources requested for launch";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    case cudaErrorNotSupported:
      return "operation not supported";
    case cudaErrorUnknown:
      return "unknown error";
  }
  return "unrecognized error code";
}

// The last error of this host thread (launch configuration errors, failed calls), or the sticky error. The
// block scheduler's own error (a direct sim::launch_impl from the emulator's tests) counts too.
cudaError_t cudaGetLastError() {
  if (const cudaError_t s = g_sticky.load()) return s;
  cudaError_t e = std::exchange(t_last_error, 0);
  const cudaError_t sched = sim::take_last_error();
  return e ? e : sched;
}

cudaError_t cudaPeekAtLastError() {
  if (const cudaError_t s = g_sticky.load()) return s;
  if (t_last_error) return t_last_error;
  const cudaError_t sched = sim::take_last_error();
  if (sched) sim::set_last_error(sched);
  return sched;
}

// ---- device ----------------------------------------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int* n) {
  SIM_ENTER();
  *n = knobs().devices;
  return cudaSuccess;
}

// With POLDER_SIM_DEVICES > 1 every ordinal names the same emulated device (one memory, one set of streams);
// the choice is remembered per host thread, as CUDA's current device is.
namespace {
thread_local int t_current_device = 0;
}  // namespace

cudaError_t cudaSetDevice(int device) {
  SIM_ENTER();
  if (device < 0 || device >= knobs().devices) return record_error(cudaErrorInvalidDevice);
  t_current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  SIM_ENTER();
  if (!device) return record_error(cudaErrorInvalidValue);
  *device = t_current_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  SIM_ENTER();
  if (device < 0 || device >= knobs().devices) return record_error(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "NVIDIA H100 80GB HBM3 (emulated)");
  // Every process of a job has its own emulated device(s), as every rank of a real job has its own GPU: the
  // UUID carries the process id, so tools that look for two ranks on one GPU (NCCL refuses that) see none;
  // POLDER_SIM_SHARED_GPU=1 makes all processes report one UUID, as ranks sharing a GPU would.
  const uint32_t pid = static_cast<uint32_t>(getpid());
  for (int i = 0; i < 16; ++i) p->uuid.bytes[i] = static_cast<char>(0x50 + i + 16 * device);
  if (!knobs().shared_gpu) std::memcpy(p->uuid.bytes + 8, &pid, sizeof pid);
  p->totalGlobalMem = knobs().memory;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = sim::max_smem_optin();
  p->sharedMemPerMultiprocessor = 233472;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->clockRate = 1980000;
  p->memoryClockRate = 2619000;
  p->memoryBusWidth = 5120;
  p->multiProcessorCount = sim::sm_count();
  p->major = sim::arch_major();
  p->minor = 0;
  p->pciBusID = 0x19 + device;
  p->l2CacheSize = 50 * 1024 * 1024;
  p->maxThreadsPerMultiProcessor = 2048;
  p->totalConstMem = 65536;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  SIM_ENTER();
  if (device < 0 || device >= knobs().devices) return record_error(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = 48 * 1024;
      break;
    case cudaDevAttrClockRate:
      *value = 1980000;
      break;
    case cudaDevAttrMultiProcessorCount:
      *value = sim::sm_count();
      break;
    case cudaDevAttrComputeCapabilityMajor:
      *value = sim::arch_major();
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(sim::max_smem_optin());
      break;
    default:
      return record_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char* bus_id, int len, int device) {
  SIM_ENTER();
  if (device < 0 || device >= knobs().devices || len <= 0) return record_error(cudaErrorInvalidValue);
  std::snprintf(bus_id, static_cast<size_t>(len), "0000:%02x:00.0", 0x19 + device);
  return cudaSuccess;
}

// As the real runtime: both versions are reported even when the driver is too old for the runtime.
cudaError_t cudaDriverGetVersion(int* version) {
  *version = knobs().driver;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = kRuntimeVersion;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  SIM_ENTER();
  sync_device();
  trim_pool();
  return record_error(g_sticky.load());
}

cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
  SIM_ENTER();
  if (least) *least = 0;
  if (greatest) *greatest = -5;
  return cudaSuccess;
}

// ---- memory ----------------------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** p, size_t n) {
  SIM_ENTER();
  if (!p) return record_error(cudaErrorInvalidValue);
  *p = nullptr;
  if (n == 0) return cudaSuccess;
  std::lock_guard<std::mutex> lock(g_mem->mu);
  *p = alloc_locked(n, Source::malloc, -1, "cudaMalloc");
  return record_error(*p ? cudaSuccess : cudaErrorMemoryAllocation);
}

// cudaFree synchronises the device (as CUDA does), so every use is ordered before it.
cudaError_t cudaFree(void* p) {
  SIM_ENTER();
  if (!p) return cudaSuccess;
  sync_device();
  VClock host;
  {
    std::lock_guard<std::mutex> lock(rt().mu);
    host = rt().host;
  }
  std::lock_guard<std::mutex> lock(g_mem->mu);
  Block* b = live_block_at(p);
  if (!b || b->free_pending) {
    std::fprintf(stderr, "sim: cudaFree(%p): %s\n", p, free_problem(p, b).c_str());
    return record_error(cudaErrorInvalidValue);
  }
  check_free(*b, -1, host, "cudaFree");
  free_locked(*b, -1);
  return record_error(g_sticky.load());
}

cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t stream) {
  SIM_ENTER();
  if (!p) return record_error(cudaErrorInvalidValue);
  *p = nullptr;
  int id;
  {
    std::lock_guard<std::mutex> lock(rt().mu);
    Stream* s = resolve(stream);
    if (!s) return record_error(cudaErrorInvalidResourceHandle);
    id = s->id;
  }
  if (n == 0) return cudaSuccess;
  const std::string who = "cudaMallocAsync on " + stream_label(id);
  std::lock_guard<std::mutex> lock(g_mem->mu);
  *p = alloc_locked(n, Source::malloc_async, id, who.c_str());
  return record_error(*p ? cudaSuccess : cudaErrorMemoryAllocation);
}

// The block goes back when the stream's worker reaches the free (so reuse is stream-ordered), after the
// cross-stream check against the free's clock.
cudaError_t cudaFreeAsync(void* p, cudaStream_t stream) {
  SIM_ENTER();
  if (!p) return cudaSuccess;
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lock(g_mem->mu);
    Block* b = live_block_at(p);
    if (!b || b->free_pending) {
      std::fprintf(stderr, "sim: cudaFreeAsync(%p): %s\n", p, free_problem(p, b).c_str());
      return record_error(cudaErrorInvalidValue);
    }
    b->free_pending = true;
    gen = b->gen;
  }
  auto fn = [p, gen] {
    std::lock_guard<std::mutex> lock(g_mem->mu);
    Block* b = live_block_at(p);
    if (!b || b->gen != gen) return;
    check_free(*b, t_stream->id, t_op->clock, "cudaFreeAsync");
    free_locked(*b, t_stream->id);
  };
  const cudaError_t e = enqueue_on(stream, "cudaFreeAsync", fn, {});
  if (e) {
    std::lock_guard<std::mutex> lock(g_mem->mu);
    if (Block* b = live_block_at(p)) b->free_pending = false;
  }
  return record_error(e);
}

cudaError_t cudaMallocHost(void** p, size_t n) {
  SIM_ENTER();
  if (!p) return record_error(cudaErrorInvalidValue);
  const size_t bytes = std::max<size_t>(kPage, (n + kPage - 1) / kPage * kPage);
  *p = std::aligned_alloc(kPage, bytes);
  if (!*p) return record_error(cudaErrorMemoryAllocation);
  std::memset(*p, 0xFF, bytes);  // as hostile as device memory: NaN until written
  std::lock_guard<std::mutex> lock(g_mem->mu);
  g_mem->pinned[reinterpret_cast<uintptr_t>(*p)] = bytes;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* p) {
  SIM_ENTER();
  if (!p) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(g_mem->mu);
    if (g_mem->pinned.erase(reinterpret_cast<uintptr_t>(p)) == 0) {
      std::fprintf(stderr, "sim: cudaFreeHost(%p): not a pointer cudaMallocHost returned\n", p);
      return record_error(cudaErrorInvalidValue);
    }
  }
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* p, int value, size_t n) {
  return memset_on("cudaMemset", p, value, n, nullptr);
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t stream) {
  return memset_on("cudaMemsetAsync", p, value, n, stream);
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  return copy_2d("cudaMemcpy", dst, n, src, n, n, 1, kind, nullptr, true);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t stream) {
  return copy_2d("cudaMemcpyAsync", dst, n, src, n, n, 1, kind, stream, false);
}

cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                              size_t height, cudaMemcpyKind kind, cudaStream_t stream) {
  return copy_2d("cudaMemcpy2DAsync", dst, dpitch, src, spitch, width, height, kind, stream, false);
}

namespace {
int g_pool_tag;
cudaMemPool_t default_pool() {
  return reinterpret_cast<cudaMemPool_t>(&g_pool_tag);
}
}  // namespace

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  SIM_ENTER();
  if (device < 0 || device >= knobs().devices) return record_error(cudaErrorInvalidDevice);
  *pool = default_pool();
  return cudaSuccess;
}

// Bytes are counted in whole pages (the arena's granularity). Reserved memory stays at the high mark of use
// until a synchronisation trims it to the release threshold, as CUDA's pool does.
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  SIM_ENTER();
  if (pool != default_pool() || !value) return record_error(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(g_mem->mu);
  const Memory& m = *g_mem;
  auto* v64 = static_cast<unsigned long long*>(value);
  switch (attr) {
    case cudaMemPoolReuseFollowEventDependencies:
    case cudaMemPoolReuseAllowOpportunistic:
    case cudaMemPoolReuseAllowInternalDependencies:
      *static_cast<int*>(value) = 1;
      break;
    case cudaMemPoolAttrReleaseThreshold:
      *v64 = m.pool_threshold;
      break;
    case cudaMemPoolAttrReservedMemCurrent:
      *v64 = m.pool_reserved;
      break;
    case cudaMemPoolAttrReservedMemHigh:
      *v64 = m.pool_reserved_high;
      break;
    case cudaMemPoolAttrUsedMemCurrent:
      *v64 = m.pool_used;
      break;
    case cudaMemPoolAttrUsedMemHigh:
      *v64 = m.pool_used_high;
      break;
    default:
      return record_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  SIM_ENTER();
  if (pool != default_pool() || !value) return record_error(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(g_mem->mu);
  Memory& m = *g_mem;
  const unsigned long long v = *static_cast<unsigned long long*>(value);
  switch (attr) {
    case cudaMemPoolReuseFollowEventDependencies:
    case cudaMemPoolReuseAllowOpportunistic:
    case cudaMemPoolReuseAllowInternalDependencies:
      return cudaSuccess;
    case cudaMemPoolAttrReleaseThreshold:
      m.pool_threshold = v;
      return cudaSuccess;
    case cudaMemPoolAttrReservedMemHigh:
      if (v != 0) break;
      m.pool_reserved_high = m.pool_reserved;
      return cudaSuccess;
    case cudaMemPoolAttrUsedMemHigh:
      if (v != 0) break;
      m.pool_used_high = m.pool_used;
      return cudaSuccess;
    default:
      break;
  }
  return record_error(cudaErrorInvalidValue);
}

// ---- streams ---------------------------------------------------------------------------------------------
cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  SIM_ENTER();
  if (!stream || (flags & ~cudaStreamNonBlocking)) return record_error(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(rt().mu);
  *stream = handle(new_stream_locked((flags & cudaStreamNonBlocking) == 0, false));
  return cudaSuccess;
}

// Priorities (range 0 .. -5) are accepted and ignored: every stream's worker is an equal OS thread.
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* stream, unsigned flags, int) {
  return cudaStreamCreateWithFlags(stream, flags);
}

// Work still queued runs first (CUDA returns at once and lets it complete; the emulator waits for it here).
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  SIM_ENTER();
  Runtime& r = rt();
  std::thread* worker;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    Stream* s = resolve(stream);
    if (!s || s->legacy) return record_error(cudaErrorInvalidResourceHandle);
    r.live.erase(s);
    s->stop = true;
    s->cv.notify_all();
    worker = std::exchange(s->worker, nullptr);
  }
  if (worker) {
    worker->join();
    delete worker;
  }
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  SIM_ENTER();
  Stream* s;
  {
    std::lock_guard<std::mutex> lock(rt().mu);
    s = resolve(stream);
  }
  if (!s) return record_error(cudaErrorInvalidResourceHandle);
  sync_stream(s);
  trim_pool();
  return record_error(g_sticky.load());
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  SIM_ENTER();
  std::lock_guard<std::mutex> lock(rt().mu);
  Stream* s = resolve(stream);
  if (!s) return record_error(cudaErrorInvalidResourceHandle);
  if (s->completed < s->issued) return cudaErrorNotReady;
  merge(rt().host, s->clock);
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
  SIM_ENTER();
  std::lock_guard<std::mutex> lock(rt().mu);
  Stream* s = resolve(stream);
  const auto ev = find_event(event);
  if (!s || !ev) return record_error(cudaErrorInvalidResourceHandle);
  if (!ev->recorded) return cudaSuccess;  // an event never recorded is complete
  Extra extra;
  extra.deps.push_back({ev->stream, ev->seq});
  extra.clock = ev->clock;
  enqueue_locked(
      s, "cudaStreamWaitEvent", [] {}, {}, std::move(extra));
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  SIM_ENTER();
  std::lock_guard<std::mutex> lock(rt().mu);
  if (!resolve(stream)) return record_error(cudaErrorInvalidResourceHandle);
  *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data) {
  SIM_ENTER();
  if (!fn) return record_error(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(rt().mu);
  Stream* s = resolve(stream);
  if (!s) return record_error(cudaErrorInvalidResourceHandle);
  Extra extra;
  extra.host_code = true;
  enqueue_locked(
      s, "cudaLaunchHostFunc", [fn, user_data] { fn(user_data); }, {}, std::move(extra));
  return cudaSuccess;
}

// ---- events ----------------------------------------------------------------------------------------------
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  SIM_ENTER();
  if (!event || (flags & ~(cudaEventBlockingSync | cudaEventDisableTiming)))
    return record_error(cudaErrorInvalidValue);
  auto ev = std::make_shared<Event>();
  ev->flags = flags;
  *event = reinterpret_cast<cudaEvent_t>(ev.get());
  std::lock_guard<std::mutex> lock(rt().mu);
  rt().events.emplace(*event, std::move(ev));
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  SIM_ENTER();
  std::lock_guard<std::mutex> lock(rt().mu);
  return record_error(rt().events.erase(event) ? cudaSuccess : cudaErrorInvalidResourceHandle);
}

// The event captures the stream's position and clock; its time is taken when the worker reaches it.
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  SIM_ENTER();
  std::lock_guard<std::mutex> lock(rt().mu);
  Stream* s = resolve(stream);
  const auto ev = find_event(event);
  if (!s || !ev) return record_error(cudaErrorInvalidResourceHandle);
  const uint64_t gen = ++ev->gen;
  ev->timed = false;
  auto fn = [ev, gen] {
    const auto now = SteadyClock::now();
    std::lock_guard<std::mutex> lock(rt().mu);
    if (ev->gen != gen) return;
    ev->time = now;
    ev->timed = true;
  };
  Extra extra;
  extra.host_code = true;
  const Op& op = enqueue_locked(s, "cudaEventRecord", fn, {}, std::move(extra));
  ev->recorded = true;
  ev->stream = s;
  ev->seq = op.seq;
  ev->clock = op.clock;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  SIM_ENTER();
  Runtime& r = rt();
  {
    std::unique_lock<std::mutex> lock(r.mu);
    const auto ev = find_event(event);
    if (!ev) return record_error(cudaErrorInvalidResourceHandle);
    if (ev->recorded) {
      host_wait(lock, "cudaEventSynchronize", [&] { return ev->stream->completed >= ev->seq; });
      merge(r.host, ev->clock);
    }
  }
  trim_pool();
  return record_error(g_sticky.load());
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  SIM_ENTER();
  std::lock_guard<std::mutex> lock(rt().mu);
  const auto ev = find_event(event);
  if (!ev) return record_error(cudaErrorInvalidResourceHandle);
  if (!ev->recorded) return cudaSuccess;
  if (ev->stream->completed < ev->seq) return cudaErrorNotReady;
  merge(rt().host, ev->clock);
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  SIM_ENTER();
  std::lock_guard<std::mutex> lock(rt().mu);
  const auto a = find_event(start), b = find_event(end);
  if (!a || !b || !ms) return record_error(!ms ? cudaErrorInvalidValue : cudaErrorInvalidResourceHandle);
  if ((a->flags | b->flags) & cudaEventDisableTiming || !a->recorded || !b->recorded)
    return record_error(cudaErrorInvalidResourceHandle);
  if (a->stream->completed < a->seq || b->stream->completed < b->seq) return record_error(cudaErrorNotReady);
  if (!a->timed || !b->timed) return record_error(cudaErrorInvalidResourceHandle);  // skipped after a fault
  *ms = std::chrono::duration<float, std::milli>(b->time - a->time).count();
  return cudaSuccess;
}

// ---- kernels ---------------------------------------------------------------------------------------------
cudaFuncAttributes sim_func_attributes(const void*) {
  return cudaFuncAttributes{};
}

cudaError_t sim_func_set_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  SIM_ENTER();
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > sim::max_smem_optin()) {
    std::fprintf(stderr, "sim: cudaFuncSetAttribute: %d bytes of dynamic shared memory, at most %zu\n", value,
                 sim::max_smem_optin());
    return record_error(cudaErrorInvalidValue);
  }
  sim::set_max_dynamic_smem(kernel, value);
  return cudaSuccess;
}

cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned, unsigned long long,
                                             cudaDriverEntryPointQueryResult* status) {
  SIM_ENTER();
  if (!symbol || !fn) return record_error(cudaErrorInvalidValue);
  const bool found = std::strcmp(symbol, "cuTensorMapEncodeTiled") == 0;
  *fn = found ? sim::tensor_map_encoder() : nullptr;
  if (status) *status = found ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}

namespace sim {

cudaError_t launch_async(const void* kernel, std::function<void()> body, const LaunchConfig& config,
                         std::vector<const void*> pointers) {
  SIM_ENTER();
  if (const cudaError_t e = check_launch_config(kernel, config.grid, config.block, config.smem))
    return record_error(e);
  std::vector<const void*> device;
  for (const void* p : pointers)
    if (in_arena(reinterpret_cast<uintptr_t>(p))) device.push_back(p);
  const dim3 grid = config.grid, block = config.block;
  const size_t smem = config.smem;
  auto fn = [kernel, body = std::move(body), grid, block, smem, device] {
    for (const void* p : device) open_ptr(p);
    std::lock_guard<std::mutex> lock(rt().device);
    if (launch_impl(kernel, body, grid, block, smem) != 0) (void)take_last_error();
  };
  return record_error(enqueue_on(config.stream, kernel_name(kernel), std::move(fn), device));
}

cudaError_t enqueue(cudaStream_t stream, std::string what, std::function<void()> op) {
  return enqueue(stream, std::move(what), std::move(op), {});
}

cudaError_t enqueue(cudaStream_t stream, std::string what, std::function<void()> op,
                    std::vector<const void*> pointers) {
  if (const cudaError_t e = enter()) return e;
  std::vector<const void*> device;
  for (const void* p : pointers)
    if (in_arena(reinterpret_cast<uintptr_t>(p))) device.push_back(p);
  auto fn = [op = std::move(op), device] {
    for (const void* p : device) open_ptr(p);
    op();
  };
  return enqueue_on(stream, std::move(what), std::move(fn), device);
}

DeviceAccess::DeviceAccess() {
  init();
  if (t_nscopes == kMaxScopes) fail("DeviceAccess nested more than %d deep", kMaxScopes);
  t_marks[t_nscopes++] = t_nopen;
  ++t_device;
}

DeviceAccess::~DeviceAccess() {
  --t_device;
  close_from(t_marks[--t_nscopes]);
}

bool is_device_pointer(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (!g_mem || !in_arena(a)) return false;
  Spin s;
  return find_block(a) != nullptr;
}

bool reserve_capacity(size_t bytes, const char* who) {
  if (knobs().driver < kRuntimeVersion || knobs().devices == 0) return false;
  init();
  std::lock_guard<std::mutex> lock(g_mem->mu);
  if (in_use_locked() + bytes > g_mem->capacity) {
    report_oom(who, bytes);
    return false;
  }
  g_mem->lib_bytes += bytes;
  return true;
}

void release_capacity(size_t bytes) {
  if (!g_mem) return;
  std::lock_guard<std::mutex> lock(g_mem->mu);
  g_mem->lib_bytes -= std::min(bytes, g_mem->lib_bytes);
}

void device_fault(cudaError_t error, const std::string& what, const std::string& message) {
  std::fprintf(stderr, "sim: %s: %s\n", what.c_str(), message.c_str());
  cudaError_t none = 0;
  g_sticky.compare_exchange_strong(none, error);
}

cudaStream_t current_stream() {
  return t_stream ? handle(t_stream) : nullptr;
}

size_t device_memory() {
  return knobs().memory;
}

int driver_version() {
  return knobs().driver;
}

}  // namespace sim
