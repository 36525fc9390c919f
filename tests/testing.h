// Test helpers: random tensors, comparisons with a normalised error, and a finite-difference gradient check
// in f64 (the independent oracle for every op's backward).
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace polder::testing {

// A fresh, empty directory build/tests/<group>/<name> for a test's files.
inline std::string fresh_dir(const std::string& group, const std::string& name) {
  std::filesystem::path p = std::filesystem::path(POLDER_BINARY_DIR) / "tests" / group / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

inline Tensor randn(const Shape& shape, uint64_t key, DType dtype = DType::f64, double std = 1.0) {
  Tensor t = Tensor::empty(shape, dtype);
  rng::fill_normal(t, 1234, key, 0.0, std);
  return t;
}

inline Tensor randu(const Shape& shape, uint64_t key, double lo, double hi, DType dtype = DType::f64) {
  Tensor t = Tensor::empty(shape, dtype);
  rng::fill_uniform(t, 1234, key, lo, hi);
  return t;
}

inline std::vector<double> values(const Tensor& t) {
  return t.to(DType::f64).to_vector<double>();
}

// max |a - b| / max(max |b|, tiny): the normalised error of a against reference b.
inline double rel_error(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  auto av = values(a), bv = values(b);
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < av.size(); ++i) {
    num = std::max(num, std::abs(av[i] - bv[i]));
    den = std::max(den, std::abs(bv[i]));
  }
  return num / den;
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  auto av = values(a), bv = values(b);
  double m = 0;
  for (size_t i = 0; i < av.size(); ++i) m = std::max(m, std::abs(av[i] - bv[i]));
  return m;
}

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Checks d(sum(f(x) * R))/dx for a fixed random R against central differences, for every element of every
// input that requires grad. Returns the worst |analytic - numeric| / (1 + |numeric|).
inline double gradcheck(const Fn& f, std::vector<Tensor> inputs, double eps = 1e-6) {
  for (Tensor& x : inputs) REQUIRE(x.dtype() == DType::f64);
  Tensor out = f(inputs);
  Tensor r = randn(out.shape(), 999);
  auto loss_of = [&](const std::vector<Tensor>& xs) {
    NoGradGuard ng;
    Tensor o = f(xs);
    auto ov = values(o), rv = values(r);
    double s = 0;
    for (size_t i = 0; i < ov.size(); ++i) s += ov[i] * rv[i];
    return s;
  };
  for (Tensor& x : inputs)
    if (x.requires_grad()) x.grad() = Tensor();
  Tensor loss = ops::sum(ops::mul(out, r));
  loss.backward();
  double worst = 0;
  for (Tensor& x : inputs) {
    if (!x.requires_grad()) continue;
    REQUIRE(x.grad().defined());
    auto analytic = values(x.grad());
    double* p = x.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double saved = p[i];
      p[i] = saved + eps;
      const double lp = loss_of(inputs);
      p[i] = saved - eps;
      const double lm = loss_of(inputs);
      p[i] = saved;
      const double numeric = (lp - lm) / (2 * eps);
      worst =
          std::max(worst, std::abs(analytic[static_cast<size_t>(i)] - numeric) / (1.0 + std::abs(numeric)));
    }
  }
  return worst;
}

// Asserts that calling f throws polder::Error whose message contains `needle`.
template <typename F>
void require_error(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    INFO("message: " << e.message());
    CHECK(e.message().find(needle) != std::string::npos);
    return;
  }
  FAIL("expected polder::Error containing '" << needle << "'");
}

}  // namespace polder::testing
