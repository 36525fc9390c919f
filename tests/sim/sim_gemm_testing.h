// The GEMM case runner shared by the emulated GEMM tests (sim_gemm_sm80.cpp, sim_gemm_sm90_tma.cpp): random
// bf16 operands in guarded buffers, C poisoned (NaN) or random for beta != 0, the kernel through its launch
// function, gemm_reference on the same inputs; the normalised error over the M x N blocks and the count of C
// elements outside them that changed.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <vector>

#include "kernels/gemm.h"
#include "sim/runtime.h"
#include "tests/sim/sim_testing.h"

namespace polder::sim_testing {

template <typename T>
T poison() {
  T v;
  std::memset(static_cast<void*>(&v), 0xFF, sizeof(T));  // NaN in f32 and bf16
  return v;
}

struct Case {
  bool ta = false, tb = false;
  int64_t batch = 1, M = 0, N = 0, K = 0;
  float alpha = 1.0f, beta = 0.0f;
  int64_t pad = 0, gap = 0;
};

struct Result {
  double err = 0;
  int64_t outside_changed = 0;  // elements of C outside the M x N blocks that differ from what was there
};

// The kernel entry a test runs (a launch function of kernels/cuda/*.cu, or a wrapper that first REQUIREs
// something of the arguments).
using GemmLaunch = void (*)(const kernels::GemmArgs&, cudaStream_t);

// Runs `launch` on random operands of case c (lda/ldb rounded up to `ld_multiple`, then padded) and compares
// with gemm_reference.
template <typename TC>
Result run_case(const Case& c, uint64_t seed, GemmLaunch launch, int64_t ld_multiple = 1) {
  const int64_t ar = c.ta ? c.K : c.M, ac = c.ta ? c.M : c.K, br = c.tb ? c.N : c.K, bc = c.tb ? c.K : c.N;
  kernels::GemmArgs g;
  g.M = c.M, g.N = c.N, g.K = c.K, g.batch = c.batch;
  g.ab_dtype = DType::bf16;
  g.c_dtype = dtype_of<TC>();
  const auto up = [&](int64_t x) { return (x + ld_multiple - 1) / ld_multiple * ld_multiple; };
  g.trans_a = c.ta, g.lda = up(ac) + c.pad, g.stride_a = ar * g.lda + c.gap;
  g.trans_b = c.tb, g.ldb = up(bc) + c.pad, g.stride_b = br * g.ldb + c.gap;
  g.ldc = c.N + c.pad, g.stride_c = c.M * g.ldc + c.gap;
  g.alpha = c.alpha, g.beta = c.beta;

  const auto a = randn<bf16>(static_cast<size_t>(c.batch * g.stride_a), seed);
  const auto b = randn<bf16>(static_cast<size_t>(c.batch * g.stride_b), seed + 1);
  const auto rc = randn<TC>(static_cast<size_t>(c.batch * g.stride_c), seed + 2);
  std::vector<TC> c0(rc.size(), poison<TC>());
  std::vector<char> in_block(c0.size(), 0);
  for (int64_t p = 0; p < c.batch; ++p)
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) {
        const size_t at = static_cast<size_t>(p * g.stride_c + i * g.ldc + j);
        in_block[at] = 1;
        if (c.beta != 0.0f) c0[at] = rc[at];
      }

  GuardedBuf<bf16> da(a), db(b);
  GuardedBuf<TC> dc(c0);
  g.A = da.get(), g.B = db.get(), g.C = dc.get();
  launch(g, nullptr);
  device_sync();
  const std::vector<TC> got = dc.host();

  std::vector<TC> ref = c0;
  g.A = a.data(), g.B = b.data(), g.C = ref.data();
  kernels::cpu::gemm_reference(g);

  Result r;
  double num = 0, den = 1e-30;
  for (size_t k = 0; k < got.size(); ++k) {
    if (!in_block[k]) {
      r.outside_changed += std::memcmp(&got[k], &c0[k], sizeof(TC)) != 0;
      continue;
    }
    const double gv = static_cast<float>(got[k]), rv = static_cast<float>(ref[k]);
    if (!std::isfinite(gv)) num = std::numeric_limits<double>::infinity();
    num = std::max(num, std::abs(gv - rv));
    den = std::max(den, std::abs(rv));
  }
  r.err = num / den;
  return r;
}

// One case of element type TC for C, against `limit`; needs `seed`, `launch` and `ld_multiple` in scope.
#define CHECK_CASE(TC, c, limit)                                                                   \
  do {                                                                                             \
    const Result r_ = run_case<TC>((c), seed++, launch, ld_multiple);                              \
    INFO(#TC " C, batch " << (c).batch << ", beta " << (c).beta << ": normalised error " << r_.err \
                          << " (limit " << (limit) << "), elements outside the blocks changed "    \
                          << r_.outside_changed);                                                  \
    CHECK(r_.err < (limit));                                                                       \
    CHECK(r_.outside_changed == 0);                                                                \
  } while (0)

struct Shape {
  int64_t M, N, K;
};

// Every layout x shape x ld padding, f32 and bf16 C, plain (beta 0 on NaN C) and accumulating (alpha 0.5,
// beta 1, `acc_batch` batches with a batch-stride gap of 8).
template <size_t N>
void check_sweep(const Shape (&shapes)[N], std::initializer_list<int64_t> pads, int64_t acc_batch,
                 uint64_t& seed, GemmLaunch launch, int64_t ld_multiple) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const Shape& s : shapes)
        for (int64_t pad : pads) {
          INFO((ta ? "T" : "N") << (tb ? "T" : "N") << " M " << s.M << " N " << s.N << " K " << s.K
                                << " ld pad " << pad);
          const Case plain{ta, tb, 1, s.M, s.N, s.K, 1.0f, 0.0f, pad, 0};
          const Case acc{ta, tb, acc_batch, s.M, s.N, s.K, 0.5f, 1.0f, pad, 8};
          CHECK_CASE(float, plain, 1e-4);
          CHECK_CASE(bf16, plain, 1e-2);
          CHECK_CASE(float, acc, 1e-4);
          CHECK_CASE(bf16, acc, 1e-2);
        }
}

}  // namespace polder::sim_testing
