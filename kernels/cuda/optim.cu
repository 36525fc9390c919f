// Multi-tensor AdamW and the gradient sum of squares on the GPU (twins of kernels/cpu/optim.cpp). Segments
// are cut into fixed chunks and the (segment, chunk) work list of up to kMaxSegments segments travels in the
// kernel's parameters: one launch updates every parameter of a model (more launches only past 128 segments).
// The element update is detail::adamw_element with _rn intrinsics, so f32/f64 results are bit-identical to
// the CPU twin. sum_squares: one block per chunk of kSumSquaresChunk elements writes a double partial; one
// block then sums the partials in a fixed order (no atomics), so the result does not depend on scheduling.
#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/optim.h"

namespace polder::kernels::cuda {
namespace {
using namespace detail;              // kernels/cuda/common.cuh
using kernels::detail::adamw_const;  // kernels/optim.h
using kernels::detail::adamw_element;
using kernels::detail::AdamWConst;

constexpr int kMaxSegments = 128;  // keeps the work list (~3.6 KB) within the classic 4 KB parameter space
constexpr int kAdamThreads = 256;
constexpr int64_t kAdamChunk = 4096;  // elements per AdamW block
constexpr int kSumThreads = 512;
constexpr int kFinalThreads = 1024;

// Segments [first, first + n) of the caller's list, non-empty ones only; block b works on chunk
// b - block_start[k] of segment k, where k is the last segment with block_start[k] <= b.
struct WorkList {
  int n = 0;
  int block_start[kMaxSegments + 1];
  int64_t begin[kMaxSegments], end[kMaxSegments];
  double weight_decay[kMaxSegments];
};

__device__ __forceinline__ int find_segment(const WorkList& w, int b) {
  int lo = 0, hi = w.n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (w.block_start[mid] <= b)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Fills `w` from segments[*next...] until kMaxSegments are taken or the block count would overflow an int;
// returns the number of blocks and advances *next. Empty segments are skipped.
int fill_work(WorkList& w, const AdamWSegment* segments, int nsegments, int* next, int64_t chunk) {
  w.n = 0;
  int64_t blocks = 0;
  while (*next < nsegments && w.n < kMaxSegments) {
    const AdamWSegment& s = segments[*next];
    const int64_t nb = (s.end - s.begin + chunk - 1) / chunk;
    if (nb > 0) {
      if (blocks + nb > INT_MAX) {
        if (w.n == 0)
          throw std::invalid_argument("cuda optim: segment " + std::to_string(*next) + " needs " +
                                      std::to_string(nb) + " blocks, more than a launch can have");
        break;
      }
      w.block_start[w.n] = static_cast<int>(blocks);
      w.begin[w.n] = s.begin;
      w.end[w.n] = s.end;
      w.weight_decay[w.n] = s.weight_decay;
      ++w.n;
      blocks += nb;
    }
    ++*next;
  }
  w.block_start[w.n] = static_cast<int>(blocks);
  return static_cast<int>(blocks);
}

void check_segments(const char* what, const AdamWSegment* segments, int nsegments) {
  if (nsegments < 0)
    throw std::invalid_argument(std::string(what) + ": nsegments " + std::to_string(nsegments) + " < 0");
  if (nsegments > 0 && segments == nullptr)
    throw std::invalid_argument(std::string(what) + ": segments is null with nsegments " +
                                std::to_string(nsegments));
  int64_t prev_end = 0;
  for (int i = 0; i < nsegments; ++i) {
    const AdamWSegment& s = segments[i];
    if (s.begin < prev_end || s.end < s.begin)
      throw std::invalid_argument(std::string(what) + ": segment " + std::to_string(i) + " [" +
                                  std::to_string(s.begin) + ", " + std::to_string(s.end) +
                                  ") is not a range at or after the previous segment's end " +
                                  std::to_string(prev_end) + " (segments must be sorted and disjoint)");
    prev_end = s.end;
  }
}

template <typename P, typename A, bool kMaster>
__device__ __forceinline__ void adamw_one(P* __restrict__ param, A* __restrict__ master,
                                          const A* __restrict__ grad, A* __restrict__ m, A* __restrict__ v,
                                          int64_t i, const AdamWConst<A>& c) {
  A w = kMaster ? master[i] : static_cast<A>(param[i]);
  A mi = m[i], vi = v[i];
  w = adamw_element(w, grad[i], mi, vi, c);
  m[i] = mi;
  v[i] = vi;
  if (kMaster) master[i] = w;
  param[i] = static_cast<P>(w);
}

// One block per (segment, chunk). 16-byte accesses of the state (kVec<A> elements) when every array is
// aligned at the chunk's start, else one element per thread; the arithmetic is the same either way.
template <typename P, typename A, bool kMaster>
__global__ void __launch_bounds__(kAdamThreads)
    adamw_kernel(P* __restrict__ param, A* __restrict__ master, const A* __restrict__ grad, A* __restrict__ m,
                 A* __restrict__ v, const WorkList work, const AdamWStep step) {
  constexpr int V = kVec<A>;
  const int k = find_segment(work, static_cast<int>(blockIdx.x));
  const int64_t lo = work.begin[k] + (static_cast<int64_t>(blockIdx.x) - work.block_start[k]) * kAdamChunk;
  const int64_t hi = min(work.end[k], lo + kAdamChunk);
  const AdamWConst<A> c = adamw_const<A>(step, work.weight_decay[k]);
  const auto misaligned = [&](const void* p, size_t bytes) {
    return p != nullptr && reinterpret_cast<uintptr_t>(p) % bytes != 0;
  };
  const bool vec = !misaligned(grad + lo, 16) && !misaligned(m + lo, 16) && !misaligned(v + lo, 16) &&
                   !(kMaster && misaligned(master + lo, 16)) && !misaligned(param + lo, sizeof(P) * V);
  int64_t tail = lo;
  if (vec) {
    const int64_t nv = (hi - lo) / V;
    for (int64_t j = threadIdx.x; j < nv; j += blockDim.x) {
      const int64_t i = lo + j * V;
      Vec<A, V> g = *reinterpret_cast<const Vec<A, V>*>(grad + i);
      Vec<A, V> mv = *reinterpret_cast<const Vec<A, V>*>(m + i);
      Vec<A, V> vv = *reinterpret_cast<const Vec<A, V>*>(v + i);
      Vec<A, V> w;
      Vec<P, V> p;
      if constexpr (kMaster) {
        w = *reinterpret_cast<const Vec<A, V>*>(master + i);
      } else {
        p = *reinterpret_cast<const Vec<P, V>*>(param + i);
#pragma unroll
        for (int e = 0; e < V; ++e) w.v[e] = static_cast<A>(p.v[e]);
      }
#pragma unroll
      for (int e = 0; e < V; ++e) {
        w.v[e] = adamw_element(w.v[e], g.v[e], mv.v[e], vv.v[e], c);
        p.v[e] = static_cast<P>(w.v[e]);
      }
      *reinterpret_cast<Vec<A, V>*>(m + i) = mv;
      *reinterpret_cast<Vec<A, V>*>(v + i) = vv;
      if constexpr (kMaster) *reinterpret_cast<Vec<A, V>*>(master + i) = w;
      *reinterpret_cast<Vec<P, V>*>(param + i) = p;
    }
    tail = lo + nv * V;
  }
  for (int64_t i = tail + threadIdx.x; i < hi; i += blockDim.x)
    adamw_one<P, A, kMaster>(param, master, grad, m, v, i, c);
}

// partial[first_block + b] = sum of g[i]^2 over block b's chunk, in double (s = fma(x, x, s) per thread over
// a strided subset, then the fixed shuffle tree of block_sum).
template <typename A>
__global__ void __launch_bounds__(kSumThreads)
    sum_squares_kernel(const A* __restrict__ g, const WorkList work, double* __restrict__ partial,
                       int first_block) {
  constexpr int V = kVec<A>;
  __shared__ double scratch[kWarp];
  const int k = find_segment(work, static_cast<int>(blockIdx.x));
  const int64_t lo =
      work.begin[k] + (static_cast<int64_t>(blockIdx.x) - work.block_start[k]) * kSumSquaresChunk;
  const int64_t hi = min(work.end[k], lo + kSumSquaresChunk);
  double s = 0;
  int64_t tail = lo;
  if (reinterpret_cast<uintptr_t>(g + lo) % 16 == 0) {
    const int64_t nv = (hi - lo) / V;
    for (int64_t j = threadIdx.x; j < nv; j += blockDim.x) {
      const Vec<A, V> x = *reinterpret_cast<const Vec<A, V>*>(g + lo + j * V);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const double d = static_cast<double>(x.v[e]);
        s = __fma_rn(d, d, s);
      }
    }
    tail = lo + nv * V;
  }
  for (int64_t i = tail + threadIdx.x; i < hi; i += blockDim.x) {
    const double d = static_cast<double>(g[i]);
    s = __fma_rn(d, d, s);
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) partial[first_block + blockIdx.x] = s;
}

// *out = sum of partial[0, n): thread t adds t, t + blockDim, ... in order, then the block's shuffle tree.
__global__ void __launch_bounds__(kFinalThreads)
    sum_partials_kernel(const double* __restrict__ partial, int n, double* __restrict__ out) {
  __shared__ double scratch[kWarp];
  double s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *out = s;
}

}  // namespace

template <typename P, typename A>
void adamw(P* param, A* master, const A* grad, A* m, A* v, const AdamWSegment* segments, int nsegments,
           const AdamWStep& s, void* stream) {
  check_segments("cuda adamw", segments, nsegments);
  if (!std::is_same_v<P, A> && master == nullptr && nsegments > 0)
    throw std::invalid_argument("cuda adamw: master is null but the parameters are not of the state dtype (" +
                                std::to_string(sizeof(P)) + "-byte parameters, " + std::to_string(sizeof(A)) +
                                "-byte state)");
  WorkList work;
  for (int next = 0; next < nsegments;) {
    const int blocks = fill_work(work, segments, nsegments, &next, kAdamChunk);
    if (blocks == 0) continue;
    if (master)
      adamw_kernel<P, A, true>
          <<<blocks, kAdamThreads, 0, as_stream(stream)>>>(param, master, grad, m, v, work, s);
    else
      adamw_kernel<P, A, false>
          <<<blocks, kAdamThreads, 0, as_stream(stream)>>>(param, nullptr, grad, m, v, work, s);
    check_launch("adamw");
  }
}

template <typename A>
void sum_squares(const A* g, const AdamWSegment* segments, int nsegments, double* out, void* stream) {
  check_segments("cuda sum_squares", segments, nsegments);
  int64_t total = 0;
  for (int k = 0; k < nsegments; ++k)
    total += (segments[k].end - segments[k].begin + kSumSquaresChunk - 1) / kSumSquaresChunk;
  if (total > INT_MAX)
    throw std::invalid_argument("cuda sum_squares: " + std::to_string(total) + " chunks of " +
                                std::to_string(kSumSquaresChunk) + " elements, more than " +
                                std::to_string(INT_MAX));
  cudaStream_t st = as_stream(stream);
  if (total == 0) {
    check(cudaMemsetAsync(out, 0, sizeof(double), st), "sum_squares: cudaMemsetAsync");
    return;
  }
  double* partial = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&partial), static_cast<size_t>(total) * sizeof(double), st),
        "sum_squares: cudaMallocAsync of the partial sums");
  WorkList work;
  int first = 0;
  for (int next = 0; next < nsegments;) {
    const int blocks = fill_work(work, segments, nsegments, &next, kSumSquaresChunk);
    if (blocks == 0) continue;
    sum_squares_kernel<A><<<blocks, kSumThreads, 0, st>>>(g, work, partial, first);
    check_launch("sum_squares");
    first += blocks;
  }
  sum_partials_kernel<<<1, kFinalThreads, 0, st>>>(partial, first, out);
  check_launch("sum_squares (partials)");
  check(cudaFreeAsync(partial, st), "sum_squares: cudaFreeAsync");
}

#define POLDER_INSTANTIATE_ADAMW(P, A) \
  template void adamw<P, A>(P*, A*, const A*, A*, A*, const AdamWSegment*, int, const AdamWStep&, void*);
POLDER_INSTANTIATE_ADAMW(float, float)
POLDER_INSTANTIATE_ADAMW(bf16, float)
POLDER_INSTANTIATE_ADAMW(f16, float)
POLDER_INSTANTIATE_ADAMW(double, double)
template void sum_squares<float>(const float*, const AdamWSegment*, int, double*, void*);
template void sum_squares<double>(const double*, const AdamWSegment*, int, double*, void*);

}  // namespace polder::kernels::cuda
