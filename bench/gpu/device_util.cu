// Random fills and the non-finite count of the GPU benchmarks (device_util.h). A grid-stride loop per call;
// values come from splitmix64 of (seed, index), so a fill is the same on every run and every GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "bench/gpu/device_util.h"

namespace polder::bench::gpu {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("cuda ") + what + ": " + cudaGetErrorString(err));
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + 255) / 256, 1, 65535));
}

template <typename T>
__global__ void fill_uniform_kernel(T* p, int64_t n, uint64_t seed, float lo, float hi) {
  const uint64_t key = seed * 0x2545f4914f6cdd1dull;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u =
        static_cast<float>(splitmix64(key ^ static_cast<uint64_t>(i)) >> 40) * 0x1.0p-24f;  // [0, 1)
    p[i] = static_cast<T>(lo + (hi - lo) * u);
  }
}

template <typename T>
__global__ void count_nonfinite_kernel(const T* p, int64_t n, unsigned long long* out) {
  unsigned long long bad = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = static_cast<double>(static_cast<float>(p[i]));
    bad += isfinite(v) ? 0 : 1;
  }
  if (bad) atomicAdd(out, bad);  // an integer count: order does not matter
}

template <>
__global__ void count_nonfinite_kernel<double>(const double* p, int64_t n, unsigned long long* out) {
  unsigned long long bad = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    bad += isfinite(p[i]) ? 0 : 1;
  if (bad) atomicAdd(out, bad);
}

template <typename F>
void visit_float(DType dtype, const char* what, F&& f) {
  switch (dtype) {
    case DType::f32:
      f(float{});
      return;
    case DType::bf16:
      f(bf16{});
      return;
    case DType::f16:
      f(f16{});
      return;
    case DType::f64:
      f(double{});
      return;
    default:
      throw std::invalid_argument(std::string(what) + ": expected a float dtype (f32, bf16, f16, f64)");
  }
}

}  // namespace

void fill_uniform(void* p, DType dtype, int64_t n, uint64_t seed, float lo, float hi, void* stream) {
  if (n <= 0) return;
  visit_float(dtype, "fill_uniform", [&](auto tag) {
    using T = decltype(tag);
    fill_uniform_kernel<T>
        <<<grid_for(n), 256, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<T*>(p), n, seed, lo, hi);
  });
  check(cudaGetLastError(), "fill_uniform");
}

void poison(void* p, DType dtype, int64_t n, void* stream) {
  if (n <= 0) return;
  check(cudaMemsetAsync(p, 0xFF, static_cast<size_t>(n) * dtype_bytes(dtype),
                        static_cast<cudaStream_t>(stream)),
        "poison memset");
}

int64_t count_nonfinite(const void* p, DType dtype, int64_t n, void* stream) {
  if (n <= 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  unsigned long long* d = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&d), sizeof *d, s), "count_nonfinite alloc");
  check(cudaMemsetAsync(d, 0, sizeof *d, s), "count_nonfinite memset");
  visit_float(dtype, "count_nonfinite", [&](auto tag) {
    using T = decltype(tag);
    count_nonfinite_kernel<T><<<grid_for(n), 256, 0, s>>>(static_cast<const T*>(p), n, d);
  });
  check(cudaGetLastError(), "count_nonfinite");
  unsigned long long h = 0;
  check(cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, s), "count_nonfinite copy");
  check(cudaFreeAsync(d, s), "count_nonfinite free");
  check(cudaStreamSynchronize(s), "count_nonfinite sync");
  return static_cast<int64_t>(h);
}

}  // namespace polder::bench::gpu
