// Attention on the GPU: the baseline kernels (twin of kernels/cpu/attention.cpp, the reference on the GPU and
// the fallback) and the dispatcher over baseline, flash (flash_attention.cu), cuDNN (attention_cudnn.cpp)
// and, opt-in, the sm_90a forward (flash_attention_sm90.cu). One warp owns one output row (a query row in the
// forward and dq passes, a key row in the dk/dv pass); blocks of kWarps consecutive rows share 32-row tiles
// of the other operand, staged in shared memory as fp32. Within a tile, lane j holds the score of row j, so
// the tile's softmax statistics are warp reductions.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/common.cuh"  // first: it defines POLDER_HAVE_CUDA, which opens attention.h's CUDA block

#include "kernels/attention.h"
#include "kernels/gemm.h"

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
void baseline_attention_forward(const AttentionShape& a, const T* q, const T* k, const T* v, T* o,
                                acc_t<T>* lse, void* stream) {
  const Dims s = dims_of(a, "attention_forward");
  if (s.B == 0 || s.T == 0 || s.Hq == 0) return;
  if (vec_ok<T>(s.D, {q, k, v}))
    launch_forward<T, kVec<T>>(s, q, k, v, o, lse, as_stream(stream));
  else
    launch_forward<T, 1>(s, q, k, v, o, lse, as_stream(stream));
}

template <typename T>
void baseline_attention_backward(const AttentionShape& a, const T* q, const T* k, const T* v, const T* o,
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

// ---- dispatcher ---------------------------------------------------------------------------------------
namespace {

enum class Impl { automatic, polder, cudnn, baseline };

struct Selection {
  std::mutex mu;
  Impl impl = Impl::cudnn;  // the library (else the baseline) until a GPU has passed check.sh
  std::map<std::string, std::string> choice;  // auto's cache: shape key -> implementation name
  AttentionForwardFn test_forward = nullptr;
  AttentionBackwardFn test_backward = nullptr;
};

Selection& selection() {
  static Selection s;
  return s;
}

std::string key_of(const AttentionShape& a, DType dtype, bool backward) {
  return std::to_string(a.B) + "," + std::to_string(a.T) + "," + std::to_string(a.S) + "," +
         std::to_string(a.Hq) + "," + std::to_string(a.Hkv) + "," + std::to_string(a.D) + "," +
         std::to_string(a.causal) + "," + std::to_string(a.scale) + "," +
         std::to_string(static_cast<int>(dtype)) + (backward ? ",bwd" : ",fwd");
}

const char* impl_name(Impl i) {
  switch (i) {
    case Impl::automatic:
      return "auto";
    case Impl::polder:
      return "polder";
    case Impl::cudnn:
      return "cudnn";
    case Impl::baseline:
      return "baseline";
  }
  return "?";
}

// A device allocation for auto's one-time measurement; poison() fills it with NaN bytes on `st` before each
// candidate, so an output element a candidate never writes cannot pass for a previous candidate's. From the
// stream-ordered pool on the compute stream, as every other allocation: cudaMalloc/cudaFree outside the pool
// (whose release threshold keeps freed memory) could run out of memory at the first backward, and cudaFree
// synchronises the device.
struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
  cudaStream_t stream = nullptr;
  Scratch(size_t n, cudaStream_t st) : bytes(n), stream(st) {
    check(cudaMallocAsync(&p, bytes + 16, stream), "attention auto: scratch");
  }
  void poison(cudaStream_t st) const {
    check(cudaMemsetAsync(p, 0xFF, bytes, st), "attention auto: poison scratch");
  }
  ~Scratch() { cudaFreeAsync(p, stream); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

template <typename T>
std::vector<float> to_host(const void* p, size_t n) {
  std::vector<T> h(n);
  check(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), "attention auto: copy to host");
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = static_cast<float>(h[i]);
  return f;
}

// max |got - ref| / max |ref|; infinities must match (lse = -inf of a query that sees no key), NaN fails.
double nerr(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], r = ref[i];
    if (std::isinf(r) || std::isinf(g)) {
      if (g != r) return INFINITY;
      continue;
    }
    if (std::isnan(g) || std::isnan(r)) return INFINITY;
    num = std::max(num, std::abs(g - r));
    den = std::max(den, std::abs(r));
  }
  return num / den;
}

template <typename T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-4 : 2e-2;
}

// Median of `reps` timed runs (CUDA events on `st`); the candidates' after the run that produced the result
// checked, so they are warm.
template <typename F>
float time_ms(F&& run, cudaStream_t st, int reps = 3) {
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "attention auto: event");
  check(cudaEventCreate(&e1), "attention auto: event");
  std::vector<float> t(static_cast<size_t>(reps));
  for (float& x : t) {
    check(cudaEventRecord(e0, st), "attention auto: record");
    run();
    check(cudaEventRecord(e1, st), "attention auto: record");
    check(cudaEventSynchronize(e1), "attention auto: synchronize");
    check(cudaEventElapsedTime(&x, e0, e1), "attention auto: elapsed");
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// The sm_90a forward (flash_attention_sm90.cu) has never run on a GPU: a broken mbarrier protocol would trap
// or hang rather than fail auto's check, so it is a candidate only where POLDER_ATTENTION_SM90=1 is set.
bool sm90_opted_in() {
  static const bool on = [] {
    const char* e = std::getenv("POLDER_ATTENTION_SM90");
    return e != nullptr && std::string(e) == "1";
  }();
  return on;
}

// Whether the sm_90a forward applies to this call: opted in, the device runs its image, the kernel takes it.
template <typename T>
bool sm90_forward_ok(const AttentionShape& a, std::initializer_list<const void*> ptrs) {
  return sm90_opted_in() && flash_attention_sm90_supported<T>(a, ptrs) && flash_attention_sm90_available();
}

template <typename T>
void run_forward(const std::string& name, const AttentionShape& a, const T* q, const T* k, const T* v, T* o,
                 float* lse, void* stream) {
  if (name == "polder") {
    flash_attention_forward<T>(a, q, k, v, o, lse, stream);
  } else if (name == "polder_sm90") {
    flash_attention_sm90_forward<T>(a, q, k, v, o, lse, stream);
  } else if (name == "cudnn") {
    if (!cudnn_attention_forward<T>(a, q, k, v, o, lse, stream))
      throw std::runtime_error("cudnn rejected the shape");
  } else if (name == "test") {
    AttentionForwardFn f = selection().test_forward;
    if (f == nullptr) throw std::runtime_error("no test candidate");
    f(a, dtype_of<T>(), q, k, v, o, lse, stream);
  } else {
    baseline_attention_forward<T>(a, q, k, v, o, lse, stream);
  }
}

template <typename T>
void run_backward(const std::string& name, const AttentionShape& a, const T* q, const T* k, const T* v,
                  const T* o, const float* lse, const T* dout, T* dq, T* dk, T* dv, void* stream) {
  if (name == "polder") {
    flash_attention_backward<T>(a, q, k, v, o, lse, dout, dq, dk, dv, stream);
  } else if (name == "cudnn") {
    if (!cudnn_attention_backward<T>(a, q, k, v, o, lse, dout, dq, dk, dv, stream))
      throw std::runtime_error("cudnn rejected the shape");
  } else if (name == "test") {
    AttentionBackwardFn f = selection().test_backward;
    if (f == nullptr) throw std::runtime_error("no test candidate");
    f(a, dtype_of<T>(), q, k, v, o, lse, dout, dq, dk, dv, stream);
  } else {
    baseline_attention_backward<T>(a, q, k, v, o, lse, dout, dq, dk, dv, stream);
  }
}

// The candidates besides the baseline that apply to this call (sm90_ok: the forward's "polder_sm90").
std::vector<std::string> candidates(const AttentionShape& a, DType dtype, bool flash_ok, bool backward,
                                    bool sm90_ok = false) {
  std::vector<std::string> c;
  if (flash_ok) c.emplace_back("polder");
  if (sm90_ok && !backward) c.emplace_back("polder_sm90");
  if (cudnn_attention_available() && cudnn_attention_declined(a, dtype).empty()) c.emplace_back("cudnn");
  Selection& s = selection();
  std::lock_guard<std::mutex> lock(s.mu);
  if (backward ? s.test_backward != nullptr : s.test_forward != nullptr) c.emplace_back("test");
  return c;
}

// Runs `produce` (writing into scratch outputs) for the baseline and each candidate, rejects those whose
// outputs (read back by `outputs`) differ from the baseline's, times the rest; returns the fastest name.
template <typename T, typename Run, typename Poison, typename Outputs>
std::string measure(const char* dir, const AttentionShape& a, const std::vector<std::string>& names,
                    Run&& run, Poison&& poison, Outputs&& outputs, cudaStream_t st) {
  // The baseline runs twice: the first (cold) gives the reference, the second the time to beat. One timed run
  // only: it is usually far slower than the others, and at 16k tokens one run takes seconds.
  poison(0);
  run("baseline", 0);
  check(cudaStreamSynchronize(st), "attention auto: baseline");
  const std::vector<std::vector<float>> ref = outputs(0);
  std::string best = "baseline";
  float best_ms = time_ms([&] { run("baseline", 0); }, st, 1);
  for (const std::string& name : names) {
    double err = 0;
    try {
      poison(1);
      run(name, 1);
      check(cudaStreamSynchronize(st), "attention auto: candidate");
      const std::vector<std::vector<float>> got = outputs(1);
      for (size_t i = 0; i < ref.size(); ++i) err = std::max(err, nerr(got[i], ref[i]));
    } catch (const std::exception& e) {
      (void)cudaGetLastError();
      std::fprintf(stderr,
                   "polder: attention %s '%s' failed for B=%lld T=%lld S=%lld Hq=%lld Hkv=%lld D=%lld: %s\n",
                   dir, name.c_str(), static_cast<long long>(a.B), static_cast<long long>(a.T),
                   static_cast<long long>(a.S), static_cast<long long>(a.Hq), static_cast<long long>(a.Hkv),
                   static_cast<long long>(a.D), e.what());
      continue;
    }
    if (!(err < tolerance<T>())) {
      std::fprintf(
          stderr,
          "polder: attention %s '%s' rejected for B=%lld T=%lld S=%lld Hq=%lld Hkv=%lld D=%lld causal=%d: "
          "normalised error %g against the baseline (limit %g)\n",
          dir, name.c_str(), static_cast<long long>(a.B), static_cast<long long>(a.T),
          static_cast<long long>(a.S), static_cast<long long>(a.Hq), static_cast<long long>(a.Hkv),
          static_cast<long long>(a.D), static_cast<int>(a.causal), err, tolerance<T>());
      continue;
    }
    const float ms = time_ms([&] { run(name, 1); }, st);
    if (ms < 0.97f * best_ms)
      best = name, best_ms = ms;  // within 3 %: a tie, keep the earlier (baseline first)
  }
  return best;
}

std::string cached(const std::string& key) {
  Selection& s = selection();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.choice.find(key);
  return it == s.choice.end() ? std::string() : it->second;
}

void remember(const std::string& key, const std::string& name) {
  Selection& s = selection();
  std::lock_guard<std::mutex> lock(s.mu);
  s.choice[key] = name;
}

Impl current_impl() {
  Selection& s = selection();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.impl;
}

bool degenerate(const AttentionShape& a) {
  return a.B <= 0 || a.T <= 0 || a.S <= 0 || a.Hq <= 0 || a.Hkv <= 0 || a.D <= 0 || a.Hq % a.Hkv != 0;
}

}  // namespace

void set_attention_impl(const std::string& name) {
  Impl i;
  if (name == "auto")
    i = Impl::automatic;
  else if (name == "polder")
    i = Impl::polder;
  else if (name == "cudnn")
    i = Impl::cudnn;
  else if (name == "baseline")
    i = Impl::baseline;
  else
    throw std::invalid_argument("attention_impl '" + name +
                                "' is unknown (expected auto, polder, cudnn or baseline)");
  std::string why;
  static std::atomic<bool> told{false};  // once per process, not per trainer
  if (i == Impl::cudnn && !cudnn_attention_available(&why) && !told.exchange(true))
    std::fprintf(stderr, "polder: attention_impl cudnn: %s; using the baseline kernel instead\n",
                 why.c_str());
  Selection& s = selection();
  std::lock_guard<std::mutex> lock(s.mu);
  s.impl = i;
  s.choice.clear();
}

std::string attention_impl() {
  return impl_name(current_impl());
}

std::string attention_choices_text() {
  Selection& s = selection();
  std::lock_guard<std::mutex> lock(s.mu);
  std::string out;
  for (const auto& [key, name] : s.choice) out += "attention " + key + " " + name + "\n";
  return out;
}

void load_attention_choice(const std::string& key, const std::string& name) {
  remember(key, name);
}

std::string attention_choice(const AttentionShape& s, DType dtype, bool backward) {
  return cached(key_of(s, dtype, backward));
}

void set_attention_test_candidate(AttentionForwardFn forward, AttentionBackwardFn backward) {
  Selection& s = selection();
  std::lock_guard<std::mutex> lock(s.mu);
  s.test_forward = forward;
  s.test_backward = backward;
  s.choice.clear();
}

template <typename T>
void attention_forward(const AttentionShape& a, const T* q, const T* k, const T* v, T* o, acc_t<T>* lse,
                       void* stream) {
  static_assert(std::is_same_v<acc_t<T>, float>, "attention keeps lse in fp32");
  const Impl impl = current_impl();
  const bool flash_ok = flash_attention_supported<T>(a, {q, k, v, o});
  if (impl == Impl::baseline || degenerate(a))
    return baseline_attention_forward<T>(a, q, k, v, o, lse, stream);
  if (impl == Impl::cudnn) {  // the library, else the baseline: never an own kernel unasked
    if (!cudnn_attention_forward<T>(a, q, k, v, o, lse, stream))
      baseline_attention_forward<T>(a, q, k, v, o, lse, stream);
    return;
  }
  const bool sm90_ok = sm90_forward_ok<T>(a, {q, k, v, o});
  if (impl != Impl::automatic) {
    if (impl == Impl::polder && sm90_ok) return flash_attention_sm90_forward<T>(a, q, k, v, o, lse, stream);
    if (flash_ok) return flash_attention_forward<T>(a, q, k, v, o, lse, stream);
    return baseline_attention_forward<T>(a, q, k, v, o, lse, stream);
  }
  const std::string key = key_of(a, dtype_of<T>(), false);
  std::string name = cached(key);
  if (name.empty()) {
    const std::vector<std::string> names = candidates(a, dtype_of<T>(), flash_ok, false, sm90_ok);
    if (names.empty()) {
      name = "baseline";
    } else {
      const size_t no = static_cast<size_t>(a.B * a.T * a.Hq * a.D),
                   nl = static_cast<size_t>(a.B * a.Hq * a.T);
      const cudaStream_t st = as_stream(stream);
      Scratch so[2] = {Scratch(no * sizeof(T), st), Scratch(no * sizeof(T), st)};
      Scratch sl[2] = {Scratch(nl * sizeof(float), st), Scratch(nl * sizeof(float), st)};
      auto run = [&](const std::string& n, int i) {
        run_forward<T>(n, a, q, k, v, so[i].as<T>(), sl[i].as<float>(), stream);
      };
      auto poison = [&](int i) {
        so[i].poison(as_stream(stream));
        sl[i].poison(as_stream(stream));
      };
      auto outputs = [&](int i) {
        return std::vector<std::vector<float>>{to_host<T>(so[i].p, no), to_host<float>(sl[i].p, nl)};
      };
      name = agree_choice("attention " + key, [&] {
        return measure<T>("forward", a, names, run, poison, outputs, as_stream(stream));
      });
    }
    remember(key, name);
  }
  run_forward<T>(name, a, q, k, v, o, lse, stream);
}

template <typename T>
void attention_backward(const AttentionShape& a, const T* q, const T* k, const T* v, const T* o,
                        const acc_t<T>* lse, const T* dout, T* dq, T* dk, T* dv, void* stream) {
  const Impl impl = current_impl();
  const bool flash_ok = flash_attention_supported<T>(a, {q, k, v, o, dout, dq, dk, dv});
  if (impl == Impl::baseline || degenerate(a))
    return baseline_attention_backward<T>(a, q, k, v, o, lse, dout, dq, dk, dv, stream);
  if (impl == Impl::cudnn) {  // the library, else the baseline: never an own kernel unasked
    if (!cudnn_attention_backward<T>(a, q, k, v, o, lse, dout, dq, dk, dv, stream))
      baseline_attention_backward<T>(a, q, k, v, o, lse, dout, dq, dk, dv, stream);
    return;
  }
  if (impl != Impl::automatic) {
    if (flash_ok) return flash_attention_backward<T>(a, q, k, v, o, lse, dout, dq, dk, dv, stream);
    return baseline_attention_backward<T>(a, q, k, v, o, lse, dout, dq, dk, dv, stream);
  }
  const std::string key = key_of(a, dtype_of<T>(), true);
  std::string name = cached(key);
  if (name.empty()) {
    const std::vector<std::string> names = candidates(a, dtype_of<T>(), flash_ok, true);
    if (names.empty()) {
      name = "baseline";
    } else {
      const size_t nq = static_cast<size_t>(a.B * a.T * a.Hq * a.D),
                   nk = static_cast<size_t>(a.B * a.S * a.Hkv * a.D);
      const cudaStream_t st = as_stream(stream);
      Scratch sq[2] = {Scratch(nq * sizeof(T), st), Scratch(nq * sizeof(T), st)};
      Scratch sk[2] = {Scratch(nk * sizeof(T), st), Scratch(nk * sizeof(T), st)};
      Scratch sv[2] = {Scratch(nk * sizeof(T), st), Scratch(nk * sizeof(T), st)};
      auto run = [&](const std::string& n, int i) {
        run_backward<T>(n, a, q, k, v, o, lse, dout, sq[i].as<T>(), sk[i].as<T>(), sv[i].as<T>(), stream);
      };
      auto poison = [&](int i) {
        for (Scratch* x : {&sq[i], &sk[i], &sv[i]}) x->poison(as_stream(stream));
      };
      auto outputs = [&](int i) {
        return std::vector<std::vector<float>>{to_host<T>(sq[i].p, nq), to_host<T>(sk[i].p, nk),
                                               to_host<T>(sv[i].p, nk)};
      };
      name = agree_choice("attention " + key, [&] {
        return measure<T>("backward", a, names, run, poison, outputs, as_stream(stream));
      });
    }
    remember(key, name);
  }
  run_backward<T>(name, a, q, k, v, o, lse, dout, dq, dk, dv, stream);
}

#define POLDER_INSTANTIATE_ATTENTION(T)                                                                  \
  template void attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, T*, acc_t<T>*, \
                                     void*);                                                             \
  template void attention_backward<T>(const AttentionShape&, const T*, const T*, const T*, const T*,     \
                                      const acc_t<T>*, const T*, T*, T*, T*, void*);                     \
  template void baseline_attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, T*,   \
                                              acc_t<T>*, void*);                                         \
  template void baseline_attention_backward<T>(const AttentionShape&, const T*, const T*, const T*,      \
                                               const T*, const acc_t<T>*, const T*, T*, T*, T*, void*);
POLDER_INSTANTIATE_ATTENTION(float)
POLDER_INSTANTIATE_ATTENTION(bf16)
POLDER_INSTANTIATE_ATTENTION(f16)

}  // namespace polder::kernels::cuda
