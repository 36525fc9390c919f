// Device helpers of the GPU benchmarks: random fills on the device (never zeros: they hide unwritten outputs
// and can run faster than real data) and a count of non-finite values, so a timed kernel whose output was
// poisoned with NaN first proves it wrote every element. Implemented in device_util.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/dtype.h"

// Throws std::runtime_error naming the call, CUDA's error and the source line.
#define CUDA_CHECK(call)                                                                     \
  do {                                                                                       \
    cudaError_t err_ = (call);                                                               \
    if (err_ != cudaSuccess)                                                                 \
      throw std::runtime_error(std::string(#call) + " failed: " + cudaGetErrorString(err_) + \
                               " (" __FILE__ ":" + std::to_string(__LINE__) + ")");          \
  } while (0)

namespace polder::bench::gpu {

// p[i] = uniform in [lo, hi) from a counter-based hash of (seed, i); f32, bf16, f16 or f64. Async on
// `stream`.
void fill_uniform(void* p, DType dtype, int64_t n, uint64_t seed, float lo, float hi, void* stream);
// p[i] = 0xFF bytes: NaN in every float dtype.
void poison(void* p, DType dtype, int64_t n, void* stream);
// Number of NaN/Inf values among p[0..n); synchronises `stream`.
int64_t count_nonfinite(const void* p, DType dtype, int64_t n, void* stream);

}  // namespace polder::bench::gpu
