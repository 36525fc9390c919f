// Embedding on the GPU (twin of kernels/cpu/embedding.cpp). Forward: one block per token copies its table row
// with 16-byte accesses. Backward: the table gradient is zeroed, then each thread owns one column and adds
// the tokens' rows in token order, so every cell is summed by one thread in a fixed order: deterministic, no
// atomics. That walk has only C-way parallelism; sorted segments are the faster deterministic alternative if
// it shows up.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/embedding.h"

namespace polder::kernels::cuda {
namespace {
using namespace detail;

template <typename T, typename I, int V>
__global__ void embedding_forward_kernel(const T* table, const I* ids, T* out, int64_t C) {
  const int64_t i = blockIdx.x;
  const Vec<T, V>* src = reinterpret_cast<const Vec<T, V>*>(table + static_cast<int64_t>(ids[i]) * C);
  Vec<T, V>* dst = reinterpret_cast<Vec<T, V>*>(out + i * C);
  for (int64_t c = threadIdx.x; c < C / V; c += blockDim.x) dst[c] = src[c];
}

// dtable[ids[i], c] += dout[i, c] for i = 0 .. n-1 in order, one thread per column c.
template <typename T, typename I>
__global__ void embedding_backward_kernel(const T* dout, const I* ids, acc_t<T>* dtable, int64_t n,
                                          int64_t C) {
  using A = acc_t<T>;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  for (int64_t i = 0; i < n; ++i) {
    A* cell = dtable + static_cast<int64_t>(ids[i]) * C + c;
    *cell += static_cast<A>(dout[i * C + c]);
  }
}

}  // namespace

template <typename T, typename I>
void embedding_forward(const T* table, const I* ids, T* out, int64_t n, int64_t C, void* stream) {
  if (n == 0 || C == 0) return;
  constexpr int V = kVec<T>;
  const unsigned grid = static_cast<unsigned>(n);
  if (C % V == 0 && aligned16(table) && aligned16(out))
    embedding_forward_kernel<T, I, V><<<grid, row_threads(C, V), 0, as_stream(stream)>>>(table, ids, out, C);
  else
    embedding_forward_kernel<T, I, 1><<<grid, row_threads(C, 1), 0, as_stream(stream)>>>(table, ids, out, C);
  check_launch("embedding_forward");
}

template <typename T, typename I>
void embedding_backward(const T* dout, const I* ids, acc_t<T>* dtable, int64_t n, int64_t V, int64_t C,
                        void* stream, bool accumulate) {
  if (V == 0 || C == 0) return;
  cudaStream_t s = as_stream(stream);
  if (!accumulate)
    check(cudaMemsetAsync(dtable, 0, static_cast<size_t>(V * C) * sizeof(acc_t<T>), s), "embedding_backward memset");
  if (n == 0) return;
  const int threads = 128;
  const unsigned grid = static_cast<unsigned>((C + threads - 1) / threads);
  embedding_backward_kernel<T, I><<<grid, threads, 0, s>>>(dout, ids, dtable, n, C);
  check_launch("embedding_backward");
}

#define POLDER_INSTANTIATE(T, I)                                                          \
  template void embedding_forward<T, I>(const T*, const I*, T*, int64_t, int64_t, void*); \
  template void embedding_backward<T, I>(const T*, const I*, acc_t<T>*, int64_t, int64_t, int64_t, void*, bool);
POLDER_INSTANTIATE(float, int32_t)
POLDER_INSTANTIATE(bf16, int32_t)
POLDER_INSTANTIATE(f16, int32_t)
POLDER_INSTANTIATE(float, int64_t)
POLDER_INSTANTIATE(bf16, int64_t)
POLDER_INSTANTIATE(f16, int64_t)

}  // namespace polder::kernels::cuda
