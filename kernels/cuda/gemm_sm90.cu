// polder's own bf16 GEMM for Hopper through wgmma (sm_90a only; compiled with an extra
// -gencode=arch=compute_90a,code=sm_90a, see kernels/CMakeLists.txt): the same contract and tiling as
// gemm_sm80.cu (128 x 128 x 32 block tiles, register-staged 16-byte global loads, two shared-memory buffers,
// grouped tile order, any sizes and leading dimensions, f32 or bf16 C with alpha/beta, batched), but each of
// the two warpgroups multiplies its 64 x 128 half of the tile with wgmma.m64n128k16 from shared memory, and
// the next k-tile's global loads are issued while the asynchronous wgmma runs.
//
// Shared memory holds each operand tile k-contiguous in the no-swizzle core-matrix layout wgmma reads: 8 x 8
// core matrices of 8 rows x 16 bytes, element (r, k) at ((r / 8) * 4 + k / 8) * 128 + (r % 8) * 16 + (k % 8)
// * 2 bytes, so the descriptor's leading-dimension byte offset (next core matrix along K) is 128 and its
// stride byte offset (next 8 rows along M or N) is 512. Ordinary stores fill it, so every thread fences the
// async proxy (fence.proxy.async.shared::cta) before the barrier that precedes the wgmma.
//
// Not built here: TMA loads into a deeper mbarrier ring with producer/consumer warpgroups and setmaxnreg, and
// a persistent grid. Unverified on a GPU when written (no machine was lent): gemm.cu uses it only where
// POLDER_GEMM_SM90=1 asks for it, and auto still checks it against cuBLASLt before choosing it. A probe
// kernel reports whether the loaded image is the sm_90a one (an sm_90 image of this file holds empty bodies).
#include "kernels/cuda/gemm_own.cuh"
#include "kernels/cuda/sm90_async.cuh"  // defines POLDER_SM90A_DEVICE in the sm_90a image

namespace polder::kernels::cuda::detail {
namespace {

using namespace own_gemm;

#ifdef POLDER_SM90A_DEVICE
constexpr int kTileBytes = kBM * kBK * 2;   // one operand tile (8 KiB)
constexpr uint32_t kLbo = 128, kSbo = 512;  // core-matrix strides along K and along M/N (bytes)

// Byte offset of element (r, k) in a core-matrix tile.
__device__ __forceinline__ uint32_t cm_offset(int r, int k) {
  return static_cast<uint32_t>(((r >> 3) * (kBK / 8) + (k >> 3)) * 128 + (r & 7) * 16 + (k & 7) * 2);
}

__device__ __forceinline__ void store_tile(unsigned char* s, bool direct, const uint4 (&reg)[kChunks]) {
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    if (direct) {
      *reinterpret_cast<uint4*>(s + cm_offset(c >> 2, (c & 3) * 8)) = reg[i];
    } else {
      const int k = c >> 4, r = (c & 15) * 8;
      const uint32_t w[4] = {reg[i].x, reg[i].y, reg[i].z, reg[i].w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        *reinterpret_cast<uint16_t*>(s + cm_offset(r + 2 * j, k)) = static_cast<uint16_t>(w[j] & 0xFFFFu);
        *reinterpret_cast<uint16_t*>(s + cm_offset(r + 2 * j + 1, k)) = static_cast<uint16_t>(w[j] >> 16);
      }
    }
  }
}

// wgmma shared-memory matrix descriptor, no swizzle: start address, leading and stride byte offsets (each >>
// 4).
__device__ __forceinline__ uint64_t make_desc(const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  uint64_t d = 0;
  d |= static_cast<uint64_t>((addr >> 4) & 0x3FFF);
  d |= static_cast<uint64_t>((kLbo >> 4) & 0x3FFF) << 16;
  d |= static_cast<uint64_t>((kSbo >> 4) & 0x3FFF) << 32;
  return d;  // base offset 0, swizzle mode 0 (none)
}

__device__ __forceinline__ void acc_fence(float (&d)[64]) {
#ifdef POLDER_CUDA_SIM
  (void)d;  // the emulator's wgmma reads and writes the accumulators in memory: nothing to pin
#else
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// D (64 x 128, fp32) += A (64 x 16, K-major in shared memory) * B (16 x 128, K-major: N rows of K).
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db) {
#ifdef POLDER_CUDA_SIM
  ::sim::wgmma(d, 128, da, nullptr, db, true, false, false, ::sim::MmaType::bf16);
#else
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),
        "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
        "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),
        "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),
        "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]),
        "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(1));  // p: D = A B + D; scale-a, scale-b 1; both operands K-major
#endif
}

#endif  // POLDER_SM90A_DEVICE

template <bool kF32Out>
__global__ void __launch_bounds__(kThreads, 1) gemm_bf16_wgmma_kernel(const Params p) {
#ifdef POLDER_SM90A_DEVICE
  __shared__ __align__(128) unsigned char As[2][kTileBytes];
  __shared__ __align__(128) unsigned char Bs[2][kTileBytes];

  const int pid = static_cast<int>(blockIdx.x), width = kGroup * p.tiles_n, group = pid / width;
  const int first_m = group * kGroup, group_rows = min(p.tiles_m - first_m, kGroup);
  const int64_t m0 = int64_t(first_m + (pid % width) % group_rows) * kBM;
  const int64_t n0 = int64_t((pid % width) / group_rows) * kBN;

  const int wg = static_cast<int>(threadIdx.x) / 128;  // warpgroup: rows wg * 64 .. + 63 of the tile
  const int wq = (static_cast<int>(threadIdx.x) % 128) / kWarp;  // warp within the warpgroup: 16 rows each
  const int lane = static_cast<int>(threadIdx.x) % kWarp, g = lane >> 2, t = lane & 3;
  const int ktiles = static_cast<int>((p.K + kBK - 1) / kBK);

  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const uint16_t* A = p.A + b * p.sa;
    const uint16_t* B = p.B + b * p.sb;
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

    uint4 ra[kChunks], rb[kChunks];
    load_tile(A, p.lda, p.M, p.K, m0, 0, p.direct_a, p.vec_a, ra);
    load_tile(B, p.ldb, p.N, p.K, n0, 0, p.direct_b, p.vec_b, rb);
    __syncthreads();
    store_tile(As[0], p.direct_a, ra);
    store_tile(Bs[0], p.direct_b, rb);
    sm90::fence_proxy_async_shared();
    __syncthreads();

    for (int kt = 0; kt < ktiles; ++kt) {
      const int buf = kt & 1;
      const bool more = kt + 1 < ktiles;
      acc_fence(acc);
      sm90::wgmma_fence_sync();
#pragma unroll
      for (int ks = 0; ks < kBK / 16; ++ks) {  // two k16 steps = two core matrices along K each
        const uint64_t da = make_desc(As[buf] + wg * 8 * kSbo + ks * 2 * kLbo);
        const uint64_t db = make_desc(Bs[buf] + ks * 2 * kLbo);
        wgmma_m64n128k16(acc, da, db);
      }
      sm90::wgmma_commit_group();
      if (more) {  // global loads in flight while the tensor cores work
        load_tile(A, p.lda, p.M, p.K, m0, int64_t(kt + 1) * kBK, p.direct_a, p.vec_a, ra);
        load_tile(B, p.ldb, p.N, p.K, n0, int64_t(kt + 1) * kBK, p.direct_b, p.vec_b, rb);
      }
      sm90::wgmma_wait_group<0>();
      acc_fence(acc);
      if (more) {  // the other buffer's wgmmas completed before the previous barrier
        store_tile(As[buf ^ 1], p.direct_a, ra);
        store_tile(Bs[buf ^ 1], p.direct_b, rb);
        sm90::fence_proxy_async_shared();
      }
      __syncthreads();
    }

    // Accumulator layout of m64nNk16: warp wq of the warpgroup holds rows 16 wq + g and 16 wq + g + 8; per
    // 8-column block j, acc[4j + 0, 1] at columns 8j + 2t, + 1 of the first row, acc[4j + 2, 3] of the
    // second.
    const int64_t row = m0 + wg * 64 + wq * 16 + g;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int64_t col = n0 + j * 8 + 2 * t;
      store_c<kF32Out>(p, b, row, col, acc[4 * j]);
      store_c<kF32Out>(p, b, row, col + 1, acc[4 * j + 1]);
      store_c<kF32Out>(p, b, row + 8, col, acc[4 * j + 2]);
      store_c<kF32Out>(p, b, row + 8, col + 1, acc[4 * j + 3]);
    }
  }
#else
  (void)p;
#endif
}

// out[0] = 1 where the image running is the sm_90a one (wgmma bodies present).
__global__ void gemm_sm90_probe_kernel(int* out) {
#ifdef POLDER_SM90A_DEVICE
  *out = 1;
#else
  *out = 0;
#endif
}

}  // namespace

// Whether the wgmma kernel can run on the current device (probed once per process: compute capability 9.0
// and the sm_90a image loaded).
bool gemm_sm90_available() {
  static const bool available = sm90::runs_sm90a_image(&gemm_sm90_probe_kernel);
  return available;
}

void gemm_bf16_sm90(const GemmArgs& g, cudaStream_t stream) {
  const Params p = make_params(g);
  const dim3 grid = grid_of(p);
  if (g.c_dtype == DType::f32)
    gemm_bf16_wgmma_kernel<true><<<grid, kThreads, 0, stream>>>(p);
  else
    gemm_bf16_wgmma_kernel<false><<<grid, kThreads, 0, stream>>>(p);
  check_launch("gemm: gemm_bf16_wgmma_kernel (polder's own GEMM, sm_90a)");
}

}  // namespace polder::kernels::cuda::detail
