// Sampling: softmax at a temperature over the candidates kept by top-k, then top-p, then one uniform draw.
#include "models/llama/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "kernels/philox.h"

namespace polder::models {

int32_t sample_token(const std::vector<double>& logits, const SamplingOptions& o, uint64_t position) {
  POLDER_CHECK(!logits.empty(), "sample_token: empty logits");
  POLDER_CHECK(o.temperature >= 0, "sampling temperature {} must be >= 0", o.temperature);
  POLDER_CHECK(o.top_p > 0 && o.top_p <= 1, "sampling top_p {} must be in (0, 1]", o.top_p);
  if (o.temperature == 0)
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int32_t> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  // Descending by logit; ties by id so the order is deterministic.
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
           (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  });
  size_t keep = idx.size();
  if (o.top_k > 0) keep = std::min(keep, static_cast<size_t>(o.top_k));
  const double top = logits[static_cast<size_t>(idx[0])];
  std::vector<double> p(keep);
  double z = 0;
  for (size_t i = 0; i < keep; ++i)
    z += p[i] = std::exp((logits[static_cast<size_t>(idx[i])] - top) / o.temperature);
  double cum = 0;
  size_t nucleus = keep;
  for (size_t i = 0; i < keep; ++i) {
    cum += p[i] / z;
    if (cum >= o.top_p) {
      nucleus = i + 1;
      break;
    }
  }
  double mass = 0;
  for (size_t i = 0; i < nucleus; ++i) mass += p[i];
  double u = philox::uniform(o.seed, 0x73616d706c65ull, position) * mass;
  for (size_t i = 0; i < nucleus; ++i) {
    u -= p[i];
    if (u <= 0) return idx[i];
  }
  return idx[nucleus - 1];
}

}  // namespace polder::models
