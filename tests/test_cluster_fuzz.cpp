// Regression tests from fuzzing (scripts/fuzz.sh, fuzz/): every input the fuzzers made crash a parser, kept
// under tests/fixtures/fuzz/<target>/, replayed through the same calls as the fuzz target in the normal
// build. Each must either parse or throw one polder::Error, never another exception or a crash; a config that
// parses must survive config_to_yaml unchanged. The named cases also check the message of the fix.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/safetensors.h"
#include "data/indexed_dataset.h"
#include "data/tokenizer.h"
#include "tests/testing.h"
#include "train/config.h"

using namespace polder;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = fs::path(POLDER_SOURCE_DIR) / "tests" / "fixtures" / "fuzz";

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<fs::path> inputs(const std::string& target) {
  std::vector<fs::path> files;
  if (fs::is_directory(kFixtures / target))
    for (const auto& e : fs::directory_iterator(kFixtures / target)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

// Runs f; returns the polder::Error message ("" when it succeeded). Any other exception fails the test.
template <typename F>
std::string outcome(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  } catch (const std::exception& e) {
    FAIL("not a polder::Error: " << e.what());
  }
  return "";
}

void replay_config(const std::string& text) {
  Config c;
  if (!outcome([&] { c = parse_config(text, {}, "fuzz.yaml"); }).empty()) return;
  CHECK(parse_config(config_to_yaml(c), {}, "<emitted>") == c);
}

void replay_tokenizer(const std::string& text) {
  outcome([&] {
    data::Tokenizer tok = data::Tokenizer::from_json(text);
    const std::vector<int32_t> ids = tok.encode(std::string_view(text).substr(0, 256), true);
    tok.decode(ids, false);
    tok.decode(ids, true);
  });
}

void replay_safetensors(const fs::path& file) {
  outcome([&] {
    safetensors::File f = safetensors::File::open(file.string());
    for (const std::string& name : f.names()) f.load(name);
  });
}

void replay_idx(const std::string& bytes, const fs::path& dir) {
  REQUIRE(bytes.size() >= 4);
  uint32_t bin_size = 0;
  std::memcpy(&bin_size, bytes.data(), 4);
  bin_size %= 1u << 16;
  std::string bin(bin_size, '\0');
  for (size_t i = 0; i < bin.size(); ++i) bin[i] = static_cast<char>(i * 31 % 251);
  const std::string prefix = (dir / "case").string();
  std::ofstream(prefix + ".bin", std::ios::binary) << bin;
  std::ofstream(prefix + ".idx", std::ios::binary) << bytes.substr(4);
  outcome([&] {
    data::IndexedDataset ds(prefix);
    for (int64_t d = 0; d < std::min<int64_t>(ds.num_documents(), 8); ++d) ds.document(d);
    for (int64_t s = 0; s < std::min<int64_t>(ds.num_sequences(), 8); ++s) ds.sequence(s);
    ds.check_vocab(1 << 20);
  });
}

}  // namespace

TEST_CASE("fuzz regressions: every saved input parses or fails with one polder::Error", "[cluster][fuzz]") {
  size_t n = 0;
  for (const fs::path& f : inputs("fuzz_config")) {
    INFO(f.string());
    replay_config(slurp(f));
    ++n;
  }
  for (const fs::path& f : inputs("fuzz_tokenizer")) {
    INFO(f.string());
    replay_tokenizer(slurp(f));
    ++n;
  }
  for (const fs::path& f : inputs("fuzz_safetensors")) {
    INFO(f.string());
    replay_safetensors(f);
    ++n;
  }
  const std::string dir = testing::fresh_dir("cluster", "fuzz_idx");
  for (const fs::path& f : inputs("fuzz_idx")) {
    INFO(f.string());
    replay_idx(slurp(f), dir);
    ++n;
  }
  CHECK(n >= 1);
}

TEST_CASE(
    "fuzz regression: a config string that is not UTF-8 is one error, not a value that changes when saved",
    "[cluster][fuzz]") {
  // fuzz_config found it: a byte 0xEB in a dataset prefix came back from config_to_yaml as U+00EB.
  const std::string text = slurp(kFixtures / "fuzz_config" / "invalid_utf8_in_prefix.yaml");
  testing::require_error(
      [&] { parse_config(text, {}, "fuzz.yaml"); },
      "fuzz.yaml:27: data.datasets[1].prefix: the text is not valid UTF-8 (byte 8 of 21 bytes)");
  const std::string base =
      "model: {vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2, "
      "num_heads: 4}\ndata: {datasets: [{name: a, prefix: a}], seq_len: 16}\n"
      "train: {steps: 4, global_batch: 4, micro_batch: 2, run_dir: ";
  for (const char* bad : {"\xC3", "\xC0\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "ok\xFF"}) {
    INFO(bad);
    testing::require_error([&] { parse_config(base + "\"" + bad + "\"}\n"); },
                           "train.run_dir: the text is not valid UTF-8");
  }
  // Valid multi-byte text is kept as it is.
  Config c = parse_config(base + "runs/zeeën-ß-€-😀}\n");
  CHECK(c.train.run_dir == "runs/zeeën-ß-€-😀");
  CHECK(parse_config(config_to_yaml(c)) == c);
  // A dataset name given as a map key.
  testing::require_error(
      [&] {
        parse_config(
            "model: {vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4}\n"
            "data: {datasets: {\"n\xFF\": {prefix: p}}, seq_len: 16}\n"
            "train: {steps: 4, global_batch: 4, micro_batch: 2}\n");
      },
      "data.datasets: the text is not valid UTF-8 (byte 1 of 2 bytes)");
}
