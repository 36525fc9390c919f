// Fused causal attention with grouped-query heads. q: (B, T, Hq, D); k, v: (B, S, Hkv, D), Hq a multiple of
// Hkv (query head h reads KV head h / (Hq / Hkv)). o: (B, T, Hq, D); lse: (B, Hq, T) log-sum-exp of the scaled
// scores, saved so the backward recomputes probabilities instead of storing the (T, S) matrix.
// Causal: query t sees keys s <= t + (S - T) (queries aligned to the end of the keys).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace polder::kernels {

struct AttentionShape {
  int64_t B = 0, T = 0, S = 0, Hq = 0, Hkv = 0, D = 0;
  bool causal = true;
  double scale = 0;  // usually 1 / sqrt(D)
};

namespace cpu {
// Online softmax over key blocks: memory O(D) per query row.
template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, acc_t<T>* lse);
// With P = exp(scale * q k^T - lse), Di = sum(dO_i * O_i), dS = P * (dO v^T - Di):
// dq = scale * dS k;  dk = scale * dS^T q;  dv = P^T dO. dk and dv sum over the query heads of a KV group.
template <typename T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o, const acc_t<T>* lse,
                        const T* dout, T* dq, T* dk, T* dv);
}  // namespace cpu
}  // namespace polder::kernels

#ifdef POLDER_HAVE_CUDA
// CUDA twins (kernels/cuda/attention.cu): the baseline, not the fast flash kernel. Forward: one warp per
// (b, h, query row), key/value tiles of 32 rows staged in shared memory, online softmax in fp32. Backward in
// the CPU twin's two passes (dq per query row, dk/dv per key row over its group's query heads), deterministic:
// every output row has one owner and a fixed summation order, no atomics. D <= 256. Launched on `stream`.
namespace polder::kernels::cuda {
template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, acc_t<T>* lse,
                       void* stream);
template <typename T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o, const acc_t<T>* lse,
                        const T* dout, T* dq, T* dk, T* dv, void* stream);
}  // namespace polder::kernels::cuda
#endif
