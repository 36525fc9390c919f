// Vectorizable float math for the CPU kernels' hot loops (issue 25). glibc's expf is a call per element
// (~4 ns): the softmax of a 32k-vocabulary head spent a fifth of a CPU step in it. exp_approx is plain
// float arithmetic and integer bit moves, always inlined, so a loop over it compiles to AVX-512 / AVX2 / SSE
// code in each ISA pass (kernels/cpu/isa_passes.h) with the same operations on every level.
//
// Accuracy: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and the degree-7 Taylor polynomial of exp(r):
// relative error below 1.5e-7 (about 1 ulp; tests/test_cpu_isa.cpp sweeps it against double exp). Inputs
// below -87.33 give 0 (exp(-inf) = 0, as masked softmax entries need), above 88.37 give exp(88.37); NaN
// propagates.
//
// Sums over a row use kLanes fixed partial sums (lane l takes elements l, l + kLanes, ...), combined in a
// fixed order: the result is the same on AVX2 and AVX-512, whatever width the compiler picks.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/half.h"

namespace polder::kernels::cpu::vmath {

inline constexpr int kLanes = 16;

[[gnu::always_inline]] inline float exp_approx(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // exact in 9 bits: n * kLn2Hi is exact for |n| < 2^15
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound =
      12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  // Branch-free selects (the loop must if-convert to vector blends): clamp, with NaN and underflow mapped
  // to 0 here and fixed up at the end.
  const bool under = x < -87.33f;
  const bool nan = x != x;
  float xc = x > 88.37f ? 88.37f : x;
  xc = (under | nan) ? 0.0f : xc;
  const float n = (xc * kLog2e + kRound) - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  const float y = p * scale;
  return under ? 0.0f : (nan ? x : y);
}

// Stores v as T at p[i]. bf16 goes through its bits (the same rounding as bf16's constructor): GCC does not
// vectorize a loop that stores a struct built by a constructor.
template <typename T, typename V>
[[gnu::always_inline]] inline void store(T* p, int64_t i, V v) {
  if constexpr (std::is_same_v<T, bf16>) {
    const uint32_t u = float_bits(static_cast<float>(v));
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet = (u >> 16) | 0x40u;
    reinterpret_cast<uint16_t*>(p)[i] =
        static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
  } else {
    p[i] = static_cast<T>(v);
  }
}

// Combines kLanes partial results in a fixed order (pairwise).
[[gnu::always_inline]] inline float sum_lanes(float* acc) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}
[[gnu::always_inline]] inline float max_lanes(float* acc) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] = acc[l] > acc[l + w] ? acc[l] : acc[l + w];
  return acc[0];
}

// max over x[0, n) (as float). NaN-free inputs assumed for the max (a NaN row yields a NaN loss downstream
// through the sum).
template <typename T>
[[gnu::always_inline]] inline float row_max(const T* x, int64_t n) {
  float acc[kLanes];
  for (int l = 0; l < kLanes; ++l) acc[l] = -std::numeric_limits<float>::infinity();
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float v = static_cast<float>(x[c + l]);
      acc[l] = acc[l] > v ? acc[l] : v;
    }
  }
  for (int l = 0; c + l < n; ++l) {
    const float v = static_cast<float>(x[c + l]);
    acc[l] = acc[l] > v ? acc[l] : v;
  }
  return max_lanes(acc);
}

// sum over x[0, n) of exp(scale * x - shift).
template <typename T>
[[gnu::always_inline]] inline float row_sum_exp(const T* x, int64_t n, float scale, float shift) {
  float acc[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) acc[l] += exp_approx(scale * static_cast<float>(x[c + l]) - shift);
  }
  for (int l = 0; c + l < n; ++l) acc[l] += exp_approx(scale * static_cast<float>(x[c + l]) - shift);
  return sum_lanes(acc);
}

// row_sum_exp that also stores each exp(scale * x - shift) in e[0, n): the same sum, bit for bit.
template <typename T>
[[gnu::always_inline]] inline float row_sum_exp_store(const T* x, int64_t n, float scale, float shift,
                                                      float* __restrict e) {
  float acc[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      e[c + l] = exp_approx(scale * static_cast<float>(x[c + l]) - shift);
      acc[l] += e[c + l];
    }
  }
  for (int l = 0; c + l < n; ++l) {
    e[c + l] = exp_approx(scale * static_cast<float>(x[c + l]) - shift);
    acc[l] += e[c + l];
  }
  return sum_lanes(acc);
}

// sum over x[0, n), kLanes partial sums.
[[gnu::always_inline]] inline float row_sum(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) acc[l] += x[c + l];
  }
  for (int l = 0; c + l < n; ++l) acc[l] += x[c + l];
  return sum_lanes(acc);
}

// sum over x[0, n) of x * y (as floats), kLanes partial sums.
template <typename T, typename U>
[[gnu::always_inline]] inline float row_dot(const T* x, const U* y, int64_t n) {
  float acc[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<float>(x[c + l]) * static_cast<float>(y[c + l]);
  }
  for (int l = 0; c + l < n; ++l) acc[l] += static_cast<float>(x[c + l]) * static_cast<float>(y[c + l]);
  return sum_lanes(acc);
}

}  // namespace polder::kernels::cpu::vmath
