// Llama forward. Activations are (B, T, C); attention works on (B, T, H, D) views of the projections, so no
// transposes are needed. The backward is autograd's, through the fused ops.
#include "models/llama/model.h"

#include <cmath>

#include "core/rng.h"

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
    out.push_back({p + "self_attn.q_proj.weight", {s.heads * s.head_dim, s.hidden}});
    out.push_back({p + "self_attn.k_proj.weight", {s.kv_heads * s.head_dim, s.hidden}});
    out.push_back({p + "self_attn.v_proj.weight", {s.kv_heads * s.head_dim, s.hidden}});
    out.push_back({p + "self_attn.o_proj.weight", {s.hidden, s.heads * s.head_dim}});
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

static bool is_norm(const std::string& name) { return name.find("norm.weight") != std::string::npos; }

Llama::Llama(const ModelConfig& config, DType dtype) : config_(config), shape_(LlamaShape::from(config)), dtype_(dtype) {
  POLDER_CHECK(is_floating(dtype), "Llama: parameter dtype {} is not a floating dtype", dtype);
  POLDER_CHECK(shape_.vocab > 0 && shape_.hidden > 0 && shape_.layers > 0 && shape_.heads > 0 && shape_.head_dim > 0,
               "Llama: model sizes must be positive (vocab {}, hidden {}, layers {}, heads {}, head_dim {})", shape_.vocab,
               shape_.hidden, shape_.layers, shape_.heads, shape_.head_dim);
  POLDER_CHECK(shape_.heads % shape_.kv_heads == 0, "Llama: num_heads {} is not a multiple of num_kv_heads {}",
               shape_.heads, shape_.kv_heads);
  auto shapes = llama_parameter_shapes(config);
  int64_t total = 0;
  for (auto& [name, shape] : shapes) total += shape_numel(shape);
  flat_params_ = Tensor::zeros({total}, dtype);
  flat_grads_ = Tensor::zeros({total}, dtype == DType::f64 ? DType::f64 : DType::f32);
  int64_t off = 0;
  for (auto& [name, shape] : shapes) {
    const int64_t n = shape_numel(shape);
    Parameter prm;
    prm.name = name;
    prm.offset = off;
    prm.value = flat_params_.narrow(0, off, n).view(shape).set_name(name);
    prm.value.set_requires_grad(true);
    prm.grad = flat_grads_.narrow(0, off, n).view(shape);
    prm.value.grad() = prm.grad;
    prm.decay = !is_norm(name) && name != "model.embed_tokens.weight";
    params_.push_back(prm);
    off += n;
  }
  rope_ = ops::make_rope_table(config.max_seq_len, shape_.head_dim, config.rope_theta,
                               dtype == DType::f64 ? DType::f64 : DType::f32);
}

Parameter& Llama::parameter(const std::string& name) {
  for (Parameter& prm : params_)
    if (prm.name == name) return prm;
  POLDER_FAIL("Llama: no parameter named '{}'", name);
}

Tensor& Llama::p(const std::string& name) { return parameter(name).value; }

void Llama::zero_grad() {
  flat_grads_.zero_();
  for (Parameter& prm : params_) prm.value.grad() = prm.grad;  // re-install the views (ops may have replaced them)
}

void Llama::init(uint64_t seed) {
  NoGradGuard guard;
  for (Parameter& prm : params_) {
    if (is_norm(prm.name)) {
      prm.value.fill_(1.0);
    } else {
      Tensor tmp = Tensor::empty(prm.value.shape(), DType::f64);
      rng::fill_normal(tmp, seed, rng::stream_key(prm.name), 0.0, config_.init_std);
      prm.value.copy_(tmp);
    }
  }
}

Tensor Llama::embed(const Tensor& ids) { return ops::embedding(p("model.embed_tokens.weight"), ids); }

Tensor Llama::block(int64_t layer, const Tensor& x, int64_t pos0, KVCache* cache) {
  const std::string pre = "model.layers." + std::to_string(layer) + ".";
  const int64_t B = x.size(0), T = x.size(1);
  const double eps = config_.rms_norm_eps;
  Tensor h = ops::rms_norm(x, p(pre + "input_layernorm.weight"), eps);
  Tensor q = ops::reshape(ops::linear(h, p(pre + "self_attn.q_proj.weight")), {B, T, shape_.heads, shape_.head_dim});
  Tensor k = ops::reshape(ops::linear(h, p(pre + "self_attn.k_proj.weight")), {B, T, shape_.kv_heads, shape_.head_dim});
  Tensor v = ops::reshape(ops::linear(h, p(pre + "self_attn.v_proj.weight")), {B, T, shape_.kv_heads, shape_.head_dim});
  q = ops::rope(q, rope_, pos0);
  k = ops::rope(k, rope_, pos0);
  if (cache) {
    // Write the new rows into the preallocated cache, then attend over all filled positions. The narrow along
    // dim 1 of a (1, S, H, D) cache is a contiguous view; for batch > 1 the rows are copied per sequence.
    Tensor& ck = cache->k[static_cast<size_t>(layer)];
    Tensor& cv = cache->v[static_cast<size_t>(layer)];
    const int64_t len = cache->length + T;
    POLDER_CHECK(len <= cache->capacity, "KV cache full: {} positions needed, capacity {}", len, cache->capacity);
    std::vector<Tensor> ks, vs;
    for (int64_t b = 0; b < B; ++b) {
      Tensor kb = ck.narrow(0, b, 1), vb = cv.narrow(0, b, 1);
      kb.view({cache->capacity, shape_.kv_heads * shape_.head_dim})
          .narrow(0, cache->length, T)
          .copy_(k.narrow(0, b, 1).view({T, shape_.kv_heads * shape_.head_dim}));
      vb.view({cache->capacity, shape_.kv_heads * shape_.head_dim})
          .narrow(0, cache->length, T)
          .copy_(v.narrow(0, b, 1).view({T, shape_.kv_heads * shape_.head_dim}));
      ks.push_back(kb.view({cache->capacity, shape_.kv_heads, shape_.head_dim}).narrow(0, 0, len).view({1, len, shape_.kv_heads, shape_.head_dim}));
      vs.push_back(vb.view({cache->capacity, shape_.kv_heads, shape_.head_dim}).narrow(0, 0, len).view({1, len, shape_.kv_heads, shape_.head_dim}));
    }
    k = B == 1 ? ks[0] : ops::concat(ks, 0);
    v = B == 1 ? vs[0] : ops::concat(vs, 0);
  }
  Tensor a = ops::reshape(ops::attention(q, k, v, true), {B, T, shape_.heads * shape_.head_dim});
  Tensor x1 = ops::add(x, ops::linear(a, p(pre + "self_attn.o_proj.weight")));
  Tensor h2 = ops::rms_norm(x1, p(pre + "post_attention_layernorm.weight"), eps);
  Tensor m = ops::swiglu(ops::linear(h2, p(pre + "mlp.gate_proj.weight")), ops::linear(h2, p(pre + "mlp.up_proj.weight")));
  return ops::add(x1, ops::linear(m, p(pre + "mlp.down_proj.weight")));
}

KVCache Llama::make_cache(int64_t batch, int64_t max_len) const {
  KVCache c;
  c.capacity = std::min(max_len, config_.max_seq_len);
  for (int64_t l = 0; l < shape_.layers; ++l) {
    c.k.push_back(Tensor::zeros({batch, c.capacity, shape_.kv_heads, shape_.head_dim}, dtype_));
    c.v.push_back(Tensor::zeros({batch, c.capacity, shape_.kv_heads, shape_.head_dim}, dtype_));
  }
  return c;
}

Tensor Llama::decode(const Tensor& ids, KVCache& cache) {
  NoGradGuard guard;
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

Tensor Llama::forward(const Tensor& ids, bool recompute_blocks) {
  POLDER_CHECK(ids.dim() == 2, "Llama.forward: ids are {}, expected (batch, seq)", ids.shape());
  POLDER_CHECK(ids.size(1) <= config_.max_seq_len, "Llama.forward: sequence of {} tokens exceeds max_seq_len {}",
               ids.size(1), config_.max_seq_len);
  Tensor x = embed(ids);
  for (int64_t l = 0; l < shape_.layers; ++l) {
    if (recompute_blocks) {
      x = recompute([this, l](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(l, in[0])}; }, {x})[0];
    } else {
      x = block(l, x);
    }
  }
  return head(x);
}

Tensor Llama::loss(const Tensor& ids, const Tensor& targets, bool recompute_blocks) {
  Tensor logits = forward(ids, recompute_blocks);
  return ops::cross_entropy(logits, targets);
}

}  // namespace polder::models
