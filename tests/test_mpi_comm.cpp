// Comm under mpirun (1, 2 and 4 ranks): every collective, sync and async, against its definition computed
// locally from every rank's data (each rank regenerates all ranks' inputs from (test key, rank)); results
// bit-identical across ranks; dtypes f32, f64, bf16, i64; chunked messages; point-to-point rings; Mesh
// layouts and their sub-communicators; byte counters; error messages. The single-process backend too.
#include <cmath>
#include <cstring>
#include <numeric>
#include <span>

#include "parallel/comm.h"
#include "parallel/mesh.h"
#include "tests/testing.h"

using namespace polder;
using namespace polder::parallel;
using polder::testing::rel_error;
using polder::testing::require_error;
using polder::testing::values;

namespace {

// Rank `rank`'s input for test `key`: normal values (integers: normal * 1000, rounded). Any rank can make any
// rank's data, so expected results are computed locally.
Tensor rank_data(const Shape& shape, DType dt, uint64_t key, int rank) {
  Tensor f = Tensor::empty(shape, DType::f64);
  rng::fill_normal(f, 42, key * 1000 + static_cast<uint64_t>(rank), 0.0, 1.0);
  if (dt == DType::i64 || dt == DType::i32) {
    std::vector<int64_t> v;
    for (double x : values(f)) v.push_back(std::llround(x * 1000));
    return Tensor::from_vector<int64_t>(v, shape).to(dt);
  }
  return f.to(dt);
}

// op over ranks 0..p-1 of rank_data, in f64.
std::vector<double> reduce_expected(const Shape& shape, DType dt, uint64_t key, int p, ReduceOp op) {
  std::vector<double> acc = values(rank_data(shape, dt, key, 0));
  for (int r = 1; r < p; ++r) {
    std::vector<double> v = values(rank_data(shape, dt, key, r));
    for (size_t i = 0; i < acc.size(); ++i)
      acc[i] = op == ReduceOp::max ? std::max(acc[i], v[i]) : acc[i] + v[i];
  }
  if (op == ReduceOp::avg)
    for (double& a : acc) a /= p;
  return acc;
}

// Tolerance of a reduction over p ranks in dtype dt relative to the largest expected magnitude.
double tolerance(DType dt, int p, ReduceOp op) {
  if (op == ReduceOp::max || dt == DType::i64 || p == 1) return 0;
  if (dt == DType::f64) return 1e-13;
  if (dt == DType::f32) return 1e-6;
  return p * std::ldexp(1.0, -8);  // bf16: one rounding per pairwise combine (and avg's division)
}

double rel_error_to(const Tensor& got, const std::vector<double>& want) {
  return rel_error(got, Tensor::from_vector<double>(want, {static_cast<int64_t>(want.size())}));
}

// Every rank holds the same bits in t (compared as f64, exact for the dtypes tested).
bool same_on_every_rank(Comm& comm, const Tensor& t) {
  Tensor mine = t.to(DType::f64).view({-1});
  Tensor all = Tensor::empty({mine.numel() * comm.size()}, DType::f64);
  comm.all_gather(mine, all);
  const std::vector<double> a = values(all), m = values(mine);
  for (int r = 0; r < comm.size(); ++r)
    for (size_t i = 0; i < m.size(); ++i)
      if (std::memcmp(&a[r * m.size() + i], &m[i], sizeof(double)) != 0) return false;
  return true;
}

const DType kDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::i64};
const ReduceOp kOps[] = {ReduceOp::sum, ReduceOp::avg, ReduceOp::max};

}  // namespace

TEST_CASE("world_comm is MPI under mpirun and one object", "[mpi]") {
  auto w = world_comm();
  CHECK(w.get() == world_comm().get());
  CHECK(w->backend() == "mpi");
  CHECK(w->size() >= 1);
  CHECK(w->rank() < w->size());
}

TEST_CASE("all_reduce matches the sum, average and max of every rank's data", "[mpi]") {
  auto w = world_comm();
  const int p = w->size();
  uint64_t key = 1;
  for (DType dt : kDTypes) {
    for (ReduceOp op : kOps) {
      if (op == ReduceOp::avg && dt == DType::i64) continue;
      for (int mode = 0; mode < 3; ++mode) {  // 0: sync, 1: async + wait, 2: async + test() until done
        ++key;
        const Shape shape{3, 37};
        Tensor t = rank_data(shape, dt, key, w->rank());
        if (mode == 0) {
          w->all_reduce(t, op);
        } else {
          auto work = w->all_reduce_async(t, op);
          if (mode == 2)
            while (!work->test()) {
            }
          work->wait();
        }
        const auto want = reduce_expected(shape, dt, key, p, op);
        INFO("dtype " << dt << " op " << reduce_op_name(op) << " mode " << mode << " ranks " << p);
        CHECK(rel_error_to(t, want) <= tolerance(dt, p, op));
        CHECK(same_on_every_rank(*w, t));
      }
    }
  }
}

TEST_CASE("bf16 sums round once per combine, in float", "[mpi]") {
  auto w = world_comm();
  if (w->size() > 2) return;  // with two ranks there is exactly one combine: the result is bf16(a + b)
  Tensor t = rank_data({257}, DType::bf16, 99, w->rank());
  w->all_reduce(t, ReduceOp::sum);
  std::vector<float> a = rank_data({257}, DType::bf16, 99, 0).to(DType::f32).to_vector<float>();
  if (w->size() == 2) {
    std::vector<float> b = rank_data({257}, DType::bf16, 99, 1).to(DType::f32).to_vector<float>();
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(bf16(a[i] + b[i]));
  }
  CHECK(t.to(DType::f32).to_vector<float>() == a);
}

TEST_CASE("large buffers go in chunks with the same result", "[mpi]") {
  auto w = world_comm();
  w->set_max_chunk_elements(7);
  Tensor t = rank_data({100}, DType::f64, 500, w->rank());
  w->all_reduce(t, ReduceOp::sum);
  Tensor ta = rank_data({100}, DType::f32, 501, w->rank());
  w->all_reduce_async(ta, ReduceOp::max)->wait();
  Tensor b = rank_data({50}, DType::i64, 502, w->rank());
  Tensor b_root = rank_data({50}, DType::i64, 502, w->size() - 1);
  w->broadcast(b, w->size() - 1);
  w->set_max_chunk_elements(2147483647);
  CHECK(rel_error_to(t, reduce_expected({100}, DType::f64, 500, w->size(), ReduceOp::sum)) <= 1e-13);
  CHECK(rel_error_to(ta, reduce_expected({100}, DType::f32, 501, w->size(), ReduceOp::max)) == 0);
  CHECK(values(b) == values(b_root));
}

TEST_CASE("reduce_scatter gives rank r the reduction of chunk r", "[mpi]") {
  auto w = world_comm();
  const int p = w->size(), r = w->rank();
  const int64_t m = 29;
  uint64_t key = 1000;
  for (DType dt : kDTypes) {
    for (ReduceOp op : kOps) {
      if (op == ReduceOp::avg && dt == DType::i64) continue;
      for (int mode = 0; mode < 3;
           ++mode) {  // 0: sync, 1: async, 2: in place (out is this rank's chunk of in)
        ++key;
        Tensor in = rank_data({p * m}, dt, key, r);
        Tensor out = mode == 2 ? in.narrow(0, r * m, m) : Tensor::empty({m}, dt);
        if (mode == 1)
          w->reduce_scatter_async(in, out, op)->wait();
        else
          w->reduce_scatter(in, out, op);
        auto full = reduce_expected({p * m}, dt, key, p, op);
        std::vector<double> want(full.begin() + r * m, full.begin() + (r + 1) * m);
        INFO("dtype " << dt << " op " << reduce_op_name(op) << " mode " << mode << " ranks " << p);
        CHECK(rel_error_to(out, want) <= tolerance(dt, p, op));
      }
    }
  }
}

TEST_CASE("all_gather concatenates every rank's tensor in rank order", "[mpi]") {
  auto w = world_comm();
  const int p = w->size(), r = w->rank();
  uint64_t key = 2000;
  for (DType dt : kDTypes) {
    for (int mode = 0; mode < 3; ++mode) {  // 0: sync, 1: async, 2: in place (in is this rank's chunk of out)
      ++key;
      Tensor out = Tensor::zeros({p * 2, 13}, dt);
      Tensor in = mode == 2 ? out.narrow(0, 2 * r, 2) : rank_data({2, 13}, dt, key, r);
      if (mode == 2) in.copy_(rank_data({2, 13}, dt, key, r));
      if (mode == 1)
        w->all_gather_async(in, out)->wait();
      else
        w->all_gather(in, out);
      std::vector<double> want;
      for (int q = 0; q < p; ++q) {
        auto v = values(rank_data({2, 13}, dt, key, q));
        want.insert(want.end(), v.begin(), v.end());
      }
      INFO("dtype " << dt << " mode " << mode << " ranks " << p);
      CHECK(values(out) == want);
    }
  }
}

TEST_CASE("all_gather_v concatenates uneven pieces in rank order", "[mpi]") {
  auto w = world_comm();
  const int p = w->size(), r = w->rank();
  for (DType dt : kDTypes) {
    // Rank q contributes 3q + (q % 2 ? 0 : 5) elements: uneven, one of them possibly empty (rank 1 at p >= 2
    // gives 3).
    std::vector<int64_t> counts;
    for (int q = 0; q < p; ++q) counts.push_back(3 * q + (q % 2 ? 0 : 5) - (q == 1 ? 3 : 0));
    int64_t total = 0;
    for (int64_t c : counts) total += c;
    Tensor in = rank_data({counts[static_cast<size_t>(r)]}, dt, 2100, r);
    Tensor out = Tensor::zeros({total}, dt);
    w->all_gather_v_async(in, out, counts)->wait();
    std::vector<double> want;
    for (int q = 0; q < p; ++q) {
      auto v = values(rank_data({counts[static_cast<size_t>(q)]}, dt, 2100, q));
      want.insert(want.end(), v.begin(), v.end());
    }
    INFO("dtype " << dt << " ranks " << p);
    CHECK(values(out) == want);
  }
  Tensor bad = Tensor::zeros({4});
  CHECK_THROWS_AS(w->all_gather_v_async(bad, bad, std::vector<int64_t>(static_cast<size_t>(p), 4)), Error);
}

TEST_CASE("broadcast copies the root's tensor to every rank", "[mpi]") {
  auto w = world_comm();
  for (int root = 0; root < w->size(); ++root) {
    for (DType dt : kDTypes) {
      Tensor t = rank_data({41}, dt, 3000 + root, w->rank());
      w->broadcast(t, root);
      CHECK(values(t) == values(rank_data({41}, dt, 3000 + root, root)));
    }
  }
}

TEST_CASE("point to point: rings in both directions, sync and async", "[mpi]") {
  auto w = world_comm();
  const int p = w->size(), r = w->rank();
  if (p == 1) return;
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  // Async ring: post the receive, then the send.
  Tensor got = Tensor::empty({64}, DType::bf16);
  auto rw = w->recv_async(got, prev, 7);
  auto sw = w->send_async(rank_data({64}, DType::bf16, 4000, r), next, 7);
  sw->wait();
  rw->wait();
  CHECK(values(got) == values(rank_data({64}, DType::bf16, 4000, prev)));
  // Sync ring the other way, ordered so that blocking sends cannot deadlock: rank 0 sends first, every other
  // rank receives first and then sends on.
  Tensor token = Tensor::empty({1000}, DType::i64);  // integers: the increments are exact
  if (r == 0) {
    w->send(rank_data({1000}, DType::i64, 4001, 0), prev, 3);
    w->recv(token, next, 3);
  } else {
    w->recv(token, next, 3);
    Tensor fwd = token.clone();
    for (int64_t& v : std::span<int64_t>(fwd.data<int64_t>(), 1000)) v += 1;
    w->send(fwd, prev, 3);
  }
  // Around the whole ring back to rank 0: p - 1 increments; elsewhere the token carries r's distance.
  std::vector<double> want = values(rank_data({1000}, DType::i64, 4001, 0));
  const int hops = r == 0 ? p - 1 : (p - r) % p - 1;
  for (double& v : want) v += hops;
  CHECK(values(token) == want);
}

TEST_CASE("a receive of the wrong size is an error naming both counts", "[mpi]") {
  auto w = world_comm();
  if (w->size() == 1) return;
  if (w->rank() == 0) w->send(Tensor::full({5}, 2.0), 1, 11);
  if (w->rank() == 1) {
    Tensor big = Tensor::empty({6});
    require_error([&] { w->recv(big, 0, 11); }, "expected 6 f32 elements but the message has 5");
    Tensor right = Tensor::empty({5});
    w->recv(right, 0, 11);  // the message is still there
    CHECK(values(right) == std::vector<double>(5, 2.0));
  }
  w->barrier();
}

TEST_CASE("argument errors name the op, the communicator and both values", "[mpi]") {
  auto w = world_comm();
  const int p = w->size();
  Tensor a = Tensor::zeros({4});
  Tensor b = Tensor::zeros({4 * p + 1});
  require_error([&] { w->all_gather(a, b); },
                format("all_gather on world (size {}): out has {} elements but in has 4", p, 4 * p + 1));
  require_error([&] { w->reduce_scatter(b, a, ReduceOp::sum); },
                format("in has {} elements but out has 4", 4 * p + 1));
  Tensor c = Tensor::zeros({4 * p}, DType::bf16);
  require_error([&] { w->all_gather(a, c); }, "in is f32 but out is bf16");
  Tensor i = Tensor::zeros({3}, DType::i64);
  require_error([&] { w->all_reduce(i, ReduceOp::avg); }, "avg needs a floating dtype but the tensor is i64");
  require_error([&] { w->send(a, w->rank(), 0); }, format("rank {} cannot send itself", w->rank()));
  require_error([&] { w->recv(a, p, 0); }, format("peer rank {} is out of range", p));
  require_error([&] { w->broadcast(a, -1); }, "root -1 is out of range");
  Tensor undefined;
  require_error([&] { w->all_reduce(undefined, ReduceOp::sum); }, "the tensor is undefined");
  w->barrier();
}

TEST_CASE("byte counters follow the ring accounting", "[mpi]") {
  auto w = world_comm();
  const double p = w->size();
  w->reset_stats();
  Tensor t = Tensor::full({1000}, 1.0);  // 4000 bytes
  w->all_reduce(t, ReduceOp::sum);
  w->all_reduce_async(t, ReduceOp::avg)->wait();
  Tensor out = Tensor::empty({1000 * w->size()});
  w->all_gather(t, out);
  w->reduce_scatter(out, t, ReduceOp::sum);
  w->broadcast(t, 0);
  if (w->size() > 1) {
    if (w->rank() == 0) w->send(t, 1, 1);
    if (w->rank() == 1) w->recv(t, 0, 1);
  }
  const CommStats& s = w->stats();
  CHECK(s.all_reduce.calls == 2);
  CHECK(s.all_reduce.bytes == Approx(2 * 2 * (p - 1) / p * 4000));
  CHECK(s.all_gather.bytes == Approx((p - 1) / p * 4000 * p));
  CHECK(s.reduce_scatter.bytes == Approx((p - 1) / p * 4000 * p));
  CHECK(s.broadcast.bytes == (p > 1 ? 4000 : 0));
  CHECK(s.p2p.bytes == (w->size() > 1 && w->rank() == 0 ? 4000 : 0));
  CHECK(s.total_bytes() == Approx(s.all_reduce.bytes + s.all_gather.bytes + s.reduce_scatter.bytes +
                                  s.broadcast.bytes + s.p2p.bytes));
  w->reset_stats();
  CHECK(w->stats().all_reduce.calls == 0);
}

TEST_CASE("split with a negative color joins no group", "[mpi]") {
  auto w = world_comm();
  auto odd = w->split(w->rank() % 2 == 1 ? 0 : -1, w->rank(), "odd");
  CHECK((odd != nullptr) == (w->rank() % 2 == 1));
  if (odd) {
    CHECK(odd->size() == w->size() / 2);
    CHECK(odd->rank() == w->rank() / 2);
    CHECK(odd->name() == "odd");
  }
}

namespace {

// The global ranks in c, gathered over c (in c's rank order).
std::vector<double> members(Comm& c, int global_rank) {
  Tensor mine = Tensor::full({1}, global_rank, DType::f64);
  Tensor all = Tensor::empty({c.size()}, DType::f64);
  c.all_gather(mine, all);
  return values(all);
}

void check_mesh(std::shared_ptr<Comm> w, int tp, int pp, int dp) {
  Mesh m(w, tp, pp, dp);
  INFO(m.describe());
  const int r = w->rank();
  CHECK(m.dp_size() * m.tp_size() * m.pp_size() == w->size());
  CHECK(m.global_rank(m.tp_rank(), m.pp_rank(), m.dp_rank()) == r);
  CHECK(m.tp().size() == tp);
  CHECK(m.pp().size() == pp);
  CHECK(m.tp().rank() == m.tp_rank());
  CHECK(m.dp().rank() == m.dp_rank());
  CHECK(m.pp().rank() == m.pp_rank());
  std::vector<double> want_tp, want_dp, want_pp;
  for (int i = 0; i < tp; ++i) want_tp.push_back(m.global_rank(i, m.pp_rank(), m.dp_rank()));
  for (int i = 0; i < m.dp_size(); ++i) want_dp.push_back(m.global_rank(m.tp_rank(), m.pp_rank(), i));
  for (int i = 0; i < pp; ++i) want_pp.push_back(m.global_rank(m.tp_rank(), i, m.dp_rank()));
  CHECK(members(m.tp(), r) == want_tp);
  CHECK(members(m.dp(), r) == want_dp);
  CHECK(members(m.pp(), r) == want_pp);
  CHECK(m.first_stage() == (m.pp_rank() == 0));
  CHECK(m.last_stage() == (m.pp_rank() == pp - 1));
  CHECK(m.next_stage_rank() == m.global_rank(m.tp_rank(), (m.pp_rank() + 1) % pp, m.dp_rank()));
  CHECK(m.prev_stage_rank() == m.global_rank(m.tp_rank(), (m.pp_rank() + pp - 1) % pp, m.dp_rank()));
  // A reduction over tp sums exactly the tp group's data (sub-communicators carry their own traffic).
  m.reset_stats();
  Tensor t = rank_data({16}, DType::f64, 6000, r);
  m.tp().all_reduce(t, ReduceOp::sum);
  std::vector<double> want(16, 0.0);
  for (double g : want_tp) {
    auto v = values(rank_data({16}, DType::f64, 6000, static_cast<int>(g)));
    for (size_t i = 0; i < want.size(); ++i) want[i] += v[i];
  }
  CHECK(rel_error_to(t, want) <= 1e-13);
  CHECK(m.stats().all_reduce.bytes == Approx(2.0 * (tp - 1) / tp * 128));
  CHECK(w->stats().all_reduce.calls == 0);
  // Point to point along the pipeline, on pp(): each stage sends its global rank to the next (with wrap).
  if (pp > 1) {
    Tensor got = Tensor::empty({1}, DType::f64);
    auto rw = m.pp().recv_async(got, (m.pp_rank() + pp - 1) % pp, 0);
    m.pp().send_async(Tensor::full({1}, r, DType::f64), (m.pp_rank() + 1) % pp, 0)->wait();
    rw->wait();
    CHECK(got.item() == m.prev_stage_rank());
  }
}

}  // namespace

TEST_CASE("Mesh: every (tp, pp, dp) layout of the world, tp fastest", "[mpi][mesh]") {
  auto w = world_comm();
  const int n = w->size();
  if (n == 4) {
    check_mesh(w, 2, 2, 1);
    check_mesh(w, 1, 2, 2);
    check_mesh(w, 2, 1, 2);
    check_mesh(w, 4, 1, 1);
  }
  for (int tp = 1; tp <= n; ++tp)
    for (int pp = 1; pp <= n / tp; ++pp)
      if (n % (tp * pp) == 0) check_mesh(w, tp, pp, 0);
}

// Context parallelism: rank order tp, cp, dp, pp; the replica group is the dp x cp ranks of a (pp, tp) place.
TEST_CASE("Mesh with cp: tp innermost, then cp; replicas are dp x cp", "[mpi][mesh]") {
  auto w = world_comm();
  const int n = w->size(), r = w->rank();
  for (int tp = 1; tp <= n; ++tp)
    for (int cp = 2; cp <= n / tp; ++cp) {
      if (n % (tp * cp) != 0) continue;
      Mesh m(w, tp, 1, 0, cp);
      INFO(m.describe());
      CHECK(m.global_rank(m.tp_rank(), m.pp_rank(), m.dp_rank(), m.cp_rank()) == r);
      CHECK(m.tp_rank() == r % tp);
      CHECK(m.cp_rank() == (r / tp) % cp);
      CHECK(m.cp().size() == cp);
      CHECK(m.cp().rank() == m.cp_rank());
      CHECK(m.replicas().size() == m.dp_size() * cp);
      CHECK(m.replicas().rank() == m.replica_rank());
      std::vector<double> want_cp, want_rep;
      for (int i = 0; i < cp; ++i) want_cp.push_back(m.global_rank(m.tp_rank(), 0, m.dp_rank(), i));
      for (int d = 0; d < m.dp_size(); ++d)
        for (int c = 0; c < cp; ++c) want_rep.push_back(m.global_rank(m.tp_rank(), 0, d, c));
      CHECK(members(m.cp(), r) == want_cp);
      CHECK(members(m.replicas(), r) == want_rep);
    }
}

TEST_CASE("Mesh: a layout that does not fill the world names all four numbers", "[mpi][mesh]") {
  auto w = world_comm();
  const int n = w->size();
  require_error([&] { Mesh(w, 3, 1, 2); },
                format("tp=3 pp=1 cp=1 dp=2: tp * pp * cp * dp = 6 but the world size is {}", n));
  require_error([&] { Mesh(w, 1, n + 1, 0); },
                format("tp=1 pp={} cp=1 dp=0 (derive): the world size {} is not a multiple", n + 1, n));
  require_error([&] { Mesh(w, 0, 1, 0); }, "tp=0 pp=1 cp=1 dp=0: tp, pp and cp must be at least 1");
}

TEST_CASE("SingleComm: identities and copies; no peers", "[single]") {
  SingleComm s;
  Tensor t = rank_data({10}, DType::f32, 7000, 0);
  const auto before = values(t);
  s.all_reduce(t, ReduceOp::avg);
  s.all_reduce_async(t, ReduceOp::sum)->wait();
  CHECK(values(t) == before);
  Tensor out = Tensor::empty({10});
  s.all_gather(t, out);
  CHECK(values(out) == before);
  Tensor rs = Tensor::empty({10});
  s.reduce_scatter_async(out, rs, ReduceOp::max)->wait();
  CHECK(values(rs) == before);
  s.broadcast(t, 0);
  CHECK(values(t) == before);
  require_error([&] { s.broadcast(t, 1); }, "root 1 is out of range");
  require_error([&] { s.send(t, 0); }, "rank 0 cannot send itself");
  require_error([&] { s.recv_async(t, 0); }, "rank 0 cannot recv itself");
  require_error([&] { s.all_gather(t, rs = Tensor::empty({11})); }, "out has 11 elements but in has 10");
  CHECK(s.stats().all_reduce.calls == 2);
  CHECK(s.stats().total_bytes() == 0);
  Mesh m(std::make_shared<SingleComm>(), 1, 1, 0);
  CHECK(m.dp_size() == 1);
  CHECK(m.tp().backend() == "single");
  CHECK(m.first_stage());
  CHECK(m.last_stage());
  CHECK(s.split(-1, 0) == nullptr);
}
