// Host-side random test inputs shared by the CPU, CUDA and emulated-device tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace polder::testing {

// n values drawn from normal(mean, std) in float, then converted to T.
template <typename T>
std::vector<T> randn(size_t n, uint64_t seed, float std = 1.0f, float mean = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(mean, std);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(dist(rng));
  return v;
}

}  // namespace polder::testing
