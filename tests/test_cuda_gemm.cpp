// kernels::cuda::gemm (cuBLASLt) against kernels::cpu::gemm_reference on the same host inputs: every
// transpose combination, batch 1 and 3 with gaps between batches, alpha/beta (beta 0 with C poisoned by NaN,
// which must not be read; beta 1 accumulates), padded leading dimensions, odd sizes, misaligned pointers, K =
// 0. C's padding and the gaps between its batches are poisoned and must come back byte for byte. Normalised
// error max|gpu - ref| / max|ref|: f32 < 1e-5 (no TF32), bf16/f16 in with f32 out < 1e-5, f16 out < 2e-3,
// bf16 out < 1e-2, f64 < 1e-12. Tagged [cuda]; without a device each test warns that it skipped and passes.
#include <catch2/catch.hpp>

#ifdef POLDER_HAVE_CUDA

#include <cuda_runtime.h>

#include "tests/cuda_testing.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/gemm.h"

using namespace polder;
using polder::testing::DevBuf;
using polder::testing::randn;

namespace {

template <typename T>
T poison() {
  T v;
  auto* bytes = reinterpret_cast<unsigned char*>(&v);
  std::fill(bytes, bytes + sizeof(T), static_cast<unsigned char>(0xFF));  // NaN in f32, f64, bf16 and f16
  return v;
}

struct Case {
  bool ta = false, tb = false;
  int64_t batch = 1, M = 0, N = 0, K = 0;
  float alpha = 1.0f, beta = 0.0f;
  int64_t pad = 0;      // extra columns in every leading dimension
  int64_t gap = 0;      // extra elements between batches
  size_t misalign = 0;  // elements by which A, B and C are shifted off the allocation's alignment
};

struct Result {
  double err = 0;
  int64_t padding_changed = 0;  // elements of C outside the M x N blocks that differ from what was there
};

// Runs the case on the GPU and through gemm_reference on the same host data.
template <typename TA, typename TC>
Result run_case(const Case& c, uint64_t seed) {
  const int64_t ar = c.ta ? c.K : c.M, ac = c.ta ? c.M : c.K, br = c.tb ? c.N : c.K, bc = c.tb ? c.K : c.N;
  kernels::GemmArgs g;
  g.M = c.M;
  g.N = c.N;
  g.K = c.K;
  g.batch = c.batch;
  g.ab_dtype = dtype_of<TA>();
  g.c_dtype = dtype_of<TC>();
  g.trans_a = c.ta;
  g.lda = std::max<int64_t>(ac, 1) + c.pad;
  g.stride_a = ar * g.lda + c.gap;
  g.trans_b = c.tb;
  g.ldb = std::max<int64_t>(bc, 1) + c.pad;
  g.stride_b = br * g.ldb + c.gap;
  g.ldc = c.N + c.pad;
  g.stride_c = c.M * g.ldc + c.gap;
  g.alpha = c.alpha;
  g.beta = c.beta;

  auto a = randn<TA>(static_cast<size_t>(std::max<int64_t>(c.batch * g.stride_a, 1)), seed);
  auto b = randn<TA>(static_cast<size_t>(std::max<int64_t>(c.batch * g.stride_b, 1)), seed + 1);
  // C: NaN everywhere (padding, gaps, and the blocks when beta == 0, which must not be read); random blocks
  // when beta != 0.
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

  DevBuf<TA> da(a, c.misalign), db(b, c.misalign);
  DevBuf<TC> dc(c0, c.misalign);
  g.A = da.get();
  g.B = db.get();
  g.C = dc.get();
  kernels::cuda::gemm(g, nullptr);
  CUDA_OK(cudaGetLastError());
  const std::vector<TC> got = dc.host();

  std::vector<TC> ref = c0;
  g.A = a.data();
  g.B = b.data();
  g.C = ref.data();
  kernels::cpu::gemm_reference(g);

  Result r;
  double num = 0, den = 1e-30;
  for (size_t k = 0; k < got.size(); ++k) {
    if (!in_block[k]) {
      r.padding_changed += std::memcmp(&got[k], &c0[k], sizeof(TC)) != 0;
      continue;
    }
    const double gv = static_cast<double>(got[k]), rv = static_cast<double>(ref[k]);
    if (std::isnan(gv) || std::isinf(gv)) {
      r.err = std::numeric_limits<double>::infinity();
      continue;
    }
    num = std::max(num, std::abs(gv - rv));
    den = std::max(den, std::abs(rv));
  }
  if (r.err == 0) r.err = num / den;
  return r;
}

#define CHECK_CASE(TA, TC, c, limit)                                                                   \
  do {                                                                                                 \
    const Result r_ = run_case<TA, TC>((c), seed++);                                                   \
    INFO(#TA " -> " #TC " normalised error " << r_.err << " (limit " << (limit)                        \
                                             << "), padding elements changed " << r_.padding_changed); \
    CHECK(r_.err < (limit));                                                                           \
    CHECK(r_.padding_changed == 0);                                                                    \
  } while (0)

}  // namespace

TEST_CASE("cuda gemm matches the reference GEMM", "[cuda][gemm]") {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 1;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int64_t batch : {1, 3}) {
        INFO("trans_a " << ta << " trans_b " << tb << " batch " << batch);
        Case odd{ta, tb, batch, 37, 29, 53, 1.0f, 0.0f, 0, 0, 0};
        Case acc{ta, tb, batch, 37, 29, 53, 0.5f, 1.0f, 3, 5, 0};
        Case big{ta, tb, batch, 128, 96, 256, 1.0f, 1.0f, 8, 64, 0};
        for (const Case& c : {odd, acc, big}) {
          INFO("M " << c.M << " N " << c.N << " K " << c.K << " alpha " << c.alpha << " beta " << c.beta
                    << " pad " << c.pad << " gap " << c.gap);
          CHECK_CASE(float, float, c, 1e-5);
          CHECK_CASE(bf16, float, c, 1e-5);
          CHECK_CASE(bf16, bf16, c, 1e-2);
          CHECK_CASE(f16, float, c, 1e-5);
          CHECK_CASE(f16, f16, c, 2e-3);
          CHECK_CASE(double, double, c, 1e-12);
        }
      }
}

TEST_CASE("cuda gemm: misaligned operands, K = 0, repeated shapes", "[cuda][gemm]") {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 100;
  for (size_t misalign : {1, 3}) {
    INFO("pointers shifted by " << misalign << " elements");
    Case c{false, true, 3, 37, 29, 53, 1.0f, 1.0f, 1, 1, misalign};
    CHECK_CASE(float, float, c, 1e-5);
    CHECK_CASE(bf16, float, c, 1e-5);
    CHECK_CASE(bf16, bf16, c, 1e-2);
  }
  for (float beta : {0.0f, 1.0f, 0.5f}) {
    INFO("K = 0, beta " << beta);
    Case c{false, false, 3, 7, 5, 0, 1.0f, beta, 2, 3, 0};
    CHECK_CASE(float, float, c, 1e-6);
    CHECK_CASE(bf16, bf16, c, 1e-2);
    CHECK_CASE(bf16, float, c, 1e-6);
  }
  // The second call of a shape runs the cached plan; a new seed gives new data through it.
  Case c{true, false, 1, 64, 48, 32, 2.0f, 0.0f, 0, 0, 0};
  for (int rep = 0; rep < 2; ++rep) {
    CHECK_CASE(bf16, float, c, 1e-5);
    CHECK_CASE(float, float, c, 1e-5);
  }
}

TEST_CASE("cuda gemm rejects bad arguments before touching the device", "[cuda][gemm]") {
  kernels::GemmArgs g;
  g.M = g.N = g.K = 4;
  g.lda = g.ldb = g.ldc = 4;
  g.ab_dtype = DType::bf16;
  g.c_dtype = DType::f16;
  CHECK_THROWS_AS(kernels::cuda::gemm(g, nullptr), std::invalid_argument);
  g.ab_dtype = DType::f64;
  g.c_dtype = DType::f32;
  CHECK_THROWS_AS(kernels::cuda::gemm(g, nullptr), std::invalid_argument);
  g.ab_dtype = g.c_dtype = DType::f32;
  g.lda = 3;
  CHECK_THROWS_WITH(kernels::cuda::gemm(g, nullptr), Catch::Contains("lda 3 < 4"));
  g.lda = 4;
  g.ab_dtype = g.c_dtype = DType::i32;
  CHECK_THROWS_AS(kernels::cuda::gemm(g, nullptr), std::invalid_argument);
}

#else

TEST_CASE("cuda gemm: built without CUDA", "[cuda]") {
  WARN("skipped: polder was built without CUDA (POLDER_HAVE_CUDA undefined)");
  SUCCEED();
}

#endif
