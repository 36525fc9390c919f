// kernels::cpu::gemm (oneDNN) against the reference GEMM: every transpose combination, batches, alpha/beta,
// padded leading dimensions, f32 and bf16 (with f32 output).
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
