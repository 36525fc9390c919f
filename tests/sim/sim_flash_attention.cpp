// The flash attention kernels (kernels/cuda/flash_attention.cu: mma.sync, ldmatrix, cp.async), compiled as
// C++ and run on the CPU emulator (tests/sim), against the f32 CPU twin on the same bf16/f16-rounded inputs,
// as tests/test_cuda_flash_attention.cpp does on a GPU: bf16 and f16, D 64 and 128, causal and not, GQA
// ratios 1 and 4, T = 1, 7, 65, 129, S != T both ways. Outputs poisoned (NaN bytes) before each call; buffers
// end at a PROT_NONE page. Normalised error max|got - ref| / max|ref|: bf16 < 2e-2, f16 < 1e-2, lse < 1e-4.
// The backward twice: the same bits.
#include <catch2/catch.hpp>

#ifndef POLDER_HAVE_CUDA
#define POLDER_HAVE_CUDA 1  // the declarations of the emulated kernels in kernels/attention.h
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/attention.h"
#include "sim/runtime.h"
#include "tests/attention_testing.h"
#include "tests/sim/sim_testing.h"

using namespace polder;
using kernels::AttentionShape;
using sim_testing::device_sync;
using sim_testing::GuardedBuf;
using sim_testing::randn;
using testing::to_f32;

namespace {

template <typename T>
double tol() {
  return testing::attention_tol<T>();
}
constexpr double kTolLse = 1e-4;

#define CHECK_ERR POLDER_CHECK_NERR

AttentionShape shape(int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, bool causal) {
  return testing::attention_shape(B, T, S, Hq, Hkv, D, causal);
}

template <typename T>
void check_flash(const AttentionShape& s, uint64_t seed) {
  INFO("B=" << s.B << " T=" << s.T << " S=" << s.S << " Hq=" << s.Hq << " Hkv=" << s.Hkv << " D=" << s.D
            << " causal=" << s.causal);
  const size_t nq = static_cast<size_t>(s.B * s.T * s.Hq * s.D),
               nk = static_cast<size_t>(s.B * s.S * s.Hkv * s.D);
  const size_t nl = static_cast<size_t>(s.B * s.Hq * s.T);
  const auto q = randn<T>(nq, seed), k = randn<T>(nk, seed + 1), v = randn<T>(nk, seed + 2);
  const auto dout = randn<T>(nq, seed + 3);
  const auto qf = to_f32(q), kf = to_f32(k), vf = to_f32(v), gf = to_f32(dout);
  std::vector<float> o(nq), lse(nl), dq(nq), dk(nk), dv(nk);
  kernels::cpu::attention_forward<float>(s, qf.data(), kf.data(), vf.data(), o.data(), lse.data());
  kernels::cpu::attention_backward<float>(s, qf.data(), kf.data(), vf.data(), o.data(), lse.data(), gf.data(),
                                          dq.data(), dk.data(), dv.data());

  GuardedBuf<T> gq(q), gk(k), gv(v), gdout(dout), go(nq), gdq(nq), gdk(nk), gdv(nk);
  GuardedBuf<float> glse(nl);
  const uint64_t mma_before = sim::counters().mma;
  kernels::cuda::flash_attention_forward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(), nullptr);
  device_sync();
  CHECK_ERR("o", go.host(), o, tol<T>());
  CHECK_ERR("lse", glse.host(), lse, kTolLse);
  kernels::cuda::flash_attention_backward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                             gdout.get(), gdq.get(), gdk.get(), gdv.get(), nullptr);
  device_sync();
  const auto hdq = gdq.host(), hdk = gdk.host(), hdv = gdv.host();
  CHECK_ERR("dq", hdq, dq, tol<T>());
  CHECK_ERR("dk", hdk, dk, tol<T>());
  CHECK_ERR("dv", hdv, dv, tol<T>());
  CHECK(sim::counters().mma > mma_before);  // the tensor-core path ran
  // Deterministic: no atomics, a second backward gives the same bits.
  GuardedBuf<T> gdq2(nq), gdk2(nk), gdv2(nk);
  kernels::cuda::flash_attention_backward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                             gdout.get(), gdq2.get(), gdk2.get(), gdv2.get(), nullptr);
  device_sync();
  CHECK(std::memcmp(gdq2.get(), hdq.data(), nq * sizeof(T)) == 0);
  CHECK(std::memcmp(gdk2.get(), hdk.data(), nk * sizeof(T)) == 0);
  CHECK(std::memcmp(gdv2.get(), hdv.data(), nk * sizeof(T)) == 0);
}

}  // namespace

// Twice: cp.async copies landing at their wait_group (a missing wait reads poison) and at issue (a copy into
// a tile that other warps still read corrupts it).
TEMPLATE_TEST_CASE("emulated flash attention forward/backward match the CPU twin", "[sim]", bf16, f16) {
  const auto timing = GENERATE(sim::CopyTiming::at_wait, sim::CopyTiming::at_issue);
  INFO("cp.async copies land " << (timing == sim::CopyTiming::at_wait ? "at wait_group" : "at issue"));
  sim::set_copy_timing(timing);
  uint64_t seed = 2000;
  for (int64_t D : {64, 128})
    for (bool causal : {true, false}) {
      check_flash<TestType>(shape(1, 1, 5, 4, 1, D, causal), seed += 10);  // one query, GQA 4
      check_flash<TestType>(shape(2, 7, causal ? 7 : 13, 4, 1, D, causal),
                            seed += 10);                                      // S > T unless causal
      check_flash<TestType>(shape(1, 65, 65, 2, 2, D, causal), seed += 10);   // GQA 1, a 1-row tile
      check_flash<TestType>(shape(1, 129, 77, 4, 1, D, causal), seed += 10);  // S < T: causal rows see no key
      check_flash<TestType>(shape(1, 100, 137, 2, 1, D, causal), seed += 10);  // S > T: queries at the end
    }
  check_flash<TestType>(shape(1, 129, 129, 1, 1, 64, true), seed += 10);  // three query and key tiles
  // One query over one key, causal: dq = dk = 0 in exact arithmetic; the error measure's floor
  // (tests/attention_testing.h) compares that rounding noise absolutely, as test_cuda_flash_attention needs.
  check_flash<TestType>(shape(1, 1, 1, 8, 1, 64, true), seed += 10);
  sim::set_copy_timing(sim::CopyTiming::at_wait);
}

// One query and one key, causal: P = 1, so o = v, dv = dO, and dS = P (dO.v - dO.o) = 0 up to rounding (a
// normalised error against a reference of zeros would only measure rounding noise).
TEMPLATE_TEST_CASE("emulated flash attention: one query, one key", "[sim]", bf16, f16) {
  for (int64_t D : {64, 128}) {
    const AttentionShape s = shape(1, 1, 1, 4, 1, D, true);
    const size_t nq = static_cast<size_t>(4 * D), nk = static_cast<size_t>(D);
    const auto q = randn<TestType>(nq, 11), k = randn<TestType>(nk, 12), v = randn<TestType>(nk, 13);
    const auto dout = randn<TestType>(nq, 14);
    GuardedBuf<TestType> gq(q), gk(k), gv(v), gdout(dout), go(nq), gdq(nq), gdk(nk), gdv(nk);
    GuardedBuf<float> glse(4);
    kernels::cuda::flash_attention_forward<TestType>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                                     nullptr);
    device_sync();
    for (size_t i = 0; i < nq; ++i) REQUIRE(go.get()[i].bits == v[i % nk].bits);
    kernels::cuda::flash_attention_backward<TestType>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                                      gdout.get(), gdq.get(), gdk.get(), gdv.get(), nullptr);
    device_sync();
    float max_dqk = 0.f;
    for (size_t i = 0; i < nq; ++i) max_dqk = std::max(max_dqk, std::abs(static_cast<float>(gdq.get()[i])));
    for (size_t i = 0; i < nk; ++i) max_dqk = std::max(max_dqk, std::abs(static_cast<float>(gdk.get()[i])));
    CHECK(max_dqk < 1e-4f);
    for (size_t d = 0; d < nk; ++d) {  // dv = sum over the group's 4 query heads of dO
      float want = 0.f;
      for (size_t h = 0; h < 4; ++h) want += static_cast<float>(dout[h * nk + d]);
      CHECK(std::abs(static_cast<float>(gdv.get()[d]) - want) <= 1e-2f * (1.f + std::abs(want)));
    }
  }
}

TEST_CASE("emulated flash attention: shapes it does not take are refused with the reason", "[sim]") {
  const AttentionShape s = shape(1, 4, 4, 2, 1, 96, true);
  CHECK_FALSE(kernels::cuda::flash_attention_supported<bf16>(s, {}));
  CHECK_FALSE(kernels::cuda::flash_attention_supported<float>(shape(1, 4, 4, 2, 1, 64, true), {}));
  GuardedBuf<bf16> q(4 * 2 * 96), k(4 * 96), o(4 * 2 * 96);
  GuardedBuf<float> lse(8);
  CHECK_THROWS_WITH(
      kernels::cuda::flash_attention_forward<bf16>(s, q.get(), k.get(), k.get(), o.get(), lse.get(), nullptr),
      Catch::Contains("D=96"));
}
