// Cross-entropy, softmax and log-softmax on the GPU (twins of kernels/cpu/softmax.cpp): one block per row.
// The cross-entropy forward streams the row once in chunks of blockDim * V logits, each thread keeping an
// online (max, sum of exp) pair that a shuffle tree then merges, so the probabilities of the vocabulary are
// never stored; the backward recomputes them from the lse. Softmax and log-softmax use the same lse, then
// write the row in a second pass; their backwards reduce sum(dy * y) or sum(dy) with block_sum.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/softmax.h"

namespace polder::kernels::cuda {
namespace {
using namespace detail;

// (m, s) stands for sum exp(x - m) = s. Merging rescales both to the larger max; an all -inf side adds
// nothing.
template <typename A>
__device__ __forceinline__ void lse_merge(A& m, A& s, A m2, A s2) {
  const A mx = m > m2 ? m : m2;
  if (mx == -INFINITY) return;
  s = s * exp(m - mx) + s2 * exp(m2 - mx);
  m = mx;
}

template <typename A>
__device__ __forceinline__ void lse_add(A& m, A& s, A x) {
  if (x > m) {
    s = s * exp(m - x) + A(1);  // exp(-inf) = 0 on the first element
    m = x;
  } else if (m != -INFINITY) {  // both -inf (masked logits so far): nothing to add, and no exp(NaN)
    s += exp(x - m);
  }
}

template <typename A>
__device__ A block_lse(A m, A s) {
  __shared__ A sm[kWarp], ss[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2)
    lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  m = lane < nwarps ? sm[lane] : A(-INFINITY);
  s = lane < nwarps ? ss[lane] : A(0);
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2)
    lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  return m + log(s);
}

// loss[r] = lse(x[r]) - x[r, t[r]] (0 where t[r] == ignore_index)
template <typename T, typename I, int V>
__global__ void ce_forward_kernel(const T* logits, const I* targets, acc_t<T>* loss, acc_t<T>* lse,
                                  int64_t cols, int64_t ignore_index) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const T* x = logits + r * cols;
  const Vec<T, V>* xv = reinterpret_cast<const Vec<T, V>*>(x);
  A m = -INFINITY, s = 0;
  for (int64_t i = threadIdx.x; i < cols / V; i += blockDim.x) {
    Vec<T, V> a = xv[i];
#pragma unroll
    for (int k = 0; k < V; ++k) lse_add(m, s, static_cast<A>(a.v[k]));
  }
  const A l = block_lse(m, s);
  if (threadIdx.x == 0) {
    lse[r] = l;
    const int64_t t = static_cast<int64_t>(targets[r]);
    loss[r] = t == ignore_index ? A(0) : l - static_cast<A>(x[t]);
  }
}

// dlogits[r] = dloss[r] * (exp(x - lse) - onehot(t)), zero for ignored rows. As on the CPU, the target
// element is rounded to T before the one-hot is subtracted.
template <typename T, typename I, int V>
__global__ void ce_backward_kernel(const T* logits, const I* targets, const acc_t<T>* lse,
                                   const acc_t<T>* dloss, T* dlogits, int64_t cols, int64_t ignore_index) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const int64_t t = static_cast<int64_t>(targets[r]);
  const Vec<T, V>* xv = reinterpret_cast<const Vec<T, V>*>(logits + r * cols);
  Vec<T, V>* dv = reinterpret_cast<Vec<T, V>*>(dlogits + r * cols);
  const bool ignored = t == ignore_index;
  const A g = ignored ? A(0) : dloss[r], l = ignored ? A(0) : lse[r];
  for (int64_t i = threadIdx.x; i < cols / V; i += blockDim.x) {
    Vec<T, V> o;
    if (ignored) {
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = static_cast<T>(A(0));
    } else {
      Vec<T, V> a = xv[i];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        o.v[k] = static_cast<T>(g * exp(static_cast<A>(a.v[k]) - l));
        if (i * V + k == t) o.v[k] = static_cast<T>(static_cast<A>(o.v[k]) - g);
      }
    }
    dv[i] = o;
  }
}

template <typename T>
bool vec_ok(int64_t cols, const void* a, const void* b) {
  return cols % kVec<T> == 0 && aligned16(a) && aligned16(b);
}

}  // namespace

template <typename T, typename I>
void cross_entropy_forward(const T* logits, const I* targets, acc_t<T>* loss, acc_t<T>* lse, int64_t rows,
                           int64_t cols, int64_t ignore_index, void* stream) {
  if (rows == 0) return;
  constexpr int V = kVec<T>;
  const unsigned grid = static_cast<unsigned>(rows);
  if (vec_ok<T>(cols, logits, nullptr))
    ce_forward_kernel<T, I, V><<<grid, row_threads(cols, V), 0, as_stream(stream)>>>(logits, targets, loss,
                                                                                     lse, cols, ignore_index);
  else
    ce_forward_kernel<T, I, 1><<<grid, row_threads(cols, 1), 0, as_stream(stream)>>>(logits, targets, loss,
                                                                                     lse, cols, ignore_index);
  check_launch("cross_entropy_forward");
}

template <typename T, typename I>
void cross_entropy_backward(const T* logits, const I* targets, const acc_t<T>* lse, const acc_t<T>* dloss,
                            T* dlogits, int64_t rows, int64_t cols, int64_t ignore_index, void* stream) {
  if (rows == 0 || cols == 0) return;
  constexpr int V = kVec<T>;
  const unsigned grid = static_cast<unsigned>(rows);
  if (vec_ok<T>(cols, logits, dlogits))
    ce_backward_kernel<T, I, V><<<grid, row_threads(cols, V), 0, as_stream(stream)>>>(
        logits, targets, lse, dloss, dlogits, cols, ignore_index);
  else
    ce_backward_kernel<T, I, 1><<<grid, row_threads(cols, 1), 0, as_stream(stream)>>>(
        logits, targets, lse, dloss, dlogits, cols, ignore_index);
  check_launch("cross_entropy_backward");
}

#define POLDER_INSTANTIATE_CE(T, I)                                                                     \
  template void cross_entropy_forward<T, I>(const T*, const I*, acc_t<T>*, acc_t<T>*, int64_t, int64_t, \
                                            int64_t, void*);                                            \
  template void cross_entropy_backward<T, I>(const T*, const I*, const acc_t<T>*, const acc_t<T>*, T*,  \
                                             int64_t, int64_t, int64_t, void*);
POLDER_INSTANTIATE_CE(float, int32_t)
POLDER_INSTANTIATE_CE(bf16, int32_t)
POLDER_INSTANTIATE_CE(f16, int32_t)
POLDER_INSTANTIATE_CE(float, int64_t)
POLDER_INSTANTIATE_CE(bf16, int64_t)
POLDER_INSTANTIATE_CE(f16, int64_t)

// ---- vocabulary-parallel cross-entropy (kernels/softmax.h): the shard's statistics, one block per row ----
namespace {

template <typename T, typename I>
__global__ void vocab_ce_stats_kernel(const T* logits, const I* targets, acc_t<T>* stats, int64_t rows,
                                      int64_t cols, int64_t real_cols, int64_t vocab_start,
                                      int64_t ignore_index) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const T* x = logits + r * cols;
  A m = -INFINITY, s = 0;
  for (int64_t c = threadIdx.x; c < real_cols; c += blockDim.x) lse_add(m, s, static_cast<A>(x[c]));
  const A l = block_lse(m, s);  // log of the shard's sum of exp; -inf without real columns
  if (threadIdx.x == 0) {
    const int64_t t = static_cast<int64_t>(targets[r]) - vocab_start;
    const bool mine = static_cast<int64_t>(targets[r]) != ignore_index && t >= 0 && t < real_cols;
    // (max, sum) as the CPU twin keeps them: the max is any finite anchor, here the lse itself, sum 1.
    stats[r] = l;
    stats[rows + r] = l == -INFINITY ? A(0) : A(1);
    stats[2 * rows + r] = mine ? static_cast<A>(x[t]) : A(0);
  }
}

template <typename A>
__global__ void vocab_ce_rescale_kernel(A* stats, const A* gmax, int64_t rows) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  A& s = stats[rows + r];
  s = s == A(0) ? A(0) : s * exp(stats[r] - gmax[r]);
}

template <typename A, typename I>
__global__ void vocab_ce_finish_kernel(const A* gmax, const A* stats, const I* targets, A* lse, A* loss,
                                       int64_t rows, int64_t ignore_index) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  const A l = gmax[r] + log(stats[rows + r]);
  lse[r] = l;
  loss[r] = static_cast<int64_t>(targets[r]) == ignore_index ? A(0) : l - stats[2 * rows + r];
}

template <typename T, typename I>
__global__ void vocab_ce_backward_kernel(const T* logits, const I* targets, const acc_t<T>* lse,
                                         const acc_t<T>* dloss, T* dlogits, int64_t cols, int64_t real_cols,
                                         int64_t vocab_start, int64_t ignore_index) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const bool ignored = static_cast<int64_t>(targets[r]) == ignore_index;
  const int64_t t = static_cast<int64_t>(targets[r]) - vocab_start;
  const A g = ignored ? A(0) : dloss[r], l = ignored ? A(0) : lse[r];
  const T* x = logits + r * cols;
  T* d = dlogits + r * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    if (ignored || c >= real_cols) {
      d[c] = static_cast<T>(A(0));
      continue;
    }
    // As on the CPU: the probability is rounded to T before the one-hot is subtracted.
    T v = static_cast<T>(g * exp(static_cast<A>(x[c]) - l));
    if (c == t) v = static_cast<T>(static_cast<A>(v) - g);
    d[c] = v;
  }
}

}  // namespace

template <typename T, typename I>
void vocab_ce_stats(const T* logits, const I* targets, acc_t<T>* stats, int64_t rows, int64_t cols,
                    int64_t real_cols, int64_t vocab_start, int64_t ignore_index, void* stream) {
  if (rows == 0) return;
  vocab_ce_stats_kernel<T, I>
      <<<static_cast<unsigned>(rows), row_threads(std::max<int64_t>(real_cols, 1), 1), 0,
         as_stream(stream)>>>(logits, targets, stats, rows, cols, real_cols, vocab_start, ignore_index);
  check_launch("vocab_ce_stats");
}

template <typename A>
void vocab_ce_rescale(A* stats, const A* gmax, int64_t rows, void* stream) {
  if (rows == 0) return;
  vocab_ce_rescale_kernel<A>
      <<<static_cast<unsigned>((rows + 255) / 256), 256, 0, as_stream(stream)>>>(stats, gmax, rows);
  check_launch("vocab_ce_rescale");
}

template <typename A, typename I>
void vocab_ce_finish(const A* gmax, const A* stats, const I* targets, A* lse, A* loss, int64_t rows,
                     int64_t ignore_index, void* stream) {
  if (rows == 0) return;
  vocab_ce_finish_kernel<A, I><<<static_cast<unsigned>((rows + 255) / 256), 256, 0, as_stream(stream)>>>(
      gmax, stats, targets, lse, loss, rows, ignore_index);
  check_launch("vocab_ce_finish");
}

template <typename T, typename I>
void vocab_ce_backward(const T* logits, const I* targets, const acc_t<T>* lse, const acc_t<T>* dloss,
                       T* dlogits, int64_t rows, int64_t cols, int64_t real_cols, int64_t vocab_start,
                       int64_t ignore_index, void* stream) {
  if (rows == 0 || cols == 0) return;
  vocab_ce_backward_kernel<T, I><<<static_cast<unsigned>(rows), row_threads(cols, 1), 0, as_stream(stream)>>>(
      logits, targets, lse, dloss, dlogits, cols, real_cols, vocab_start, ignore_index);
  check_launch("vocab_ce_backward");
}

template void vocab_ce_rescale<float>(float*, const float*, int64_t, void*);
template void vocab_ce_finish<float, int32_t>(const float*, const float*, const int32_t*, float*, float*,
                                              int64_t, int64_t, void*);
template void vocab_ce_finish<float, int64_t>(const float*, const float*, const int64_t*, float*, float*,
                                              int64_t, int64_t, void*);
#define POLDER_INSTANTIATE_VCE(T, I)                                                                       \
  template void vocab_ce_stats<T, I>(const T*, const I*, acc_t<T>*, int64_t, int64_t, int64_t, int64_t,    \
                                     int64_t, void*);                                                      \
  template void vocab_ce_backward<T, I>(const T*, const I*, const acc_t<T>*, const acc_t<T>*, T*, int64_t, \
                                        int64_t, int64_t, int64_t, int64_t, void*);
POLDER_INSTANTIATE_VCE(float, int32_t)
POLDER_INSTANTIATE_VCE(bf16, int32_t)
POLDER_INSTANTIATE_VCE(f16, int32_t)
POLDER_INSTANTIATE_VCE(float, int64_t)
POLDER_INSTANTIATE_VCE(bf16, int64_t)
POLDER_INSTANTIATE_VCE(f16, int64_t)

// ---- softmax and log-softmax over the rows of (rows, cols): one block per row ----
namespace {

// y = exp(x - lse) (softmax) or x - lse (log-softmax); lse from the online (max, sum) reduction above.
template <typename T, int V, bool kLog>
__global__ void softmax_forward_kernel(const T* x, T* y, int64_t cols) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const Vec<T, V>* xv = reinterpret_cast<const Vec<T, V>*>(x + r * cols);
  Vec<T, V>* yv = reinterpret_cast<Vec<T, V>*>(y + r * cols);
  A m = -INFINITY, s = 0;
  for (int64_t i = threadIdx.x; i < cols / V; i += blockDim.x) {
    const Vec<T, V> a = xv[i];
#pragma unroll
    for (int k = 0; k < V; ++k) lse_add(m, s, static_cast<A>(a.v[k]));
  }
  const A l = block_lse(m, s);
  for (int64_t i = threadIdx.x; i < cols / V; i += blockDim.x) {
    const Vec<T, V> a = xv[i];
    Vec<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A d = static_cast<A>(a.v[k]) - l;
      o.v[k] = static_cast<T>(kLog ? d : exp(d));
    }
    yv[i] = o;
  }
}

// softmax:     dx = y * (dy - sum(dy * y))
// log-softmax: dx = dy - exp(y) * sum(dy)
template <typename T, int V, bool kLog>
__global__ void softmax_backward_kernel(const T* y, const T* dy, T* dx, int64_t cols) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarp];
  const int64_t r = blockIdx.x;
  const Vec<T, V>* yv = reinterpret_cast<const Vec<T, V>*>(y + r * cols);
  const Vec<T, V>* dyv = reinterpret_cast<const Vec<T, V>*>(dy + r * cols);
  Vec<T, V>* dxv = reinterpret_cast<Vec<T, V>*>(dx + r * cols);
  A s = 0;
  for (int64_t i = threadIdx.x; i < cols / V; i += blockDim.x) {
    const Vec<T, V> a = yv[i], b = dyv[i];
#pragma unroll
    for (int k = 0; k < V; ++k)
      s += kLog ? static_cast<A>(b.v[k]) : static_cast<A>(a.v[k]) * static_cast<A>(b.v[k]);
  }
  s = block_sum(s, scratch);
  for (int64_t i = threadIdx.x; i < cols / V; i += blockDim.x) {
    const Vec<T, V> a = yv[i], b = dyv[i];
    Vec<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A yk = static_cast<A>(a.v[k]), dk = static_cast<A>(b.v[k]);
      o.v[k] = static_cast<T>(kLog ? dk - exp(yk) * s : yk * (dk - s));
    }
    dxv[i] = o;
  }
}

template <typename T, bool kLog>
void softmax_forward_impl(const T* x, T* y, int64_t rows, int64_t cols, void* stream, const char* what) {
  if (rows <= 0 || cols <= 0) return;
  constexpr int V = kVec<T>;
  const unsigned grid = static_cast<unsigned>(rows);
  if (vec_ok<T>(cols, x, y))
    softmax_forward_kernel<T, V, kLog><<<grid, row_threads(cols, V), 0, as_stream(stream)>>>(x, y, cols);
  else
    softmax_forward_kernel<T, 1, kLog><<<grid, row_threads(cols, 1), 0, as_stream(stream)>>>(x, y, cols);
  check_launch(what);
}

template <typename T, bool kLog>
void softmax_backward_impl(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols, void* stream,
                           const char* what) {
  if (rows <= 0 || cols <= 0) return;
  constexpr int V = kVec<T>;
  const unsigned grid = static_cast<unsigned>(rows);
  if (vec_ok<T>(cols, y, dy) && aligned16(dx))
    softmax_backward_kernel<T, V, kLog>
        <<<grid, row_threads(cols, V), 0, as_stream(stream)>>>(y, dy, dx, cols);
  else
    softmax_backward_kernel<T, 1, kLog>
        <<<grid, row_threads(cols, 1), 0, as_stream(stream)>>>(y, dy, dx, cols);
  check_launch(what);
}

}  // namespace

template <typename T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols, void* stream) {
  softmax_forward_impl<T, false>(x, y, rows, cols, stream, "softmax_forward");
}
template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols, void* stream) {
  softmax_backward_impl<T, false>(y, dy, dx, rows, cols, stream, "softmax_backward");
}
template <typename T>
void log_softmax_forward(const T* x, T* y, int64_t rows, int64_t cols, void* stream) {
  softmax_forward_impl<T, true>(x, y, rows, cols, stream, "log_softmax_forward");
}
template <typename T>
void log_softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols, void* stream) {
  softmax_backward_impl<T, true>(y, dy, dx, rows, cols, stream, "log_softmax_backward");
}

#define POLDER_INSTANTIATE_SOFTMAX(T)                                                 \
  template void softmax_forward<T>(const T*, T*, int64_t, int64_t, void*);            \
  template void softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t, void*); \
  template void log_softmax_forward<T>(const T*, T*, int64_t, int64_t, void*);        \
  template void log_softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t, void*);
POLDER_INSTANTIATE_SOFTMAX(float)
POLDER_INSTANTIATE_SOFTMAX(double)
POLDER_INSTANTIATE_SOFTMAX(bf16)
POLDER_INSTANTIATE_SOFTMAX(f16)

}  // namespace polder::kernels::cuda
