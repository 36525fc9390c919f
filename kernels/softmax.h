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
// Both at once, for ops::linear_cross_entropy: loss[r] as cross_entropy_forward (the same bits), and the row
// replaced in place by scale * (softmax(x[r]) - onehot(t[r])) (the same bits as cross_entropy_backward with
// dloss[r] = scale), zero for ignored rows. Each row is read from memory once instead of twice. CPU only: on
// CUDA ops::linear_cross_entropy runs linear and cross_entropy.
template <typename T, typename I>
void cross_entropy_forward_backward(T* logits, const I* targets, acc_t<T>* loss, int64_t rows, int64_t cols,
                                    int64_t ignore_index, acc_t<T> scale);

// Vocabulary-parallel cross-entropy (parallel/tp_ops.h): logits (rows, cols) are columns [vocab_start,
// vocab_start + cols) of the vocabulary, of which the first real_cols are real (the rest are tp padding,
// excluded). Targets are global ids. Between the steps the tp group all-reduces stats[0] (max) and
// stats[1..2] (sum):
//   stats (3, rows): [0] an anchor a (the CPU keeps the max of the shard's real logits, CUDA their
//   log-sum-exp;
//     -inf when there are none), [1] sum of exp(x - a) over them, [2] the target's logit where this shard
//     holds it, else 0;
//   rescale: stats[1] *= exp(stats[0] - gmax) with gmax the all-reduced max (0 stays 0);
//   finish: lse = gmax + log(stats[1]), loss = lse - stats[2] (0 where the target is ignore_index);
//   backward: dlogits = dloss[r] * (exp(x - lse) - onehot(t - vocab_start)) on the real columns, 0 on padding
//     and ignored rows.
template <typename T, typename I>
void vocab_ce_stats(const T* logits, const I* targets, acc_t<T>* stats, int64_t rows, int64_t cols,
                    int64_t real_cols, int64_t vocab_start, int64_t ignore_index);
template <typename A>
void vocab_ce_rescale(A* stats, const A* gmax, int64_t rows);
template <typename A, typename I>
void vocab_ce_finish(const A* gmax, const A* stats, const I* targets, A* lse, A* loss, int64_t rows,
                     int64_t ignore_index);
template <typename T, typename I>
void vocab_ce_backward(const T* logits, const I* targets, const acc_t<T>* lse, const acc_t<T>* dloss,
                       T* dlogits, int64_t rows, int64_t cols, int64_t real_cols, int64_t vocab_start,
                       int64_t ignore_index);
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
// The vocabulary-parallel cross-entropy's steps (as on the CPU above); stats: one block per row.
template <typename T, typename I>
void vocab_ce_stats(const T* logits, const I* targets, acc_t<T>* stats, int64_t rows, int64_t cols,
                    int64_t real_cols, int64_t vocab_start, int64_t ignore_index, void* stream);
template <typename A>
void vocab_ce_rescale(A* stats, const A* gmax, int64_t rows, void* stream);
template <typename A, typename I>
void vocab_ce_finish(const A* gmax, const A* stats, const I* targets, A* lse, A* loss, int64_t rows,
                     int64_t ignore_index, void* stream);
template <typename T, typename I>
void vocab_ce_backward(const T* logits, const I* targets, const acc_t<T>* lse, const acc_t<T>* dloss,
                       T* dlogits, int64_t rows, int64_t cols, int64_t real_cols, int64_t vocab_start,
                       int64_t ignore_index, void* stream);
}  // namespace polder::kernels::cuda
#endif
