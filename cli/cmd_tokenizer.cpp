// polder tokenizer train|encode|decode|stats. Inputs: *.jsonl files give one document per line (its "text"
// field, and "lang" for stats); any other file gives one document per non-empty line. Encoding over many
// documents runs on OpenMP threads (one Tokenizer shared read-only).
#include <omp.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "data/bpe_trainer.h"
#include "data/tokenizer.h"

namespace polder::cli {

namespace {

struct Doc {
  std::string text;
  std::string lang;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Calls fn(Doc&&) for every document of every file, streaming (nothing is kept here).
template <typename Fn>
void for_each_doc(const std::vector<std::string>& paths, Fn&& fn) {
  for (const auto& path : paths) {
    std::ifstream in(path, std::ios::binary);
    POLDER_CHECK(in.good(), "tokenizer: cannot open input '{}'", path);
    std::string line;
    int64_t lineno = 0;
    const bool jsonl = ends_with(path, ".jsonl");
    while (std::getline(in, line)) {
      ++lineno;
      if (line.empty()) continue;
      if (!jsonl) {
        fn(Doc{line, ""});
        continue;
      }
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        POLDER_FAIL("tokenizer: {}:{} is not valid JSON: {}", path, lineno, e.what());
      }
      POLDER_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(),
                   "tokenizer: {}:{} has no string field \"text\"", path, lineno);
      fn(Doc{j["text"].get<std::string>(), j.value("lang", std::string())});
    }
  }
}

std::vector<Doc> read_docs(const std::vector<std::string>& paths) {
  std::vector<Doc> docs;
  for_each_doc(paths, [&](Doc&& d) { docs.push_back(std::move(d)); });
  return docs;
}

std::string read_all(std::istream& in) {
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int64_t whitespace_words(const std::string& s) {
  int64_t n = 0;
  bool in_word = false;
  for (unsigned char c : s) {
    bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
    if (!space && !in_word) ++n;
    in_word = !space;
  }
  return n;
}

struct TrainArgs {
  std::vector<std::string> inputs;
  int64_t vocab_size = 32000;
  std::string out;
  std::string pre_tokenizer = "llama3";
  std::vector<std::string> special_tokens;
  int64_t min_frequency = 2;
};

void run_train(const TrainArgs& a) {
  data::BpeTrainerOptions opt;
  opt.vocab_size = a.vocab_size;
  opt.pre_tokenizer = a.pre_tokenizer;
  opt.min_frequency = a.min_frequency;
  if (!a.special_tokens.empty()) {
    opt.special_tokens = a.special_tokens;
    opt.bos_token = a.special_tokens.front();
  } else if (a.pre_tokenizer == "gpt2") {
    opt.special_tokens = {"<|endoftext|>"};
    opt.bos_token = "";
  }
  auto t0 = std::chrono::steady_clock::now();
  data::BpeTrainer trainer(opt);
  {
    // Batches of ~64 MB keep memory bounded for large corpora; the word counts are all that is kept.
    std::vector<std::string> batch;
    size_t batch_bytes = 0;
    for_each_doc(a.inputs, [&](Doc&& d) {
      batch_bytes += d.text.size();
      batch.push_back(std::move(d.text));
      if (batch_bytes >= (size_t(64) << 20)) {
        trainer.add_documents(batch);
        batch.clear();
        batch_bytes = 0;
      }
    });
    trainer.add_documents(batch);
  }
  std::string json = trainer.train();
  data::Tokenizer tok = data::Tokenizer::from_json(json);  // what we write must load
  std::ofstream out(a.out, std::ios::binary);
  POLDER_CHECK(out.good(), "tokenizer: cannot write '{}'", a.out);
  out << json;
  const auto& s = trainer.stats();
  double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("trained %s: vocab %lld (%lld merges) from %lld documents, %.1f MB, %lld words (%lld unique)\n",
              a.out.c_str(), static_cast<long long>(tok.vocab_size()), static_cast<long long>(s.merges),
              static_cast<long long>(s.documents), s.bytes / 1e6, static_cast<long long>(s.words),
              static_cast<long long>(s.unique_words));
  if (tok.vocab_size() < a.vocab_size)
    std::printf("note: vocab %lld is below the requested %lld: no pair left that occurs %lld times or more\n",
                static_cast<long long>(tok.vocab_size()), static_cast<long long>(a.vocab_size),
                static_cast<long long>(a.min_frequency));
  std::printf("time: counting %.1f s, merges %.1f s, total %.1f s (%d threads)\n", s.count_seconds,
              s.merge_seconds, total, omp_get_max_threads());
}

void run_encode(const std::string& path, const std::string& text_opt, bool text_given, bool add_special) {
  data::Tokenizer tok = data::Tokenizer::from_file(path);
  std::string text = text_given ? text_opt : read_all(std::cin);
  auto ids = tok.encode(text, add_special);
  std::string out;
  for (size_t k = 0; k < ids.size(); ++k) out += (k ? " " : "") + std::to_string(ids[k]);
  std::printf("%s\n", out.c_str());
}

// The ids come as arguments (--ids and/or positional; each argument may hold several ids: `--ids 1 2 3`,
// `--ids "1 2 3"`, `--ids 1,2,3`, `[1, 2, 3]`) or, when there are none, from stdin.
void run_decode(const std::string& path, const std::vector<std::string>& args, bool skip_special) {
  data::Tokenizer tok = data::Tokenizer::from_file(path);
  std::string text;
  if (args.empty()) text = read_all(std::cin);
  for (const auto& a : args) text += a + " ";
  for (char& c : text)
    if (c == ',' || c == '[' || c == ']') c = ' ';
  std::istringstream in(text);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(word.c_str(), &end, 10);
    POLDER_CHECK(end != word.c_str() && *end == '\0' && errno == 0 && v >= 0 && v <= INT32_MAX,
                 "tokenizer decode: '{}' is not a token id (a non-negative integer)", word);
    POLDER_CHECK(v < tok.vocab_size() && !tok.id_to_token(static_cast<int32_t>(v)).empty(),
                 "tokenizer decode: token id {} is not in the vocabulary of {} (ids 0 to {})", v, path,
                 tok.vocab_size() - 1);
    ids.push_back(static_cast<int32_t>(v));
  }
  std::string decoded = tok.decode(ids, skip_special);
  std::fwrite(decoded.data(), 1, decoded.size(), stdout);
  std::printf("\n");
}

void run_stats(const std::string& path, const std::vector<std::string>& inputs) {
  data::Tokenizer tok = data::Tokenizer::from_file(path);
  std::vector<Doc> docs = read_docs(inputs);
  std::vector<int64_t> tokens(docs.size()), words(docs.size());
  auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for schedule(dynamic, 8)
  for (size_t d = 0; d < docs.size(); ++d) {
    tokens[d] = static_cast<int64_t>(tok.encode(docs[d].text).size());
    words[d] = whitespace_words(docs[d].text);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  struct Acc {
    int64_t docs = 0, bytes = 0, words = 0, tokens = 0;
  };
  std::map<std::string, Acc> by_lang;
  Acc all;
  for (size_t d = 0; d < docs.size(); ++d) {
    for (Acc* acc : {&by_lang[docs[d].lang.empty() ? "-" : docs[d].lang], &all}) {
      acc->docs += 1;
      acc->bytes += static_cast<int64_t>(docs[d].text.size());
      acc->words += words[d];
      acc->tokens += tokens[d];
    }
  }
  std::printf("%-6s %8s %12s %11s %12s %10s %11s\n", "lang", "docs", "bytes", "words", "tokens", "fertility",
              "bytes/tok");
  auto row = [](const std::string& name, const Acc& a) {
    std::printf("%-6s %8lld %12lld %11lld %12lld %10.3f %11.3f\n", name.c_str(),
                static_cast<long long>(a.docs), static_cast<long long>(a.bytes),
                static_cast<long long>(a.words), static_cast<long long>(a.tokens),
                a.words ? double(a.tokens) / double(a.words) : 0.0,
                a.tokens ? double(a.bytes) / double(a.tokens) : 0.0);
  };
  for (const auto& [lang, acc] : by_lang) row(lang, acc);
  row("all", all);
  std::printf("encoded %.1f MB in %.2f s (%.1f MB/s, %d threads); fertility = tokens per whitespace word\n",
              all.bytes / 1e6, secs, all.bytes / 1e6 / secs, omp_get_max_threads());
}

}  // namespace

void register_tokenizer(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("tokenizer", "Train, apply and measure HF-compatible BPE tokenizers");
  cmd->require_subcommand(1);

  auto train = std::make_shared<TrainArgs>();
  CLI::App* t = cmd->add_subcommand("train", "Train a byte-level BPE tokenizer and write tokenizer.json");
  t->add_option("--input", train->inputs,
                "Input files (.jsonl: \"text\" field per line; else one document per line)")
      ->required();
  t->add_option("--vocab-size", train->vocab_size, "Total vocabulary size, special tokens included")
      ->capture_default_str();
  t->add_option("--out", train->out, "Output tokenizer.json")->required();
  t->add_option("--pre-tokenizer", train->pre_tokenizer,
                "llama3 (Split regex + ByteLevel) or gpt2 (ByteLevel regex)")
      ->capture_default_str();
  t->add_option("--special", train->special_tokens,
                "Special tokens, the first is BOS (default: <|begin_of_text|> <|end_of_text|> <|pad|>; gpt2: "
                "<|endoftext|> and no BOS)");
  t->add_option("--min-frequency", train->min_frequency, "Never merge a pair seen fewer times")
      ->capture_default_str();
  t->callback([train] { run_train(*train); });

  auto path = std::make_shared<std::string>();
  auto text = std::make_shared<std::string>();
  auto add_special = std::make_shared<bool>(false);
  CLI::App* e = cmd->add_subcommand("encode", "Print the token ids of --text (or stdin)");
  e->add_option("--tokenizer", *path, "tokenizer.json")->required();
  CLI::Option* text_opt = e->add_option("--text", *text, "Text to encode (default: stdin)");
  e->add_flag("--add-special-tokens", *add_special, "Apply the post-processor (e.g. prepend BOS)");
  e->callback([=] { run_encode(*path, *text, text_opt->count() > 0, *add_special); });

  auto dpath = std::make_shared<std::string>();
  auto ids = std::make_shared<std::vector<std::string>>();
  auto skip = std::make_shared<bool>(false);
  CLI::App* d = cmd->add_subcommand(
      "decode", "Print the text of the ids (--ids, arguments or stdin): separated by spaces or commas");
  d->add_option("--tokenizer", *dpath, "tokenizer.json")->required();
  // --ids and the positional arguments fill one list: `--ids 1 2 3`, `--ids "1 2 3"` and `1 2 3` agree.
  d->add_option("--ids,ids", *ids, "Token ids, as one or several arguments (default: stdin)");
  d->add_flag("--skip-special-tokens", *skip, "Leave out special tokens");
  d->callback([=] { run_decode(*dpath, *ids, *skip); });

  auto spath = std::make_shared<std::string>();
  auto inputs = std::make_shared<std::vector<std::string>>();
  CLI::App* s =
      cmd->add_subcommand("stats", "Fertility (tokens per whitespace word) and bytes per token per language");
  s->add_option("--tokenizer", *spath, "tokenizer.json")->required();
  s->add_option("--input", *inputs, "JSONL files with \"text\" and \"lang\" fields")->required();
  s->callback([=] { run_stats(*spath, *inputs); });
}

}  // namespace polder::cli
