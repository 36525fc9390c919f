// The flash attention kernel (kernels/cuda/flash_attention.cu), the cuDNN SDPA path and the dispatcher's auto
// selection. Oracles: the CPU twin in f32 on the same (bf16/f16-rounded) inputs, and on a small case the
// composition softmax(Q K^T scale + mask) V and its backward from cpu::softmax_*. Shapes: D 64 and 128, T =
// 1, 7, 129, 1000, S != T (both ways), GQA ratios 1, 4, 8, causal and not. Outputs poisoned (NaN bytes)
// first. Normalised error max|gpu - ref| / max|ref|: bf16 < 2e-2, f16 < 1e-2, lse < 1e-4. Tagged [cuda];
// without a device each test warns that it skipped (the set_attention_impl and model.attention_impl
// validation run everywhere).
#include <catch2/catch.hpp>

#include <string>

#include "core/error.h"
#include "train/config.h"

namespace {
const char* const kConfig = R"(model:
  vocab_size: 512
  hidden_size: 64
  intermediate_size: 176
  num_layers: 2
  num_heads: 4
  max_seq_len: 128
data:
  seq_len: 64
  datasets:
    - {name: nl, prefix: data/nl}
train:
  steps: 10
  global_batch: 8
  micro_batch: 2
)";
}  // namespace

TEST_CASE("model.attention_impl: cudnn by default, one clear line for an unknown value", "[config]") {
  using polder::parse_config;
  CHECK(parse_config(kConfig).model.attention_impl == "cudnn");  // the library until check.sh has passed
  CHECK(parse_config(kConfig).model.gemm_impl == "cublaslt");
  CHECK(parse_config(kConfig, {"model.gemm_impl=auto"}).model.gemm_impl == "auto");
  CHECK_THROWS_WITH(parse_config(kConfig, {"model.gemm_impl=fast"}),
                    Catch::Contains("model.gemm_impl") && Catch::Contains("'fast'"));
  for (const char* v : {"polder", "cudnn", "baseline", "auto"})
    CHECK(parse_config(kConfig, {std::string("model.attention_impl=") + v}).model.attention_impl == v);
  std::string msg;
  try {
    parse_config(kConfig, {"model.attention_impl=flash"});
  } catch (const polder::Error& e) {
    msg = e.message();
  }
  INFO(msg);
  CHECK(msg.find("model.attention_impl") != std::string::npos);
  CHECK(msg.find("'flash'") != std::string::npos);
  CHECK(msg.find("auto, polder, cudnn, baseline") != std::string::npos);
  CHECK(msg.find('\n') == std::string::npos);
}

#ifdef POLDER_HAVE_CUDA

#include <cuda_runtime.h>

#include "tests/attention_testing.h"
#include "tests/cuda_testing.h"
#include "tests/emulated.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/softmax.h"

using namespace polder;
using kernels::AttentionShape;
using polder::testing::DevBuf;
using polder::testing::randn;
using polder::testing::to_f32;

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

// The forward and backward of one implementation against the f32 CPU twin; the backward uses the GPU's o,
// lse.
enum class Path { flash, cudnn, dispatch };

template <typename T>
void check_path(Path path, const AttentionShape& s, uint64_t seed) {
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

  DevBuf<T> gq(q), gk(k), gv(v), gdout(dout), go(nq), gdq(nq), gdk(nk), gdv(nk);
  DevBuf<float> glse(nl);
  switch (path) {
    case Path::flash:
      kernels::cuda::flash_attention_forward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                                nullptr);
      break;
    case Path::cudnn:
      REQUIRE(kernels::cuda::cudnn_attention_forward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                                        nullptr));
      break;
    case Path::dispatch:
      kernels::cuda::attention_forward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(), nullptr);
      break;
  }
  CHECK_ERR("o", go.host(), o, tol<T>());
  CHECK_ERR("lse", glse.host(), lse, kTolLse);
  switch (path) {
    case Path::flash:
      kernels::cuda::flash_attention_backward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                                 gdout.get(), gdq.get(), gdk.get(), gdv.get(), nullptr);
      break;
    case Path::cudnn:
      REQUIRE(kernels::cuda::cudnn_attention_backward<T>(s, gq.get(), gk.get(), gv.get(), go.get(),
                                                         glse.get(), gdout.get(), gdq.get(), gdk.get(),
                                                         gdv.get(), nullptr));
      break;
    case Path::dispatch:
      kernels::cuda::attention_backward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(), gdout.get(),
                                           gdq.get(), gdk.get(), gdv.get(), nullptr);
      break;
  }
  const auto hdq = gdq.host(), hdk = gdk.host(), hdv = gdv.host();
  CHECK_ERR("dq", hdq, dq, tol<T>());
  CHECK_ERR("dk", hdk, dk, tol<T>());
  CHECK_ERR("dv", hdv, dv, tol<T>());
  if (path == Path::flash) {  // deterministic: no atomics, a second backward gives the same bits
    DevBuf<T> gdq2(nq), gdk2(nk), gdv2(nk);
    kernels::cuda::flash_attention_backward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                               gdout.get(), gdq2.get(), gdk2.get(), gdv2.get(), nullptr);
    CHECK(std::memcmp(gdq2.host().data(), hdq.data(), nq * sizeof(T)) == 0);
    CHECK(std::memcmp(gdk2.host().data(), hdk.data(), nk * sizeof(T)) == 0);
    CHECK(std::memcmp(gdv2.host().data(), hdv.data(), nk * sizeof(T)) == 0);
  }
}

// The shape list of the flash and cuDNN tests: odd lengths T = 1, 7, 129, 1000, GQA ratios 8, 4, 1, S != T.
template <typename T>
void check_shapes(Path path, int64_t D, bool causal, uint64_t seed) {
  check_path<T>(path, shape(1, 1, causal ? 1 : 5, 8, 1, D, causal), seed);  // one query, ratio 8
  check_path<T>(path, shape(2, 7, causal ? 7 : 13, 4, 1, D, causal),
                seed + 10);                                             // ratio 4, S > T if not causal
  check_path<T>(path, shape(1, 129, 129, 2, 2, D, causal), seed + 20);  // ratio 1, a partial tile
  if (path != Path::cudnn || !causal)  // cuDNN is not asked for causal S < T (declined, tested above)
    check_path<T>(path, shape(1, 129, 77, 4, 1, D, causal),
                  seed + 30);  // S < T: causal queries that see no key
  check_path<T>(path, shape(1, 100, 137, 2, 1, D, causal), seed + 40);  // S > T: queries aligned to the end
  const int64_t long_t = testing::gpu_or_emulated<int64_t>(1000, 320);  // several key tiles either way
  check_path<T>(path, shape(1, long_t, long_t, std::is_same_v<T, bf16> ? 8 : 4, 1, D, causal), seed + 50);
}

void zero_forward(const AttentionShape& s, DType, const void*, const void*, const void*, void* o, float* lse,
                  void* stream) {
  const size_t n = static_cast<size_t>(s.B * s.T * s.Hq * s.D);
  cudaMemsetAsync(o, 0, n * 2, static_cast<cudaStream_t>(stream));
  cudaMemsetAsync(lse, 0, static_cast<size_t>(s.B * s.Hq * s.T) * sizeof(float),
                  static_cast<cudaStream_t>(stream));
}

void zero_backward(const AttentionShape& s, DType, const void*, const void*, const void*, const void*,
                   const float*, const void*, void* dq, void* dk, void* dv, void* stream) {
  const size_t nq = static_cast<size_t>(s.B * s.T * s.Hq * s.D),
               nk = static_cast<size_t>(s.B * s.S * s.Hkv * s.D);
  cudaMemsetAsync(dq, 0, nq * 2, static_cast<cudaStream_t>(stream));
  cudaMemsetAsync(dk, 0, nk * 2, static_cast<cudaStream_t>(stream));
  cudaMemsetAsync(dv, 0, nk * 2, static_cast<cudaStream_t>(stream));
}

}  // namespace

TEMPLATE_TEST_CASE("flash attention forward/backward match the CPU twin", "[cuda]", bf16, f16) {
  SKIP_WITHOUT_GPU();
  REQUIRE(kernels::cuda::flash_attention_supported<TestType>(shape(1, 4, 4, 2, 1, 64, true), {}));
  uint64_t seed = 1000;
  for (int64_t D : {64, 128})
    for (bool causal : {true, false}) check_shapes<TestType>(Path::flash, D, causal, seed += 100);
}

TEST_CASE("flash attention matches the composition softmax(Q K^T scale + mask) V", "[cuda]") {
  SKIP_WITHOUT_GPU();
  using T = bf16;
  const AttentionShape s = shape(1, 9, 11, 4, 2, 64, true);
  const int64_t T_ = s.T, S = s.S, D = s.D, G = s.Hq / s.Hkv;
  const size_t nq = static_cast<size_t>(T_ * s.Hq * D), nk = static_cast<size_t>(S * s.Hkv * D);
  const auto q = randn<T>(nq, 7), k = randn<T>(nk, 8), v = randn<T>(nk, 9), dout = randn<T>(nq, 10);
  const auto qf = to_f32(q), kf = to_f32(k), vf = to_f32(v), gf = to_f32(dout);
  std::vector<float> o(nq), dq(nq), dk(nk, 0.f), dv(nk, 0.f);
  // Per head: scores (T, S), P = softmax(scores), O = P V; dP = dO V^T, dS = softmax_backward(P, dP),
  // dQ = scale dS K, dK += scale dS^T Q, dV += P^T dO (summed over the query heads of the group).
  for (int64_t h = 0; h < s.Hq; ++h) {
    const int64_t hk = h / G;
    auto Q = [&](int64_t t, int64_t d) { return qf[(t * s.Hq + h) * D + d]; };
    auto K = [&](int64_t j, int64_t d) { return kf[(j * s.Hkv + hk) * D + d]; };
    auto V = [&](int64_t j, int64_t d) { return vf[(j * s.Hkv + hk) * D + d]; };
    auto G_ = [&](int64_t t, int64_t d) { return gf[(t * s.Hq + h) * D + d]; };
    std::vector<float> sc(static_cast<size_t>(T_ * S)), p(sc.size()), dp(sc.size()), ds(sc.size());
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t j = 0; j < S; ++j) {
        float x = 0;
        for (int64_t d = 0; d < D; ++d) x += Q(t, d) * K(j, d);
        sc[t * S + j] = j > t + (S - T_) ? -1e30f : static_cast<float>(s.scale) * x;
      }
    kernels::cpu::softmax_forward<float>(sc.data(), p.data(), T_, S);
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t d = 0; d < D; ++d) {
        float acc = 0;
        for (int64_t j = 0; j < S; ++j) acc += p[t * S + j] * V(j, d);
        o[(t * s.Hq + h) * D + d] = acc;
      }
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t j = 0; j < S; ++j) {
        float x = 0;
        for (int64_t d = 0; d < D; ++d) x += G_(t, d) * V(j, d);
        dp[t * S + j] = x;
      }
    kernels::cpu::softmax_backward<float>(p.data(), dp.data(), ds.data(), T_, S);
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t d = 0; d < D; ++d) {
        float acc = 0;
        for (int64_t j = 0; j < S; ++j) acc += ds[t * S + j] * K(j, d);
        dq[(t * s.Hq + h) * D + d] = static_cast<float>(s.scale) * acc;
      }
    for (int64_t j = 0; j < S; ++j)
      for (int64_t d = 0; d < D; ++d) {
        float ak = 0, av = 0;
        for (int64_t t = 0; t < T_; ++t) ak += ds[t * S + j] * Q(t, d), av += p[t * S + j] * G_(t, d);
        dk[(j * s.Hkv + hk) * D + d] += static_cast<float>(s.scale) * ak;
        dv[(j * s.Hkv + hk) * D + d] += av;
      }
  }
  DevBuf<T> gq(q), gk(k), gv(v), gdout(dout), go(nq), gdq(nq), gdk(nk), gdv(nk);
  DevBuf<float> glse(static_cast<size_t>(s.Hq * T_));
  kernels::cuda::flash_attention_forward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(), nullptr);
  kernels::cuda::flash_attention_backward<T>(s, gq.get(), gk.get(), gv.get(), go.get(), glse.get(),
                                             gdout.get(), gdq.get(), gdk.get(), gdv.get(), nullptr);
  CHECK_ERR("o", go.host(), o, 2e-2);
  CHECK_ERR("dq", gdq.host(), dq, 2e-2);
  CHECK_ERR("dk", gdk.host(), dk, 2e-2);
  CHECK_ERR("dv", gdv.host(), dv, 2e-2);
}

TEMPLATE_TEST_CASE("cudnn SDPA forward/backward match the CPU twin", "[cuda]", bf16, f16) {
  SKIP_WITHOUT_GPU();
  std::string why;
  if (!kernels::cuda::cudnn_attention_available(&why)) {
    WARN("skipped: cuDNN SDPA unavailable: " << why);
    return;
  }
  // Each shape and direction is a cuDNN graph of its own (plan building, run-time compiled engines): f16 gets
  // D = 128 only, to keep this within check.sh's test budget.
  uint64_t seed = 5000;
  for (int64_t D : {64, 128})
    for (bool causal : {true, false})
      if (std::is_same_v<TestType, bf16> || D == 128)
        check_shapes<TestType>(Path::cudnn, D, causal, seed += 100);
}

// Host-side only (runs without a GPU wherever libcudnn.so.9 loads): the graphs polder describes to cuDNN pass
// the frontend's validation for the training shapes, and a graph that is wrong fails it (so the check can
// fail).
TEST_CASE("cudnn SDPA graphs pass the frontend's validation", "[cudnn]") {
  std::string why;
  if (!kernels::cuda::cudnn_attention_available(&why)) {
    WARN("skipped: cuDNN SDPA unavailable: " << why);
    return;
  }
  for (DType dtype : {DType::bf16, DType::f16})
    for (int64_t D : {64, 128})
      for (int64_t ratio : {1, 4, 8})
        for (bool causal : {true, false})
          for (bool backward : {false, true}) {
            const AttentionShape s = shape(2, 256, 256, 8, 8 / ratio, D, causal);
            INFO("dtype " << static_cast<int>(dtype) << " D=" << D << " GQA " << ratio << " causal=" << causal
                          << " backward=" << backward);
            CHECK(kernels::cuda::cudnn_attention_declined(s, dtype).empty());
            const std::string v = kernels::cuda::cudnn_attention_validate(s, dtype, backward);
            INFO(v);
            CHECK(v.empty());
          }
  // S != T: bottom-right causal alignment (polder's convention) and full attention.
  for (bool backward : {false, true}) {
    const std::string v =
        kernels::cuda::cudnn_attention_validate(shape(1, 100, 137, 4, 1, 128, true), DType::bf16, backward);
    INFO("S > T, backward=" << backward << ": " << v);
    CHECK(v.empty());
  }
  // Query heads not a multiple of the key/value heads: not a grouped-query layout, the frontend must refuse
  // it.
  const std::string bad =
      kernels::cuda::cudnn_attention_validate(shape(1, 64, 64, 6, 4, 64, true), DType::bf16, false);
  INFO(bad);
  CHECK_FALSE(bad.empty());
  // And a device without flash attention in cuDNN (Volta, sm 70) must be refused.
  const std::string volta =
      kernels::cuda::cudnn_attention_validate(shape(1, 64, 64, 4, 4, 64, true), DType::bf16, false, 70);
  INFO(volta);
  CHECK_FALSE(volta.empty());
}

TEST_CASE("cudnn SDPA: what polder declines before asking cuDNN", "[cudnn]") {
  using kernels::cuda::cudnn_attention_declined;
  CHECK(cudnn_attention_declined(shape(1, 8, 8, 2, 2, 64, true), DType::f32).find("f32") !=
        std::string::npos);
  CHECK(cudnn_attention_declined(shape(1, 8, 8, 2, 2, 66, true), DType::bf16).find("head dim 66") !=
        std::string::npos);
  CHECK(cudnn_attention_declined(shape(1, 8, 8, 2, 2, 264, true), DType::bf16).find("head dim 264") !=
        std::string::npos);
  CHECK(cudnn_attention_declined(shape(1, 9, 8, 2, 2, 64, true), DType::bf16).find("fewer keys") !=
        std::string::npos);
  CHECK(cudnn_attention_declined(shape(1, 9, 8, 2, 2, 64, false), DType::bf16).empty());
  CHECK(cudnn_attention_declined(shape(1, 8, 9, 2, 2, 64, true), DType::f16).empty());
}

TEST_CASE("attention dispatcher: every setting gives the CPU twin's result", "[cuda]") {
  SKIP_WITHOUT_GPU();
  for (const char* impl : {"baseline", "polder", "cudnn", "auto"}) {
    INFO("attention_impl " << impl);
    kernels::cuda::set_attention_impl(impl);
    check_path<bf16>(Path::dispatch, shape(2, 70, 70, 4, 1, 64, true), 300);
    check_path<bf16>(Path::dispatch, shape(1, 33, 40, 2, 2, 128, false), 310);
    check_path<f16>(Path::dispatch, shape(1, 17, 17, 2, 1, 128, true), 320);
    check_path<bf16>(Path::dispatch, shape(1, 17, 17, 2, 1, 24, true), 330);  // D = 24: the baseline
  }
  kernels::cuda::set_attention_impl("auto");
}

TEST_CASE("attention auto never picks a wrong implementation", "[cuda]") {
  SKIP_WITHOUT_GPU();
  // The injected candidate writes zeros: the fastest by far, and wrong. auto must reject it (one stderr line)
  // and still produce the CPU twin's result.
  kernels::cuda::set_attention_impl("auto");
  kernels::cuda::set_attention_test_candidate(zero_forward, zero_backward);
  const AttentionShape s = shape(1, 150, 150, 4, 1, 64, true);
  check_path<bf16>(Path::dispatch, s, 400);
  const std::string fwd = kernels::cuda::attention_choice(s, DType::bf16, false),
                    bwd = kernels::cuda::attention_choice(s, DType::bf16, true);
  INFO("auto chose " << fwd << " (forward), " << bwd << " (backward)");
  CHECK(!fwd.empty());
  CHECK(!bwd.empty());
  CHECK(fwd != "test");
  CHECK(bwd != "test");
  kernels::cuda::set_attention_test_candidate(nullptr, nullptr);
  CHECK(kernels::cuda::attention_choice(s, DType::bf16, false).empty());  // the cache was cleared
}

TEST_CASE("set_attention_impl rejects an unknown name", "[cuda]") {
  CHECK_THROWS_WITH(kernels::cuda::set_attention_impl("fast"),
                    Catch::Contains("'fast'") && Catch::Contains("auto, polder, cudnn or baseline"));
  kernels::cuda::set_attention_impl("polder");
  CHECK(kernels::cuda::attention_impl() == "polder");
  kernels::cuda::set_attention_impl("auto");
  CHECK(kernels::cuda::attention_impl() == "auto");
}

TEST_CASE("flash attention declines what it does not support", "[cuda]") {
  CHECK_FALSE(kernels::cuda::flash_attention_supported<float>(shape(1, 4, 4, 2, 1, 64, true), {}));
  CHECK_FALSE(kernels::cuda::flash_attention_supported<bf16>(shape(1, 4, 4, 2, 1, 96, true), {}));
  alignas(16) static bf16 buf[16];
  CHECK_FALSE(kernels::cuda::flash_attention_supported<bf16>(shape(1, 4, 4, 2, 1, 64, true), {buf + 1}));
}

#else

TEST_CASE("cuda flash attention: built without CUDA", "[cuda]") {
  WARN("skipped: polder was built without CUDA (POLDER_HAVE_CUDA undefined)");
  SUCCEED();
}

#endif
