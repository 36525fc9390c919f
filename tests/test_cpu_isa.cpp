// The CPU instruction-set choice (kernels/cpu/isa.h): the level never exceeds what the CPU runs, follows
// POLDER_CPU_ISA when it is set (ctest runs this file again with POLDER_CPU_ISA=baseline), and caps oneDNN
// to the same level, so the baseline runs of the numerics tests really run the baseline code.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/vmath.h"
#include "kernels/gemm.h"

using namespace polder::kernels::cpu;

TEST_CASE("the chosen ISA is supported and follows POLDER_CPU_ISA", "[isa]") {
  const CpuIsa isa = cpu_isa(), best = cpu_isa_supported();
  CHECK(static_cast<int>(isa) <= static_cast<int>(best));
  const char* env = std::getenv("POLDER_CPU_ISA");
  const std::string want = env ? env : "";
  if (want.empty() || want == "best")
    CHECK(isa == best);
  else
    CHECK(std::string(cpu_isa_name(isa)) == want);
  const std::string described = cpu_isa_describe();
  INFO(described);
  CHECK(described.rfind(cpu_isa_name(isa), 0) == 0);
#ifdef POLDER_HAVE_ONEDNN
  // oneDNN's effective ISA after the cap: sse41 for the baseline, avx2 for avx2.
  if (want == "baseline" && !std::getenv("ONEDNN_MAX_CPU_ISA"))
    CHECK(described.find("oneDNN: sse41") != std::string::npos);
  if (want == "avx2" && !std::getenv("ONEDNN_MAX_CPU_ISA"))
    CHECK(described.find("oneDNN: avx2") != std::string::npos);
#endif
}

TEST_CASE("the ISA level names", "[isa]") {
  CHECK(std::string(cpu_isa_name(CpuIsa::baseline)) == "baseline");
  CHECK(std::string(cpu_isa_name(CpuIsa::avx2)) == "avx2");
  CHECK(std::string(cpu_isa_name(CpuIsa::avx512)) == "avx512");
}

// kernels/cpu/vmath.h: the vectorized exp of the softmax, cross-entropy, attention and SiLU kernels against
// double-precision exp over its whole range, and its edge values.
TEST_CASE("exp_approx: within 1.5e-7 relative of exp, 0 below the float range, NaN kept", "[isa][vmath]") {
  double worst = 0, worst_x = 0;
  for (int i = 0; i <= 2000000; ++i) {
    const float x = -87.3f + static_cast<float>(i) * (88.3f + 87.3f) / 2000000.0f;
    const double want = std::exp(static_cast<double>(x));
    const double err =
        std::abs(static_cast<double>(polder::kernels::cpu::vmath::exp_approx(x)) - want) / want;
    if (err > worst) worst = err, worst_x = x;
  }
  INFO("worst relative error " << worst << " at x = " << worst_x);
  CHECK(worst < 1.5e-7);  // 1.0e-7 measured: the degree-6 polynomial had 2.5e-7
  using polder::kernels::cpu::vmath::exp_approx;
  CHECK(exp_approx(0.0f) == 1.0f);
  CHECK(exp_approx(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(exp_approx(-100.0f) == 0.0f);
  CHECK(std::isfinite(exp_approx(1000.0f)));
  CHECK(exp_approx(1000.0f) > 1e38f);
  CHECK(std::isnan(exp_approx(std::numeric_limits<float>::quiet_NaN())));
}

// The fixed-lane row sums: a sum over n elements equals lane-wise partial sums combined pairwise, for every
// n around the lane count (the tails), so it cannot depend on the vector width the compiler chose.
TEST_CASE("row sums use kLanes fixed partial sums", "[isa][vmath]") {
  namespace vm = polder::kernels::cpu::vmath;
  std::vector<float> x(100);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i) * 0.7f) * 3.0f;
  for (int64_t n : {0, 1, 15, 16, 17, 31, 32, 33, 100}) {
    float lanes[vm::kLanes] = {}, plain[vm::kLanes] = {};
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) {
      lanes[i % vm::kLanes] += vm::exp_approx(2.0f * x[static_cast<size_t>(i)] - 1.0f);
      plain[i % vm::kLanes] += x[static_cast<size_t>(i)];
      m = std::max(m, x[static_cast<size_t>(i)]);
    }
    const float want = vm::sum_lanes(lanes);
    CHECK(vm::row_sum_exp(x.data(), n, 2.0f, 1.0f) == want);
    CHECK(vm::row_sum(x.data(), n) == vm::sum_lanes(plain));
    CHECK(vm::row_max(x.data(), n) == m);
  }
}
