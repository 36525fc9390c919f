// polder's own bf16 GEMM on tensor cores through mma.sync (sm_80 and later, so it also runs on Hopper):
// row-major C = alpha op(A) op(B) + beta C with bf16 A/B, fp32 accumulation, f32 or bf16 C, every transpose
// combination, batched. The fallback of the sm_90 path and, until a wgmma kernel exists, polder's only own
// GEMM; the dispatcher in gemm.cu runs it only where it measured it correct and faster than cuBLASLt.
//
// Block tile 128 x 128 x 32, 256 threads = 8 warps as 2 (M) x 4 (N), each warp 64 x 32 = 4 x 4 tiles of
// mma.m16n8k16 (64 fp32 accumulators per thread). Shared memory holds both operands k-contiguous, As[m][k]
// and Bs[n][k], rows padded from 32 to 40 elements (80 bytes: 16-byte aligned, and the fragment loads of 8
// rows x 4 words hit 32 distinct banks); two buffers, the next k-tile staged in registers (16-byte global
// loads) while the current one is multiplied. An operand stored k-contiguous (A, B^T) is copied as 16-byte
// vectors; one stored the other way (A^T, B) is transposed on the way into shared memory by 2-byte stores.
// Out-of-range rows and columns (sizes not multiples of the tile) load as zeros and are never stored; a
// leading dimension, batch stride or pointer that rules out 16-byte loads takes the element-wise path, so any
// ld is accepted. Tiles are visited in groups of 8 tile-rows (the L2-friendly order), batches along
// gridDim.y.
#include "kernels/cuda/gemm_own.cuh"

namespace polder::kernels::cuda::detail {
namespace {

using namespace own_gemm;
constexpr int kLds = kBK + 8;
constexpr int kWarpM = 64, kWarpN = 32, kMTiles = kWarpM / 16, kNTiles = kWarpN / 8;

// Writes the staged chunks into s[r][k] (k-contiguous rows of kLds elements).
__device__ __forceinline__ void store_tile(uint16_t (*s)[kLds], bool direct, const uint4 (&reg)[kChunks]) {
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    if (direct) {
      *reinterpret_cast<uint4*>(&s[c >> 2][(c & 3) * 8]) = reg[i];
    } else {
      const int k = c >> 4, r = (c & 15) * 8;
      const uint32_t w[4] = {reg[i].x, reg[i].y, reg[i].z, reg[i].w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[r + 2 * j][k] = static_cast<uint16_t>(w[j] & 0xFFFFu);
        s[r + 2 * j + 1][k] = static_cast<uint16_t>(w[j] >> 16);
      }
    }
  }
}

__device__ __forceinline__ uint32_t lds32(const uint16_t* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(POLDER_CUDA_SIM)  // tests/sim, the CPU emulator
  ::sim::mma_m16n8k16(d, a, b[0], b[1], ::sim::MmaType::bf16);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  (void)d, (void)a, (void)b;
  __trap();  // never launched below sm_80 (the host side checks the device)
#endif
}

template <bool kF32Out>
__global__ void __launch_bounds__(kThreads, 2) gemm_bf16_mma_kernel(const Params p) {
  __shared__ __align__(16) uint16_t As[2][kBM][kLds];
  __shared__ __align__(16) uint16_t Bs[2][kBN][kLds];

  // Grouped tile order: kGroup tile-rows share the same B columns while they are in L2.
  const int pid = static_cast<int>(blockIdx.x), width = kGroup * p.tiles_n, group = pid / width;
  const int first_m = group * kGroup, group_rows = min(p.tiles_m - first_m, kGroup);
  const int64_t m0 = int64_t(first_m + (pid % width) % group_rows) * kBM;
  const int64_t n0 = int64_t((pid % width) / group_rows) * kBN;

  const int lane = static_cast<int>(threadIdx.x) % kWarp, warp = static_cast<int>(threadIdx.x) / kWarp;
  const int wm = (warp / 4) * kWarpM, wn = (warp % 4) * kWarpN, g = lane >> 2, t = lane & 3;
  const int ktiles = static_cast<int>((p.K + kBK - 1) / kBK);

  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const uint16_t* A = p.A + b * p.sa;
    const uint16_t* B = p.B + b * p.sb;
    float acc[kMTiles][kNTiles][4];
#pragma unroll
    for (int i = 0; i < kMTiles; ++i)
#pragma unroll
      for (int j = 0; j < kNTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    uint4 ra[kChunks], rb[kChunks];
    load_tile(A, p.lda, p.M, p.K, m0, 0, p.direct_a, p.vec_a, ra);
    load_tile(B, p.ldb, p.N, p.K, n0, 0, p.direct_b, p.vec_b, rb);
    __syncthreads();  // the previous batch's last tile may still be read
    store_tile(As[0], p.direct_a, ra);
    store_tile(Bs[0], p.direct_b, rb);
    __syncthreads();

    for (int kt = 0; kt < ktiles; ++kt) {
      const int buf = kt & 1;
      const bool more = kt + 1 < ktiles;
      if (more) {  // the next tile's global loads are in flight while this one is multiplied
        load_tile(A, p.lda, p.M, p.K, m0, int64_t(kt + 1) * kBK, p.direct_a, p.vec_a, ra);
        load_tile(B, p.ldb, p.N, p.K, n0, int64_t(kt + 1) * kBK, p.direct_b, p.vec_b, rb);
      }
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        uint32_t af[kMTiles][4], bfr[kNTiles][2];
#pragma unroll
        for (int i = 0; i < kMTiles; ++i) {
          const int r = wm + i * 16 + g;
          af[i][0] = lds32(&As[buf][r][kk + 2 * t]);
          af[i][1] = lds32(&As[buf][r + 8][kk + 2 * t]);
          af[i][2] = lds32(&As[buf][r][kk + 2 * t + 8]);
          af[i][3] = lds32(&As[buf][r + 8][kk + 2 * t + 8]);
        }
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          const int n = wn + j * 8 + g;
          bfr[j][0] = lds32(&Bs[buf][n][kk + 2 * t]);
          bfr[j][1] = lds32(&Bs[buf][n][kk + 2 * t + 8]);
        }
#pragma unroll
        for (int i = 0; i < kMTiles; ++i)
#pragma unroll
          for (int j = 0; j < kNTiles; ++j) mma_bf16(acc[i][j], af[i], bfr[j]);
      }
      if (more) {  // the other buffer was last read before the previous barrier
        store_tile(As[buf ^ 1], p.direct_a, ra);
        store_tile(Bs[buf ^ 1], p.direct_b, rb);
      }
      __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < kMTiles; ++i)
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
        const int64_t row = m0 + wm + i * 16 + g, col = n0 + wn + j * 8 + 2 * t;
        store_c<kF32Out>(p, b, row, col, acc[i][j][0]);
        store_c<kF32Out>(p, b, row, col + 1, acc[i][j][1]);
        store_c<kF32Out>(p, b, row + 8, col, acc[i][j][2]);
        store_c<kF32Out>(p, b, row + 8, col + 1, acc[i][j][3]);
      }
  }
}

}  // namespace

// Launches the kernel for checked arguments (bf16 A/B, f32 or bf16 C, M, N, K, batch >= 1; gemm.cu's
// gemm_own checks them and the device).
void gemm_bf16_sm80(const GemmArgs& g, cudaStream_t stream) {
  const Params p = make_params(g);
  const dim3 grid = grid_of(p);
  if (g.c_dtype == DType::f32)
    gemm_bf16_mma_kernel<true><<<grid, kThreads, 0, stream>>>(p);
  else
    gemm_bf16_mma_kernel<false><<<grid, kThreads, 0, stream>>>(p);
  check_launch("gemm: gemm_bf16_mma_kernel (polder's own GEMM)");
}

}  // namespace polder::kernels::cuda::detail
