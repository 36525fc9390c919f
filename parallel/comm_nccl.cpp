// NcclComm, the NCCL backend of Comm (device tensors; stream ordering and memory reasoning in comm_nccl.h).
// The NCCL state lives in a shared NcclState so that a Work still pending when its comm is destroyed keeps
// the communicator, stream and events alive. Everything NCCL is behind POLDER_HAVE_NCCL; without it
// make_nccl_comm is a one-line error.
#include "parallel/comm_nccl.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

#include "core/cuda_context.h"

#ifdef POLDER_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace polder::parallel {

#ifdef POLDER_HAVE_NCCL

namespace {

// The state of one NCCL communicator, shared by its NcclComm and the Works it returned.
struct NcclState {
  ncclComm_t comm = nullptr;
  int device = 0;
  cudaStream_t stream = nullptr;  // the communication stream
  cudaEvent_t ready = nullptr;    // recorded on the compute stream before each op, waited for by `stream`
  cudaEvent_t done = nullptr;     // recorded on `stream` after each synchronous op
  bool failed = false;            // an NCCL or CUDA call failed: abort instead of destroy
  std::string who;                // "comm 'dp' (nccl, cuda:0)", for messages

  NcclState() = default;
  NcclState(const NcclState&) = delete;
  NcclState& operator=(const NcclState&) = delete;
  ~NcclState();
};

// The live communicators of this process, for nccl_async_error() (the watchdog's poll).
std::mutex g_live_mutex;
std::vector<NcclState*> g_live;

// Makes `device` current for the scope of NCCL and CUDA calls, then restores the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    if (cudaGetDevice(&prev_) != cudaSuccess) prev_ = -1;
    if (prev_ != device_) cudaSetDevice(device_);
  }
  ~DeviceGuard() {
    if (prev_ >= 0 && prev_ != device_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_, prev_ = -1;
};

[[noreturn]] void nccl_fail(NcclState* s, const std::string& where, const char* call, ncclResult_t r) {
  if (s) s->failed = true;
  const char* last = ncclGetLastError(s ? s->comm : nullptr);
  POLDER_FAIL("{}: {} failed: {} ({})", where, call, ncclGetErrorString(r),
              last && *last ? last : "NCCL gives no detail; run with NCCL_DEBUG=WARN");
}

[[noreturn]] void cuda_fail(NcclState* s, const std::string& where, const char* call, cudaError_t e) {
  if (s) s->failed = true;
  POLDER_FAIL("{}: {} failed: {} ({})", where, call, cudaGetErrorString(e), cudaGetErrorName(e));
}

// `where` is evaluated only on failure: "<op> on <comm>".
#define POLDER_NCCL_CHECK(state, where, call)                                \
  do {                                                                       \
    const ncclResult_t nccl_r_ = (call);                                     \
    if (nccl_r_ != ncclSuccess) nccl_fail((state), (where), #call, nccl_r_); \
  } while (0)

#define POLDER_CUDA_CHECK(state, where, call)                                \
  do {                                                                       \
    const cudaError_t cuda_e_ = (call);                                      \
    if (cuda_e_ != cudaSuccess) cuda_fail((state), (where), #call, cuda_e_); \
  } while (0)

NcclState::~NcclState() {
  {
    std::lock_guard<std::mutex> lock(g_live_mutex);
    g_live.erase(std::remove(g_live.begin(), g_live.end(), this), g_live.end());
  }
  DeviceGuard guard(device);
  // At process exit the CUDA runtime may already be gone; then there is nothing left to release.
  if (stream && cudaStreamQuery(stream) == cudaErrorCudartUnloading) return;
  if (comm) {
    // Unwinding from an error on this rank: ncclCommDestroy is a rendezvous in recent NCCL that the other
    // ranks, waiting in a collective, never reach, so the job would hang before cli/main.cpp aborts it.
    if (failed || std::uncaught_exceptions() > 0) {
      ncclCommAbort(comm);
    } else {
      if (stream) cudaStreamSynchronize(stream);
      if (ncclCommDestroy(comm) != ncclSuccess) ncclCommAbort(comm);
    }
  }
  if (ready) cudaEventDestroy(ready);
  if (done) cudaEventDestroy(done);
  if (stream) cudaStreamDestroy(stream);
}

cudaStream_t compute_stream(int device) {
  return static_cast<cudaStream_t>(cuda::stream(device));
}

ncclDataType_t nccl_type(DType d) {
  switch (d) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::bf16:
      return ncclBfloat16;
    case DType::f16:
      return ncclFloat16;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
    case DType::u8:
      return ncclUint8;
  }
  POLDER_FAIL("NCCL: unknown dtype");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return ncclSum;
    case ReduceOp::avg:
      return ncclAvg;
    case ReduceOp::max:
      return ncclMax;
  }
  POLDER_FAIL("NCCL: unknown reduce op");
}

bool overlaps(const Tensor& a, const Tensor& b) {
  if (!a.same_storage(b) || a.nbytes() == 0 || b.nbytes() == 0) return false;
  return a.offset() < b.offset() + b.nbytes() && b.offset() < a.offset() + a.nbytes();
}

char* bytes(const Tensor& t) {
  return static_cast<char*>(t.raw_data());
}

// An async op: wait() orders the compute stream after the done-event and releases the tensors.
class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclState> s, const char* op, cudaEvent_t done, std::vector<Tensor> keep)
      : s_(std::move(s)), op_(op), done_(done), keep_(std::move(keep)) {}
  NcclWork(const NcclWork&) = delete;
  NcclWork& operator=(const NcclWork&) = delete;

  void wait() override {
    if (waited_) return;
    DeviceGuard guard(s_->device);
    POLDER_CUDA_CHECK(s_.get(), where(), cudaStreamWaitEvent(compute_stream(s_->device), done_, 0));
    waited_ = true;
    keep_.clear();  // every later free on the compute stream is ordered after the collective
  }

  bool test() override {
    const cudaError_t e = cudaEventQuery(done_);
    if (e == cudaSuccess) return true;
    if (e != cudaErrorNotReady) cuda_fail(s_.get(), where(), "cudaEventQuery(done)", e);
    ncclResult_t async = ncclSuccess;
    POLDER_NCCL_CHECK(s_.get(), where(), ncclCommGetAsyncError(s_->comm, &async));
    if (async != ncclSuccess && async != ncclInProgress)
      nccl_fail(s_.get(), where(), "the collective", async);
    return false;
  }

  ~NcclWork() override {
    try {
      // Not while unwinding from an error: the collective may wait for ranks that will never join it.
      if (std::uncaught_exceptions() == 0) wait();
    } catch (...) {  // a destructor must not throw; the error was the caller's to see through wait()
    }
    cudaEventDestroy(done_);
  }

 private:
  std::string where() const { return format("{} on {}", op_, s_->who); }

  std::shared_ptr<NcclState> s_;
  const char* op_;
  cudaEvent_t done_;
  std::vector<Tensor> keep_;
  bool waited_ = false;
};

class NcclComm final : public Comm {
 public:
  // Takes ownership of `comm` (already initialised on `device`).
  NcclComm(ncclComm_t comm, int device, std::string name) : Comm(std::move(name)), s_(new NcclState) {
    s_->comm = comm;
    s_->device = device;
    s_->who = format("comm '{}' (nccl, cuda:{})", name_, device);
    DeviceGuard guard(device);
    const std::string where = format("creating {}", s_->who);
    POLDER_NCCL_CHECK(s_.get(), where, ncclCommUserRank(comm, &rank_));
    POLDER_NCCL_CHECK(s_.get(), where, ncclCommCount(comm, &size_));
    int least = 0, greatest = 0;
    POLDER_CUDA_CHECK(s_.get(), where, cudaDeviceGetStreamPriorityRange(&least, &greatest));
    POLDER_CUDA_CHECK(s_.get(), where,
                      cudaStreamCreateWithPriority(&s_->stream, cudaStreamNonBlocking, greatest));
    POLDER_CUDA_CHECK(s_.get(), where, cudaEventCreateWithFlags(&s_->ready, cudaEventDisableTiming));
    POLDER_CUDA_CHECK(s_.get(), where, cudaEventCreateWithFlags(&s_->done, cudaEventDisableTiming));
    barrier_buf_ = Tensor::zeros({1}, DType::i32, Device::cuda(device));
    std::lock_guard<std::mutex> lock(g_live_mutex);
    g_live.push_back(s_.get());
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  cudaStream_t stream() const { return s_->stream; }

  void all_reduce(Tensor& t, ReduceOp op) override { all_reduce_impl(t, op, false); }
  std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) override {
    return all_reduce_impl(t, op, true);
  }
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override {
    reduce_scatter_impl(in, out, op, false);
  }
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override {
    return reduce_scatter_impl(in, out, op, true);
  }
  void all_gather(const Tensor& in, Tensor& out) override { all_gather_impl(in, out, false); }
  std::unique_ptr<Work> all_gather_async(const Tensor& in, Tensor& out) override {
    return all_gather_impl(in, out, true);
  }
  void send(const Tensor& t, int dst, int tag) override { send_impl(t, dst, tag, false); }
  std::unique_ptr<Work> send_async(const Tensor& t, int dst, int tag) override {
    return send_impl(t, dst, tag, true);
  }
  void recv(Tensor& t, int src, int tag) override { recv_impl(t, src, tag, false); }
  std::unique_ptr<Work> recv_async(Tensor& t, int src, int tag) override {
    return recv_impl(t, src, tag, true);
  }

  // One NCCL group on the comm stream: every send and receive progresses together (comm.h).
  std::unique_ptr<Work> p2p_group(const std::vector<P2POp>& ops) override {
    std::vector<Tensor> keep;
    for (const P2POp& op : ops) {
      check_device(op.send ? "send" : "recv", op.tensor, "tensor");
      check_peer(op.send ? "send" : "recv", op.peer, op.tag);
      keep.push_back(op.tensor);
    }
    auto w = run("p2p group", true, keep, [&](cudaStream_t st) {
      const std::string at = where("p2p group");
      POLDER_NCCL_CHECK(s_.get(), at, ncclGroupStart());
      try {
        for (const P2POp& op : ops) {
          if (op.tensor.numel() == 0) continue;
          const size_t n = static_cast<size_t>(op.tensor.numel());
          if (op.send) {
            POLDER_NCCL_CHECK(
                s_.get(), at,
                ncclSend(op.tensor.raw_data(), n, nccl_type(op.tensor.dtype()), op.peer, s_->comm, st));
          } else {
            POLDER_NCCL_CHECK(
                s_.get(), at,
                ncclRecv(op.tensor.raw_data(), n, nccl_type(op.tensor.dtype()), op.peer, s_->comm, st));
          }
        }
      } catch (...) {
        ncclGroupEnd();
        throw;
      }
      POLDER_NCCL_CHECK(s_.get(), at, ncclGroupEnd());
    });
    for (const P2POp& op : ops)
      if (op.send) count_send(op.tensor);
    return w;
  }

  void broadcast(Tensor& t, int root) override {
    check_device("broadcast", t, "tensor");
    POLDER_CHECK(root >= 0 && root < size_, "broadcast on {}: root {} is out of range [0, {})", s_->who, root,
                 size_);
    run("broadcast", false, {}, [&](cudaStream_t st) {
      if (t.numel() == 0) return;
      POLDER_NCCL_CHECK(s_.get(), where("broadcast"),
                        ncclBroadcast(t.raw_data(), t.raw_data(), static_cast<size_t>(t.numel()),
                                      nccl_type(t.dtype()), root, s_->comm, st));
    });
    count_broadcast(t);
  }

  // An all-reduce of one int on the comm stream, then the host waits for it: every rank has reached the
  // barrier and this rank's earlier work on both streams is complete.
  void barrier() override {
    run("barrier", false, {}, [&](cudaStream_t st) {
      POLDER_NCCL_CHECK(s_.get(), where("barrier"),
                        ncclAllReduce(barrier_buf_.raw_data(), barrier_buf_.raw_data(), 1, ncclInt32, ncclSum,
                                      s_->comm, st));
    });
    DeviceGuard guard(s_->device);
    POLDER_CUDA_CHECK(s_.get(), where("barrier"), cudaStreamSynchronize(s_->stream));
  }

  std::shared_ptr<Comm> split(int color, int key, const std::string& name) override {
    DeviceGuard guard(s_->device);
    ncclComm_t sub = nullptr;
    // splitShare: the child shares the parent's buffers and proxy instead of allocating its own (the mesh's
    // tp/dp/pp communicators would otherwise each hold a copy; issue 21).
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.splitShare = 1;
    POLDER_NCCL_CHECK(s_.get(), where("split"),
                      ncclCommSplit(s_->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, &config));
    if (sub == nullptr) return nullptr;
    return std::make_shared<NcclComm>(sub, s_->device, name.empty() ? name_ + "/split" : name);
  }

 protected:
  // One ncclReduce per non-empty piece, rooted at its owner, in one NCCL group (see comm_nccl.h). Only the
  // root's receive buffer is used (NCCL does not touch it elsewhere), so other ranks pass none.
  void reduce_scatter_v_impl(const Tensor& in, Tensor& out, const std::vector<int64_t>& counts,
                             ReduceOp op) override {
    check_device("reduce_scatter_v", in, "in");
    check_device("reduce_scatter_v", out, "out");
    const size_t es = dtype_size(in.dtype());
    std::vector<size_t> offsets(counts.size() + 1, 0);
    for (size_t r = 0; r < counts.size(); ++r) offsets[r + 1] = offsets[r] + static_cast<size_t>(counts[r]);
    const bool in_place = in.same_storage(out) && out.offset() == in.offset() + offsets[rank_] * es;
    const bool tmp = !in_place && overlaps(in, out);
    const Tensor dst = tmp ? Tensor::empty(out.shape(), out.dtype(), out.device()) : out;
    run("reduce_scatter_v", false, {dst}, [&](cudaStream_t st) {
      const std::string w = where("reduce_scatter_v");
      POLDER_NCCL_CHECK(s_.get(), w, ncclGroupStart());
      try {
        for (int r = 0; r < size_; ++r) {
          const size_t n = static_cast<size_t>(counts[r]);
          if (n == 0) continue;
          POLDER_NCCL_CHECK(s_.get(), w,
                            ncclReduce(bytes(in) + offsets[r] * es, r == rank_ ? dst.raw_data() : nullptr, n,
                                       nccl_type(in.dtype()), nccl_op(op), r, s_->comm, st));
        }
      } catch (...) {
        ncclGroupEnd();
        throw;
      }
      POLDER_NCCL_CHECK(s_.get(), w, ncclGroupEnd());
      if (tmp) copy_on(st, "reduce_scatter_v", out, dst);
    });
  }

  // One ncclBroadcast per non-empty piece, rooted at its owner, in one NCCL group: NCCL's all-gather needs
  // equal counts.
  std::unique_ptr<Work> all_gather_v_impl(const Tensor& in, Tensor& out,
                                          const std::vector<int64_t>& counts) override {
    check_device("all_gather_v", in, "in");
    check_device("all_gather_v", out, "out");
    const size_t es = dtype_size(in.dtype());
    return run("all_gather_v", true, {in, out}, [&](cudaStream_t st) {
      const std::string w = where("all_gather_v");
      POLDER_NCCL_CHECK(s_.get(), w, ncclGroupStart());
      try {
        size_t offset = 0;
        for (int r = 0; r < size_; ++r) {
          const size_t n = static_cast<size_t>(counts[r]);
          if (n > 0)
            POLDER_NCCL_CHECK(s_.get(), w,
                              ncclBroadcast(r == rank_ ? in.raw_data() : nullptr, bytes(out) + offset * es, n,
                                            nccl_type(in.dtype()), r, s_->comm, st));
          offset += n;
        }
      } catch (...) {
        ncclGroupEnd();
        throw;
      }
      POLDER_NCCL_CHECK(s_.get(), w, ncclGroupEnd());
    });
  }

 private:
  std::string where(const char* op) const { return format("{} on {}", op, s_->who); }

  void check_device(const char* op, const Tensor& t, const char* what) const {
    check_tensor(op, t);
    POLDER_CHECK(t.device() == Device::cuda(s_->device), "{} on {}: {} is on {}; expected {}", op, s_->who,
                 what, t.device(), Device::cuda(s_->device));
  }

  void copy_on(cudaStream_t st, const char* op, const Tensor& dst, const Tensor& src) {
    if (dst.nbytes() == 0) return;
    POLDER_CUDA_CHECK(
        s_.get(), where(op),
        cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), cudaMemcpyDeviceToDevice, st));
  }

  // The three steps of comm_nccl.h around `enqueue` (NCCL calls on the comm stream). Temporaries must exist
  // before the call: their allocation on the compute stream then precedes the ready-event. Returns a Work
  // holding `keep` for async ops, else nullptr once the compute stream waits for the result.
  std::unique_ptr<Work> run(const char* op, bool async, std::vector<Tensor> keep,
                            const std::function<void(cudaStream_t)>& enqueue) {
    DeviceGuard guard(s_->device);
    const cudaStream_t compute = compute_stream(s_->device);
    POLDER_CUDA_CHECK(s_.get(), where(op), cudaEventRecord(s_->ready, compute));
    POLDER_CUDA_CHECK(s_.get(), where(op), cudaStreamWaitEvent(s_->stream, s_->ready, 0));
    enqueue(s_->stream);
    if (!async) {
      POLDER_CUDA_CHECK(s_.get(), where(op), cudaEventRecord(s_->done, s_->stream));
      POLDER_CUDA_CHECK(s_.get(), where(op), cudaStreamWaitEvent(compute, s_->done, 0));
      return nullptr;
    }
    cudaEvent_t done = nullptr;
    POLDER_CUDA_CHECK(s_.get(), where(op), cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    const cudaError_t e = cudaEventRecord(done, s_->stream);
    if (e != cudaSuccess) {
      cudaEventDestroy(done);
      cuda_fail(s_.get(), where(op), "cudaEventRecord(done)", e);
    }
    return std::make_unique<NcclWork>(s_, op, done, std::move(keep));
  }

  std::unique_ptr<Work> all_reduce_impl(Tensor& t, ReduceOp op, bool async) {
    check_device("all_reduce", t, "tensor");
    check_reduce("all_reduce", t, op);
    auto w = run("all_reduce", async, {t}, [&](cudaStream_t st) {
      if (t.numel() == 0) return;
      POLDER_NCCL_CHECK(s_.get(), where("all_reduce"),
                        ncclAllReduce(t.raw_data(), t.raw_data(), static_cast<size_t>(t.numel()),
                                      nccl_type(t.dtype()), nccl_op(op), s_->comm, st));
    });
    count_all_reduce(t);
    return w;
  }

  // In place when out is this rank's chunk of in (NCCL's layout); any other overlap reduces into a temporary.
  std::unique_ptr<Work> reduce_scatter_impl(const Tensor& in, Tensor& out, ReduceOp op, bool async) {
    check_device("reduce_scatter", in, "in");
    check_device("reduce_scatter", out, "out");
    check_reduce("reduce_scatter", in, op);
    check_scatter_gather("reduce_scatter", out, in, "out", "in");
    const bool in_place = in.same_storage(out) && out.offset() == in.offset() + rank_ * out.nbytes();
    const bool tmp = !in_place && overlaps(in, out);
    const Tensor dst = tmp ? Tensor::empty(out.shape(), out.dtype(), out.device()) : out;
    auto w = run("reduce_scatter", async, {in, out, dst}, [&](cudaStream_t st) {
      if (out.numel() == 0) return;
      POLDER_NCCL_CHECK(s_.get(), where("reduce_scatter"),
                        ncclReduceScatter(in.raw_data(), dst.raw_data(), static_cast<size_t>(out.numel()),
                                          nccl_type(in.dtype()), nccl_op(op), s_->comm, st));
      if (tmp) copy_on(st, "reduce_scatter", out, dst);
    });
    count_reduce_scatter(in);
    return w;
  }

  // In place when in is this rank's chunk of out (NCCL's layout); any other overlap gathers from a copy of
  // in.
  std::unique_ptr<Work> all_gather_impl(const Tensor& in, Tensor& out, bool async) {
    check_device("all_gather", in, "in");
    check_device("all_gather", out, "out");
    check_scatter_gather("all_gather", in, out, "in", "out");
    const bool in_place = in.same_storage(out) && in.offset() == out.offset() + rank_ * in.nbytes();
    const bool tmp = !in_place && overlaps(in, out);
    const Tensor src = tmp ? Tensor::empty(in.shape(), in.dtype(), in.device()) : in;
    auto w = run("all_gather", async, {in, out, src}, [&](cudaStream_t st) {
      if (in.numel() == 0) return;
      if (tmp) copy_on(st, "all_gather", src, in);
      POLDER_NCCL_CHECK(s_.get(), where("all_gather"),
                        ncclAllGather(src.raw_data(), out.raw_data(), static_cast<size_t>(in.numel()),
                                      nccl_type(in.dtype()), s_->comm, st));
    });
    count_all_gather(out);
    return w;
  }

  std::unique_ptr<Work> send_impl(const Tensor& t, int dst, int tag, bool async) {
    check_device("send", t, "tensor");
    check_peer("send", dst, tag);
    auto w = run("send", async, {t}, [&](cudaStream_t st) {
      if (t.numel() == 0) return;
      POLDER_NCCL_CHECK(
          s_.get(), where("send"),
          ncclSend(t.raw_data(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()), dst, s_->comm, st));
    });
    count_send(t);
    return w;
  }

  std::unique_ptr<Work> recv_impl(Tensor& t, int src, int tag, bool async) {
    check_device("recv", t, "tensor");
    check_peer("recv", src, tag);
    return run("recv", async, {t}, [&](cudaStream_t st) {
      if (t.numel() == 0) return;
      POLDER_NCCL_CHECK(
          s_.get(), where("recv"),
          ncclRecv(t.raw_data(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()), src, s_->comm, st));
    });
  }

  std::shared_ptr<NcclState> s_;
  Tensor barrier_buf_;  // one int on the device for barrier()
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool have_nccl() {
  return true;
}

std::shared_ptr<Comm> make_nccl_comm(const std::shared_ptr<Comm>& bootstrap, int device, std::string name) {
  POLDER_CHECK(bootstrap != nullptr, "make_nccl_comm: the bootstrap communicator is null");
  if (name.empty()) name = bootstrap->name();
  const std::string where = format("make_nccl_comm for '{}' on cuda:{}", name, device);
  POLDER_CHECK(bootstrap->backend() != "nccl",
               "{}: the bootstrap '{}' is an NCCL comm; expected a host comm (single or mpi)", where,
               bootstrap->name());
  const int visible = cuda::device_count();
  POLDER_CHECK(device >= 0 && device < visible, "{}: CUDA device {} requested but {} device(s) are visible",
               where, device, visible);
  cuda::stream(device);  // the device's context, compute stream and pool
  DeviceGuard guard(device);

  // Rank 0 makes the id and broadcasts it with one byte saying whether that worked, so that a failure there
  // is an error on every rank instead of a hang in ncclCommInitRank.
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  Tensor msg = Tensor::zeros({static_cast<int64_t>(sizeof id) + 1}, DType::u8);
  std::string rank0_error;
  if (bootstrap->rank() == 0) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r == ncclSuccess) {
      std::memcpy(msg.raw_data(), &id, sizeof id);
      msg.data<uint8_t>()[sizeof id] = 1;
    } else {
      const char* last = ncclGetLastError(nullptr);
      rank0_error = format("ncclGetUniqueId failed: {} ({})", ncclGetErrorString(r), last ? last : "");
    }
  }
  bootstrap->broadcast(msg, 0);
  POLDER_CHECK(msg.data<uint8_t>()[sizeof id] == 1, "{}: rank 0 could not create the NCCL unique id{}{}",
               where, rank0_error.empty() ? "" : ": ", rank0_error);
  std::memcpy(&id, msg.raw_data(), sizeof id);

  ncclComm_t comm = nullptr;
  POLDER_NCCL_CHECK(nullptr, where, ncclCommInitRank(&comm, bootstrap->size(), id, bootstrap->rank()));
  return std::make_shared<NcclComm>(comm, device, std::move(name));
}

std::string nccl_async_error() {
  std::lock_guard<std::mutex> lock(g_live_mutex);
  for (NcclState* s : g_live) {
    ncclResult_t async = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(s->comm, &async);
    if (r != ncclSuccess) async = r;
    if (async != ncclSuccess && async != ncclInProgress) {
      const char* last = ncclGetLastError(s->comm);
      return format("{}: asynchronous NCCL error: {} ({})", s->who, ncclGetErrorString(async),
                    last && *last ? last : "a peer may have died; run with NCCL_DEBUG=WARN");
    }
  }
  return "";
}

void* nccl_stream(const Comm& comm) {
  const auto* nccl = dynamic_cast<const NcclComm*>(&comm);
  POLDER_CHECK(nccl != nullptr, "nccl_stream: comm '{}' is {}, not nccl", comm.name(), comm.backend());
  return nccl->stream();
}

#else  // !POLDER_HAVE_NCCL

bool have_nccl() {
  return false;
}

std::shared_ptr<Comm> make_nccl_comm(const std::shared_ptr<Comm>& bootstrap, int device, std::string name) {
  POLDER_CHECK(bootstrap != nullptr, "make_nccl_comm: the bootstrap communicator is null");
  if (name.empty()) name = bootstrap->name();
  POLDER_FAIL(
      "make_nccl_comm for '{}' on cuda:{}: this build has no NCCL: rebuild with -DPOLDER_CUDA=ON and NCCL "
      "installed",
      name, device);
}

std::string nccl_async_error() {
  return "";
}

void* nccl_stream(const Comm& comm) {
  POLDER_FAIL("nccl_stream: comm '{}' is {}: this build has no NCCL", comm.name(), comm.backend());
}

#endif  // POLDER_HAVE_NCCL

}  // namespace polder::parallel
