// Tests of data/indexed_dataset: reading datasets written by an independent Python writer that follows
// Megatron's layout (scripts/reference/make_idx_fixture.py), writer -> reader round trips, and one clear
// error per bad input.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "tests/temp_dir.h"

namespace fs = std::filesystem;
using polder::data::IndexedDataset;
using polder::data::IndexedDatasetWriter;
using polder::data::TokenDType;

namespace {

const std::string kFixtures = std::string(POLDER_SOURCE_DIR) + "/tests/fixtures/indexed";

// A fresh directory per test case, removed at the end.
struct TempDir : polder::testing::TempDir {
  TempDir() : polder::testing::TempDir("idx") {}
};

std::vector<std::vector<int32_t>> random_docs(uint64_t seed, int n, int32_t max_id) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> docs(n);
  for (auto& d : docs) {
    d.resize(1 + rng() % 50);
    for (auto& t : d) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(max_id));
  }
  return docs;
}

void write_docs(const std::string& prefix, TokenDType dtype, const std::vector<std::vector<int32_t>>& docs) {
  IndexedDatasetWriter w(prefix, dtype);
  for (const auto& d : docs) w.add_document(d);
  w.finalize();
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The message of the polder::Error that fn throws ("" when it does not throw).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const polder::Error& e) {
    return e.message();
  }
  return "";
}

}  // namespace

TEST_CASE("indexed dataset: reads the Megatron-layout fixtures written by the Python reference writer") {
  std::ifstream f(kFixtures + "/expected.json");
  REQUIRE(f.good());
  nlohmann::json expected = nlohmann::json::parse(f);
  for (const std::string name : {"ref_u16", "ref_i32"}) {
    SECTION(name) {
      const auto& e = expected.at(name);
      IndexedDataset ds(kFixtures + "/" + name);
      CHECK(std::string(polder::data::dtype_name(ds.dtype())) == e.at("dtype").get<std::string>());
      CHECK(static_cast<int>(ds.dtype()) == e.at("dtype_code").get<int>());
      auto lengths = e.at("sequence_lengths").get<std::vector<int32_t>>();
      auto pointers = e.at("sequence_pointers").get<std::vector<int64_t>>();
      auto doc_idx = e.at("document_indices").get<std::vector<int64_t>>();
      auto docs = e.at("documents").get<std::vector<std::vector<int32_t>>>();
      REQUIRE(ds.num_sequences() == static_cast<int64_t>(lengths.size()));
      REQUIRE(ds.num_documents() == static_cast<int64_t>(docs.size()));
      for (size_t s = 0; s < lengths.size(); ++s) {
        CHECK(ds.sequence_length(static_cast<int64_t>(s)) == lengths[s]);
        CHECK(ds.sequence_pointer(static_cast<int64_t>(s)) == pointers[s]);
      }
      for (size_t i = 0; i < doc_idx.size(); ++i)
        CHECK(ds.document_index(static_cast<int64_t>(i)) == doc_idx[i]);
      int64_t total = 0;
      for (size_t d = 0; d < docs.size(); ++d) {
        CHECK(ds.document(static_cast<int64_t>(d)) == docs[d]);
        total += static_cast<int64_t>(docs[d].size());
      }
      CHECK(ds.num_tokens() == total);
      // A slice that straddles the sequences of a multi-sequence document.
      const int64_t multi = name == "ref_u16" ? 2 : 0;
      const auto& doc = docs[static_cast<size_t>(multi)];
      std::vector<int32_t> part(doc.size() - 2);
      ds.read_document(multi, 1, static_cast<int64_t>(part.size()), part.data());
      CHECK(part == std::vector<int32_t>(doc.begin() + 1, doc.end() - 1));
    }
  }
}

TEST_CASE("indexed dataset: our writer reproduces the reference files byte for byte") {
  std::ifstream f(kFixtures + "/expected.json");
  nlohmann::json expected = nlohmann::json::parse(f);
  TempDir tmp;
  for (const std::string name : {"ref_u16", "ref_i32"}) {
    const auto& e = expected.at(name);
    auto lengths = e.at("sequence_lengths").get<std::vector<int32_t>>();
    auto doc_idx = e.at("document_indices").get<std::vector<int64_t>>();
    auto docs = e.at("documents").get<std::vector<std::vector<int32_t>>>();
    IndexedDatasetWriter w(tmp.prefix(name), static_cast<TokenDType>(e.at("dtype_code").get<int>()));
    for (size_t d = 0; d < docs.size(); ++d) {
      size_t pos = 0;
      for (int64_t s = doc_idx[d]; s < doc_idx[d + 1]; ++s) {
        auto n = static_cast<size_t>(lengths[static_cast<size_t>(s)]);
        w.add_sequence(std::span<const int32_t>(docs[d]).subspan(pos, n));
        pos += n;
      }
      w.end_document();
    }
    w.finalize();
    CHECK(read_bytes(tmp.prefix(name) + ".idx") == read_bytes(kFixtures + "/" + name + ".idx"));
    CHECK(read_bytes(tmp.prefix(name) + ".bin") == read_bytes(kFixtures + "/" + name + ".bin"));
  }
}

TEST_CASE("indexed dataset: writer -> reader round trip for uint16 and int32") {
  TempDir tmp;
  struct Case {
    TokenDType dtype;
    int32_t max_id;
  };
  for (Case c : {Case{TokenDType::kU16, 65535}, Case{TokenDType::kI32, 2'000'000'000}}) {
    auto docs = random_docs(static_cast<uint64_t>(c.max_id), 200, c.max_id);
    std::string prefix = tmp.prefix(polder::data::dtype_name(c.dtype));
    write_docs(prefix, c.dtype, docs);
    CHECK(!fs::exists(prefix + ".bin.tmp"));
    CHECK(!fs::exists(prefix + ".idx.tmp"));
    IndexedDataset ds(prefix);
    CHECK(ds.dtype() == c.dtype);
    REQUIRE(ds.num_documents() == 200);
    CHECK(ds.num_sequences() == 200);
    int64_t total = 0;
    for (int64_t d = 0; d < 200; ++d) {
      CHECK(ds.document(d) == docs[static_cast<size_t>(d)]);
      CHECK(ds.document_length(d) == static_cast<int64_t>(docs[static_cast<size_t>(d)].size()));
      total += ds.document_length(d);
    }
    CHECK(ds.num_tokens() == total);
    CHECK(fs::file_size(prefix + ".bin") ==
          static_cast<uintmax_t>(total * polder::data::dtype_size(c.dtype)));
    ds.check_vocab(int64_t{c.max_id} + 1);  // every id is below max_id: no throw
  }
  CHECK(polder::data::token_dtype_for_vocab(32000) == TokenDType::kU16);
  CHECK(polder::data::token_dtype_for_vocab(65500) == TokenDType::kI32);
  CHECK(polder::data::token_dtype_for_vocab(128256) == TokenDType::kI32);
}

TEST_CASE("indexed dataset: an abandoned writer leaves no files") {
  TempDir tmp;
  {
    IndexedDatasetWriter w(tmp.prefix("crash"), TokenDType::kU16);
    std::vector<int32_t> doc{1, 2, 3};
    w.add_document(doc);
  }
  CHECK(fs::is_empty(tmp.path));
}

TEST_CASE("indexed dataset: bad input gives one clear error naming the file and the expectation") {
  TempDir tmp;
  const std::string good = tmp.prefix("good");
  write_docs(good, TokenDType::kU16, random_docs(7, 10, 1000));
  const auto idx = read_bytes(good + ".idx");
  const auto bin = read_bytes(good + ".bin");
  auto make = [&](const std::string& name, std::vector<char> i, std::vector<char> b) {
    write_bytes(tmp.prefix(name) + ".idx", i);
    write_bytes(tmp.prefix(name) + ".bin", b);
    return tmp.prefix(name);
  };
  using Catch::Matchers::Contains;

  SECTION("missing files") {
    CHECK_THAT(error_of([&] { IndexedDataset ds(tmp.prefix("nothing")); }),
               Contains("nothing.idx does not exist"));
    write_bytes(tmp.prefix("nobin") + ".idx", idx);
    CHECK_THAT(error_of([&] { IndexedDataset ds(tmp.prefix("nobin")); }),
               Contains("nobin.bin does not exist"));
  }
  SECTION("wrong magic") {
    auto i = idx;
    i[0] = 'X';
    CHECK_THAT(error_of([&] { IndexedDataset ds(make("magic", i, bin)); }),
               Contains("magic.idx is not a Megatron indexed dataset index: wrong magic"));
  }
  SECTION("wrong version") {
    auto i = idx;
    i[9] = 2;
    CHECK_THAT(error_of([&] { IndexedDataset ds(make("version", i, bin)); }),
               Contains("version.idx: unsupported index version 2 (expected 1)"));
  }
  SECTION("unknown dtype code") {
    auto i = idx;
    i[17] = 9;
    CHECK_THAT(error_of([&] { IndexedDataset ds(make("dtype", i, bin)); }),
               Contains("dtype.idx: unknown dtype code 9 (expected 1..8"));
    i[17] = 6;
    CHECK_THAT(error_of([&] { IndexedDataset ds(make("float", i, bin)); }),
               Contains("float.idx: dtype float64 holds no token ids"));
  }
  SECTION("truncated .idx") {
    auto i = idx;
    i.resize(i.size() - 8);
    CHECK_THAT(error_of([&] { IndexedDataset ds(make("shortidx", i, bin)); }),
               Contains("shortidx.idx is " + std::to_string(i.size()) + " bytes but its header"));
    i.resize(20);
    CHECK_THAT(error_of([&] { IndexedDataset ds(make("tinyidx", i, bin)); }),
               Contains("tinyidx.idx is 20 bytes, shorter than the 34-byte MMIDIDX header"));
  }
  SECTION(".bin shorter than the .idx says") {
    auto b = bin;
    b.resize(b.size() - 2);
    CHECK_THAT(error_of([&] { IndexedDataset ds(make("shortbin", idx, b)); }),
               Contains("shortbin.bin is " + std::to_string(b.size()) + " bytes but"));
    CHECK_THAT(error_of([&] { IndexedDataset ds(make("shortbin", idx, b)); }),
               Contains("ends at byte " + std::to_string(bin.size())));
  }
  SECTION("a byte pointer so large that pointer + length would overflow") {
    // Sequence 0's pointer (after the 34-byte header and the int32 lengths) set to 2^63 - 2: the check must
    // not add the length to it (fuzz_idx found the sum wrapping past the bound, then a read near 2^63).
    auto i = idx;
    int64_t sequences = 0;
    std::memcpy(&sequences, i.data() + 18, 8);
    const int64_t huge = INT64_MAX - 1;
    std::memcpy(i.data() + 34 + 4 * sequences, &huge, 8);
    CHECK_THAT(error_of([&] { IndexedDataset ds(make("hugeptr", i, bin)); }),
               Contains("says sequence 0 ends at byte " + std::to_string(huge)));
  }
  SECTION("token id outside the vocabulary") {
    std::vector<std::vector<int32_t>> docs{{1, 2, 3}, {4, 5, 999, 6}, {7}};
    write_docs(tmp.prefix("vocab"), TokenDType::kU16, docs);
    IndexedDataset ds(tmp.prefix("vocab"));
    ds.check_vocab(1000);
    CHECK_THAT(
        error_of([&] { ds.check_vocab(500); }),
        Contains("vocab.bin: token id 999 (document 1, sequence 1, position 2) is outside the vocabulary "
                 "of 500 tokens (expected 0 <= id < 500)"));
  }
  SECTION("empty dataset") {
    IndexedDatasetWriter w(tmp.prefix("empty"), TokenDType::kU16);
    CHECK_THAT(error_of([&] { w.finalize(); }), Contains("empty: no tokens were added"));
    // A Megatron-written empty dataset (header only, zero documents) is refused when opened.
    std::vector<char> i(idx.begin(), idx.begin() + 34);
    uint64_t zero = 0, one = 1;
    std::memcpy(i.data() + 18, &zero, 8);
    std::memcpy(i.data() + 26, &one, 8);
    i.resize(34 + 8, 0);
    CHECK_THAT(error_of([&] { IndexedDataset ds(make("empty0", i, {})); }),
               Contains("indexed dataset " + tmp.prefix("empty0") + " is empty (0 documents, 0 tokens)"));
  }
  SECTION("token id that does not fit the dtype") {
    IndexedDatasetWriter w(tmp.prefix("fit"), TokenDType::kU16);
    std::vector<int32_t> doc{1, 70000};
    CHECK_THAT(error_of([&] { w.add_document(doc); }),
               Contains("token id 70000 does not fit the dataset dtype uint16"));
  }
}
