// The CUDA attention (kernels/cuda/attention.cu) against its CPU twin on fresh random q, k, v and dout: GQA,
// causal and not, S > T (queries aligned to the end), S < T (queries that see no key), several key tiles, the
// 16-byte and scalar load paths, D up to 256. Outputs poisoned with NaN bytes first. Normalised error
// max|gpu - cpu| / max|cpu|: f32 < 1e-5, bf16 < 2e-2, f16 < 1e-2; lse (fp32 for every type) < 1e-5. The
// backward must also be bitwise deterministic. Tagged [cuda]; without a device each test warns that it
// skipped.
#include <catch2/catch.hpp>

#ifdef POLDER_HAVE_CUDA

#include <cuda_runtime.h>

#include "tests/attention_testing.h"
#include "tests/cuda_testing.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/attention.h"

using namespace polder;
using kernels::AttentionShape;
using polder::testing::DevBuf;
using polder::testing::randn;

namespace {

template <typename T>
double tol() {
  return testing::attention_tol<T>();
}
constexpr double kTolLse = 1e-5;

#define CHECK_ERR POLDER_CHECK_NERR

template <typename T>
void check_attention(const AttentionShape& s, uint64_t seed) {
  using A = acc_t<T>;
  INFO("B=" << s.B << " T=" << s.T << " S=" << s.S << " Hq=" << s.Hq << " Hkv=" << s.Hkv << " D=" << s.D
            << " causal=" << s.causal);
  const size_t nq = static_cast<size_t>(s.B * s.T * s.Hq * s.D),
               nk = static_cast<size_t>(s.B * s.S * s.Hkv * s.D);
  const size_t nl = static_cast<size_t>(s.B * s.Hq * s.T);
  const auto q = randn<T>(nq, seed), k = randn<T>(nk, seed + 1), v = randn<T>(nk, seed + 2);
  const auto dout = randn<T>(nq, seed + 3);

  // CPU twin: the reference.
  std::vector<T> o(nq), dq(nq), dk(nk), dv(nk);
  std::vector<A> lse(nl);
  kernels::cpu::attention_forward<T>(s, q.data(), k.data(), v.data(), o.data(), lse.data());
  kernels::cpu::attention_backward<T>(s, q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(),
                                      dq.data(), dk.data(), dv.data());

  // GPU: forward, then the backward from the GPU's own o and lse.
  DevBuf<T> gq(q), gk(k), gv(v), gdout(dout), go(nq), gdq(nq), gdk(nk), gdv(nk);
  DevBuf<A> glse(nl);
  kernels::cuda::attention_forward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(), nullptr);
  CHECK_ERR("o", go.host(), o, tol<T>());
  CHECK_ERR("lse", glse.host(), lse, kTolLse);
  kernels::cuda::attention_backward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(), gdout.get(),
                                       gdq.get(), gdk.get(), gdv.get(), nullptr);
  const auto hdq = gdq.host(), hdk = gdk.host(), hdv = gdv.host();
  CHECK_ERR("dq", hdq, dq, tol<T>());
  CHECK_ERR("dk", hdk, dk, tol<T>());
  CHECK_ERR("dv", hdv, dv, tol<T>());

  // Deterministic: a second backward gives the same bits.
  DevBuf<T> gdq2(nq), gdk2(nk), gdv2(nk);
  kernels::cuda::attention_backward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(), gdout.get(),
                                       gdq2.get(), gdk2.get(), gdv2.get(), nullptr);
  CHECK(std::memcmp(gdq2.host().data(), hdq.data(), nq * sizeof(T)) == 0);
  CHECK(std::memcmp(gdk2.host().data(), hdk.data(), nk * sizeof(T)) == 0);
  CHECK(std::memcmp(gdv2.host().data(), hdv.data(), nk * sizeof(T)) == 0);
}

AttentionShape shape(int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, bool causal) {
  AttentionShape s;
  s.B = B, s.T = T, s.S = S, s.Hq = Hq, s.Hkv = Hkv, s.D = D, s.causal = causal;
  s.scale = 1.0 / std::sqrt(static_cast<double>(D));
  return s;
}

}  // namespace

TEMPLATE_TEST_CASE("cuda attention forward/backward match the CPU twin", "[cuda]", float, bf16, f16) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 100;
  for (bool causal : {true, false}) {
    check_attention<TestType>(shape(2, 7, 7, 6, 2, 24, causal), seed += 10);      // GQA, odd T, D = 24
    check_attention<TestType>(shape(1, 5, 19, 4, 2, 32, causal), seed += 10);     // S > T: queries at the end
    check_attention<TestType>(shape(1, 130, 130, 2, 1, 64, causal), seed += 10);  // several key tiles
    check_attention<TestType>(shape(1, 33, 40, 4, 4, 128, causal), seed += 10);   // D = 128, MHA
    check_attention<TestType>(shape(2, 11, 13, 3, 1, 20, causal), seed += 10);    // D % 8 != 0: scalar loads
    check_attention<TestType>(shape(1, 17, 17, 2, 1, 256, causal),
                              seed += 10);  // D = 256: 64 KiB tiles in f32
  }
  check_attention<TestType>(shape(1, 9, 4, 2, 1, 16, true), seed += 10);  // S < T: early queries see no key
}

TEST_CASE("cuda attention rejects an unsupported head dim", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const AttentionShape s = shape(1, 4, 4, 2, 1, 264, true);
  CHECK_THROWS_AS(
      kernels::cuda::attention_forward<float>(s, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr),
      std::invalid_argument);
}

#else

TEST_CASE("cuda attention: built without CUDA", "[cuda]") {
  WARN("skipped: polder was built without CUDA (POLDER_HAVE_CUDA undefined)");
  SUCCEED();
}

#endif
