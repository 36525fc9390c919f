// Tokenizer encode throughput on corpus text: single thread, then OpenMP threads over documents. The baseline
// (HF `tokenizers`, single thread, same files) is scripts/reference/bench_hf_tokenizer.py, run in the same
// session. Usage: bench_tokenizer [--tokenizer tokenizer.json]... [--max-mb N] [--check-ids hf_ids.txt]
// [input.jsonl ...]
//   --check-ids: ids written by bench_hf_tokenizer.py --dump-ids for the first tokenizer; every document must
//   match. defaults: configs/tokenizers/polder-eu-32k.json and data_work/corpus/*.jsonl (first 8 MB), 3 timed
//   passes after one warm-up pass (the per-thread word cache is warm, as in HF after its first pass).
#include <omp.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<std::string> read_jsonl(const std::vector<std::string>& paths, double max_mb) {
  std::vector<std::string> docs;
  double bytes = 0;
  // Round-robin over files so every language is represented within the byte budget.
  std::vector<std::ifstream> ins;
  for (const auto& p : paths) ins.emplace_back(p);
  bool any = true;
  while (any && bytes < max_mb * 1e6) {
    any = false;
    for (auto& in : ins) {
      std::string line;
      if (!std::getline(in, line)) continue;
      any = true;
      if (line.empty()) continue;
      docs.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
      bytes += docs.back().size();
    }
  }
  return docs;
}

// Median seconds of `passes` timed passes of encoding all docs with `threads` threads; tokens via out.
double time_encode(const polder::data::Tokenizer& tok, const std::vector<std::string>& docs, int threads,
                   int passes, int64_t& tokens) {
  std::vector<double> times;
  for (int p = 0; p < passes + 1; ++p) {
    int64_t n = 0;
    double t0 = now_s();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4) reduction(+ : n)
    for (size_t d = 0; d < docs.size(); ++d) n += static_cast<int64_t>(tok.encode(docs[d]).size());
    double t = now_s() - t0;
    if (p > 0) times.push_back(t);  // pass 0 warms the caches
    tokens = n;
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> tokenizers, inputs;
  double max_mb = 8;
  std::string check_ids;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--tokenizer") && i + 1 < argc) {
      tokenizers.push_back(argv[++i]);
    } else if (!std::strcmp(argv[i], "--check-ids") && i + 1 < argc) {
      check_ids = argv[++i];
    } else if (!std::strcmp(argv[i], "--max-mb") && i + 1 < argc) {
      max_mb = std::atof(argv[++i]);
    } else {
      inputs.push_back(argv[i]);
    }
  }
  if (tokenizers.empty()) tokenizers.push_back("configs/tokenizers/polder-eu-32k.json");
  if (inputs.empty()) {
    for (const auto& e : std::filesystem::directory_iterator("data_work/corpus"))
      if (e.path().extension() == ".jsonl") inputs.push_back(e.path().string());
    std::sort(inputs.begin(), inputs.end());
  }
  auto docs = read_jsonl(inputs, max_mb);
  double mb = 0;
  for (const auto& d : docs) mb += d.size() / 1e6;
  std::printf("text: %zu documents, %.2f MB from %zu files; %d hardware threads\n", docs.size(), mb,
              inputs.size(), omp_get_num_procs());
  if (!check_ids.empty()) {
    auto tok = polder::data::Tokenizer::from_file(tokenizers.front());
    std::ifstream in(check_ids);
    size_t same = 0, n = 0;
    int64_t ntok = 0;
    std::string line;
    for (const auto& d : docs) {
      if (!std::getline(in, line)) break;
      std::vector<int32_t> hf;
      for (char* p = line.data(); *p;) {
        char* end = nullptr;
        long v = std::strtol(p, &end, 10);
        if (end == p) break;
        hf.push_back(static_cast<int32_t>(v));
        p = end;
      }
      auto ids = tok.encode(d);
      if (ids == hf) {
        ++same;
      } else if (n - same < 5) {
        std::printf("document %zu differs from HF\n", n);
      }
      ntok += static_cast<int64_t>(ids.size());
      ++n;
    }
    std::printf("ids equal to HF: %zu of %zu documents (%lld tokens)\n", same, n,
                static_cast<long long>(ntok));
    if (same != n || n != docs.size()) return 1;
  }
  std::printf("%-44s %7s %10s %10s %9s\n", "tokenizer", "threads", "MB/s", "Mtok/s", "speedup");
  for (const auto& path : tokenizers) {
    auto tok = polder::data::Tokenizer::from_file(path);
    double base = 0;
    for (int threads : {1, 2, 4}) {
      if (threads > std::max(2, omp_get_num_procs())) break;
      int64_t tokens = 0;
      double t = time_encode(tok, docs, threads, 3, tokens);
      if (threads == 1) base = t;
      std::string name = std::filesystem::path(path).filename().string();
      std::printf("%-44s %7d %10.2f %10.3f %8.2fx\n", name.c_str(), threads, mb / t, tokens / t / 1e6,
                  base / t);
    }
  }
  std::printf("baseline: scripts/reference/bench_hf_tokenizer.py (HF tokenizers, same text, 1 thread)\n");
  return 0;
}
