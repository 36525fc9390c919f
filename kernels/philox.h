// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a counter-based RNG.
// The value of element i is a pure function of (seed, stream key, i), so any slice of a tensor can be filled
// without generating the rest, on any device, in any order.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/half.h"

namespace polder::philox {

struct U4 {
  uint32_t v[4];
};

POLDER_HD inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// counter = (block index lo, hi, stream key lo, hi), key = seed.
POLDER_HD inline U4 block(uint64_t seed, uint64_t stream, uint64_t index) {
  uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return U4{{c0, c1, c2, c3}};
}

// Uniform in (0, 1]: never 0, so log() in Box-Muller is finite.
POLDER_HD inline double to_unit(uint32_t a, uint32_t b) {
  uint64_t x = (static_cast<uint64_t>(a) << 21) ^ (b >> 11);  // 53 random bits
  return (static_cast<double>(x & ((1ull << 53) - 1)) + 1.0) * (1.0 / 9007199254740992.0);
}

// Element i: uniform in (0, 1], from block i / 2 (two elements per 128-bit block).
POLDER_HD inline double uniform(uint64_t seed, uint64_t stream, uint64_t i) {
  U4 r = block(seed, stream, i >> 1);
  return (i & 1) ? to_unit(r.v[2], r.v[3]) : to_unit(r.v[0], r.v[1]);
}

// Element i: standard normal by Box-Muller from block i / 2 (the pair shares one block).
POLDER_HD inline double normal(uint64_t seed, uint64_t stream, uint64_t i) {
  U4 r = block(seed, stream ^ 0x6e6f726d616cull, i >> 1);
  double u1 = to_unit(r.v[0], r.v[1]), u2 = to_unit(r.v[2], r.v[3]);
  double radius = sqrt(-2.0 * log(u1));
  double angle = 6.283185307179586 * u2;
  return (i & 1) ? radius * sin(angle) : radius * cos(angle);
}

}  // namespace polder::philox
