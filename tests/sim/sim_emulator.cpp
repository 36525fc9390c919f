// The CPU emulator itself (tests/sim), on small kernels written here: shuffles, ldmatrix (.trans) and
// mma.sync m16n8k16 against matrices built element by element from the PTX ISA's fragment tables; warps that
// run different numbers of collectives between barriers; cp.async landing at wait_group; the launch checks of
// dynamic shared memory; and, in a forked child each, the one-line aborts: a shared access out of range or
// misaligned, lanes of a warp at different collectives, a deadlock, __syncthreads after some threads exited.
// The sm_90a subset: mbarrier phases and parities, a TMA box with 128-byte swizzle and zero fill checked
// element by element against the CUDA driver's rule, the tensor-map encoder's checks, and the aborts of a
// never-completing mbarrier wait and a setmaxnreg not executed by the whole warpgroup.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

// Runs f in a forked child; returns what it wrote to stderr, prefixed "abort: " when it died of SIGABRT.
template <typename F>
std::string child_stderr(F f) {
  int fd[2];
  REQUIRE(pipe(fd) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);  // not Catch2's handler: the child only reports through its stderr
    dup2(fd[1], 2);
    close(fd[0]);
    f();
    _exit(0);
  }
  close(fd[1]);
  std::string out;
  char buf[512];
  for (ssize_t n; (n = read(fd[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return (WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT ? "abort: " : "exit: ") + out;
}

uint16_t bf(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
float unbf(uint16_t h) {
  return __uint_as_float(uint32_t(h) << 16);
}

}  // namespace

TEST_CASE("emulator: shuffles exchange within each warp; warps diverge between barriers", "[sim]") {
  std::vector<int> out(128, -1);
  sim::launch_impl(
      nullptr,
      [&] {
        const int tid = static_cast<int>(threadIdx.x), warp = tid / 32;
        int v = tid;
        for (int i = 0; i <= warp; ++i) v = __shfl_xor_sync(0xffffffffu, v, 1 << i);  // warp w: w + 1 rounds
        __syncthreads();
        out[static_cast<size_t>(tid)] = v + 1000 * __shfl_sync(0xffffffffu, tid, 5);
      },
      dim3(1), dim3(128));
  REQUIRE(cudaGetLastError() == cudaSuccess);
  for (int tid = 0; tid < 128; ++tid) {
    const int warp = tid / 32, mask = (2 << warp) - 1;  // xor of bits 0..warp
    CHECK(out[static_cast<size_t>(tid)] == (tid ^ mask) + 1000 * (warp * 32 + 5));
  }
}

TEST_CASE("emulator: ldmatrix x4 and x4.trans deliver the PTX ISA's fragments", "[sim]") {
  // Four 8x8 matrices in shared memory, rows 16 bytes apart, element (i, r, c) = 64 i + 8 r + c. Lane 8m + j
  // gives the address of row j of matrix m, here memory row 7 - j: the fragments hold the rows as addressed.
  std::vector<uint32_t> got(32 * 4), got_t(32 * 4);
  sim::launch_impl(
      nullptr,
      [&] {
        auto* s = static_cast<uint16_t*>(sim::dynamic_shared());
        const int l = static_cast<int>(threadIdx.x), m = l / 8;
        for (int e = l; e < 256; e += 32) s[e] = static_cast<uint16_t>(e);
        __syncthreads();
        uint32_t r[4];
        sim::ldmatrix(r, 4, __cvta_generic_to_shared(s + 64 * m + 8 * (7 - l % 8)), false);
        for (int i = 0; i < 4; ++i) got[static_cast<size_t>(4 * l + i)] = r[i];
        sim::ldmatrix(r, 4, __cvta_generic_to_shared(s + 64 * m + 8 * (7 - l % 8)), true);
        for (int i = 0; i < 4; ++i) got_t[static_cast<size_t>(4 * l + i)] = r[i];
      },
      dim3(1), dim3(32), 512);
  for (uint32_t l = 0; l < 32; ++l)
    for (uint32_t i = 0; i < 4; ++i) {
      // Element (r, c) of matrix i as the lanes addressed it is memory element 64 i + 8 (7 - r) + c.
      auto at = [i](uint32_t r, uint32_t c) { return 64 * i + 8 * (7 - r) + c; };
      const uint32_t r = l / 4, c = 2 * (l % 4);
      CHECK(got[4 * l + i] == (at(r, c) | (at(r, c + 1) << 16)));
      CHECK(got_t[4 * l + i] == (at(c, r) | (at(c + 1, r) << 16)));
    }
}

TEST_CASE("emulator: mma.sync m16n8k16 bf16 is D = A B + C on the PTX ISA's fragments", "[sim]") {
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  float A[16][16], B[16][8], C[16][8];
  for (auto& row : A)
    for (float& x : row) x = unbf(bf(dist(rng)));
  for (auto& row : B)
    for (float& x : row) x = unbf(bf(dist(rng)));
  for (auto& row : C)
    for (float& x : row) x = dist(rng);
  std::vector<float> D(32 * 4);
  sim::launch_impl(
      nullptr,
      [&] {
        const int l = static_cast<int>(threadIdx.x), g = l / 4, t = l % 4;
        auto pk = [](float lo, float hi) { return uint32_t(bf(lo)) | (uint32_t(bf(hi)) << 16); };
        const uint32_t a[4] = {pk(A[g][2 * t], A[g][2 * t + 1]), pk(A[g + 8][2 * t], A[g + 8][2 * t + 1]),
                               pk(A[g][2 * t + 8], A[g][2 * t + 9]),
                               pk(A[g + 8][2 * t + 8], A[g + 8][2 * t + 9])};
        const uint32_t b0 = pk(B[2 * t][g], B[2 * t + 1][g]), b1 = pk(B[2 * t + 8][g], B[2 * t + 9][g]);
        float d[4] = {C[g][2 * t], C[g][2 * t + 1], C[g + 8][2 * t], C[g + 8][2 * t + 1]};
        sim::mma_m16n8k16(d, a, b0, b1, sim::MmaType::bf16);
        for (int i = 0; i < 4; ++i) D[static_cast<size_t>(4 * l + i)] = d[i];
      },
      dim3(1), dim3(32));
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      const int row = l / 4 + 8 * (i / 2), col = 2 * (l % 4) + i % 2;
      double want = C[row][col];
      for (int k = 0; k < 16; ++k) want += double(A[row][k]) * B[k][col];
      CHECK(std::abs(D[static_cast<size_t>(4 * l + i)] - want) < 1e-5 * (1 + std::abs(want)));
    }
}

TEST_CASE("emulator: cp.async lands at wait_group; zero-fill; configurable to land at issue", "[sim]") {
  alignas(16) static const uint16_t src[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  uint16_t before = 0, after = 0, zero = 1;
  for (auto timing : {sim::CopyTiming::at_wait, sim::CopyTiming::at_issue}) {
    sim::set_copy_timing(timing);
    sim::launch_impl(
        nullptr,
        [&] {
          auto* s = static_cast<uint16_t*>(sim::dynamic_shared());
          if (threadIdx.x == 0) {
            sim::cp_async16(__cvta_generic_to_shared(s), src, 16);
            sim::cp_async16(__cvta_generic_to_shared(s + 8), src, 0);
            sim::cp_async_commit();
            before = s[3];
            sim::cp_async_wait(0);
            after = s[3];
            zero = s[12];
          }
        },
        dim3(1), dim3(32), 64);
    CHECK(before == (timing == sim::CopyTiming::at_wait ? 0xFFFF : 4));  // poison until the wait
    CHECK(after == 4);
    CHECK(zero == 0);
  }
  sim::set_copy_timing(sim::CopyTiming::at_wait);
}

TEST_CASE("emulator: dynamic shared memory above 48 KiB needs cudaFuncSetAttribute, up to 227 / 163 KiB",
          "[sim]") {
  static void (*const kernel)() = [] {};
  const void* k = reinterpret_cast<const void*>(kernel);
  auto body = [] {};
  // The emulated device (sim/cudart.h): an H100, compute capability 9.0, 132 SMs.
  int major = 0, sms = 0;
  CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess);
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess);
  CHECK(major == 9);
  CHECK(sms == 132);
  CHECK(sim::launch_impl(k, body, dim3(1), dim3(32), 64 * 1024) != cudaSuccess);
  CHECK(cudaGetLastError() != cudaSuccess);
  CHECK(cudaGetLastError() == cudaSuccess);  // read and cleared
  REQUIRE(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024) ==
          cudaSuccess);
  CHECK(sim::launch_impl(k, body, dim3(1), dim3(32), 64 * 1024) == cudaSuccess);
  CHECK(sim::launch_impl(k, body, dim3(1), dim3(2048)) != cudaSuccess);
  (void)cudaGetLastError();
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024) == cudaSuccess);
  CHECK(sim::launch_impl(k, body, dim3(1), dim3(32), 227 * 1024) == cudaSuccess);
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024 + 1) !=
        cudaSuccess);
  // Compute capability 8.0 (sim::set_arch(8)): 163 KiB at most, whatever was set before.
  sim::set_arch(8);
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024) != cudaSuccess);
  CHECK(sim::launch_impl(k, body, dim3(1), dim3(32), 227 * 1024) != cudaSuccess);
  sim::set_arch(9);
  (void)cudaGetLastError();
}

TEST_CASE("emulator: what the hardware would not allow aborts with one line", "[sim]") {
  auto run = [](std::function<void()> body, unsigned threads, size_t smem) {
    return child_stderr([&] { sim::launch_impl(nullptr, body, dim3(1), dim3(threads), smem); });
  };
  std::string e = run(
      [] {
        uint32_t r[4];
        const auto* s = static_cast<uint16_t*>(sim::dynamic_shared());
        sim::ldmatrix(r, 4, __cvta_generic_to_shared(s + 8 * threadIdx.x), false);  // 32 rows of 16 bytes
      },
      32, 256);
  INFO(e);
  CHECK(e.find("abort: sim: ldmatrix: shared bytes [0x100, 0x110) outside the block's 256 bytes") == 0);
  e = run(
      [] {
        uint32_t r[4];
        const auto* s = static_cast<uint16_t*>(sim::dynamic_shared());
        sim::ldmatrix(r, 4, __cvta_generic_to_shared(s + 1), false);
      },
      32, 256);
  INFO(e);
  CHECK(e.find("abort: sim: ldmatrix: shared address 0x2 is not 16-byte aligned") == 0);
  e = run([] { sim::cp_async16(__cvta_generic_to_shared(sim::dynamic_shared()) + 64, nullptr, 0); }, 32, 64);
  INFO(e);
  CHECK(e.find("abort: sim: cp.async.cg: shared bytes [0x40, 0x50) outside") == 0);
  e = run(
      [] {
        int x = 0;
        (void)__cvta_generic_to_shared(&x);
      },
      32, 64);
  INFO(e);
  CHECK(e.find("abort: sim: __cvta_generic_to_shared(") == 0);
  e = run(
      [] {
        uint32_t r[4];
        if (threadIdx.x < 16)
          (void)__shfl_xor_sync(0xffffffffu, 1, 1);
        else
          sim::ldmatrix(r, 4, __cvta_generic_to_shared(sim::dynamic_shared()), false);
      },
      32, 64);
  INFO(e);
  CHECK(e.find("abort: sim: warp 0 of block (0,0,0): lane 16 reaches ldmatrix") == 0);
  e = run(
      [] {
        if (threadIdx.x == 40) return;
        (void)__shfl_xor_sync(0xffffffffu, 1, 1);
      },
      64, 0);
  INFO(e);
  CHECK(e.find("abort: sim: deadlock in block (0,0,0) of 64 threads; warp 0: 0 at __syncthreads, 0 at a "
               "warp collective, 32 exited; warp 1: 0 at __syncthreads, 31 at __shfl_sync, 1 exited") == 0);
  e = run(
      [] {
        if (threadIdx.x >= 32) return;
        __syncthreads();
      },
      64, 0);
  INFO(e);
  CHECK(e.find("abort: sim: __syncthreads reached by 32 threads of block (0,0,0) while 32 have exited") == 0);
}

TEST_CASE("emulator: static and dynamic shared memory share one window from 0, wgmma-addressable", "[sim]") {
  // As on hardware: static __shared__ arrays from 0 (at their alignment), the dynamic memory after them at a
  // 1024-byte boundary, all below 256 KiB, where a wgmma descriptor's 14-bit start field (addr >> 4) reaches.
  // A wgmma m64n8k16 reads A and B from static arrays (no-swizzle K-major core matrices, LBO 128 along K, SBO
  // 256 along M/N): A(m, k) = m % 8 + k, B(k, j) = 1 where k % 8 == j, so D(m, j) = A(m, j) + A(m, j + 8).
  struct Seen {
    uint32_t flag = 1, a = 1, b = 1, dyn = 1;
  };
  std::vector<Seen> seen(2);
  std::vector<float> D(128 * 4, -1.0f);
  int launch = 0;
  auto body = [&] {
    static __align__(16) uint32_t flag[4];
    sim::shared_static(flag, sizeof flag);
    static __align__(1024) uint16_t a[64 * 16];
    sim::shared_static(a, sizeof a);
    static __align__(128) uint16_t b[8 * 16];
    sim::shared_static(b, sizeof b);
    auto* dyn = static_cast<unsigned char*>(sim::dynamic_shared());
    const unsigned tid = threadIdx.x;
    auto cm = [](uint32_t mn, uint32_t k) { return ((mn / 8) * 2 + k / 8) * 64 + (mn % 8) * 8 + k % 8; };
    if (tid == 0) {
      seen[static_cast<size_t>(launch)] = {static_cast<uint32_t>(__cvta_generic_to_shared(flag)),
                                           static_cast<uint32_t>(__cvta_generic_to_shared(a)),
                                           static_cast<uint32_t>(__cvta_generic_to_shared(b)),
                                           static_cast<uint32_t>(__cvta_generic_to_shared(dyn))};
      for (uint32_t m = 0; m < 64; ++m)
        for (uint32_t k = 0; k < 16; ++k) a[cm(m, k)] = bf(float(m % 8 + k));
      for (uint32_t j = 0; j < 8; ++j)
        for (uint32_t k = 0; k < 16; ++k) b[cm(j, k)] = bf(k % 8 == j ? 1.0f : 0.0f);
    }
    __syncthreads();
    auto desc = [](const void* p) {
      const auto addr = static_cast<uint64_t>(__cvta_generic_to_shared(p));
      return ((addr >> 4) & 0x3FFF) | uint64_t(128 >> 4) << 16 | uint64_t(256 >> 4) << 32;
    };
    float d[4] = {0, 0, 0, 0};
    sim::wgmma(d, 8, desc(a), nullptr, desc(b), false, false, false, sim::MmaType::bf16);
    sim::wgmma_commit();
    sim::wgmma_wait(0);
    for (int i = 0; i < 4; ++i) D[4 * tid + static_cast<unsigned>(i)] = d[i];
  };
  uint32_t only_dyn = 1;
  for (launch = 0; launch < 2; ++launch) {
    // (between the two, a kernel of dynamic memory only, at 0: the arrays then register afresh, from 0 again)
    if (launch == 1)
      sim::launch_impl(
          nullptr, [&] { only_dyn = __cvta_generic_to_shared(sim::dynamic_shared()); }, dim3(1), dim3(1), 64);
    std::fill(D.begin(), D.end(), -1.0f);
    REQUIRE(sim::launch_impl(nullptr, body, dim3(1), dim3(128), 256) == cudaSuccess);
    const Seen& s = seen[static_cast<size_t>(launch)];
    CHECK(s.flag == 0);
    CHECK(s.a == 1024);
    CHECK(s.b == 1024 + 64 * 16 * 2);
    CHECK(s.dyn == 4096);
    if (launch == 1) CHECK(only_dyn == 0);
    for (unsigned t = 0; t < 128; ++t)
      for (unsigned i = 0; i < 4; ++i) {
        const unsigned row = 16 * (t / 32) + (t % 32) / 4 + 8 * (i / 2), col = 2 * (t % 4) + i % 2;
        INFO("thread " << t << " element " << i);
        CHECK(D[4 * t + i] == float(2 * (row % 8) + 2 * col + 8));
      }
  }
  // Static arrays above 48 KiB, or above the opt-in limit together with the dynamic memory, abort.
  std::string e = child_stderr([] {
    sim::launch_impl(
        nullptr,
        [] {
          static unsigned char x[40 * 1024], y[9 * 1024];
          sim::shared_static(x, sizeof x);
          sim::shared_static(y, sizeof y);
        },
        dim3(1), dim3(1), 0);
  });
  INFO(e);
  CHECK(e.find("abort: sim: static __shared__ arrays of 50176 bytes in one kernel: at most 48 KiB") == 0);
  e = child_stderr([] {
    static int key;
    sim::set_max_dynamic_smem(&key, 200 * 1024);
    sim::launch_impl(
        &key,
        [] {
          static unsigned char x[40 * 1024];
          sim::shared_static(x, sizeof x);
        },
        dim3(1), dim3(1), 200 * 1024);
  });
  INFO(e);
  CHECK(e.find("abort: sim: 40960 bytes of static __shared__ arrays and 204800 of dynamic shared memory: at "
               "most 232448 in all per block") == 0);
}

TEST_CASE("emulator: mbarrier phases and parities", "[sim]") {
  // Thread 0 initialises a barrier for 2 arrivals; warp 1 waits for phase 0 (each waiter notes how many
  // arrivals it saw), then threads 0 and 1 arrive; after a __syncthreads all wait for phase 1, which threads
  // 0 and 32 complete. A fresh barrier's parity-1 wait succeeds at once.
  std::vector<int> seen(64, -1), seen2(64, -1);
  bool fresh_odd = false;
  int arrived = 0, arrived2 = 0;
  sim::launch_impl(
      nullptr,
      [&] {
        const uint32_t bar = __cvta_generic_to_shared(sim::dynamic_shared());
        const unsigned tid = threadIdx.x;
        if (tid == 0) {
          sim::mbar_init(bar, 2);
          fresh_odd = sim::mbar_try_wait(bar, 1);
        }
        __syncthreads();
        if (tid >= 32) {
          while (!sim::mbar_try_wait(bar, 0)) {
          }
          seen[tid] = arrived;
        } else if (tid < 2) {
          ++arrived;
          sim::mbar_arrive(bar);
        }
        __syncthreads();  // (an arrival for phase 1 before every waiter saw phase 0 would alias)
        if (tid == 0 || tid == 32) {
          ++arrived2;
          sim::mbar_arrive(bar);
        }
        while (!sim::mbar_try_wait(bar, 1)) {
        }
        seen2[tid] = arrived2;
      },
      dim3(1), dim3(64), 64);
  CHECK(fresh_odd);
  for (int t = 32; t < 64; ++t) CHECK(seen[static_cast<size_t>(t)] == 2);
  for (int t = 0; t < 64; ++t) CHECK(seen2[static_cast<size_t>(t)] == 2);
}

TEST_CASE("emulator: TMA 2-D box with 128-byte swizzle and zero fill, completing its bytes", "[sim]") {
  // A 70 x 5 tensor of 16-bit elements (row stride 80 elements), box 64 x 8 at (16, -1): rows -1 and 5.. and
  // columns 70.. are outside and read as zeros. CUDA driver API (CU_TENSOR_MAP_SWIZZLE_128B): element (r, c)
  // of the box lands at byte r * 128 + ((2 c / 16) XOR (r % 8)) * 16 + 2 c % 16 of a 1024-aligned box.
  std::vector<uint16_t> gmem(80 * 5);
  for (size_t i = 0; i < gmem.size(); ++i) gmem[i] = static_cast<uint16_t>(i + 1);
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q{};
  REQUIRE(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) ==
          cudaSuccess);
  REQUIRE(q == cudaDriverEntryPointSuccess);
  const auto encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  CUtensorMap map;
  const cuuint64_t dims[2] = {70, 5}, strides[1] = {160};
  const cuuint32_t box[2] = {64, 8}, estr[2] = {1, 1};
  REQUIRE(encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, gmem.data(), dims, strides, box, estr,
                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS);
  std::vector<uint16_t> smem(64 * 8), at_issue(64 * 8);
  sim::launch_impl(
      nullptr,
      [&] {
        auto* base = static_cast<unsigned char*>(sim::dynamic_shared());
        const uint32_t bar = __cvta_generic_to_shared(base + 1024), dst = __cvta_generic_to_shared(base);
        sim::mbar_init(bar, 1);
        sim::mbar_arrive_expect_tx(bar, 64 * 8 * 2);
        const int c[2] = {16, -1};
        sim::tma_load(dst, &map, bar, c, 2);
        std::memcpy(at_issue.data(), base, at_issue.size() * 2);  // not landed yet: the poison
        while (!sim::mbar_try_wait(bar, 0)) {
        }
        std::memcpy(smem.data(), base, smem.size() * 2);
      },
      dim3(1), dim3(1), 1024 + 8);
  CHECK(std::count(at_issue.begin(), at_issue.end(), uint16_t{0xFFFF}) == 64 * 8);
  int bad = 0;
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 64; ++c) {
      const int gr = r - 1, gc = 16 + c;
      const uint16_t want = gr >= 0 && gr < 5 && gc < 70 ? gmem[static_cast<size_t>(gr * 80 + gc)] : 0;
      const int byte = r * 128 + (((2 * c) / 16) ^ (r % 8)) * 16 + (2 * c) % 16;
      bad += smem[static_cast<size_t>(byte / 2)] != want;
    }
  CHECK(bad == 0);
  // The encoder's checks: a box row wider than the swizzle span, a stride not a multiple of 16.
  const cuuint32_t wide[2] = {128, 8};
  CHECK(encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, gmem.data(), dims, strides, wide, estr,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_ERROR_INVALID_VALUE);
  const cuuint64_t odd[1] = {150};
  CHECK(encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, gmem.data(), dims, odd, box, estr,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_ERROR_INVALID_VALUE);
}

TEST_CASE("emulator: sm_90a misuse aborts with one line", "[sim]") {
  auto run = [](std::function<void()> body, unsigned threads, size_t smem) {
    return child_stderr([&] { sim::launch_impl(nullptr, body, dim3(1), dim3(threads), smem); });
  };
  // A wait whose phase never completes (2 arrivals expected, 1 made): a deadlock naming barrier and warps.
  std::string e = run(
      [] {
        const uint32_t bar = __cvta_generic_to_shared(sim::dynamic_shared());
        if (threadIdx.x == 0) sim::mbar_init(bar, 2);
        __syncthreads();
        if (threadIdx.x == 0) sim::mbar_arrive(bar);
        if (threadIdx.x == 40)
          while (!sim::mbar_try_wait(bar, 0)) {
          }
      },
      64, 64);
  INFO(e);
  CHECK(e.find("abort: sim: deadlock in block (0,0,0) of 64 threads;") == 0);
  CHECK(e.find("; warp 1: 0 at __syncthreads, 0 at a warp collective, 1 at an mbarrier wait, 31 exited") !=
        std::string::npos);
  CHECK(e.find("mbarrier at shared 0x0 (phase 0, 1 of 2 arrivals pending, tx count 0) awaited with parity 0 "
               "by warps 1") != std::string::npos);
  // setmaxnreg by part of a warpgroup only: the rest reaches another instruction.
  e = run(
      [] {
        if (threadIdx.x < 64)
          sim::setmaxnreg(false, 40);
        else
          sim::setmaxnreg(true, 232);
      },
      128, 0);
  INFO(e);
  // (which half arrives first depends on the warp order, which alternates between blocks)
  CHECK(e.find("abort: sim: warpgroup 0 of block (0,0,0): thread ") == 0);
  CHECK(e.find("setmaxnreg.inc (variant 232)") != std::string::npos);
  CHECK(e.find("setmaxnreg.dec (variant 40)") != std::string::npos);
  CHECK(e.find("must be executed by all 128 threads alike") != std::string::npos);
  // An mbarrier operation on shared memory never initialised as one.
  e = run([] { sim::mbar_arrive(__cvta_generic_to_shared(sim::dynamic_shared())); }, 1, 64);
  INFO(e);
  CHECK(e.find("abort: sim: mbarrier.arrive: shared 0x0 holds no mbarrier initialised in block (0,0,0)") ==
        0);
}
