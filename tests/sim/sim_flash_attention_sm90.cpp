// The Hopper flash-attention forward (kernels/cuda/flash_attention_sm90.cu: TMA 4-D loads into a 2-stage
// mbarrier ring, a producer warpgroup and two wgmma consumer warpgroups, P fed to wgmma from registers),
// compiled as C++ and run on the CPU emulator (tests/sim, compute capability 9.0), against the f32 CPU twin
// on the same bf16/f16-rounded inputs, as tests/test_cuda_flash_attention.cpp does on a GPU: bf16 and f16, D
// 64 and 128, causal and not, GQA ratios 1 and 4, T = 1, 7, 129, 200, S != T both ways. Outputs poisoned (NaN
// bytes) before each call; buffers end at a PROT_NONE page. Error measure and tolerances: tests/
// attention_testing.h (nerr; attention_tol for o, 1e-4 for lse). Twice: wgmma running at the wait_group that
// retires it and at issue.
#include <catch2/catch.hpp>

#ifndef POLDER_HAVE_CUDA
#define POLDER_HAVE_CUDA 1  // the declarations of the emulated kernels in kernels/attention.h
#endif

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/attention.h"
#include "sim/runtime.h"
#include "tests/attention_testing.h"
#include "tests/sim/sim_testing.h"

using namespace polder;
using kernels::AttentionShape;
using sim_testing::GuardedBuf;
using sim_testing::randn;
using testing::to_f32;

namespace {

constexpr double kTolLse = 1e-4;

template <typename T>
void check_forward(const AttentionShape& s, uint64_t seed) {
  INFO("B=" << s.B << " T=" << s.T << " S=" << s.S << " Hq=" << s.Hq << " Hkv=" << s.Hkv << " D=" << s.D
            << " causal=" << s.causal);
  const size_t nq = static_cast<size_t>(s.B * s.T * s.Hq * s.D),
               nk = static_cast<size_t>(s.B * s.S * s.Hkv * s.D);
  const size_t nl = static_cast<size_t>(s.B * s.Hq * s.T);
  const auto q = randn<T>(nq, seed), k = randn<T>(nk, seed + 1), v = randn<T>(nk, seed + 2);
  const auto qf = to_f32(q), kf = to_f32(k), vf = to_f32(v);
  std::vector<float> o(nq), lse(nl);
  kernels::cpu::attention_forward<float>(s, qf.data(), kf.data(), vf.data(), o.data(), lse.data());

  GuardedBuf<T> gq(q), gk(k), gv(v), go(nq);
  GuardedBuf<float> glse(nl);
  REQUIRE(kernels::cuda::flash_attention_sm90_supported<T>(s, {gq.get(), gk.get(), gv.get(), go.get()}));
  const uint64_t wgmma_before = sim::counters().wgmma;
  kernels::cuda::flash_attention_sm90_forward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                                 nullptr);
  sim_testing::device_sync();
  POLDER_CHECK_NERR("o", go.host(), o, testing::attention_tol<T>());
  POLDER_CHECK_NERR("lse", glse.host(), lse, kTolLse);
  CHECK(sim::counters().wgmma > wgmma_before);  // the wgmma path ran
}

}  // namespace

TEMPLATE_TEST_CASE("emulated sm_90a flash attention forward matches the CPU twin", "[sim]", bf16, f16) {
  sim::set_arch(9);
  REQUIRE(kernels::cuda::flash_attention_sm90_available());
  const auto timing = GENERATE(sim::WgmmaTiming::at_wait, sim::WgmmaTiming::at_issue);
  INFO("wgmma runs " << (timing == sim::WgmmaTiming::at_wait ? "at the wait_group retiring it" : "at issue"));
  sim::set_wgmma_timing(timing);
  uint64_t seed = 7000;
  const sim::Counters before = sim::counters();
  for (int64_t D : {64, 128})
    for (bool causal : {true, false}) {
      const auto shape = [&](int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv) {
        return testing::attention_shape(B, T, S, Hq, Hkv, D, causal);
      };
      check_forward<TestType>(shape(1, 1, 5, 4, 1), seed += 10);                // one query, GQA 4
      check_forward<TestType>(shape(2, 7, causal ? 7 : 13, 4, 1), seed += 10);  // S > T unless causal
      check_forward<TestType>(shape(1, 129, 129, 2, 2), seed += 10);            // GQA 1, a 1-row tile
      check_forward<TestType>(shape(1, 200, 77, 4, 1), seed += 10);   // S < T: causal rows see no key
      check_forward<TestType>(shape(1, 129, 300, 2, 1), seed += 10);  // S > T: 3 key tiles through 2 stages
      check_forward<TestType>(shape(1, 200, 200, 1, 1), seed += 10);
    }
  const sim::Counters& after = sim::counters();
  CHECK(after.tma > before.tma);
  CHECK(after.mbar_blocked_waits > before.mbar_blocked_waits);
  CHECK(after.setmaxnreg > before.setmaxnreg);
  sim::set_wgmma_timing(sim::WgmmaTiming::at_wait);
}
