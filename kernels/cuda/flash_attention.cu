// Flash attention on tensor cores (FA2 style, sm_80+): bf16/f16 in and out, fp32 accumulation, mma.sync
// m16n8k16 fed by ldmatrix from padded shared-memory tiles that cp.async fills; head dims 64 and 128; q, k, v
// read in place in the (B, T, H, D) layout of the QKV projection. Forward: online softmax, lse saved.
// Backward: Di = rowsum(dO * O), then two kernels that recompute P tile by tile: dk/dv per key block (summed
// over the query heads of the GQA group inside the block: no atomics, deterministic) and dq per query block.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"  // first: it defines POLDER_HAVE_CUDA, which opens attention.h's CUDA block

#include "kernels/attention.h"
#include "kernels/cuda/fragment.cuh"

namespace polder::kernels::cuda {
namespace {
using namespace detail;

constexpr int kPad = 8;  // elements of padding per shared-memory row: rows land on distinct 16-byte banks
constexpr int kThreads = 128;  // 4 warps, each owns 16 rows of the block's tile
constexpr float kLog2e = 1.4426950408889634f;

struct Params {
  const void *q, *k, *v, *o, *dout;
  void *out, *dq, *dk, *dv;
  float *lse, *delta;
  const float* lse_in;
  int64_t B, T, S, Hq, Hkv, group, off;  // off = S - T: query t sees keys s <= t + off when causal
  bool causal;
  float scale;
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; zero-filled when !valid (the source is then not read).
// Under POLDER_CUDA_SIM (tests/sim, the CPU emulator) each PTX wrapper calls the emulator's instruction
// instead.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#ifdef POLDER_CUDA_SIM
  ::sim::cp_async16(smem_u32(dst), src, valid ? 16 : 0);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 16 : 0));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef POLDER_CUDA_SIM
  ::sim::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef POLDER_CUDA_SIM
  ::sim::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i holds its fragment
// (lane l: row l / 4, columns 2 (l % 4) and +1; transposed with .trans).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
#ifdef POLDER_CUDA_SIM
  ::sim::ldmatrix(r, 4, smem_u32(p), false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
#ifdef POLDER_CUDA_SIM
  ::sim::ldmatrix(r, 4, smem_u32(p), true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}

// c (16x8, fp32) += a (16x16, row-major) b (16x8, column-major). Fragments (g = lane / 4, i = lane % 4):
// c0,c1 row g cols 2i,2i+1; c2,c3 row g+8; a regs: (g, 2i), (g+8, 2i), (g, 2i+8), (g+8, 2i+8), two elements
// each along k; b regs: k = 2i,2i+1 and 2i+8,2i+9 at column g.
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef POLDER_CUDA_SIM
  ::sim::mma_m16n8k16(c, a, b0, b1, std::is_same_v<T, bf16> ? ::sim::MmaType::bf16 : ::sim::MmaType::f16);
#else
  if constexpr (std::is_same_v<T, bf16>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// The C fragments of two adjacent 8-column tiles (columns 16k..16k+15) as the A fragment of k-slice k: the
// register-only P -> A conversion of FA2.
template <typename T>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack<T>(c0[0], c0[1]);
  a[1] = pack<T>(c0[2], c0[3]);
  a[2] = pack<T>(c1[0], c1[1]);
  a[3] = pack<T>(c1[2], c1[3]);
}

// A fragment (16x16) of rows r0.., columns k0.. of a padded tile with row stride LD.
template <int LD, typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int r0, int k0) {
  const int l = threadIdx.x % kWarp;
  ldsm_x4(a, tile + (r0 + l % 8 + (l / 8 % 2) * 8) * LD + k0 + (l / 16) * 8);
}
// B fragments of two 8-column tiles (n0.., n0+8..) for k-slice k0 when B[k][n] = tile[n][k] (rows = n).
template <int LD, typename T>
__device__ __forceinline__ void load_b(uint32_t (&b)[4], const T* tile, int n0, int k0) {
  const int l = threadIdx.x % kWarp;
  ldsm_x4(b, tile + (n0 + l % 8 + (l / 16) * 8) * LD + k0 + (l / 8 % 2) * 8);
}
// B fragments of two 8-column tiles (n0.., n0+8..) for k-slice k0 when B[k][n] = tile[k][n] (rows = k).
template <int LD, typename T>
__device__ __forceinline__ void load_b_t(uint32_t (&b)[4], const T* tile, int k0, int n0) {
  const int l = threadIdx.x % kWarp;
  ldsm_x4_t(b, tile + (k0 + l % 8 + (l / 8 % 2) * 8) * LD + n0 + (l / 16) * 8);
}

// R rows of D elements (row r at g + r * stride) into a padded tile; rows >= valid are zero-filled.
template <int R, int D, typename T>
__device__ __forceinline__ void load_tile(T* tile, const T* g, int64_t stride, int64_t valid) {
  constexpr int kChunks = D / 8;  // 16-byte pieces per row
  for (int i = threadIdx.x; i < R * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool ok = r < valid;
    cp_async16(tile + r * (D + kPad) + c * 8, g + (ok ? r * stride : 0) + c * 8, ok);
  }
}

// S += A B^T over the head dim for one warp: A rows a0.. of tile a, B = rows of tile b (N of them): s[N /
// 8][4].
template <typename T, int D, int N>
__device__ __forceinline__ void qk(float (&s)[N / 8][4], const T* a, int a0, const T* b) {
  constexpr int LD = D + kPad;
#pragma unroll
  for (int kt = 0; kt < D / 16; ++kt) {
    uint32_t af[4];
    load_a<LD>(af, a, a0, kt * 16);
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t bf[4];
      load_b<LD>(bf, b, np * 16, kt * 16);
      mma<T>(s[2 * np], af, bf[0], bf[1]);
      mma<T>(s[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// acc (16 x D) += P (16 x N, C fragments in registers) times tile (N rows of D), the tile read transposed.
template <typename T, int D, int N>
__device__ __forceinline__ void pv(float (&acc)[D / 8][4], const float (&p)[N / 8][4], const T* tile) {
  constexpr int LD = D + kPad;
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    uint32_t a[4];
    c_to_a<T>(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      load_b_t<LD>(b, tile, kk * 16, dp * 16);
      mma<T>(acc[2 * dp], a, b[0], b[1]);
      mma<T>(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// A 16 x D accumulator of one warp (rows r0.., r0 + 8..) times `mul` into rows of g (row stride `stride`),
// rows >= rows_valid skipped.
template <typename T, int D>
__device__ __forceinline__ void store_rows(T* g, int64_t stride, int64_t r0, int64_t rows_valid,
                                           const float (&acc)[D / 8][4], float mul0, float mul1) {
  const int l = threadIdx.x % kWarp, gi = l / 4, ci = l % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t r = r0 + gi + 8 * half;
    if (r >= rows_valid) continue;
    const float mul = half ? mul1 : mul0;
    uint32_t* row = reinterpret_cast<uint32_t*>(g + r * stride);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      row[(dt * 8 + 2 * ci) / 2] = pack<T>(acc[dt][2 * half] * mul, acc[dt][2 * half + 1] * mul);
  }
}

// ---- forward --------------------------------------------------------------------------------------------
// grid (ceil(T / 64), Hq, B); 64 queries per block (16 per warp), key/value tiles of 64. K_{j+1} loads while
// P V_j computes and V_{j+1} while S_{j+1} = Q K_{j+1}^T does (single buffers, two cp.async groups in
// flight). Per key tile: m' = max(m, rowmax S), l = l e^(m - m') + rowsum P, O = O e^(m - m') + P V, P =
// e^(scale (S - m')).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) flash_fwd_kernel(Params p) {
  constexpr int Br = 64, Bc = 64, LD = D + kPad, NT = Bc / 8, DT = D / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);
  T* ks = qs + Br * LD;
  T* vs = ks + Bc * LD;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, gi = lane / 4, ci = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, hk = h / p.group;
  // Causal blocks at the end of the sequence have the most work: start them first.
  const int64_t q0 = static_cast<int64_t>(p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x) * Br;
  const int64_t kend = p.causal ? min(p.S, q0 + Br + p.off) : p.S;  // keys any row of the block sees
  const int ntiles = kend > 0 ? static_cast<int>((kend + Bc - 1) / Bc) : 0;
  const T* qg = static_cast<const T*>(p.q) + ((b * p.T + q0) * p.Hq + h) * D;
  const T* kg = static_cast<const T*>(p.k) + (b * p.S * p.Hkv + hk) * D;
  const T* vg = static_cast<const T*>(p.v) + (b * p.S * p.Hkv + hk) * D;
  const int64_t kstride = p.Hkv * D;

  load_tile<Br, D>(qs, qg, p.Hq * D, p.T - q0);
  if (ntiles > 0) load_tile<Bc, D>(ks, kg, kstride, p.S);
  cp_async_commit();
  if (ntiles > 0) load_tile<Bc, D>(vs, vg, kstride, p.S);
  cp_async_commit();

  const int64_t rw = q0 + warp * 16;  // the warp's first query
  const int64_t row[2] = {rw + gi, rw + gi + 8};
  const float sl2 = p.scale * kLog2e;
  float o[DT][4] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  for (int j = 0; j < ntiles; ++j) {
    const int64_t k0 = static_cast<int64_t>(j) * Bc;
    cp_async_wait<1>();  // Q and K_j
    __syncthreads();
    float s[NT][4] = {};
    qk<T, D, Bc>(s, qs, warp * 16, ks);
    const bool edge = k0 + Bc > p.S || (p.causal && k0 + Bc - 1 > rw + p.off);
    if (edge) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t col = k0 + nt * 8 + 2 * ci + (e & 1), r = row[e / 2];
          if (col >= p.S || (p.causal && col > r + p.off)) s[nt][e] = -INFINITY;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = mx == -INFINITY ? 0.f : mx * sl2;  // a row with no key yet: keep P = 0, not NaN
      const float corr = exp2f(m[r] * sl2 - base);          // m = -inf: 0
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float x = exp2f(fmaf(s[nt][2 * r + e], sl2, -base));
          s[nt][2 * r + e] = x;
          sum += x;
        }
      l[r] = l[r] * corr + sum;  // per-thread partial; the group's four threads are summed at the end
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        o[dt][2 * r] *= corr;
        o[dt][2 * r + 1] *= corr;
      }
      m[r] = mx;
    }
    cp_async_wait<0>();  // V_j; the barrier also retires every warp's reads of K_j
    __syncthreads();
    if (j + 1 < ntiles) load_tile<Bc, D>(ks, kg + (k0 + Bc) * kstride, kstride, p.S - k0 - Bc);
    cp_async_commit();
    pv<T, D, Bc>(o, s, vs);
    __syncthreads();  // every warp is done with V_j
    if (j + 1 < ntiles) load_tile<Bc, D>(vs, vg + (k0 + Bc) * kstride, kstride, p.S - k0 - Bc);
    cp_async_commit();
  }
  cp_async_wait<0>();

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = l[r] > 0.f ? 1.f / l[r] : 0.f;  // a query that sees no key (S < T): zeros, lse = -inf
    if (ci == 0 && row[r] < p.T)
      p.lse[(b * p.Hq + h) * p.T + row[r]] = l[r] > 0.f ? m[r] * p.scale + logf(l[r]) : -INFINITY;
  }
  store_rows<T, D>(static_cast<T*>(p.out) + ((b * p.T) * p.Hq + h) * D, p.Hq * D, rw, p.T, o, inv[0], inv[1]);
}

// ---- backward -------------------------------------------------------------------------------------------
// Di = sum_d dO[d] O[d], (B, Hq, T) like lse. One warp per (b, t, h) row.
template <typename T, int D>
__global__ void flash_delta_kernel(Params p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / kWarp) + threadIdx.x / kWarp;
  if (r >= p.B * p.T * p.Hq) return;
  const T* o = static_cast<const T*>(p.o) + r * D;
  const T* g = static_cast<const T*>(p.dout) + r * D;
  float part = 0.f;
#pragma unroll
  for (int d = lane; d < D; d += kWarp) part += static_cast<float>(o[d]) * static_cast<float>(g[d]);
  part = warp_sum(part);
  const int64_t h = r % p.Hq, t = (r / p.Hq) % p.T, b = r / (p.Hq * p.T);
  if (lane == 0) p.delta[(b * p.Hq + h) * p.T + t] = part;
}

// Query rows per tile of the dk/dv kernel: 32 at D = 128 keeps S, dP and the two accumulators in registers.
template <int D>
constexpr int kBq = D == 128 ? 32 : 64;

// dk, dv. grid (ceil(S / 64), Hkv, B): 64 keys per block (16 per warp), K and V tiles resident; loops over
// the group's query heads and their query tiles. Transposed (keys as rows): S^T = K Q^T, P^T = e^(scale S^T -
// lse), dP^T = V dO^T, dS^T = P^T (dP^T - Di); dV += P^T dO, dK += dS^T Q; dk = scale dK at the end.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) flash_bwd_dkv_kernel(Params p) {
  constexpr int Bk = 64, Bq = kBq<D>, LD = D + kPad, NQ = Bq / 8, DT = D / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* ks = reinterpret_cast<T*>(smem);
  T* vs = ks + Bk * LD;
  T* qs = vs + Bk * LD;
  T* gs = qs + Bq * LD;
  float* lse_s = reinterpret_cast<float*>(gs + Bq * LD);
  float* del_s = lse_s + Bq;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, gi = lane / 4, ci = lane % 4;
  const int64_t b = blockIdx.z, hk = blockIdx.y, k0 = static_cast<int64_t>(blockIdx.x) * Bk;
  const int64_t kstride = p.Hkv * D, qstride = p.Hq * D;
  const T* kg = static_cast<const T*>(p.k) + ((b * p.S + k0) * p.Hkv + hk) * D;
  const T* vg = static_cast<const T*>(p.v) + ((b * p.S + k0) * p.Hkv + hk) * D;
  load_tile<Bk, D>(ks, kg, kstride, p.S - k0);
  load_tile<Bk, D>(vs, vg, kstride, p.S - k0);
  cp_async_commit();

  const int64_t kw = k0 + warp * 16;
  const int64_t key[2] = {kw + gi, kw + gi + 8};
  // First query that sees a key of the block, rounded down to a tile.
  const int64_t t_first = p.causal ? max(int64_t(0), k0 - p.off) / Bq * Bq : 0;
  const float sl2 = p.scale * kLog2e;
  float dk[DT][4] = {}, dv[DT][4] = {};
  for (int64_t h = hk * p.group; h < (hk + 1) * p.group; ++h) {
    const T* qg = static_cast<const T*>(p.q) + (b * p.T * p.Hq + h) * D;
    const T* gg = static_cast<const T*>(p.dout) + (b * p.T * p.Hq + h) * D;
    const float* lse = p.lse_in + (b * p.Hq + h) * p.T;
    const float* del = p.delta + (b * p.Hq + h) * p.T;
    for (int64_t t0 = t_first; t0 < p.T; t0 += Bq) {
      load_tile<Bq, D>(qs, qg + t0 * qstride, qstride, p.T - t0);
      load_tile<Bq, D>(gs, gg + t0 * qstride, qstride, p.T - t0);
      cp_async_commit();
      for (int i = threadIdx.x; i < Bq; i += kThreads) {
        const bool ok = t0 + i < p.T;
        lse_s[i] = ok ? lse[t0 + i] : 0.f;
        del_s[i] = ok ? del[t0 + i] : 0.f;
      }
      cp_async_wait<0>();
      __syncthreads();
      float s[NQ][4] = {}, dp[NQ][4] = {};
      qk<T, D, Bq>(s, ks, warp * 16, qs);
      qk<T, D, Bq>(dp, vs, warp * 16, gs);
#pragma unroll
      for (int nt = 0; nt < NQ; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = nt * 8 + 2 * ci + (e & 1);
          const int64_t t = t0 + c, j = key[e / 2];
          // Masked (and lse = -inf rows, which see no key) give P = 0 without evaluating e^(+inf).
          const bool masked = t >= p.T || j >= p.S || (p.causal && j > t + p.off);
          const float pr = masked ? 0.f : exp2f(fmaf(s[nt][e], sl2, -lse_s[c] * kLog2e));
          s[nt][e] = pr;
          dp[nt][e] = pr * (dp[nt][e] - del_s[c]);
        }
      pv<T, D, Bq>(dv, s, gs);
      pv<T, D, Bq>(dk, dp, qs);
      __syncthreads();  // before the next tiles overwrite qs, gs, lse_s, del_s
    }
  }
  cp_async_wait<0>();  // T = 0 or no query tile: the K, V group is still pending
  T* dkg = static_cast<T*>(p.dk) + ((b * p.S) * p.Hkv + hk) * D;
  T* dvg = static_cast<T*>(p.dv) + ((b * p.S) * p.Hkv + hk) * D;
  store_rows<T, D>(dkg, kstride, kw, p.S, dk, p.scale, p.scale);
  store_rows<T, D>(dvg, kstride, kw, p.S, dv, 1.f, 1.f);
}

// dq. grid (ceil(T / 64), Hq, B): 64 queries per block (16 per warp), Q and dO resident; loops over key
// tiles. S = Q K^T, P = e^(scale S - lse), dP = dO V^T, dS = P (dP - Di); dQ += dS K; dq = scale dQ at the
// end.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) flash_bwd_dq_kernel(Params p) {
  constexpr int Br = 64, Bc = 64, LD = D + kPad, NT = Bc / 8, DT = D / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);
  T* gs = qs + Br * LD;
  T* ks = gs + Br * LD;
  T* vs = ks + Bc * LD;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, gi = lane / 4, ci = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, hk = h / p.group;
  const int64_t q0 = static_cast<int64_t>(p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x) * Br;
  const int64_t kend = p.causal ? min(p.S, q0 + Br + p.off) : p.S;
  const int ntiles = kend > 0 ? static_cast<int>((kend + Bc - 1) / Bc) : 0;
  const int64_t qstride = p.Hq * D, kstride = p.Hkv * D;
  load_tile<Br, D>(qs, static_cast<const T*>(p.q) + ((b * p.T + q0) * p.Hq + h) * D, qstride, p.T - q0);
  load_tile<Br, D>(gs, static_cast<const T*>(p.dout) + ((b * p.T + q0) * p.Hq + h) * D, qstride, p.T - q0);
  cp_async_commit();
  const T* kg = static_cast<const T*>(p.k) + (b * p.S * p.Hkv + hk) * D;
  const T* vg = static_cast<const T*>(p.v) + (b * p.S * p.Hkv + hk) * D;

  const int64_t rw = q0 + warp * 16;
  const int64_t row[2] = {rw + gi, rw + gi + 8};
  float lse2[2], del[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = row[r] < p.T;
    lse2[r] = ok ? p.lse_in[(b * p.Hq + h) * p.T + row[r]] * kLog2e : 0.f;
    del[r] = ok ? p.delta[(b * p.Hq + h) * p.T + row[r]] : 0.f;
  }
  const float sl2 = p.scale * kLog2e;
  float dq[DT][4] = {};
  for (int j = 0; j < ntiles; ++j) {
    const int64_t k0 = static_cast<int64_t>(j) * Bc;
    load_tile<Bc, D>(ks, kg + k0 * kstride, kstride, p.S - k0);
    load_tile<Bc, D>(vs, vg + k0 * kstride, kstride, p.S - k0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    float s[NT][4] = {}, dp[NT][4] = {};
    qk<T, D, Bc>(s, qs, warp * 16, ks);
    qk<T, D, Bc>(dp, gs, warp * 16, vs);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t col = k0 + nt * 8 + 2 * ci + (e & 1), r = row[e / 2];
        const bool masked = r >= p.T || col >= p.S || (p.causal && col > r + p.off);
        const float pr = masked ? 0.f : exp2f(fmaf(s[nt][e], sl2, -lse2[e / 2]));
        dp[nt][e] = pr * (dp[nt][e] - del[e / 2]);
      }
    pv<T, D, Bc>(dq, dp, ks);
    __syncthreads();  // before the next tiles overwrite ks, vs
  }
  cp_async_wait<0>();
  store_rows<T, D>(static_cast<T*>(p.dq) + ((b * p.T) * p.Hq + h) * D, qstride, rw, p.T, dq, p.scale,
                   p.scale);
}

// ---- host side ------------------------------------------------------------------------------------------
template <typename K>
void smem_opt_in(K kernel, size_t bytes, const char* what) {
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
          what);
}

Params params_of(const AttentionShape& a) {
  Params p{};
  p.B = a.B, p.T = a.T, p.S = a.S, p.Hq = a.Hq, p.Hkv = a.Hkv, p.group = a.Hq / a.Hkv, p.off = a.S - a.T;
  p.causal = a.causal;
  p.scale = static_cast<float>(a.scale);
  return p;
}

unsigned tiles(int64_t n, int64_t tile) {
  return static_cast<unsigned>((n + tile - 1) / tile);
}

template <typename T, int D>
void forward_d(const Params& p, cudaStream_t st) {
  constexpr size_t smem = 3 * 64 * (D + kPad) * sizeof(T);
  smem_opt_in(flash_fwd_kernel<T, D>, smem, "flash attention forward: shared memory opt-in");
  flash_fwd_kernel<T, D>
      <<<dim3(tiles(p.T, 64), static_cast<unsigned>(p.Hq), static_cast<unsigned>(p.B)), kThreads, smem, st>>>(
          p);
  check_launch("flash attention forward");
}

template <typename T, int D>
void backward_d(const Params& p, cudaStream_t st) {
  const int64_t rows = p.B * p.T * p.Hq;
  flash_delta_kernel<T, D><<<tiles(rows, kThreads / kWarp), kThreads, 0, st>>>(p);
  check_launch("flash attention backward (Di)");
  if (p.S > 0) {
    constexpr size_t smem = (2 * 64 + 2 * kBq<D>)*(D + kPad) * sizeof(T) + 2 * kBq<D> * sizeof(float);
    smem_opt_in(flash_bwd_dkv_kernel<T, D>, smem, "flash attention backward (dk, dv): shared memory opt-in");
    flash_bwd_dkv_kernel<T, D>
        <<<dim3(tiles(p.S, 64), static_cast<unsigned>(p.Hkv), static_cast<unsigned>(p.B)), kThreads, smem,
           st>>>(p);
    check_launch("flash attention backward (dk, dv)");
  }
  constexpr size_t smem = 4 * 64 * (D + kPad) * sizeof(T);
  smem_opt_in(flash_bwd_dq_kernel<T, D>, smem, "flash attention backward (dq): shared memory opt-in");
  flash_bwd_dq_kernel<T, D>
      <<<dim3(tiles(p.T, 64), static_cast<unsigned>(p.Hq), static_cast<unsigned>(p.B)), kThreads, smem, st>>>(
          p);
  check_launch("flash attention backward (dq)");
}

}  // namespace

// The element types with an mma.sync variant here; f32 compiles to "unsupported" (the dispatcher's baseline).
template <typename T>
constexpr bool kTensorCore = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

template <typename T>
bool flash_attention_supported(const AttentionShape& s, std::initializer_list<const void*> ptrs) {
  if constexpr (!kTensorCore<T>) {
    (void)s, (void)ptrs;
    return false;
  } else {
    if (s.D != 64 && s.D != 128) return false;
    if (s.Hkv <= 0 || s.Hq % s.Hkv != 0 || s.B > 65535 || s.Hq > 65535 || s.B < 0 || s.T < 0 || s.S < 0)
      return false;
    for (const void* ptr : ptrs)
      if (!aligned16(ptr)) return false;
    static const int major = [] {
      int dev = 0, cc = 0;
      if (cudaGetDevice(&dev) != cudaSuccess ||
          cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
      }
      return cc;
    }();
    return major >= 8;
  }
}

template <typename T>
void flash_attention_forward(const AttentionShape& a, const T* q, const T* k, const T* v, T* o, float* lse,
                             void* stream) {
  if (!flash_attention_supported<T>(a, {q, k, v, o}))
    throw std::invalid_argument(
        "flash_attention_forward: D=" + std::to_string(a.D) +
        " or the pointers' alignment unsupported (need bf16/f16, D 64 or 128, 16-byte "
        "aligned tensors, sm_80+)");
  (void)lse, (void)stream;  // unused in the f32 instantiation
  if constexpr (kTensorCore<T>) {
    if (a.B == 0 || a.T == 0 || a.Hq == 0) return;
    Params p = params_of(a);
    p.q = q, p.k = k, p.v = v, p.out = o, p.lse = lse;
    if (a.D == 64)
      forward_d<T, 64>(p, as_stream(stream));
    else
      forward_d<T, 128>(p, as_stream(stream));
  }
}

template <typename T>
void flash_attention_backward(const AttentionShape& a, const T* q, const T* k, const T* v, const T* o,
                              const float* lse, const T* dout, T* dq, T* dk, T* dv, void* stream) {
  if (!flash_attention_supported<T>(a, {q, k, v, o, dout, dq, dk, dv}))
    throw std::invalid_argument(
        "flash_attention_backward: D=" + std::to_string(a.D) +
        " or the pointers' alignment unsupported (need bf16/f16, D 64 or 128, 16-byte "
        "aligned tensors, sm_80+)");
  (void)lse, (void)stream;  // unused in the f32 instantiation
  if constexpr (kTensorCore<T>) {
    if (a.B == 0 || a.Hq == 0) return;
    cudaStream_t st = as_stream(stream);
    if (a.T == 0) {  // no query: every key gradient is zero
      const size_t bytes = static_cast<size_t>(a.B * a.S * a.Hkv * a.D) * sizeof(T);
      check(cudaMemsetAsync(dk, 0, bytes, st), "flash_attention_backward: zero dk");
      check(cudaMemsetAsync(dv, 0, bytes, st), "flash_attention_backward: zero dv");
      return;
    }
    Params p = params_of(a);
    p.q = q, p.k = k, p.v = v, p.o = o, p.dout = dout, p.dq = dq, p.dk = dk, p.dv = dv, p.lse_in = lse;
    check(cudaMallocAsync(reinterpret_cast<void**>(&p.delta),
                          static_cast<size_t>(a.B * a.T * a.Hq) * sizeof(float), st),
          "flash_attention_backward: workspace");
    if (a.D == 64)
      backward_d<T, 64>(p, st);
    else
      backward_d<T, 128>(p, st);
    check(cudaFreeAsync(p.delta, st), "flash_attention_backward: free workspace");
  }
}

#define POLDER_INSTANTIATE_FLASH(T)                                                                         \
  template bool flash_attention_supported<T>(const AttentionShape&, std::initializer_list<const void*>);    \
  template void flash_attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, T*, float*, \
                                           void*);                                                          \
  template void flash_attention_backward<T>(const AttentionShape&, const T*, const T*, const T*, const T*,  \
                                            const float*, const T*, T*, T*, T*, void*);
POLDER_INSTANTIATE_FLASH(bf16)
POLDER_INSTANTIATE_FLASH(f16)
POLDER_INSTANTIATE_FLASH(float)

}  // namespace polder::kernels::cuda
