// The NCCL backend of Comm on one GPU: a world of one rank bootstrapped over SingleComm. Every collective and
// dtype must give its one-rank definition bit for bit (sum/avg/max = identity, gathers and scatters = copies,
// in and out of place and through the temporary of other overlaps) into outputs poisoned first; stream
// ordering in both directions, made observable by stalling one stream with a sleeping host function (inputs
// written on the compute stream right before an op, results read on the compute stream right after it);
// byte counters equal to SingleComm's for the same calls; split, Mesh::on_device and one-line errors. Tagged
// [cuda]: without a device each such test warns and passes. Argument errors that need no device run
// everywhere, and a build without NCCL checks make_nccl_comm's error instead.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "core/cuda_context.h"
#include "parallel/comm.h"
#include "parallel/comm_nccl.h"
#include "parallel/mesh.h"
#include "tests/testing.h"

#ifdef POLDER_HAVE_NCCL
#include <cuda_runtime.h>

#include "tests/cuda_testing.h"
#endif

using namespace polder;
using namespace polder::parallel;
using polder::testing::require_error;

TEST_CASE("Mesh::on_device(cpu) shares the host communicators", "[nccl]") {
  Mesh host(std::make_shared<SingleComm>("world"), 1, 1);
  Mesh same = host.on_device(Device::cpu());
  CHECK(&same.world() == &host.world());
  CHECK(&same.tp() == &host.tp());
  CHECK(&same.dp() == &host.dp());
  CHECK(&same.pp() == &host.pp());
  require_error([] { make_nccl_comm(nullptr, 0); }, "make_nccl_comm: the bootstrap communicator is null");
  SingleComm single("world");
  require_error([&] { nccl_stream(single); }, "nccl_stream: comm 'world' is single");
}

#ifndef POLDER_HAVE_NCCL

TEST_CASE("A build without NCCL says so in one line", "[nccl]") {
  CHECK_FALSE(have_nccl());
  require_error(
      [] { make_nccl_comm(std::make_shared<SingleComm>("world"), 0, "dp"); },
      "make_nccl_comm for 'dp' on cuda:0: this build has no NCCL: rebuild with -DPOLDER_CUDA=ON and NCCL "
      "installed");
  Mesh host(std::make_shared<SingleComm>("world"), 1, 1);
  require_error([&] { host.on_device(Device::cuda(0)); }, "this build has no NCCL");
}

#else  // POLDER_HAVE_NCCL

namespace {

constexpr DType kAllDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                                DType::i32, DType::i64, DType::u8};

// n fresh random values of dtype dt on the host: normal for floating dtypes, uniform integers otherwise.
Tensor host_rand(DType dt, int64_t n, uint64_t key) {
  Tensor f = Tensor::empty({n}, DType::f64);
  if (is_floating(dt)) {
    rng::fill_normal(f, 7, key, 0.0, 1.0);
  } else {
    rng::fill_uniform(f, 7, key, dt == DType::u8 ? 0.0 : -1000.0, dt == DType::u8 ? 255.0 : 1000.0);
  }
  return f.to(dt);
}

Tensor dev_rand(DType dt, int64_t n, uint64_t key) {
  return host_rand(dt, n, key).to(Device::cuda(0));
}

// n elements of 0xFF bytes on the device (NaN for the floating dtypes): every element must be written.
Tensor poisoned(DType dt, int64_t n) {
  Tensor h = Tensor::empty({n}, dt);
  std::memset(h.raw_data(), 0xFF, h.nbytes());
  return h.to(Device::cuda(0));
}

// The bytes of t, read on the host after the compute stream (on which the copy is ordered) got there.
std::vector<uint8_t> bytes_of(const Tensor& t) {
  Tensor h = t.to(Device::cpu());
  const auto* p = static_cast<const uint8_t*>(h.raw_data());
  return std::vector<uint8_t>(p, p + h.nbytes());
}

std::shared_ptr<Comm> one_rank_world() {
  return make_nccl_comm(std::make_shared<SingleComm>("world"), 0);
}

void CUDART_CB sleep_200ms(void*) {
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
}

cudaStream_t compute_stream() {
  return static_cast<cudaStream_t>(cuda::stream(0));
}

void check_same_stats(const CommStats& a, const CommStats& b) {
  const OpStats CommStats::*fields[] = {&CommStats::all_reduce, &CommStats::reduce_scatter,
                                        &CommStats::all_gather, &CommStats::broadcast, &CommStats::p2p};
  for (auto f : fields) {
    CHECK((a.*f).calls == (b.*f).calls);
    CHECK((a.*f).bytes == (b.*f).bytes);
  }
}

}  // namespace

TEST_CASE("NCCL argument errors that need no device", "[nccl]") {
  CHECK(have_nccl());
  require_error([] { make_nccl_comm(std::make_shared<SingleComm>("world"), 7, "dp"); },
                "make_nccl_comm for 'dp' on cuda:7: CUDA device 7 requested but");
  require_error([] { make_nccl_comm(std::make_shared<SingleComm>("world"), -1); },
                "make_nccl_comm for 'world' on cuda:-1: CUDA device -1 requested");
}

TEST_CASE("NCCL on one rank: every collective and dtype is its one-rank definition", "[cuda][nccl]") {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_world();
  CHECK(comm->backend() == "nccl");
  CHECK(comm->name() == "world");
  CHECK(comm->rank() == 0);
  CHECK(comm->size() == 1);
  uint64_t key = 1;
  for (DType dt : kAllDTypes) {
    for (int64_t n : {1, 1000, 4097}) {
      INFO("dtype " << dt << ", " << n << " elements");
      const Tensor x = dev_rand(dt, n, key++);
      const std::vector<uint8_t> want = bytes_of(x);
      std::vector<ReduceOp> ops = {ReduceOp::sum, ReduceOp::max};
      if (is_floating(dt)) ops.push_back(ReduceOp::avg);
      for (ReduceOp op : ops) {
        INFO("op " << reduce_op_name(op));
        Tensor t = x.clone();
        comm->all_reduce(t, op);
        CHECK(bytes_of(t) == want);
        Tensor u = x.clone();
        comm->all_reduce_async(u, op)->wait();
        CHECK(bytes_of(u) == want);
        // Out of place into a poisoned output, in place (out is this rank's chunk of in), and an output that
        // overlaps the input by all but one element (through a temporary).
        Tensor out = poisoned(dt, n);
        comm->reduce_scatter(x, out, op);
        CHECK(bytes_of(out) == want);
        Tensor inplace = x.clone();
        Tensor inplace_out = inplace.narrow(0, 0, n);
        comm->reduce_scatter(inplace, inplace_out, op);
        CHECK(bytes_of(inplace) == want);
        Tensor buf = Tensor::empty({n + 1}, dt, Device::cuda(0));
        buf.narrow(0, 1, n).copy_(x);
        Tensor shifted_out = buf.narrow(0, 0, n);
        comm->reduce_scatter(buf.narrow(0, 1, n), shifted_out, op);
        CHECK(bytes_of(shifted_out) == want);
        Tensor async_out = poisoned(dt, n);
        comm->reduce_scatter_async(x, async_out, op)->wait();
        CHECK(bytes_of(async_out) == want);
      }
      Tensor out = poisoned(dt, n);
      comm->all_gather(x, out);
      CHECK(bytes_of(out) == want);
      Tensor whole = x.clone();
      comm->all_gather(whole.narrow(0, 0, n), whole);
      CHECK(bytes_of(whole) == want);
      Tensor buf = Tensor::empty({n + 1}, dt, Device::cuda(0));
      buf.narrow(0, 0, n).copy_(x);
      Tensor shifted_out = buf.narrow(0, 1, n);
      comm->all_gather(buf.narrow(0, 0, n), shifted_out);
      CHECK(bytes_of(shifted_out) == want);
      Tensor async_out = poisoned(dt, n);
      comm->all_gather_async(x, async_out)->wait();
      CHECK(bytes_of(async_out) == want);
      Tensor b = x.clone();
      comm->broadcast(b, 0);
      CHECK(bytes_of(b) == want);
    }
  }
  // Empty tensors: no NCCL call, but counted like the other backends.
  Tensor empty = Tensor::empty({0}, DType::f32, Device::cuda(0));
  comm->reset_stats();
  comm->all_reduce(empty, ReduceOp::sum);
  comm->all_gather(empty, empty);
  comm->reduce_scatter(empty, empty, ReduceOp::avg);
  comm->broadcast(empty, 0);
  CHECK(comm->stats().all_reduce.calls == 1);
  CHECK(comm->stats().all_gather.calls == 1);
  CHECK(comm->stats().reduce_scatter.calls == 1);
  CHECK(comm->stats().broadcast.calls == 1);
  comm->barrier();
}

TEST_CASE("NCCL reduce_scatter_v on one rank: sum and avg, out of place, in place and overlapping",
          "[cuda][nccl]") {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_world();
  uint64_t key = 100;
  for (DType dt : {DType::f32, DType::f64}) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg}) {
      INFO("dtype " << dt << ", op " << reduce_op_name(op));
      const int64_t n = 777;
      const Tensor x = dev_rand(dt, n, key++);
      const std::vector<uint8_t> want = bytes_of(x);
      Tensor out = poisoned(dt, n);
      comm->reduce_scatter_v(x, out, {n}, op);
      CHECK(bytes_of(out) == want);
      Tensor inplace = x.clone();
      comm->reduce_scatter_v(inplace, inplace, {n}, op);
      CHECK(bytes_of(inplace) == want);
      Tensor buf = Tensor::empty({n + 1}, dt, Device::cuda(0));
      buf.narrow(0, 1, n).copy_(x);
      Tensor shifted_out = buf.narrow(0, 0, n);
      comm->reduce_scatter_v(buf.narrow(0, 1, n), shifted_out, {n}, op);
      CHECK(bytes_of(shifted_out) == want);
      Tensor none = Tensor::empty({0}, dt, Device::cuda(0));
      comm->reduce_scatter_v(none, none, {0}, op);
    }
  }
  CHECK(comm->stats().reduce_scatter.calls == 16);
}

TEST_CASE("NCCL reads inputs written on the compute stream right before an op", "[cuda][nccl]") {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_world();
  const int64_t n = 1 << 16;
  const Tensor src = dev_rand(DType::f64, n, 200);
  const std::vector<uint8_t> want = bytes_of(src.to(Device::cpu()).to(DType::f32));
  for (bool async : {false, true}) {
    INFO((async ? "async" : "sync") << " all_gather");
    Tensor in = Tensor::zeros({n}, DType::f32, Device::cuda(0));
    Tensor out = poisoned(DType::f32, n);
    cuda::synchronize(0);
    // The compute stream sleeps, then a kernel writes `in`; the op is posted while the host is far ahead.
    CUDA_OK(cudaLaunchHostFunc(compute_stream(), sleep_200ms, nullptr));
    cuda::convert(in.raw_data(), DType::f32, src.raw_data(), DType::f64, n, 0);
    if (async) {
      auto w = comm->all_gather_async(in, out);
      CHECK_FALSE(w->test());  // the comm stream waits for the sleeping compute stream
      w->wait();
      CHECK(bytes_of(out) == want);
      CHECK(w->test());
    } else {
      comm->all_gather(in, out);
      CHECK(bytes_of(out) == want);
    }
  }
}

TEST_CASE("The compute stream waits for NCCL results (sync ops, Work::wait, an unwaited Work)",
          "[cuda][nccl]") {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_world();
  const auto comm_stream = static_cast<cudaStream_t>(nccl_stream(*comm));
  REQUIRE(comm_stream != compute_stream());
  const int64_t n = 1 << 16;
  const Tensor x = dev_rand(DType::bf16, n, 300);
  const std::vector<uint8_t> want = bytes_of(x);
  for (int mode = 0; mode < 3; ++mode) {
    INFO("mode " << mode << " (0 sync, 1 wait, 2 Work destroyed)");
    Tensor out = poisoned(DType::bf16, n);
    cuda::synchronize(0);
    // The comm stream sleeps before the op: reading `out` on the compute stream must wait for it.
    CUDA_OK(cudaLaunchHostFunc(comm_stream, sleep_200ms, nullptr));
    if (mode == 0) {
      comm->reduce_scatter(x, out, ReduceOp::sum);
    } else {
      auto w = comm->reduce_scatter_async(x, out, ReduceOp::sum);
      CHECK_FALSE(w->test());
      if (mode == 1) w->wait();
    }
    CHECK(bytes_of(out) == want);
  }
}

TEST_CASE("NCCL byte counters equal SingleComm's for the same calls; barrier counts nothing",
          "[cuda][nccl]") {
  SKIP_WITHOUT_GPU();
  auto nccl = one_rank_world();
  SingleComm single("world");
  for (Comm* c : {static_cast<Comm*>(nccl.get()), static_cast<Comm*>(&single)}) {
    const Device d = c == &single ? Device::cpu() : Device::cuda(0);
    Tensor a = host_rand(DType::f32, 1000, 1).to(d), b = host_rand(DType::bf16, 333, 2).to(d);
    Tensor o = Tensor::empty({1000}, DType::f32, d);
    c->all_reduce(a, ReduceOp::sum);
    c->all_reduce(b, ReduceOp::max);
    c->all_reduce_async(a, ReduceOp::avg)->wait();
    c->reduce_scatter(a, o, ReduceOp::sum);
    c->reduce_scatter_async(a, o, ReduceOp::sum)->wait();
    c->reduce_scatter_v(a, o, {1000}, ReduceOp::avg);
    c->all_gather(a, o);
    c->all_gather_async(a, o)->wait();
    c->broadcast(b, 0);
    c->barrier();
  }
  check_same_stats(nccl->stats(), single.stats());
  CHECK(nccl->stats().all_reduce.calls == 3);
  CHECK(nccl->stats().reduce_scatter.calls == 3);
  CHECK(nccl->stats().all_gather.calls == 2);
  CHECK(nccl->stats().broadcast.calls == 1);
  CHECK(nccl->stats().total_bytes() == 0);  // one rank sends nothing (ring accounting)
}

TEST_CASE("NCCL split, Mesh::on_device and their counters", "[cuda][nccl]") {
  SKIP_WITHOUT_GPU();
  auto world = one_rank_world();
  auto tp = world->split(0, 0, "tp");
  REQUIRE(tp != nullptr);
  CHECK(tp->backend() == "nccl");
  CHECK(tp->name() == "tp");
  CHECK(tp->size() == 1);
  CHECK(world->split(-1, 0) == nullptr);
  auto unnamed = world->split(3, 0);
  CHECK(unnamed->name() == "world/split");
  CHECK(nccl_stream(*tp) != nccl_stream(*world));  // a sub-communicator has its own stream
  const Tensor x = dev_rand(DType::f32, 513, 400);
  Tensor t = x.clone();
  tp->all_reduce(t, ReduceOp::sum);
  CHECK(bytes_of(t) == bytes_of(x));
  CHECK(tp->stats().all_reduce.calls == 1);
  CHECK(world->stats().all_reduce.calls == 0);

  Mesh host(std::make_shared<SingleComm>("world"), 1, 1);
  Mesh dev = host.on_device(Device::cuda(0));
  for (Comm* c : {&dev.world(), &dev.tp(), &dev.dp(), &dev.pp()}) {
    CHECK(c->backend() == "nccl");
    CHECK(c->size() == 1);
  }
  CHECK(dev.world().name() == "world");
  CHECK(dev.dp().name() == "dp");
  CHECK(host.world().backend() == "single");
  Tensor g = x.clone();
  dev.dp().all_reduce_async(g, ReduceOp::avg)->wait();
  dev.tp().all_gather(x, t);
  CHECK(bytes_of(g) == bytes_of(x));
  CHECK(bytes_of(t) == bytes_of(x));
  CHECK(dev.stats().all_reduce.calls == 1);
  CHECK(dev.stats().all_gather.calls == 1);
  CHECK(host.stats().all_reduce.calls == 0);
}

TEST_CASE("NCCL errors are one line naming the op, the comm and the bad value", "[cuda][nccl]") {
  SKIP_WITHOUT_GPU();
  auto comm = make_nccl_comm(std::make_shared<SingleComm>("world"), 0, "dp");
  Tensor cpu = Tensor::zeros({4});
  Tensor dev = Tensor::zeros({4}, DType::f32, Device::cuda(0));
  Tensor dev_i = Tensor::zeros({4}, DType::i32, Device::cuda(0));
  require_error([&] { comm->all_reduce(cpu, ReduceOp::sum); },
                "all_reduce on comm 'dp' (nccl, cuda:0): tensor is on cpu; expected cuda:0");
  require_error([&] { comm->all_reduce_async(cpu, ReduceOp::sum); },
                "all_reduce on comm 'dp' (nccl, cuda:0): tensor is on cpu; expected cuda:0");
  require_error([&] { comm->all_gather(cpu, dev); }, "all_gather on comm 'dp' (nccl, cuda:0): in is on cpu");
  require_error([&] { comm->reduce_scatter(dev, cpu, ReduceOp::sum); },
                "reduce_scatter on comm 'dp' (nccl, cuda:0): out is on cpu; expected cuda:0");
  require_error([&] { comm->reduce_scatter_v(dev, cpu, {4}, ReduceOp::sum); },
                "out is on cpu; expected cuda:0");
  require_error([&] { comm->broadcast(cpu, 0); }, "broadcast on comm 'dp' (nccl, cuda:0): tensor is on cpu");
  require_error([&] { comm->send(cpu, 0); }, "send on comm 'dp' (nccl, cuda:0): tensor is on cpu");
  require_error([&] { comm->recv(cpu, 0); }, "recv on comm 'dp' (nccl, cuda:0): tensor is on cpu");
  require_error([&] { comm->all_reduce(dev_i, ReduceOp::avg); },
                "avg needs a floating dtype but the tensor is i32");
  require_error([&] { comm->all_gather(dev, dev_i); }, "in is f32 but out is i32");
  Tensor big = Tensor::zeros({8}, DType::f32, Device::cuda(0));
  require_error([&] { comm->all_gather(dev, big); }, "out has 8 elements but in has 4");
  require_error([&] { comm->broadcast(dev, 1); },
                "broadcast on comm 'dp' (nccl, cuda:0): root 1 is out of range");
  require_error([&] { comm->send(dev, 0); }, "rank 0 cannot send itself");
  require_error([&] { comm->recv_async(dev, 1); }, "peer rank 1 is out of range");
  require_error([&] { make_nccl_comm(comm, 0); }, "the bootstrap 'dp' is an NCCL comm; expected a host comm");
  CHECK(comm->stats().total_bytes() == 0);
  CHECK(comm->stats().all_reduce.calls == 0);  // nothing counted for rejected calls
}

#endif  // POLDER_HAVE_NCCL
