// Comm's shared checks and byte counters, the single-process backend, and the MPI backend (host memory).
// MPI is used only behind POLDER_HAVE_MPI, so the header and the single-process path build without it.
#include "parallel/comm.h"

#include "core/profile.h"

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include <unistd.h>

#include "parallel/launch.h"

#ifdef POLDER_HAVE_MPI
#include <mpi.h>
#endif

namespace polder::parallel {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::avg:
      return "avg";
    case ReduceOp::max:
      return "max";
  }
  return "?";
}

CommStats& CommStats::operator+=(const CommStats& o) {
  for (auto [a, b] : {std::pair{&all_reduce, &o.all_reduce},
                      {&reduce_scatter, &o.reduce_scatter},
                      {&all_gather, &o.all_gather},
                      {&broadcast, &o.broadcast},
                      {&p2p, &o.p2p}}) {
    a->calls += b->calls;
    a->bytes += b->bytes;
  }
  return *this;
}

// ---------------------------------------------------------------------------------------------------------
// Checks and counters shared by the backends.

void Comm::set_max_chunk_elements(int64_t n) {
  POLDER_CHECK(n >= 1 && n <= INT_MAX, "set_max_chunk_elements: {} is outside [1, {}]", n, INT_MAX);
  max_chunk_ = n;
}

void Comm::check_tensor(const char* op, const Tensor& t) const {
  POLDER_CHECK(t.defined(), "{} on {} (size {}): the tensor is undefined", op, name_, size());
}

void Comm::check_reduce(const char* op, const Tensor& t, ReduceOp rop) const {
  check_tensor(op, t);
  POLDER_CHECK(rop != ReduceOp::avg || is_floating(t.dtype()),
               "{} on {} (size {}): avg needs a floating dtype but the tensor is {}", op, name_, size(),
               t.dtype());
}

void Comm::check_scatter_gather(const char* op, const Tensor& small, const Tensor& big,
                                const char* small_name, const char* big_name) const {
  check_tensor(op, small);
  check_tensor(op, big);
  POLDER_CHECK(small.dtype() == big.dtype(), "{} on {} (size {}): {} is {} but {} is {}", op, name_, size(),
               small_name, small.dtype(), big_name, big.dtype());
  POLDER_CHECK(big.numel() == small.numel() * size(),
               "{} on {} (size {}): {} has {} elements but {} has {} and {} ranks x {} = {}", op, name_,
               size(), big_name, big.numel(), small_name, small.numel(), size(), small.numel(),
               small.numel() * size());
}

void Comm::check_peer(const char* op, int peer, int tag) const {
  POLDER_CHECK(peer >= 0 && peer < size(), "{} on {} (size {}): peer rank {} is out of range", op, name_,
               size(), peer);
  POLDER_CHECK(peer != rank(), "{} on {} (size {}): rank {} cannot {} itself", op, name_, size(), peer, op);
  POLDER_CHECK(tag >= 0 && tag <= 32767, "{} on {}: tag {} is outside [0, 32767]", op, name_, tag);
}

void Comm::count_all_reduce(const Tensor& t) {
  const double p = size();
  count(stats_.all_reduce, 2.0 * (p - 1) / p * static_cast<double>(t.nbytes()));
}
void Comm::reduce_scatter_v(const Tensor& in, Tensor& out, const std::vector<int64_t>& counts, ReduceOp op) {
  POLDER_CHECK(op == ReduceOp::sum || op == ReduceOp::avg,
               "reduce_scatter_v on {}: only sum and avg are supported", name_);
  POLDER_CHECK(static_cast<int>(counts.size()) == size(), "reduce_scatter_v on {} (size {}): {} counts given",
               name_, size(), counts.size());
  int64_t total = 0;
  for (int64_t c : counts) {
    POLDER_CHECK(c >= 0 && c <= max_chunk_, "reduce_scatter_v on {}: count {} out of range", name_, c);
    total += c;
  }
  POLDER_CHECK(in.numel() == total && out.numel() == counts[static_cast<size_t>(rank())],
               "reduce_scatter_v on {}: in has {} elements for counts summing to {}; out has {} for count {}",
               name_, in.numel(), total, out.numel(), counts[static_cast<size_t>(rank())]);
  POLDER_CHECK(in.dtype() == out.dtype() && (in.dtype() == DType::f32 || in.dtype() == DType::f64),
               "reduce_scatter_v on {}: in is {} and out is {}, expected both f32 or both f64", name_,
               in.dtype(), out.dtype());
  reduce_scatter_v_impl(in, out, counts, op);
  count_reduce_scatter(in);
}

std::unique_ptr<Work> Comm::all_gather_v_async(const Tensor& in, Tensor& out,
                                               const std::vector<int64_t>& counts) {
  POLDER_CHECK(static_cast<int>(counts.size()) == size(), "all_gather_v on {} (size {}): {} counts given",
               name_, size(), counts.size());
  int64_t total = 0;
  for (int64_t c : counts) {
    POLDER_CHECK(c >= 0 && c <= max_chunk_, "all_gather_v on {}: count {} out of range", name_, c);
    total += c;
  }
  POLDER_CHECK(out.numel() == total && in.numel() == counts[static_cast<size_t>(rank())],
               "all_gather_v on {}: out has {} elements for counts summing to {}; in has {} for count {}",
               name_, out.numel(), total, in.numel(), counts[static_cast<size_t>(rank())]);
  POLDER_CHECK(in.dtype() == out.dtype(), "all_gather_v on {}: in is {} but out is {}", name_, in.dtype(),
               out.dtype());
  POLDER_CHECK(!(in.same_storage(out) && in.nbytes() > 0 && out.nbytes() > 0 &&
                 in.offset() < out.offset() + out.nbytes() && out.offset() < in.offset() + in.nbytes()),
               "all_gather_v on {}: in overlaps out", name_);
  count_all_gather(out);
  return all_gather_v_impl(in, out, counts);
}

// One rank: avg divides by 1, an identity.
void SingleComm::reduce_scatter_v_impl(const Tensor& in, Tensor& out, const std::vector<int64_t>&, ReduceOp) {
  if (out.numel() > 0) out.copy_(in.view(out.shape()));
}

void Comm::count_reduce_scatter(const Tensor& in) {
  const double p = size();
  count(stats_.reduce_scatter, (p - 1) / p * static_cast<double>(in.nbytes()));
}
void Comm::count_all_gather(const Tensor& out) {
  const double p = size();
  count(stats_.all_gather, (p - 1) / p * static_cast<double>(out.nbytes()));
}
void Comm::count_broadcast(const Tensor& t) {
  count(stats_.broadcast, size() > 1 ? static_cast<double>(t.nbytes()) : 0.0);
}
void Comm::count_send(const Tensor& t) {
  count(stats_.p2p, static_cast<double>(t.nbytes()));
}

// ---------------------------------------------------------------------------------------------------------
// Single process.

namespace {

class DoneWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

bool overlaps(const Tensor& a, const Tensor& b) {
  if (!a.same_storage(b) || a.nbytes() == 0 || b.nbytes() == 0) return false;
  return a.offset() < b.offset() + b.nbytes() && b.offset() < a.offset() + a.nbytes();
}

// The Works of a group's operations, completed together.
class GroupWork final : public Work {
 public:
  explicit GroupWork(std::vector<std::unique_ptr<Work>> parts) : parts_(std::move(parts)) {}
  void wait() override {
    for (auto& p : parts_) p->wait();
  }
  bool test() override {
    bool done = true;
    for (auto& p : parts_) done = p->test() && done;  // test every part: MPI progresses inside the calls
    return done;
  }

 private:
  std::vector<std::unique_ptr<Work>> parts_;
};

}  // namespace

std::unique_ptr<Work> Comm::p2p_group(const std::vector<P2POp>& ops) {
  // Nonblocking operations progress independently: posting them one after another is a group.
  std::vector<std::unique_ptr<Work>> parts;
  for (const P2POp& op : ops) {
    Tensor t = op.tensor;
    parts.push_back(op.send ? send_async(t, op.peer, op.tag) : recv_async(t, op.peer, op.tag));
  }
  return std::make_unique<GroupWork>(std::move(parts));
}

std::unique_ptr<Work> SingleComm::all_gather_v_impl(const Tensor& in, Tensor& out,
                                                    const std::vector<int64_t>&) {
  if (out.numel() > 0) out.copy_(in.view(out.shape()));
  return std::make_unique<DoneWork>();
}

void SingleComm::all_reduce(Tensor& t, ReduceOp op) {
  check_reduce("all_reduce", t, op);
  count_all_reduce(t);
}

void SingleComm::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  check_reduce("reduce_scatter", in, op);
  check_scatter_gather("reduce_scatter", out, in, "out", "in");
  if (!(in.same_storage(out) && in.offset() == out.offset())) out.copy_(in.view(out.shape()));
  count_reduce_scatter(in);
}

void SingleComm::all_gather(const Tensor& in, Tensor& out) {
  check_scatter_gather("all_gather", in, out, "in", "out");
  if (!(in.same_storage(out) && in.offset() == out.offset())) out.copy_(in.view(out.shape()));
  count_all_gather(out);
}

void SingleComm::broadcast(Tensor& t, int root) {
  check_tensor("broadcast", t);
  POLDER_CHECK(root == 0, "broadcast on {} (size 1): root {} is out of range", name_, root);
  count_broadcast(t);
}

void SingleComm::send(const Tensor& t, int dst, int tag) {
  check_tensor("send", t);
  check_peer("send", dst, tag);
}

void SingleComm::recv(Tensor& t, int src, int tag) {
  check_tensor("recv", t);
  check_peer("recv", src, tag);
}

std::unique_ptr<Work> SingleComm::all_reduce_async(Tensor& t, ReduceOp op) {
  all_reduce(t, op);
  return std::make_unique<DoneWork>();
}
std::unique_ptr<Work> SingleComm::reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) {
  reduce_scatter(in, out, op);
  return std::make_unique<DoneWork>();
}
std::unique_ptr<Work> SingleComm::all_gather_async(const Tensor& in, Tensor& out) {
  all_gather(in, out);
  return std::make_unique<DoneWork>();
}
std::unique_ptr<Work> SingleComm::send_async(const Tensor& t, int dst, int tag) {
  send(t, dst, tag);
  return std::make_unique<DoneWork>();
}
std::unique_ptr<Work> SingleComm::recv_async(Tensor& t, int src, int tag) {
  recv(t, src, tag);
  return std::make_unique<DoneWork>();
}

std::shared_ptr<Comm> SingleComm::split(int color, int /*key*/, const std::string& name) {
  if (color < 0) return nullptr;
  return std::make_shared<SingleComm>(name.empty() ? name_ + "/split" : name);
}

// ---------------------------------------------------------------------------------------------------------
// MPI.

#ifdef POLDER_HAVE_MPI

#define MPI_CHECK(call)                                                                          \
  do {                                                                                           \
    const int mpi_err_ = (call);                                                                 \
    if (mpi_err_ != MPI_SUCCESS) {                                                               \
      char mpi_msg_[MPI_MAX_ERROR_STRING];                                                       \
      int mpi_len_ = 0;                                                                          \
      MPI_Error_string(mpi_err_, mpi_msg_, &mpi_len_);                                           \
      POLDER_FAIL("{} failed: {}", #call, std::string(mpi_msg_, static_cast<size_t>(mpi_len_))); \
    }                                                                                            \
  } while (0)

namespace {

// Pairwise combine of 16-bit floats in float, rounded back after each combine (see comm.h). max propagates
// NaN.
template <typename H>
void half_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const H* a = static_cast<const H*>(in);
  H* b = static_cast<H*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = H(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}
template <typename H>
void half_max(void* in, void* inout, int* len, MPI_Datatype*) {
  const H* a = static_cast<const H*>(in);
  H* b = static_cast<H*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]);
    if (x != x || x > y) b[i] = a[i];  // y NaN: keep it
  }
}

// Per-process MPI state shared by every MpiComm: the custom reduction ops.
struct MpiContext {
  MPI_Op bf16_sum, bf16_max, f16_sum, f16_max;
  MpiContext() {
    MPI_CHECK(MPI_Op_create(&half_sum<bf16>, 1, &bf16_sum));
    MPI_CHECK(MPI_Op_create(&half_max<bf16>, 1, &bf16_max));
    MPI_CHECK(MPI_Op_create(&half_sum<f16>, 1, &f16_sum));
    MPI_CHECK(MPI_Op_create(&half_max<f16>, 1, &f16_max));
  }
};

MPI_Datatype mpi_type(DType d) {
  switch (d) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::bf16:
    case DType::f16:
      return MPI_UINT16_T;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
    case DType::u8:
      return MPI_UINT8_T;
  }
  POLDER_FAIL("MPI: unknown dtype");
}

MPI_Op mpi_op(const MpiContext& ctx, DType d, ReduceOp op) {
  const bool max = op == ReduceOp::max;
  if (d == DType::bf16) return max ? ctx.bf16_max : ctx.bf16_sum;
  if (d == DType::f16) return max ? ctx.f16_max : ctx.f16_sum;
  return max ? MPI_MAX : MPI_SUM;
}

// t /= p, in the accumulation type of t's dtype.
void divide(Tensor& t, int p) {
  POLDER_DISPATCH_FLOAT(t.dtype(), "avg", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    scalar_t* d = t.data<scalar_t>();
    for (int64_t i = 0; i < t.numel(); ++i) d[i] = scalar_t(static_cast<acc_t>(d[i]) / static_cast<acc_t>(p));
  });
}

struct Chunk {
  char* ptr;
  int count;
};

// [0, numel) in pieces of at most max_count elements; one empty chunk for an empty tensor, so that
// zero-element messages still match on both sides.
std::vector<Chunk> chunks(const Tensor& t, int64_t max_count) {
  std::vector<Chunk> out;
  char* base = static_cast<char*>(t.raw_data());
  const size_t es = dtype_size(t.dtype());
  int64_t pos = 0;
  do {
    const int64_t n = std::min(max_count, t.numel() - pos);
    out.push_back({base + pos * es, static_cast<int>(n)});
    pos += n;
  } while (pos < t.numel());
  return out;
}

class MpiWork final : public Work {
 public:
  std::vector<MPI_Request> requests;
  std::vector<Tensor> keep;      // alive until complete
  std::function<void()> finish;  // after completion: avg division, copy out of a temporary, checks

  void wait() override {
    if (done_) return;
    const profile::Scope scope("communication");
    MPI_CHECK(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), statuses()));
    complete();
  }
  bool test() override {
    if (done_) return true;
    int flag = 0;
    MPI_CHECK(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &flag, statuses()));
    if (flag) complete();
    return done_;
  }
  ~MpiWork() override {
    if (done_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    try {
      wait();
    } catch (...) {  // a destructor must not throw; the error was the caller's to see through wait()
    }
  }
  std::vector<MPI_Status> status;  // filled when record_status is set (recv)
  bool record_status = false;

 private:
  MPI_Status* statuses() {
    if (!record_status) return MPI_STATUSES_IGNORE;
    status.resize(requests.size());
    return status.data();
  }
  void complete() {
    done_ = true;
    if (finish) finish();
    keep.clear();
  }
  bool done_ = false;
};

class MpiComm final : public Comm {
 public:
  MpiComm(MPI_Comm comm, std::shared_ptr<const MpiContext> ctx, std::string name)
      : Comm(std::move(name)), comm_(comm), ctx_(std::move(ctx)) {
    MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_ARE_FATAL));
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void all_reduce(Tensor& t, ReduceOp op) override {
    const profile::Scope scope("communication");
    check_host("all_reduce", t);
    check_reduce("all_reduce", t, op);
    for (const Chunk& c : chunks(t, max_chunk_))
      MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, c.ptr, c.count, mpi_type(t.dtype()), mpi_op(*ctx_, t.dtype(), op),
                              comm_));
    if (op == ReduceOp::avg) divide(t, size_);
    count_all_reduce(t);
  }

  std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) override {
    check_host("all_reduce", t);
    check_reduce("all_reduce", t, op);
    auto w = std::make_unique<MpiWork>();
    for (const Chunk& c : chunks(t, max_chunk_)) {
      w->requests.emplace_back();
      MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, c.ptr, c.count, mpi_type(t.dtype()),
                               mpi_op(*ctx_, t.dtype(), op), comm_, &w->requests.back()));
    }
    w->keep = {t};
    if (op == ReduceOp::avg) w->finish = [t, p = size_]() mutable { divide(t, p); };
    count_all_reduce(t);
    return w;
  }

  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override {
    const profile::Scope scope("communication");
    reduce_scatter_async_impl(in, out, op, /*async=*/false);
  }
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override {
    return reduce_scatter_async_impl(in, out, op, /*async=*/true);
  }

  void all_gather(const Tensor& in, Tensor& out) override {
    const profile::Scope scope("communication");
    all_gather_impl(in, out, false);
  }
  std::unique_ptr<Work> all_gather_async(const Tensor& in, Tensor& out) override {
    return all_gather_impl(in, out, true);
  }

  void broadcast(Tensor& t, int root) override {
    const profile::Scope scope("communication");
    check_host("broadcast", t);
    POLDER_CHECK(root >= 0 && root < size_, "broadcast on {} (size {}): root {} is out of range", name_,
                 size_, root);
    for (const Chunk& c : chunks(t, max_chunk_))
      MPI_CHECK(MPI_Bcast(c.ptr, c.count, mpi_type(t.dtype()), root, comm_));
    count_broadcast(t);
  }

  void send(const Tensor& t, int dst, int tag) override {
    const profile::Scope scope("communication");
    check_host("send", t);
    check_peer("send", dst, tag);
    for (const Chunk& c : chunks(t, max_chunk_))
      MPI_CHECK(MPI_Send(c.ptr, c.count, mpi_type(t.dtype()), dst, tag, comm_));
    count_send(t);
  }

  std::unique_ptr<Work> send_async(const Tensor& t, int dst, int tag) override {
    check_host("send", t);
    check_peer("send", dst, tag);
    auto w = std::make_unique<MpiWork>();
    for (const Chunk& c : chunks(t, max_chunk_)) {
      w->requests.emplace_back();
      MPI_CHECK(MPI_Isend(c.ptr, c.count, mpi_type(t.dtype()), dst, tag, comm_, &w->requests.back()));
    }
    w->keep = {t};
    count_send(t);
    return w;
  }

  // Probes the first message so that a size mismatch is a polder::Error naming both counts, not MPI's
  // truncation abort (the sender's excess stays unreceived; the error ends this rank and so the job).
  void recv(Tensor& t, int src, int tag) override {
    const profile::Scope scope("communication");
    check_host("recv", t);
    check_peer("recv", src, tag);
    const std::vector<Chunk> cs = chunks(t, max_chunk_);
    MPI_Status st;
    MPI_CHECK(MPI_Probe(src, tag, comm_, &st));
    int n = 0;
    MPI_CHECK(MPI_Get_count(&st, mpi_type(t.dtype()), &n));
    POLDER_CHECK(n == cs[0].count,
                 "recv on {} (size {}) from rank {} tag {}: expected {} {} elements but the message has {}",
                 name_, size_, src, tag, cs[0].count, t.dtype(), n);
    for (const Chunk& c : cs) {
      MPI_CHECK(MPI_Recv(c.ptr, c.count, mpi_type(t.dtype()), src, tag, comm_, &st));
      MPI_CHECK(MPI_Get_count(&st, mpi_type(t.dtype()), &n));
      POLDER_CHECK(n == c.count,
                   "recv on {} (size {}) from rank {} tag {}: expected {} {} elements but got {}", name_,
                   size_, src, tag, c.count, t.dtype(), n);
    }
  }

  std::unique_ptr<Work> recv_async(Tensor& t, int src, int tag) override {
    check_host("recv", t);
    check_peer("recv", src, tag);
    auto w = std::make_unique<MpiWork>();
    const std::vector<Chunk> cs = chunks(t, max_chunk_);
    for (const Chunk& c : cs) {
      w->requests.emplace_back();
      MPI_CHECK(MPI_Irecv(c.ptr, c.count, mpi_type(t.dtype()), src, tag, comm_, &w->requests.back()));
    }
    w->keep = {t};
    w->record_status = true;
    MpiWork* wp = w.get();
    w->finish = [wp, cs, dt = t.dtype(), name = name_, size = size_, src, tag] {
      for (size_t i = 0; i < cs.size(); ++i) {
        int n = 0;
        MPI_CHECK(MPI_Get_count(&wp->status[i], mpi_type(dt), &n));
        POLDER_CHECK(n == cs[i].count,
                     "recv on {} (size {}) from rank {} tag {}: expected {} {} elements but got {}", name,
                     size, src, tag, cs[i].count, dt, n);
      }
    };
    return w;
  }

  void barrier() override {
    const profile::Scope scope("communication");
    MPI_CHECK(MPI_Barrier(comm_));
  }

  std::shared_ptr<Comm> split(int color, int key, const std::string& name) override {
    MPI_Comm sub = MPI_COMM_NULL;
    MPI_CHECK(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub));
    if (sub == MPI_COMM_NULL) return nullptr;
    return std::make_shared<MpiComm>(sub, ctx_, name.empty() ? name_ + "/split" : name);
  }

 private:
  void check_host(const char* op, const Tensor& t) const {
    check_tensor(op, t);
    POLDER_CHECK(t.device().is_cpu(),
                 "{} on {}: the tensor is on {} but the MPI backend works on host memory", op, name_,
                 t.device());
  }
  void check_count(const char* op, const char* what, const Tensor& t) const {
    POLDER_CHECK(t.numel() <= INT_MAX, "{} on {}: {} has {} elements, more than an MPI count ({})", op, name_,
                 what, t.numel(), INT_MAX);
  }

  void reduce_scatter_v_impl(const Tensor& in, Tensor& out, const std::vector<int64_t>& counts,
                             ReduceOp op) override {
    check_host("reduce_scatter_v", in);
    check_host("reduce_scatter_v", out);
    std::vector<int> recv(counts.begin(), counts.end());
    Tensor dst = overlaps(in, out) ? Tensor::empty(out.shape(), out.dtype()) : out;
    MPI_CHECK(MPI_Reduce_scatter(in.raw_data(), dst.numel() ? dst.raw_data() : nullptr, recv.data(),
                                 mpi_type(in.dtype()), MPI_SUM, comm_));
    if (op == ReduceOp::avg) divide(dst, size_);
    if (!dst.same_storage(out)) out.copy_(dst);
  }

  std::unique_ptr<Work> all_gather_v_impl(const Tensor& in, Tensor& out,
                                          const std::vector<int64_t>& counts) override {
    check_host("all_gather_v", in);
    check_host("all_gather_v", out);
    std::vector<int> recv(counts.begin(), counts.end()), displs(counts.size(), 0);
    for (size_t r = 1; r < counts.size(); ++r) displs[r] = displs[r - 1] + recv[r - 1];
    auto w = std::make_unique<MpiWork>();
    w->requests.emplace_back();
    const MPI_Datatype dt = mpi_type(in.dtype());
    MPI_CHECK(MPI_Iallgatherv(in.numel() ? in.raw_data() : nullptr, static_cast<int>(in.numel()), dt,
                              out.numel() ? out.raw_data() : nullptr, recv.data(), displs.data(), dt, comm_,
                              &w->requests.back()));
    // MPI reads the counts when the operation starts; the tensors stay alive until complete.
    w->keep = {in, out};
    return w;
  }

  std::unique_ptr<Work> reduce_scatter_async_impl(const Tensor& in, Tensor& out, ReduceOp op, bool async) {
    check_host("reduce_scatter", in);
    check_host("reduce_scatter", out);
    check_reduce("reduce_scatter", in, op);
    check_scatter_gather("reduce_scatter", out, in, "out", "in");
    check_count("reduce_scatter", "out", out);
    // MPI forbids aliasing without MPI_IN_PLACE (whose layout differs from NCCL's): reduce into a temporary.
    const bool alias = overlaps(in, out);
    Tensor dst = alias ? Tensor::empty(out.shape(), out.dtype()) : out;
    const int n = static_cast<int>(out.numel());
    const MPI_Datatype dt = mpi_type(in.dtype());
    const MPI_Op mop = mpi_op(*ctx_, in.dtype(), op);
    auto finish = [dst, out, alias, avg = op == ReduceOp::avg, p = size_]() mutable {
      if (avg) divide(dst, p);
      if (alias) out.copy_(dst);
    };
    count_reduce_scatter(in);
    if (!async) {
      MPI_CHECK(MPI_Reduce_scatter_block(in.raw_data(), dst.raw_data(), n, dt, mop, comm_));
      finish();
      return nullptr;
    }
    auto w = std::make_unique<MpiWork>();
    w->requests.emplace_back();
    MPI_CHECK(
        MPI_Ireduce_scatter_block(in.raw_data(), dst.raw_data(), n, dt, mop, comm_, &w->requests.back()));
    w->keep = {in, out, dst};
    w->finish = finish;
    return w;
  }

  std::unique_ptr<Work> all_gather_impl(const Tensor& in, Tensor& out, bool async) {
    check_host("all_gather", in);
    check_host("all_gather", out);
    check_scatter_gather("all_gather", in, out, "in", "out");
    check_count("all_gather", "in", in);
    const bool in_place = in.same_storage(out) && in.offset() == out.offset() + rank_ * in.nbytes();
    // Any other overlap: gather from a copy of in.
    const Tensor src = !in_place && overlaps(in, out) ? in.clone() : in;
    const int n = static_cast<int>(in.numel());
    const MPI_Datatype dt = mpi_type(in.dtype());
    const void* send_buf = in_place ? MPI_IN_PLACE : src.raw_data();
    count_all_gather(out);
    if (!async) {
      MPI_CHECK(MPI_Allgather(send_buf, in_place ? 0 : n, in_place ? MPI_DATATYPE_NULL : dt, out.raw_data(),
                              n, dt, comm_));
      return nullptr;
    }
    auto w = std::make_unique<MpiWork>();
    w->requests.emplace_back();
    MPI_CHECK(MPI_Iallgather(send_buf, in_place ? 0 : n, in_place ? MPI_DATATYPE_NULL : dt, out.raw_data(), n,
                             dt, comm_, &w->requests.back()));
    w->keep = {src, out};
    return w;
  }

  MPI_Comm comm_;
  std::shared_ptr<const MpiContext> ctx_;
  int rank_ = 0, size_ = 1;
};

// Exit without finalize() (a main that returns without it, or an error path). If every rank is exiting too,
// finalise normally (the exit code is kept); if some rank does not arrive within the grace period it is
// probably blocked in a collective with this one, and MPI_Finalize would wait forever: end the job instead.
// The barrier runs on its own communicator, made at initialisation (per-process MPI state, like MPI's own).
MPI_Comm g_exit_comm = MPI_COMM_NULL;

double exit_grace_seconds() {
  const char* v = std::getenv("POLDER_EXIT_GRACE_S");
  return v ? std::atof(v) : 30.0;
}

void finalize_or_abort_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  MPI_Request req;
  MPI_Ibarrier(g_exit_comm, &req);
  const double deadline = MPI_Wtime() + exit_grace_seconds();
  int done = 0;
  while (!done && MPI_Wtime() < deadline) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (!done) usleep(1000);
  }
  if (done) {
    MPI_Finalize();
    return;
  }
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "polder: rank %d exits but not every rank does within %g s; aborting the job\n", rank,
               exit_grace_seconds());
  MPI_Abort(MPI_COMM_WORLD, 1);
}

std::shared_ptr<Comm> make_mpi_world(const LaunchInfo& info) {
  int initialized = 0;
  MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided));
    std::atexit(finalize_or_abort_at_exit);
    POLDER_CHECK(provided >= MPI_THREAD_FUNNELED,
                 "MPI provides thread level {}, polder needs at least FUNNELED ({})", provided,
                 static_cast<int>(MPI_THREAD_FUNNELED));
  }
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL));
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &g_exit_comm));
  // A duplicate keeps polder's messages apart from any other library's traffic on MPI_COMM_WORLD.
  MPI_Comm dup = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &dup));
  auto world = std::make_shared<MpiComm>(dup, std::make_shared<MpiContext>(), "world");
  POLDER_CHECK(world->size() == info.world_size && world->rank() == info.rank,
               "{} says rank {} of {} but MPI says rank {} of {} (with srun, is --mpi=pmix set?)",
               info.launcher, info.rank, info.world_size, world->rank(), world->size());
  return world;
}

}  // namespace

#endif  // POLDER_HAVE_MPI

bool have_mpi() {
#ifdef POLDER_HAVE_MPI
  return true;
#else
  return false;
#endif
}

std::shared_ptr<Comm> world_comm() {
  static const std::shared_ptr<Comm> world = []() -> std::shared_ptr<Comm> {
    const LaunchInfo info = detect_launch();
    if (!info.launched()) return std::make_shared<SingleComm>("world");
#ifdef POLDER_HAVE_MPI
    return make_mpi_world(info);
#else
    POLDER_FAIL("launched by {} as rank {} of {} but polder was built without MPI (POLDER_MPI=OFF)",
                info.launcher, info.rank, info.world_size);
#endif
  }();
  return world;
}

void finalize() {
#ifdef POLDER_HAVE_MPI
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_CHECK(MPI_Finalize());
#endif
}

void abort_job(int exit_code) {
#ifdef POLDER_HAVE_MPI
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, exit_code);
#endif
  std::_Exit(exit_code);
}

}  // namespace polder::parallel
