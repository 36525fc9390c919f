// The emulated NCCL (sim_nccl.cpp) under mpirun: every rank is a process with its own emulated device, the
// unique id travels over MPI as in polder's bootstrap. `sim_nccl_test` checks the collectives, send/recv and
// split against host oracles (the emulator's documented rank-order reductions, so results must be exact);
// `sim_nccl_test <mode>` runs one expected failure (deadlock, outside, destroy, mismatch, p2p_mismatch,
// abort, die, die_exit, init_timeout, oom) or slow_peer (a late rank is no deadlock) and prints "OK <mode>"
// when it behaved the way NCCL's rules say; tests/sim/sim_nccl_test.sh runs them all.
#define OMPI_SKIP_MPICXX 1  // the C API only
#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/half.h"

namespace {

int g_rank = 0, g_size = 1, g_failures = 0;
// die_exit: when exit() was called; the last atexit handler (registered before the CUDA runtime's) reports
// how long the runtime's handlers took with a stream worker waiting on a dead peer.
std::chrono::steady_clock::time_point g_exit_called;
bool g_exit_timed = false;

#define CHECK(cond, ...)                                                                    \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      ++g_failures;                                                                         \
      std::fprintf(stderr, "rank %d: FAIL %s:%d: %s: ", g_rank, __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                    \
      std::fprintf(stderr, "\n");                                                           \
    }                                                                                       \
  } while (0)

#define NCCL_OK(call)                                                                                 \
  do {                                                                                                \
    const ncclResult_t r_ = (call);                                                                   \
    if (r_ != ncclSuccess) {                                                                          \
      std::fprintf(stderr, "rank %d: %s:%d: %s failed: %s (%s)\n", g_rank, __FILE__, __LINE__, #call, \
                   ncclGetErrorString(r_), ncclGetLastError(nullptr));                                \
      MPI_Abort(MPI_COMM_WORLD, 2);                                                                   \
    }                                                                                                 \
  } while (0)

#define CUDA_OK(call)                                                                            \
  do {                                                                                           \
    const cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "rank %d: %s:%d: %s failed: %s\n", g_rank, __FILE__, __LINE__, #call, \
                   cudaGetErrorString(e_));                                                      \
      MPI_Abort(MPI_COMM_WORLD, 2);                                                              \
    }                                                                                            \
  } while (0)

// Fresh values per (rank, test), the same on every rank that regenerates them for its oracle.
std::vector<float> values(int rank, int test, size_t n) {
  uint64_t s = 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(rank * 1000 + test + 1);
  std::vector<float> v(n);
  for (float& x : v) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    x = static_cast<float>(static_cast<int64_t>(s >> 40) % 2000 - 1000) / 64.0f;
  }
  return v;
}

template <typename T>
T* device_copy(const std::vector<T>& h) {
  T* d = nullptr;
  CUDA_OK(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(T)));
  if (!h.empty()) CUDA_OK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
std::vector<T> host_copy(const T* d, size_t n) {
  std::vector<T> h(n);
  if (n) CUDA_OK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

ncclUniqueId shared_id() {
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (g_rank == 0) NCCL_OK(ncclGetUniqueId(&id));
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  return id;
}

ncclComm_t world_comm() {
  ncclComm_t comm = nullptr;
  NCCL_OK(ncclCommInitRank(&comm, g_size, shared_id(), g_rank));
  return comm;
}

// The oracle of a reduction: ranks combined in order 0..n-1 in float, ncclAvg as pre-multiplied sum.
float combine(const std::vector<std::vector<float>>& in, size_t i, ncclRedOp_t op) {
  const float s = 1.0f / static_cast<float>(in.size());
  float a = op == ncclAvg ? in[0][i] * s : in[0][i];
  for (size_t q = 1; q < in.size(); ++q) {
    const float b = in[q][i];
    a = op == ncclSum ? a + b : op == ncclMax ? std::fmax(a, b) : op == ncclMin ? std::fmin(a, b) : a + b * s;
  }
  return a;
}

std::vector<std::vector<float>> all_values(int test, size_t n) {
  std::vector<std::vector<float>> in;
  for (int q = 0; q < g_size; ++q) in.push_back(values(q, test, n));
  return in;
}

void test_all_reduce_f32(ncclComm_t comm, cudaStream_t st) {
  int test = 10;
  for (ncclRedOp_t op : {ncclSum, ncclMax, ncclAvg, ncclMin}) {
    for (size_t n : {size_t(1), size_t(1000), size_t(70001)}) {  // 70001 floats: several 64 KiB chunks
      for (bool in_place : {false, true}) {
        ++test;
        const auto in = all_values(test, n);
        float* send = device_copy(in[g_rank]);
        float* recv = in_place ? send : device_copy(std::vector<float>(n, -7.0f));
        NCCL_OK(ncclAllReduce(send, recv, n, ncclFloat32, op, comm, st));
        CUDA_OK(cudaStreamSynchronize(st));
        const auto got = host_copy(recv, n);
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < n; ++i)
          if (got[i] != combine(in, i, op) && bad++ == 0) first = i;
        CHECK(bad == 0, "allreduce f32 op %d n %zu in_place %d: %zu wrong, first at %zu: %g, expected %g", op,
              n, in_place, bad, first, got[first], combine(in, first, op));
        if (!in_place) CHECK(host_copy(send, n) == in[g_rank], "allreduce changed its send buffer");
        CUDA_OK(cudaFree(send));
        if (!in_place) CUDA_OK(cudaFree(recv));
      }
    }
  }
}

void test_all_reduce_bf16(ncclComm_t comm, cudaStream_t st) {
  int test = 100;
  for (ncclRedOp_t op : {ncclSum, ncclMax, ncclAvg}) {
    const size_t n = 40000;
    ++test;
    std::vector<std::vector<float>> in;  // the values bf16 holds
    std::vector<polder::bf16> mine;
    for (int q = 0; q < g_size; ++q) {
      std::vector<float> v = values(q, test, n);
      for (float& x : v) x = static_cast<float>(polder::bf16(x * 1.37f));
      in.push_back(v);
    }
    for (float x : in[g_rank]) mine.push_back(polder::bf16(x));
    polder::bf16* d = device_copy(mine);
    NCCL_OK(ncclAllReduce(d, d, n, ncclBfloat16, op, comm, st));
    CUDA_OK(cudaStreamSynchronize(st));
    const auto got = host_copy(d, n);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; ++i)  // accumulated in float, rounded once
      if (got[i].bits != polder::bf16(combine(in, i, op)).bits && bad++ == 0) first = i;
    CHECK(bad == 0, "allreduce bf16 op %d: %zu wrong, first at %zu: %g, expected %g", op, bad, first,
          static_cast<float>(got[first]), static_cast<float>(polder::bf16(combine(in, first, op))));
    CUDA_OK(cudaFree(d));
  }
}

void test_all_gather(ncclComm_t comm, cudaStream_t st) {
  for (size_t n : {size_t(3), size_t(50000)}) {
    for (bool in_place : {false, true}) {
      std::vector<std::vector<int32_t>> in(g_size);
      for (int q = 0; q < g_size; ++q)
        for (size_t i = 0; i < n; ++i)
          in[q].push_back(static_cast<int32_t>(q * 1000003 + i * 7 + (in_place ? 1 : 0)));
      int32_t* out = device_copy(std::vector<int32_t>(n * g_size, -1));
      int32_t* send = in_place ? out + n * g_rank : device_copy(in[g_rank]);
      if (in_place) CUDA_OK(cudaMemcpy(send, in[g_rank].data(), n * 4, cudaMemcpyHostToDevice));
      NCCL_OK(ncclAllGather(send, out, n, ncclInt32, comm, st));
      CUDA_OK(cudaStreamSynchronize(st));
      const auto got = host_copy(out, n * g_size);
      bool ok = true;
      for (int q = 0; q < g_size; ++q)
        for (size_t i = 0; i < n; ++i) ok = ok && got[q * n + i] == in[q][i];
      CHECK(ok, "allgather n %zu in_place %d", n, in_place);
      if (!in_place) CUDA_OK(cudaFree(send));
      CUDA_OK(cudaFree(out));
    }
  }
}

void test_reduce_scatter(ncclComm_t comm, cudaStream_t st) {
  int test = 200;
  for (ncclRedOp_t op : {ncclSum, ncclAvg}) {
    for (size_t n : {size_t(5), size_t(30000)}) {
      for (bool in_place : {false, true}) {
        ++test;
        const auto in = all_values(test, n * g_size);
        float* send = device_copy(in[g_rank]);
        float* recv = in_place ? send + n * g_rank : device_copy(std::vector<float>(n, 3.0f));
        NCCL_OK(ncclReduceScatter(send, recv, n, ncclFloat32, op, comm, st));
        CUDA_OK(cudaStreamSynchronize(st));
        const auto got = host_copy(recv, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) bad += got[i] != combine(in, g_rank * n + i, op);
        CHECK(bad == 0, "reducescatter op %d n %zu in_place %d: %zu wrong", op, n, in_place, bad);
        CUDA_OK(cudaFree(send));
        if (!in_place) CUDA_OK(cudaFree(recv));
      }
    }
  }
}

void test_broadcast_and_reduce(ncclComm_t comm, cudaStream_t st) {
  const int root = g_size - 1;
  const size_t n = 20000;
  for (bool in_place : {false, true}) {
    std::vector<double> src(n);
    for (size_t i = 0; i < n; ++i) src[i] = (i * 0.25 + root) * (in_place ? -1 : 1);
    double* send = device_copy(g_rank == root ? src : std::vector<double>(n, 9.0));
    double* recv = in_place ? send : device_copy(std::vector<double>(n, 5.0));
    NCCL_OK(ncclBroadcast(send, recv, n, ncclFloat64, root, comm, st));
    CUDA_OK(cudaStreamSynchronize(st));
    CHECK(host_copy(recv, n) == src, "broadcast from root %d in_place %d", root, in_place);
    CUDA_OK(cudaFree(send));
    if (!in_place) CUDA_OK(cudaFree(recv));
  }
  // Reduce to rank 1 % size: int64 sum (with wraparound) and uint8 max; non-roots pass no receive buffer.
  const int rroot = 1 % g_size;
  std::vector<int64_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<int64_t>(i) * (g_rank + 1) + (i == 0 ? INT64_MAX : 0);
  int64_t* s64 = device_copy(v);
  int64_t* r64 = g_rank == rroot ? device_copy(std::vector<int64_t>(n, 0)) : nullptr;
  std::vector<uint8_t> u(n);
  for (size_t i = 0; i < n; ++i) u[i] = static_cast<uint8_t>((i * 31 + g_rank * 17) & 0xff);
  uint8_t* s8 = device_copy(u);
  NCCL_OK(ncclReduce(s64, r64, n, ncclInt64, ncclSum, rroot, comm, st));
  NCCL_OK(ncclReduce(s8, s8, n, ncclUint8, ncclMax, rroot, comm, st));  // in place
  CUDA_OK(cudaStreamSynchronize(st));
  if (g_rank == rroot) {
    const auto got = host_copy(r64, n);
    const auto got8 = host_copy(s8, n);
    bool ok = true, ok8 = true;
    for (size_t i = 0; i < n; ++i) {
      uint64_t want = 0;
      uint8_t want8 = 0;
      for (int q = 0; q < g_size; ++q) {
        want += static_cast<uint64_t>(static_cast<int64_t>(i) * (q + 1) + (i == 0 ? INT64_MAX : 0));
        want8 = std::max<uint8_t>(want8, static_cast<uint8_t>((i * 31 + q * 17) & 0xff));
      }
      ok = ok && got[i] == static_cast<int64_t>(want);
      ok8 = ok8 && got8[i] == want8;
    }
    CHECK(ok, "reduce int64 sum at root %d", rroot);
    CHECK(ok8, "reduce uint8 max at root %d", rroot);
    CUDA_OK(cudaFree(r64));
  } else {
    CHECK(host_copy(s8, n) == u, "reduce changed a non-root's buffer");
  }
  CUDA_OK(cudaFree(s64));
  CUDA_OK(cudaFree(s8));
}

// A ring in one group (every rank sends before it receives: outside a group this could deadlock), larger
// than a slot, then an exchange with both neighbours in one group, then zero-byte messages.
void test_send_recv(ncclComm_t comm, cudaStream_t st) {
  const int next = (g_rank + 1) % g_size, prev = (g_rank + g_size - 1) % g_size;
  const size_t n = 100000;
  const auto mine = values(g_rank, 300, n);
  float* s = device_copy(mine);
  float* r = device_copy(std::vector<float>(n, 0.0f));
  NCCL_OK(ncclGroupStart());
  NCCL_OK(ncclSend(s, n, ncclFloat32, next, comm, st));
  NCCL_OK(ncclRecv(r, n, ncclFloat32, prev, comm, st));
  NCCL_OK(ncclGroupEnd());
  CUDA_OK(cudaStreamSynchronize(st));
  CHECK(host_copy(r, n) == values(prev, 300, n), "ring send/recv from %d", prev);

  float* r2 = device_copy(std::vector<float>(n, 0.0f));
  NCCL_OK(ncclGroupStart());
  NCCL_OK(ncclSend(s, n, ncclFloat32, prev, comm, st));
  NCCL_OK(ncclSend(s, n / 2, ncclFloat32, next, comm, st));
  NCCL_OK(ncclRecv(r, n, ncclFloat32, next, comm, st));
  NCCL_OK(ncclRecv(r2, n / 2, ncclFloat32, prev, comm, st));
  NCCL_OK(ncclGroupEnd());
  CUDA_OK(cudaStreamSynchronize(st));
  if (g_size > 1) {
    CHECK(host_copy(r, n) == values(next, 300, n), "exchange: from next");
    auto half = values(prev, 300, n);
    half.resize(n / 2);
    CHECK(host_copy(r2, n / 2) == half, "exchange: from prev");
  }
  // Odd ranks receive first, even ranks send first, each outside a group (polder's ring in test_mpi_nccl).
  if (g_size % 2 == 0) {
    if (g_rank % 2 == 0) {
      NCCL_OK(ncclSend(s, 10, ncclFloat32, next, comm, st));
      NCCL_OK(ncclRecv(r, 10, ncclFloat32, prev, comm, st));
    } else {
      NCCL_OK(ncclRecv(r, 10, ncclFloat32, prev, comm, st));
      NCCL_OK(ncclSend(s, 10, ncclFloat32, next, comm, st));
    }
    CUDA_OK(cudaStreamSynchronize(st));
    auto head = values(prev, 300, 10);
    CHECK(host_copy(r, 10) == head, "ungrouped ring");
  }
  // A group over two streams: the send on one, the recv on the other.
  cudaStream_t other;
  CUDA_OK(cudaStreamCreate(&other));
  NCCL_OK(ncclGroupStart());
  NCCL_OK(ncclRecv(r, n, ncclFloat32, prev, comm, other));
  NCCL_OK(ncclSend(s, n, ncclFloat32, next, comm, st));
  NCCL_OK(ncclGroupEnd());
  CUDA_OK(cudaStreamSynchronize(st));
  CUDA_OK(cudaStreamSynchronize(other));
  CHECK(host_copy(r, n) == values(prev, 300, n), "a group over two streams");
  CUDA_OK(cudaStreamDestroy(other));
  // A send completes only once its receiver has reached the recv (NCCL's rendezvous).
  if (g_size > 1 && g_rank < 2) {
    if (g_rank == 0) {
      NCCL_OK(ncclSend(s, 10, ncclFloat32, 1, comm, st));
      usleep(100000);
      CHECK(cudaStreamQuery(st) == cudaErrorNotReady, "a send completed before its receiver posted the recv");
    } else {
      usleep(600000);
      NCCL_OK(ncclRecv(r, 10, ncclFloat32, 0, comm, st));
    }
    CUDA_OK(cudaStreamSynchronize(st));
  }
  NCCL_OK(ncclGroupStart());
  NCCL_OK(ncclSend(s, 0, ncclFloat32, next, comm, st));
  NCCL_OK(ncclRecv(r, 0, ncclFloat32, prev, comm, st));
  NCCL_OK(ncclGroupEnd());
  CUDA_OK(cudaStreamSynchronize(st));
  CUDA_OK(cudaFree(s));
  CUDA_OK(cudaFree(r));
  CUDA_OK(cudaFree(r2));
}

// Several operations in flight before one synchronisation, and reduce_scatter_v's pattern: one ncclReduce
// per rank in a group.
void test_pipelined(ncclComm_t comm, cudaStream_t st) {
  const size_t n = 777;
  std::vector<float*> bufs;
  for (int k = 0; k < 6; ++k) {
    bufs.push_back(device_copy(values(g_rank, 400 + k, n)));
    NCCL_OK(ncclAllReduce(bufs.back(), bufs.back(), n, ncclFloat32, ncclSum, comm, st));
  }
  const size_t piece = 100;
  const auto in = all_values(450, piece * g_size);
  float* src = device_copy(in[g_rank]);
  float* dst = device_copy(std::vector<float>(piece, 0.0f));
  NCCL_OK(ncclGroupStart());
  for (int r = 0; r < g_size; ++r)
    NCCL_OK(
        ncclReduce(src + r * piece, r == g_rank ? dst : nullptr, piece, ncclFloat32, ncclSum, r, comm, st));
  NCCL_OK(ncclGroupEnd());
  CUDA_OK(cudaStreamSynchronize(st));
  for (int k = 0; k < 6; ++k) {
    const auto all = all_values(400 + k, n);
    const auto got = host_copy(bufs[k], n);
    bool ok = true;
    for (size_t i = 0; i < n; ++i) ok = ok && got[i] == combine(all, i, ncclSum);
    CHECK(ok, "pipelined allreduce %d", k);
    CUDA_OK(cudaFree(bufs[k]));
  }
  const auto got = host_copy(dst, piece);
  bool ok = true;
  for (size_t i = 0; i < piece; ++i) ok = ok && got[i] == combine(in, g_rank * piece + i, ncclSum);
  CHECK(ok, "grouped reduces (reduce_scatter_v)");
  CUDA_OK(cudaFree(src));
  CUDA_OK(cudaFree(dst));
}

void test_split(ncclComm_t world, cudaStream_t st) {
  // Two colors by parity, ordered by descending world rank; the last rank (of 3 or more) opts out.
  const bool out = g_size >= 3 && g_rank == g_size - 1;
  ncclComm_t sub = nullptr;
  NCCL_OK(ncclCommSplit(world, out ? NCCL_SPLIT_NOCOLOR : g_rank % 2, -g_rank, &sub, nullptr));
  if (out) {
    CHECK(sub == nullptr, "NCCL_SPLIT_NOCOLOR gave a comm");
    const size_t n = 999;
    float* w = device_copy(values(g_rank, 501, n));
    NCCL_OK(ncclAllReduce(w, w, n, ncclFloat32, ncclSum, world, st));
    CUDA_OK(cudaStreamSynchronize(st));
    const auto all = all_values(501, n);
    const auto got = host_copy(w, n);
    bool ok = true;
    for (size_t i = 0; i < n; ++i) ok = ok && got[i] == combine(all, i, ncclSum);
    CHECK(ok, "the parent's allreduce on a rank outside the split");
    CUDA_OK(cudaFree(w));
    return;
  }
  std::vector<int> members;
  for (int q = g_size - 1; q >= 0; --q)
    if (q % 2 == g_rank % 2 && !(g_size >= 3 && q == g_size - 1)) members.push_back(q);
  int count = 0, rank = -1;
  NCCL_OK(ncclCommCount(sub, &count));
  NCCL_OK(ncclCommUserRank(sub, &rank));
  CHECK(count == static_cast<int>(members.size()), "split count %d, expected %zu", count, members.size());
  CHECK(rank >= 0 && rank < count && members[rank] == g_rank, "split rank %d", rank);
  const size_t n = 999;
  std::vector<std::vector<float>> in;
  for (int q : members) in.push_back(values(q, 500, n));
  float* d = device_copy(values(g_rank, 500, n));
  NCCL_OK(ncclAllReduce(d, d, n, ncclFloat32, ncclSum, sub, st));
  CUDA_OK(cudaStreamSynchronize(st));
  const auto got = host_copy(d, n);
  bool ok = true;
  for (size_t i = 0; i < n; ++i) ok = ok && got[i] == combine(in, i, ncclSum);
  CHECK(ok, "allreduce on the split comm");
  // One group over both comms: each rank's two collectives progress together, whatever order they finish in.
  float* w = device_copy(values(g_rank, 501, n));
  CUDA_OK(cudaMemcpy(d, values(g_rank, 500, n).data(), n * 4, cudaMemcpyHostToDevice));
  NCCL_OK(ncclGroupStart());
  NCCL_OK(ncclAllReduce(d, d, n, ncclFloat32, ncclMax, sub, st));
  NCCL_OK(ncclAllReduce(w, w, n, ncclFloat32, ncclSum, world, st));
  NCCL_OK(ncclGroupEnd());
  CUDA_OK(cudaStreamSynchronize(st));
  const auto all = all_values(501, n);
  const auto got_sub = host_copy(d, n), got_world = host_copy(w, n);
  ok = true;
  for (size_t i = 0; i < n; ++i)
    ok = ok && got_sub[i] == combine(in, i, ncclMax) && got_world[i] == combine(all, i, ncclSum);
  CHECK(ok, "a group over the split comm and its parent");
  CUDA_OK(cudaFree(w));
  CUDA_OK(cudaFree(d));
  NCCL_OK(ncclCommDestroy(sub));
}

void test_argument_errors(ncclComm_t comm, cudaStream_t st) {
  float* d = device_copy(std::vector<float>(4, 1.0f));
  CHECK(ncclBroadcast(d, d, 4, ncclFloat32, g_size + 6, comm, st) == ncclInvalidArgument,
        "bad root accepted");
  CHECK(std::strstr(ncclGetLastError(comm), "root") != nullptr, "last error: %s", ncclGetLastError(comm));
  std::vector<float> host(4);
  CHECK(ncclAllReduce(host.data(), d, 4, ncclFloat32, ncclSum, comm, st) == ncclInvalidArgument,
        "host pointer accepted");
  CHECK(ncclAllReduce(d, d, 4, ncclFloat8e4m3, ncclSum, comm, st) == ncclInvalidArgument, "fp8 accepted");
  // A group with a bad operation launches nothing and reports the error at ncclGroupEnd.
  NCCL_OK(ncclGroupStart());
  CHECK(ncclSend(d, 4, ncclFloat32, -1, comm, st) == ncclInvalidArgument, "bad peer accepted");
  CHECK(ncclGroupEnd() == ncclInvalidArgument, "group with a bad operation launched");
  NCCL_OK(ncclAllReduce(d, d, 0, ncclFloat32, ncclSum, comm, st));  // no elements: no operation
  int version = 0;
  NCCL_OK(ncclGetVersion(&version));
  CHECK(version == NCCL_VERSION_CODE, "version %d", version);
  CUDA_OK(cudaFree(d));
}

// ---- expected failures (one per process: a device fault is sticky) ----------------------------------------

bool expect_fault(cudaStream_t st, ncclComm_t comm, ncclResult_t want, const char* mode) {
  const cudaError_t e = cudaStreamSynchronize(st);
  ncclResult_t async = ncclSuccess;
  ncclCommGetAsyncError(comm, &async);
  const bool ok = e != cudaSuccess && async == want;
  std::fprintf(stderr, "rank %d: %s: cudaStreamSynchronize: %s, async error: %s\n", g_rank, mode,
               cudaGetErrorString(e), ncclGetErrorString(async));
  return ok;
}

// A dead or aborting peer, as on NCCL: the operation stays pending while the comm's async error turns to
// ncclRemoteError, until this rank aborts the comm; that ends it without a device fault. Aborts `comm`.
bool expect_remote(cudaStream_t st, ncclComm_t comm, const char* mode) {
  ncclResult_t async = ncclSuccess;
  for (int i = 0; i < 3000 && async == ncclSuccess; ++i) {  // 30 s
    usleep(10000);
    ncclCommGetAsyncError(comm, &async);
  }
  const cudaError_t pending = cudaStreamQuery(st);
  usleep(300000);  // still pending a while later: the wait goes on until the abort
  const cudaError_t still = cudaStreamQuery(st);
  const ncclResult_t aborted = ncclCommAbort(comm);
  const cudaError_t sync = cudaStreamSynchronize(st);
  void* p = nullptr;
  cudaError_t after = cudaMalloc(&p, 256);
  if (after == cudaSuccess) after = cudaMemsetAsync(p, 0, 256, st);
  if (after == cudaSuccess) after = cudaStreamSynchronize(st);
  if (p) cudaFree(p);
  std::fprintf(stderr,
               "rank %d: %s: async error: %s, cudaStreamQuery: %s then %s, ncclCommAbort: %s, "
               "cudaStreamSynchronize: %s, memset: %s\n",
               g_rank, mode, ncclGetErrorString(async), cudaGetErrorString(pending),
               cudaGetErrorString(still), ncclGetErrorString(aborted), cudaGetErrorString(sync),
               cudaGetErrorString(after));
  return async == ncclRemoteError && pending == cudaErrorNotReady && still == cudaErrorNotReady &&
         aborted == ncclSuccess && sync == cudaSuccess && after == cudaSuccess;
}

int run_mode(const std::string& mode) {
  cudaStream_t st;
  CUDA_OK(cudaStreamCreate(&st));
  bool ok = false;
  if (mode == "init_timeout") {  // rank 1 never joins
    ncclUniqueId id = shared_id();
    ncclComm_t comm = nullptr;
    if (g_rank == 0) {
      ok = ncclCommInitRank(&comm, g_size, id, g_rank) == ncclSystemError &&
           std::strstr(ncclGetLastError(nullptr), "never arrived") != nullptr;
      std::fprintf(stderr, "rank 0: %s\n", ncclGetLastError(nullptr));
    } else {
      ok = true;
    }
    MPI_Barrier(MPI_COMM_WORLD);
  } else if (mode == "oom") {  // POLDER_SIM_MEMORY too small for the connections made at the first collective
    ncclComm_t comm = world_comm();
    float* d = device_copy(std::vector<float>(16, 1.0f));
    ok = ncclAllReduce(d, d, 16, ncclFloat32, ncclSum, comm, st) == ncclUnhandledCudaError &&
         std::strstr(ncclGetLastError(comm), "out of memory") != nullptr;
    std::fprintf(stderr, "rank %d: %s\n", g_rank, ncclGetLastError(comm));
    NCCL_OK(ncclCommDestroy(comm));
  } else {
    ncclComm_t comm = world_comm();
    float* d = device_copy(std::vector<float>(64, 1.0f));
    if (mode == "deadlock") {  // both ranks send first, outside a group: each send waits for a recv
      const int peer = 1 - g_rank;
      NCCL_OK(ncclSend(d, 64, ncclFloat32, peer, comm, st));
      NCCL_OK(ncclRecv(d, 64, ncclFloat32, peer, comm, st));
      ok = expect_fault(st, comm, ncclSystemError, "deadlock");
    } else if (mode == "mismatch") {
      if (g_rank == 0)
        NCCL_OK(ncclAllReduce(d, d, 64, ncclFloat32, ncclSum, comm, st));
      else
        NCCL_OK(ncclAllReduce(d, d, 32, ncclFloat32, ncclSum, comm, st));
      ok = expect_fault(st, comm, ncclInvalidUsage, "mismatch");
    } else if (mode == "slow_peer") {  // rank 1 computes (sleeps) past POLDER_SIM_NCCL_DEADLOCK: no deadlock
      if (g_rank == 1) usleep(2500000);
      NCCL_OK(ncclAllReduce(d, d, 64, ncclFloat32, ncclSum, comm, st));
      ok = cudaStreamSynchronize(st) == cudaSuccess && host_copy(d, 64) == std::vector<float>(64, 2.0f);
    } else if (mode == "outside") {  // rank 1 waits in MPI for rank 0, which waits in NCCL for rank 1
      if (g_rank == 0) {
        NCCL_OK(ncclAllReduce(d, d, 64, ncclFloat32, ncclSum, comm, st));
        ok = expect_fault(st, comm, ncclSystemError, "outside");
      } else {
        ok = true;
      }
      MPI_Barrier(MPI_COMM_WORLD);
    } else if (mode ==
               "destroy") {  // ncclCommDestroy is collective: rank 0 waits for rank 1, which never comes
      if (g_rank == 0) {
        ok = ncclCommDestroy(comm) == ncclSystemError;
        comm = nullptr;
      } else {
        ok = true;
      }
      MPI_Barrier(MPI_COMM_WORLD);
    } else if (mode == "p2p_mismatch") {
      if (g_rank == 0)
        NCCL_OK(ncclSend(d, 64, ncclFloat32, 1, comm, st));
      else
        NCCL_OK(ncclRecv(d, 60, ncclFloat32, 0, comm, st));
      ok = expect_fault(st, comm, ncclInvalidUsage, "p2p_mismatch");
    } else if (mode == "abort") {  // rank 0 waits in an allreduce that rank 1 abandons
      if (g_rank == 0) {
        NCCL_OK(ncclAllReduce(d, d, 64, ncclFloat32, ncclSum, comm, st));
        ok = expect_remote(st, comm, "abort");
      } else {
        usleep(500000);
        ok = ncclCommAbort(comm) == ncclSuccess;
      }
    } else if (mode == "die") {  // POLDER_SIM_NCCL_DIE=1:2: rank 1 exits when it starts its second operation
      NCCL_OK(ncclAllReduce(d, d, 64, ncclFloat32, ncclSum, comm, st));
      NCCL_OK(ncclAllReduce(d, d, 64, ncclFloat32, ncclSum, comm, st));
      ok = expect_remote(st, comm, "die");
      std::printf("%s %s\n", ok ? "OK" : "FAILED", mode.c_str());
      std::fflush(stdout);
      _exit(ok ? 0 : 1);              // a peer is gone: MPI_Finalize would wait for it
    } else if (mode == "die_exit") {  // as die, but rank 0 exits with the operation pending, not aborted
      NCCL_OK(ncclAllReduce(d, d, 64, ncclFloat32, ncclSum, comm, st));
      NCCL_OK(ncclAllReduce(d, d, 64, ncclFloat32, ncclSum, comm, st));
      ncclResult_t async = ncclSuccess;
      for (int i = 0; i < 3000 && async == ncclSuccess; ++i) {
        usleep(10000);
        ncclCommGetAsyncError(comm, &async);
      }
      ok = async == ncclRemoteError && cudaStreamQuery(st) == cudaErrorNotReady;
      std::printf("%s %s\n", ok ? "OK" : "FAILED", mode.c_str());
      std::fflush(stdout);
      g_exit_timed = ok;
      g_exit_called = std::chrono::steady_clock::now();
      std::exit(ok ? 0 : 1);  // the worker still waits: exit must not hang on it
    } else {
      std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
      return 2;
    }
    // A failed comm is aborted, not destroyed; only once every rank has seen its own failure (an abort
    // would end a peer's wait with ncclRemoteError first).
    MPI_Barrier(MPI_COMM_WORLD);
    if (mode != "abort" && comm) ncclCommAbort(comm);
  }
  int all = ok ? 1 : 0, every = 0;
  MPI_Allreduce(&all, &every, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (g_rank == 0) std::printf("%s %s\n", every ? "OK" : "FAILED", mode.c_str());
  return every ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::atexit([] {
    if (!g_exit_timed) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - g_exit_called).count();
    std::fprintf(stderr, "rank %d: exit took %.3f s%s\n", g_rank, s, s < 1 ? " (prompt)" : "");
  });
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  CUDA_OK(cudaSetDevice(0));
  if (argc > 1) {
    const int rc = run_mode(argv[1]);
    MPI_Finalize();
    return rc;
  }
  cudaStream_t st;
  CUDA_OK(cudaStreamCreate(&st));
  ncclComm_t comm = world_comm();
  int count = 0, rank = -1;
  NCCL_OK(ncclCommCount(comm, &count));
  NCCL_OK(ncclCommUserRank(comm, &rank));
  CHECK(count == g_size && rank == g_rank, "count %d rank %d", count, rank);
  const std::vector<std::pair<const char*, std::function<void(ncclComm_t, cudaStream_t)>>> tests = {
      {"all_reduce_f32", test_all_reduce_f32},
      {"all_reduce_bf16", test_all_reduce_bf16},
      {"all_gather", test_all_gather},
      {"reduce_scatter", test_reduce_scatter},
      {"broadcast_and_reduce", test_broadcast_and_reduce},
      {"send_recv", test_send_recv},
      {"pipelined", test_pipelined},
      {"split", test_split},
      {"argument_errors", test_argument_errors}};
  for (const auto& [name, fn] : tests) {
    const int before = g_failures;
    fn(comm, st);
    if (g_rank == 0) std::fprintf(stderr, "%s %s\n", g_failures == before ? "passed" : "FAILED", name);
  }
  ncclResult_t async = ncclSuccess;
  NCCL_OK(ncclCommGetAsyncError(comm, &async));
  CHECK(async == ncclSuccess, "async error %d", async);
  NCCL_OK(ncclCommDestroy(comm));
  CUDA_OK(cudaStreamDestroy(st));
  int failures = 0;
  MPI_Allreduce(&g_failures, &failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) std::printf("%s: %d ranks, %d failure(s)\n", failures ? "FAILED" : "OK", g_size, failures);
  MPI_Finalize();
  return failures ? 1 : 0;
}
