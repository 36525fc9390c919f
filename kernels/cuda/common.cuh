// Shared device helpers of the memory-bound CUDA kernels: 16-byte vectors, warp/block reductions in fp32, and
// the launch-error check. Only included by kernels/cuda/*.cu (nvcc); every kernel accumulates in acc_t<T>.
#pragma once

// A .cu file is CUDA by definition: make the twins' declarations in kernels/*.h visible, so definitions are
// checked against them (polder_kernels_cuda itself does not carry the POLDER_HAVE_CUDA definition).
#ifndef POLDER_HAVE_CUDA
#define POLDER_HAVE_CUDA 1
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/dtype.h"

namespace polder::kernels::cuda::detail {

constexpr int kWarp = 32;

inline cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}

inline void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("cuda ") + what + ": " + cudaGetErrorString(err));
}

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("cuda ") + what + ": " + cudaGetErrorString(err));
}

// Elements of T in one 16-byte access.
template <typename T>
constexpr int kVec = sizeof(T) >= 16 ? 1 : static_cast<int>(16 / sizeof(T));

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

inline bool aligned16(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. `scratch`
// holds 32 values; the fixed shuffle tree keeps the result independent of scheduling.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : A(0);
  return warp_sum(v);
}

// Threads per block for a row of `cols` elements processed `vec` at a time: enough to cover the
// row, 32..1024.
inline int row_threads(int64_t cols, int vec) {
  int64_t need = (cols + vec - 1) / vec;
  int t = 32;
  while (t < 1024 && t < need) t *= 2;
  return t;
}

}  // namespace polder::kernels::cuda::detail
