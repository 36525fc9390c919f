// polder's own bf16 GEMM for Hopper in the form the hardware is built for (sm_90a only; compiled with an
// extra -gencode=arch=compute_90a,code=sm_90a, see kernels/CMakeLists.txt): TMA loads into a 4-stage
// shared-memory ring, warp-specialised producer and consumer warpgroups, wgmma from 128-byte-swizzled tiles,
// a persistent grid. Same contract as gemm_sm80.cu (row-major, every layout, batched, f32 or bf16 C with
// alpha/beta, any M, N, K) for operands TMA can address: A and B 16-byte aligned, lda/ldb (and batch strides)
// multiples of 8 elements (gemm_sm90_tma_unsupported names what is not; gemm_own falls back to the other
// kernels there).
//
// Block tile 128 x 256 x 64; 384 threads = 3 warpgroups. Warpgroup 0 is the producer (setmaxnreg.dec to 40
// registers): one thread waits for a free stage ("empty" mbarrier), announces the stage's bytes on its "full"
// mbarrier (arrive.expect_tx) and issues the TMA loads (cp.async.bulk.tensor.3d, coordinates (inner, outer,
// batch)), which complete the transaction on that barrier. Warpgroups 1 and 2 are consumers (setmaxnreg.inc
// to 232): each waits on the stage's full barrier, issues 4 wgmma.m64n256k16 (its 64 rows of the tile x all
// 256 columns, 128 fp32 accumulators per thread), commits them as one group, waits until at most this group
// is in flight (wait_group 1) and then releases the previous k-tile's stage (one arrival per warpgroup on its
// empty barrier, initialised with count 2). Both roles walk the same sequence of (tile, k-tile) pairs, so the
// stage index and phase parity run on continuously across tiles; the producer runs up to 4 k-tiles ahead,
// into the next tile while the consumers store this one. The grid is min(SMs, tiles); each CTA takes tiles
// blockIdx.x, + gridDim.x, ... in the grouped order of gemm_sm90_layout.h (batch included).
//
// Operands are loaded as they are stored: K-major (A, B^T) as one box of 64 K (128 bytes) x 128 or 256 rows,
// MN-major (A^T, B) as boxes of 64 M/N (128 bytes) x 64 K; wgmma's transpose bits say which. Every address
// computation (swizzle, descriptors, box placement, tile order) lives in gemm_sm90_layout.h and is checked
// there on a CPU (tests/test_gemm_sm90_layout.cpp). Out-of-range parts of a box are zero-filled by TMA (and
// still counted in the transaction bytes); boxes entirely outside the matrix (the second or later 64-wide box
// of a narrow MN-major tile) are not issued and not counted: the stale bytes left there only reach output
// rows/columns the epilogue skips. The epilogue stores from registers with alpha/beta, two columns at a time
// where C's alignment allows.
//
// Written without a GPU (none was lent): gemm.cu runs it only under POLDER_GEMM_SM90=1, because a wrong
// mbarrier protocol hangs rather than failing the dispatcher's check. A probe kernel reports whether the
// loaded image is the sm_90a one (an sm_80/sm_90 image of this file holds empty bodies). Under
// POLDER_CUDA_SIM the source runs on tests/sim's CPU emulator of TMA, mbarrier and wgmma
// (test_sim_gemm_sm90_tma, against gemm_reference; docs/perf/NOTES.md, "Emulated tensor-core tests").
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm_sm90_layout.h"
#include "kernels/cuda/sm90_async.cuh"  // defines POLDER_SM90A_DEVICE in the sm_90a image
#include "kernels/gemm.h"

namespace polder::kernels::cuda::detail {
namespace {

using namespace sm90_layout;
using namespace sm90;

constexpr int kThreads = 384;                           // producer warpgroup + 2 consumer warpgroups
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // per-thread registers after setmaxnreg

struct TmaParams {
  void* C;
  int64_t M, N, ldc, sc, tiles;  // tiles: batch * tiles_m * tiles_n
  int tiles_m, tiles_n, ktiles;
  float alpha, beta;
  bool vec_c;  // two adjacent C elements can be read/written as one 8-byte (f32) or 4-byte (bf16) access
};

#ifdef POLDER_SM90A_DEVICE

__device__ __forceinline__ uint32_t bar_full(uint32_t base, int s) {
  return base + kSmemBars + 8u * static_cast<uint32_t>(s);
}
__device__ __forceinline__ uint32_t bar_empty(uint32_t base, int s) {
  return base + kSmemBars + 8u * static_cast<uint32_t>(kStages + s);
}

__device__ __forceinline__ void acc_fence(float (&d)[128]) {
#ifdef POLDER_CUDA_SIM
  (void)d;  // the emulator's wgmma reads and writes the accumulators in memory: nothing to pin
#else
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

#define POLDER_ACC8(i)                                                                        \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])

// D (64 x 256, fp32) = A (64 x 16) B (16 x 256) + (accumulate ? D : 0), both operands from shared memory
// through descriptors; kTransA / kTransB: the operand is MN-major (imm-trans 1) rather than K-major.
template <bool kTransA, bool kTransB>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t da, uint64_t db,
                                                 uint32_t accumulate) {
#ifdef POLDER_CUDA_SIM
  ::sim::wgmma(d, 256, da, nullptr, db, accumulate != 0, kTransA, kTransB, ::sim::MmaType::bf16);
#else
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
      "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "
      "%59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, "
      "%78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, "
      "%97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, "
      "%114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
      "%128, %129, p, 1, 1, %131, %132;\n"
      "}\n"
      : POLDER_ACC8(0), POLDER_ACC8(8), POLDER_ACC8(16), POLDER_ACC8(24), POLDER_ACC8(32), POLDER_ACC8(40),
        POLDER_ACC8(48), POLDER_ACC8(56), POLDER_ACC8(64), POLDER_ACC8(72), POLDER_ACC8(80), POLDER_ACC8(88),
        POLDER_ACC8(96), POLDER_ACC8(104), POLDER_ACC8(112), POLDER_ACC8(120)
      : "l"(da), "l"(db), "r"(accumulate), "n"(kTransA ? 1 : 0), "n"(kTransB ? 1 : 0));
#endif
}
#undef POLDER_ACC8

// Two adjacent C elements (row, col) and (row, col + 1) of batch offset `base`: alpha * acc + beta * C, the
// second only where col + 1 < N.
template <bool kF32Out>
__device__ __forceinline__ void store_pair(const TmaParams& p, int64_t base, int64_t row, int64_t col,
                                           float v0, float v1) {
  if (row >= p.M || col >= p.N) return;
  const bool both = col + 1 < p.N;
  const int64_t at = base + row * p.ldc + col;
  v0 *= p.alpha;
  v1 *= p.alpha;
  if constexpr (kF32Out) {
    float* c = static_cast<float*>(p.C) + at;
    if (both && p.vec_c) {
      if (p.beta != 0.0f) {
        const float2 old = *reinterpret_cast<const float2*>(c);
        v0 += p.beta * old.x;
        v1 += p.beta * old.y;
      }
      *reinterpret_cast<float2*>(c) = make_float2(v0, v1);
      return;
    }
    if (p.beta != 0.0f) v0 += p.beta * c[0];
    c[0] = v0;
    if (both) {
      if (p.beta != 0.0f) v1 += p.beta * c[1];
      c[1] = v1;
    }
  } else {
    uint16_t* c = static_cast<uint16_t*>(p.C) + at;
    auto to_f = [](uint16_t h) { return __uint_as_float(uint32_t(h) << 16); };
    auto to_h = [](float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); };
    if (both && p.vec_c) {
      uint32_t* w = reinterpret_cast<uint32_t*>(c);
      if (p.beta != 0.0f) {
        const uint32_t old = *w;
        v0 += p.beta * to_f(static_cast<uint16_t>(old & 0xFFFFu));
        v1 += p.beta * to_f(static_cast<uint16_t>(old >> 16));
      }
      *w = uint32_t(to_h(v0)) | (uint32_t(to_h(v1)) << 16);
      return;
    }
    if (p.beta != 0.0f) v0 += p.beta * to_f(c[0]);
    c[0] = to_h(v0);
    if (both) {
      if (p.beta != 0.0f) v1 += p.beta * to_f(c[1]);
      c[1] = to_h(v1);
    }
  }
}

#endif  // POLDER_SM90A_DEVICE

// kTransA: A stored (K, M) (M-major); kTransB: B stored (K, N) (N-major), i.e. GemmArgs::trans_b false.
template <bool kTransA, bool kTransB, bool kF32Out>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_bf16_tma_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                         const TmaParams p) {
#ifdef POLDER_SM90A_DEVICE
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base =
      (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + kAtomBytes - 1) & ~(kAtomBytes - 1);
  const int wg = static_cast<int>(threadIdx.x) / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(bar_full(base, s), 1);   // the producer's arrive.expect_tx (plus the TMA bytes)
      mbar_init(bar_empty(base, s), 2);  // one arrival per consumer warpgroup
    }
    fence_mbarrier_init();  // visible to the async proxy
    prefetch_tensormap(&map_a);
    prefetch_tensormap(&map_b);
  }
  __syncthreads();

  if (wg == 0) {
    // ---- Producer: every warp of the warpgroup gives its registers back; one thread issues the loads.
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x != 0) return;
    int stage = 0;
    uint32_t phase = 0;
    for (int64_t t = blockIdx.x; t < p.tiles; t += gridDim.x) {
      const TileCoord tc = tile_coord(t, p.tiles_m, p.tiles_n);
      const int m0 = tc.tm * kBM, n0 = tc.tn * kBN, b = static_cast<int>(tc.batch);
      // Boxes of an MN-major operand that start inside the matrix (the first always does).
      const int boxes_a =
          kTransA ? min(kBM / kBoxInner, static_cast<int>((p.M - m0 + kBoxInner - 1) / kBoxInner)) : 1;
      const int boxes_b =
          kTransB ? min(kBN / kBoxInner, static_cast<int>((p.N - n0 + kBoxInner - 1) / kBoxInner)) : 1;
      // A K-major operand is one box, the whole stage.
      const uint32_t bytes =
          (kTransA ? boxes_a * kMnBoxBytes : kStageBytesA) + (kTransB ? boxes_b * kMnBoxBytes : kStageBytesB);
      for (int kt = 0; kt < p.ktiles; ++kt) {
        mbar_wait(bar_empty(base, stage), phase ^ 1);  // the consumers released this stage's previous use
        const uint32_t full = bar_full(base, stage);
        mbar_arrive_expect_tx(full, bytes);
        const uint32_t sa = base + kSmemA + static_cast<uint32_t>(stage) * kStageBytesA;
        const uint32_t sb = base + kSmemB + static_cast<uint32_t>(stage) * kStageBytesB;
        const int k0 = kt * kBK;
        if (kTransA) {
          for (int j = 0; j < boxes_a; ++j)
            tma_load_3d(sa + mn_box_start(j), &map_a, full, m0 + j * kBoxInner, k0, b);
        } else {
          tma_load_3d(sa, &map_a, full, k0, m0, b);
        }
        if (kTransB) {
          for (int j = 0; j < boxes_b; ++j)
            tma_load_3d(sb + mn_box_start(j), &map_b, full, n0 + j * kBoxInner, k0, b);
        } else {
          tma_load_3d(sb, &map_b, full, k0, n0, b);
        }
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    // Leave only when every load was consumed (a full further round of the ring).
    for (int i = 0; i < kStages; ++i) {
      mbar_wait(bar_empty(base, stage), phase ^ 1);
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
    return;
  }

  // ---- Consumers: warpgroup cw multiplies rows cw * 64 .. + 63 of each tile by all 256 columns.
  setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg - 1;
  const int tid = static_cast<int>(threadIdx.x) % 128, warp = tid / kWarp, lane = tid % kWarp;
  const int g = lane >> 2, q = lane & 3;
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
  int stage = 0;
  uint32_t phase = 0;
  for (int64_t t = blockIdx.x; t < p.tiles; t += gridDim.x) {
    const TileCoord tc = tile_coord(t, p.tiles_m, p.tiles_n);
    int prev = 0;
    for (int kt = 0; kt < p.ktiles; ++kt) {
      mbar_wait(bar_full(base, stage), phase);
      __syncwarp();
      const uint32_t sa = base + kSmemA + static_cast<uint32_t>(stage) * kStageBytesA;
      const uint32_t sb = base + kSmemB + static_cast<uint32_t>(stage) * kStageBytesB;
      acc_fence(acc);
      wgmma_fence_sync();
#pragma unroll
      for (int ks = 0; ks < kBK / 16; ++ks) {
        const uint64_t da = encode_desc(operand_desc(sa, kTransA, static_cast<uint32_t>(cw * kWgRows), ks));
        const uint64_t db = encode_desc(operand_desc(sb, kTransB, 0, ks));
        wgmma_m64n256k16<kTransA, kTransB>(acc, da, db, (kt > 0 || ks > 0) ? 1u : 0u);  // 0: a new tile
      }
      wgmma_commit_group();
      wgmma_wait_group<1>();  // the previous k-tile's group is done
      acc_fence(acc);
      if (kt > 0 && tid == 0) mbar_arrive(bar_empty(base, prev));
      prev = stage;
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
    wgmma_wait_group<0>();
    acc_fence(acc);
    if (tid == 0) mbar_arrive(bar_empty(base, prev));  // the producer may refill it during the epilogue

    // Accumulator layout of m64nNk16 (PTX ISA, wgmma .m64nNk16 D fragments): warp w of the warpgroup holds
    // rows 16 w + g and 16 w + g + 8; per 8-column block j, acc[4j], acc[4j + 1] at columns 8j + 2q, + 1 of
    // the first row, acc[4j + 2], acc[4j + 3] of the second.
    const int64_t row = int64_t(tc.tm) * kBM + cw * kWgRows + warp * 16 + g;
    const int64_t n0 = int64_t(tc.tn) * kBN, cbase = tc.batch * p.sc;
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int64_t col = n0 + j * 8 + 2 * q;
      store_pair<kF32Out>(p, cbase, row, col, acc[4 * j], acc[4 * j + 1]);
      store_pair<kF32Out>(p, cbase, row + 8, col, acc[4 * j + 2], acc[4 * j + 3]);
    }
  }
#else
  (void)map_a, (void)map_b, (void)p;
#endif
}

// out[0] = 1 where the image running is the sm_90a one (TMA/wgmma bodies present).
__global__ void gemm_sm90_tma_probe_kernel(int* out) {
#ifdef POLDER_SM90A_DEVICE
  *out = 1;
#else
  *out = 0;
#endif
}

// The 3-D map (inner, outer, batch) of one bf16 operand with 128-byte swizzled boxes: K-major boxes are 64 K
// x `rows_box` rows (the whole tile), MN-major boxes 64 M/N x 64 K. Out-of-range elements read as zeros.
CUtensorMap operand_map(const void* ptr, bool mn_major, int64_t rows, int64_t K, int64_t ld, int64_t stride,
                        int64_t batch, uint32_t rows_box, const char* name) {
  const int64_t inner = mn_major ? rows : K, outer = mn_major ? K : rows;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(inner), static_cast<cuuint64_t>(outer),
                              static_cast<cuuint64_t>(batch)};
  // Byte strides of dimensions 1 and 2; a single batch gets the dense stride (the map wants one).
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(ld) * 2,
                                 static_cast<cuuint64_t>(batch > 1 ? stride : ld * outer) * 2};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(kBoxInner),
                             mn_major ? static_cast<cuuint32_t>(kBK) : rows_box, 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  CUtensorMap map;
  const EncodeTiled encode = encode_tiled();
  if (!encode)
    throw std::runtime_error("cuda gemm: the driver has no cuTensorMapEncodeTiled (needs CUDA 12+)");
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(ptr), dims, strides,
                            box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw std::runtime_error(std::string("cuda gemm: cuTensorMapEncodeTiled for ") + name +
                             " failed (CUresult " + std::to_string(static_cast<int>(r)) + ", dims " +
                             std::to_string(inner) + " x " + std::to_string(outer) + " x " +
                             std::to_string(batch) + ", ld " + std::to_string(ld) + ")");
  return map;
}

// setmaxnreg moves registers within the CTA's own pool: the consumers' setmaxnreg.inc to 232 waits until the
// producer's setmaxnreg.dec to 40 has freed enough, so the kernel must be allocated at least (40 * 128 + 232
// * 256) / 384 = 168 registers per thread (what __launch_bounds__(384, 1) allows and ptxas gives a kernel
// with setmaxnreg); with fewer the consumers would wait forever. Checked before the first launch, not
// assumed.
constexpr int kMinKernelRegs = (kProducerRegs * 128 + kConsumerRegs * 256 + kThreads - 1) / kThreads;

template <bool kTransA, bool kTransB, bool kF32Out>
void launch(const CUtensorMap& a, const CUtensorMap& b, const TmaParams& p, unsigned grid,
            cudaStream_t stream) {
  auto kernel = gemm_bf16_tma_kernel<kTransA, kTransB, kF32Out>;
  static const int regs = [&] {
    cudaFuncAttributes attr{};
    check(cudaFuncGetAttributes(&attr, kernel), "gemm: cudaFuncGetAttributes (TMA GEMM)");
    return attr.numRegs;
  }();
  if (regs < kMinKernelRegs)
    throw std::runtime_error("cuda gemm: the TMA GEMM kernel has " + std::to_string(regs) +
                             " registers per thread, " + "fewer than the " + std::to_string(kMinKernelRegs) +
                             " its setmaxnreg split needs (it would hang)");
  check(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes)),
      "gemm: cudaFuncSetAttribute (TMA GEMM shared memory)");
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(a, b, p);
  check_launch("gemm: gemm_bf16_tma_kernel (polder's own GEMM, sm_90a TMA)");
}

template <bool kF32Out>
void launch_layout(bool ta, bool tb, const CUtensorMap& a, const CUtensorMap& b, const TmaParams& p,
                   unsigned grid, cudaStream_t stream) {
  if (ta) {
    if (tb)
      launch<true, true, kF32Out>(a, b, p, grid, stream);
    else
      launch<true, false, kF32Out>(a, b, p, grid, stream);
  } else {
    if (tb)
      launch<false, true, kF32Out>(a, b, p, grid, stream);
    else
      launch<false, false, kF32Out>(a, b, p, grid, stream);
  }
}

}  // namespace

// Why the TMA kernel cannot take these (already checked) arguments; empty when it can. Pure: no device call,
// so the reasons are the same on every machine.
std::string gemm_sm90_tma_unsupported(const GemmArgs& g) {
  if (g.ab_dtype != DType::bf16) return "A and B must be bf16";
  if (g.c_dtype != DType::f32 && g.c_dtype != DType::bf16) return "C must be f32 or bf16";
  if (g.M < 1 || g.N < 1 || g.K < 1 || g.batch < 1) return "M, N, K and batch must be >= 1";
  if (g.M > INT32_MAX || g.N > INT32_MAX || g.K > INT32_MAX || g.batch > INT32_MAX)
    return "M, N, K and batch must be below 2^31 (TMA coordinates are int32)";
  const auto a16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (!a16(g.A)) return "A is not 16-byte aligned (TMA needs 16-byte aligned global addresses)";
  if (!a16(g.B)) return "B is not 16-byte aligned (TMA needs 16-byte aligned global addresses)";
  struct Op {
    const char *ld_name, *stride_name;
    int64_t ld, stride, outer;  // outer: the stored matrix's row count
  };
  const Op ops[2] = {{"lda", "stride_a", g.lda, g.stride_a, g.trans_a ? g.K : g.M},
                     {"ldb", "stride_b", g.ldb, g.stride_b, g.trans_b ? g.N : g.K}};
  constexpr int64_t kMaxStride = (int64_t(1) << 39) - 1;  // elements: 2^40 bytes
  for (const Op& o : ops) {
    if (o.ld % 8 != 0)
      return std::string(o.ld_name) + " " + std::to_string(o.ld) +
             " is not a multiple of 8 (TMA strides must be multiples of 16 bytes)";
    if (o.ld > kMaxStride)
      return std::string(o.ld_name) + " " + std::to_string(o.ld) + " exceeds TMA's 2^40-byte stride";
    if (g.batch == 1) continue;
    if (o.stride % 8 != 0)
      return std::string(o.stride_name) + " " + std::to_string(o.stride) +
             " is not a multiple of 8 (TMA strides must be multiples of 16 bytes)";
    if (o.stride < o.ld * o.outer)
      return std::string(o.stride_name) + " " + std::to_string(o.stride) + " is below " + o.ld_name +
             " x rows = " + std::to_string(o.ld * o.outer) + " (TMA batches must not overlap)";
    if (o.stride > kMaxStride)
      return std::string(o.stride_name) + " " + std::to_string(o.stride) + " exceeds TMA's 2^40-byte stride";
  }
  return {};
}

bool gemm_sm90_tma_supported(const GemmArgs& g) {
  return gemm_sm90_tma_unsupported(g).empty();
}

// Whether the TMA kernel can run on the current device (probed once per process: compute capability 9.0, the
// sm_90a image of this file loaded, the driver's tensor-map encoder present).
bool gemm_sm90_tma_available() {
  static const bool available = sm90::runs_sm90a_image(&gemm_sm90_tma_probe_kernel);
  return available;
}

// Launches the kernel for arguments gemm.cu checked (check_args, gemm_sm90_tma_unsupported empty) on a device
// where gemm_sm90_tma_available().
void gemm_bf16_sm90_tma(const GemmArgs& g, cudaStream_t stream) {
  const CUtensorMap a = operand_map(g.A, g.trans_a, g.M, g.K, g.lda, g.stride_a, g.batch, kBM, "A");
  const CUtensorMap b = operand_map(g.B, !g.trans_b, g.N, g.K, g.ldb, g.stride_b, g.batch, kBN, "B");
  TmaParams p{};
  p.C = g.C;
  p.M = g.M;
  p.N = g.N;
  p.ldc = g.ldc;
  p.sc = g.stride_c;
  p.tiles_m = static_cast<int>((g.M + kBM - 1) / kBM);
  p.tiles_n = static_cast<int>((g.N + kBN - 1) / kBN);
  p.tiles = g.batch * p.tiles_m * p.tiles_n;
  p.ktiles = static_cast<int>((g.K + kBK - 1) / kBK);
  p.alpha = g.alpha;
  p.beta = g.beta;
  const size_t pair = g.c_dtype == DType::f32 ? 8 : 4;
  p.vec_c =
      reinterpret_cast<uintptr_t>(g.C) % pair == 0 && g.ldc % 2 == 0 && (g.batch == 1 || g.stride_c % 2 == 0);
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), "gemm: cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "gemm: cudaDeviceGetAttribute (multiprocessor count)");
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(p.tiles, std::max(sms, 1)));
  if (g.c_dtype == DType::f32)
    launch_layout<true>(g.trans_a, !g.trans_b, a, b, p, grid, stream);
  else
    launch_layout<false>(g.trans_a, !g.trans_b, a, b, p, grid, stream);
}

}  // namespace polder::kernels::cuda::detail
