// Tests of data/loader: the deterministic shuffle (pinned against a Python transcription of splitmix64),
// packing coverage per epoch, train/validation split, blend proportions, data-parallel sharding and exact
// resume. The datasets are written with token ids that are unique positions, so every sample can be traced
// back.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "data/loader.h"
#include "tests/temp_dir.h"

namespace fs = std::filesystem;
using namespace polder::data;

namespace {

// A fresh directory per test case, removed at the end.
struct TempDir : polder::testing::TempDir {
  TempDir() : polder::testing::TempDir("loader") {}
};

// Writes n_docs documents of 1..max_len tokens; token ids are first_id, first_id + 1, ... (all distinct), so
// a token identifies its document and position. Returns the documents.
std::vector<std::vector<int32_t>> write_unique(const std::string& prefix, int n_docs, int max_len,
                                               uint64_t seed, int32_t first_id = 0) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> docs(static_cast<size_t>(n_docs));
  IndexedDatasetWriter w(prefix, TokenDType::kI32);
  int32_t id = first_id;
  for (auto& d : docs) {
    d.resize(1 + rng() % static_cast<uint64_t>(max_len));
    for (auto& t : d) t = id++;
    w.add_document(d);
  }
  w.finalize();
  return docs;
}

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const polder::Error& e) {
    return e.message();
  }
  return "";
}

std::vector<int32_t> row(const Batch& b, int64_t r) {
  auto begin = b.tokens.begin() + r * (b.seq_len + 1);
  return {begin, begin + b.seq_len + 1};
}

struct Fixture {
  TempDir tmp;
  std::string nl, en, de;
  std::vector<std::vector<int32_t>> nl_docs;
  Fixture() {
    nl = (tmp.path / "nl").string();
    en = (tmp.path / "en").string();
    de = (tmp.path / "de").string();
    nl_docs = write_unique(nl, 300, 60, 1);
    write_unique(en, 200, 40, 2, 1'000'000);
    write_unique(de, 100, 80, 3, 2'000'000);
  }
  LoaderConfig one(int64_t seq_len = 16) const {
    LoaderConfig c;
    c.datasets = {{"nl", nl, 1.0}};
    c.seq_len = seq_len;
    c.seed = 11;
    return c;
  }
  LoaderConfig blend() const {
    LoaderConfig c;
    c.datasets = {{"nl", nl, 0.5}, {"en", en, 0.3}, {"de", de, 0.2}};
    c.seq_len = 8;
    c.seed = 5;
    return c;
  }
};

}  // namespace

TEST_CASE("loader: splitmix64 and the Fisher-Yates shuffle match the Python transcription") {
  SplitMix64 r(0);
  CHECK(r.next() == 16294208416658607535ULL);  // the published first output of splitmix64 seeded with 0
  CHECK(r.next() == 7960286522194355700ULL);
  std::vector<int32_t> v(10);
  std::iota(v.begin(), v.end(), 0);
  deterministic_shuffle(v, 42);
  CHECK(v == std::vector<int32_t>{0, 9, 5, 8, 6, 4, 7, 2, 1, 3});
  std::vector<int32_t> w(20);
  std::iota(w.begin(), w.end(), 0);
  deterministic_shuffle(w, 7);
  CHECK(w == std::vector<int32_t>{4, 1, 2, 15, 16, 18, 9, 6, 13, 3, 8, 5, 19, 12, 17, 10, 11, 0, 14, 7});
  // Different seeds give different permutations of the same elements.
  std::vector<int32_t> a(1000), b(1000);
  std::iota(a.begin(), a.end(), 0);
  std::iota(b.begin(), b.end(), 0);
  deterministic_shuffle(a, 1);
  deterministic_shuffle(b, 2);
  CHECK(a != b);
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  CHECK(a == b);
}

TEST_CASE("loader: packing covers every token of the split exactly once per epoch, tail excepted") {
  Fixture f;
  LoaderConfig c = f.one(16);
  DataLoader loader(c);
  const PackedDataset& p = loader.dataset(0);
  int64_t total = 0;
  for (const auto& d : f.nl_docs) total += static_cast<int64_t>(d.size());
  REQUIRE(p.num_tokens() == total);
  const int64_t n = p.samples_per_epoch();
  REQUIRE(n == (total - 1) / 16);

  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    // The concatenated stream of this epoch, from the documented document order.
    std::vector<int32_t> stream;
    for (int32_t d : p.epoch_order(epoch))
      stream.insert(stream.end(), f.nl_docs[static_cast<size_t>(d)].begin(),
                    f.nl_docs[static_cast<size_t>(d)].end());
    std::set<int32_t> inputs;
    std::vector<int32_t> prev;
    for (int64_t k = 0; k < n; ++k) {
      REQUIRE(loader.epoch(0) == epoch);
      Batch b = loader.next();
      std::vector<int32_t> s = row(b, 0);
      // Sample k is stream[k * 16, k * 16 + 17): consecutive samples share one token.
      REQUIRE(s == std::vector<int32_t>(stream.begin() + k * 16, stream.begin() + k * 16 + 17));
      if (!prev.empty()) CHECK(prev.back() == s.front());
      inputs.insert(s.begin(), s.end() - 1);
      prev = s;
    }
    CHECK(static_cast<int64_t>(inputs.size()) == n * 16);  // no token twice
    const int64_t tail = total - n * 16;                   // tokens never used as inputs in this epoch
    CHECK(tail >= 1);
    CHECK(tail <= 16);
  }
  // The two epochs use different document orders.
  CHECK(p.epoch_order(0) != p.epoch_order(1));
}

TEST_CASE("loader: the shuffle is deterministic in the seed and shuffle=false keeps file order") {
  Fixture f;
  LoaderConfig c = f.one(32);
  c.micro_batch = 4;
  DataLoader a(c), b(c);
  c.seed = 12;
  DataLoader other(c);
  bool differs = false;
  for (int i = 0; i < 10; ++i) {
    Batch x = a.next(), y = b.next(), z = other.next();
    CHECK(x.tokens == y.tokens);
    differs = differs || x.tokens != z.tokens;
  }
  CHECK(differs);
  c.shuffle = false;
  DataLoader ordered(c);
  Batch first = ordered.next();
  // File order: token ids are consecutive across documents, so the stream is 0, 1, 2, ... and row r is
  // [32 r, 32 r + 33).
  for (int64_t r = 0; r < first.batch_size; ++r) {
    std::vector<int32_t> expect(33);
    std::iota(expect.begin(), expect.end(), static_cast<int32_t>(32 * r));
    CHECK(row(first, r) == expect);
  }
}

TEST_CASE("loader: train/validation split by documents") {
  Fixture f;
  LoaderConfig c = f.one(8);
  c.valid_fraction = 0.1;
  DocumentSplit s = split_documents(300, 0.1, c.split_seed, "nl");
  CHECK(s.valid.size() == 30);
  CHECK(s.train.size() == 270);
  std::vector<int32_t> all = s.train;
  all.insert(all.end(), s.valid.begin(), s.valid.end());
  std::sort(all.begin(), all.end());
  std::vector<int32_t> expect(300);
  std::iota(expect.begin(), expect.end(), 0);
  CHECK(all == expect);
  // The split does not depend on the shuffle seed.
  c.seed = 99;
  DataLoader train(c);
  c.split = "valid";
  DataLoader valid(c);
  CHECK(train.dataset(0).num_documents() == 270);
  CHECK(valid.dataset(0).num_documents() == 30);
  std::set<int32_t> valid_docs(s.valid.begin(), s.valid.end());
  // Each token id is the document's position in the file: map tokens back to documents.
  std::vector<int32_t> doc_of;
  for (size_t d = 0; d < f.nl_docs.size(); ++d)
    for (size_t t = 0; t < f.nl_docs[d].size(); ++t) doc_of.push_back(static_cast<int32_t>(d));
  for (int i = 0; i < 20; ++i) {
    for (int32_t t : train.next().tokens) CHECK(valid_docs.count(doc_of[static_cast<size_t>(t)]) == 0);
    for (int32_t t : valid.next().tokens) CHECK(valid_docs.count(doc_of[static_cast<size_t>(t)]) == 1);
  }
  // Evaluation iterates the validation split from the start every time.
  valid.reset();
  Batch v0 = valid.next(), v1 = valid.next();
  valid.reset();
  CHECK(valid.next().tokens == v0.tokens);
  CHECK(valid.next().tokens == v1.tokens);
}

TEST_CASE("loader: blend proportions are within 1% of the weights over 10k samples") {
  Fixture f;
  LoaderConfig c = f.blend();
  apply_blend(c.datasets, "nl: 4, en: 3, de: 1.5, ");  // normalised: 0.47.., 0.35.., 0.17..
  c.micro_batch = 10;
  DataLoader loader(c);
  const std::vector<double> w = loader.weights();
  CHECK(w[0] == Approx(4 / 8.5));
  std::vector<int64_t> counts(3, 0);
  for (int step = 0; step < 1000; ++step) {
    Batch b = loader.next();
    for (int64_t r = 0; r < b.batch_size; ++r) {
      const int32_t ds = b.dataset[static_cast<size_t>(r)];
      ++counts[static_cast<size_t>(ds)];
      // The row's tokens come from the dataset it is labelled with (ids are offset per dataset).
      CHECK(row(b, r).front() / 1'000'000 == ds);
    }
  }
  for (size_t i = 0; i < 3; ++i) CHECK(std::abs(static_cast<double>(counts[i]) / 10000.0 - w[i]) < 0.01);
  // The error-minimising schedule is in fact within a sample or two of the targets.
  for (size_t i = 0; i < 3; ++i) CHECK(std::abs(static_cast<double>(counts[i]) - w[i] * 10000.0) <= 2.0);
  CHECK(loader.epoch(0) > 0);  // small datasets: several epochs went by
}

TEST_CASE("loader: bad blends and configs give one clear error") {
  Fixture f;
  using Catch::Matchers::Contains;
  auto c = f.blend();
  CHECK_THAT(error_of([&] { apply_blend(c.datasets, "nl: 0.5, fr: 0.5"); }),
             Contains("unknown dataset fr (known datasets: (nl, en, de))"));
  CHECK_THAT(error_of([&] { apply_blend(c.datasets, "nl: -0.5, en: 1"); }),
             Contains("dataset nl: blend weight -0.5 is invalid (expected a finite number >= 0)"));
  CHECK_THAT(error_of([&] { apply_blend(c.datasets, "nl: 0, en: 0"); }),
             Contains("blend weights sum to 0 (expected a positive sum"));
  CHECK_THAT(error_of([&] { apply_blend(c.datasets, "nl 0.5"); }),
             Contains("is not of the form name: weight"));
  CHECK_THAT(error_of([&] { apply_blend(c.datasets, "nl: half"); }),
             Contains("weight \"half\" of dataset nl is not a number"));
  CHECK_THAT(error_of([&] { apply_blend(c.datasets, "nl: 1, nl: 2"); }),
             Contains("dataset nl appears twice"));
  c = f.blend();
  c.datasets[1].weight = -1;
  CHECK_THAT(error_of([&] { DataLoader l(c); }), Contains("dataset en: blend weight -1 is invalid"));
  c = f.one(8);
  c.split = "valid";
  CHECK_THAT(error_of([&] { DataLoader l(c); }),
             Contains("valid_fraction is 0: there is no validation split"));
  c = f.one(100000);
  CHECK_THAT(error_of([&] { DataLoader l(c); }),
             Contains("fewer than one sample of seq_len + 1 = 100001 tokens"));
  c = f.one(8);
  c.dp_rank = 2;
  c.dp_size = 2;
  CHECK_THAT(error_of([&] { DataLoader l(c); }), Contains("dp_rank 2 is outside [0, dp_size = 2)"));
  c = f.one(8);
  c.vocab_size = 1000;
  CHECK_THAT(error_of([&] { DataLoader l(c); }), Contains("is outside the vocabulary of 1000 tokens"));
  c = f.one(8);
  c.datasets[0].prefix = (f.tmp.path / "missing").string();
  CHECK_THAT(error_of([&] { DataLoader l(c); }), Contains("missing.idx does not exist"));
}

TEST_CASE("loader: data-parallel shards partition the single-rank global sequence") {
  Fixture f;
  const int64_t mb = 3, dp = 4, steps = 50;
  LoaderConfig c = f.blend();
  c.micro_batch = mb * dp;
  DataLoader global(c);
  std::vector<std::vector<int32_t>> global_rows;
  for (int s = 0; s < steps; ++s) {
    Batch b = global.next();
    for (int64_t r = 0; r < b.batch_size; ++r) global_rows.push_back(row(b, r));
  }
  c.micro_batch = mb;
  c.dp_size = dp;
  std::vector<std::vector<int32_t>> sharded(global_rows.size());
  std::vector<int> owner(global_rows.size(), -1);
  for (int64_t rank = 0; rank < dp; ++rank) {
    c.dp_rank = rank;
    DataLoader l(c);
    for (int s = 0; s < steps; ++s) {
      Batch b = l.next();
      CHECK(b.first_global_sample == s * mb * dp);
      for (int64_t r = 0; r < mb; ++r) {
        // Rank `rank` owns rows [rank * mb, (rank + 1) * mb) of each chunk of mb * dp global samples.
        const size_t g = static_cast<size_t>(s * mb * dp + rank * mb + r);
        CHECK(owner[g] == -1);  // no overlap
        owner[g] = static_cast<int>(rank);
        sharded[g] = row(b, r);
      }
    }
  }
  CHECK(std::count(owner.begin(), owner.end(), -1) == 0);  // the union is everything
  CHECK(sharded == global_rows);
}

TEST_CASE("loader: a resumed loader continues exactly, also across an epoch boundary") {
  Fixture f;
  for (bool blended : {false, true}) {
    LoaderConfig c = blended ? f.blend() : f.one(16);
    c.micro_batch = 3;
    c.dp_size = 2;
    c.dp_rank = 1;
    DataLoader probe(c);
    // Stop a few steps before dataset 0's first epoch ends, so the next m steps cross it.
    const int64_t per_step_0 = blended ? 3 : 6;  // about how many dataset-0 samples a step uses
    const int64_t k = probe.dataset(0).samples_per_epoch() / per_step_0 - 2, m = 6;
    DataLoader a(c);
    for (int64_t i = 0; i < k; ++i) a.next();
    const std::string saved = a.state().dump();
    CHECK(a.epoch(0) == 0);
    std::vector<Batch> expect;
    for (int64_t i = 0; i < m; ++i) expect.push_back(a.next());
    CHECK(a.epoch(0) == 1);

    DataLoader b(c);
    b.next();  // some progress that load_state must overwrite
    b.load_state(nlohmann::json::parse(saved));
    CHECK(b.consumed_samples() == k * 6);
    for (int64_t i = 0; i < m; ++i) {
      Batch got = b.next();
      CHECK(got.tokens == expect[static_cast<size_t>(i)].tokens);
      CHECK(got.dataset == expect[static_cast<size_t>(i)].dataset);
    }
    CHECK(b.state() == a.state());
  }
  // A state from another configuration is refused with the differing value.
  LoaderConfig c = f.one(16);
  DataLoader a(c);
  a.next();
  c.seed = 12;
  DataLoader b(c);
  CHECK_THAT(error_of([&] { b.load_state(a.state()); }),
             Catch::Matchers::Contains("loader state: seed is 11 but this loader has 12"));
}

TEST_CASE("loader: resuming with another data-parallel layout continues the same global sequence") {
  Fixture f;
  LoaderConfig c = f.blend();
  c.micro_batch = 6;
  DataLoader single(c);
  for (int i = 0; i < 7; ++i) single.next();
  const nlohmann::json saved = single.state();
  Batch next_global = single.next();  // global samples 42..47
  c.micro_batch = 3;
  c.dp_size = 2;
  for (int64_t rank = 0; rank < 2; ++rank) {
    c.dp_rank = rank;
    DataLoader l(c);
    l.load_state(saved);
    Batch b = l.next();
    CHECK(b.first_global_sample == 42);
    for (int64_t r = 0; r < 3; ++r) CHECK(row(b, r) == row(next_global, rank * 3 + r));
  }
  DataLoader l(c);
  using Catch::Matchers::Contains;
  CHECK_THAT(error_of([&] {
               l.load_state(nlohmann::json{{"format", "other"}});
             }),
             Contains("loader state: format is \"other\" (expected \"polder.loader.v1\")"));
  nlohmann::json broken = saved;
  broken.erase("dataset_samples");
  CHECK_THAT(error_of([&] { l.load_state(broken); }), Contains("loader state is malformed"));
  broken = saved;
  broken["dataset_samples"]["nl"] = 0;
  CHECK_THAT(error_of([&] { l.load_state(broken); }), Contains("per-dataset samples sum to"));
}

TEST_CASE("loader: packs a Megatron-written dataset with a multi-sequence document") {
  // The Python reference fixture; document 2 is three sequences. In file order the stream is the documents'
  // tokens concatenated.
  const std::string dir = std::string(POLDER_SOURCE_DIR) + "/tests/fixtures/indexed";
  std::ifstream in(dir + "/expected.json");
  auto docs =
      nlohmann::json::parse(in).at("ref_u16").at("documents").get<std::vector<std::vector<int32_t>>>();
  std::vector<int32_t> stream;
  for (const auto& d : docs) stream.insert(stream.end(), d.begin(), d.end());
  LoaderConfig c;
  c.datasets = {{"ref", dir + "/ref_u16", 1.0}};
  c.seq_len = 7;
  c.shuffle = false;
  c.vocab_size = 65000;
  DataLoader l(c);
  const int64_t n = l.dataset(0).samples_per_epoch();
  CHECK(n == (static_cast<int64_t>(stream.size()) - 1) / 7);
  for (int64_t k = 0; k < n; ++k)
    CHECK(row(l.next(), 0) == std::vector<int32_t>(stream.begin() + 7 * k, stream.begin() + 7 * k + 8));
}
