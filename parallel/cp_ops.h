// Context parallelism (parallel.cp): every sequence of T tokens is cut into 2 cp chunks of L = T / (2 cp) and
// cp rank r holds chunks r and 2 cp - 1 - r, in that order, as its local sequence of 2L tokens. Causal
// attention's work grows with the position, so the pairing gives every rank the same work (Megatron-Core's
// and TransformerEngine's load balancing). Everything but attention is per token and runs on the local tokens
// unchanged; RoPE uses each chunk's global positions; the loss is the mean over the local tokens, and the
// gradient average over the replica group (dp x cp, parallel/mesh.h) makes it the mean over the sequence.
//
// Attention: the all-gather-KV scheme Llama 3 used for its long-context training, not ring attention. Each
// rank all-gathers K and V over the cp group (the whole sequence, in order), then attends its two query
// chunks to the key prefixes they may see (chunk c sees positions [0, (c + 1) L): the causal mask aligned to
// the end of the keys, as polder's attention kernels define it), through the unchanged attention op (CPU
// twin, flash, cuDNN). Backward: the gathered K/V gradients are reduce-scattered back to their owners. Why:
// the local block is one ordinary attention call per chunk, so every attention kernel polder has serves cp
// unchanged; the K/V all-gather is 2 (cp - 1)/cp x (B T Hkv D) elements per layer, small next to the Q/O side
// with grouped-query attention (Hkv << Hq), and NCCL runs it beside the projections; ring attention saves the
// gathered K/V's memory (T x Hkv x D per layer, transient) at the cost of cp sequential, harder-to-overlap
// steps and a log-sum-exp merge. The gathered K/V are transient (inside the layer's attention forward, and
// again inside its backward), so what a layer keeps for backward is what plain attention keeps.
#pragma once

#include <cstdint>

#include "core/ops.h"
#include "core/tensor.h"
#include "parallel/comm.h"

namespace polder::parallel {

class ContextParallel {
 public:
  ContextParallel() = default;
  // cp null or of size 1: no context parallelism (every function below is the plain op).
  explicit ContextParallel(Comm* cp) : cp_(cp != nullptr && cp->size() > 1 ? cp : nullptr) {}
  bool active() const { return cp_ != nullptr; }
  int size() const { return cp_ ? cp_->size() : 1; }
  int rank() const { return cp_ ? cp_->rank() : 0; }

  // The two chunk indices of this rank (of 2 cp).
  int64_t first_chunk() const { return rank(); }
  int64_t second_chunk() const { return 2 * size() - 1 - rank(); }

  // (B, 2L, ...) this rank's chunks -> (B, 2 cp L, ...) the whole sequence in order: all-gather forward; the
  // gradient of each position summed over the ranks and this rank's chunks returned (reduce-scatter).
  Tensor gather_sequence(const Tensor& x) const;
  // The reverse without autograd: (B, 2 cp L, ...) per-position values summed over the ranks, this rank's
  // chunks returned (B, 2L, ...).
  Tensor scatter_sequence(const Tensor& full) const;
  // RoPE of local x (B, 2L, H, D) at its chunks' global positions (+ pos0).
  Tensor rope(const Tensor& x, const ops::RopeTable& table, int64_t pos0 = 0) const;
  // Causal attention of the local queries (B, 2L, Hq, D) over the whole sequence's keys and values, from the
  // local k, v (B, 2L, Hkv, D): (B, 2L, Hq, D). One node that keeps what plain attention keeps and gathers
  // K/V again in backward.
  Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v) const;

 private:
  Comm* cp_ = nullptr;
};

// The local token indices [chunk r | chunk 2 cp - 1 - r] of a sequence of `seq_len` for cp rank r (for the
// data loader's slicing): 2 seq_len / (2 cp) indices.
std::vector<int64_t> cp_local_positions(int64_t seq_len, int cp, int rank);

}  // namespace polder::parallel
