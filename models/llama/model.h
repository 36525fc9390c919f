// The Llama-family decoder: embedding, N x (RMSNorm, GQA attention with RoPE, residual, RMSNorm, SwiGLU MLP,
// residual), final RMSNorm, LM head (tied or untied). Parameter names are the Hugging Face names, so HF
// conversion is a mapping table. Parameters live in one flat buffer (and their gradients in one flat f32/f64
// buffer): clipping, all-reduce, ZeRO sharding and checkpoints become range operations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/tensor.h"
#include "models/config.h"
#include "models/model.h"
#include "parallel/comm.h"
#include "parallel/cp_ops.h"
#include "parallel/tp_ops.h"

namespace polder::models {

// Llama over a ParallelLayout: column-parallel weights (q, k, v, gate, up, the vocabulary of embed_tokens and
// lm_head) are split along dim 0, row-parallel ones (o_proj, down_proj) along dim 1; norms are replicated.
// Biases (ModelConfig::qkv_bias, o_proj_bias): q/k/v's split with their weight's rows, o_proj's replicated
// (added after the reduction). Pipeline stage s holds a contiguous range of layers, the embedding on the
// first stage and the final norm and head on the last (with a tied embedding, the last stage holds a copy
// whose gradient is summed with the first stage's).

// Layers [first, last) of stage `rank` of `stages`: an even split, the first L % stages stages one layer
// more.
std::pair<int64_t, int64_t> stage_layers(int64_t num_layers, int64_t stages, int64_t rank);
// The layer ranges of every chunk of pipeline rank `layout.pp_rank` (virtual stages c * pp + pp_rank).
std::vector<std::pair<int64_t, int64_t>> rank_chunks(int64_t num_layers, const ParallelLayout& layout);
// The vocabulary rounded up to a multiple of tp (padding rows are zero and excluded from the loss).
int64_t padded_vocab(int64_t vocab, int64_t tp);

// This stage's parameters for `layout`, with local shapes (in Parameter::global_shape / shard_* and the
// returned local shapes), in flat-buffer order. No memory is allocated: checkpoints use it to describe other
// layouts.
std::vector<std::pair<Parameter, Shape>> llama_local_parameters(const ModelConfig& config,
                                                                const ParallelLayout& layout);

// Sizes derived from a ModelConfig.
struct LlamaShape {
  int64_t vocab, hidden, inter, layers, heads, kv_heads, head_dim;
  static LlamaShape from(const ModelConfig& c);
};

// Parameter names and shapes in canonical order (the order of the flat buffer).
std::vector<std::pair<std::string, Shape>> llama_parameter_shapes(const ModelConfig& config);
int64_t llama_parameter_count(const ModelConfig& config);

// Keys and values of every layer for incremental decoding: (batch, max_len, kv_heads, head_dim) each,
// preallocated; `length` positions are filled.
struct KVCache {
  std::vector<Tensor> k, v;
  int64_t length = 0;
  int64_t capacity = 0;
};

class Llama final : public Model {
 public:
  // dtype: the parameter and activation dtype (f32, f64 for tests, or bf16 under the mixed-precision policy).
  // device: where the flat buffers, the RoPE table and every activation live (one CUDA device per process).
  explicit Llama(const ModelConfig& config, DType dtype = DType::f32, const ParallelLayout& layout = {},
                 Device device = Device::cpu());

  const ModelConfig& config() const override { return config_; }
  const ParallelLayout& layout() const override { return layout_; }
  ParameterSet& parameter_set() override { return params_; }
  using Model::parameter_set;
  // Elements of the flat buffers of this layout (padding included), without building the model.
  static int64_t flat_size(const ModelConfig& config, const ParallelLayout& layout);
  std::vector<std::pair<Parameter, Shape>> local_parameters(const ParallelLayout& layout) const override;

  // Deterministic init: normal(0, init_std) per parameter from (seed, name); norm weights 1. The values do
  // not depend on the dtype beyond its rounding, nor on any parallel layout.
  void init(uint64_t seed) override;

  // Layers [first, last) of this rank's chunk (one chunk unless virtual_stages > 1).
  std::pair<int64_t, int64_t> layers(int64_t chunk = 0) const {
    return chunks_.at(static_cast<size_t>(chunk));
  }
  int64_t num_chunks() const override { return static_cast<int64_t>(chunks_.size()); }
  // (B, T, C), or (B, T / tp, C) sequence shards under sequence parallelism.
  Shape activation_shape(int64_t micro_batch, int64_t seq_len) const override;

  // Pipeline stage (chunk `chunk` of this rank): input is ids (B, T) for virtual stage 0, else the previous
  // stage's hidden (B, T, C); returns the hidden state after the chunk's layers.
  Tensor stage_forward(const Tensor& input, bool recompute = false, int64_t chunk = 0) override;
  // Last stage: final norm, LM head and (vocab-parallel when tp > 1) cross-entropy of hidden against targets.
  Tensor stage_loss(const Tensor& hidden, const Tensor& targets) override;

  // ids (B, T) of i32 -> logits (B, T, V) in the activation dtype (single process: tp = pp = 1).
  Tensor forward(const Tensor& ids, bool recompute = false);
  // Mean cross-entropy of forward(ids) against targets (B, T) (ignore index -100), in f32 (f64 for f64).
  Tensor loss(const Tensor& ids, const Tensor& targets, bool recompute = false) override;

  // One decoder block: x (B, T, C) -> (B, T, C); pos0 is the position of the first token. With a cache, the
  // new keys/values are appended at cache->length and attention runs over everything cached.
  Tensor block(int64_t layer, const Tensor& x, int64_t pos0 = 0, KVCache* cache = nullptr);
  // Incremental decoding (no autograd): ids (B, T_new) -> logits (B, T_new, V); advances cache.length.
  KVCache make_cache(int64_t batch, int64_t max_len) const;
  Tensor decode(const Tensor& ids, KVCache& cache);
  Tensor embed(const Tensor& ids);
  Tensor head(const Tensor& x);  // final norm + LM head

 private:
  ModelConfig config_;
  ParallelLayout layout_;
  int64_t first_layer_ = 0, last_layer_ = 0;  // the span of all chunks (KV cache indexing)
  std::vector<std::pair<int64_t, int64_t>> chunks_;
  int64_t heads_local_ = 0, kv_local_ = 0, vocab_local_ = 0;
  LlamaShape shape_;
  parallel::TensorParallelRegion tp_region_;  // the identity without tensor parallelism
  parallel::ContextParallel cp_;              // plain RoPE and attention without context parallelism
  ParameterSet params_;
  ops::RopeTable rope_;
  Tensor& p(const std::string& name);
};

}  // namespace polder::models
