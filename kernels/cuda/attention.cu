// Baseline attention on the GPU (twin of kernels/cpu/attention.cpp; the fast flash kernel is a later issue).
// One warp owns one output row (a query row in the forward and dq passes, a key row in the dk/dv pass);
// blocks of kWarps consecutive rows share 32-row tiles of the other operand, staged in shared memory as fp32.
// Within a tile, lane j holds the score of row j, so the tile's softmax statistics are warp reductions.
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "kernels/attention.h"
#include "kernels/cuda/common.cuh"

namespace polder::kernels::cuda {
namespace {
using namespace detail;

constexpr int kWarps = 4;     // rows per block
constexpr int kTile = kWarp;  // rows per shared-memory tile: one per lane
constexpr int kMaxD = 256;
constexpr int kPer = kMaxD / kWarp;  // head-dim elements per lane: lane owns d = lane + 32 i

struct Dims {
  int64_t B, T, S, Hq, Hkv, D, group;
  bool causal;
  float scale;
};

// Last key index (exclusive) that query t may see; first query index that may see key j.
__device__ __forceinline__ int64_t key_end(const Dims& s, int64_t t) {
  return s.causal ? min(s.S, t + (s.S - s.T) + 1) : s.S;
}
__device__ __forceinline__ int64_t query_begin(const Dims& s, int64_t j) {
  return s.causal ? max(int64_t(0), j - (s.S - s.T)) : int64_t(0);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Copies `rows` rows of D elements (row r at src + r * stride) into dst as fp32, densely packed (r * D).
template <typename T, int V>
__device__ void load_rows(float* dst, const T* src, int64_t stride, int rows, int D) {
  const int per_row = D / V;
  for (int idx = threadIdx.x; idx < rows * per_row; idx += blockDim.x) {
    const int r = idx / per_row, c = idx % per_row;
    const Vec<T, V> a = *reinterpret_cast<const Vec<T, V>*>(src + r * stride + c * V);
#pragma unroll
    for (int e = 0; e < V; ++e) dst[r * D + c * V + e] = static_cast<float>(a.v[e]);
  }
}

// A row of D elements into registers, lane-strided; zeros past D.
template <typename T>
__device__ __forceinline__ void load_reg(float (&r)[kPer], const T* src, int D) {
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + kWarp * i;
    r[i] = d < D ? static_cast<float>(src[d]) : 0.f;
  }
}

// Dot product of a register row with a shared-memory row; every lane gets the result.
__device__ __forceinline__ float row_dot(const float (&r)[kPer], const float* row, int D) {
  const int lane = threadIdx.x % kWarp;
  float part = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + kWarp * i;
    if (d < D) part += r[i] * row[d];
  }
  return warp_sum(part);
}

// Forward. grid (ceil(T / kWarps), Hq, B). Per tile of keys: m' = max(m, max_j s_j), l = l e^(m - m') +
// sum_j e^(s_j - m'), acc = acc e^(m - m') + sum_j e^(s_j - m') v_j; at the end o = acc / l, lse = m + log l.
template <typename T, int V>
__global__ void forward_kernel(Dims s, const T* q, const T* k, const T* v, T* o, float* lse) {
  extern __shared__ float smem[];
  float* ks = smem;                // (kTile, D)
  float* vs = smem + kTile * s.D;  // (kTile, D)
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, D = static_cast<int>(s.D);
  const int64_t b = blockIdx.z, h = blockIdx.y, hk = h / s.group;
  const int64_t t_first = static_cast<int64_t>(blockIdx.x) * kWarps, t = t_first + warp;
  const int64_t end = t < s.T ? key_end(s, t) : 0;
  const int64_t block_end = key_end(s, min(s.T - 1, t_first + kWarps - 1));  // key_end grows with t

  float qr[kPer] = {}, acc[kPer];
  if (t < s.T) load_reg(qr, q + ((b * s.T + t) * s.Hq + h) * s.D, D);
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.f;
  float m = -INFINITY, l = 0.f;

  for (int64_t j0 = 0; j0 < block_end; j0 += kTile) {
    const int rows = static_cast<int>(min(int64_t(kTile), s.S - j0));
    __syncthreads();  // the previous tile may still be read
    load_rows<T, V>(ks, k + ((b * s.S + j0) * s.Hkv + hk) * s.D, s.Hkv * s.D, rows, D);
    load_rows<T, V>(vs, v + ((b * s.S + j0) * s.Hkv + hk) * s.D, s.Hkv * s.D, rows, D);
    __syncthreads();
    const int n = static_cast<int>(min(int64_t(kTile), end - j0));  // warp-uniform
    if (n <= 0) continue;
    float sc = -INFINITY;  // lane j: score of key j0 + j
    for (int j = 0; j < n; ++j) {
      const float x = s.scale * row_dot(qr, ks + j * D, D);
      if (lane == j) sc = x;
    }
    const float m_new = fmaxf(m, warp_max(sc));
    const float correction = expf(m - m_new);  // exp(-inf) = 0 on the first tile
    const float p = lane < n ? expf(sc - m_new) : 0.f;
    l = l * correction + warp_sum(p);
#pragma unroll
    for (int i = 0; i < kPer; ++i) acc[i] *= correction;
    for (int j = 0; j < n; ++j) {
      const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int d = lane + kWarp * i;
        if (d < D) acc[i] += pj * vs[j * D + d];
      }
    }
    m = m_new;
  }
  if (t >= s.T) return;
  T* orow = o + ((b * s.T + t) * s.Hq + h) * s.D;
  const bool none = end <= 0;  // a query that sees no key (only when S < T): zeros, lse = -inf
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + kWarp * i;
    if (d < D) orow[d] = static_cast<T>(none ? 0.f : acc[i] / l);
  }
  if (lane == 0) lse[(b * s.Hq + h) * s.T + t] = none ? -INFINITY : m + logf(l);
}

// Di = sum_d dO_i[d] O_i[d], laid out like lse (B, Hq, T). One warp per row, rows in (b, t, h) order.
template <typename T>
__global__ void delta_kernel(Dims s, const T* o, const T* dout, float* delta) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  if (r >= s.B * s.T * s.Hq) return;
  const int64_t h = r % s.Hq, t = (r / s.Hq) % s.T, b = r / (s.Hq * s.T);
  float part = 0;
  for (int64_t d = lane; d < s.D; d += kWarp)
    part += static_cast<float>(dout[r * s.D + d]) * static_cast<float>(o[r * s.D + d]);
  part = warp_sum(part);
  if (lane == 0) delta[(b * s.Hq + h) * s.T + t] = part;
}

// Pass 1, dq. grid (ceil(T / kWarps), Hq, B). p_j = exp(scale q.k_j - lse), dS_j = p_j (dO.v_j - Di),
// dq = scale sum_j dS_j k_j.
template <typename T, int V>
__global__ void dq_kernel(Dims s, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                          const T* dout, T* dq) {
  extern __shared__ float smem[];
  float* ks = smem;
  float* vs = smem + kTile * s.D;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, D = static_cast<int>(s.D);
  const int64_t b = blockIdx.z, h = blockIdx.y, hk = h / s.group;
  const int64_t t_first = static_cast<int64_t>(blockIdx.x) * kWarps, t = t_first + warp;
  const int64_t end = t < s.T ? key_end(s, t) : 0;
  const int64_t block_end = key_end(s, min(s.T - 1, t_first + kWarps - 1));
  const int64_t row = ((b * s.T + t) * s.Hq + h) * s.D, stat = (b * s.Hq + h) * s.T + t;

  float qr[kPer] = {}, gr[kPer] = {}, acc[kPer];
  if (t < s.T) {
    load_reg(qr, q + row, D);
    load_reg(gr, dout + row, D);
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.f;
  const float l = t < s.T && end > 0 ? lse[stat] : 0.f, di = t < s.T ? delta[stat] : 0.f;

  for (int64_t j0 = 0; j0 < block_end; j0 += kTile) {
    const int rows = static_cast<int>(min(int64_t(kTile), s.S - j0));
    __syncthreads();
    load_rows<T, V>(ks, k + ((b * s.S + j0) * s.Hkv + hk) * s.D, s.Hkv * s.D, rows, D);
    load_rows<T, V>(vs, v + ((b * s.S + j0) * s.Hkv + hk) * s.D, s.Hkv * s.D, rows, D);
    __syncthreads();
    const int n = static_cast<int>(min(int64_t(kTile), end - j0));
    if (n <= 0) continue;
    float ds = 0.f;  // lane j: dS of key j0 + j
    for (int j = 0; j < n; ++j) {
      const float sp = row_dot(qr, ks + j * D, D), dp = row_dot(gr, vs + j * D, D);
      if (lane == j) ds = expf(s.scale * sp - l) * (dp - di);
    }
    for (int j = 0; j < n; ++j) {
      const float dsj = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int d = lane + kWarp * i;
        if (d < D) acc[i] += dsj * ks[j * D + d];
      }
    }
  }
  if (t >= s.T) return;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + kWarp * i;
    if (d < D) dq[row + d] = static_cast<T>(s.scale * acc[i]);
  }
}

// Pass 2, dk and dv. grid (ceil(S / kWarps), Hkv, B); query and dO tiles in shared memory. For key j, summed
// over the group's query heads h and the queries t that see j: dk = scale sum dS_t q_t, dv = sum p_t dO_t.
template <typename T, int V>
__global__ void dkv_kernel(Dims s, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                           const T* dout, T* dk, T* dv) {
  extern __shared__ float smem[];
  float* qs = smem;                // (kTile, D)
  float* gs = smem + kTile * s.D;  // (kTile, D)
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, D = static_cast<int>(s.D);
  const int64_t b = blockIdx.z, hk = blockIdx.y;
  const int64_t j_first = static_cast<int64_t>(blockIdx.x) * kWarps, j = j_first + warp;
  const int64_t begin = j < s.S ? query_begin(s, j) : s.T;
  const int64_t block_begin = query_begin(s, j_first);  // query_begin grows with j
  const int64_t krow = ((b * s.S + j) * s.Hkv + hk) * s.D;

  float kr[kPer] = {}, vr[kPer] = {}, dka[kPer], dva[kPer];
  if (j < s.S) {
    load_reg(kr, k + krow, D);
    load_reg(vr, v + krow, D);
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) dka[i] = dva[i] = 0.f;

  for (int64_t h = hk * s.group; h < (hk + 1) * s.group; ++h)
    for (int64_t t0 = block_begin; t0 < s.T; t0 += kTile) {
      const int rows = static_cast<int>(min(int64_t(kTile), s.T - t0));
      __syncthreads();
      load_rows<T, V>(qs, q + ((b * s.T + t0) * s.Hq + h) * s.D, s.Hq * s.D, rows, D);
      load_rows<T, V>(gs, dout + ((b * s.T + t0) * s.Hq + h) * s.D, s.Hq * s.D, rows, D);
      __syncthreads();
      const int lo = static_cast<int>(max(int64_t(0), min(int64_t(rows), begin - t0)));  // warp-uniform
      float p = 0.f, ds = 0.f;  // lane i: of query t0 + i
      for (int i = lo; i < rows; ++i) {
        const float sp = row_dot(kr, qs + i * D, D), dp = row_dot(vr, gs + i * D, D);
        if (lane == i) {
          const int64_t stat = (b * s.Hq + h) * s.T + t0 + i;
          p = expf(s.scale * sp - lse[stat]);
          ds = p * (dp - delta[stat]);
        }
      }
      for (int i = lo; i < rows; ++i) {
        const float pi = __shfl_sync(0xffffffffu, p, i), dsi = __shfl_sync(0xffffffffu, ds, i);
#pragma unroll
        for (int e = 0; e < kPer; ++e) {
          const int d = lane + kWarp * e;
          if (d < D) {
            dka[e] += dsi * qs[i * D + d];
            dva[e] += pi * gs[i * D + d];
          }
        }
      }
    }
  if (j >= s.S) return;
#pragma unroll
  for (int e = 0; e < kPer; ++e) {
    const int d = lane + kWarp * e;
    if (d < D) {
      dk[krow + d] = static_cast<T>(s.scale * dka[e]);
      dv[krow + d] = static_cast<T>(dva[e]);
    }
  }
}

Dims dims_of(const AttentionShape& a, const char* what) {
  if (a.D <= 0 || a.D > kMaxD || a.Hkv <= 0 || a.Hq % a.Hkv != 0 || a.B < 0 || a.T < 0 || a.S < 0)
    throw std::invalid_argument(
        std::string(what) + ": shape B=" + std::to_string(a.B) + " T=" + std::to_string(a.T) +
        " S=" + std::to_string(a.S) + " Hq=" + std::to_string(a.Hq) + " Hkv=" + std::to_string(a.Hkv) +
        " D=" + std::to_string(a.D) + " unsupported: need 0 < D <= 256 and Hq a multiple of Hkv > 0");
  if (a.B > 65535 || a.Hq > 65535)
    throw std::invalid_argument(std::string(what) + ": B=" + std::to_string(a.B) +
                                " or Hq=" + std::to_string(a.Hq) + " exceeds the grid limit 65535");
  return Dims{a.B, a.T, a.S, a.Hq, a.Hkv, a.D, a.Hq / a.Hkv, a.causal, static_cast<float>(a.scale)};
}

// Two (kTile, D) fp32 tiles; above the 48 KiB default (D > 192) the kernel has to opt in.
template <typename K>
size_t tile_smem(K kernel, int64_t D) {
  const size_t bytes = 2 * kTile * static_cast<size_t>(D) * sizeof(float);
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
          "attention: shared memory opt-in");
  return bytes;
}

unsigned blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kWarps - 1) / kWarps);
}

template <typename T>
bool vec_ok(int64_t D, std::initializer_list<const void*> ptrs) {
  if (D % kVec<T> != 0) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

template <typename T, int V>
void launch_forward(const Dims& s, const T* q, const T* k, const T* v, T* o, float* lse, cudaStream_t st) {
  const size_t smem = tile_smem(forward_kernel<T, V>, s.D);
  forward_kernel<T, V><<<dim3(blocks(s.T), static_cast<unsigned>(s.Hq), static_cast<unsigned>(s.B)),
                         kWarps * kWarp, smem, st>>>(s, q, k, v, o, lse);
  check_launch("attention_forward");
}

template <typename T, int V>
void launch_backward(const Dims& s, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                     const T* dout, T* dq, T* dk, T* dv, cudaStream_t st) {
  const size_t smem_q = tile_smem(dq_kernel<T, V>, s.D);
  dq_kernel<T, V><<<dim3(blocks(s.T), static_cast<unsigned>(s.Hq), static_cast<unsigned>(s.B)),
                    kWarps * kWarp, smem_q, st>>>(s, q, k, v, lse, delta, dout, dq);
  check_launch("attention_backward (dq)");
  if (s.S == 0) return;
  const size_t smem_k = tile_smem(dkv_kernel<T, V>, s.D);
  dkv_kernel<T, V><<<dim3(blocks(s.S), static_cast<unsigned>(s.Hkv), static_cast<unsigned>(s.B)),
                     kWarps * kWarp, smem_k, st>>>(s, q, k, v, lse, delta, dout, dk, dv);
  check_launch("attention_backward (dk, dv)");
}

}  // namespace

template <typename T>
void attention_forward(const AttentionShape& a, const T* q, const T* k, const T* v, T* o, acc_t<T>* lse,
                       void* stream) {
  const Dims s = dims_of(a, "attention_forward");
  if (s.B == 0 || s.T == 0 || s.Hq == 0) return;
  if (vec_ok<T>(s.D, {q, k, v}))
    launch_forward<T, kVec<T>>(s, q, k, v, o, lse, as_stream(stream));
  else
    launch_forward<T, 1>(s, q, k, v, o, lse, as_stream(stream));
}

template <typename T>
void attention_backward(const AttentionShape& a, const T* q, const T* k, const T* v, const T* o,
                        const acc_t<T>* lse, const T* dout, T* dq, T* dk, T* dv, void* stream) {
  const Dims s = dims_of(a, "attention_backward");
  if (s.B == 0 || s.Hq == 0) return;
  cudaStream_t st = as_stream(stream);
  if (s.T == 0) {  // no query: every key gradient is zero
    const size_t bytes = static_cast<size_t>(s.B * s.S * s.Hkv * s.D) * sizeof(T);
    check(cudaMemsetAsync(dk, 0, bytes, st), "attention_backward: zero dk");
    check(cudaMemsetAsync(dv, 0, bytes, st), "attention_backward: zero dv");
    return;
  }
  // Di first, into a stream-ordered workspace laid out like lse.
  float* delta = nullptr;
  const int64_t rows = s.B * s.T * s.Hq;
  check(cudaMallocAsync(reinterpret_cast<void**>(&delta), static_cast<size_t>(rows) * sizeof(float), st),
        "attention_backward: workspace");
  delta_kernel<T><<<blocks(rows), kWarps * kWarp, 0, st>>>(s, o, dout, delta);
  check_launch("attention_backward (Di)");
  if (vec_ok<T>(s.D, {q, k, v, dout}))
    launch_backward<T, kVec<T>>(s, q, k, v, lse, delta, dout, dq, dk, dv, st);
  else
    launch_backward<T, 1>(s, q, k, v, lse, delta, dout, dq, dk, dv, st);
  check(cudaFreeAsync(delta, st), "attention_backward: free workspace");
}

#define POLDER_INSTANTIATE_ATTENTION(T)                                                                  \
  template void attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, T*, acc_t<T>*, \
                                     void*);                                                             \
  template void attention_backward<T>(const AttentionShape&, const T*, const T*, const T*, const T*,     \
                                      const acc_t<T>*, const T*, T*, T*, T*, void*);
POLDER_INSTANTIATE_ATTENTION(float)
POLDER_INSTANTIATE_ATTENTION(bf16)
POLDER_INSTANTIATE_ATTENTION(f16)

}  // namespace polder::kernels::cuda
