// The generation loop: one decode of the prompt, then one token at a time through the KV cache. The token at
// position p is drawn with sample_token(..., p), so a seed gives the same text however it is streamed.
#include "models/llama/generate.h"

#include <algorithm>

#include "core/error.h"

namespace polder::models {

Generated generate(Llama& model, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                   const std::function<void(const std::vector<int32_t>&)>& on_token) {
  POLDER_CHECK(!prompt.empty(), "generate: the prompt has no tokens");
  const ModelConfig& c = model.config();
  const int64_t n = static_cast<int64_t>(prompt.size());
  POLDER_CHECK(n <= c.max_seq_len, "generate: the prompt has {} tokens but max_seq_len is {}", n,
               c.max_seq_len);
  const int64_t limit = std::min<int64_t>(c.max_seq_len, n + options.max_new_tokens);
  KVCache cache = model.make_cache(1, limit);
  Tensor logits = model.decode(Tensor::from_vector(prompt, {1, n}), cache);
  Generated out;
  const int64_t V = c.vocab_size;
  for (int64_t i = 0; i < options.max_new_tokens && cache.length < limit; ++i) {
    Tensor last = logits.narrow(1, logits.size(1) - 1, 1).to(DType::f64);  // (1, 1, V) is a view for batch 1
    std::vector<double> row = last.to_vector<double>();
    row.resize(static_cast<size_t>(V));
    const int32_t next = sample_token(row, options.sampling, static_cast<uint64_t>(cache.length));
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) != options.stop_ids.end()) {
      out.stopped_at = next;
      break;
    }
    out.ids.push_back(next);
    if (on_token) on_token(out.ids);
    logits = model.decode(Tensor::from_vector(std::vector<int32_t>{next}, {1, 1}), cache);
  }
  return out;
}

}  // namespace polder::models
