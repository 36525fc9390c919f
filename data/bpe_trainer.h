// Byte-level BPE training that writes an HF tokenizer.json (Llama-3 or GPT-2 regex pre-tokenization,
// ByteLevel, 256-byte initial alphabet). Words are counted once; merges then update pair counts incrementally
// through a pair -> words index and a lazy max-heap, so nothing is recounted per merge. Ties: higher count
// first, then the smaller (left id, right id) pair, so training is deterministic (also with several counting
// threads).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace polder::data {

struct BpeTrainerOptions {
  int64_t vocab_size = 32000;            // total, including the 256 bytes and the special tokens
  std::string pre_tokenizer = "llama3";  // "llama3" (Split regex + ByteLevel) or "gpt2" (ByteLevel regex)
  std::vector<std::string> special_tokens = {"<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"};
  std::string bos_token =
      "<|begin_of_text|>";    // post-processor prepends it for add_special_tokens ("" = none)
  int64_t min_frequency = 2;  // a pair seen fewer times is never merged
};

struct BpeTrainStats {
  int64_t documents = 0, bytes = 0, words = 0, unique_words = 0, merges = 0;
  double count_seconds = 0, merge_seconds = 0;
};

class BpeTrainer {
 public:
  explicit BpeTrainer(BpeTrainerOptions options);
  // Pre-tokenizes and counts words; add_documents splits the work over OpenMP threads.
  void add_document(std::string_view text);
  void add_documents(const std::vector<std::string>& docs);
  // Runs the merges and returns the tokenizer.json text (loadable by Tokenizer::from_json and by HF).
  std::string train();
  const BpeTrainStats& stats() const { return stats_; }

 private:
  BpeTrainerOptions options_;
  std::unordered_map<std::string, int64_t> word_counts_;  // raw-byte pre-token -> frequency
  BpeTrainStats stats_;
};

}  // namespace polder::data
