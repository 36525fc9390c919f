// Deterministic reductions on the GPU (twins of reduce_to, sum_dim and sum in kernels/cpu/elementwise.cpp): a
// reduction is planned as kept dims (the output, row-major) and reduced dims of the contiguous input, size-1
// dims dropped and neighbours of the same kind merged. Each output owns a fixed traversal of its reduced
// positions (in increasing input order, runs along the innermost reduced dim), optionally cut into S slices
// whose partial sums a second kernel adds in slice order. Column plan (innermost dim kept, or short reduced
// runs): one thread per output and slice, sums in the CPU's order; row plan (innermost dim reduced, runs >=
// 32): one block per output and slice, threads strided along each run, then block_sum's fixed shuffle tree.
// No atomics anywhere.
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"

namespace polder::kernels::cuda {
namespace {
using namespace detail;

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

struct ReducePlan {
  int nk = 0, nr = 0;              // kept and reduced dims, outermost first
  int64_t kshape[kMaxDims] = {};   // kept sizes (the output is their row-major product)
  int64_t kstride[kMaxDims] = {};  // input strides of the kept dims
  int64_t rshape[kMaxDims] = {};   // reduced sizes
  int64_t rstride[kMaxDims] = {};  // input strides of the reduced dims
  int64_t kept = 1, reduced = 1;   // outputs, reduced positions per output
  int64_t slice = 0;               // reduced positions per slice
  int slices = 1;
};

// Adds dim (size n, input stride s) to the plan, merged into the previous dim of the same kind when adjacent.
void plan_add(ReducePlan& p, bool kept, int64_t n, int64_t s, bool& last_kept, bool& any) {
  if (n == 1) return;
  int& count = kept ? p.nk : p.nr;
  int64_t* shape = kept ? p.kshape : p.rshape;
  int64_t* stride = kept ? p.kstride : p.rstride;
  if (any && last_kept == kept) {
    shape[count - 1] *= n;
    stride[count - 1] = s;
  } else {
    shape[count] = n;
    stride[count] = s;
    ++count;
  }
  (kept ? p.kept : p.reduced) *= n;
  last_kept = kept;
  any = true;
}

// The input offset of output k (row-major over the kept dims).
__device__ __forceinline__ int64_t kept_offset(const ReducePlan& p, int64_t k) {
  int64_t off = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d >= p.nk) continue;
    off += (k % p.kshape[d]) * p.kstride[d];
    k /= p.kshape[d];
  }
  return off;
}

// The input offset of reduced position r (row-major over the reduced dims), relative to the output's base.
__device__ __forceinline__ int64_t reduced_offset(const ReducePlan& p, int64_t r) {
  int64_t off = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d >= p.nr) continue;
    off += (r % p.rshape[d]) * p.rstride[d];
    r /= p.rshape[d];
  }
  return off;
}

// Calls f(offset, count, stride) for the runs of reduced positions [r0, r1): consecutive positions along the
// innermost reduced dim, in increasing order.
template <typename F>
__device__ __forceinline__ void for_runs(const ReducePlan& p, int64_t r0, int64_t r1, F&& f) {
  const int64_t len = p.nr ? p.rshape[p.nr - 1] : 1, step = p.nr ? p.rstride[p.nr - 1] : 0;
  for (int64_t r = r0; r < r1;) {
    const int64_t n = min(len - r % len, r1 - r);
    f(reduced_offset(p, r), n, step);
    r += n;
  }
}

template <typename T>
__device__ __forceinline__ void store(T* out, acc_t<T>* partial, const ReducePlan& p, int64_t k, int s,
                                      acc_t<T> v) {
  if (p.slices == 1)
    out[k] = static_cast<T>(v);
  else
    partial[static_cast<int64_t>(s) * p.kept + k] = v;
}

// grid (ceil(kept / blockDim.x), slices): thread = (output, slice), serial sum in input order.
template <typename T>
__global__ void reduce_cols_kernel(const T* __restrict__ g, T* __restrict__ out,
                                   acc_t<T>* __restrict__ partial, const ReducePlan p) {
  using A = acc_t<T>;
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= p.kept) return;
  const int s = blockIdx.y;
  const T* base = g + kept_offset(p, k);
  const int64_t r0 = s * p.slice, r1 = min(p.reduced, r0 + p.slice);
  A acc = 0;
  for_runs(p, r0, r1, [&](int64_t off, int64_t n, int64_t step) {
    const T* x = base + off;
    for (int64_t j = 0; j < n; ++j) acc += static_cast<A>(x[j * step]);
  });
  store(out, partial, p, k, s, acc);
}

// grid (kept, slices), one block per (output, slice): threads strided along each run, then the block tree.
template <typename T>
__global__ void reduce_rows_kernel(const T* __restrict__ g, T* __restrict__ out,
                                   acc_t<T>* __restrict__ partial, const ReducePlan p) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarp];
  const int s = blockIdx.y;
  for (int64_t k = blockIdx.x; k < p.kept; k += gridDim.x) {
    const T* base = g + kept_offset(p, k);
    const int64_t r0 = s * p.slice, r1 = min(p.reduced, r0 + p.slice);
    A acc = 0;
    for_runs(p, r0, r1, [&](int64_t off, int64_t n, int64_t step) {
      const T* x = base + off;
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) acc += static_cast<A>(x[j * step]);
    });
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) store(out, partial, p, k, s, acc);
  }
}

// out[k] = sum over slices s (in order) of partial[s, k].
template <typename T>
__global__ void reduce_slices_kernel(const acc_t<T>* __restrict__ partial, T* __restrict__ out, int64_t kept,
                                     int slices) {
  using A = acc_t<T>;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < kept;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A acc = 0;
    for (int s = 0; s < slices; ++s) acc += partial[static_cast<int64_t>(s) * kept + k];
    out[k] = static_cast<T>(acc);
  }
}

constexpr int kColThreads = 256;
constexpr int64_t kTargetThreads = 1 << 18;  // enough threads in flight for the largest GPUs
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMinColSlice = 64, kMinRowSlice = 4096;

template <typename T>
void run_plan(const T* g, T* out, ReducePlan p, void* stream, const char* what) {
  using A = acc_t<T>;
  if (p.kept == 0) return;
  cudaStream_t st = as_stream(stream);
  if (p.reduced == 0) {  // nothing to sum: zeros, as on the CPU
    check(cudaMemsetAsync(out, 0, static_cast<size_t>(p.kept) * sizeof(T), st), what);
    return;
  }
  const bool rows = p.nr > 0 && p.rstride[p.nr - 1] == 1 && p.rshape[p.nr - 1] >= 32;
  int64_t slices = rows ? std::min(ceil_div(kTargetBlocks, p.kept), ceil_div(p.reduced, kMinRowSlice))
                        : std::min(ceil_div(kTargetThreads, p.kept), ceil_div(p.reduced, kMinColSlice));
  slices = std::clamp<int64_t>(slices, 1, 65535);
  p.slice = ceil_div(p.reduced, slices);
  p.slices = static_cast<int>(ceil_div(p.reduced, p.slice));
  A* partial = nullptr;
  if (p.slices > 1)
    check(cudaMallocAsync(reinterpret_cast<void**>(&partial),
                          static_cast<size_t>(p.slices) * static_cast<size_t>(p.kept) * sizeof(A), st),
          what);
  if (rows) {
    const int threads = std::min(row_threads(p.rshape[p.nr - 1], 1), 256);
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(p.kept, std::numeric_limits<int>::max())),
                    static_cast<unsigned>(p.slices));
    reduce_rows_kernel<T><<<grid, threads, 0, st>>>(g, out, partial, p);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(p.kept, kColThreads)), static_cast<unsigned>(p.slices));
    reduce_cols_kernel<T><<<grid, kColThreads, 0, st>>>(g, out, partial, p);
  }
  check_launch(what);
  if (p.slices > 1) {
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(ceil_div(p.kept, kColThreads), 4096));
    reduce_slices_kernel<T><<<grid, kColThreads, 0, st>>>(partial, out, p.kept, p.slices);
    check_launch(what);
    check(cudaFreeAsync(partial, st), what);
  }
}

// sum: per-block partials of alpha-free double sums over chunks, then one block adds them in a fixed order.
constexpr int kSumThreads = 512;
constexpr int64_t kSumChunk = 1 << 16;

template <typename T>
__global__ void __launch_bounds__(kSumThreads)
    sum_chunks_kernel(const T* __restrict__ x, int64_t n, double* __restrict__ partial, T* __restrict__ out,
                      double alpha) {
  __shared__ double scratch[kWarp];
  const int64_t lo = blockIdx.x * kSumChunk, hi = min(n, lo + kSumChunk);
  double s = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x)
    s += static_cast<double>(static_cast<acc_t<T>>(x[i]));
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) {
    if (gridDim.x == 1)
      *out = static_cast<T>(alpha * s);
    else
      partial[blockIdx.x] = s;
  }
}

template <typename T>
__global__ void __launch_bounds__(1024)
    sum_partials_kernel(const double* __restrict__ partial, int n, T* __restrict__ out, double alpha) {
  __shared__ double scratch[kWarp];
  double s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *out = static_cast<T>(alpha * s);
}

}  // namespace

template <typename T>
void reduce_to(const T* g, T* out, int64_t out_numel, const int64_t* stride, const Broadcast& bc,
               void* stream) {
  if (bc.ndim < 0 || bc.ndim > kMaxDims)
    throw std::invalid_argument("cuda reduce_to: ndim " + std::to_string(bc.ndim) + " outside [0, " +
                                std::to_string(kMaxDims) + "]");
  ReducePlan p;
  bool last_kept = false, any = false;
  int64_t gstride = 1, ostride = 1;
  int64_t gstrides[kMaxDims];
  for (int d = bc.ndim - 1; d >= 0; --d) {
    gstrides[d] = gstride;
    gstride *= bc.shape[d];
  }
  // Kept dims must be the operand's contiguous row-major layout: check it innermost first.
  for (int d = bc.ndim - 1; d >= 0; --d) {
    if (bc.shape[d] == 1 || stride[d] == 0) continue;
    if (stride[d] != ostride)
      throw std::invalid_argument("cuda reduce_to: dim " + std::to_string(d) + " of the operand has stride " +
                                  std::to_string(stride[d]) + " but a contiguous operand has " +
                                  std::to_string(ostride));
    ostride *= bc.shape[d];
  }
  if (ostride != out_numel)
    throw std::invalid_argument("cuda reduce_to: the kept dims hold " + std::to_string(ostride) +
                                " elements but out_numel is " + std::to_string(out_numel));
  for (int d = 0; d < bc.ndim; ++d) plan_add(p, stride[d] != 0, bc.shape[d], gstrides[d], last_kept, any);
  if (bc.numel == 0) p.reduced = 0;
  run_plan(g, out, p, stream, "reduce_to");
}

template <typename T>
void sum_dim(const T* x, T* y, int64_t outer, int64_t reduce, int64_t inner, void* stream) {
  ReducePlan p;
  bool last_kept = false, any = false;
  plan_add(p, true, outer, reduce * inner, last_kept, any);
  plan_add(p, false, reduce, inner, last_kept, any);
  plan_add(p, true, inner, 1, last_kept, any);
  if (outer == 0 || inner == 0) p.kept = 0;
  if (reduce == 0) p.reduced = 0;
  run_plan(x, y, p, stream, "sum_dim");
}

template <typename T>
void sum(const T* x, T* out, int64_t n, double alpha, void* stream) {
  cudaStream_t st = as_stream(stream);
  if (n <= 0) {  // +0 is all-zero bytes in every float type
    check(cudaMemsetAsync(out, 0, sizeof(T), st), "sum");
    return;
  }
  const int64_t blocks = ceil_div(n, kSumChunk);
  if (blocks > std::numeric_limits<int>::max())
    throw std::invalid_argument("cuda sum: " + std::to_string(n) + " elements are too many");
  double* partial = nullptr;
  if (blocks > 1)
    check(
        cudaMallocAsync(reinterpret_cast<void**>(&partial), static_cast<size_t>(blocks) * sizeof(double), st),
        "sum");
  sum_chunks_kernel<T><<<static_cast<unsigned>(blocks), kSumThreads, 0, st>>>(x, n, partial, out, alpha);
  check_launch("sum");
  if (blocks > 1) {
    sum_partials_kernel<T><<<1, 1024, 0, st>>>(partial, static_cast<int>(blocks), out, alpha);
    check_launch("sum");
    check(cudaFreeAsync(partial, st), "sum");
  }
}

#define POLDER_INSTANTIATE_REDUCE(T)                                                          \
  template void reduce_to<T>(const T*, T*, int64_t, const int64_t*, const Broadcast&, void*); \
  template void sum_dim<T>(const T*, T*, int64_t, int64_t, int64_t, void*);                   \
  template void sum<T>(const T*, T*, int64_t, double, void*);
POLDER_INSTANTIATE_REDUCE(float)
POLDER_INSTANTIATE_REDUCE(double)
POLDER_INSTANTIATE_REDUCE(bf16)
POLDER_INSTANTIATE_REDUCE(f16)

}  // namespace polder::kernels::cuda
