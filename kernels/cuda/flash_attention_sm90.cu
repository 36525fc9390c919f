// Flash-attention forward for Hopper (sm_90a only; compiled with an extra
// -gencode=arch=compute_90a,code=sm_90a, see kernels/CMakeLists.txt), FA3-like: TMA loads, warp-specialised
// producer/consumer warpgroups, wgmma with P fed from registers. Same contract as flash_attention.cu's
// forward (bf16/f16, D 64 or 128, GQA, causal or not, any T and S, o = 0 and lse = -inf for a query that sees
// no key), read in place in (B, T, H, D).
//
// One CTA per (128-query block, q-head, batch); 384 threads = 3 warpgroups. Warpgroup 0 is the producer
// (setmaxnreg.dec to 40): one thread loads the Q tile once, then walks the block's key tiles (128 keys each)
// through a 2-stage ring: wait for the stage's "empty" mbarrier, arrive.expect_tx on its "k_full" and issue
// the TMA loads of K (cp.async.bulk.tensor.4d over (D, H, S, B): D / 64 boxes of 64 x 128 with 128-byte
// swizzle), the same for V on "v_full", so Q K^T may start before V has landed. Warpgroups 1 and 2
// (setmaxnreg.inc to 232) own query rows 0..63 and 64..127: per tile, S (64 x 128, fp32) = Q K^T with D / 16
// wgmma.m64n128k16 from shared memory (both K-major), the causal/tail mask on tiles that need it, the online
// softmax on the accumulator fragment (rows 16 w + g and + 8, columns 8 j + 2 q, + 1; row max/sum over the 4
// threads of a group by shuffles), P rounded to bf16/f16 in registers and used as the register A operand of 8
// wgmma.m64nDk16 with V as the MN-major B operand (transpose bit), then one arrival per warpgroup on "empty"
// (count 2). Epilogue from registers: o = O / l (0 without keys), lse = scale m + log l.
//
// Register-A mapping (PTX ISA, wgmma .m64nNk16 register fragments): the accumulator element i of a thread is
// row 16 w + g + 8 ((i / 2) % 2), column 8 (i / 4) + 2 q + i % 2; half h of A register r of a 64 x 16 slice
// is row 16 w + g + 8 (r % 2), column 2 q + h + 8 (r / 2). So slice kk of P is the thread's own accumulator
// elements 8 kk + 2 r + h (fa_sm90::p_index), no shuffles: the FA2 C -> A conversion per warp, four warps
// wide. Every address and fragment function lives in flash_attention_sm90_layout.h and is checked on a CPU by
// tests/test_cuda_flash_attention_sm90.cpp.
//
// Written without a GPU (none was lent): attention.cu offers it to auto only under POLDER_ATTENTION_SM90=1,
// because a broken mbarrier protocol hangs (the waits trap after ~2^35 cycles) rather than failing the check.
// A probe kernel reports whether the loaded image is the sm_90a one (an sm_80/sm_90 image holds empty
// bodies). Under POLDER_CUDA_SIM the source runs on tests/sim's CPU emulator of TMA, mbarrier and wgmma
// (test_sim_flash_attention_sm90, against the CPU twin; docs/perf/NOTES.md, "Emulated tensor-core tests").
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"  // first: it defines POLDER_HAVE_CUDA, which opens attention.h's CUDA block

#include "kernels/attention.h"
#include "kernels/cuda/flash_attention_sm90_layout.h"
#include "kernels/cuda/fragment.cuh"
#include "kernels/cuda/sm90_async.cuh"  // defines POLDER_SM90A_DEVICE in the sm_90a image

namespace polder::kernels::cuda {
namespace {
using namespace detail;
using namespace fa_sm90;
using namespace sm90;

constexpr int kThreads = 384;                           // producer warpgroup + 2 consumer warpgroups
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // per-thread registers after setmaxnreg

struct Params {
  void* o;
  float* lse;
  int64_t T, S, Hq, group;
  bool causal;
  float scale;
};

#ifdef POLDER_SM90A_DEVICE

// mbarriers after the tiles: q_full, k_full[s], v_full[s], empty[s].
template <int D>
__device__ __forceinline__ uint32_t bar(uint32_t base, int i) {
  return base + Smem<D>::kBars + 8u * static_cast<uint32_t>(i);
}
template <int D>
__device__ __forceinline__ uint32_t bar_k(uint32_t base, int s) {
  return bar<D>(base, 1 + s);
}
template <int D>
__device__ __forceinline__ uint32_t bar_v(uint32_t base, int s) {
  return bar<D>(base, 1 + kStages + s);
}
template <int D>
__device__ __forceinline__ uint32_t bar_empty(uint32_t base, int s) {
  return bar<D>(base, 1 + 2 * kStages + s);
}

// Hang guard (sm90_async.cuh): the producer traps in place (mbar_wait). The consumers only note a timeout
// (mbar_wait_ok false), skip their later waits and trap after the tile loop: a trap inside the loop makes
// ptxas keep the whole consumer path within the kernel-wide 168 registers instead of setmaxnreg's 232 (80
// bytes of spills and serialised wgmma at D = 128).

// Keeps the compiler from moving register reads/writes across the asynchronous wgmma (as in the GEMM).
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#ifdef POLDER_CUDA_SIM
  (void)d;  // the emulator's wgmma reads and writes the registers in memory: nothing to pin
#else
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&d)[N][4]) {
#ifdef POLDER_CUDA_SIM
  (void)d;
#else
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) asm volatile("" : "+r"(d[i][r])::"memory");
#endif
}

#define POLDER_ACC8(i)                                                                        \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define POLDER_ACC32(i) POLDER_ACC8(i), POLDER_ACC8(i + 8), POLDER_ACC8(i + 16), POLDER_ACC8(i + 24)
#define POLDER_OUT32                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define POLDER_OUT64                                                                 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "          \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// S (64 x 128, fp32) = A (64 x 16) B (16 x 128) + (accumulate ? S : 0), both from shared memory, K-major.
#define POLDER_WGMMA_SS(TY)                                                     \
  asm volatile(                                                                 \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                              \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " POLDER_OUT64 \
      ", %64, %65, p, 1, 1, 0, 0;\n}\n"                                         \
      : POLDER_ACC32(0), POLDER_ACC32(32)                                       \
      : "l"(da), "l"(db), "r"(accumulate))
template <typename T>
__device__ __forceinline__ void wgmma_qk(float (&d)[kBc / 2], uint64_t da, uint64_t db, uint32_t accumulate) {
#ifdef POLDER_CUDA_SIM
  ::sim::wgmma(d, kBc, da, nullptr, db, accumulate != 0, false, false,
               std::is_same_v<T, bf16> ? ::sim::MmaType::bf16 : ::sim::MmaType::f16);
#else
  if constexpr (std::is_same_v<T, bf16>)
    POLDER_WGMMA_SS("bf16");
  else
    POLDER_WGMMA_SS("f16");
#endif
}
#undef POLDER_WGMMA_SS

// O (64 x N, fp32) += A (64 x 16, four registers per thread) B (16 x N) with B MN-major in shared memory
// (imm-trans-b 1); always accumulating.
template <typename T, int N>
__device__ __forceinline__ void wgmma_pv(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db) {
  static_assert(N == 64 || N == 128, "head dim 64 or 128");
#ifdef POLDER_CUDA_SIM
  ::sim::wgmma(d, N, 0, a, db, true, false, true,
               std::is_same_v<T, bf16> ? ::sim::MmaType::bf16 : ::sim::MmaType::f16);
#else
  if constexpr (N == 128) {
    if constexpr (std::is_same_v<T, bf16>)
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " POLDER_OUT64
          ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
          : POLDER_ACC32(0), POLDER_ACC32(32)
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1u));
    else
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " POLDER_OUT64
          ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
          : POLDER_ACC32(0), POLDER_ACC32(32)
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1u));
  } else {
    if constexpr (std::is_same_v<T, bf16>)
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " POLDER_OUT32
          ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
          : POLDER_ACC32(0)
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1u));
    else
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " POLDER_OUT32
          ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
          : POLDER_ACC32(0)
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1u));
  }
#endif
}
#undef POLDER_OUT32
#undef POLDER_OUT64
#undef POLDER_ACC32
#undef POLDER_ACC8

__device__ __forceinline__ void wgmma_fence() {
  wgmma_fence_sync();
}
__device__ __forceinline__ void wgmma_commit_wait_all() {
  wgmma_commit_group();
  wgmma_wait_group<0>();
}

#endif  // POLDER_SM90A_DEVICE

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
    flash_fwd_sm90_kernel(const __grid_constant__ CUtensorMap map_q,
                          const __grid_constant__ CUtensorMap map_k,
                          const __grid_constant__ CUtensorMap map_v, const Params p) {
#ifdef POLDER_SM90A_DEVICE
  using Sm = Smem<D>;
  constexpr int kDBoxes = D / kBox;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base =
      (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + L::kAtomBytes - 1) & ~(L::kAtomBytes - 1);
  const int wg = static_cast<int>(threadIdx.x) / 128;
  const int b = static_cast<int>(blockIdx.z), h = static_cast<int>(blockIdx.y);
  const int hk = static_cast<int>(h / p.group);
  // Causal blocks at the end of the sequence have the most work: start them first.
  const int64_t q0 = static_cast<int64_t>(p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x) * kBr;
  const int ntiles = key_tiles(p.T, p.S, p.causal, q0);

  if (threadIdx.x == 0) {
    mbar_init(bar<D>(base, 0), 1);  // q_full: the producer's arrive.expect_tx plus the TMA bytes
    for (int s = 0; s < kStages; ++s) {
      mbar_init(bar_k<D>(base, s), 1);
      mbar_init(bar_v<D>(base, s), 1);
      mbar_init(bar_empty<D>(base, s), 2);  // one arrival per consumer warpgroup
    }
    fence_mbarrier_init();  // visible to the async proxy
    prefetch_tensormap(&map_q);
    prefetch_tensormap(&map_k);
    prefetch_tensormap(&map_v);
  }
  __syncthreads();

  if (wg == 0) {
    // ---- Producer: every warp gives its registers back; one thread issues the loads. Every box starts
    // inside the tensor (q0 < T, tile starts < S); TMA zero-fills the rows past T or S and counts the whole
    // box.
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x != 0) return;
    const uint32_t q_full = bar<D>(base, 0);
    mbar_arrive_expect_tx(q_full, tile_bytes(kBr, D));
    for (int j = 0; j < kDBoxes; ++j)
      tma_load_4d(base + Sm::kQ + j * box_bytes(kBr), &map_q, q_full, j * kBox, h, static_cast<int>(q0), b);
    for (int t = 0; t < ntiles; ++t) {
      const int stage = t % kStages;
      const uint32_t parity = static_cast<uint32_t>(t / kStages) & 1u;
      mbar_wait(bar_empty<D>(base, stage), parity ^ 1u);  // both consumers released its previous use
      const uint32_t off = static_cast<uint32_t>(stage) * tile_bytes(kBc, D);
      const uint32_t kf = bar_k<D>(base, stage), vf = bar_v<D>(base, stage);
      mbar_arrive_expect_tx(kf, tile_bytes(kBc, D));
      for (int j = 0; j < kDBoxes; ++j)
        tma_load_4d(base + Sm::kK + off + j * box_bytes(kBc), &map_k, kf, j * kBox, hk, t * kBc, b);
      mbar_arrive_expect_tx(vf, tile_bytes(kBc, D));
      for (int j = 0; j < kDBoxes; ++j)
        tma_load_4d(base + Sm::kV + off + j * box_bytes(kBc), &map_v, vf, j * kBox, hk, t * kBc, b);
    }
    return;
  }

  // ---- Consumers: warpgroup cw owns query rows q0 + 64 cw .. + 63.
  setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg - 1;
  const uint32_t tid = threadIdx.x % 128;
  const int q = static_cast<int>(tid % 4);
  const int64_t row0 = q0 + cw * kWgRows;
  const float sl2 = p.scale * 1.4426950408889634f;  // scores in exp2 units: scale log2(e)
  float o[D / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;

  bool ok = mbar_wait_ok(bar<D>(base, 0), 0);  // false once a wait timed out: later waits are skipped
  for (int t = 0; t < ntiles; ++t) {
    const int stage = t % kStages;
    const uint32_t parity = static_cast<uint32_t>(t / kStages) & 1u;
    const uint32_t off = static_cast<uint32_t>(stage) * tile_bytes(kBc, D);
    const int64_t k0 = static_cast<int64_t>(t) * kBc;

    // S = Q K^T over the head dim.
    float s[kBc / 2];
    ok = ok && mbar_wait_ok(bar_k<D>(base, stage), parity);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint64_t da =
          L::encode_desc(kmajor_desc(base + Sm::kQ, kBr, static_cast<uint32_t>(cw * kWgRows), ks));
      const uint64_t db = L::encode_desc(kmajor_desc(base + Sm::kK + off, kBc, 0, ks));
      wgmma_qk<T>(s, da, db, ks > 0 ? 1u : 0u);
    }
    wgmma_commit_wait_all();
    fence_regs(s);

    if (tile_needs_mask(p.T, p.S, p.causal, row0, k0)) {
#pragma unroll
      for (int i = 0; i < kBc / 2; ++i) {
        const RowCol rc = acc_coord(tid, static_cast<uint32_t>(i));
        if (masked(p.T, p.S, p.causal, row0 + rc.row, k0 + rc.col)) s[i] = -INFINITY;
      }
    }
    // Online softmax per row r (elements 4 j + 2 r + e): m' = max(m, rowmax S), P = e^(scale (S - m')),
    // l = l e^(scale (m - m')) + rowsum P, O = O e^(scale (m - m')).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int j = 0; j < kBc / 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base_r = mx == -INFINITY ? 0.f : mx * sl2;  // a row with no key yet: P = 0, not NaN
      const float corr = exp2f(m[r] * sl2 - base_r);          // m = -inf: 0
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kBc / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float x = exp2f(fmaf(s[4 * j + 2 * r + e], sl2, -base_r));
          s[4 * j + 2 * r + e] = x;
          sum += x;
        }
      l[r] = l[r] * corr + sum;  // per-thread partial; the group's four threads are summed at the end
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[4 * j + 2 * r] *= corr;
        o[4 * j + 2 * r + 1] *= corr;
      }
      m[r] = mx;
    }
    uint32_t pa[kBc / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) pa[kk][r] = pack<T>(s[p_index(kk, r, 0)], s[p_index(kk, r, 1)]);

    // O += P V over the tile's keys.
    ok = ok && mbar_wait_ok(bar_v<D>(base, stage), parity);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk)
      wgmma_pv<T, D>(o, pa[kk], L::encode_desc(v_desc(base + Sm::kV + off, kk)));
    wgmma_commit_wait_all();
    fence_regs(o);
    fence_regs(pa);
    if (tid == 0) mbar_arrive(bar_empty<D>(base, stage));  // K and V of this stage are read
  }

  if (!ok) __trap();  // the hang guard: a barrier never completed

  // Epilogue: rows 16 w + g (r = 0) and + 8 (r = 1) of the warpgroup's 64.
  const RowCol rc0 = acc_coord(tid, 0);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int64_t row = row0 + rc0.row + 8 * r;
    if (row >= p.T) continue;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;  // a query that sees no key (S < T): zeros, lse = -inf
    if (q == 0) p.lse[(b * p.Hq + h) * p.T + row] = l[r] > 0.f ? m[r] * p.scale + logf(l[r]) : -INFINITY;
    uint32_t* out = reinterpret_cast<uint32_t*>(static_cast<T*>(p.o) + ((b * p.T + row) * p.Hq + h) * D);
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      out[(8 * j + 2 * q) / 2] = pack<T>(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
  }
#else
  (void)map_q, (void)map_k, (void)map_v, (void)p;
#endif
}

// out[0] = 1 where the image running is the sm_90a one (TMA/wgmma bodies present).
__global__ void flash_sm90_probe_kernel(int* out) {
#ifdef POLDER_SM90A_DEVICE
  *out = 1;
#else
  *out = 0;
#endif
}

// The 4-D map (D, H, rows, B) of q (rows = T) or k/v (rows = S) in (B, rows, H, D), boxes of 64 head-dim
// elements x 1 head x `box_rows` rows x 1 batch with 128-byte swizzle; out-of-range rows read as zeros.
template <typename T>
CUtensorMap qkv_map(const void* ptr, int64_t B, int64_t rows, int64_t H, int64_t D, uint32_t box_rows,
                    const char* name) {
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(H),
                              static_cast<cuuint64_t>(rows), static_cast<cuuint64_t>(B)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(D * 2), static_cast<cuuint64_t>(H * D * 2),
                                 static_cast<cuuint64_t>(rows * H * D * 2)};
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(kBox), 1, box_rows, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const EncodeTiled encode = encode_tiled();
  if (!encode)
    throw std::runtime_error("flash_attention_sm90_forward: the driver has no cuTensorMapEncodeTiled");
  CUtensorMap map;
  const CUresult r = encode(
      &map, std::is_same_v<T, bf16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
      const_cast<void*>(ptr), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw std::runtime_error(std::string("flash_attention_sm90_forward: cuTensorMapEncodeTiled for ") + name +
                             " failed (CUresult " + std::to_string(static_cast<int>(r)) + ", dims " +
                             std::to_string(D) + " x " + std::to_string(H) + " x " + std::to_string(rows) +
                             " x " + std::to_string(B) + ")");
  return map;
}

// setmaxnreg moves registers within the CTA's pool: (40 * 128 + 232 * 256) / 384 = 168 per thread must be
// allocated or the consumers' setmaxnreg.inc waits forever; checked before the first launch.
constexpr int kMinKernelRegs = (kProducerRegs * 128 + kConsumerRegs * 256 + kThreads - 1) / kThreads;

template <typename T, int D>
void launch(const AttentionShape& a, const CUtensorMap& mq, const CUtensorMap& mk, const CUtensorMap& mv,
            const Params& p, cudaStream_t st) {
  auto kernel = flash_fwd_sm90_kernel<T, D>;
  static const int regs = [&] {
    cudaFuncAttributes attr{};
    check(cudaFuncGetAttributes(&attr, kernel), "flash attention sm90: cudaFuncGetAttributes");
    return attr.numRegs;
  }();
  if (regs < kMinKernelRegs)
    throw std::runtime_error("cuda flash attention sm90: the kernel has " + std::to_string(regs) +
                             " registers per thread, fewer than the " + std::to_string(kMinKernelRegs) +
                             " its setmaxnreg split needs (it would hang)");
  constexpr uint32_t smem = Smem<D>::kBytes;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "flash attention sm90: shared memory opt-in");
  const dim3 grid(static_cast<unsigned>((a.T + kBr - 1) / kBr), static_cast<unsigned>(a.Hq),
                  static_cast<unsigned>(a.B));
  kernel<<<grid, kThreads, smem, st>>>(mq, mk, mv, p);
  check_launch("flash attention forward (sm_90a, wgmma/TMA)");
}

template <typename T>
constexpr bool kTensorCore = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

// Why the kernel cannot take these arguments, "" when it can. Pure: no device call, the same on every
// machine.
template <typename T>
std::string unsupported(const AttentionShape& s, std::initializer_list<const void*> ptrs) {
  if constexpr (!kTensorCore<T>) {
    (void)s, (void)ptrs;
    return "dtype must be bf16 or f16 (f32 has no wgmma path here)";
  } else {
    if (s.D != 64 && s.D != 128) return "head dim D=" + std::to_string(s.D) + " (need 64 or 128)";
    if (s.B < 0 || s.T < 0 || s.S < 0 || s.Hq < 0 || s.Hkv <= 0 || s.Hq % s.Hkv != 0)
      return "shape B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " S=" + std::to_string(s.S) +
             " Hq=" + std::to_string(s.Hq) + " Hkv=" + std::to_string(s.Hkv) +
             " (need sizes >= 0 and Hq a multiple of Hkv > 0)";
    if (s.B > 65535 || s.Hq > 65535)
      return "B=" + std::to_string(s.B) + " or Hq=" + std::to_string(s.Hq) + " exceeds the grid limit 65535";
    if (s.T > INT32_MAX - kBr || s.S > INT32_MAX - kBc)
      return "T=" + std::to_string(s.T) + " or S=" + std::to_string(s.S) +
             " reaches 2^31 (TMA coordinates are int32)";
    constexpr int64_t kMaxStride = (int64_t(1) << 40) - 1;  // TMA: strides below 2^40 bytes
    if (std::max(s.T * s.Hq, s.S * s.Hkv) * s.D * 2 > kMaxStride)
      return "a batch of T=" + std::to_string(s.T) + " or S=" + std::to_string(s.S) +
             " rows exceeds TMA's 2^40-byte stride";
    int i = 0;
    for (const void* ptr : ptrs) {
      if (!aligned16(ptr)) return "pointer " + std::to_string(i) + " is not 16-byte aligned (TMA needs 16)";
      ++i;
    }
    return {};
  }
}

}  // namespace

bool flash_attention_sm90_available() {
  static const bool available = sm90::runs_sm90a_image(&flash_sm90_probe_kernel);
  return available;
}

template <typename T>
bool flash_attention_sm90_supported(const AttentionShape& s, std::initializer_list<const void*> ptrs) {
  return unsupported<T>(s, ptrs).empty();
}

template <typename T>
void flash_attention_sm90_forward(const AttentionShape& a, const T* q, const T* k, const T* v, T* o,
                                  float* lse, void* stream) {
  const std::string why = unsupported<T>(a, {q, k, v, o});  // TMA reads q, k, v; o takes 4-byte pairs
  if (!why.empty()) throw std::invalid_argument("flash_attention_sm90_forward: " + why);
  (void)stream;
  if constexpr (kTensorCore<T>) {
    if (a.B == 0 || a.T == 0 || a.Hq == 0) return;
    if (!flash_attention_sm90_available())
      throw std::runtime_error(
          "flash_attention_sm90_forward: needs a compute capability 9.0 device running the sm_90a image");
    // S = 0: no query sees a key (0 tiles everywhere); the K/V maps then describe q, which is never read.
    const bool none = a.S == 0;
    const int64_t rows_kv = none ? a.T : a.S, h_kv = none ? a.Hq : a.Hkv;
    const CUtensorMap mq = qkv_map<T>(q, a.B, a.T, a.Hq, a.D, kBr, "q");
    const CUtensorMap mk = qkv_map<T>(none ? q : k, a.B, rows_kv, h_kv, a.D, kBc, "k");
    const CUtensorMap mv = qkv_map<T>(none ? q : v, a.B, rows_kv, h_kv, a.D, kBc, "v");
    Params p{};
    p.o = o, p.lse = lse, p.T = a.T, p.S = a.S, p.Hq = a.Hq, p.group = a.Hq / a.Hkv;
    p.causal = a.causal;
    p.scale = static_cast<float>(a.scale);
    if (a.D == 64)
      launch<T, 64>(a, mq, mk, mv, p, as_stream(stream));
    else
      launch<T, 128>(a, mq, mk, mv, p, as_stream(stream));
  } else {
    (void)a, (void)q, (void)k, (void)v, (void)o, (void)lse;
  }
}

#define POLDER_INSTANTIATE_FLASH_SM90(T)                                                                 \
  template bool flash_attention_sm90_supported<T>(const AttentionShape&,                                 \
                                                  std::initializer_list<const void*>);                   \
  template void flash_attention_sm90_forward<T>(const AttentionShape&, const T*, const T*, const T*, T*, \
                                                float*, void*);
POLDER_INSTANTIATE_FLASH_SM90(bf16)
POLDER_INSTANTIATE_FLASH_SM90(f16)
POLDER_INSTANTIATE_FLASH_SM90(float)

}  // namespace polder::kernels::cuda
