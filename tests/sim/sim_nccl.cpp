// The emulated NCCL (declared in tests/sim/include/nccl.h): the ranks of a communicator are the processes of
// one job on one host, meeting in a shared-memory segment named from the unique id. Every operation runs on
// its CUDA stream's worker (sim::enqueue) and keeps NCCL's rules, so that what hangs or races on NCCL does so
// here, and is then named: collectives must be called in the same order with the same arguments on every
// rank (a mismatch is a fault naming both calls); a send waits until its receiver has reached the matching
// recv (NCCL's rendezvous protocol: two sends that cross deadlock outside a group); a group progresses all of
// its operations together; a wait that makes no progress for POLDER_SIM_NCCL_DEADLOCK seconds prints the
// wait-for graph of the comm's ranks and faults. A dead peer or a peer's ncclCommAbort does not end a stream
// operation waiting on it (as on NCCL, whose kernels keep spinning): it is reported once, sets the comm's
// async error to ncclRemoteError (ncclCommGetAsyncError) and the operation waits on, without a device fault,
// until this process calls ncclCommAbort on the comm (the operation then ends, CUDA stays usable) or exits;
// host calls that wait (init, split, destroy) return ncclRemoteError instead. Reductions combine ranks in
// order 0..n-1 (deterministic), 16-bit floats in float rounded once; ncclAvg is NCCL's: floats pre-multiplied
// by 1/n and summed, integers summed then divided.
//
// Knobs (environment, read once): POLDER_SIM_NCCL_TIMEOUT (seconds ncclCommInitRank/ncclCommSplit wait for
// all ranks, default 300), POLDER_SIM_NCCL_DEADLOCK (seconds without progress before a wait is a deadlock,
// default 60), POLDER_SIM_NCCL_SLOT (bytes of each shared-memory slot, the chunk size of transfers, default
// 1M), POLDER_SIM_NCCL_BUFFSIZE and POLDER_SIM_NCCL_NCHANNELS (device memory NCCL's connections take: 2 x
// channels x buffsize at the first collective, 2 x buffsize per peer at the first send/recv with it; defaults
// 4M and 8), POLDER_SIM_NCCL_DIE="rank:seq" (that rank exits with status 1 when it starts operation `seq` of
// any comm: the peer-death tests).
#include <cuda_runtime.h>
#include <fcntl.h>
#include <nccl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/half.h"

namespace {

// ---- knobs, clock, errors
// ----------------------------------------------------------------------------------

size_t parse_bytes(const char* s, size_t fallback) {
  if (!s || !*s) return fallback;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  double mult = 1;
  if (end && (*end == 'k' || *end == 'K')) mult = 1024.0;
  if (end && (*end == 'm' || *end == 'M')) mult = 1024.0 * 1024;
  if (end && (*end == 'g' || *end == 'G')) mult = 1024.0 * 1024 * 1024;
  return v > 0 ? static_cast<size_t>(v * mult) : fallback;
}

double parse_seconds(const char* s, double fallback) {
  if (!s || !*s) return fallback;
  const double v = std::strtod(s, nullptr);
  return v > 0 ? v : fallback;
}

struct Knobs {
  double timeout_s = 300, deadlock_s = 60;
  size_t slot_bytes = 1 << 20, buffsize = 4 << 20, init_bytes = 8 << 20;
  int nchannels = 8;
  int die_rank = -1;
  uint64_t die_seq = 0;
};

const Knobs& knobs() {
  static const Knobs k = [] {
    Knobs k;
    k.timeout_s = parse_seconds(std::getenv("POLDER_SIM_NCCL_TIMEOUT"), k.timeout_s);
    k.deadlock_s = parse_seconds(std::getenv("POLDER_SIM_NCCL_DEADLOCK"), k.deadlock_s);
    // At least 64 KiB: a reduce-scatter chunk gives each rank slot_bytes / nranks.
    k.slot_bytes = std::max<size_t>(parse_bytes(std::getenv("POLDER_SIM_NCCL_SLOT"), k.slot_bytes), 64 << 10);
    k.slot_bytes = (k.slot_bytes + 4095) / 4096 * 4096;
    k.buffsize = parse_bytes(std::getenv("POLDER_SIM_NCCL_BUFFSIZE"), k.buffsize);
    if (const char* s = std::getenv("POLDER_SIM_NCCL_NCHANNELS")) k.nchannels = std::max(1, std::atoi(s));
    if (const char* s = std::getenv("POLDER_SIM_NCCL_DIE")) {
      int r = -1;
      unsigned long long q = 0;
      if (std::sscanf(s, "%d:%llu", &r, &q) == 2) {
        k.die_rank = r;
        k.die_seq = q;
      }
    }
    return k;
  }();
  return k;
}

int64_t now_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);  // system-wide: comparable across the processes of the host
  return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

std::mutex g_error_mu;
std::string g_last_error;

// Records the message ncclGetLastError returns (NCCL prints it only with NCCL_DEBUG=WARN or INFO).
ncclResult_t fail(ncclResult_t r, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_error_mu);
  g_last_error = message;
  const char* debug = std::getenv("NCCL_DEBUG");
  if (debug && (!strcasecmp(debug, "WARN") || !strcasecmp(debug, "INFO")))
    std::fprintf(stderr, "sim: NCCL WARN %s\n", message.c_str());
  return r;
}

// A failed operation on a stream worker: ends the operation, sets the comm's async error and reports a
// device fault (a remote failure is no Fault on a stream: see PeerCheck).
struct Fault {
  ncclResult_t result;
  std::string what, message;
};
// The comm was aborted by this process, or the process exits: the operation ends without a report.
struct Quit {};

// Set by an atexit handler (registered at the first comm, after the CUDA runtime's own, so it runs first):
// a stream operation waiting out a remote failure ends, so that exit() need not wait for its worker.
std::atomic<bool> g_exiting{false};

// ---- data types and reductions
// ------------------------------------------------------------------------------

size_t dtype_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;  // fp8 and unknown values: not emulated
  }
}

const char* dtype_name(int t) {
  static const char* const names[] = {"int8",    "uint8",    "int32",      "uint32",
                                      "int64",   "uint64",   "float16",    "float32",
                                      "float64", "bfloat16", "float8e4m3", "float8e5m2"};
  return t >= 0 && t < 12 ? names[t] : "?";
}

const char* op_name(int op) {
  static const char* const names[] = {"sum", "prod", "max", "min", "avg"};
  return op >= 0 && op < 5 ? names[op] : "?";
}

// Storage type T, accumulated as A.
template <typename T>
struct Io {
  using A = T;
  static A load(const char* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(char* p, A v) { std::memcpy(p, &v, sizeof v); }
};
template <>
struct Io<polder::f16> {
  using A = float;
  static A load(const char* p) {
    polder::f16 v;
    std::memcpy(&v.bits, p, 2);
    return static_cast<float>(v);
  }
  static void store(char* p, A v) {
    const polder::f16 h(v);
    std::memcpy(p, &h.bits, 2);
  }
};
template <>
struct Io<polder::bf16> {
  using A = float;
  static A load(const char* p) {
    polder::bf16 v;
    std::memcpy(&v.bits, p, 2);
    return static_cast<float>(v);
  }
  static void store(char* p, A v) {
    const polder::bf16 h(v);
    std::memcpy(p, &h.bits, 2);
  }
};

// Integer sums and products wrap, as on the GPU (unsigned arithmetic: no signed overflow).
template <typename A>
A add(A a, A b) {
  if constexpr (std::is_integral_v<A>) {
    using U = std::make_unsigned_t<A>;
    return static_cast<A>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
  } else {
    return a + b;
  }
}
template <typename A>
A mul(A a, A b) {
  if constexpr (std::is_integral_v<A>) {
    using U = std::make_unsigned_t<A>;
    using W = std::conditional_t<(sizeof(U) < sizeof(unsigned)), unsigned, U>;
    return static_cast<A>(
        static_cast<U>(static_cast<W>(static_cast<U>(a)) * static_cast<W>(static_cast<U>(b))));
  } else {
    return a * b;
  }
}
// max and min of floats as CUDA's fmaxf/fminf (and __hmax for 16-bit types): a NaN loses to a number.
template <typename A>
A max_of(A a, A b) {
  if constexpr (std::is_floating_point_v<A>)
    return std::fmax(a, b);
  else
    return a < b ? b : a;
}
template <typename A>
A min_of(A a, A b) {
  if constexpr (std::is_floating_point_v<A>)
    return std::fmin(a, b);
  else
    return b < a ? b : a;
}

// dst[i] = src[0][i] op src[1][i] op ... op src[n-1][i], combined in rank order.
template <typename T>
void reduce_typed(ncclRedOp_t op, int n, const char* const* src, char* dst, size_t len) {
  using IO = Io<T>;
  using A = typename IO::A;
  constexpr size_t es = sizeof(T);
  for (size_t i = 0; i < len; ++i) {
    const size_t at = i * es;
    A a = IO::load(src[0] + at);
    if (op == ncclAvg && std::is_floating_point_v<A>) {
      const A s = A(1) / static_cast<A>(n);
      a = a * s;
      for (int q = 1; q < n; ++q) a = a + IO::load(src[q] + at) * s;
    } else {
      for (int q = 1; q < n; ++q) {
        const A b = IO::load(src[q] + at);
        switch (op) {
          case ncclProd:
            a = mul(a, b);
            break;
          case ncclMax:
            a = max_of(a, b);
            break;
          case ncclMin:
            a = min_of(a, b);
            break;
          default:  // sum, and the integer avg before its division
            a = add(a, b);
        }
      }
      if constexpr (std::is_integral_v<A>)
        if (op == ncclAvg) a = static_cast<A>(a / static_cast<A>(n));
    }
    IO::store(dst + at, a);
  }
}

void reduce(ncclDataType_t t, ncclRedOp_t op, int n, const char* const* src, char* dst, size_t len) {
  switch (t) {
    case ncclInt8:
      return reduce_typed<int8_t>(op, n, src, dst, len);
    case ncclUint8:
      return reduce_typed<uint8_t>(op, n, src, dst, len);
    case ncclInt32:
      return reduce_typed<int32_t>(op, n, src, dst, len);
    case ncclUint32:
      return reduce_typed<uint32_t>(op, n, src, dst, len);
    case ncclInt64:
      return reduce_typed<int64_t>(op, n, src, dst, len);
    case ncclUint64:
      return reduce_typed<uint64_t>(op, n, src, dst, len);
    case ncclFloat16:
      return reduce_typed<polder::f16>(op, n, src, dst, len);
    case ncclBfloat16:
      return reduce_typed<polder::bf16>(op, n, src, dst, len);
    case ncclFloat32:
      return reduce_typed<float>(op, n, src, dst, len);
    case ncclFloat64:
      return reduce_typed<double>(op, n, src, dst, len);
    default:
      return;
  }
}

// ---- the shared segment of a communicator
// ------------------------------------------------------------------- Header | RankRec[n] | Channel[n * n] |
// collective slots[n] | point-to-point slots[n * n] (src * n + dst). tmpfs is sparse: a slot takes memory
// only as far as transfers have touched it.

constexpr uint64_t kMagic = 0x6c63636e2d6d6973ULL;  // "sim-nccl"
constexpr uint64_t kIdMagic = 0x64692d6c63636e70ULL;

struct Header {
  std::atomic<uint64_t> magic;  // 0, then 1 while the first rank fills in the header, then kMagic
  int32_t nranks;
  uint64_t slot_bytes, total_bytes;
  std::atomic<int32_t> joined, left, aborted, aborted_by;
};

// What a rank says about the collective it is in (checked against every other rank's at its first barrier).
struct CollDesc {
  uint64_t coll_seq, seq, count;
  int32_t kind, dtype, op, root;
};

struct alignas(64) RankRec {
  std::atomic<int32_t> pid;   // 0 until the rank joined
  std::atomic<int32_t> left;  // destroyed or aborted its comm: not a dead peer when its process exits
  std::atomic<uint64_t> bar;  // collective barrier: coll_seq << 32 | phase
  std::atomic<uint64_t> host_bar;
  CollDesc desc;
  int32_t split_color, split_key;
  // For reports: what the rank is doing on this comm ("ncclSend to 1 (seq 3)"), under a seqlock.
  std::atomic<uint32_t> status_gen;
  std::atomic<int32_t> blocked;
  std::atomic<int64_t> since_ns;
  std::atomic<uint64_t> ops_done;
  char status[200];
};

// One direction of a peer pair. The k-th send of src to dst meets the k-th recv of dst from src (NCCL's
// matching: per peer, in posting order); one transfer at a time, chunk by chunk through the pair's slot.
struct alignas(64) Channel {
  std::atomic<uint64_t> sseq, rseq;         // transfers the sender / the receiver has reached
  std::atomic<uint64_t> matched, mismatch;  // the sender's verdict on transfer k
  std::atomic<uint64_t> ready, taken;       // chunks written / consumed, over all transfers
  uint64_t scount, rcount, sop, rop;        // count and op seq of the current send / recv
  int32_t sdtype, rdtype;
};

size_t align_page(size_t n) {
  return (n + 4095) / 4096 * 4096;
}

struct Layout {
  size_t ranks, channels, coll, p2p, total;
  Layout(int n, size_t slot) {
    ranks = 4096;
    channels = ranks + align_page(sizeof(RankRec) * n);
    coll = channels + align_page(sizeof(Channel) * n * n);
    p2p = coll + slot * n;
    total = p2p + slot * n * n;
  }
};

struct IdBytes {
  uint64_t magic, a, b;  // a, b: random (ncclGetUniqueId) or derived from the parent (ncclCommSplit)
};

std::string id_hex(const IdBytes& id) {
  return format("%016llx%016llx", static_cast<unsigned long long>(id.a),
                static_cast<unsigned long long>(id.b));
}

uint64_t mix(uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// ---- communicators
// ------------------------------------------------------------------------------------------

struct CommState {
  IdBytes id{};
  std::string name;  // "comm 'dp' 1a2b3c4d" for reports
  std::string shm_name;
  int nranks = 0, rank = 0, device = 0;
  char* base = nullptr;
  size_t bytes = 0, slot = 0;
  Header* hdr = nullptr;
  RankRec* recs = nullptr;
  Channel* chans = nullptr;
  char* coll_slots = nullptr;
  char* p2p_slots = nullptr;

  std::atomic<int> async_error{ncclSuccess};
  std::atomic<bool> local_abort{false};
  std::atomic<bool> remote_reported{false};  // a remote failure's line was printed

  // Posting side (the host thread that calls NCCL on this comm).
  std::mutex post_mu;
  uint64_t next_seq = 0, next_coll = 0, next_launch = 0, host_bars = 0, splits = 0;
  std::vector<uint64_t> sends, recvs;  // per peer
  bool coll_connected = false;
  std::vector<bool> p2p_connected;
  size_t reserved = 0;

  // Stream operations run in the order they were launched on this comm, whatever their streams.
  std::mutex mu;
  std::condition_variable cv;
  uint64_t low = 0;  // every launch before `low` has finished
  std::set<uint64_t> finished;
  std::mutex status_mu;

  RankRec& rec(int r) const { return recs[r]; }
  Channel& chan(int src, int dst) const { return chans[src * nranks + dst]; }
  char* coll_slot(int r) const { return coll_slots + slot * r; }
  char* p2p_slot(int src, int dst) const { return p2p_slots + slot * (src * nranks + dst); }
  std::string who() const { return format("%s (rank %d of %d)", name.c_str(), rank, nranks); }

  void finish_launch(uint64_t seq) {
    std::lock_guard<std::mutex> lock(mu);
    finished.insert(seq);
    while (finished.count(low)) finished.erase(low++);
    cv.notify_all();
  }
  bool turn(uint64_t seq) {
    std::lock_guard<std::mutex> lock(mu);
    return low == seq;
  }

  ~CommState() {
    if (base) munmap(base, bytes);
  }
};

}  // namespace

struct ncclComm {
  std::shared_ptr<CommState> s;
};

namespace {

// The status of this rank on `c` (its stream workers and its host thread write it: one at a time).
void set_status(CommState& c, const std::string& text, bool blocked, int64_t since) {
  std::lock_guard<std::mutex> lock(c.status_mu);
  RankRec& r = c.rec(c.rank);
  r.status_gen.fetch_add(1, std::memory_order_acq_rel);
  std::atomic_thread_fence(std::memory_order_release);
  std::snprintf(r.status, sizeof r.status, "%s", text.c_str());
  r.blocked.store(blocked ? 1 : 0, std::memory_order_relaxed);
  r.since_ns.store(since, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  r.status_gen.fetch_add(1, std::memory_order_release);
}

struct Status {
  std::string text;
  bool blocked = false;
  int64_t since = 0;
};

Status read_status(const RankRec& r) {
  Status s;
  for (int tries = 0; tries < 100; ++tries) {
    const uint32_t g = r.status_gen.load(std::memory_order_acquire);
    if (g & 1) {
      sched_yield();
      continue;
    }
    char buf[sizeof r.status];
    std::memcpy(buf, r.status, sizeof buf);
    buf[sizeof buf - 1] = 0;
    s.blocked = r.blocked.load(std::memory_order_relaxed) != 0;
    s.since = r.since_ns.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (r.status_gen.load(std::memory_order_relaxed) == g) {
      s.text = buf;
      return s;
    }
  }
  s.text = "(status being written)";
  return s;
}

bool process_dead(int pid) {
  if (pid <= 0) return false;
  if (kill(pid, 0) != 0 && errno == ESRCH) return true;
  // A zombie (exited, not yet reaped by its launcher) still answers kill(pid, 0).
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "r");
  if (!f) return false;
  char buf[512];
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = 0;
  const char* paren = std::strrchr(buf, ')');
  return paren && (paren[2] == 'Z' || paren[2] == 'X');
}

// "rank 0 blocked in ncclSend to 1 (seq 3) for 60 s; rank 1 ..." for every rank of the comm.
std::string wait_for_graph(const CommState& c) {
  std::string out;
  const int64_t t = now_ns();
  for (int q = 0; q < c.nranks; ++q) {
    const RankRec& r = c.rec(q);
    if (!out.empty()) out += "; ";
    const int pid = r.pid.load();
    if (pid == 0) {
      out += format("rank %d never joined", q);
      continue;
    }
    if (r.left.load()) {
      out += format("rank %d has destroyed or aborted the comm", q);
      continue;
    }
    if (process_dead(pid)) {
      out += format("rank %d (pid %d) is dead", q, pid);
      continue;
    }
    const Status s = read_status(r);
    if (s.blocked)
      out += format("rank %d blocked in %s for %.0f s", q, s.text.c_str(), (t - s.since) * 1e-9);
    else if (!s.text.empty())
      out += format("rank %d in %s", q, s.text.c_str());
    else
      out += format("rank %d is in no NCCL call on this comm (%llu operations done)", q,
                    static_cast<unsigned long long>(r.ops_done.load()));
  }
  return out;
}

// Whether every other rank of `c` is blocked in an NCCL wait, gone or never joined.
bool others_stuck(const CommState& c) {
  for (int q = 0; q < c.nranks; ++q) {
    if (q == c.rank) continue;
    const RankRec& r = c.rec(q);
    const int pid = r.pid.load();
    if (pid == 0 || r.left.load() || process_dead(pid)) continue;
    if (!read_status(r).blocked) return false;
  }
  return true;
}

// Abort and dead peers, checked by every wait. `doing` names the waiting call for the report. A host call
// (init, split, destroy) fails with a Fault; a stream operation (`stream`) does as NCCL's kernels do when a
// peer is gone: it prints the line once, sets the comm's async error to ncclRemoteError and keeps waiting
// until this process aborts the comm (Quit) or exits.
struct PeerCheck {
  int64_t next_pid_check = 0;
  bool stream = false;
  bool remote = false;  // a stream operation saw a remote failure: its wait is no deadlock
  void operator()(CommState& c, const std::function<std::string()>& doing) {
    if (c.local_abort.load() || (stream && g_exiting.load())) throw Quit{};
    if (remote) return;
    std::string m;
    if (c.hdr->aborted.load(std::memory_order_acquire)) {
      m = format("rank %d aborted %s while rank %d was in %s", c.hdr->aborted_by.load(), c.name.c_str(),
                 c.rank, doing().c_str());
    } else {
      const int64_t t = now_ns();
      if (t < next_pid_check) return;
      next_pid_check = t + 100000000;  // every 100 ms
      for (int q = 0; q < c.nranks && m.empty(); ++q) {
        const RankRec& r = c.rec(q);
        const int pid = r.pid.load();
        if (q == c.rank || pid == 0 || r.left.load() || !process_dead(pid)) continue;
        const Status s = read_status(r);
        m = format("rank %d (pid %d) died during %s on %s; rank %d was in %s", q, pid,
                   s.text.empty() ? "no NCCL call" : s.text.c_str(), c.name.c_str(), c.rank, doing().c_str());
      }
    }
    if (m.empty()) return;
    if (!stream) throw Fault{ncclRemoteError, "NCCL", m};
    remote = true;
    int expected = ncclSuccess;
    c.async_error.compare_exchange_strong(expected, ncclRemoteError);
    if (!c.remote_reported.exchange(true)) {
      fail(ncclRemoteError, "NCCL: " + m);
      std::fprintf(stderr, "sim: NCCL: %s\n", m.c_str());
      std::fflush(stderr);
    }
  }
};

// Sleeps between polls: yields first, then backs off to 1 ms.
struct Backoff {
  int idle = 0;
  void pause() {
    if (++idle < 32) {
      sched_yield();
      return;
    }
    const long us = std::min<long>(1000, 20L * (idle - 31));
    timespec ts{0, us * 1000};
    nanosleep(&ts, nullptr);
  }
  void reset() { idle = 0; }
};

// ---- operations
// --------------------------------------------------------------------------------------------

enum class Kind { all_reduce, reduce, broadcast, all_gather, reduce_scatter, send, recv };

const char* kind_call(Kind k) {
  switch (k) {
    case Kind::all_reduce:
      return "ncclAllReduce";
    case Kind::reduce:
      return "ncclReduce";
    case Kind::broadcast:
      return "ncclBroadcast";
    case Kind::all_gather:
      return "ncclAllGather";
    case Kind::reduce_scatter:
      return "ncclReduceScatter";
    case Kind::send:
      return "ncclSend";
    case Kind::recv:
      return "ncclRecv";
  }
  return "?";
}

bool is_p2p(Kind k) {
  return k == Kind::send || k == Kind::recv;
}
bool is_reduction(Kind k) {
  return k == Kind::all_reduce || k == Kind::reduce || k == Kind::reduce_scatter;
}
bool is_rooted(Kind k) {
  return k == Kind::reduce || k == Kind::broadcast;
}

struct Op {
  std::shared_ptr<CommState> c;
  Kind kind;
  const char* send = nullptr;
  char* recv = nullptr;
  size_t count = 0;  // per rank: recvcount of a reduce-scatter, sendcount of an all-gather
  ncclDataType_t dtype = ncclFloat32;
  ncclRedOp_t red = ncclSum;
  int root = -1;       // root of a rooted collective, peer of a send/recv
  uint64_t seq = 0;    // op sequence number on the comm (1, 2, ...), in reports
  uint64_t order = 0;  // collectives: coll_seq (1, 2, ...); send/recv: transfer number on the channel
  int state = 0;       // progress
  uint64_t phase = 0, chunk = 0, nchunks = 0, chunk_elems = 0;
  bool done = false;
};

std::string short_desc(const Op& o) {
  if (o.kind == Kind::send) return format("ncclSend to %d (seq %llu)", o.root, (unsigned long long)o.seq);
  if (o.kind == Kind::recv) return format("ncclRecv from %d (seq %llu)", o.root, (unsigned long long)o.seq);
  return format("%s (seq %llu)", kind_call(o.kind), (unsigned long long)o.seq);
}

std::string coll_desc(const CollDesc& d, int rank) {
  const Kind k = static_cast<Kind>(d.kind);
  std::string args = format("%llu x %s", (unsigned long long)d.count, dtype_name(d.dtype));
  if (is_reduction(k)) args += format(", %s", op_name(d.op));
  if (is_rooted(k)) args += format(", root %d", d.root);
  return format("rank %d called %s(%s) as collective %llu (seq %llu)", rank, kind_call(k), args.c_str(),
                (unsigned long long)d.coll_seq, (unsigned long long)d.seq);
}

size_t elem(const Op& o) {
  return dtype_size(o.dtype);
}

uint64_t bar_tag(const Op& o, uint64_t phase) {
  return o.order << 32 | phase;
}

void coll_publish(Op& o) {
  const CommState& c = *o.c;
  const size_t es = elem(o), off = o.chunk * o.chunk_elems, len = std::min(o.chunk_elems, o.count - off);
  char* mine = c.coll_slot(c.rank);
  switch (o.kind) {
    case Kind::all_reduce:
    case Kind::reduce:
    case Kind::all_gather:
      std::memcpy(mine, o.send + off * es, len * es);
      break;
    case Kind::broadcast:
      if (c.rank == o.root) std::memcpy(mine, o.send + off * es, len * es);
      break;
    case Kind::reduce_scatter:
      for (int j = 0; j < c.nranks; ++j)
        std::memcpy(mine + j * len * es, o.send + (j * o.count + off) * es, len * es);
      break;
    default:
      break;
  }
}

void coll_consume(Op& o) {
  const CommState& c = *o.c;
  const size_t es = elem(o), off = o.chunk * o.chunk_elems, len = std::min(o.chunk_elems, o.count - off);
  std::vector<const char*> src(c.nranks);
  switch (o.kind) {
    case Kind::all_reduce:
    case Kind::reduce:
      if (o.kind == Kind::reduce && c.rank != o.root) break;
      for (int q = 0; q < c.nranks; ++q) src[q] = c.coll_slot(q);
      reduce(o.dtype, o.red, c.nranks, src.data(), o.recv + off * es, len);
      break;
    case Kind::reduce_scatter:
      for (int q = 0; q < c.nranks; ++q) src[q] = c.coll_slot(q) + c.rank * len * es;
      reduce(o.dtype, o.red, c.nranks, src.data(), o.recv + off * es, len);
      break;
    case Kind::broadcast:
      if (c.rank != o.root)
        std::memcpy(o.recv + off * es, c.coll_slot(o.root), len * es);
      else if (o.send != o.recv)
        std::memmove(o.recv + off * es, o.send + off * es, len * es);
      break;
    case Kind::all_gather:
      for (int q = 0; q < c.nranks; ++q)
        std::memmove(o.recv + (q * o.count + off) * es, c.coll_slot(q), len * es);
      break;
    default:
      break;
  }
}

bool all_reached(const CommState& c, uint64_t tag) {
  for (int q = 0; q < c.nranks; ++q)
    if (c.rec(q).bar.load(std::memory_order_acquire) < tag) return false;
  return true;
}

// One step of a collective; false when it must wait. Phases per chunk: publish, barrier (odd), consume,
// barrier (even) before the slots are reused.
bool step_coll(Op& o) {
  CommState& c = *o.c;
  RankRec& me = c.rec(c.rank);
  if (o.state == 0) {
    const size_t es = elem(o);
    o.chunk_elems = c.slot / es / (o.kind == Kind::reduce_scatter ? c.nranks : 1);
    o.nchunks = (o.count + o.chunk_elems - 1) / o.chunk_elems;
    me.desc = CollDesc{o.order,
                       o.seq,
                       o.count,
                       static_cast<int32_t>(o.kind),
                       static_cast<int32_t>(o.dtype),
                       is_reduction(o.kind) ? static_cast<int32_t>(o.red) : -1,
                       is_rooted(o.kind) ? o.root : -1};
    coll_publish(o);
    o.phase = 1;
    me.bar.store(bar_tag(o, 1), std::memory_order_release);
    o.state = 1;
    return true;
  }
  if (!all_reached(c, bar_tag(o, o.phase))) return false;
  if (o.phase == 1) {
    for (int q = 0; q < c.nranks; ++q) {
      const CollDesc& d = c.rec(q).desc;
      const CollDesc& m = me.desc;
      if (d.coll_seq != m.coll_seq || d.kind != m.kind || d.count != m.count || d.dtype != m.dtype ||
          d.op != m.op || d.root != m.root) {
        throw Fault{ncclInvalidUsage, "NCCL",
                    format("collective mismatch on %s: %s but %s", c.name.c_str(),
                           coll_desc(m, c.rank).c_str(), coll_desc(d, q).c_str())};
      }
    }
  }
  if (o.phase % 2 == 1) {
    coll_consume(o);
  } else {
    if (++o.chunk == o.nchunks) {
      o.done = true;
      return true;
    }
    coll_publish(o);
  }
  ++o.phase;
  me.bar.store(bar_tag(o, o.phase), std::memory_order_release);
  return true;
}

std::string p2p_mismatch(const CommState& c, const Channel& ch, int src, int dst) {
  return format(
      "send/recv mismatch on %s: rank %d ncclSend of %llu x %s to rank %d (seq %llu) but rank %d ncclRecv "
      "of %llu x %s from rank %d (seq %llu)",
      c.name.c_str(), src, (unsigned long long)ch.scount, dtype_name(ch.sdtype), dst,
      (unsigned long long)ch.sop, dst, (unsigned long long)ch.rcount, dtype_name(ch.rdtype), src,
      (unsigned long long)ch.rop);
}

bool step_send(Op& o) {
  CommState& c = *o.c;
  Channel& ch = c.chan(c.rank, o.root);
  const uint64_t k = o.order;
  const size_t bytes = o.count * elem(o);
  if (o.state == 0) {
    ch.scount = o.count;
    ch.sdtype = o.dtype;
    ch.sop = o.seq;
    ch.sseq.store(k, std::memory_order_release);
    o.state = 1;
    return true;
  }
  if (o.state == 1) {
    if (ch.rseq.load(std::memory_order_acquire) < k) return false;  // the receiver has not reached its recv
    if (ch.rcount != o.count || ch.rdtype != o.dtype) {
      const std::string m = p2p_mismatch(c, ch, c.rank, o.root);
      ch.mismatch.store(k, std::memory_order_release);
      throw Fault{ncclInvalidUsage, "NCCL", m};
    }
    ch.matched.store(k, std::memory_order_release);
    o.nchunks = (bytes + c.slot - 1) / c.slot;
    o.state = 2;
    if (o.nchunks == 0) o.done = true;
    return true;
  }
  if (ch.ready.load(std::memory_order_acquire) != ch.taken.load(std::memory_order_acquire)) return false;
  const size_t off = o.chunk * c.slot;
  std::memcpy(c.p2p_slot(c.rank, o.root), o.send + off, std::min(c.slot, bytes - off));
  ch.ready.fetch_add(1, std::memory_order_acq_rel);
  if (++o.chunk == o.nchunks) o.done = true;
  return true;
}

bool step_recv(Op& o) {
  CommState& c = *o.c;
  Channel& ch = c.chan(o.root, c.rank);
  const uint64_t k = o.order;
  const size_t bytes = o.count * elem(o);
  if (o.state == 0) {
    ch.rcount = o.count;
    ch.rdtype = o.dtype;
    ch.rop = o.seq;
    ch.rseq.store(k, std::memory_order_release);
    o.state = 1;
    return true;
  }
  if (o.state == 1) {
    if (ch.mismatch.load(std::memory_order_acquire) == k)
      throw Fault{ncclInvalidUsage, "NCCL", p2p_mismatch(c, ch, o.root, c.rank)};
    if (ch.matched.load(std::memory_order_acquire) < k) return false;
    o.nchunks = (bytes + c.slot - 1) / c.slot;
    o.state = 2;
    if (o.nchunks == 0) o.done = true;
    return true;
  }
  if (ch.ready.load(std::memory_order_acquire) <= ch.taken.load(std::memory_order_acquire)) return false;
  const size_t off = o.chunk * c.slot;
  std::memcpy(o.recv + off, c.p2p_slot(o.root, c.rank), std::min(c.slot, bytes - off));
  ch.taken.fetch_add(1, std::memory_order_acq_rel);
  if (++o.chunk == o.nchunks) o.done = true;
  return true;
}

bool step(Op& o) {
  if (o.kind == Kind::send) return step_send(o);
  if (o.kind == Kind::recv) return step_recv(o);
  return step_coll(o);
}

// ---- launches: the stream operation of one group
// -----------------------------------------------------------

struct Launch {
  std::vector<Op> ops;
  std::vector<std::pair<std::shared_ptr<CommState>, uint64_t>> turns;  // comm, launch number on it
  std::string what;
  // A group with operations on several streams runs once all its streams have reached it.
  int nstreams = 1;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  bool complete = false;
  std::atomic<bool> finished{false};

  void finish() {
    if (finished.exchange(true)) return;
    for (auto& [c, seq] : turns) c->finish_launch(seq);
  }
  ~Launch() { finish(); }  // also when the runtime drops the operation without running it
};

std::vector<std::shared_ptr<CommState>> comms_of(const Launch& l) {
  std::vector<std::shared_ptr<CommState>> out;
  for (const auto& t : l.turns) out.push_back(t.first);
  return out;
}

// The pending operations of `c` in the launch, for its status line.
std::string pending_text(const Launch& l, const CommState* c) {
  std::string s;
  int n = 0;
  for (const Op& o : l.ops)
    if (o.c.get() == c && !o.done) {
      if (n++) s += ", ";
      s += short_desc(o);
    }
  return n > 1 ? "group{" + s + "}" : s;
}

void maybe_die(const Op& o) {
  const Knobs& k = knobs();
  if (o.c->rank != k.die_rank || o.seq != k.die_seq) return;
  set_status(*o.c, short_desc(o), false, now_ns());
  std::fprintf(stderr, "sim: NCCL: POLDER_SIM_NCCL_DIE: rank %d (pid %d) exits at %s on %s\n", o.c->rank,
               getpid(), short_desc(o).c_str(), o.c->name.c_str());
  std::fflush(stderr);
  _exit(1);
}

void progress(Launch& l) {
  const auto comms = comms_of(l);
  std::vector<PeerCheck> checks(comms.size());
  for (PeerCheck& check : checks) check.stream = true;
  // Queues: a comm's collectives in order; its sends to (receives from) a peer in order.
  std::map<std::tuple<const CommState*, int, int>, std::vector<Op*>> by_key;
  for (Op& o : l.ops) {
    const int dir = o.kind == Kind::send ? 1 : o.kind == Kind::recv ? 2 : 0;
    by_key[{o.c.get(), dir, dir ? o.root : -1}].push_back(&o);
  }
  std::vector<std::vector<Op*>> queues;
  for (auto& kv : by_key) queues.push_back(kv.second);
  std::vector<size_t> head(queues.size(), 0);

  bool my_turn = false, blocked = false, confirming = false;
  int64_t last_progress = now_ns();
  Backoff backoff;
  const int64_t limit = static_cast<int64_t>(knobs().deadlock_s * 1e9);
  for (;;) {
    bool moved = false, all_done = true;
    if (!my_turn) {
      my_turn = true;
      for (auto& [c, seq] : l.turns) my_turn = my_turn && c->turn(seq);
      if (my_turn) {
        for (const auto& c : comms) set_status(*c, pending_text(l, c.get()), false, now_ns());
        for (const Op& o : l.ops) maybe_die(o);
      }
    }
    if (my_turn) {
      for (size_t i = 0; i < queues.size(); ++i) {
        while (head[i] < queues[i].size()) {
          Op& o = *queues[i][head[i]];
          if (!step(o)) break;
          moved = true;
          if (!o.done) break;
          ++head[i];
        }
        all_done = all_done && head[i] == queues[i].size();
      }
      if (all_done) return;
    }
    if (moved) {
      confirming = false;
      backoff.reset();
      last_progress = now_ns();
      if (blocked) {
        blocked = false;
        for (const auto& c : comms) set_status(*c, pending_text(l, c.get()), false, last_progress);
      }
      continue;
    }
    // Checked after a round that found nothing to do (a fault a peer reported before aborting is seen
    // first), then sleep.
    for (size_t i = 0; i < comms.size(); ++i)
      checks[i](*comms[i], [&] { return pending_text(l, comms[i].get()); });
    backoff.pause();
    if (!blocked && backoff.idle == 32) {
      blocked = true;
      for (const auto& c : comms)
        set_status(*c,
                   my_turn ? pending_text(l, c.get())
                           : "(waiting for its turn on the comm) " + pending_text(l, c.get()),
                   true, last_progress);
    }
    // A wait-for cycle: every other rank is itself blocked in NCCL, gone or never came. A rank doing
    // something else (emulated kernels are slow) gets five times as long before the wait is called a
    // deadlock.
    // A wait on a dead or aborting peer is no deadlock: it lasts until this process aborts the comm.
    bool remote = false;
    for (const PeerCheck& check : checks) remote = remote || check.remote;
    const int64_t waited = now_ns() - last_progress;
    if (waited > limit && !remote) {
      bool cycle = true;
      for (const auto& c : comms) cycle = cycle && others_stuck(*c);
      if (!cycle && waited <= 5 * limit) continue;
      // A peer seen blocked may have arrived just after this rank's last round: one more round first.
      if (!confirming) {
        confirming = true;
        continue;
      }
      std::string graph;
      for (const auto& c : comms) {
        if (!graph.empty()) graph += " | ";
        graph += comms.size() > 1 ? c->name + ": " + wait_for_graph(*c) : wait_for_graph(*c);
      }
      throw Fault{
          ncclSystemError, "NCCL deadlock",
          graph + format(" (no progress for %.0f s on %s; POLDER_SIM_NCCL_DEADLOCK=%g%s)", waited * 1e-9,
                         comms.size() > 1 ? "its comms" : comms[0]->name.c_str(), knobs().deadlock_s,
                         cycle ? "" : ", a rank outside NCCL waits gets 5 times as long")};
    }
  }
}

void run_launch(Launch& l) {
  const auto comms = comms_of(l);
  bool skip = false;
  // A comm with a remote failure still runs its operations: they wait, as the first one does.
  for (const auto& c : comms) {
    const int e = c->async_error.load();
    skip = skip || c->local_abort.load() || (e != ncclSuccess && e != ncclRemoteError);
  }
  if (!skip) {
    try {
      progress(l);
    } catch (const Quit&) {
    } catch (const Fault& f) {
      for (const auto& c : comms) {
        int expected = ncclSuccess;
        c->async_error.compare_exchange_strong(expected, f.result);
      }
      fail(f.result, f.what + ": " + f.message);
      sim::device_fault(cudaErrorLaunchFailure, f.what, f.message);
    }
  }
  for (const auto& c : comms) {
    c->rec(c->rank).ops_done.fetch_add(1, std::memory_order_relaxed);
    set_status(*c, "", false, now_ns());
  }
  l.finish();
}

// The stream operation of each of the launch's streams: the last stream to reach it runs the group.
void run_on_stream(const std::shared_ptr<Launch>& l) {
  if (l->nstreams == 1) return run_launch(*l);
  std::unique_lock<std::mutex> lock(l->mu);
  if (++l->arrived == l->nstreams) {
    lock.unlock();
    run_launch(*l);
    lock.lock();
    l->complete = true;
    l->cv.notify_all();
    return;
  }
  l->cv.wait(lock, [&] { return l->complete; });
}

// ---- groups
// -------------------------------------------------------------------------------------------------

struct PostedOp {
  Op op;
  cudaStream_t stream;
};

struct Group {
  int depth = 0;
  std::vector<PostedOp> ops;
  ncclResult_t error = ncclSuccess;
};
thread_local Group t_group;

// Device memory of NCCL's connections, taken at the first use (lazy connect, NCCL >= 2.22).
ncclResult_t connect(const Op& o) {
  CommState& c = *o.c;
  const Knobs& k = knobs();
  std::lock_guard<std::mutex> lock(c.post_mu);
  size_t need = 0;
  const char* what = nullptr;
  if (!is_p2p(o.kind)) {
    if (c.coll_connected || c.nranks == 1) return ncclSuccess;
    need = 2 * static_cast<size_t>(k.nchannels) * k.buffsize;
    what = "NCCL ring connections (first collective)";
  } else {
    if (c.p2p_connected[o.root] || o.root == c.rank) return ncclSuccess;
    need = 2 * k.buffsize;
    what = "NCCL p2p connection (first send/recv with a peer)";
  }
  if (!sim::reserve_capacity(need, what)) {
    return fail(ncclUnhandledCudaError,
                format("Cuda failure 'out of memory': %s on %s needs %zu bytes of device memory "
                       "(POLDER_SIM_NCCL_BUFFSIZE x POLDER_SIM_NCCL_NCHANNELS)",
                       what, c.who().c_str(), need));
  }
  c.reserved += need;
  if (is_p2p(o.kind))
    c.p2p_connected[o.root] = true;
  else
    c.coll_connected = true;
  return ncclSuccess;
}

ncclResult_t launch_group(std::vector<PostedOp>& posted) {
  if (posted.empty()) return ncclSuccess;
  for (const PostedOp& p : posted)
    if (const ncclResult_t r = connect(p.op); r != ncclSuccess) return r;
  auto l = std::make_shared<Launch>();
  std::vector<cudaStream_t> streams;
  for (PostedOp& p : posted) {
    if (std::find(streams.begin(), streams.end(), p.stream) == streams.end()) streams.push_back(p.stream);
    bool seen = false;
    for (auto& t : l->turns) seen = seen || t.first == p.op.c;
    if (!seen) {
      std::lock_guard<std::mutex> lock(p.op.c->post_mu);
      l->turns.emplace_back(p.op.c, p.op.c->next_launch++);
    }
    l->ops.push_back(std::move(p.op));
  }
  l->nstreams = static_cast<int>(streams.size());
  const Op& first = l->ops.front();
  l->what = l->ops.size() == 1 ? format("%s on %s", short_desc(first).c_str(), first.c->who().c_str())
                               : format("ncclGroupEnd of %zu operations (first: %s on %s)", l->ops.size(),
                                        short_desc(first).c_str(), first.c->who().c_str());
  for (cudaStream_t s : streams) {
    const cudaError_t e = sim::enqueue(s, l->what, [l] { run_on_stream(l); });
    if (e != cudaSuccess) {
      // Streams already given the group would wait for the others forever: release them.
      if (l->nstreams > 1) {
        std::lock_guard<std::mutex> lock(l->mu);
        l->complete = true;
        l->cv.notify_all();
      }
      return fail(ncclUnhandledCudaError,
                  format("%s: the CUDA stream rejected it: %s", l->what.c_str(), cudaGetErrorString(e)));
    }
  }
  return ncclSuccess;
}

// A failure inside a group is also the group's: ncclGroupEnd then launches nothing and returns it.
ncclResult_t group_fail(ncclResult_t r, const std::string& message) {
  Group& g = t_group;
  if (g.depth > 0 && g.error == ncclSuccess) g.error = r;
  return fail(r, message);
}

ncclResult_t check_comm(ncclComm_t comm, const char* call) {
  if (!comm || !comm->s) return group_fail(ncclInvalidArgument, format("%s: comm is NULL", call));
  const int e = comm->s->async_error.load();
  if (e != ncclSuccess)
    return group_fail(static_cast<ncclResult_t>(e),
                      format("%s: %s is in error state (%s)", call, comm->s->who().c_str(),
                             ncclGetErrorString(static_cast<ncclResult_t>(e))));
  return ncclSuccess;
}

ncclResult_t check_buffer(const void* p, size_t bytes, const char* which, const char* call,
                          const CommState& c) {
  if (bytes == 0) return ncclSuccess;
  if (!p) return fail(ncclInvalidArgument, format("%s on %s: %s is NULL", call, c.who().c_str(), which));
  if (!sim::is_device_pointer(p))
    return fail(ncclInvalidArgument,
                format("%s on %s: %s %p is not device memory", call, c.who().c_str(), which, p));
  return ncclSuccess;
}

// Validates and numbers an operation, then adds it to the thread's group; outside a group the call is a
// group of one (as in NCCL).
ncclResult_t post(Op o, cudaStream_t stream) {
  const char* call = kind_call(o.kind);
  ncclResult_t r = ncclSuccess;
  if (!o.c) {
    r = fail(ncclInvalidArgument, format("%s: comm is NULL", call));
  } else {
    CommState& c = *o.c;
    const size_t es = dtype_size(o.dtype);
    if (es == 0) {
      r = fail(ncclInvalidArgument, format("%s on %s: datatype %d is not emulated (or invalid)", call,
                                           c.who().c_str(), static_cast<int>(o.dtype)));
    } else if (is_reduction(o.kind) && (o.red < 0 || o.red >= ncclNumOps)) {
      r = fail(ncclInvalidArgument, format("%s on %s: reduction op %d is not emulated (or invalid)", call,
                                           c.who().c_str(), (int)o.red));
    } else if ((is_rooted(o.kind) || is_p2p(o.kind)) && (o.root < 0 || o.root >= c.nranks)) {
      r = fail(ncclInvalidArgument, format("%s on %s: %s %d is out of range [0, %d)", call, c.who().c_str(),
                                           is_p2p(o.kind) ? "peer" : "root", o.root, c.nranks));
    } else {
      const size_t n = o.count * es, all = n * c.nranks;
      const bool root = o.root == c.rank;
      switch (o.kind) {
        case Kind::all_reduce:
          r = check_buffer(o.send, n, "sendbuff", call, c);
          if (r == ncclSuccess) r = check_buffer(o.recv, n, "recvbuff", call, c);
          break;
        case Kind::reduce:
          r = check_buffer(o.send, n, "sendbuff", call, c);
          if (r == ncclSuccess && root) r = check_buffer(o.recv, n, "recvbuff", call, c);
          break;
        case Kind::broadcast:
          if (root) r = check_buffer(o.send, n, "sendbuff", call, c);
          if (r == ncclSuccess) r = check_buffer(o.recv, n, "recvbuff", call, c);
          break;
        case Kind::all_gather:
          r = check_buffer(o.send, n, "sendbuff", call, c);
          if (r == ncclSuccess) r = check_buffer(o.recv, all, "recvbuff", call, c);
          break;
        case Kind::reduce_scatter:
          r = check_buffer(o.send, all, "sendbuff", call, c);
          if (r == ncclSuccess) r = check_buffer(o.recv, n, "recvbuff", call, c);
          break;
        case Kind::send:
          r = check_buffer(o.send, n, "sendbuff", call, c);
          break;
        case Kind::recv:
          r = check_buffer(o.recv, n, "recvbuff", call, c);
          break;
      }
    }
  }
  Group& g = t_group;
  if (r != ncclSuccess) {
    if (g.depth > 0 && g.error == ncclSuccess) g.error = r;
    return r;
  }
  // A collective of no elements is no operation (NCCL returns at once); a send/recv of none still meets.
  if (o.count == 0 && !is_p2p(o.kind)) return ncclSuccess;
  {
    CommState& c = *o.c;
    std::lock_guard<std::mutex> lock(c.post_mu);
    o.seq = ++c.next_seq;
    if (o.kind == Kind::send)
      o.order = ++c.sends[o.root];
    else if (o.kind == Kind::recv)
      o.order = ++c.recvs[o.root];
    else
      o.order = ++c.next_coll;
  }
  g.ops.push_back(PostedOp{std::move(o), stream});
  if (g.depth > 0) return ncclSuccess;
  std::vector<PostedOp> ops = std::move(g.ops);
  g.ops.clear();
  return launch_group(ops);
}

Op make_op(ncclComm_t comm, Kind kind, const void* send, void* recv, size_t count, ncclDataType_t dtype,
           ncclRedOp_t red, int root) {
  Op o;
  if (comm) o.c = comm->s;
  o.kind = kind;
  o.send = static_cast<const char*>(send);
  o.recv = static_cast<char*>(recv);
  o.count = count;
  o.dtype = dtype;
  o.red = red;
  o.root = root;
  return o;
}

// ---- init, split, destroy
// -----------------------------------------------------------------------------------

// Waits until every rank's host_bar reaches this rank's next host barrier. `limit_s` bounds the wait.
ncclResult_t host_barrier(CommState& c, const char* call, double limit_s) {
  const uint64_t n = ++c.host_bars;
  c.rec(c.rank).host_bar.store(n, std::memory_order_release);
  set_status(c, format("%s (host)", call), true, now_ns());
  PeerCheck check;
  Backoff backoff;
  const int64_t start = now_ns();
  for (;;) {
    bool all = true;
    for (int q = 0; q < c.nranks; ++q) all = all && c.rec(q).host_bar.load(std::memory_order_acquire) >= n;
    if (all) break;
    try {
      check(c, [&] { return std::string(call); });
    } catch (const Fault& f) {
      return fail(f.result, f.what + ": " + f.message);
    } catch (const Quit&) {
      return fail(ncclInvalidUsage, format("%s: %s was aborted", call, c.who().c_str()));
    }
    if (now_ns() - start > static_cast<int64_t>(limit_s * 1e9)) {
      const std::string graph = wait_for_graph(c);
      std::fprintf(stderr, "sim: NCCL deadlock: %s on %s waited %g s for the other ranks: %s\n", call,
                   c.name.c_str(), limit_s, graph.c_str());
      return fail(ncclSystemError, format("%s on %s: ranks did not all arrive within %g s: %s", call,
                                          c.who().c_str(), limit_s, graph.c_str()));
    }
    backoff.pause();
  }
  set_status(c, "", false, now_ns());
  return ncclSuccess;
}

ncclResult_t map_segment(CommState& c, int nranks) {
  const Knobs& k = knobs();
  const Layout lay(nranks, k.slot_bytes);
  c.shm_name = "/polder-nccl-" + id_hex(c.id);
  const int fd = shm_open(c.shm_name.c_str(), O_CREAT | O_RDWR, 0600);
  if (fd < 0)
    return fail(ncclSystemError,
                format("ncclCommInitRank: shm_open(%s): %s", c.shm_name.c_str(), strerror(errno)));
  struct stat st;
  ncclResult_t r = ncclSuccess;
  if (fstat(fd, &st) != 0) {
    r = fail(ncclSystemError, format("ncclCommInitRank: fstat(%s): %s", c.shm_name.c_str(), strerror(errno)));
  } else if (st.st_size != 0 && static_cast<size_t>(st.st_size) != lay.total) {
    r = fail(
        ncclInvalidUsage,
        format("ncclCommInitRank: rank %d expects a segment of %zu bytes for %d ranks but %s has %lld: the "
               "ranks disagree on nranks or POLDER_SIM_NCCL_SLOT",
               c.rank, lay.total, nranks, c.shm_name.c_str(), static_cast<long long>(st.st_size)));
  } else if (st.st_size == 0 && ftruncate(fd, static_cast<off_t>(lay.total)) != 0) {
    r = fail(ncclSystemError, format("ncclCommInitRank: ftruncate(%s, %zu): %s", c.shm_name.c_str(),
                                     lay.total, strerror(errno)));
  }
  if (r == ncclSuccess) {
    void* p = mmap(nullptr, lay.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      r = fail(ncclSystemError,
               format("ncclCommInitRank: mmap(%s): %s", c.shm_name.c_str(), strerror(errno)));
    } else {
      c.base = static_cast<char*>(p);
      c.bytes = lay.total;
    }
  }
  close(fd);
  if (r != ncclSuccess) return r;
  c.slot = k.slot_bytes;
  c.hdr = reinterpret_cast<Header*>(c.base);
  c.recs = reinterpret_cast<RankRec*>(c.base + lay.ranks);
  c.chans = reinterpret_cast<Channel*>(c.base + lay.channels);
  c.coll_slots = c.base + lay.coll;
  c.p2p_slots = c.base + lay.p2p;
  uint64_t expected = 0;
  if (c.hdr->magic.compare_exchange_strong(expected, 1)) {
    c.hdr->nranks = nranks;
    c.hdr->slot_bytes = k.slot_bytes;
    c.hdr->total_bytes = lay.total;
    c.hdr->magic.store(kMagic, std::memory_order_release);
  } else {
    while (c.hdr->magic.load(std::memory_order_acquire) != kMagic) sched_yield();
    if (c.hdr->nranks != nranks)
      return fail(ncclInvalidUsage,
                  format("ncclCommInitRank: rank %d says %s has %d ranks, another rank said %d", c.rank,
                         c.name.c_str(), nranks, c.hdr->nranks));
  }
  return ncclSuccess;
}

ncclResult_t init_rank(ncclComm_t* out, int nranks, const IdBytes& id, int rank, const std::string& label) {
  if (!out) return fail(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
  *out = nullptr;
  if (t_group.depth > 0)
    return fail(ncclInvalidUsage,
                "ncclCommInitRank inside ncclGroupStart/End is not emulated (one device per process)");
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return fail(ncclInvalidArgument,
                format("ncclCommInitRank: rank %d of %d ranks is invalid", rank, nranks));
  if (id.magic != kIdMagic)
    return fail(ncclInvalidArgument, "ncclCommInitRank: the unique id was not made by ncclGetUniqueId");
  auto c = std::make_shared<CommState>();
  c->id = id;
  c->nranks = nranks;
  c->rank = rank;
  c->name = "comm " + (label.empty() ? "" : "'" + label + "' ") + id_hex(id).substr(0, 8);
  c->sends.assign(nranks, 0);
  c->recvs.assign(nranks, 0);
  c->p2p_connected.assign(nranks, false);
  if (cudaGetDevice(&c->device) != cudaSuccess) c->device = 0;
  if (const ncclResult_t r = map_segment(*c, nranks); r != ncclSuccess) return r;
  RankRec& me = c->rec(rank);
  int expected = 0;
  if (!me.pid.compare_exchange_strong(expected, getpid()))
    return fail(ncclInvalidUsage, format("ncclCommInitRank: rank %d of %s was already taken by pid %d", rank,
                                         c->name.c_str(), expected));
  const size_t init_bytes = knobs().init_bytes;
  if (!sim::reserve_capacity(init_bytes, "NCCL communicator (init)")) {
    me.left.store(1);
    return fail(ncclUnhandledCudaError,
                format("Cuda failure 'out of memory': ncclCommInitRank of %s needs %zu bytes",
                       c->who().c_str(), init_bytes));
  }
  c->reserved = init_bytes;
  // Registered after the CUDA runtime's atexit handler (reserve_capacity initialises it), so it runs first.
  static std::once_flag exit_hook;
  std::call_once(exit_hook, [] { std::atexit([] { g_exiting.store(true); }); });
  c->hdr->joined.fetch_add(1, std::memory_order_acq_rel);
  // Init is collective: wait for every rank.
  Backoff backoff;
  const int64_t start = now_ns();
  while (c->hdr->joined.load(std::memory_order_acquire) < nranks) {
    if (now_ns() - start > static_cast<int64_t>(knobs().timeout_s * 1e9)) {
      std::string missing;
      for (int q = 0; q < nranks; ++q)
        if (c->rec(q).pid.load() == 0) missing += (missing.empty() ? "" : ", ") + std::to_string(q);
      shm_unlink(c->shm_name.c_str());
      me.left.store(1);
      sim::release_capacity(c->reserved);
      std::fprintf(stderr, "sim: NCCL: ncclCommInitRank of %s: rank(s) %s never arrived within %g s\n",
                   c->who().c_str(), missing.c_str(), knobs().timeout_s);
      return fail(
          ncclSystemError,
          format(
              "ncclCommInitRank of %s: rank(s) %s of %d never arrived within %g s (POLDER_SIM_NCCL_TIMEOUT)",
              c->who().c_str(), missing.c_str(), nranks, knobs().timeout_s));
    }
    backoff.pause();
  }
  // Every rank has the segment mapped: its name is no longer needed (nothing left behind after a crash).
  if (rank == 0) shm_unlink(c->shm_name.c_str());
  *out = new ncclComm{c};
  return ncclSuccess;
}

void release(CommState& c) {
  std::lock_guard<std::mutex> lock(c.post_mu);
  if (c.reserved) sim::release_capacity(c.reserved);
  c.reserved = 0;
}

}  // namespace

// ---- the API
// ------------------------------------------------------------------------------------------------

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  if (!version) return fail(ncclInvalidArgument, "ncclGetVersion: version is NULL");
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
  if (!uniqueId) return fail(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
  uint64_t random[2];
  if (getrandom(random, sizeof random, 0) != static_cast<ssize_t>(sizeof random))
    return fail(ncclSystemError, format("ncclGetUniqueId: getrandom: %s", strerror(errno)));
  const IdBytes id{kIdMagic, random[0], random[1]};
  std::memset(uniqueId, 0, sizeof *uniqueId);
  std::memcpy(uniqueId->internal, &id, sizeof id);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank,
                                    ncclConfig_t* config) {
  std::string label;
  if (config) {
    if (config->magic != 0xcafebeef || config->size != sizeof(ncclConfig_t))
      return fail(ncclInvalidArgument,
                  "ncclCommInitRankConfig: config was not set with NCCL_CONFIG_INITIALIZER");
    if (config->commName) label = config->commName;
  }
  IdBytes id;
  std::memcpy(&id, commId.internal, sizeof id);
  return init_rank(comm, nranks, id, rank, label);
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
  return ncclCommInitRankConfig(comm, nranks, commId, rank, nullptr);
}

// Collective over `comm` on the host (as NCCL's bootstrap): ranks of one color form a comm, ordered by key
// then by their rank in `comm`.
ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config) {
  if (const ncclResult_t r = check_comm(comm, "ncclCommSplit"); r != ncclSuccess) return r;
  if (!newcomm) return fail(ncclInvalidArgument, "ncclCommSplit: newcomm is NULL");
  *newcomm = nullptr;
  if (color < 0 && color != NCCL_SPLIT_NOCOLOR)
    return fail(ncclInvalidArgument,
                format("ncclCommSplit: color %d is negative and not NCCL_SPLIT_NOCOLOR", color));
  CommState& c = *comm->s;
  RankRec& me = c.rec(c.rank);
  me.split_color = color;
  me.split_key = key;
  const uint64_t split = ++c.splits;
  const double limit = knobs().timeout_s;
  if (const ncclResult_t r = host_barrier(c, "ncclCommSplit", limit); r != ncclSuccess) return r;
  std::vector<std::pair<int, int>> members;  // (key, old rank)
  for (int q = 0; q < c.nranks; ++q)
    if (color != NCCL_SPLIT_NOCOLOR && c.rec(q).split_color == color)
      members.emplace_back(c.rec(q).split_key, q);
  if (const ncclResult_t r = host_barrier(c, "ncclCommSplit", limit); r != ncclSuccess) return r;
  if (color == NCCL_SPLIT_NOCOLOR) return ncclSuccess;
  std::sort(members.begin(), members.end());
  int new_rank = 0;
  for (size_t i = 0; i < members.size(); ++i)
    if (members[i].second == c.rank) new_rank = static_cast<int>(i);
  IdBytes id{kIdMagic, mix(c.id.a ^ mix(split)), mix(c.id.b ^ mix(static_cast<uint64_t>(color) + 0x51))};
  std::string label = config && config->commName ? config->commName : "";
  if (label.empty())
    label = format("split %llu color %d of %s", (unsigned long long)split, color, c.name.c_str());
  return init_rank(newcomm, static_cast<int>(members.size()), id, new_rank, label);
}

// Waits for this rank's operations on the comm, then for every rank (NCCL >= 2.18 destroys collectively).
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm || !comm->s) return fail(ncclInvalidArgument, "ncclCommDestroy: comm is NULL");
  std::shared_ptr<CommState> s = comm->s;
  CommState& c = *s;
  ncclResult_t r = ncclSuccess;
  {
    std::unique_lock<std::mutex> lock(c.mu);
    const uint64_t launched = c.next_launch;
    if (!c.cv.wait_for(lock, std::chrono::duration<double>(knobs().deadlock_s),
                       [&] { return c.low >= launched; })) {
      std::fprintf(stderr,
                   "sim: NCCL deadlock: ncclCommDestroy on %s: %llu operation(s) of this rank still pending "
                   "after %g s\n",
                   c.who().c_str(), (unsigned long long)(launched - c.low), knobs().deadlock_s);
      r = fail(ncclSystemError, format("ncclCommDestroy on %s: operations still pending", c.who().c_str()));
    }
  }
  if (r == ncclSuccess && c.async_error.load() == ncclSuccess && !c.hdr->aborted.load())
    r = host_barrier(c, "ncclCommDestroy", knobs().deadlock_s);
  c.rec(c.rank).left.store(1, std::memory_order_release);
  c.hdr->left.fetch_add(1);
  release(c);
  delete comm;
  return r;
}

// Returns at once: this rank's pending operations end (no device fault); peers' operations waiting on the
// comm set its async error to ncclRemoteError and wait until they abort it too.
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm || !comm->s) return ncclSuccess;
  CommState& c = *comm->s;
  int expected = 0;
  c.hdr->aborted_by.store(c.rank);
  c.hdr->aborted.compare_exchange_strong(expected, 1);
  c.local_abort.store(true);
  c.rec(c.rank).left.store(1, std::memory_order_release);
  c.hdr->left.fetch_add(1);
  release(c);
  delete comm;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError:
      return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError:
      return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument:
      return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage:
      return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
    default:
      return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t) {
  thread_local std::string copy;
  std::lock_guard<std::mutex> lock(g_error_mu);
  copy = g_last_error;
  return copy.c_str();
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
  if (!comm || !comm->s || !asyncError)
    return fail(ncclInvalidArgument, "ncclCommGetAsyncError: NULL argument");
  *asyncError = static_cast<ncclResult_t>(comm->s->async_error.load());
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (!comm || !comm->s || !count) return fail(ncclInvalidArgument, "ncclCommCount: NULL argument");
  *count = comm->s->nranks;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (!comm || !comm->s || !device) return fail(ncclInvalidArgument, "ncclCommCuDevice: NULL argument");
  *device = comm->s->device;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (!comm || !comm->s || !rank) return fail(ncclInvalidArgument, "ncclCommUserRank: NULL argument");
  *rank = comm->s->rank;
  return ncclSuccess;
}

ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  if (const ncclResult_t r = check_comm(comm, "ncclReduce"); r != ncclSuccess) return r;
  return post(make_op(comm, Kind::reduce, sendbuff, recvbuff, count, datatype, op, root), stream);
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  if (const ncclResult_t r = check_comm(comm, "ncclBroadcast"); r != ncclSuccess) return r;
  return post(make_op(comm, Kind::broadcast, sendbuff, recvbuff, count, datatype, ncclSum, root), stream);
}

ncclResult_t ncclBcast(void* buff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
                       cudaStream_t stream) {
  return ncclBroadcast(buff, buff, count, datatype, root, comm, stream);
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (const ncclResult_t r = check_comm(comm, "ncclAllReduce"); r != ncclSuccess) return r;
  return post(make_op(comm, Kind::all_reduce, sendbuff, recvbuff, count, datatype, op, -1), stream);
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream) {
  if (const ncclResult_t r = check_comm(comm, "ncclReduceScatter"); r != ncclSuccess) return r;
  return post(make_op(comm, Kind::reduce_scatter, sendbuff, recvbuff, recvcount, datatype, op, -1), stream);
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  if (const ncclResult_t r = check_comm(comm, "ncclAllGather"); r != ncclSuccess) return r;
  return post(make_op(comm, Kind::all_gather, sendbuff, recvbuff, sendcount, datatype, ncclSum, -1), stream);
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  if (const ncclResult_t r = check_comm(comm, "ncclSend"); r != ncclSuccess) return r;
  return post(make_op(comm, Kind::send, sendbuff, nullptr, count, datatype, ncclSum, peer), stream);
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  if (const ncclResult_t r = check_comm(comm, "ncclRecv"); r != ncclSuccess) return r;
  return post(make_op(comm, Kind::recv, nullptr, recvbuff, count, datatype, ncclSum, peer), stream);
}

ncclResult_t ncclGroupStart() {
  ++t_group.depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  Group& g = t_group;
  if (g.depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd: no ncclGroupStart is open");
  if (--g.depth > 0) return ncclSuccess;
  std::vector<PostedOp> ops = std::move(g.ops);
  g.ops.clear();
  const ncclResult_t error = g.error;
  g.error = ncclSuccess;
  if (error != ncclSuccess) return error;  // an operation of the group failed to post: nothing is launched
  return launch_group(ops);
}

}  // extern "C"
