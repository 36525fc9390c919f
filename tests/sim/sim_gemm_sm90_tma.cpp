// polder's own bf16 GEMM for Hopper (kernels/cuda/gemm_sm90_tma.cu: TMA loads into a 4-stage mbarrier ring,
// a producer warpgroup and two wgmma consumer warpgroups, persistent grid), compiled as C++ and run through
// its launch function on the CPU emulator (tests/sim, compute capability 9.0, 4 SMs), against
// kernels::cpu::gemm_reference on the same inputs: layouts NN, NT, TN, TT; M x N x K 1x1x1, 7x129x100,
// 129x7x70, 300x520x64 (9 tiles on 4 SMs: the persistent loop), 64x200x70 (K tails, partial MN boxes,
// MN-major tiles narrower than one box), 100x100x600 (10 k-tiles through the 4-stage ring); lda/ldb the
// columns rounded up to 8 (TMA strides) plus pads 0 and 8, ldc padded by 0 and 8; f32 and bf16 C; beta 0 on C
// poisoned with NaN and beta 1 (alpha 0.5) over 2 batches with gaps. C outside the M x N blocks must come
// back byte for byte. Normalised error max|got - ref| / max|ref|: f32 C < 1e-4, bf16 C < 1e-2 (as on a GPU).
// Twice: wgmma running at the wait_group that retires it (a stage released before then is overwritten under
// it) and at issue.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/gemm.h"
#include "sim/runtime.h"
#include "tests/sim/sim_testing.h"

namespace polder::kernels::cuda::detail {
void gemm_bf16_sm90_tma(const GemmArgs& g, cudaStream_t stream);  // kernels/cuda/gemm_sm90_tma.cu
bool gemm_sm90_tma_available();
bool gemm_sm90_tma_supported(const GemmArgs& g);
}  // namespace polder::kernels::cuda::detail

using namespace polder;
using sim_testing::GuardedBuf;
using sim_testing::randn;

namespace {

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

template <typename TC>
Result run_case(const Case& c, uint64_t seed) {
  const int64_t ar = c.ta ? c.K : c.M, ac = c.ta ? c.M : c.K, br = c.tb ? c.N : c.K, bc = c.tb ? c.K : c.N;
  kernels::GemmArgs g;
  g.M = c.M, g.N = c.N, g.K = c.K, g.batch = c.batch;
  g.ab_dtype = DType::bf16;
  g.c_dtype = dtype_of<TC>();
  const auto up8 = [](int64_t x) { return (x + 7) / 8 * 8; };  // TMA: strides in multiples of 16 bytes
  g.trans_a = c.ta, g.lda = up8(ac) + c.pad, g.stride_a = ar * g.lda + c.gap;
  g.trans_b = c.tb, g.ldb = up8(bc) + c.pad, g.stride_b = br * g.ldb + c.gap;
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
  REQUIRE(kernels::cuda::detail::gemm_sm90_tma_supported(g));
  kernels::cuda::detail::gemm_bf16_sm90_tma(g, nullptr);
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

#define CHECK_CASE(TC, c, limit)                                                                   \
  do {                                                                                             \
    const Result r_ = run_case<TC>((c), seed++);                                                   \
    INFO(#TC " C, batch " << (c).batch << ", beta " << (c).beta << ": normalised error " << r_.err \
                          << " (limit " << (limit) << "), elements outside the blocks changed "    \
                          << r_.outside_changed);                                                  \
    CHECK(r_.err < (limit));                                                                       \
    CHECK(r_.outside_changed == 0);                                                                \
  } while (0)

struct Shape {
  int64_t M, N, K;
};

}  // namespace

TEST_CASE("emulated TMA GEMM (sm_90a: TMA, mbarrier, wgmma) matches gemm_reference on every layout",
          "[sim]") {
  sim::set_arch(9);
  REQUIRE(kernels::cuda::detail::gemm_sm90_tma_available());
  const auto timing = GENERATE(sim::WgmmaTiming::at_wait, sim::WgmmaTiming::at_issue);
  INFO("wgmma runs " << (timing == sim::WgmmaTiming::at_wait ? "at the wait_group retiring it" : "at issue"));
  sim::set_wgmma_timing(timing);
  // The last: 10 k-tiles through the 4-stage ring in one tile (phases wrap; stages are reused while the
  // consumers still have wgmma groups in flight).
  const Shape shapes[] = {{1, 1, 1},      {7, 129, 100}, {129, 7, 70},
                          {300, 520, 64}, {64, 200, 70}, {100, 100, 600}};
  uint64_t seed = 5000;
  const sim::Counters before = sim::counters();
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const Shape& s : shapes)
        for (int64_t pad : {0, 8}) {
          INFO((ta ? "T" : "N") << (tb ? "T" : "N") << " M " << s.M << " N " << s.N << " K " << s.K
                                << " ld pad " << pad);
          const Case plain{ta, tb, 1, s.M, s.N, s.K, 1.0f, 0.0f, pad, 0};
          const Case acc{ta, tb, 2, s.M, s.N, s.K, 0.5f, 1.0f, pad, 8};
          CHECK_CASE(float, plain, 1e-4);
          CHECK_CASE(bf16, plain, 1e-2);
          CHECK_CASE(float, acc, 1e-4);
          CHECK_CASE(bf16, acc, 1e-2);
        }
  const sim::Counters& after = sim::counters();
  CHECK(after.wgmma > before.wgmma);
  CHECK(after.tma > before.tma);
  CHECK(after.mbar_blocked_waits > before.mbar_blocked_waits);  // the consumers did wait for the producer
  CHECK(after.setmaxnreg > before.setmaxnreg);
  sim::set_wgmma_timing(sim::WgmmaTiming::at_wait);
}
