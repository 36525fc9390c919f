// Comm: the one communication interface (collectives, point to point, async handles, sub-communicators) over
// polder Tensors, with a single-process backend and an MPI backend on host memory; the NCCL backend (device
// tensors) implements the same interface. Tensors, not pointers, so a backend can check device and dtype.
//
// Semantics (every backend):
//   all_reduce(t, op)            t = op over ranks of t, in place. avg = sum / size (floating dtypes only).
//   reduce_scatter(in, out, op)  in has size() * out.numel() elements; rank r gets op over ranks of chunk r.
//   all_gather(in, out)          out = concatenation of every rank's in, in rank order.
//   broadcast(t, root)           t = root's t.   send/recv: same element count on both sides; self is an
//   error.
// In place is allowed where NCCL allows it: all_gather with `in` equal to this rank's chunk of `out`, and
// reduce_scatter with `out` equal to this rank's chunk of `in`.
// bf16/f16 reductions use custom MPI ops on the 16-bit values: each pairwise combine adds (or maxes) in float
// and rounds to the 16-bit type, as NCCL does. The wire carries 2 bytes per element (matching NCCL and the
// byte counters) at the cost of up to size()-1 roundings; reduce gradients in f32 buffers when that matters.
//
// Byte counters (stats()) follow the ring-algorithm accounting of nccl-tests' bus bandwidth, per rank, for
// n = bytes of the full buffer and p = size(): all_reduce 2(p-1)/p * n, reduce_scatter and all_gather
// (p-1)/p * n (n = the big side: in for reduce_scatter, out for all_gather), broadcast n (0 when p = 1),
// send n (recv counts nothing: bytes are counted where they leave). Async ops count when posted. Each Comm
// counts only its own traffic; a sub-communicator has its own counters.
//
// Failure: on MPI every communicator uses MPI_ERRORS_ARE_FATAL and mpirun ends the whole job when a rank
// dies, so a dead peer aborts instead of hanging (uncaught exceptions and signals included). A main should
// end with finalize() on every rank. A process that exits without it waits up to POLDER_EXIT_GRACE_S seconds
// (default 30) for every rank to exit too, then finalises (keeping its exit code); if some rank does not
// arrive (it is probably blocked in a collective with this one, where MPI_Finalize would wait forever) it
// aborts the job.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace polder::parallel {

enum class ReduceOp { sum, avg, max };
const char* reduce_op_name(ReduceOp op);

struct OpStats {
  int64_t calls = 0;
  double bytes = 0;  // ring-algorithm bytes sent by this rank (see above); double: 2(p-1)/p * n is fractional
};

struct CommStats {
  OpStats all_reduce, reduce_scatter, all_gather, broadcast, p2p;
  double total_bytes() const {
    return all_reduce.bytes + reduce_scatter.bytes + all_gather.bytes + broadcast.bytes + p2p.bytes;
  }
  CommStats& operator+=(const CommStats& o);
};

// A posted asynchronous operation. wait() blocks until it is complete (and then applies any finishing step,
// such as avg's division); test() returns whether it is complete without blocking. MPI makes progress only
// inside MPI calls, so call test() now and then to overlap. Destroying an unfinished Work waits for it: the
// tensors it holds stay alive until then.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  virtual bool test() = 0;
};

// One transfer of a point-to-point group (Comm::p2p_group): send `tensor` to `peer` or receive into it.
struct P2POp {
  bool send = true;
  Tensor tensor;
  int peer = -1, tag = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "single", "mpi", "nccl"
  const std::string& name() const { return name_; }

  virtual void all_reduce(Tensor& t, ReduceOp op) = 0;
  virtual void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) = 0;
  virtual void all_gather(const Tensor& in, Tensor& out) = 0;
  virtual void broadcast(Tensor& t, int root) = 0;
  virtual void send(const Tensor& t, int dst, int tag = 0) = 0;
  virtual void recv(Tensor& t, int src, int tag = 0) = 0;
  virtual void barrier() = 0;

  virtual std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) = 0;
  // Uneven reduce-scatter (sum or avg): in holds sum(counts) elements, rank r receives counts[r] of them (the
  // r-th consecutive piece) into out (counts[rank()] elements). ZeRO-2 reduces gradient buckets whose
  // boundaries do not align with the ranks' shards. Counted like reduce_scatter (bytes of `in`).
  void reduce_scatter_v(const Tensor& in, Tensor& out, const std::vector<int64_t>& counts, ReduceOp op);
  virtual std::unique_ptr<Work> all_gather_async(const Tensor& in, Tensor& out) = 0;
  // Uneven all-gather: rank r contributes counts[r] elements (in holds counts[rank()]), out holds
  // sum(counts): every rank's piece in rank order. ZeRO-3 gathers a layer's parameters, whose range of the
  // flat buffer crosses the ranks' shards unevenly. Counted like all_gather (bytes of `out`). in must not
  // overlap out.
  std::unique_ptr<Work> all_gather_v_async(const Tensor& in, Tensor& out, const std::vector<int64_t>& counts);
  virtual std::unique_ptr<Work> send_async(const Tensor& t, int dst, int tag = 0) = 0;
  virtual std::unique_ptr<Work> recv_async(Tensor& t, int src, int tag = 0) = 0;
  // Sends and receives posted as one group: they all progress together, so a group that sends to a peer and
  // receives from it completes with the peer's matching group whatever the order inside either (NCCL: one
  // ncclGroupStart/ncclGroupEnd; MPI: nonblocking operations). Groups on one communicator complete in the
  // order they are posted, and two ranks' messages match in posting order (NCCL has no tags), so every rank's
  // sequence of groups must pair up with its peers' (parallel/schedule.h checks the pipelines'). wait():
  // every operation is complete (received tensors readable by later work). Empty: a finished Work.
  virtual std::unique_ptr<Work> p2p_group(const std::vector<P2POp>& ops);

  // Collective over this communicator: ranks with the same color form a new communicator, ordered by key
  // (ties by rank). A negative color returns nullptr (this rank joins no group).
  virtual std::shared_ptr<Comm> split(int color, int key, const std::string& name = "") = 0;

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = CommStats(); }

  // MPI counts are ints: larger buffers go in chunks of at most this many elements (settable so that tests
  // exercise the chunking on small buffers).
  void set_max_chunk_elements(int64_t n);
  int64_t max_chunk_elements() const { return max_chunk_; }

 protected:
  explicit Comm(std::string name) : name_(std::move(name)) {}
  // Argument checks shared by the backends; messages name the op, this comm and both offending values.
  void check_tensor(const char* op, const Tensor& t) const;
  void check_reduce(const char* op, const Tensor& t, ReduceOp rop) const;
  void check_scatter_gather(const char* op, const Tensor& small, const Tensor& big, const char* small_name,
                            const char* big_name) const;
  void check_peer(const char* op, int peer, int tag) const;
  void count(OpStats& s, double bytes) {
    s.calls += 1;
    s.bytes += bytes;
  }
  void count_all_reduce(const Tensor& t);
  void count_reduce_scatter(const Tensor& in);
  void count_all_gather(const Tensor& out);
  void count_broadcast(const Tensor& t);
  void count_send(const Tensor& t);
  // The reduction of reduce_scatter_v after the shared checks; avg divides by size() (the backend's memory).
  virtual void reduce_scatter_v_impl(const Tensor& in, Tensor& out, const std::vector<int64_t>& counts,
                                     ReduceOp op) = 0;
  // all_gather_v after the shared checks.
  virtual std::unique_ptr<Work> all_gather_v_impl(const Tensor& in, Tensor& out,
                                                  const std::vector<int64_t>& counts) = 0;

  CommStats stats_;
  std::string name_;
  int64_t max_chunk_ = 2147483647;  // INT_MAX
};

// Size 1: collectives are identities or copies, broadcast needs root 0, point to point is an error (no peer).
// Works on any device (the copies are Tensor::copy_).
class SingleComm : public Comm {
 public:
  explicit SingleComm(std::string name = "world") : Comm(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }
  void all_reduce(Tensor& t, ReduceOp op) override;
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override;
  void all_gather(const Tensor& in, Tensor& out) override;
  void broadcast(Tensor& t, int root) override;
  void send(const Tensor& t, int dst, int tag = 0) override;
  void recv(Tensor& t, int src, int tag = 0) override;
  void barrier() override {}
  std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) override;
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override;
  std::unique_ptr<Work> all_gather_async(const Tensor& in, Tensor& out) override;
  std::unique_ptr<Work> send_async(const Tensor& t, int dst, int tag = 0) override;
  std::unique_ptr<Work> recv_async(Tensor& t, int src, int tag = 0) override;
  std::shared_ptr<Comm> split(int color, int key, const std::string& name = "") override;

 protected:
  void reduce_scatter_v_impl(const Tensor& in, Tensor& out, const std::vector<int64_t>& counts,
                             ReduceOp op) override;
  std::unique_ptr<Work> all_gather_v_impl(const Tensor& in, Tensor& out,
                                          const std::vector<int64_t>& counts) override;
};

// The world of this process, created on first call (later calls return the same object): a SingleComm when
// no launcher is detected (MPI is then never initialised), else an MpiComm over MPI_COMM_WORLD after
// MPI_Init_thread (MPI_THREAD_SERIALIZED: one thread at a time calls MPI); see finalize(). polder::Error
// when a launcher is detected but polder was built without MPI, or when MPI's world disagrees with the
// launcher's (e.g. srun without --mpi=pmix gives every task a world of 1).
std::shared_ptr<Comm> world_comm();

// Collective: every rank calls it at the end of a successful run (MPI_Finalize). A no-op without MPI.
void finalize();

// Ends the whole job now with this exit code: MPI_Abort when MPI is initialised, else std::_Exit.
[[noreturn]] void abort_job(int exit_code);

// Whether this build has the MPI backend (POLDER_MPI=ON).
bool have_mpi();

}  // namespace polder::parallel
