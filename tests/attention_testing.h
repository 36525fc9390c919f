// Helpers shared by the attention tests (test_cuda_attention, test_cuda_flash_attention,
// test_cuda_flash_attention_sm90 and the emulated ones under tests/sim/): shapes, the normalised error
// max|got - ref| / max|ref| with infinities that must match, and the per-dtype tolerances.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/attention.h"
#include "kernels/half.h"

namespace polder::testing {

inline kernels::AttentionShape attention_shape(int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv,
                                               int64_t D, bool causal) {
  kernels::AttentionShape s;
  s.B = B, s.T = T, s.S = S, s.Hq = Hq, s.Hkv = Hkv, s.D = D, s.causal = causal;
  s.scale = 1.0 / std::sqrt(static_cast<double>(D));
  return s;
}

template <typename T>
std::vector<float> to_f32(const std::vector<T>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = static_cast<float>(x[i]);
  return y;
}

// max |got - ref| / max(max |ref|, 1e-3) over elements compared in float; infinities must match (the lse of a
// query that sees no key), a NaN on either side gives infinity. The floor: a reference that is zero in exact
// arithmetic (dq and dk of one query over one key: P = 1, dS = P (dP - Di) = 0) is rounding noise on both
// sides, so normalising by it would compare noise with noise; the tests' inputs are O(1), so every other
// output's max |ref| is far above 1e-3.
template <typename G, typename R>
double nerr(const std::vector<G>& got, const std::vector<R>& ref) {
  REQUIRE(got.size() == ref.size());
  double num = 0, den = 1e-3;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<float>(got[i]), r = static_cast<float>(ref[i]);
    if (std::isinf(r) || std::isinf(g)) {
      if (g != r) return std::numeric_limits<double>::infinity();
      continue;
    }
    if (std::isnan(g) || std::isnan(r)) return std::numeric_limits<double>::infinity();
    num = std::max(num, std::abs(g - r));
    den = std::max(den, std::abs(r));
  }
  return num / den;
}

// Normalised-error limits of attention outputs and gradients computed in T with f32 accumulation.
template <typename T>
double attention_tol() {
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  if constexpr (std::is_same_v<T, bf16>) return 2e-2;
  return 1e-2;  // f16
}

}  // namespace polder::testing

#define POLDER_CHECK_NERR(name, got, ref, limit)                               \
  do {                                                                         \
    const double e_ = ::polder::testing::nerr(got, ref);                       \
    INFO(name << ": normalised error " << e_ << " (limit " << (limit) << ")"); \
    CHECK(e_ < (limit));                                                       \
  } while (0)
