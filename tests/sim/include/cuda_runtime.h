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
inline double rsqrt(double x) {
  return 1.0 / std::sqrt(x);
}
// The IEEE round-to-nearest intrinsics are exact; __saturatef clamps to [0, 1] (NaN -> 0).
inline float __frcp_rn(float x) {
  return 1.0f / x;
}
inline float __fsqrt_rn(float x) {
  return std::sqrt(x);
}
inline float __fdiv_rn(float a, float b) {
  return a / b;
}
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __saturatef(float x) {
  return x >= 1.0f ? 1.0f : x > 0.0f ? x : 0.0f;
}
inline float __powf(float a, float b) {
  return std::pow(a, b);
}
inline float __sinf(float x) {
  return std::sin(x);
}
inline float __cosf(float x) {
  return std::cos(x);
}

// __ldg: a load through the read-only data cache (only the value is modelled).
template <typename T>
T __ldg(const T* p) {
  return *p;
}
// Memory fences: threads switch only at barriers and collectives and kernels run one at a time, so every
// store is visible to every later load already; the fences only check they are called from device code.
inline void __threadfence() {
  sim::fence();
}
inline void __threadfence_block() {
  sim::fence();
}
inline void __threadfence_system() {
  sim::fence();
}

// Warp votes (a collective of the 32 lanes, full mask only, as the shuffles): bit l of the ballot is lane l's
// predicate != 0; any / all over the lanes.
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return sim::vote(mask, pred, 0);
}
inline int __any_sync(unsigned mask, int pred) {
  return static_cast<int>(sim::vote(mask, pred, 1));
}
inline int __all_sync(unsigned mask, int pred) {
  return static_cast<int>(sim::vote(mask, pred, 2));
}

// Atomics (CUDA C++ Programming Guide, "Atomic Functions"): each returns the old value. A thread switches
// only at a barrier or collective and kernels run one at a time, so a plain read-modify-write is atomic here.
#define POLDER_SIM_ATOMIC(name, T, expr) \
  inline T name(T* address, T val) {     \
    const T old = *address;              \
    *address = (expr);                   \
    return old;                          \
  }
#define POLDER_SIM_ATOMIC_INT(T)                             \
  POLDER_SIM_ATOMIC(atomicAdd, T, static_cast<T>(old + val)) \
  POLDER_SIM_ATOMIC(atomicSub, T, static_cast<T>(old - val)) \
  POLDER_SIM_ATOMIC(atomicExch, T, val)                      \
  POLDER_SIM_ATOMIC(atomicMin, T, val < old ? val : old)     \
  POLDER_SIM_ATOMIC(atomicMax, T, old < val ? val : old)     \
  POLDER_SIM_ATOMIC(atomicAnd, T, static_cast<T>(old & val)) \
  POLDER_SIM_ATOMIC(atomicOr, T, static_cast<T>(old | val))  \
  POLDER_SIM_ATOMIC(atomicXor, T, static_cast<T>(old ^ val)) \
  inline T atomicCAS(T* address, T compare, T val) {         \
    const T old = *address;                                  \
    if (old == compare) *address = val;                      \
    return old;                                              \
  }
POLDER_SIM_ATOMIC_INT(int)
POLDER_SIM_ATOMIC_INT(unsigned)
POLDER_SIM_ATOMIC_INT(unsigned long long)
POLDER_SIM_ATOMIC(atomicMin, long long, val < old ? val : old)
POLDER_SIM_ATOMIC(atomicMax, long long, old < val ? val : old)
// Float and double: the sum rounded to nearest even, as the hardware's red/atom.add.f32/f64 (fp32 subnormals
// are kept here; the hardware's atom.add.f32 flushes them to zero: not modelled).
POLDER_SIM_ATOMIC(atomicAdd, float, old + val)
POLDER_SIM_ATOMIC(atomicAdd, double, old + val)
POLDER_SIM_ATOMIC(atomicExch, float, val)
#undef POLDER_SIM_ATOMIC_INT
// atomicInc / atomicDec: the wrapping counters of the guide.
inline unsigned atomicInc(unsigned* address, unsigned val) {
  const unsigned old = *address;
  *address = old >= val ? 0u : old + 1u;
  return old;
}
inline unsigned atomicDec(unsigned* address, unsigned val) {
  const unsigned old = *address;
  *address = (old == 0u || old > val) ? val : old - 1u;
  return old;
}

// Integer intrinsics (CUDA Math API, "Integer Intrinsics").
inline int __popc(unsigned x) {
  return __builtin_popcount(x);
}
inline int __popcll(unsigned long long x) {
  return __builtin_popcountll(x);
}
inline int __clz(int x) {
  return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x));
}
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) {
  return __builtin_ffs(x);
}
inline int __ffsll(long long x) {
  return __builtin_ffsll(x);
}
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
  return (x >> 16) | (x << 16);
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
