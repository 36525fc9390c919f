// Llama forward. Activations are (B, T, C); attention works on (B, T, H, D) views of the projections, so no
// transposes are needed. The backward is autograd's, through the fused ops.
#include "models/llama/model.h"

#include <cmath>

#include "core/rng.h"
#include "parallel/tp_ops.h"
#include "parallel/zero3.h"

namespace polder::models {

LlamaShape LlamaShape::from(const ModelConfig& c) {
  LlamaShape s;
  s.vocab = c.vocab_size;
  s.hidden = c.hidden_size;
  s.inter = c.intermediate_size;
  s.layers = c.num_layers;
  s.heads = c.num_heads;
  s.kv_heads = c.num_kv_heads ? c.num_kv_heads : c.num_heads;
  s.head_dim = c.head_dim ? c.head_dim : (c.num_heads ? c.hidden_size / c.num_heads : 0);
  return s;
}

std::vector<std::pair<std::string, Shape>> llama_parameter_shapes(const ModelConfig& config) {
  const LlamaShape s = LlamaShape::from(config);
  std::vector<std::pair<std::string, Shape>> out;
  out.push_back({"model.embed_tokens.weight", {s.vocab, s.hidden}});
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", {s.hidden}});
    for (auto [proj, rows] : {std::pair<const char*, int64_t>{"q_proj", s.heads * s.head_dim},
                              {"k_proj", s.kv_heads * s.head_dim},
                              {"v_proj", s.kv_heads * s.head_dim}}) {
      out.push_back({p + "self_attn." + proj + ".weight", {rows, s.hidden}});
      if (config.qkv_bias) out.push_back({p + "self_attn." + proj + ".bias", {rows}});
    }
    out.push_back({p + "self_attn.o_proj.weight", {s.hidden, s.heads * s.head_dim}});
    if (config.o_proj_bias) out.push_back({p + "self_attn.o_proj.bias", {s.hidden}});
    out.push_back({p + "post_attention_layernorm.weight", {s.hidden}});
    out.push_back({p + "mlp.gate_proj.weight", {s.inter, s.hidden}});
    out.push_back({p + "mlp.up_proj.weight", {s.inter, s.hidden}});
    out.push_back({p + "mlp.down_proj.weight", {s.hidden, s.inter}});
  }
  out.push_back({"model.norm.weight", {s.hidden}});
  if (!config.tie_embeddings) out.push_back({"lm_head.weight", {s.vocab, s.hidden}});
  return out;
}

int64_t llama_parameter_count(const ModelConfig& config) {
  int64_t n = 0;
  for (auto& [name, shape] : llama_parameter_shapes(config)) n += shape_numel(shape);
  return n;
}

static bool is_norm(const std::string& name) {
  return name.find("norm.weight") != std::string::npos;
}
static bool is_bias(const std::string& name) {
  return name.ends_with(".bias");
}

std::pair<int64_t, int64_t> stage_layers(int64_t num_layers, int64_t stages, int64_t rank) {
  const int64_t base = num_layers / stages, extra = num_layers % stages;
  const int64_t first = rank * base + std::min(rank, extra);
  return {first, first + base + (rank < extra ? 1 : 0)};
}

std::vector<std::pair<int64_t, int64_t>> rank_chunks(int64_t num_layers, const ParallelLayout& layout) {
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t v = std::max<int64_t>(1, layout.virtual_stages);
  for (int64_t c = 0; c < v; ++c)
    out.push_back(stage_layers(num_layers, layout.pp * v, c * layout.pp + layout.pp_rank));
  return out;
}

int64_t padded_vocab(int64_t vocab, int64_t tp) {
  return (vocab + tp - 1) / tp * tp;
}

namespace {
// Which dim of a parameter tensor parallelism splits: 0 column-parallel, 1 row-parallel, -1 replicated. A
// column-parallel bias is split like its weight's rows; a row-parallel one (o_proj) is added after the
// reduction, so every rank holds all of it.
int shard_dim_of(const std::string& name) {
  for (const char* c : {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "embed_tokens", "lm_head"})
    if (name.find(c) != std::string::npos) return 0;
  if (is_bias(name)) return -1;
  for (const char* r : {"o_proj", "down_proj"})
    if (name.find(r) != std::string::npos) return 1;
  return -1;
}
}  // namespace

std::vector<std::pair<Parameter, Shape>> llama_local_parameters(const ModelConfig& config,
                                                                const ParallelLayout& layout) {
  const LlamaShape shape = LlamaShape::from(config);
  const int64_t tp = layout.tp;
  const int64_t vocab_local = padded_vocab(shape.vocab, tp) / tp;
  const auto chunks = rank_chunks(shape.layers, layout);
  auto in_chunk = [&](int64_t layer) {
    for (auto [a, b] : chunks)
      if (layer >= a && layer < b) return true;
    return false;
  };
  const bool first = layout.pp_rank == 0, last = layout.pp_rank == layout.pp - 1;
  const bool tied_across_stages = config.tie_embeddings && layout.pp > 1;
  std::vector<std::pair<Parameter, Shape>> out;
  int64_t index = -1;
  for (auto& [name, global] : llama_parameter_shapes(config)) {
    ++index;
    const bool embed = name == "model.embed_tokens.weight";
    const bool head = name == "model.norm.weight" || name == "lm_head.weight";
    int64_t layer = -1;
    if (name.rfind("model.layers.", 0) == 0) layer = std::stoll(name.substr(13));
    const bool here = (embed && (first || (config.tie_embeddings && last))) || (head && last) ||
                      (layer >= 0 && in_chunk(layer));
    if (!here) continue;
    Parameter prm;
    prm.name = name;
    prm.global_shape = global;
    prm.shard_dim = tp > 1 ? shard_dim_of(name) : -1;
    prm.index = index;
    prm.tied_copy = embed && !first;
    prm.tied = embed && tied_across_stages;
    prm.counts_once = !prm.tied_copy && (prm.shard_dim >= 0 || layout.tp_rank == 0);
    prm.tp_partial_grad = layout.sequence_parallel && tp > 1 && prm.shard_dim < 0;
    prm.decay = !is_norm(name) && !embed && !is_bias(name);
    Shape local = global;
    if (prm.shard_dim >= 0) {
      const size_t d = static_cast<size_t>(prm.shard_dim);
      const bool vocab = embed || name == "lm_head.weight";
      local[d] = vocab ? vocab_local : local[d] / tp;
      prm.shard_start = layout.tp_rank * local[d];
    }
    out.push_back({prm, local});
  }
  return out;
}

Llama::Llama(const ModelConfig& config, DType dtype, const ParallelLayout& layout, Device device)
    : config_(config),
      layout_(layout),
      shape_(LlamaShape::from(config)),
      tp_region_(layout.tp > 1 ? layout.tp_comm : nullptr, layout.sequence_parallel),
      cp_(layout.cp_comm) {
  POLDER_CHECK(is_floating(dtype), "Llama: parameter dtype {} is not a floating dtype", dtype);
  POLDER_CHECK(
      shape_.vocab > 0 && shape_.hidden > 0 && shape_.layers > 0 && shape_.heads > 0 && shape_.head_dim > 0,
      "Llama: model sizes must be positive (vocab {}, hidden {}, layers {}, heads {}, head_dim {})",
      shape_.vocab, shape_.hidden, shape_.layers, shape_.heads, shape_.head_dim);
  POLDER_CHECK(shape_.heads % shape_.kv_heads == 0,
               "Llama: num_heads {} is not a multiple of num_kv_heads {}", shape_.heads, shape_.kv_heads);
  const int64_t tp = layout.tp;
  POLDER_CHECK(tp >= 1 && layout.tp_rank >= 0 && layout.tp_rank < tp, "Llama: tp rank {} of {}",
               layout.tp_rank, tp);
  POLDER_CHECK(tp == 1 || layout.tp_comm != nullptr, "Llama: tp = {} needs a tensor-parallel communicator",
               tp);
  POLDER_CHECK(shape_.heads % tp == 0 && shape_.kv_heads % tp == 0 && shape_.inter % tp == 0,
               "Llama: tp = {} must divide num_heads {}, num_kv_heads {} and intermediate_size {}", tp,
               shape_.heads, shape_.kv_heads, shape_.inter);
  POLDER_CHECK(layout.pp >= 1 && layout.pp <= shape_.layers, "Llama: {} pipeline stages for {} layers",
               layout.pp, shape_.layers);
  heads_local_ = shape_.heads / tp;
  kv_local_ = shape_.kv_heads / tp;
  vocab_local_ = padded_vocab(shape_.vocab, tp) / tp;
  POLDER_CHECK(layout.virtual_stages >= 1 && layout.pp * layout.virtual_stages <= shape_.layers,
               "Llama: {} pipeline stages x {} virtual stages for {} layers", layout.pp,
               layout.virtual_stages, shape_.layers);
  chunks_ = rank_chunks(shape_.layers, layout);
  first_layer_ = chunks_.front().first;
  last_layer_ = chunks_.back().second;

  auto specs = llama_local_parameters(config, layout);
  const int64_t total = flat_size(config, layout);
  Tensor values = Tensor::zeros({total}, dtype, device);
  const bool sharded = layout.grad_end >= 0;
  const int64_t grad_offset = sharded ? layout.grad_begin : 0;
  const int64_t grad_numel = sharded ? layout.grad_end - layout.grad_begin : total;
  POLDER_CHECK(grad_offset >= 0 && grad_numel >= 0 && grad_offset + grad_numel <= total,
               "Llama: gradient shard [{}, {}) outside the {}-element flat buffer", layout.grad_begin,
               layout.grad_end, total);
  Tensor grads = Tensor::zeros({grad_numel}, dtype == DType::f64 ? DType::f64 : DType::f32, device);
  std::vector<Parameter> params;
  int64_t off = 0;
  for (auto& [spec, local] : specs) {
    Parameter prm = spec;
    const int64_t n = shape_numel(local);
    prm.offset = off;
    prm.value = values.narrow(0, off, n).view(local).set_name(prm.name);
    prm.value.set_requires_grad(true);
    if (!sharded) {
      prm.grad = grads.narrow(0, off, n).view(local);
      prm.value.grad() = prm.grad;
    }
    params.push_back(prm);
    off += n;
  }
  params_ = ParameterSet(values, grads, grad_offset, std::move(params));
  ops::RopeScaling scaling{config.rope_scaling_type, config.rope_scaling_factor, config.rope_low_freq_factor,
                           config.rope_high_freq_factor, config.rope_original_max_position};
  rope_ = ops::make_rope_table(config.max_seq_len, shape_.head_dim, config.rope_theta,
                               dtype == DType::f64 ? DType::f64 : DType::f32, scaling);
  rope_.cos = rope_.cos.to(device);  // once, so that ops::rope uses the table in place
  rope_.sin = rope_.sin.to(device);
}

Tensor& Llama::p(const std::string& name) {
  return params_.parameter(name).value;
}

std::vector<std::pair<Parameter, Shape>> Llama::local_parameters(const ParallelLayout& layout) const {
  return llama_local_parameters(config_, layout);
}

Shape Llama::activation_shape(int64_t micro_batch, int64_t seq_len) const {
  const int64_t seq_cp = seq_len / std::max(1, cp_.size());  // this rank's two chunks
  const int64_t seq_here = layout_.sequence_parallel && layout_.tp > 1 ? seq_cp / layout_.tp : seq_cp;
  return {micro_batch, seq_here, shape_.hidden};
}

int64_t Llama::flat_size(const ModelConfig& config, const ParallelLayout& layout) {
  int64_t total = 0;
  for (auto& [prm, local] : llama_local_parameters(config, layout)) total += shape_numel(local);
  return (total + layout.flat_multiple - 1) / layout.flat_multiple * layout.flat_multiple;
}

void Llama::init(uint64_t seed) {
  NoGradGuard guard;
  for (Parameter& prm : params_.parameters()) {
    if (is_norm(prm.name) || is_bias(prm.name)) {  // biases start at zero, as in HF
      prm.value.fill_(is_bias(prm.name) ? 0.0 : 1.0);
      continue;
    }
    // The values of this shard are the slice of the full tensor's values (vocabulary padding rows: zero).
    Tensor tmp = Tensor::zeros(prm.value.shape(), DType::f64);
    const uint64_t key = rng::stream_key(prm.name);
    if (prm.shard_dim < 0) {
      rng::fill_normal(tmp, seed, key, 0.0, config_.init_std);
    } else {
      const size_t d = static_cast<size_t>(prm.shard_dim);
      Shape full = prm.global_shape;
      const int64_t real = std::max<int64_t>(0, std::min(tmp.size(prm.shard_dim), full[d] - prm.shard_start));
      if (real > 0) {
        Shape part_shape = tmp.shape();
        part_shape[d] = real;
        Tensor part = Tensor::empty(part_shape, DType::f64);
        rng::fill_normal(part, seed, key, 0.0, config_.init_std, {full, prm.shard_dim, prm.shard_start});
        if (d == 0) {
          tmp.narrow(0, 0, real).copy_(part);
        } else {
          tmp = part;  // dim-1 shards never have padding
        }
      }
    }
    prm.value.copy_(tmp);
  }
}

Tensor Llama::embed(const Tensor& ids) {
  if (layout_.tp > 1)
    return parallel::vocab_parallel_embedding(p("model.embed_tokens.weight"), ids,
                                              layout_.tp_rank * vocab_local_, *layout_.tp_comm,
                                              layout_.sequence_parallel);
  return ops::embedding(p("model.embed_tokens.weight"), ids);
}

Tensor Llama::block(int64_t layer, const Tensor& x, int64_t pos0, KVCache* cache) {
  const std::string pre = "model.layers." + std::to_string(layer) + ".";
  const int64_t B = x.size(0);
  const double eps = config_.rms_norm_eps;
  // Sequence parallel: x is this rank's (B, T/tp, C) shard; the tensor-parallel region sees all T tokens.
  // Column-parallel q/k/v projections (this rank's rows of the weights and biases) of the region's input,
  // which under sequence parallelism gathers all T tokens; one node so that the backward overlaps the input
  // gradient's collective with the weight gradients (TensorParallelRegion::enter_linears).
  const std::string att = pre + "self_attn.";
  auto bias = [&](const char* name) { return config_.qkv_bias ? p(att + name + ".bias") : Tensor(); };
  std::vector<Tensor> qkv =
      tp_region_.enter_linears(ops::rms_norm(x, p(pre + "input_layernorm.weight"), eps),
                               {p(att + "q_proj.weight"), p(att + "k_proj.weight"), p(att + "v_proj.weight")},
                               {bias("q_proj"), bias("k_proj"), bias("v_proj")});
  const int64_t T = qkv[0].size(1);
  Tensor q = ops::reshape(qkv[0], {B, T, heads_local_, shape_.head_dim});
  Tensor k = ops::reshape(qkv[1], {B, T, kv_local_, shape_.head_dim});
  Tensor v = ops::reshape(qkv[2], {B, T, kv_local_, shape_.head_dim});
  q = cp_.rope(q, rope_, pos0);  // context parallel: each chunk at its global positions
  k = cp_.rope(k, rope_, pos0);
  if (cache) {
    POLDER_CHECK(!cp_.active(), "a KV cache (generation) runs without context parallelism");
    // Write the new rows into the preallocated cache, then attend over all filled positions. The narrow along
    // dim 1 of a (1, S, H, D) cache is a contiguous view; for batch > 1 the rows are copied per sequence.
    Tensor& ck = cache->k[static_cast<size_t>(layer - first_layer_)];
    Tensor& cv = cache->v[static_cast<size_t>(layer - first_layer_)];
    const int64_t len = cache->length + T;
    POLDER_CHECK(len <= cache->capacity, "KV cache full: {} positions needed, capacity {}", len,
                 cache->capacity);
    std::vector<Tensor> ks, vs;
    for (int64_t b = 0; b < B; ++b) {
      Tensor kb = ck.narrow(0, b, 1), vb = cv.narrow(0, b, 1);
      const int64_t row = kv_local_ * shape_.head_dim;
      kb.view({cache->capacity, row}).narrow(0, cache->length, T).copy_(k.narrow(0, b, 1).view({T, row}));
      vb.view({cache->capacity, row}).narrow(0, cache->length, T).copy_(v.narrow(0, b, 1).view({T, row}));
      ks.push_back(
          kb.view({cache->capacity, row}).narrow(0, 0, len).view({1, len, kv_local_, shape_.head_dim}));
      vs.push_back(
          vb.view({cache->capacity, row}).narrow(0, 0, len).view({1, len, kv_local_, shape_.head_dim}));
    }
    k = B == 1 ? ks[0] : ops::concat(ks, 0);
    v = B == 1 ? vs[0] : ops::concat(vs, 0);
  }
  // Without a cache, context parallelism attends over the whole sequence's keys (cp_ops.h).
  Tensor att_out = cache ? ops::attention(q, k, v, true) : cp_.attention(q, k, v);
  Tensor a = ops::reshape(att_out, {B, T, heads_local_ * shape_.head_dim});
  Tensor o = tp_region_.leave(ops::linear(a, p(pre + "self_attn.o_proj.weight")));
  if (config_.o_proj_bias) o = ops::add(o, p(pre + "self_attn.o_proj.bias"));  // once, after the reduction
  Tensor x1 = ops::add(x, o);
  std::vector<Tensor> gate_up = tp_region_.enter_linears(
      ops::rms_norm(x1, p(pre + "post_attention_layernorm.weight"), eps),
      {p(pre + "mlp.gate_proj.weight"), p(pre + "mlp.up_proj.weight")}, {Tensor(), Tensor()});
  Tensor m = ops::swiglu(gate_up[0], gate_up[1]);
  Tensor d = tp_region_.leave(ops::linear(m, p(pre + "mlp.down_proj.weight")));
  return ops::add(x1, d);
}

KVCache Llama::make_cache(int64_t batch, int64_t max_len) const {
  KVCache c;
  c.capacity = std::min(max_len, config_.max_seq_len);
  for (int64_t l = first_layer_; l < last_layer_; ++l) {
    c.k.push_back(Tensor::zeros({batch, c.capacity, kv_local_, shape_.head_dim}, dtype(), device()));
    c.v.push_back(Tensor::zeros({batch, c.capacity, kv_local_, shape_.head_dim}, dtype(), device()));
  }
  return c;
}

Tensor Llama::decode(const Tensor& ids, KVCache& cache) {
  NoGradGuard guard;
  POLDER_CHECK(layout_.tp == 1 && layout_.pp == 1, "Llama.decode needs tp = pp = 1");
  POLDER_CHECK(ids.dim() == 2, "Llama.decode: ids are {}, expected (batch, new tokens)", ids.shape());
  Tensor x = embed(ids);
  for (int64_t l = 0; l < shape_.layers; ++l) x = block(l, x, cache.length, &cache);
  cache.length += ids.size(1);
  return head(x);
}

Tensor Llama::head(const Tensor& x) {
  Tensor h = ops::rms_norm(x, p("model.norm.weight"), config_.rms_norm_eps);
  return ops::linear(h, p(config_.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"));
}

// With ZeRO-3 every unit (embedding, layer, head) is gathered just before it runs (the next one prefetched),
// released right after, and gathered again by a boundary at its output when backward reaches it.
Tensor Llama::stage_forward(const Tensor& input, bool recompute_blocks, int64_t chunk) {
  Tensor x = input;
  POLDER_CHECK(chunk >= 0 && chunk < num_chunks(), "Llama: chunk {} of {}", chunk, num_chunks());
  parallel::Zero3* z = zero3_;
  auto layer_unit = [&](int64_t l) {
    return z ? z->unit("model.layers." + std::to_string(l) + ".input_layernorm.weight") : -1;
  };
  const auto [chunk_first, chunk_last] = chunks_[static_cast<size_t>(chunk)];
  if (first_stage() && chunk == 0) {
    POLDER_CHECK(input.dim() == 2, "Llama: ids are {}, expected (batch, seq)", input.shape());
    POLDER_CHECK(input.size(1) <= config_.max_seq_len, "Llama: sequence of {} tokens exceeds max_seq_len {}",
                 input.size(1), config_.max_seq_len);
    if (z) {
      const int u = z->unit("model.embed_tokens.weight");
      z->gather(u);
      z->prefetch(layer_unit(chunk_first));
      x = z->exit(embed(input), {u});
      z->release(u);
    } else {
      x = embed(input);
    }
  } else {
    POLDER_CHECK(
        input.dim() == 3 && input.size(2) == shape_.hidden,  // (B, T/tp, C) under sequence parallelism
        "Llama stage {}: received activations of shape {}, expected (batch, seq, {})", layout_.pp_rank,
        input.shape(), shape_.hidden);
  }
  for (int64_t l = chunk_first; l < chunk_last; ++l) {
    const int u = layer_unit(l);
    if (z) {
      x = z->entry(x, {u});
      z->gather(u);
      if (l + 1 < chunk_last) z->prefetch(layer_unit(l + 1));
    }
    if (recompute_blocks) {
      x = recompute([this, l](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(l, in[0])}; },
                    {x})[0];
    } else {
      x = block(l, x);
    }
    if (z) {
      // Backward reaches this layer after the next one: its boundary prefetches this layer's predecessor.
      x = z->exit(x, {u}, l > chunk_first ? layer_unit(l - 1) : -1);
      z->release(u);
    }
  }
  return x;
}

Tensor Llama::stage_loss(const Tensor& hidden, const Tensor& targets) {
  POLDER_CHECK(last_stage(), "Llama: stage_loss on stage {} of {}", layout_.pp_rank, layout_.pp);
  parallel::Zero3* z = zero3_;
  std::vector<int> units;
  Tensor h_in = hidden;
  if (z) {
    units.push_back(z->unit("model.norm.weight"));
    if (config_.tie_embeddings) units.push_back(z->unit("model.embed_tokens.weight"));
    h_in = z->entry(hidden, units);
    for (int u : units) z->gather(u);
  }
  Tensor loss;
  const Tensor h = ops::rms_norm(h_in, p("model.norm.weight"), config_.rms_norm_eps);
  const Tensor& w = p(config_.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  if (layout_.tp == 1) {
    // The head and its loss as one op: on the CPU the logits' gradient is made while each row is in cache.
    loss = ops::linear_cross_entropy(h, w, targets);
  } else {
    loss = parallel::vocab_parallel_cross_entropy(ops::linear(tp_region_.enter(h), w), targets,
                                                  layout_.tp_rank * vocab_local_, shape_.vocab,
                                                  *layout_.tp_comm);
  }
  if (z) {
    loss = z->exit(loss, units);
    for (int u : units) z->release(u);
  }
  return loss;
}

Tensor Llama::forward(const Tensor& ids, bool recompute_blocks) {
  POLDER_CHECK(layout_.tp == 1 && layout_.pp == 1,
               "Llama.forward returns full logits and needs tp = pp = 1 (this model has tp {} pp {}); use "
               "stage_forward and stage_loss",
               layout_.tp, layout_.pp);
  return head(stage_forward(ids, recompute_blocks));
}

Tensor Llama::loss(const Tensor& ids, const Tensor& targets, bool recompute_blocks) {
  POLDER_CHECK(layout_.pp == 1, "Llama.loss needs pp = 1; pipeline stages run stage_forward / stage_loss");
  return stage_loss(stage_forward(ids, recompute_blocks), targets);
}

}  // namespace polder::models
