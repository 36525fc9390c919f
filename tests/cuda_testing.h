// Helpers of the [cuda] kernel tests: device detection with a clear skip, a CUDA call check, and a poisoned
// device buffer. Only for test files compiled with POLDER_HAVE_CUDA.
#pragma once

#include <cuda_runtime.h>
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "host_random.h"

namespace polder::testing {

inline bool have_gpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device / no driver" error
    return false;
  }
  return n > 0;
}

}  // namespace polder::testing

#define SKIP_WITHOUT_GPU()                                                                               \
  do {                                                                                                   \
    if (!::polder::testing::have_gpu()) {                                                                \
      WARN("skipped: no CUDA device (cudaGetDeviceCount reports 0); [cuda] tests run on a GPU machine"); \
      return;                                                                                            \
    }                                                                                                    \
  } while (0)

#define CUDA_OK(expr)                                \
  do {                                               \
    cudaError_t err_ = (expr);                       \
    INFO(#expr << ": " << cudaGetErrorString(err_)); \
    REQUIRE(err_ == cudaSuccess);                    \
  } while (0)

namespace polder::testing {

// A device buffer of n elements (plus `offset` leading elements, to test misaligned pointers), poisoned with
// 0xFF bytes: NaN in f32, bf16 and f16.
template <typename T>
struct DevBuf {
  T* base = nullptr;
  size_t n = 0, offset = 0;
  explicit DevBuf(size_t n_, size_t offset_ = 0) : n(n_), offset(offset_) {
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&base), (n + offset + 1) * sizeof(T)));
    CUDA_OK(cudaMemset(base, 0xFF, (n + offset + 1) * sizeof(T)));
  }
  DevBuf(const std::vector<T>& h, size_t offset_ = 0) : DevBuf(h.size(), offset_) {
    CUDA_OK(cudaMemcpy(get(), h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DevBuf() { cudaFree(base); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  T* get() const { return base + offset; }
  std::vector<T> host() const {
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<T> h(n);
    CUDA_OK(cudaMemcpy(h.data(), get(), n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

}  // namespace polder::testing
