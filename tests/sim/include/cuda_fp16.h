// Emulator stand-in for <cuda_fp16.h> (tests/sim): __half / __half2 as 16-bit containers and their
// conversions (IEEE binary16, round to nearest even, subnormals kept).
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"
#if !defined(__FLT16_MAX__)
#include "kernels/half.h"
#endif

struct __half {
  unsigned short __x;
};
struct alignas(4) __half2 {
  __half x, y;  // x in the low 16 bits
};

// IEEE binary16 through the compiler's _Float16 where it has one (GCC; clang from 15 on x86); elsewhere
// (clang 14) through polder's f16 (kernels/half.h, round to nearest even, checked by its own tests).
#if defined(__FLT16_MAX__)
inline __half __float2half_rn(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  __half r;
  std::memcpy(&r.__x, &h, 2);
  return r;
}
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.__x, 2);
  return static_cast<float>(v);
}
#else
inline __half __float2half_rn(float f) {
  return {polder::f16(f).bits};
}
inline float __half2float(__half h) {
  polder::f16 v;
  v.bits = h.__x;
  return static_cast<float>(v);
}
#endif
inline __half __float2half(float f) {
  return __float2half_rn(f);
}
inline unsigned short __half_as_ushort(__half h) {
  return h.__x;
}
inline __half __ushort_as_half(unsigned short u) {
  return {u};
}
inline __half2 __floats2half2_rn(float lo, float hi) {
  return {__float2half_rn(lo), __float2half_rn(hi)};
}
inline __half2 __float22half2_rn(float2 v) {
  return __floats2half2_rn(v.x, v.y);
}
inline float __low2float(__half2 v) {
  return __half2float(v.x);
}
inline float __high2float(__half2 v) {
  return __half2float(v.y);
}
inline float2 __half22float2(__half2 v) {
  return {__half2float(v.x), __half2float(v.y)};
}
inline __half2 __halves2half2(__half lo, __half hi) {
  return {lo, hi};
}
inline __half __low2half(__half2 v) {
  return v.x;
}
inline __half __high2half(__half2 v) {
  return v.y;
}
// Arithmetic rounded once to binary16: the fp32 sum, difference or product of two halves rounds to the same
// half as the exact one (an 11-bit operand cannot reach both the half rounding bit and below fp32's 24 bits).
inline __half __hadd(__half a, __half b) {
  return __float2half_rn(__half2float(a) + __half2float(b));
}
inline __half __hsub(__half a, __half b) {
  return __float2half_rn(__half2float(a) - __half2float(b));
}
inline __half __hmul(__half a, __half b) {
  return __float2half_rn(__half2float(a) * __half2float(b));
}
inline __half2 __hadd2(__half2 a, __half2 b) {
  return {__hadd(a.x, b.x), __hadd(a.y, b.y)};
}
inline __half2 __hmul2(__half2 a, __half2 b) {
  return {__hmul(a.x, b.x), __hmul(a.y, b.y)};
}
// atomicAdd on half and half2 (sm_70+): the old value back, the sum rounded to nearest even.
inline __half atomicAdd(__half* address, __half val) {
  const __half old = *address;
  *address = __hadd(old, val);
  return old;
}
inline __half2 atomicAdd(__half2* address, __half2 val) {
  const __half2 old = *address;
  *address = __hadd2(old, val);
  return old;
}
