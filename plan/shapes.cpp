// Local parameter shapes, mirroring models/llama/model.cpp (llama_parameter_shapes, llama_local_parameters).
#include "plan/shapes.h"

#include "models/llama/model.h"

namespace polder::plan {

std::vector<LocalParam> local_params(const ModelConfig& model, int64_t tp, int64_t pp, int64_t stage,
                                     int64_t v) {
  const models::LlamaShape s = models::LlamaShape::from(model);
  models::ParallelLayout layout;
  layout.tp = tp;
  layout.pp = pp;
  layout.pp_rank = stage;
  layout.virtual_stages = v;
  const auto chunks = models::rank_chunks(s.layers, layout);
  const bool first = stage == 0, last = stage == pp - 1;
  const int64_t vocab_local = models::padded_vocab(s.vocab, tp) / tp, C = s.hidden;
  const int64_t q = s.heads * s.head_dim / tp, kv = s.kv_heads * s.head_dim / tp, inter = s.inter / tp;
  std::vector<LocalParam> out;
  if (first || (model.tie_embeddings && last)) {
    LocalParam p;
    p.kind = LocalParam::embedding;
    p.numel = vocab_local * C;
    p.tied_copy = !first;
    out.push_back(p);
  }
  const int64_t sizes[9] = {C, q * C, kv * C, kv * C, C * q, C, inter * C, inter * C, C * inter};
  const int64_t bias_sizes[9] = {0, q, kv, kv, C,
                                 0, 0, 0,  0};  // after q, k, v (qkv_bias) and o (o_proj_bias)
  for (auto [lo, hi] : chunks)
    for (int64_t l = lo; l < hi; ++l)
      for (int i = 0; i < 9; ++i) {
        LocalParam p;
        p.layer_index = l;
        p.position = i;
        p.numel = sizes[i];
        p.replicated = i == 0 || i == 5;
        out.push_back(p);
        if ((i >= 1 && i <= 3 && model.qkv_bias) || (i == 4 && model.o_proj_bias)) {
          p.numel = bias_sizes[i];
          p.bias = true;
          p.replicated = i == 4;
          out.push_back(p);
        }
      }
  if (last) {
    LocalParam n;
    n.kind = LocalParam::final_norm;
    n.numel = C;
    n.replicated = true;
    out.push_back(n);
    if (!model.tie_embeddings) {
      LocalParam h;
      h.kind = LocalParam::lm_head;
      h.numel = vocab_local * C;
      out.push_back(h);
    }
  }
  return out;
}

int64_t flat_numel(const std::vector<LocalParam>& params, int64_t multiple) {
  int64_t n = 0;
  for (const LocalParam& p : params) n += p.numel;
  return (n + multiple - 1) / multiple * multiple;
}

}  // namespace polder::plan
