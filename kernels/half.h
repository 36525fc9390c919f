// bf16 and f16 storage types with round-to-nearest-even conversion, usable from host and device code.
// They are plain 16-bit containers: arithmetic always happens in float (the kernels' accumulation type).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define POLDER_HD __host__ __device__
#else
#define POLDER_HD
#endif

namespace polder {

POLDER_HD inline uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
POLDER_HD inline float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  // A select, not a branch, so that CPU loops storing bf16 vectorize.
  POLDER_HD explicit bf16(float f) {
    const uint32_t u = float_bits(f);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
    const uint32_t quiet = (u >> 16) | 0x40u;  // NaN: keep it quiet, never round it into infinity
    bits = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
  }
  POLDER_HD operator float() const { return bits_float(static_cast<uint32_t>(bits) << 16); }
};

struct f16 {
  uint16_t bits = 0;
  f16() = default;
  POLDER_HD explicit f16(float f) {
    uint32_t u = float_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) {
      bits = static_cast<uint16_t>(sign | 0x7e00u);
    } else if (a >= 0x477ff000u) {  // rounds to >= 65520: infinity
      bits = static_cast<uint16_t>(sign | 0x7c00u);
    } else if (a < 0x38800000u) {  // below the smallest normal half: subnormal, rounded to nearest even
      float af = bits_float(a);
      // Adding 0.5 (2^-1) aligns the subnormal half grid (2^-24) with float's last mantissa bit.
      uint32_t r = float_bits(af + 0.5f) - float_bits(0.5f);
      bits = static_cast<uint16_t>(sign | r);
    } else {
      uint32_t mant_odd = (a >> 13) & 1u;
      a += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + mant_odd;
      bits = static_cast<uint16_t>(sign | (a >> 13));
    }
  }
  POLDER_HD operator float() const {
    uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    uint32_t exp = (bits >> 10) & 0x1fu;
    uint32_t mant = bits & 0x3ffu;
    if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
      float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // mant * 2^-24
      return sign ? -v : v;
    }
    return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
  }
};

// Accumulation type of a storage type: double for double, float for everything else.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

}  // namespace polder
