// Row-major GEMM: C = alpha * op(A) op(B) + beta * C, op(A) (M, K), op(B) (K, N), batched with strides.
// Transposes are memory layouts (trans_a: A is stored (K, M)), never copies.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace polder::kernels {

struct GemmArgs {
  int64_t M = 0, N = 0, K = 0, batch = 1;
  DType ab_dtype = DType::f32;  // A and B: f32, bf16, f16 or f64
  DType c_dtype = DType::f32;   // C: ab_dtype, or f32 (bf16/f16 inputs with f32 output)
  const void* A = nullptr;
  bool trans_a = false;
  int64_t lda = 0, stride_a = 0;  // leading dimension (elements) and batch stride (elements)
  const void* B = nullptr;
  bool trans_b = false;
  int64_t ldb = 0, stride_b = 0;
  void* C = nullptr;
  int64_t ldc = 0, stride_c = 0;
  float alpha = 1.0f, beta = 0.0f;
};

namespace cpu {
// oneDNN matmul when built with it and the dtype combination is supported (primitives cached per shape);
// the reference GEMM otherwise.
void gemm(const GemmArgs& args);
// Plain OpenMP GEMM with acc_t accumulation: the spec, and the fallback (f64, builds without oneDNN).
void gemm_reference(const GemmArgs& args);
// Which implementation gemm() would use for these arguments ("onednn" or "reference").
const char* gemm_backend(const GemmArgs& args);
}  // namespace cpu

#ifdef POLDER_HAVE_CUDA
namespace cuda {
// cuBLASLt matmul on `stream` (a cudaStream_t; nullptr is the legacy default stream), A, B and C device pointers.
// f32 computes in fp32 (never TF32), bf16/f16 in fp32 with C in their dtype or f32, f64 in fp64 (C f64).
// beta == 0 never reads C (it may hold NaN); beta == 1 accumulates. Throws std::invalid_argument for bad
// arguments and std::runtime_error naming the failing cuBLASLt call and the shape.
void gemm(const GemmArgs& args, void* stream);
}  // namespace cuda
#endif
}  // namespace polder::kernels
