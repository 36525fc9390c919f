// polder data prepare | inspect: tokenise JSONL/text corpora into Megatron indexed datasets, and describe
// one. prepare reads documents in chunks, encodes each chunk with N threads and writes it in input order, so
// the output is the same for every worker count; each document gets the tokenizer's eos id appended.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "data/indexed_dataset.h"
#include "data/tokenizer.h"

namespace polder::cli {
namespace {

constexpr size_t kChunkDocuments = 4096;

// Streams documents from the inputs in order: one per JSONL line ("text" field; blank lines skipped), one per
// .txt file.
class DocumentReader {
 public:
  explicit DocumentReader(std::vector<std::string> inputs) : inputs_(std::move(inputs)) {
    for (const auto& path : inputs_) {
      POLDER_CHECK(std::filesystem::is_regular_file(path), "input {} does not exist or is not a file", path);
      POLDER_CHECK(is_jsonl(path) || is_txt(path),
                   "input {}: unknown file type (expected .jsonl, .json or .txt)", path);
    }
  }

  // Appends up to max documents to out; false when the inputs are exhausted and nothing was added.
  bool read(size_t max, std::vector<std::string>& out) {
    out.clear();
    while (out.size() < max) {
      if (!stream_) {
        if (next_file_ == inputs_.size()) break;
        path_ = inputs_[next_file_++];
        stream_ = std::make_unique<std::ifstream>(path_, std::ios::binary);
        POLDER_CHECK(stream_->good(), "cannot read input {}", path_);
        line_ = 0;
        if (is_txt(path_)) {
          std::ostringstream ss;
          ss << stream_->rdbuf();
          out.push_back(ss.str());
          stream_.reset();
          continue;
        }
      }
      std::string line;
      if (!std::getline(*stream_, line)) {
        stream_.reset();
        continue;
      }
      ++line_;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        POLDER_FAIL("{}:{}: invalid JSON ({})", path_, line_, e.what());
      }
      POLDER_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(),
                   "{}:{}: expected a JSON object with a \"text\" string field", path_, line_);
      out.push_back(j["text"].get<std::string>());
    }
    return !out.empty();
  }

 private:
  static bool ends_with(const std::string& s, const char* suffix) {
    std::string_view v(suffix);
    return s.size() >= v.size() && s.compare(s.size() - v.size(), v.size(), v) == 0;
  }
  static bool is_jsonl(const std::string& p) {
    return ends_with(p, ".jsonl") || ends_with(p, ".json") || ends_with(p, ".ndjson");
  }
  static bool is_txt(const std::string& p) { return ends_with(p, ".txt"); }

  std::vector<std::string> inputs_;
  size_t next_file_ = 0;
  std::unique_ptr<std::ifstream> stream_;
  std::string path_;
  int64_t line_ = 0;
};

// Encodes texts[i] for every i, with `workers` threads taking interleaved documents; exceptions are rethrown.
std::vector<std::vector<int32_t>> encode_all(const data::Tokenizer& tok,
                                             const std::vector<std::string>& texts, int workers) {
  std::vector<std::vector<int32_t>> out(texts.size());
  std::vector<std::exception_ptr> errors(static_cast<size_t>(workers));
  auto work = [&](int w) {
    try {
      for (size_t i = static_cast<size_t>(w); i < texts.size(); i += static_cast<size_t>(workers))
        out[i] = tok.encode(texts[i]);
    } catch (...) {
      errors[static_cast<size_t>(w)] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (int w = 1; w < workers; ++w) threads.emplace_back(work, w);
  work(0);
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::string tokenizer;
  std::string out;
  int workers = 0;
};

void run_prepare(const PrepareOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  const int workers =
      o.workers > 0 ? o.workers : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  data::Tokenizer tok = data::Tokenizer::from_file(o.tokenizer);
  const int32_t eos = tok.eos_id();
  const data::TokenDType dtype = data::token_dtype_for_vocab(tok.vocab_size());
  DocumentReader reader(o.inputs);
  data::IndexedDatasetWriter writer(o.out, dtype);
  std::vector<std::string> texts;
  int64_t skipped = 0;
  while (reader.read(kChunkDocuments, texts)) {
    std::vector<std::vector<int32_t>> ids = encode_all(tok, texts, workers);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (texts[i].empty()) {
        ++skipped;
        continue;
      }
      ids[i].push_back(eos);
      writer.add_document(ids[i]);
    }
  }
  POLDER_CHECK(writer.num_documents() > 0, "data prepare: the inputs hold no non-empty document");
  const int64_t docs = writer.num_documents(), tokens = writer.num_tokens();
  writer.finalize();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("wrote %s.bin and %s.idx (%s)\n", o.out.c_str(), o.out.c_str(), data::dtype_name(dtype));
  std::printf("documents  %lld", static_cast<long long>(docs));
  if (skipped > 0) std::printf("  (%lld empty skipped)", static_cast<long long>(skipped));
  std::printf("\ntokens     %lld (eos %d appended to each document)\n", static_cast<long long>(tokens), eos);
  std::printf("time       %.2f s, %.0f tokens/s with %d workers\n", seconds,
              seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0, workers);
}

struct InspectOptions {
  std::string prefix;
  std::string tokenizer;
  int64_t document = 0;
  int64_t max_tokens = 64;
};

void run_inspect(const InspectOptions& o) {
  data::IndexedDataset ds(o.prefix);
  std::optional<data::Tokenizer> tok;
  if (!o.tokenizer.empty()) {
    tok = data::Tokenizer::from_file(o.tokenizer);
    ds.check_vocab(tok->vocab_size());
  }
  std::vector<int64_t> lengths(static_cast<size_t>(ds.num_documents()));
  for (int64_t d = 0; d < ds.num_documents(); ++d) lengths[static_cast<size_t>(d)] = ds.document_length(d);
  std::sort(lengths.begin(), lengths.end());
  auto quantile = [&](double q) {
    return lengths[static_cast<size_t>(q * static_cast<double>(lengths.size() - 1) + 0.5)];
  };
  std::printf("dataset    %s\n", o.prefix.c_str());
  std::printf("dtype      %s (code %d)\n", data::dtype_name(ds.dtype()), static_cast<int>(ds.dtype()));
  std::printf("documents  %lld (%lld sequences)\n", static_cast<long long>(ds.num_documents()),
              static_cast<long long>(ds.num_sequences()));
  std::printf("tokens     %lld\n", static_cast<long long>(ds.num_tokens()));
  if (tok)
    std::printf("vocabulary every id < %lld (%s)\n", static_cast<long long>(tok->vocab_size()),
                o.tokenizer.c_str());
  std::printf("doc length min %lld  median %lld  mean %.1f  p90 %lld  p99 %lld  max %lld\n",
              static_cast<long long>(lengths.front()), static_cast<long long>(quantile(0.5)),
              static_cast<double>(ds.num_tokens()) / static_cast<double>(ds.num_documents()),
              static_cast<long long>(quantile(0.9)), static_cast<long long>(quantile(0.99)),
              static_cast<long long>(lengths.back()));

  POLDER_CHECK(o.document >= 0 && o.document < ds.num_documents(), "--document {} is outside [0, {})",
               o.document, ds.num_documents());
  std::vector<int32_t> sample = ds.document(o.document);
  const bool cut = static_cast<int64_t>(sample.size()) > o.max_tokens;
  if (cut) sample.resize(static_cast<size_t>(o.max_tokens));
  std::printf("document %lld, first %zu of %lld tokens:\n", static_cast<long long>(o.document), sample.size(),
              static_cast<long long>(ds.document_length(o.document)));
  if (tok) {
    std::printf("%s%s\n", tok->decode(sample).c_str(), cut ? " [...]" : "");
  } else {
    std::string ids;
    for (int32_t t : sample) ids += std::to_string(t) + " ";
    std::printf("%s%s\n", ids.c_str(), cut ? "[...]" : "");
  }
}

}  // namespace

void register_data(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "Prepare and inspect Megatron-compatible indexed datasets");
  data->require_subcommand(1);

  auto prepare = std::make_shared<PrepareOptions>();
  CLI::App* p =
      data->add_subcommand("prepare", "Tokenise JSONL (\"text\" per line) or .txt files into <out>.bin/.idx");
  p->add_option("--input", prepare->inputs,
                "Input files: .jsonl/.json (one document per line) or .txt (one per file)")
      ->required();
  p->add_option("--tokenizer", prepare->tokenizer, "HF tokenizer.json")->required();
  p->add_option("--out", prepare->out, "Output prefix: writes <out>.bin and <out>.idx")->required();
  p->add_option("--workers", prepare->workers, "Encoding threads (default: all cores)")
      ->check(CLI::NonNegativeNumber);
  p->callback([prepare] { run_prepare(*prepare); });

  auto inspect = std::make_shared<InspectOptions>();
  CLI::App* i = data->add_subcommand("inspect", "Describe an indexed dataset and show a sample");
  i->add_option("prefix", inspect->prefix, "Dataset prefix (<prefix>.bin / <prefix>.idx)")->required();
  i->add_option("--tokenizer", inspect->tokenizer,
                "tokenizer.json: check every id against it and decode the sample");
  i->add_option("--document", inspect->document, "Document to show (default 0)");
  i->add_option("--max-tokens", inspect->max_tokens, "Tokens of the sample to show (default 64)")
      ->check(CLI::PositiveNumber);
  i->callback([inspect] { run_inspect(*inspect); });
}

}  // namespace polder::cli
