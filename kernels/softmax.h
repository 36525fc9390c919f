// Softmax, log-softmax and fused cross-entropy over the last dim of (rows, cols).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace polder::kernels::cpu {
template <typename T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols);
// dx = y * (dy - sum(dy * y))
template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols);
template <typename T>
void log_softmax_forward(const T* x, T* y, int64_t rows, int64_t cols);
// dx = dy - exp(y) * sum(dy)
template <typename T>
void log_softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols);

// loss[r] = lse(x[r]) - x[r, t[r]] (0 where t[r] == ignore_index); lse saved for the backward.
template <typename T, typename I>
void cross_entropy_forward(const T* logits, const I* targets, acc_t<T>* loss, acc_t<T>* lse, int64_t rows,
                           int64_t cols, int64_t ignore_index);
// dlogits[r] = scale[r] * (softmax(x[r]) - onehot(t[r])), zero for ignored rows; scale = dloss / n_valid.
template <typename T, typename I>
void cross_entropy_backward(const T* logits, const I* targets, const acc_t<T>* lse, const acc_t<T>* dloss,
                            T* dlogits, int64_t rows, int64_t cols, int64_t ignore_index);
}  // namespace polder::kernels::cpu

#ifdef POLDER_HAVE_CUDA
// CUDA twins (kernels/cuda/softmax.cu): one block per row, launched on `stream`. The log-sum-exp is an online
// (max, sum) block reduction, so the cross-entropy never stores the vocabulary's probabilities. Softmax and
// log-softmax: float, double, bf16, f16; cross-entropy: float, bf16, f16.
namespace polder::kernels::cuda {
template <typename T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols, void* stream);
template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols, void* stream);
template <typename T>
void log_softmax_forward(const T* x, T* y, int64_t rows, int64_t cols, void* stream);
template <typename T>
void log_softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols, void* stream);

template <typename T, typename I>
void cross_entropy_forward(const T* logits, const I* targets, acc_t<T>* loss, acc_t<T>* lse, int64_t rows,
                           int64_t cols, int64_t ignore_index, void* stream);
template <typename T, typename I>
void cross_entropy_backward(const T* logits, const I* targets, const acc_t<T>* lse, const acc_t<T>* dloss,
                            T* dlogits, int64_t rows, int64_t cols, int64_t ignore_index, void* stream);
}  // namespace polder::kernels::cuda
#endif
