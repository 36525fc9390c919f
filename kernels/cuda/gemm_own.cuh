// Shared by polder's own bf16 GEMM kernels (gemm_sm80.cu: mma.sync; gemm_sm90.cu: wgmma): the block tile and
// thread count they both use, the kernel parameters, the register-staged global loader of an operand tile,
// the epilogue store of one C element, and the parameter set-up of a launch. Only included by those two
// files.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/gemm.h"

namespace polder::kernels::cuda::detail::own_gemm {

constexpr int kBM = 128, kBN = 128, kBK = 32, kThreads = 256, kGroup = 8;
constexpr int kChunks = kBM * kBK / 8 / kThreads;  // 16-byte chunks per thread and operand (2)
static_assert(kBM == kBN, "one loader serves both operands");
static_assert(kChunks * 8 * kThreads == kBM * kBK, "loader covers the tile exactly");

struct Params {
  const uint16_t* A;
  const uint16_t* B;
  void* C;
  int64_t M, N, K, batch, lda, ldb, ldc, sa, sb, sc;
  float alpha, beta;
  int tiles_m, tiles_n;
  bool direct_a, direct_b;  // operand stored k-contiguous: A not transposed, B transposed
  bool vec_a, vec_b;  // 16-byte global loads allowed (ld, batch stride and pointer multiples of 8 elements)
};

// Loads this thread's chunks of the `rows` x K operand tile (rows r0.., k0..) into registers. direct: element
// (r, k) at base[r * ld + k]; otherwise at base[k * ld + r].
__device__ __forceinline__ void load_tile(const uint16_t* __restrict__ base, int64_t ld, int64_t rows,
                                          int64_t K, int64_t r0, int64_t k0, bool direct, bool vec,
                                          uint4 (&reg)[kChunks]) {
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    uint16_t e[8];
    if (direct) {
      const int64_t r = r0 + (c >> 2), k = k0 + (c & 3) * 8;
      if (vec && r < rows && k + 8 <= K) {
        reg[i] = *reinterpret_cast<const uint4*>(base + r * ld + k);
        continue;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) e[j] = (r < rows && k + j < K) ? base[r * ld + k + j] : uint16_t(0);
    } else {
      const int64_t k = k0 + (c >> 4), r = r0 + (c & 15) * 8;
      if (vec && k < K && r + 8 <= rows) {
        reg[i] = *reinterpret_cast<const uint4*>(base + k * ld + r);
        continue;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) e[j] = (k < K && r + j < rows) ? base[k * ld + r + j] : uint16_t(0);
    }
    reg[i].x = e[0] | (uint32_t(e[1]) << 16);
    reg[i].y = e[2] | (uint32_t(e[3]) << 16);
    reg[i].z = e[4] | (uint32_t(e[5]) << 16);
    reg[i].w = e[6] | (uint32_t(e[7]) << 16);
  }
}

template <bool kF32Out>
__device__ __forceinline__ void store_c(const Params& p, int64_t batch, int64_t row, int64_t col, float acc) {
  if (row >= p.M || col >= p.N) return;
  const int64_t at = batch * p.sc + row * p.ldc + col;
  float v = p.alpha * acc;
  if constexpr (kF32Out) {
    float* c = static_cast<float*>(p.C) + at;
    if (p.beta != 0.0f) v += p.beta * *c;
    *c = v;
  } else {
    uint16_t* c = static_cast<uint16_t*>(p.C) + at;
    if (p.beta != 0.0f) v += p.beta * __uint_as_float(uint32_t(*c) << 16);
    *c = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
}

// 16-byte global loads are allowed: pointer 16-byte aligned, ld and batch stride multiples of 8 elements.
inline bool vec_ok(const void* p, int64_t ld, int64_t stride, int64_t batch) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && ld % 8 == 0 && (batch == 1 || stride % 8 == 0);
}

// The parameters of a launch for checked arguments (bf16 A/B, f32 or bf16 C).
inline Params make_params(const GemmArgs& g) {
  Params p{};
  p.A = static_cast<const uint16_t*>(g.A);
  p.B = static_cast<const uint16_t*>(g.B);
  p.C = g.C;
  p.M = g.M;
  p.N = g.N;
  p.K = g.K;
  p.batch = g.batch;
  p.lda = g.lda;
  p.ldb = g.ldb;
  p.ldc = g.ldc;
  p.sa = g.stride_a;
  p.sb = g.stride_b;
  p.sc = g.stride_c;
  p.alpha = g.alpha;
  p.beta = g.beta;
  p.tiles_m = static_cast<int>((g.M + kBM - 1) / kBM);
  p.tiles_n = static_cast<int>((g.N + kBN - 1) / kBN);
  p.direct_a = !g.trans_a;
  p.direct_b = g.trans_b;
  p.vec_a = vec_ok(g.A, g.lda, g.stride_a, g.batch);
  p.vec_b = vec_ok(g.B, g.ldb, g.stride_b, g.batch);
  return p;
}

// Tiles along x (grouped order inside the kernel), batches along y.
inline dim3 grid_of(const Params& p) {
  return dim3(static_cast<unsigned>(int64_t(p.tiles_m) * p.tiles_n),
              static_cast<unsigned>(std::min<int64_t>(p.batch, 65535)));
}

}  // namespace polder::kernels::cuda::detail::own_gemm
