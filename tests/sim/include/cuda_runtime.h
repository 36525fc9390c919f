// Emulator stand-in for <cuda_runtime.h> (tests/sim): the execution-space keywords, built-in variables,
// vector types and device intrinsics polder's kernels use, on the CPU, plus the runtime API (sim/cudart.h).
// See sim/runtime.h for the execution model of a kernel and sim/cudart.h for the device, streams and memory.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "sim/runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __grid_constant__
// __shared__ is deliberately undefined: tests/sim/transform.py rewrites shared declarations of kernel
// sources.

// ---- vector types (the alignment of CUDA's vector_types.h)
// --------------------------------------------------
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) {
  return {x, y};
}
inline float4 make_float4(float x, float y, float z, float w) {
  return {x, y, z, w};
}
inline int4 make_int4(int x, int y, int z, int w) {
  return {x, y, z, w};
}
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
  return {x, y, z, w};
}

// ---- device intrinsics
// -------------------------------------------------------------------------------------
inline void __syncthreads() {
  sim::syncthreads();
}

template <typename T>
T sim_shfl_(unsigned mask, T v, int kind, int arg, int width) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = sim::shfl_bits(mask, bits, kind, arg, width);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return sim_shfl_(mask, v, 0, lane_mask, width);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return sim_shfl_(mask, v, 1, src_lane, width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return sim_shfl_(mask, v, 2, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return sim_shfl_(mask, v, 3, static_cast<int>(delta), width);
}

inline size_t __cvta_generic_to_shared(const void* p) {
  return sim::cvta_shared(p);
}
[[noreturn]] inline void __trap() {
  sim::fail("__trap() in block (%u,%u,%u), thread (%u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z,
            threadIdx.x, threadIdx.y, threadIdx.z);
}
inline long long clock64() {
  return static_cast<long long>(sim::clock64());
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  sim::syncwarp(mask);
}

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, 4);
  return i;
}
// The fast-math intrinsics at full precision (the hardware's approximations are not modelled).
inline float __expf(float x) {
  return std::exp(x);
}
inline float __logf(float x) {
  return std::log(x);
}
inline float __fdividef(float a, float b) {
  return a / b;
}
inline float __fmaf_rn(float a, float b, float c) {
  return std::fma(a, b, c);
}
inline double __fma_rn(double a, double b, double c) {
  return std::fma(a, b, c);
}
inline float rsqrtf(float x) {
  return 1.0f / std::sqrt(x);
}

// CUDA's global min/max overloads.
#define POLDER_SIM_MINMAX(T) \
  inline T min(T a, T b) {   \
    return b < a ? b : a;    \
  }                          \
  inline T max(T a, T b) {   \
    return a < b ? b : a;    \
  }
POLDER_SIM_MINMAX(int)
POLDER_SIM_MINMAX(unsigned)
POLDER_SIM_MINMAX(long)
POLDER_SIM_MINMAX(unsigned long)
POLDER_SIM_MINMAX(long long)
POLDER_SIM_MINMAX(unsigned long long)
#undef POLDER_SIM_MINMAX
inline float min(float a, float b) {
  return std::fmin(a, b);
}
inline float max(float a, float b) {
  return std::fmax(a, b);
}

// ---- runtime API: declared in sim/cudart.h, implemented by tests/sim/sim_cudart.cpp
#include "sim/cudart.h"
