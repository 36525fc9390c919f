// The NCCL backend under mpirun, for machines where every rank has a GPU of its own (each rank uses its
// node-local rank's device, or device 0 when the launcher shows it one; two ranks on one GPU skip, as NCCL
// refuses them). Each NCCL collective runs on the same data as the MPI backend (itself checked against local
// definitions in test_mpi_comm): integer and max results bit-identical, floating sums within the rounding of
// a different summation order; the byte counters of the two equal after the same calls; Mesh::on_device keeps
// every rank's place. Without GPUs (CI) every rank warns and passes.
#include <cmath>
#include <cstring>

#include "core/cuda_context.h"
#include "parallel/comm.h"
#include "parallel/comm_nccl.h"
#include "parallel/launch.h"
#include "parallel/mesh.h"
#include "tests/testing.h"

#ifdef POLDER_HAVE_NCCL
#include <cuda_runtime.h>
#endif

using namespace polder;
using namespace polder::parallel;
using polder::testing::rel_error;
using polder::testing::values;

#ifdef POLDER_HAVE_NCCL

namespace {

// This rank's device, or -1 (on every rank) when some rank has no GPU of its own.
int own_device(Comm& world) {
  const int visible = cuda::device_count();
  int device = visible == 1 ? 0 : detect_launch().local_rank;
  // 16 bytes of device UUID and one byte "usable".
  Tensor mine = Tensor::zeros({17}, DType::u8);
  if (device < visible) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) {
      std::memcpy(mine.raw_data(), prop.uuid.bytes, 16);
      mine.data<uint8_t>()[16] = 1;
    }
  }
  Tensor all = Tensor::empty({17 * world.size()}, DType::u8);
  world.all_gather(mine, all);
  const uint8_t* a = all.data<uint8_t>();
  for (int r = 0; r < world.size(); ++r) {
    if (a[17 * r + 16] != 1) return -1;
    for (int q = 0; q < r; ++q)
      if (std::memcmp(a + 17 * r, a + 17 * q, 16) == 0) return -1;  // two ranks on one GPU
  }
  return device;
}

#define SKIP_WITHOUT_OWN_GPU(world, device)                                                                  \
  const int device = own_device(*(world));                                                                   \
  if (device < 0) {                                                                                          \
    WARN(                                                                                                    \
        "skipped: not every rank has a CUDA device of its own (the NCCL multi-rank test is for GPU nodes)"); \
    return;                                                                                                  \
  }

Tensor rank_data(const Shape& shape, DType dt, uint64_t key, int rank) {
  Tensor f = Tensor::empty(shape, DType::f64);
  rng::fill_normal(f, 42, key * 1000 + static_cast<uint64_t>(rank), 0.0, 1.0);
  if (!is_floating(dt)) {
    std::vector<int64_t> v;
    for (double x : values(f))
      v.push_back(dt == DType::u8 ? std::llround(std::abs(x) * 50) : std::llround(x * 1000));
    return Tensor::from_vector<int64_t>(v, shape).to(dt);
  }
  return f.to(dt);
}

// NCCL and MPI may sum in different orders: one rounding per combine of the dtype.
double tolerance(DType dt, int p, ReduceOp op) {
  if (op == ReduceOp::max || !is_floating(dt) || p == 1) return 0;
  if (dt == DType::f64) return 1e-13;
  if (dt == DType::f32) return 1e-6;
  return p * std::ldexp(1.0, dt == DType::bf16 ? -7 : -10);
}

}  // namespace

TEST_CASE("NCCL collectives equal the MPI backend's on the same data, and count the same bytes",
          "[nccl][mpi]") {
  auto world = world_comm();
  SKIP_WITHOUT_OWN_GPU(world, device);
  auto nccl = make_nccl_comm(world, device);
  const Device dev = Device::cuda(device);
  const int p = world->size(), r = world->rank();
  world->reset_stats();
  uint64_t key = 1;
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u8}) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
      if ((op == ReduceOp::avg && !is_floating(dt)) || (op == ReduceOp::sum && dt == DType::u8)) continue;
      INFO("dtype " << dt << " op " << reduce_op_name(op) << " ranks " << p);
      const int64_t m = 1001;
      Tensor h = rank_data({p * m}, dt, ++key, r), d = h.to(dev);
      world->all_reduce(h, op);
      nccl->all_reduce_async(d, op)->wait();
      CHECK(rel_error(d.to(Device::cpu()), h) <= tolerance(dt, p, op));
      Tensor in = rank_data({p * m}, dt, ++key, r), hout = Tensor::empty({m}, dt);
      Tensor din = in.to(dev), dout = Tensor::empty({m}, dt, dev);
      world->reduce_scatter(in, hout, op);
      nccl->reduce_scatter(din, dout, op);
      CHECK(rel_error(dout.to(Device::cpu()), hout) <= tolerance(dt, p, op));
      Tensor dchunk = din.narrow(0, r * m, m);  // in place
      nccl->reduce_scatter_async(din, dchunk, op)->wait();
      world->reduce_scatter(in, hout, op);
      CHECK(rel_error(dchunk.to(Device::cpu()), hout) <= tolerance(dt, p, op));
    }
    Tensor g = rank_data({37}, dt, ++key, r), hall = Tensor::empty({37 * p}, dt);
    Tensor dall = Tensor::empty({37 * p}, dt, dev);
    world->all_gather(g, hall);
    nccl->all_gather(g.to(dev), dall);
    CHECK(values(dall.to(Device::cpu())) == values(hall));
    Tensor dall2 = Tensor::zeros({37 * p}, dt, dev);
    dall2.narrow(0, 37 * r, 37).copy_(g.to(dev));
    nccl->all_gather_async(dall2.narrow(0, 37 * r, 37), dall2)->wait();  // in place
    world->all_gather(g, hall);
    CHECK(values(dall2.to(Device::cpu())) == values(hall));
    Tensor b = rank_data({53}, dt, ++key, r), db = b.to(dev);
    world->broadcast(b, p - 1);
    nccl->broadcast(db, p - 1);
    CHECK(values(db.to(Device::cpu())) == values(b));
  }
  // Uneven pieces (rank 0's empty when p > 1), sum and avg.
  std::vector<int64_t> counts;
  for (int q = 0; q < p; ++q) counts.push_back(q == 0 && p > 1 ? 0 : 100 + 17 * q);
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg}) {
    Tensor in = rank_data({total}, DType::f32, ++key, r), hout = Tensor::empty({counts[r]}, DType::f32);
    Tensor dout = Tensor::empty({counts[r]}, DType::f32, dev);
    world->reduce_scatter_v(in, hout, counts, op);
    nccl->reduce_scatter_v(in.to(dev), dout, counts, op);
    CHECK(rel_error(dout.to(Device::cpu()), hout) <= tolerance(DType::f32, p, op));
  }
  // A ring: even ranks send first, odd ranks receive first (an NCCL send may wait for its receiver).
  if (p > 1) {
    Tensor s = rank_data({301}, DType::bf16, ++key, r), hr = Tensor::empty({301}, DType::bf16);
    Tensor ds = s.to(dev), dr = Tensor::empty({301}, DType::bf16, dev);
    const int next = (r + 1) % p, prev = (r + p - 1) % p;
    if (r % 2 == 0) {
      world->send(s, next, 5);
      world->recv(hr, prev, 5);
      nccl->send(ds, next, 5);
      nccl->recv(dr, prev, 5);
    } else {
      world->recv(hr, prev, 5);
      world->send(s, next, 5);
      nccl->recv_async(dr, prev, 5)->wait();
      nccl->send_async(ds, next, 5)->wait();
    }
    CHECK(values(dr.to(Device::cpu())) == values(hr));
  }
  const CommStats a = nccl->stats(), b = world->stats();
  CHECK(a.all_reduce.calls == b.all_reduce.calls);
  CHECK(a.all_reduce.bytes == b.all_reduce.bytes);
  CHECK(a.reduce_scatter.calls == b.reduce_scatter.calls);
  CHECK(a.reduce_scatter.bytes == b.reduce_scatter.bytes);
  CHECK(a.all_gather.calls == b.all_gather.calls);
  CHECK(a.all_gather.bytes == b.all_gather.bytes);
  CHECK(a.broadcast.bytes == b.broadcast.bytes);
  CHECK(a.p2p.bytes == b.p2p.bytes);
  nccl->barrier();
}

// A group that sends to both neighbours and receives from both, posted in the same order on every rank
// (sends first): without the group, NCCL's sends would wait for receives that are queued behind them. The
// MPI backend's group runs the same exchange; both deliver each neighbour's data.
TEST_CASE("p2p_group: crossing sends and receives complete together", "[nccl][mpi]") {
  auto world = world_comm();
  SKIP_WITHOUT_OWN_GPU(world, device);
  const int p = world->size(), r = world->rank();
  if (p < 2) return;
  std::shared_ptr<Comm> nccl = make_nccl_comm(world, device);
  const Device dev = Device::cuda(device);
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  const double world_bytes = world->stats().p2p.bytes;  // the world comm also served earlier cases
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor to_next = rank_data({257}, dt, 91, r), to_prev = rank_data({64, 3}, dt, 92, r);
    Tensor from_prev_h = Tensor::empty({257}, dt), from_next_h = Tensor::empty({64, 3}, dt);
    Tensor from_prev_d = Tensor::empty({257}, dt, dev), from_next_d = Tensor::empty({64, 3}, dt, dev);
    // Two ranks: next == prev, and both messages go to the same peer in posting order.
    world
        ->p2p_group({{true, to_next, next, 1},
                     {true, to_prev, prev, 2},
                     {false, from_prev_h, prev, 1},
                     {false, from_next_h, next, 2}})
        ->wait();
    nccl->p2p_group({{true, to_next.to(dev), next, 1},
                     {true, to_prev.to(dev), prev, 2},
                     {false, from_prev_d, prev, 1},
                     {false, from_next_d, next, 2}})
        ->wait();
    CHECK(values(from_prev_h) == values(rank_data({257}, dt, 91, prev)));
    CHECK(values(from_next_h) == values(rank_data({64, 3}, dt, 92, next)));
    CHECK(values(from_prev_d.to(Device::cpu())) == values(from_prev_h));
    CHECK(values(from_next_d.to(Device::cpu())) == values(from_next_h));
  }
  CHECK(nccl->stats().p2p.bytes == world->stats().p2p.bytes - world_bytes);
  CHECK(nccl->stats().p2p.bytes == (257 + 192) * (4 + 2));  // each rank sends one f32 and one bf16 pair
  nccl->barrier();
}

// Uneven all-gather (ZeRO-3's layer gathers): NCCL's group of broadcasts equals MPI's Allgatherv.
TEST_CASE("all_gather_v on NCCL equals the MPI backend's", "[nccl][mpi]") {
  auto world = world_comm();
  SKIP_WITHOUT_OWN_GPU(world, device);
  const int p = world->size(), r = world->rank();
  std::shared_ptr<Comm> nccl = make_nccl_comm(world, device);
  const Device dev = Device::cuda(device);
  std::vector<int64_t> counts;
  for (int q = 0; q < p; ++q) counts.push_back(q == 1 ? 0 : 7 + 5 * q);  // rank 1 empty
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor in = rank_data({counts[static_cast<size_t>(r)]}, dt, 95, r);
    Tensor host = Tensor::zeros({total}, dt), gpu = Tensor::zeros({total}, dt, dev);
    world->all_gather_v_async(in, host, counts)->wait();
    nccl->all_gather_v_async(in.to(dev), gpu, counts)->wait();
    CHECK(values(gpu.to(Device::cpu())) == values(host));
  }
  nccl->barrier();
}

TEST_CASE("Mesh::on_device keeps every rank's place and groups", "[nccl][mpi]") {
  auto world = world_comm();
  SKIP_WITHOUT_OWN_GPU(world, device);
  const int p = world->size();
  for (int tp : {1, 2}) {
    if (p % tp != 0) continue;
    for (int pp : {1, 2}) {
      if ((p / tp) % pp != 0) continue;
      Mesh host(world, tp, pp);
      Mesh dev = host.on_device(Device::cuda(device));
      INFO(host.describe());
      CHECK(dev.describe() == host.describe());
      const std::pair<Comm*, Comm*> axes[] = {
          {&host.tp(), &dev.tp()}, {&host.dp(), &dev.dp()}, {&host.pp(), &dev.pp()}};
      for (auto [h, d] : axes) {
        CHECK(d->backend() == "nccl");
        CHECK(d->name() == h->name());
        CHECK(d->size() == h->size());
        CHECK(d->rank() == h->rank());
        Tensor x = rank_data({64}, DType::i64, 77, world->rank());
        Tensor dx = x.to(Device::cuda(device));
        h->all_reduce(x, ReduceOp::sum);
        d->all_reduce(dx, ReduceOp::sum);
        CHECK(values(dx.to(Device::cpu())) == values(x));
      }
    }
  }
}

#else

TEST_CASE("NCCL multi-rank test: this build has no NCCL", "[nccl][mpi]") {
  CHECK_FALSE(have_nccl());
  WARN("skipped: this build has no NCCL");
}

#endif  // POLDER_HAVE_NCCL
