// make_tokens: writes a Megatron dataset (<prefix>.bin/.idx) of random token ids through polder's own writer,
// for throughput runs on machines without a corpus (the GPU machine: scripts/gpu/bench_train.sh). Documents
// of random length; ids uniform in [0, vocab), stored as uint16 below 65500 and int32 above, as Megatron
// does. Usage: make_tokens --prefix PATH [--tokens N] [--vocab V] [--min-doc N] [--max-doc N] [--seed S]
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/indexed_dataset.h"

namespace {

const char* kUsage =
    "usage: make_tokens --prefix PATH [--tokens N] [--vocab V] [--min-doc N] [--max-doc N] [--seed S]\n"
    "  writes PATH.bin and PATH.idx: documents of random lengths in [min-doc, max-doc] (default 200..2000)\n"
    "  holding N tokens in all (default 8000000), ids uniform in [0, V) (default 32000), seed S (default "
    "1234)\n";

struct Options {
  std::string prefix;
  int64_t tokens = 8'000'000, vocab = 32000, min_doc = 200, max_doc = 2000;
  uint64_t seed = 1234;
};

int64_t parse_count(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  POLDER_CHECK(!v.empty() && *end == '\0' && errno == 0 && x > 0, "{} expects a positive integer, got '{}'",
               flag, v);
  return x;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    POLDER_CHECK(i + 1 < argc, "{} expects a value (see --help)", a);
    const std::string v = argv[++i];
    if (a == "--prefix")
      o.prefix = v;
    else if (a == "--tokens")
      o.tokens = parse_count(a, v);
    else if (a == "--vocab")
      o.vocab = parse_count(a, v);
    else if (a == "--min-doc")
      o.min_doc = parse_count(a, v);
    else if (a == "--max-doc")
      o.max_doc = parse_count(a, v);
    else if (a == "--seed")
      o.seed = static_cast<uint64_t>(parse_count(a, v));
    else
      POLDER_CHECK(false, "unknown argument '{}' (see --help)", a);
  }
  POLDER_CHECK(!o.prefix.empty(), "--prefix is required (see --help)");
  POLDER_CHECK(o.min_doc <= o.max_doc, "--min-doc {} is larger than --max-doc {}", o.min_doc, o.max_doc);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
  try {
    const Options o = parse(argc, argv);
    const polder::data::TokenDType dtype = polder::data::token_dtype_for_vocab(o.vocab);
    polder::data::IndexedDatasetWriter writer(o.prefix, dtype);
    std::mt19937_64 rng(o.seed);
    std::uniform_int_distribution<int64_t> length(o.min_doc, o.max_doc);
    std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(o.vocab - 1));
    std::vector<int32_t> doc;
    for (int64_t left = o.tokens; left > 0;) {
      doc.resize(static_cast<size_t>(std::min(left, length(rng))));
      for (int32_t& t : doc) t = id(rng);
      writer.add_document(doc);
      left -= static_cast<int64_t>(doc.size());
    }
    writer.finalize();
    std::printf("make_tokens: %s.bin/.idx: %lld documents, %lld tokens (%s), ids < %lld\n", o.prefix.c_str(),
                static_cast<long long>(writer.num_documents()), static_cast<long long>(writer.num_tokens()),
                polder::data::dtype_name(dtype), static_cast<long long>(o.vocab));
    return 0;
  } catch (const polder::Error& e) {
    std::fprintf(stderr, "make_tokens: %s\n", e.message().c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_tokens: %s\n", e.what());
    return 1;
  }
}
