// Byte-level BPE trainer. Counting: regex pre-tokens of every document into a word -> frequency map
// (per-thread maps merged at the end). Merging: pair counts and a pair -> words index are updated only for
// the words that contain the merged pair; a max-heap holds (count, pair) entries that may be stale upper
// bounds and are re-pushed with the current count when popped (counts of pairs not containing the new token
// only decrease).
#include "data/bpe_trainer.h"

#include <omp.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <queue>
#include <unordered_set>

#include "core/error.h"
#include "data/bpe_common.h"

namespace polder::data {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

uint64_t pair_key(int32_t a, int32_t b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

const bpe::Regex& regex_for(const std::string& name) {
  static const bpe::Regex llama3(bpe::kLlama3Pattern);
  static const bpe::Regex gpt2(bpe::kGpt2Pattern);
  if (name == "llama3") return llama3;
  if (name == "gpt2") return gpt2;
  POLDER_FAIL("tokenizer train: pre-tokenizer '{}' is not one of llama3, gpt2", name);
}

void count_words(const bpe::Regex& re, std::string_view text,
                 std::unordered_map<std::string, int64_t>& counts,
                 std::vector<std::pair<size_t, size_t>>& hits, int64_t& words) {
  std::string fixed;
  if (!bpe::is_valid_utf8(text)) {
    fixed = bpe::utf8_lossy(text);
    text = fixed;
  }
  hits.clear();
  re.find_all(text, hits);
  for (auto [s, e] : hits) ++counts[std::string(text.substr(s, e - s))];
  words += static_cast<int64_t>(hits.size());
}

struct HeapEntry {
  int64_t count;
  uint64_t pair;
  // Max-heap on count; among equal counts the smaller pair (left id, then right id) comes first.
  bool operator<(const HeapEntry& o) const { return count != o.count ? count < o.count : pair > o.pair; }
};

std::string json_str(const std::string& s) {
  return nlohmann::json(s).dump();
}

// The whole merge state: tokens (raw bytes) with their ids, the words as id sequences with their counts,
// pair counts, the pair -> words index and the lazy max-heap.
struct MergeState {
  std::vector<std::string> tokens;
  std::unordered_map<std::string, int32_t> token_id;
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> counts;
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  std::priority_queue<HeapEntry> heap;
};

// Tokens 0..255 are the bytes in GPT-2's vocabulary order; words are split into them in sorted word order so
// that the result never depends on hash-map iteration order; then every adjacent pair is counted and indexed.
MergeState initial_state(const std::unordered_map<std::string, int64_t>& word_counts) {
  MergeState st;
  const auto& table = bpe::byte_level_table();
  st.tokens.resize(256);
  std::array<int32_t, 256> byte_id{};
  for (int r = 0; r < 256; ++r) {
    st.tokens[r] = std::string(1, static_cast<char>(table.order[r]));
    byte_id[table.order[r]] = r;
  }
  for (int r = 0; r < 256; ++r) st.token_id[st.tokens[r]] = r;

  std::vector<std::pair<std::string, int64_t>> sorted(word_counts.begin(), word_counts.end());
  std::sort(sorted.begin(), sorted.end());
  st.words.resize(sorted.size());
  st.counts.resize(sorted.size());
  for (size_t w = 0; w < sorted.size(); ++w) {
    for (unsigned char c : sorted[w].first) st.words[w].push_back(byte_id[c]);
    st.counts[w] = sorted[w].second;
  }
  sorted.clear();
  sorted.shrink_to_fit();

  for (size_t w = 0; w < st.words.size(); ++w) {
    const auto& s = st.words[w];
    for (size_t k = 0; k + 1 < s.size(); ++k) {
      uint64_t p = pair_key(s[k], s[k + 1]);
      st.pair_count[p] += st.counts[w];
      auto& list = st.pair_words[p];
      if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
    }
  }
  for (auto [p, c] : st.pair_count) st.heap.push({c, p});
  return st;
}

// The id of the token a + b, added to the vocabulary if the concatenation is new.
int32_t merged_token_id(MergeState& st, int32_t a, int32_t b) {
  std::string merged_str = st.tokens[a] + st.tokens[b];
  auto it = st.token_id.find(merged_str);
  if (it != st.token_id.end()) return it->second;
  const auto nid = static_cast<int32_t>(st.tokens.size());
  st.tokens.push_back(merged_str);
  st.token_id.emplace(merged_str, nid);
  return nid;
}

// Reusable buffers of apply_merge, kept across merges to avoid reallocations.
struct MergeScratch {
  std::vector<int32_t> stamp;  // per word: the last merge that visited it
  std::vector<int32_t> fresh;
  std::unordered_map<uint64_t, int64_t> touched;  // pairs with the new token -> their new count
};

// Replaces (a, b) by nid in word w, moving the word's pair counts from its old pairs to its new ones.
void merge_in_word(MergeState& st, int32_t w, int32_t a, int32_t b, int32_t nid, MergeScratch& scratch) {
  auto& s = st.words[w];
  const int64_t c = st.counts[w];
  bool has = false;
  for (size_t k = 0; k + 1 < s.size() && !has; ++k) has = s[k] == a && s[k + 1] == b;
  if (!has) return;
  for (size_t k = 0; k + 1 < s.size(); ++k) st.pair_count[pair_key(s[k], s[k + 1])] -= c;
  auto& fresh = scratch.fresh;
  fresh.clear();
  for (size_t k = 0; k < s.size(); ++k) {
    if (k + 1 < s.size() && s[k] == a && s[k + 1] == b) {
      fresh.push_back(nid);
      ++k;
    } else {
      fresh.push_back(s[k]);
    }
  }
  s.assign(fresh.begin(), fresh.end());
  for (size_t k = 0; k + 1 < s.size(); ++k) {
    uint64_t p = pair_key(s[k], s[k + 1]);
    int64_t& pcount = st.pair_count[p];
    pcount += c;
    if (s[k] == nid || s[k + 1] == nid) {
      // Only pairs with the new token can grow: index the word and queue the pair's new count.
      auto& list = st.pair_words[p];
      if (list.empty() || list.back() != w) list.push_back(w);
      scratch.touched[p] = pcount;
    }
  }
}

// Applies merge number merge_no of pair (a, b) into token nid to every word that holds the pair, then
// queues the new counts of the pairs that contain nid.
void apply_merge(MergeState& st, uint64_t pair, int32_t nid, int32_t merge_no,
                 const std::unordered_set<uint64_t>& merged, MergeScratch& scratch) {
  const int32_t a = int32_t(pair >> 32), b = int32_t(pair & 0xFFFFFFFFu);
  std::vector<int32_t> affected = std::move(st.pair_words[pair]);
  st.pair_words.erase(pair);
  scratch.touched.clear();
  for (int32_t w : affected) {
    if (scratch.stamp[w] == merge_no) continue;
    scratch.stamp[w] = merge_no;
    merge_in_word(st, w, a, b, nid, scratch);
  }
  st.pair_count.erase(pair);
  for (auto [p, c] : scratch.touched)
    if (c > 0 && !merged.count(p)) st.heap.push({st.pair_count[p], p});
}

// Merges the most frequent pair until the vocabulary holds `target` tokens, the heap is empty or the best
// pair is seen fewer than min_frequency times. Heap entries whose count is stale are re-pushed.
std::vector<std::pair<int32_t, int32_t>> run_merges(MergeState& st, int64_t target, int64_t min_frequency) {
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::unordered_set<uint64_t> merged;
  MergeScratch scratch;
  scratch.stamp.assign(st.words.size(), -1);
  while (static_cast<int64_t>(st.tokens.size()) < target && !st.heap.empty()) {
    HeapEntry top = st.heap.top();
    st.heap.pop();
    auto pc = st.pair_count.find(top.pair);
    int64_t actual = pc == st.pair_count.end() ? 0 : pc->second;
    if (actual != top.count) {
      if (actual >= min_frequency) st.heap.push({actual, top.pair});
      continue;
    }
    if (actual < min_frequency) break;
    if (!merged.insert(top.pair).second) continue;
    int32_t a = int32_t(top.pair >> 32), b = int32_t(top.pair & 0xFFFFFFFFu);
    const int32_t nid = merged_token_id(st, a, b);
    const int32_t merge_no = static_cast<int32_t>(merges.size());
    merges.emplace_back(a, b);
    apply_merge(st, top.pair, nid, merge_no, merged, scratch);
  }
  return merges;
}

nlohmann::ordered_json added_tokens_json(const BpeTrainerOptions& options, int32_t first_special) {
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (size_t k = 0; k < options.special_tokens.size(); ++k) {
    added.push_back({{"id", first_special + int32_t(k)},
                     {"content", options.special_tokens[k]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  return added;
}

nlohmann::ordered_json pre_tokenizer_json(const BpeTrainerOptions& options) {
  if (options.pre_tokenizer == "llama3") {
    return {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"},
               {"pattern", {{"Regex", bpe::kLlama3Pattern}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"},
               {"add_prefix_space", false},
               {"trim_offsets", true},
               {"use_regex", false}}}}};
  }
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
}

// ByteLevel without a BOS token; with one, a template that prepends it to each sequence.
nlohmann::ordered_json post_processor_json(const BpeTrainerOptions& options, int32_t first_special) {
  if (options.bos_token.empty()) {
    return {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  }
  const auto& bos = options.bos_token;
  int32_t bos_id =
      first_special + int32_t(std::find(options.special_tokens.begin(), options.special_tokens.end(), bos) -
                              options.special_tokens.begin());
  auto special = [&](int type_id) {
    return nlohmann::ordered_json{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}};
  };
  auto seq = [](const char* id, int type_id) {
    return nlohmann::ordered_json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  return {{"type", "TemplateProcessing"},
          {"single", {special(0), seq("A", 0)}},
          {"pair", {special(0), seq("A", 0), special(1), seq("B", 1)}},
          {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}}}}}};
}

// tokenizer.json with one vocabulary entry and one merge per line.
std::string tokenizer_json(const std::vector<std::string>& tokens,
                           const std::vector<std::pair<int32_t, int32_t>>& merges,
                           const BpeTrainerOptions& options) {
  auto mapped = [&](int32_t id) { return json_str(bpe::byte_level_encode(tokens[id])); };
  const int32_t first_special = static_cast<int32_t>(tokens.size());
  nlohmann::ordered_json decoder = {
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  std::string out;
  out += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n";
  out += "  \"added_tokens\": " + added_tokens_json(options, first_special).dump() + ",\n";
  out += "  \"normalizer\": null,\n";
  out += "  \"pre_tokenizer\": " + pre_tokenizer_json(options).dump() + ",\n";
  out += "  \"post_processor\": " + post_processor_json(options, first_special).dump() + ",\n";
  out += "  \"decoder\": " + decoder.dump() + ",\n";
  out +=
      "  \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, "
      "\"continuing_subword_prefix\": null, "
      "\"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": "
      "false,\n";
  out += "    \"vocab\": {\n";
  for (size_t id = 0; id < tokens.size(); ++id)
    out +=
        "      " + mapped(int32_t(id)) + ": " + std::to_string(id) + (id + 1 < tokens.size() ? ",\n" : "\n");
  out += "    },\n    \"merges\": [\n";
  for (size_t m = 0; m < merges.size(); ++m)
    out += "      [" + mapped(merges[m].first) + ", " + mapped(merges[m].second) + "]" +
           (m + 1 < merges.size() ? ",\n" : "\n");
  out += "    ]\n  }\n}\n";
  return out;
}

}  // namespace

BpeTrainer::BpeTrainer(BpeTrainerOptions options) : options_(std::move(options)) {
  regex_for(options_.pre_tokenizer);
  int64_t min_vocab = 256 + static_cast<int64_t>(options_.special_tokens.size());
  POLDER_CHECK(options_.vocab_size >= min_vocab,
               "tokenizer train: vocab size {} is below {} (256 bytes + {} special tokens)",
               options_.vocab_size, min_vocab, options_.special_tokens.size());
  if (!options_.bos_token.empty()) {
    POLDER_CHECK(std::find(options_.special_tokens.begin(), options_.special_tokens.end(),
                           options_.bos_token) != options_.special_tokens.end(),
                 "tokenizer train: bos token '{}' is not among the special tokens {}", options_.bos_token,
                 options_.special_tokens);
  }
}

void BpeTrainer::add_document(std::string_view text) {
  auto t0 = Clock::now();
  std::vector<std::pair<size_t, size_t>> hits;
  count_words(regex_for(options_.pre_tokenizer), text, word_counts_, hits, stats_.words);
  stats_.documents += 1;
  stats_.bytes += static_cast<int64_t>(text.size());
  stats_.count_seconds += seconds_since(t0);
}

void BpeTrainer::add_documents(const std::vector<std::string>& docs) {
  auto t0 = Clock::now();
  const bpe::Regex& re = regex_for(options_.pre_tokenizer);
  int threads = omp_get_max_threads();
  std::vector<std::unordered_map<std::string, int64_t>> local(threads);
  std::vector<int64_t> words(threads, 0);
#pragma omp parallel
  {
    int t = omp_get_thread_num();
    std::vector<std::pair<size_t, size_t>> hits;
#pragma omp for schedule(dynamic, 16)
    for (size_t d = 0; d < docs.size(); ++d) count_words(re, docs[d], local[t], hits, words[t]);
  }
  for (int t = 0; t < threads; ++t) {
    for (auto& [w, c] : local[t]) word_counts_[w] += c;
    stats_.words += words[t];
  }
  stats_.documents += static_cast<int64_t>(docs.size());
  for (const auto& d : docs) stats_.bytes += static_cast<int64_t>(d.size());
  stats_.count_seconds += seconds_since(t0);
}

std::string BpeTrainer::train() {
  auto t0 = Clock::now();
  MergeState st = initial_state(word_counts_);
  stats_.unique_words = static_cast<int64_t>(st.words.size());
  const int64_t target = options_.vocab_size - static_cast<int64_t>(options_.special_tokens.size());
  std::vector<std::pair<int32_t, int32_t>> merges =
      run_merges(st, target, std::max<int64_t>(options_.min_frequency, 1));
  stats_.merges = static_cast<int64_t>(merges.size());
  stats_.merge_seconds = seconds_since(t0);
  return tokenizer_json(st.tokens, merges, options_);
}

}  // namespace polder::data
