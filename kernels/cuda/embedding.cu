// Embedding on the GPU (twin of kernels/cpu/embedding.cpp). Forward: one block per token copies its table row
// with 16-byte accesses. Backward: the table gradient is zeroed (unless accumulating), the (id, position)
// pairs are stably radix-sorted (CUB), and one block per distinct id adds that id's rows in token order:
// every cell is summed by one thread in a fixed order, deterministic without float atomics and parallel over
// ids x columns.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <stdexcept>

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

// Sorted segments: after a stable sort of (id, position) pairs, the positions of each id are consecutive and
// in token order. Block j handles the segment that starts at sorted index j (other blocks exit at once) and
// adds its rows column by column in that order: every cell is summed by one thread in token order, exactly as
// the CPU twin does, so the result is bit-identical to it and parallel over ids x columns.
template <typename T, typename I>
__global__ void embedding_backward_segments(const T* dout, const I* sorted_ids, const int32_t* sorted_pos,
                                            int64_t n, acc_t<T>* dtable, int64_t C) {
  using A = acc_t<T>;
  const int64_t j = blockIdx.x;
  const I id = sorted_ids[j];
  if (j > 0 && sorted_ids[j - 1] == id) return;
  int64_t end = j + 1;
  while (end < n && sorted_ids[end] == id) ++end;
  A* row = dtable + static_cast<int64_t>(id) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    A acc = row[c];
    for (int64_t k = j; k < end; ++k)
      acc += static_cast<A>(dout[static_cast<int64_t>(sorted_pos[k]) * C + c]);
    row[c] = acc;
  }
}

__global__ void iota_kernel(int32_t* p, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) p[i] = static_cast<int32_t>(i);
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
                        bool accumulate, void* stream) {
  if (V == 0 || C == 0) return;
  cudaStream_t s = as_stream(stream);
  if (!accumulate)
    check(cudaMemsetAsync(dtable, 0, static_cast<size_t>(V * C) * sizeof(acc_t<T>), s),
          "embedding_backward memset");
  if (n == 0) return;
  if (n > INT32_MAX) throw std::invalid_argument("embedding_backward: more than 2^31 tokens in one call");
  // Stable radix sort of (id, position) over the bits ids < V can have: one temporary from the stream's pool.
  int end_bit = 1;
  while (end_bit < static_cast<int>(sizeof(I) * 8) && (static_cast<uint64_t>(V - 1) >> end_bit) != 0)
    ++end_bit;
  size_t sort_bytes = 0;
  check(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const I*>(nullptr),
                                        static_cast<I*>(nullptr), static_cast<const int32_t*>(nullptr),
                                        static_cast<int32_t*>(nullptr), static_cast<int>(n), 0, end_bit, s),
        "embedding_backward sort size");
  const size_t ids_bytes = (static_cast<size_t>(n) * sizeof(I) + 255) / 256 * 256;
  const size_t pos_bytes = (static_cast<size_t>(n) * sizeof(int32_t) + 255) / 256 * 256;
  char* tmp = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&tmp), ids_bytes + 2 * pos_bytes + sort_bytes, s),
        "embedding_backward temporary");
  I* sorted_ids = reinterpret_cast<I*>(tmp);
  int32_t* pos = reinterpret_cast<int32_t*>(tmp + ids_bytes);
  int32_t* sorted_pos = reinterpret_cast<int32_t*>(tmp + ids_bytes + pos_bytes);
  void* sort_tmp = tmp + ids_bytes + 2 * pos_bytes;
  iota_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(pos, n);
  check(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, ids, sorted_ids, pos, sorted_pos,
                                        static_cast<int>(n), 0, end_bit, s),
        "embedding_backward sort");
  const int threads = row_threads(C, 1) > 256 ? 256 : row_threads(C, 1);
  embedding_backward_segments<T, I>
      <<<static_cast<unsigned>(n), threads, 0, s>>>(dout, sorted_ids, sorted_pos, n, dtable, C);
  check_launch("embedding_backward");
  check(cudaFreeAsync(tmp, s), "embedding_backward free");
}

#define POLDER_INSTANTIATE(T, I)                                                                         \
  template void embedding_forward<T, I>(const T*, const I*, T*, int64_t, int64_t, void*);                \
  template void embedding_backward<T, I>(const T*, const I*, acc_t<T>*, int64_t, int64_t, int64_t, bool, \
                                         void*);
POLDER_INSTANTIATE(float, int32_t)
POLDER_INSTANTIATE(bf16, int32_t)
POLDER_INSTANTIATE(f16, int32_t)
POLDER_INSTANTIATE(float, int64_t)
POLDER_INSTANTIATE(bf16, int64_t)
POLDER_INSTANTIATE(f16, int64_t)

}  // namespace polder::kernels::cuda
