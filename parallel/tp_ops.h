// Tensor-parallel communication as autograd ops (Megatron's conjugate pairs) and the vocabulary-parallel
// embedding and cross-entropy. Every op is exact: it computes what the single-process op computes, with the
// sharded operands spread over the tp group.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "parallel/comm.h"

namespace polder::parallel {

// f: identity forward, all-reduce(sum) of the gradient backward. Put before a column-parallel linear.
Tensor copy_to_tp(const Tensor& x, Comm& tp);
// g: all-reduce(sum) forward, identity backward. Put after a row-parallel linear.
Tensor reduce_from_tp(const Tensor& x, Comm& tp);

// Sequence parallelism: activations between the tensor-parallel regions are split along the sequence
// (dim 1 of (B, T, C)); tp rank r holds tokens [r T/tp, (r+1) T/tp).
// (B, T/tp, C) -> (B, T, C) all-gather forward; reduce-scatter (sum) of the gradient backward.
Tensor sp_gather(const Tensor& x, Comm& tp);
// (B, T, C) partial sums -> (B, T/tp, C) reduce-scatter (sum) forward; all-gather of the gradient backward.
Tensor sp_reduce_scatter(const Tensor& x, Comm& tp);

// The boundary of a tensor-parallel region, as models call it: enter() before the column-parallel linears
// (identity forward / all-reduce backward, or the sequence-parallel all-gather), leave() after the
// row-parallel one (all-reduce forward, or the sequence-parallel reduce-scatter). Without tensor parallelism
// (no communicator, or tp = 1) both are the identity, so a model is written once for every layout.
class TensorParallelRegion {
 public:
  TensorParallelRegion() = default;
  TensorParallelRegion(Comm* tp, bool sequence_parallel)
      : tp_(tp != nullptr && tp->size() > 1 ? tp : nullptr), sp_(tp_ != nullptr && sequence_parallel) {}
  bool active() const { return tp_ != nullptr; }
  bool sequence_parallel() const { return sp_; }
  // (B, T/tp, C) or (B, T, C) -> (B, T, C): the input of the region's column-parallel linears.
  Tensor enter(const Tensor& x) const { return sp_ ? sp_gather(x, *tp_) : tp_ ? copy_to_tp(x, *tp_) : x; }
  // (B, T, C) partial sums -> (B, T/tp, C) or (B, T, C): the sum over the tp ranks.
  Tensor leave(const Tensor& x) const {
    return sp_ ? sp_reduce_scatter(x, *tp_) : tp_ ? reduce_from_tp(x, *tp_) : x;
  }
  // enter(x) followed by the region's column-parallel linears of it (weights (N_i, C), biases (N_i) or
  // undefined): outputs (..., N_i). With tensor parallelism one autograd node whose backward computes the
  // input's gradient first, starts its collective (the all-reduce, or sequence parallelism's reduce-scatter)
  // asynchronously and computes the weight and bias gradients while it runs, as Megatron's
  // LinearWithGradAccumulationAndAsyncCommunication does; on a GPU the collective runs on the tp
  // communicator's stream beside the GEMMs. Without it: ops::linear each, exactly.
  std::vector<Tensor> enter_linears(const Tensor& x, const std::vector<Tensor>& weights,
                                    const std::vector<Tensor>& biases) const;

 private:
  Comm* tp_ = nullptr;
  bool sp_ = false;
};

// table_local (V_local, C) holds rows [vocab_start, vocab_start + V_local) of the padded table; ids (...) are
// global. Rows outside the shard contribute zeros; the all-reduce assembles (..., C) on every rank.
// With sequence_parallel the rows are reduce-scattered along the sequence instead: (B, T/tp, C).
Tensor vocab_parallel_embedding(const Tensor& table_local, const Tensor& ids, int64_t vocab_start, Comm& tp,
                                bool sequence_parallel = false);

// logits_local (N, V_local) are columns [vocab_start, vocab_start + V_local) of the padded vocabulary;
// columns
// >= vocab_size (padding) are excluded. Mean over targets != ignore_index of lse - logit[target], with three
// all-reduces of N values (max, sum of exp, target logit); the full logits are never gathered. Scalar
// f32/f64.
Tensor vocab_parallel_cross_entropy(const Tensor& logits_local, const Tensor& targets, int64_t vocab_start,
                                    int64_t vocab_size, Comm& tp, int64_t ignore_index = -100);

}  // namespace polder::parallel
