// The parameters one rank holds, in flat-buffer order, computed without building anything: the planner
// evaluates thousands of layouts and needs this per stage. Equal, parameter by parameter, to what
// models::llama_local_parameters lists (tests/test_plan.cpp checks it over many layouts).
#pragma once

#include <cstdint>
#include <vector>

#include "train/config.h"

namespace polder::plan {

struct LocalParam {
  enum Kind { embedding, layer, final_norm, lm_head };
  Kind kind = layer;
  int64_t layer_index = -1;  // global layer for Kind::layer
  int position = 0;  // Kind::layer: 0 input_layernorm, 1 q, 2 k, 3 v, 4 o, 5 post_attention_layernorm, 6
                     // gate, 7 up, 8 down
  int64_t numel = 0;
  bool bias = false;        // the bias of the weight at `position` (right after it in the flat buffer)
  bool replicated = false;  // norms and o_proj's bias: the same on every tp rank
  bool tied_copy = false;   // the last stage's copy of a tied embedding
};

std::vector<LocalParam> local_params(const ModelConfig& model, int64_t tp, int64_t pp, int64_t stage,
                                     int64_t virtual_stages);
// Elements of the flat buffers: the parameters' sum rounded up to a multiple (ZeRO: dp).
int64_t flat_numel(const std::vector<LocalParam>& params, int64_t multiple);

}  // namespace polder::plan
