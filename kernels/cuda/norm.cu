// RMSNorm on the GPU (twin of kernels/cpu/norm.cpp): one block per row with a shuffle reduction in fp32,
// 16-byte accesses when the row length and pointers allow. The weight gradient is a separate column kernel:
// each block owns 32 columns of one chunk of rows, its 8 warps take fixed interleaved rows and are combined
// in a fixed order, then the chunks are added in order (deterministic; see rms_backward_dw_kernel).
#include <initializer_list>

#include "kernels/cuda/common.cuh"
#include "kernels/norm.h"

namespace polder::kernels::cuda {
namespace {
using namespace detail;

template <typename T, int V>
__global__ void rms_forward_kernel(const T* x, const T* w, T* y, acc_t<T>* rstd, int64_t cols, float eps) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarp];
  const int64_t r = blockIdx.x;
  const Vec<T, V>* xr = reinterpret_cast<const Vec<T, V>*>(x + r * cols);
  const Vec<T, V>* wv = reinterpret_cast<const Vec<T, V>*>(w);
  Vec<T, V>* yr = reinterpret_cast<Vec<T, V>*>(y + r * cols);
  const int64_t nv = cols / V;
  A ss = 0;
  for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
    Vec<T, V> a = xr[i];
#pragma unroll
    for (int k = 0; k < V; ++k) ss += static_cast<A>(a.v[k]) * static_cast<A>(a.v[k]);
  }
  ss = block_sum(ss, scratch);
  const A inv = A(1) / sqrt(ss / static_cast<A>(cols) + static_cast<A>(eps));
  if (threadIdx.x == 0) rstd[r] = inv;
  for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
    Vec<T, V> a = xr[i], b = wv[i], o;
#pragma unroll
    for (int k = 0; k < V; ++k)
      o.v[k] = static_cast<T>(static_cast<A>(a.v[k]) * inv * static_cast<A>(b.v[k]));
    yr[i] = o;
  }
}

// dx = rstd * dy * w - x * rstd^3 * mean(dy * w * x), one block per row.
template <typename T, int V>
__global__ void rms_backward_dx_kernel(const T* x, const T* w, const acc_t<T>* rstd, const T* dy, T* dx,
                                       int64_t cols) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarp];
  const int64_t r = blockIdx.x;
  const Vec<T, V>* xr = reinterpret_cast<const Vec<T, V>*>(x + r * cols);
  const Vec<T, V>* dyr = reinterpret_cast<const Vec<T, V>*>(dy + r * cols);
  const Vec<T, V>* wv = reinterpret_cast<const Vec<T, V>*>(w);
  Vec<T, V>* dxr = reinterpret_cast<Vec<T, V>*>(dx + r * cols);
  const int64_t nv = cols / V;
  const A inv = rstd[r];
  A dot = 0;
  for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
    Vec<T, V> a = xr[i], g = dyr[i], b = wv[i];
#pragma unroll
    for (int k = 0; k < V; ++k)
      dot += static_cast<A>(g.v[k]) * static_cast<A>(b.v[k]) * static_cast<A>(a.v[k]);
  }
  dot = block_sum(dot, scratch);
  const A coef = inv * inv * inv * dot / static_cast<A>(cols);
  for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
    Vec<T, V> a = xr[i], g = dyr[i], b = wv[i], o;
#pragma unroll
    for (int k = 0; k < V; ++k)
      o.v[k] = static_cast<T>(inv * static_cast<A>(g.v[k]) * static_cast<A>(b.v[k]) -
                              static_cast<A>(a.v[k]) * coef);
    dxr[i] = o;
  }
}

// dw[c] = sum_r dy[r, c] * x[r, c] * rstd[r], in two deterministic stages so that the weight gradient fills
// the GPU: a 2-D grid of (32-column block, row chunk), block (32, 8): threadIdx.x picks the column,
// threadIdx.y the chunk's rows y, y + 8, ...; the 8 partial sums are added in order of y into out[chunk, c]
// (dw itself when there is one chunk); then, with several chunks, one thread per column adds the chunks in
// order. One chunk per block row only when the columns alone give enough blocks (cols/32 blocks of 256
// threads left most SMs idle for a 4096-wide model: issue 21).
constexpr int kDwRows = 8;
template <typename T>
__global__ void rms_backward_dw_kernel(const T* x, const acc_t<T>* rstd, const T* dy, acc_t<T>* out,
                                       int64_t rows, int64_t cols, int64_t chunk_rows) {
  using A = acc_t<T>;
  __shared__ A part[kDwRows][kWarp];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  A s = 0;
  if (c < cols)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kDwRows)
      s += static_cast<A>(dy[r * cols + c]) * static_cast<A>(x[r * cols + c]) * rstd[r];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    A t = 0;
#pragma unroll
    for (int k = 0; k < kDwRows; ++k) t += part[k][threadIdx.x];
    out[static_cast<int64_t>(blockIdx.y) * cols + c] = t;
  }
}

template <typename A>
__global__ void sum_chunks_kernel(const A* partial, A* dw, int64_t chunks, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  A t = 0;
  for (int64_t k = 0; k < chunks; ++k) t += partial[k * cols + c];
  dw[c] = t;
}

// Row chunks of the weight gradient: enough blocks for ~8 per SM of a 132-SM part, each chunk at least 64
// rows (a fixed function of the shape, so the summation order, and the result, never depend on the GPU).
int64_t dw_chunks(int64_t rows, int64_t cols) {
  const int64_t col_blocks = (cols + kWarp - 1) / kWarp;
  const int64_t want = (1056 + col_blocks - 1) / col_blocks;
  const int64_t most = (rows + 63) / 64;
  return want < most ? want : most;
}

template <typename T>
int pick_vec(int64_t cols, std::initializer_list<const void*> ptrs) {
  constexpr int V = kVec<T>;
  if (cols % V != 0) return 1;
  for (const void* p : ptrs)
    if (!aligned16(p)) return 1;
  return V;
}

}  // namespace

template <typename T>
void rms_norm_forward(const T* x, const T* w, T* y, acc_t<T>* rstd, int64_t rows, int64_t cols, float eps,
                      void* stream) {
  if (rows == 0 || cols == 0) return;
  constexpr int V = kVec<T>;
  if (pick_vec<T>(cols, {x, w, y}) == V)
    rms_forward_kernel<T, V><<<static_cast<unsigned>(rows), row_threads(cols, V), 0, as_stream(stream)>>>(
        x, w, y, rstd, cols, eps);
  else
    rms_forward_kernel<T, 1><<<static_cast<unsigned>(rows), row_threads(cols, 1), 0, as_stream(stream)>>>(
        x, w, y, rstd, cols, eps);
  check_launch("rms_norm_forward");
}

template <typename T>
void rms_norm_backward(const T* x, const T* w, const acc_t<T>* rstd, const T* dy, T* dx, acc_t<T>* dw,
                       int64_t rows, int64_t cols, void* stream) {
  if (cols == 0) return;
  cudaStream_t s = as_stream(stream);
  if (rows == 0) {
    check(cudaMemsetAsync(dw, 0, static_cast<size_t>(cols) * sizeof(acc_t<T>), s),
          "rms_norm_backward memset");
    return;
  }
  constexpr int V = kVec<T>;
  if (pick_vec<T>(cols, {x, w, dy, dx}) == V)
    rms_backward_dx_kernel<T, V>
        <<<static_cast<unsigned>(rows), row_threads(cols, V), 0, s>>>(x, w, rstd, dy, dx, cols);
  else
    rms_backward_dx_kernel<T, 1>
        <<<static_cast<unsigned>(rows), row_threads(cols, 1), 0, s>>>(x, w, rstd, dy, dx, cols);
  check_launch("rms_norm_backward dx");
  const int64_t chunks = dw_chunks(rows, cols), chunk_rows = (rows + chunks - 1) / chunks;
  const dim3 grid(static_cast<unsigned>((cols + kWarp - 1) / kWarp), static_cast<unsigned>(chunks));
  if (chunks == 1) {
    rms_backward_dw_kernel<T><<<grid, dim3(kWarp, kDwRows), 0, s>>>(x, rstd, dy, dw, rows, cols, chunk_rows);
    check_launch("rms_norm_backward dw");
    return;
  }
  acc_t<T>* partial = nullptr;
  check(cudaMallocAsync(&partial, static_cast<size_t>(chunks * cols) * sizeof(acc_t<T>), s),
        "rms_norm_backward dw scratch");
  rms_backward_dw_kernel<T>
      <<<grid, dim3(kWarp, kDwRows), 0, s>>>(x, rstd, dy, partial, rows, cols, chunk_rows);
  check_launch("rms_norm_backward dw");
  sum_chunks_kernel<acc_t<T>>
      <<<static_cast<unsigned>((cols + 255) / 256), 256, 0, s>>>(partial, dw, chunks, cols);
  check_launch("rms_norm_backward dw chunks");
  check(cudaFreeAsync(partial, s), "rms_norm_backward dw scratch");
}

#define POLDER_INSTANTIATE(T)                                                                               \
  template void rms_norm_forward<T>(const T*, const T*, T*, acc_t<T>*, int64_t, int64_t, float, void*);     \
  template void rms_norm_backward<T>(const T*, const T*, const acc_t<T>*, const T*, T*, acc_t<T>*, int64_t, \
                                     int64_t, void*);
POLDER_INSTANTIATE(float)
POLDER_INSTANTIATE(bf16)
POLDER_INSTANTIATE(f16)

}  // namespace polder::kernels::cuda
