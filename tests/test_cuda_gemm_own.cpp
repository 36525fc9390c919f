// polder's own bf16 GEMM (kernels::cuda::gemm_own, mma.sync) against kernels::cpu::gemm_reference and against
// cuBLASLt (gemm_cublaslt) on the same random inputs: layouts NN, NT, TN (and TT), f32 and bf16 C, beta 0 (C
// poisoned with NaN, never read) and 1 (accumulate), sizes that are not multiples of the 128 x 128 x 32 tile
// (M, N, K from {1, 7, 129, 1000, 4099}), odd leading dimensions and misaligned pointers (the element-wise
// load path), batches with gaps. C's padding and gaps are poisoned and must come back byte for byte. Then the
// dispatcher: the forced policies, and "auto" with injected broken candidates, which it must reject (its
// output stays cuBLASLt's, on the first and every later call). Normalised error max|got - ref| / max|ref|:
// f32 C < 1e-4, bf16 C < 1e-2. The sm_90a wgmma variant (gemm_own_sm90) and the sm_90a TMA kernel
// (gemm_own_sm90_tma: A's and B's leading dimensions rounded up to multiples of 8, then pads of 0 and 8, plus
// more tiles than SMs for its persistent loop and partial TMA boxes) get the same checks where the device
// runs them; the TMA kernel's argument errors are checked on every machine. Tagged [cuda]; without a device
// each test warns that it skipped and passes.
#include <catch2/catch.hpp>

#ifdef POLDER_HAVE_CUDA

#include <cuda_runtime.h>

#include "tests/cuda_testing.h"
#include "tests/emulated.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/gemm.h"

using namespace polder;
using polder::testing::DevBuf;
using polder::testing::randn;

namespace {

// The sizes of the odd-shape sweeps: 4099 (65 k-tiles through the TMA kernel's 4-stage ring) and 1000 on a
// GPU; 515 (9 k-tiles: the ring still wraps) and 259 on the emulated device, where every thread runs on the
// CPU.
constexpr int64_t kLong = testing::gpu_or_emulated<int64_t>(4099, 515);
constexpr int64_t kMid = testing::gpu_or_emulated<int64_t>(1000, 259);

template <typename T>
T poison() {
  T v;
  auto* bytes = reinterpret_cast<unsigned char*>(&v);
  std::fill(bytes, bytes + sizeof(T), static_cast<unsigned char>(0xFF));  // NaN in f32 and bf16
  return v;
}

struct Case {
  bool ta = false, tb = false;
  int64_t batch = 1, M = 0, N = 0, K = 0;
  float alpha = 1.0f, beta = 0.0f;
  int64_t pad = 0;          // extra columns in every leading dimension
  int64_t gap = 0;          // extra elements between batches
  size_t misalign = 0;      // elements by which A, B and C are shifted off the allocation's alignment
  int64_t ld_multiple = 1;  // A's and B's leading dimensions rounded up to a multiple of it, before the pad
};

struct Result {
  double err_ref = 0, err_lt = 0;  // against gemm_reference and against cuBLASLt
  int64_t padding_changed = 0;     // elements of C outside the M x N blocks that differ from what was there
};

// Normalised error of `got` against `want` over the blocks; Inf where got is not finite.
template <typename TC>
double norm_err(const std::vector<TC>& got, const std::vector<TC>& want, const std::vector<char>& in_block) {
  double num = 0, den = 1e-30;
  for (size_t k = 0; k < got.size(); ++k) {
    if (!in_block[k]) continue;
    const double gv = static_cast<double>(got[k]), rv = static_cast<double>(want[k]);
    if (!std::isfinite(gv)) return std::numeric_limits<double>::infinity();
    num = std::max(num, std::abs(gv - rv));
    den = std::max(den, std::abs(rv));
  }
  return num / den;
}

// Runs `fn` (a GEMM entry point) on the case and compares with gemm_reference and with gemm_cublaslt on the
// same data (each from the same initial C).
template <typename TC>
Result run_case(const Case& c, uint64_t seed, kernels::cuda::GemmKernel fn) {
  const int64_t ar = c.ta ? c.K : c.M, ac = c.ta ? c.M : c.K, br = c.tb ? c.N : c.K, bc = c.tb ? c.K : c.N;
  kernels::GemmArgs g;
  g.M = c.M;
  g.N = c.N;
  g.K = c.K;
  g.batch = c.batch;
  g.ab_dtype = DType::bf16;
  g.c_dtype = dtype_of<TC>();
  g.trans_a = c.ta;
  auto up = [&](int64_t cols) { return (cols + c.ld_multiple - 1) / c.ld_multiple * c.ld_multiple; };
  g.lda = up(ac) + c.pad;
  g.stride_a = ar * g.lda + c.gap;
  g.trans_b = c.tb;
  g.ldb = up(bc) + c.pad;
  g.stride_b = br * g.ldb + c.gap;
  g.ldc = c.N + c.pad;
  g.stride_c = c.M * g.ldc + c.gap;
  g.alpha = c.alpha;
  g.beta = c.beta;

  auto a = randn<bf16>(static_cast<size_t>(c.batch * g.stride_a), seed);
  auto b = randn<bf16>(static_cast<size_t>(c.batch * g.stride_b), seed + 1);
  std::vector<TC> c0(static_cast<size_t>(c.batch * g.stride_c), poison<TC>());
  std::vector<char> in_block(c0.size(), 0);
  auto rc = randn<TC>(c0.size(), seed + 2);
  for (int64_t p = 0; p < c.batch; ++p)
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) {
        const size_t at = static_cast<size_t>(p * g.stride_c + i * g.ldc + j);
        in_block[at] = 1;
        if (c.beta != 0.0f) c0[at] = rc[at];
      }

  DevBuf<bf16> da(a, c.misalign), db(b, c.misalign);
  DevBuf<TC> dc(c0, c.misalign), dl(c0, c.misalign);
  g.A = da.get();
  g.B = db.get();
  g.C = dc.get();
  fn(g, nullptr);
  CUDA_OK(cudaGetLastError());
  const std::vector<TC> got = dc.host();
  g.C = dl.get();
  kernels::cuda::gemm_cublaslt(g, nullptr);
  const std::vector<TC> lt = dl.host();

  std::vector<TC> ref = c0;
  g.A = a.data();
  g.B = b.data();
  g.C = ref.data();
  kernels::cpu::gemm_reference(g);

  Result r;
  for (size_t k = 0; k < got.size(); ++k)
    if (!in_block[k]) r.padding_changed += std::memcmp(&got[k], &c0[k], sizeof(TC)) != 0;
  r.err_ref = norm_err(got, ref, in_block);
  r.err_lt = norm_err(got, lt, in_block);
  return r;
}

#define CHECK_OWN(TC, c, fn, limit)                                                                          \
  do {                                                                                                       \
    const Result r_ = run_case<TC>((c), seed++, (fn));                                                       \
    INFO(#TC " C: normalised error vs reference " << r_.err_ref << ", vs cuBLASLt " << r_.err_lt             \
                                                  << " (limit " << (limit) << "), padding elements changed " \
                                                  << r_.padding_changed);                                    \
    CHECK(r_.err_ref < (limit));                                                                             \
    CHECK(r_.err_lt < (limit));                                                                              \
    CHECK(r_.padding_changed == 0);                                                                          \
  } while (0)

const char* layout_name(bool ta, bool tb) {
  return ta ? (tb ? "TT" : "TN") : (tb ? "NT" : "NN");
}

struct Shape {
  int64_t M, N, K;
};

// Every layout x shape x ld padding of one kernel, f32 and bf16 C, plain (beta 0) and accumulating (alpha
// 0.5, beta 1; `acc_batch` batches, with a batch-stride gap of 8 where there are several). A's and B's
// leading dimensions are rounded up to multiples of `ld_multiple` before the padding.
template <size_t N>
void check_variant(const char* name, kernels::cuda::GemmKernel fn, const Shape (&shapes)[N],
                   std::initializer_list<int64_t> pads, int64_t acc_batch, uint64_t& seed,
                   int64_t ld_multiple = 1) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const Shape& s : shapes)
        for (int64_t pad : pads) {
          INFO(name << " " << layout_name(ta, tb) << " M " << s.M << " N " << s.N << " K " << s.K
                    << " ld pad " << pad);
          Case plain{ta, tb, 1, s.M, s.N, s.K, 1.0f, 0.0f, pad, 0, 0, ld_multiple};
          Case acc{ta, tb, acc_batch, s.M, s.N, s.K, 0.5f, 1.0f, pad, acc_batch > 1 ? 8 : 0, 0, ld_multiple};
          CHECK_OWN(float, plain, fn, 1e-4);
          CHECK_OWN(bf16, plain, fn, 1e-2);
          CHECK_OWN(float, acc, fn, 1e-4);
          CHECK_OWN(bf16, acc, fn, 1e-2);
        }
}

// Broken candidates for the auto dispatcher: right shape of work, wrong numbers.
void scaled_candidate(const kernels::GemmArgs& g, void* stream) {  // 3% off: plausible but wrong
  kernels::GemmArgs h = g;
  h.alpha *= 1.03f;
  kernels::cuda::gemm_own(h, stream);
}
void skipping_candidate(const kernels::GemmArgs& g, void* stream) {  // leaves the last row unwritten
  if (g.M < 2) return;
  kernels::GemmArgs h = g;
  h.M -= 1;
  kernels::cuda::gemm_own(h, stream);
}
void throwing_candidate(const kernels::GemmArgs&, void*) {
  throw std::runtime_error("candidate refuses");
}

// Restores the dispatcher's defaults when a test ends, passed or not.
struct DispatchGuard {
  DispatchGuard() { reset(); }
  ~DispatchGuard() { reset(); }
  static void reset() {
    kernels::cuda::set_gemm_impl("auto");
    kernels::cuda::set_gemm_candidate_for_testing(nullptr);
    kernels::cuda::clear_gemm_choices();
  }
};

}  // namespace

TEST_CASE("own gemm matches the reference GEMM and cuBLASLt on odd shapes", "[cuda][gemm][gemm_own]") {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 1;
  // Every size of {1, 7, 129, 1000, 4099} in every position, and one set of full tiles (the 16-byte path).
  const Shape shapes[] = {{1, 1, 1},       {7, 7, 7},       {129, 7, kMid},  {kMid, 129, 7},
                          {7, kMid, 129},  {kLong, 7, 129}, {129, kLong, 7}, {7, 129, kLong},
                          {256, 256, 256}, {kMid, 257, 129}};
  check_variant("mma.sync", &kernels::cuda::gemm_own, shapes, {0, 3}, 1, seed);
}

TEST_CASE("own gemm: batches with gaps, misaligned pointers, large aligned tiles", "[cuda][gemm][gemm_own]") {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      INFO(layout_name(ta, tb));
      Case batched{ta, tb, 3, 130, 67, 200, 1.0f, 1.0f, 8, 24, 0};  // ld multiples of 8, odd sizes
      CHECK_OWN(float, batched, &kernels::cuda::gemm_own, 1e-4);
      CHECK_OWN(bf16, batched, &kernels::cuda::gemm_own, 1e-2);
      for (size_t misalign : {1, 3}) {
        INFO("pointers shifted by " << misalign << " elements");
        Case shifted{ta, tb, 2, 64, 48, 96, 2.0f, 0.0f, 8, 8, misalign};
        CHECK_OWN(float, shifted, &kernels::cuda::gemm_own, 1e-4);
        CHECK_OWN(bf16, shifted, &kernels::cuda::gemm_own, 1e-2);
      }
    }
  // A shape of the model's size class: several k-tiles and tile rows through the vector path.
  Case big{false, true, 1, 1024, 768, 512, 1.0f, 0.0f, 0, 0, 0};
  CHECK_OWN(float, big, &kernels::cuda::gemm_own, 1e-4);
  big.ta = true;
  big.tb = false;
  big.beta = 1.0f;
  CHECK_OWN(float, big, &kernels::cuda::gemm_own, 1e-4);
}

TEST_CASE("gemm dispatcher: forced policies", "[cuda][gemm][gemm_own]") {
  SKIP_WITHOUT_GPU();
  DispatchGuard guard;
  uint64_t seed = 900;
  Case c{false, true, 1, 129, 65, 77, 1.0f, 1.0f, 0, 0, 0};
  kernels::GemmArgs g;
  g.M = c.M;
  g.N = c.N;
  g.K = c.K;
  g.ab_dtype = DType::bf16;
  g.c_dtype = DType::f32;
  g.trans_b = true;
  g.lda = g.ldb = c.K;
  g.ldc = c.N;
  g.beta = 1.0f;
  kernels::cuda::set_gemm_impl("polder");
  CHECK(std::string(kernels::cuda::gemm_impl()) == "polder");
  CHECK(std::string(kernels::cuda::gemm_choice(g)) == "polder");
  CHECK_OWN(float, c, &kernels::cuda::gemm, 1e-4);
  // f32 inputs are not the own kernel's: cuBLASLt, whatever the policy.
  kernels::GemmArgs f = g;
  f.ab_dtype = DType::f32;
  CHECK(std::string(kernels::cuda::gemm_choice(f)) == "cublaslt");
  CHECK_FALSE(kernels::cuda::gemm_own_supported(f));
  kernels::cuda::set_gemm_impl("cublaslt");
  CHECK(std::string(kernels::cuda::gemm_choice(g)) == "cublaslt");
  CHECK_OWN(bf16, c, &kernels::cuda::gemm, 1e-2);
  kernels::cuda::set_gemm_impl("auto");
  CHECK(std::string(kernels::cuda::gemm_choice(g)) == "undecided");
}

int g_counted_calls = 0;
void counting_candidate(const kernels::GemmArgs& g, void* stream) {
  ++g_counted_calls;
  kernels::cuda::gemm_own(g, stream);
}

TEST_CASE("gemm dispatcher: auto does not measure a shape whose scratch would exceed 512 MiB",
          "[cuda][gemm][gemm_own]") {
  SKIP_WITHOUT_GPU();
  DispatchGuard guard;
  kernels::cuda::set_gemm_candidate_for_testing(&counting_candidate);
  // C of 12000 x 12000 f32 (576 MB): decide() would need two copies (1.15 GB); an LM head's is larger still.
  const int64_t m = 12000, n = 12000, k = 8;
  testing::DevBuf<bf16> a(testing::randn<bf16>(static_cast<size_t>(m * k), 1));
  testing::DevBuf<bf16> b(testing::randn<bf16>(static_cast<size_t>(n * k), 2));
  testing::DevBuf<float> c(static_cast<size_t>(m * n));
  kernels::GemmArgs g;
  g.M = m;
  g.N = n;
  g.K = k;
  g.ab_dtype = DType::bf16;
  g.c_dtype = DType::f32;
  g.trans_b = true;
  g.lda = g.ldb = k;
  g.ldc = n;
  g.beta = 0.0f;
  g.A = a.get();
  g.B = b.get();
  g.C = c.get();
  g_counted_calls = 0;
  kernels::cuda::gemm(g, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  CHECK(g_counted_calls == 0);  // never measured
  CHECK(std::string(kernels::cuda::gemm_choice(g)) == "cublaslt");
}

TEST_CASE("gemm dispatcher: auto never picks a wrong candidate", "[cuda][gemm][gemm_own]") {
  SKIP_WITHOUT_GPU();
  DispatchGuard guard;
  uint64_t seed = 1000;
  const kernels::cuda::GemmKernel broken[] = {&scaled_candidate, &skipping_candidate, &throwing_candidate};
  for (int which = 0; which < 3; ++which)
    for (bool acc : {false, true}) {
      INFO("broken candidate #" << which << " beta " << acc);
      kernels::cuda::clear_gemm_choices();
      kernels::cuda::set_gemm_candidate_for_testing(broken[which]);
      Case c{false, true, 1, 257, 129, 96, 1.0f, acc ? 1.0f : 0.0f, 0, 0, 0};
      // First call: decides (on scratch outputs) and returns cuBLASLt's result; second: the cached decision.
      CHECK_OWN(float, c, &kernels::cuda::gemm, 1e-4);
      kernels::GemmArgs g;
      g.M = c.M;
      g.N = c.N;
      g.K = c.K;
      g.ab_dtype = DType::bf16;
      g.c_dtype = DType::f32;
      g.trans_b = true;
      g.lda = g.ldb = c.K;
      g.ldc = c.N;
      g.beta = c.beta;
      g.A = g.B = g.C =
          reinterpret_cast<void*>(uintptr_t(256));  // the key holds the pointers' 16-byte alignment only
      CHECK(std::string(kernels::cuda::gemm_choice(g)) == "cublaslt");
      CHECK_OWN(float, c, &kernels::cuda::gemm, 1e-4);
      CHECK_OWN(bf16, c, &kernels::cuda::gemm, 1e-2);  // bf16 C: its own decision, also rejected
    }
  // The real own kernel: whichever way the measurement goes, every call's output is right.
  kernels::cuda::set_gemm_candidate_for_testing(nullptr);
  kernels::cuda::clear_gemm_choices();
  for (bool ta : {false, true}) {
    Case c{ta, !ta, 1, 512, 384, 256, 1.0f, 1.0f, 0, 0, 0};
    for (int rep = 0; rep < 2; ++rep) {
      INFO(layout_name(c.ta, c.tb) << " call " << rep + 1);
      CHECK_OWN(float, c, &kernels::cuda::gemm, 1e-4);
      CHECK_OWN(bf16, c, &kernels::cuda::gemm, 1e-2);
    }
  }
}

TEST_CASE("own gemm rejects what it does not support", "[cuda][gemm][gemm_own]") {
  DispatchGuard guard;
  kernels::GemmArgs g;
  g.M = g.N = g.K = 4;
  g.lda = g.ldb = g.ldc = 4;
  g.ab_dtype = g.c_dtype = DType::f32;
  CHECK_THROWS_WITH(kernels::cuda::gemm_own(g, nullptr), Catch::Contains("A and B must be bf16, got f32"));
  g.ab_dtype = DType::bf16;
  g.c_dtype = DType::f16;
  CHECK_THROWS_AS(kernels::cuda::gemm_own(g, nullptr), std::invalid_argument);  // check_args: bf16 -> f16
  g.c_dtype = DType::f32;
  g.lda = 3;
  CHECK_THROWS_WITH(kernels::cuda::gemm_own(g, nullptr), Catch::Contains("lda 3 < 4"));
  CHECK_THROWS_WITH(kernels::cuda::set_gemm_impl("fast"),
                    Catch::Contains("'fast' is not one of auto, polder"));
  CHECK(std::string(kernels::cuda::gemm_impl()) == "auto");
  if (!testing::have_gpu()) {  // without a device nothing is available; with one, the probe decides
    CHECK_FALSE(kernels::cuda::gemm_own_sm90_available());
    g.lda = 4;
    CHECK_THROWS_WITH(kernels::cuda::gemm_own_sm90(g, nullptr),
                      Catch::Contains("needs a compute capability 9.0"));
  }
}

// Last: a fault of this kernel (written without a GPU) would spoil every later test case of the process.
TEST_CASE("own gemm: the sm_90a wgmma kernel", "[cuda][gemm][gemm_own]") {
  SKIP_WITHOUT_GPU();
  if (!kernels::cuda::gemm_own_sm90_available()) {
    WARN("skipped: the wgmma kernel needs a compute capability 9.0 device running the sm_90a image");
    return;
  }
  uint64_t seed = 700;
  const Shape shapes[] = {{1, 1, 1}, {7, 129, kMid}, {129, 7, kLong}, {kMid, 257, 129}, {256, 256, 256}};
  check_variant("wgmma", &kernels::cuda::gemm_own_sm90, shapes, {0, 3}, 2, seed);
}

TEST_CASE("own gemm: the TMA kernel names what TMA cannot address", "[cuda][gemm][gemm_own]") {
  // Argument checks come before any device call: the same lines with and without a GPU.
  kernels::GemmArgs g;
  g.M = 64;
  g.N = 48;
  g.K = 40;
  g.ab_dtype = DType::bf16;
  g.c_dtype = DType::f32;
  g.lda = 40;
  g.ldb = 48;
  g.ldc = 48;
  auto fails_with = [&](const kernels::GemmArgs& a, const std::string& what) {
    INFO("expected: " << what);
    CHECK_THROWS_AS(kernels::cuda::gemm_own_sm90_tma(a, nullptr), std::invalid_argument);
    CHECK_THROWS_WITH(kernels::cuda::gemm_own_sm90_tma(a, nullptr), Catch::Contains(what));
  };
  kernels::GemmArgs a = g;
  a.lda = 44;
  fails_with(a, "gemm_own_sm90_tma: lda 44 is not a multiple of 8");
  a = g;
  a.trans_b = true;  // B stored (N, K): ldb >= K
  a.ldb = 41;
  fails_with(a, "ldb 41 is not a multiple of 8");
  a = g;
  a.A = reinterpret_cast<const void*>(uintptr_t(4096 + 8));
  fails_with(a, "A is not 16-byte aligned");
  a = g;
  a.B = reinterpret_cast<const void*>(uintptr_t(4096 + 2));
  fails_with(a, "B is not 16-byte aligned");
  a = g;
  a.batch = 2;
  a.stride_a = 64 * 40 + 4;
  a.stride_b = 40 * 48;
  a.stride_c = 64 * 48;
  fails_with(a, "stride_a 2564 is not a multiple of 8");
  a.stride_a = 8;  // batches would overlap
  fails_with(a, "stride_a 8 is below lda x rows = 2560");
  a = g;
  a.ab_dtype = DType::f16;
  fails_with(a, "A and B must be bf16");
  a = g;
  a.M = 0;
  fails_with(a, "M, N, K and batch must be >= 1");
  if (!testing::have_gpu()) {
    CHECK_FALSE(kernels::cuda::gemm_own_sm90_tma_available());
    fails_with(g, "needs a compute capability 9.0 device");
  }
}

// Last: a fault (or hang) of this kernel, written without a GPU, would spoil every later test case.
TEST_CASE("own gemm: the sm_90a TMA kernel", "[cuda][gemm][gemm_own]") {
  SKIP_WITHOUT_GPU();
  if (!kernels::cuda::gemm_own_sm90_tma_available()) {
    WARN("skipped: the TMA kernel needs a compute capability 9.0 device running the sm_90a image");
    return;
  }
  uint64_t seed = 1300;
  // Partial tiles everywhere; 4099: 65 k-tiles through the 4-stage ring; 520 columns: a third tile column
  // with one 64-wide B box of four (MN-major); M 64: one A box of two; K 64: one k-tile per tile.
  const Shape shapes[] = {{1, 1, 1},       {7, 129, kMid}, {129, 7, kLong}, {kMid, 257, 129},
                          {256, 256, 256}, {300, 520, 64}, {64, 200, 70}};
  // (TMA strides are multiples of 16 bytes: A's and B's leading dimensions rounded up to multiples of 8.)
  check_variant("TMA", &kernels::cuda::gemm_own_sm90_tma, shapes, {0, 8}, 2, seed, 8);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      INFO("TMA " << layout_name(ta, tb));
      // More output tiles than SMs (9 x 17 x 2 = 306): each CTA loops over several, the ring running on (lda
      // and ldb rounded up to multiples of 8).
      Case many{ta, tb, 2, 1100, 4100, 100, 1.0f, 1.0f, 0, 16, 0, 8};
      CHECK_OWN(float, many, &kernels::cuda::gemm_own_sm90_tma, 1e-4);
      many.beta = 0.0f;
      CHECK_OWN(bf16, many, &kernels::cuda::gemm_own_sm90_tma, 1e-2);
      // Where TMA cannot address the operands: an error, never a wrong result.
      Case odd{ta, tb, 1, 33, 17, 44, 1.0f, 0.0f, 3, 0, 0};  // lda 47 (A) or 36 (A^T)
      CHECK_THROWS_WITH(run_case<float>(odd, seed++, &kernels::cuda::gemm_own_sm90_tma),
                        Catch::Contains("is not a multiple of 8"));
    }
}

#else

TEST_CASE("own gemm: built without CUDA", "[cuda]") {
  WARN("skipped: polder was built without CUDA (POLDER_HAVE_CUDA undefined)");
  SUCCEED();
}

#endif
