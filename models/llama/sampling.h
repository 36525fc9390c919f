// Next-token sampling from logits: greedy (temperature 0), temperature, top-k and top-p (nucleus), with a
// counter-based draw so a (seed, position) pair always gives the same token.
#pragma once

#include <cstdint>
#include <vector>

namespace polder::models {

struct SamplingOptions {
  double temperature = 0.8;  // 0: greedy
  int64_t top_k = 50;        // 0: off
  double top_p = 0.95;       // 1: off
  uint64_t seed = 1234;
};

// logits: one row of V scores. `position` indexes the draw (the generated token's position).
int32_t sample_token(const std::vector<double>& logits, const SamplingOptions& options, uint64_t position);

}  // namespace polder::models
