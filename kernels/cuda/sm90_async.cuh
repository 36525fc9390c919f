// Hopper (sm_90a) asynchronous-copy plumbing shared by polder's TMA kernels (gemm_sm90_tma.cu,
// flash_attention_sm90.cu): mbarrier operations with a hang guard, TMA tensor loads, the driver's tensor-map
// encoder without linking libcuda, and the probe that tells whether a file's sm_90a image is the one running.
// Only included by kernels/cuda/*.cu compiled with -gencode=arch=compute_90a,code=sm_90a
// (kernels/CMakeLists.txt).
#pragma once

#include <cuda.h>          // CUtensorMap and the driver enums (types only: libcuda is not linked)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#include <cuda_runtime.h>

#include <cstdint>

// Device code of a file exists only in its sm_90a image; the sm_80/sm_90 images of the same file hold empty
// kernel bodies (see runs_sm90a_image). Under POLDER_CUDA_SIM (tests/sim, the CPU emulator) the device code
// is compiled as C++ and each PTX wrapper below calls the emulator's instruction instead.
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)) || \
    defined(POLDER_CUDA_SIM)
#define POLDER_SM90A_DEVICE 1
#endif

namespace polder::kernels::cuda::sm90 {

#ifdef POLDER_SM90A_DEVICE

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
#ifdef POLDER_CUDA_SIM
  ::sim::mbar_init(bar, count);
#else
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}

// One arrival plus `bytes` of expected transaction: the phase completes when TMA has written them all.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#ifdef POLDER_CUDA_SIM
  ::sim::mbar_arrive_expect_tx(bar, bytes);
#else
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#ifdef POLDER_CUDA_SIM
  ::sim::mbar_arrive(bar);
#else
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}

__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
#ifdef POLDER_CUDA_SIM
  return ::sim::mbar_try_wait(bar, parity);
#else
  uint32_t done = 0;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
#endif
}

// A wait longer than this (about 20 s at Hopper clocks; a healthy wait takes microseconds) means the barrier
// protocol is broken: the kernels trap, so that a never-run kernel fails with a launch error instead of
// hanging the process (and check.sh) forever.
constexpr long long kHangCycles = 1ll << 35;

// Waits until the phase with this parity has completed (parity 1 on a fresh barrier returns at once: the
// phase "before" phase 0 counts as completed, which is how a producer's first pass finds every stage free);
// false after kHangCycles. Callers trap on false, where their register budget allows a trap (see
// flash_attention_sm90.cu: a trap inside a consumer loop can cost registers).
__device__ __forceinline__ bool mbar_wait_ok(uint32_t bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return true;
  const long long start = clock64();
  while (!mbar_try_wait(bar, parity))
    if (clock64() - start > kHangCycles) return false;
  return true;
}

// mbar_wait_ok, trapping on a timeout.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (!mbar_wait_ok(bar, parity)) __trap();
}

// TMA: the box at coordinates (c0 innermost, c1, c2) of `map` into shared memory at dst, completing its bytes
// on the mbarrier `bar`.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0,
                                            int c1, int c2) {
#ifdef POLDER_CUDA_SIM
  const int c[3] = {c0, c1, c2};
  ::sim::tma_load(dst, map, bar, c, 3);
#else
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, "
      "%5}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
#endif
}

// The same for a 4-D map (c0 innermost .. c3).
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0,
                                            int c1, int c2, int c3) {
#ifdef POLDER_CUDA_SIM
  const int c[4] = {c0, c1, c2, c3};
  ::sim::tma_load(dst, map, bar, c, 4);
#else
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, "
      "%5, %6}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
#endif
}

// The operand-free PTX of the kernels (mbarrier-init fence, tensor-map prefetch, register reallocation, wgmma
// ordering), one wrapper each so that the emulator can stand in.
__device__ __forceinline__ void fence_mbarrier_init() {
#ifdef POLDER_CUDA_SIM
  ::sim::fence_mbarrier_init();
#else
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap* map) {
#ifdef POLDER_CUDA_SIM
  ::sim::prefetch_tensormap(map);
#else
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#endif
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
#ifdef POLDER_CUDA_SIM
  ::sim::setmaxnreg(false, kRegs);
#else
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs) : "memory");
#endif
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
#ifdef POLDER_CUDA_SIM
  ::sim::setmaxnreg(true, kRegs);
#else
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs) : "memory");
#endif
}
// Orders this thread's ordinary shared-memory stores before later async-proxy reads (wgmma, TMA stores).
__device__ __forceinline__ void fence_proxy_async_shared() {
#ifdef POLDER_CUDA_SIM
  ::sim::fence_proxy_async();
#else
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_fence_sync() {
#ifdef POLDER_CUDA_SIM
  ::sim::wgmma_fence();
#else
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit_group() {
#ifdef POLDER_CUDA_SIM
  ::sim::wgmma_commit();
#else
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait_group() {
#ifdef POLDER_CUDA_SIM
  ::sim::wgmma_wait(kPending);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

#endif  // POLDER_SM90A_DEVICE

using EncodeTiled = PFN_cuTensorMapEncodeTiled_v12000;

// The driver's cuTensorMapEncodeTiled through the runtime (no link against libcuda); nullptr where missing.
inline EncodeTiled encode_tiled() {
  static const EncodeTiled fn = []() -> EncodeTiled {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}

// Whether the current device has compute capability 9.0, the driver has the tensor-map encoder, and `probe`
// (a one-thread kernel of the caller's file writing 1 in its sm_90a image and 0 in the others) runs its
// sm_90a body. Each file probes its own image: callers cache the answer per process.
inline bool runs_sm90a_image(void (*probe)(int*)) {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (major != 9 || minor != 0 || encode_tiled() == nullptr) return false;
  int* flag = nullptr;
  int host = 0;
  if (cudaMalloc(&flag, sizeof(int)) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
#ifdef POLDER_CUDA_SIM
  ::sim::launch(probe, ::sim::LaunchConfig{dim3(1), dim3(1)}, flag);  // transform.py rewrites no headers
#else
  // clang-format reads a .cuh as C++ and would split the launch brackets.
  // clang-format off
  probe<<<1, 1>>>(flag);
  // clang-format on
#endif
  const bool ok = cudaGetLastError() == cudaSuccess &&
                  cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(flag);
  return ok && host == 1;
}

}  // namespace polder::kernels::cuda::sm90
