// Autoregressive generation with the KV cache: the loop `polder generate` runs, here so that tests can check
// where it stops (any of several end-of-text ids, the token budget, max_seq_len) without a tokenizer.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "models/llama/model.h"
#include "models/llama/sampling.h"

namespace polder::models {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  std::vector<int32_t> stop_ids;  // end-of-text ids: generation stops at any of them (not returned)
};

struct Generated {
  std::vector<int32_t> ids;  // the new tokens, without the prompt and without the stop token
  int32_t stopped_at = -1;   // the stop id that ended generation; -1: the budget or max_seq_len did
};

// Continues `prompt` (ids, non-empty) with model (tp = pp = 1). on_token, if set, is called after every new
// token with all new tokens so far (streaming output).
Generated generate(Llama& model, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                   const std::function<void(const std::vector<int32_t>&)>& on_token = {});

}  // namespace polder::models
