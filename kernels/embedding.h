// Embedding lookup: out[n] = table[ids[n]]; backward scatters dout rows into a dense table gradient.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace polder::kernels::cpu {
// ids are i32 or i64 (I); every id must already be checked to lie in [0, V).
template <typename T, typename I>
void embedding_forward(const T* table, const I* ids, T* out, int64_t n, int64_t C);
// dtable (V, C) in acc_t is written (zeroed first), or added to when accumulate; deterministic (columns split
// across threads).
template <typename T, typename I>
void embedding_backward(const T* dout, const I* ids, acc_t<T>* dtable, int64_t n, int64_t V, int64_t C,
                        bool accumulate = false);
}  // namespace polder::kernels::cpu

#ifdef POLDER_HAVE_CUDA
// CUDA twins (kernels/cuda/embedding.cu): device pointers, launched on `stream`. The backward is
// deterministic: each thread owns table columns and walks the ids in token order (no float atomics).
namespace polder::kernels::cuda {
template <typename T, typename I>
void embedding_forward(const T* table, const I* ids, T* out, int64_t n, int64_t C, void* stream);
template <typename T, typename I>
void embedding_backward(const T* dout, const I* ids, acc_t<T>* dtable, int64_t n, int64_t V, int64_t C,
                        bool accumulate, void* stream);
}  // namespace polder::kernels::cuda
#endif
