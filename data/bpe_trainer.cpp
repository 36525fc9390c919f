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
  const auto& table = bpe::byte_level_table();
  // Tokens as raw bytes; ids 0..255 follow GPT-2's vocabulary order of the byte alphabet.
  std::vector<std::string> tokens(256);
  std::array<int32_t, 256> byte_id{};
  for (int r = 0; r < 256; ++r) {
    tokens[r] = std::string(1, static_cast<char>(table.order[r]));
    byte_id[table.order[r]] = r;
  }
  std::unordered_map<std::string, int32_t> token_id;
  for (int r = 0; r < 256; ++r) token_id[tokens[r]] = r;

  // Words in sorted order so that the result never depends on hash-map iteration order.
  std::vector<std::pair<std::string, int64_t>> sorted(word_counts_.begin(), word_counts_.end());
  std::sort(sorted.begin(), sorted.end());
  stats_.unique_words = static_cast<int64_t>(sorted.size());
  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> counts(sorted.size());
  for (size_t w = 0; w < sorted.size(); ++w) {
    for (unsigned char c : sorted[w].first) words[w].push_back(byte_id[c]);
    counts[w] = sorted[w].second;
  }
  sorted.clear();
  sorted.shrink_to_fit();

  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w];
    for (size_t k = 0; k + 1 < s.size(); ++k) {
      uint64_t p = pair_key(s[k], s[k + 1]);
      pair_count[p] += counts[w];
      auto& list = pair_words[p];
      if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
    }
  }
  std::priority_queue<HeapEntry> heap;
  for (auto [p, c] : pair_count) heap.push({c, p});

  const int64_t target = options_.vocab_size - static_cast<int64_t>(options_.special_tokens.size());
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::unordered_set<uint64_t> merged;
  std::vector<int32_t> stamp(words.size(), -1);
  std::vector<int32_t> fresh;
  std::unordered_map<uint64_t, int64_t> touched;
  while (static_cast<int64_t>(tokens.size()) < target && !heap.empty()) {
    HeapEntry top = heap.top();
    heap.pop();
    auto pc = pair_count.find(top.pair);
    int64_t actual = pc == pair_count.end() ? 0 : pc->second;
    if (actual != top.count) {
      if (actual >= std::max<int64_t>(options_.min_frequency, 1)) heap.push({actual, top.pair});
      continue;
    }
    if (actual < std::max<int64_t>(options_.min_frequency, 1)) break;
    if (!merged.insert(top.pair).second) continue;
    int32_t a = int32_t(top.pair >> 32), b = int32_t(top.pair & 0xFFFFFFFFu);
    std::string merged_str = tokens[a] + tokens[b];
    int32_t nid;
    auto it = token_id.find(merged_str);
    if (it != token_id.end()) {
      nid = it->second;
    } else {
      nid = static_cast<int32_t>(tokens.size());
      tokens.push_back(merged_str);
      token_id.emplace(merged_str, nid);
    }
    const int32_t merge_no = static_cast<int32_t>(merges.size());
    merges.emplace_back(a, b);

    std::vector<int32_t> affected = std::move(pair_words[top.pair]);
    pair_words.erase(top.pair);
    touched.clear();
    for (int32_t w : affected) {
      if (stamp[w] == merge_no) continue;
      stamp[w] = merge_no;
      auto& s = words[w];
      const int64_t c = counts[w];
      bool has = false;
      for (size_t k = 0; k + 1 < s.size() && !has; ++k) has = s[k] == a && s[k + 1] == b;
      if (!has) continue;
      for (size_t k = 0; k + 1 < s.size(); ++k) pair_count[pair_key(s[k], s[k + 1])] -= c;
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
        int64_t& pcount = pair_count[p];
        pcount += c;
        if (s[k] == nid || s[k + 1] == nid) {
          // Only pairs with the new token can grow: index the word and queue the pair's new count.
          auto& list = pair_words[p];
          if (list.empty() || list.back() != w) list.push_back(w);
          touched[p] = pcount;
        }
      }
    }
    pair_count.erase(top.pair);
    for (auto [p, c] : touched)
      if (c > 0 && !merged.count(p)) heap.push({pair_count[p], p});
  }
  stats_.merges = static_cast<int64_t>(merges.size());
  stats_.merge_seconds = seconds_since(t0);

  // ---- tokenizer.json: one vocabulary entry and one merge per line
  // -------------------------------------------
  auto mapped = [&](int32_t id) { return json_str(bpe::byte_level_encode(tokens[id])); };
  const int32_t first_special = static_cast<int32_t>(tokens.size());
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (size_t k = 0; k < options_.special_tokens.size(); ++k) {
    added.push_back({{"id", first_special + int32_t(k)},
                     {"content", options_.special_tokens[k]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  nlohmann::ordered_json pre;
  if (options_.pre_tokenizer == "llama3") {
    pre = {{"type", "Sequence"},
           {"pretokenizers",
            {{{"type", "Split"},
              {"pattern", {{"Regex", bpe::kLlama3Pattern}}},
              {"behavior", "Isolated"},
              {"invert", false}},
             {{"type", "ByteLevel"},
              {"add_prefix_space", false},
              {"trim_offsets", true},
              {"use_regex", false}}}}};
  } else {
    pre = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  }
  nlohmann::ordered_json post = {
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  if (!options_.bos_token.empty()) {
    const auto& bos = options_.bos_token;
    int32_t bos_id = first_special +
                     int32_t(std::find(options_.special_tokens.begin(), options_.special_tokens.end(), bos) -
                             options_.special_tokens.begin());
    auto special = [&](int type_id) {
      return nlohmann::ordered_json{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}};
    };
    auto seq = [](const char* id, int type_id) {
      return nlohmann::ordered_json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
    };
    post = {{"type", "TemplateProcessing"},
            {"single", {special(0), seq("A", 0)}},
            {"pair", {special(0), seq("A", 0), special(1), seq("B", 1)}},
            {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}}}}}};
  }
  nlohmann::ordered_json decoder = {
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  std::string out;
  out += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n";
  out += "  \"added_tokens\": " + added.dump() + ",\n";
  out += "  \"normalizer\": null,\n";
  out += "  \"pre_tokenizer\": " + pre.dump() + ",\n";
  out += "  \"post_processor\": " + post.dump() + ",\n";
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

}  // namespace polder::data
