// kernels::cpu::gemm (oneDNN) against the reference GEMM: every transpose combination, batches, alpha/beta,
// padded leading dimensions, f32 and bf16 (with f32 output).
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "kernels/gemm.h"
#include "tests/testing.h"

using namespace polder;
using namespace polder::testing;

namespace {
double run_case(DType ab, DType c_dtype, bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K,
                float alpha, float beta, int64_t pad) {
  const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
  Tensor A = randn({batch, ar, ac + pad}, 1, DType::f32).to(ab);
  Tensor B = randn({batch, br, bc + pad}, 2, DType::f32).to(ab);
  Tensor C0 = randn({batch, M, N + pad}, 3, DType::f32).to(c_dtype);
  Tensor C1 = C0.clone();
  kernels::GemmArgs g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.batch = batch;
  g.ab_dtype = ab;
  g.c_dtype = c_dtype;
  g.A = A.raw_data();
  g.trans_a = ta;
  g.lda = ac + pad;
  g.stride_a = ar * (ac + pad);
  g.B = B.raw_data();
  g.trans_b = tb;
  g.ldb = bc + pad;
  g.stride_b = br * (bc + pad);
  g.ldc = N + pad;
  g.stride_c = M * (N + pad);
  g.alpha = alpha;
  g.beta = beta;
  g.C = C0.raw_data();
  kernels::cpu::gemm(g);
  g.C = C1.raw_data();
  kernels::cpu::gemm_reference(g);
  return rel_error(C0, C1);
}
}  // namespace

TEST_CASE("oneDNN GEMM matches the reference GEMM", "[gemm]") {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int64_t batch : {1, 3}) {
        INFO("ta " << ta << " tb " << tb << " batch " << batch);
        CHECK(run_case(DType::f32, DType::f32, ta, tb, batch, 37, 29, 53, 1.0f, 0.0f, 0) < 1e-5);
        CHECK(run_case(DType::f32, DType::f32, ta, tb, batch, 16, 24, 8, 0.5f, 1.0f, 3) < 1e-5);
        CHECK(run_case(DType::bf16, DType::f32, ta, tb, batch, 33, 17, 64, 1.0f, 1.0f, 0) < 1e-5);
        CHECK(run_case(DType::bf16, DType::bf16, ta, tb, batch, 33, 17, 64, 1.0f, 0.0f, 0) < 1e-2);
      }
}

TEST_CASE("GEMM backends", "[gemm]") {
  kernels::GemmArgs g;
  g.M = g.N = g.K = 64;
  g.lda = g.ldb = g.ldc = 64;
  g.ab_dtype = g.c_dtype = DType::f32;
#ifdef POLDER_HAVE_ONEDNN
  CHECK(std::string(kernels::cpu::gemm_backend(g)) == "onednn");
#endif
  g.ab_dtype = g.c_dtype = DType::f64;
  CHECK(std::string(kernels::cpu::gemm_backend(g)) == "reference");
}

namespace {
// y = x W^T (the forward layout) or dx = dy W (the input-gradient layout) with W (N x K or K x N) marked as a
// weight named `id`; returns C.
Tensor weight_gemm(const Tensor& x, const Tensor& w, bool forward, uint64_t id, bool reference = false) {
  const int64_t M = x.size(0), K = x.size(1), N = forward ? w.size(0) : w.size(1);
  Tensor c = Tensor::zeros({M, N}, DType::f32);
  kernels::GemmArgs g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.ab_dtype = x.dtype();
  g.c_dtype = DType::f32;
  g.A = x.raw_data();
  g.lda = K;
  g.B = w.raw_data();
  g.trans_b = forward;
  g.ldb = forward ? K : N;
  g.C = c.raw_data();
  g.ldc = N;
  g.b_weight = id;
  if (reference) {
    kernels::cpu::gemm_reference(g);
  } else {
    kernels::cpu::gemm(g);
  }
  return c;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}
}  // namespace

// The copies a WeightScope lets the GEMM keep (packed layouts, f32 copies of bf16 weights) must never outlive
// the weight's contents: every result is checked against the reference GEMM on the weight as it is now.
TEST_CASE("GEMM weight copies follow the weight's contents", "[gemm]") {
  namespace kc = kernels::cpu;
  for (DType dt : {DType::f32, DType::bf16}) {
    INFO("dtype " << dtype_name(dt));
    const double tol = 1e-5;  // C is f32 and both sides accumulate in f32 (K = 96)
    const int64_t M = 64, K = 96, N = 80;
    Tensor x = randn({M, K}, 11, DType::f32).to(dt);
    Tensor w = randn({N, K}, 12, DType::f32).to(dt);  // the forward layout: y = x W^T
    Tensor w2 = randn({N, K}, 13, DType::f32).to(dt);
    const uint64_t id = 1000 + static_cast<uint64_t>(dt);  // any nonzero name the test controls
    const Tensor expect = weight_gemm(x, w, true, 0, true);
    const Tensor expect2 = weight_gemm(x, w2, true, 0, true);
    const Tensor outside = weight_gemm(x, w, true, id);  // no scope: no copies
    CHECK(rel_error(outside, expect) < tol);
    const bool upcast = kc::gemm_converts(dt);  // bf16 as f32 GEMMs on converted operands
    INFO("bf16 converted to f32: " << upcast);

    for (int64_t uses : {1, 4}) {
      INFO("uses per layout " << uses);
      const kc::WeightCacheStats s0 = kc::weight_cache_stats();
      {
        kc::WeightScope scope(uses, kc::WeightCacheMode::pack);
        CHECK_THROWS_AS(kc::WeightScope(uses, kc::WeightCacheMode::pack),
                        std::logic_error);  // scopes do not nest
        for (int i = 0; i < 4; ++i) {
          const Tensor y = weight_gemm(x, w, true, id);
          CHECK(rel_error(y, expect) < tol);
          // An f32 copy of a bf16 weight is exact: the same f32 GEMM as outside the scope.
          if (upcast) CHECK(same_bits(y, outside));
        }
        // The input-gradient layout of the same memory: dx (M x N') = dy (M x K') W with W (K' x N') = (N x
        // K).
        Tensor dy = randn({M, N}, 14, DType::f32).to(dt);
        CHECK(rel_error(weight_gemm(dy, w, false, id), weight_gemm(dy, w, false, 0, true)) < tol);
      }
      const kc::WeightCacheStats s1 = kc::weight_cache_stats();
      const int64_t copies = s1.copies - s0.copies, reuses = s1.reuses - s0.reuses;
      if (upcast) {
        // One f32 copy at the first use serves both layouts and every later call.
        CHECK(copies == 1);
        CHECK(reuses == 5);
      } else if (uses < 4) {
        CHECK(copies == 0);  // a pack would cost more than it saves
      } else {
        // A packed copy per layout where oneDNN prefers its own layout, made once and used for every call.
        CHECK(copies <= 2);
        if (copies > 0) CHECK(reuses >= 4);
      }
    }

    // The optimizer writes the weight in place between scopes (same memory, same name): the next scope must
    // not use the copy of the old contents.
    {
      kc::WeightScope scope(4, kc::WeightCacheMode::pack);
      CHECK(rel_error(weight_gemm(x, w, true, id), expect) < tol);
      CHECK(rel_error(weight_gemm(x, w, true, id), expect) < tol);
    }
    Tensor wc = w.clone();
    w.copy_(w2);
    {
      kc::WeightScope scope(4, kc::WeightCacheMode::pack);
      for (int i = 0; i < 3; ++i) CHECK(rel_error(weight_gemm(x, w, true, id), expect2) < tol);
      // Memory handed to another weight inside a scope carries a new name (core's Storage::generation).
      w.copy_(wc);
      for (int i = 0; i < 3; ++i) CHECK(rel_error(weight_gemm(x, w, true, id + 100), expect) < tol);
    }
    // A scope without room keeps nothing and still computes.
    {
      const kc::WeightCacheStats s0 = kc::weight_cache_stats();
      kc::WeightScope scope(4, kc::WeightCacheMode::pack, 0);
      for (int i = 0; i < 3; ++i) CHECK(rel_error(weight_gemm(x, w, true, id), expect) < tol);
      CHECK(kc::weight_cache_stats().copies == s0.copies);
    }
  }
  // Copies that a scope did not ask for are freed when it closes.
  { kc::WeightScope unused(4, kc::WeightCacheMode::pack); }
  CHECK(kc::weight_cache_stats().bytes == 0);
}

TEST_CASE("GEMM weight copies by mode", "[gemm]") {
  namespace kc = kernels::cpu;
  const int64_t M = 32, K = 64, N = 48;
  for (DType dt : {DType::f32, DType::bf16}) {
    INFO("dtype " << dtype_name(dt));
    Tensor x = randn({M, K}, 21, DType::f32).to(dt);
    Tensor w = randn({N, K}, 22, DType::f32).to(dt);
    const bool upcast = kc::gemm_converts(dt);
    for (kc::WeightCacheMode mode : {kc::WeightCacheMode::off, kc::WeightCacheMode::convert}) {
      const kc::WeightCacheStats s0 = kc::weight_cache_stats();
      {
        kc::WeightScope scope(8, mode);
        for (int i = 0; i < 8; ++i) weight_gemm(x, w, true, 7);
      }
      // convert keeps only f32 copies of weights that run as f32; off keeps nothing; neither packs.
      const bool copies = mode == kc::WeightCacheMode::convert && upcast;
      CHECK(kc::weight_cache_stats().copies - s0.copies == (copies ? 1 : 0));
      CHECK(kc::weight_cache_stats().reuses - s0.reuses == (copies ? 8 : 0));
    }
  }
  { kc::WeightScope unused(1, kc::WeightCacheMode::convert); }
  CHECK(kc::weight_cache_stats().bytes == 0);
}

TEST_CASE("POLDER_CPU_WEIGHT_CACHE", "[gemm]") {
  namespace kc = kernels::cpu;
  const char* old = std::getenv("POLDER_CPU_WEIGHT_CACHE");
  const std::string saved = old ? old : "";
  ::unsetenv("POLDER_CPU_WEIGHT_CACHE");
  CHECK(kc::weight_cache_mode_from_env() == kc::WeightCacheMode::convert);
  ::setenv("POLDER_CPU_WEIGHT_CACHE", "pack", 1);
  CHECK(kc::weight_cache_mode_from_env() == kc::WeightCacheMode::pack);
  ::setenv("POLDER_CPU_WEIGHT_CACHE", "off", 1);
  CHECK(kc::weight_cache_mode_from_env() == kc::WeightCacheMode::off);
  ::setenv("POLDER_CPU_WEIGHT_CACHE", "0", 1);
  CHECK_THROWS_WITH(kc::weight_cache_mode_from_env(),
                    "POLDER_CPU_WEIGHT_CACHE '0' is unknown (expected off, convert or pack)");
  if (old) {
    ::setenv("POLDER_CPU_WEIGHT_CACHE", saved.c_str(), 1);
  } else {
    ::unsetenv("POLDER_CPU_WEIGHT_CACHE");
  }
}

// f32 A with bf16 B (kernels::GemmArgs::a_f32): the f32 GEMM on B's values, whatever the CPU (it always runs
// as f32), in the layouts ops::linear_cross_entropy uses: dx = dl W (C bf16) and dW += dl^T x (C f32, beta
// 1).
TEST_CASE("GEMM with an f32 A and a bf16 B is the f32 GEMM", "[gemm]") {
  const int64_t M = 37, N = 29, K = 53;
  for (bool ta : {false, true})
    for (DType c_dtype : {DType::f32, DType::bf16}) {
      INFO("trans_a " << ta << " C " << dtype_name(c_dtype));
      Tensor a = randn(ta ? Shape{K, M} : Shape{M, K}, 31, DType::f32);
      Tensor b = randn({K, N}, 32, DType::f32).to(DType::bf16);
      Tensor b32 = b.to(DType::f32);
      Tensor c0 = randn({M, N}, 33, DType::f32);
      Tensor mixed = c0.to(c_dtype), plain = c0.clone();
      kernels::GemmArgs g;
      g.M = M;
      g.N = N;
      g.K = K;
      g.A = a.raw_data();
      g.trans_a = ta;
      g.lda = ta ? M : K;
      g.ldb = g.ldc = N;
      g.beta = c_dtype == DType::f32 ? 1.0f : 0.0f;
      g.ab_dtype = DType::f32;
      g.c_dtype = DType::f32;
      g.B = b32.raw_data();
      g.C = plain.raw_data();
      kernels::cpu::gemm(g);
      g.ab_dtype = DType::bf16;
      g.a_f32 = true;
      g.c_dtype = c_dtype;
      g.B = b.raw_data();
      g.C = mixed.raw_data();
      kernels::cpu::gemm(g);
      if (c_dtype == DType::f32) {
        CHECK(same_bits(mixed, plain));
      } else {
        CHECK(same_bits(mixed, plain.to(DType::bf16)));
      }
      // The reference GEMM reads the f32 A too.
      Tensor ref = c0.to(c_dtype);
      g.C = ref.raw_data();
      kernels::cpu::gemm_reference(g);
      CHECK(rel_error(ref.to(DType::f32), mixed.to(DType::f32)) < (c_dtype == DType::f32 ? 1e-5 : 1e-2));
    }
  kernels::GemmArgs bad;
  bad.M = bad.N = bad.K = 4;
  bad.a_f32 = true;
  CHECK_THROWS_WITH(kernels::cpu::gemm(bad), "gemm: an f32 A goes with a bf16 or f16 B only");
}
