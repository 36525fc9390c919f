// Packing, shuffling, splitting, blending and sharding of the training data (see loader.h and
// docs/DATA_FORMAT.md). Everything is a pure function of the config and two counters per dataset, which is
// what makes the loader state small and a resume exact.
#include "data/loader.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <set>

#include "core/error.h"

namespace polder::data {

namespace {

constexpr const char* kStateFormat = "polder.loader.v1";

// FNV-1a: the dataset name enters the shuffle seed, so reordering the dataset list does not change the
// shuffles.
uint64_t hash_name(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

uint64_t mix_seed(uint64_t a, uint64_t b) {
  SplitMix64 r(a);
  SplitMix64 r2(r.next() ^ b);
  return r2.next();
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Deterministic randomness

uint64_t SplitMix64::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::uniform(uint64_t n) {
  // Reject the lowest 2^64 mod n values, so that the remaining range is a whole number of copies of [0, n).
  const uint64_t threshold = (0 - n) % n;
  uint64_t x;
  do {
    x = next();
  } while (x < threshold);
  return x % n;
}

void deterministic_shuffle(std::vector<int32_t>& v, uint64_t seed) {
  SplitMix64 rng(seed);
  for (size_t i = v.size(); i > 1; --i) {
    size_t j = static_cast<size_t>(rng.uniform(i));
    std::swap(v[i - 1], v[j]);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Blends

std::vector<std::pair<std::string, double>> parse_blend(std::string_view spec) {
  std::vector<std::pair<std::string, double>> out;
  std::set<std::string> seen;
  size_t pos = 0;
  while (pos <= spec.size()) {
    size_t comma = spec.find(',', pos);
    if (comma == std::string_view::npos) comma = spec.size();
    std::string item = trim(spec.substr(pos, comma - pos));
    pos = comma + 1;
    if (item.empty()) continue;
    size_t colon = item.find(':');
    POLDER_CHECK(colon != std::string::npos, "blend \"{}\": entry \"{}\" is not of the form name: weight",
                 spec, item);
    std::string name = trim(std::string_view(item).substr(0, colon));
    std::string value = trim(std::string_view(item).substr(colon + 1));
    POLDER_CHECK(!name.empty(), "blend \"{}\": entry \"{}\" has no dataset name", spec, item);
    char* end = nullptr;
    double w = std::strtod(value.c_str(), &end);
    POLDER_CHECK(!value.empty() && end == value.c_str() + value.size(),
                 "blend \"{}\": weight \"{}\" of dataset {} is not a number", spec, value, name);
    POLDER_CHECK(seen.insert(name).second, "blend \"{}\": dataset {} appears twice", spec, name);
    out.emplace_back(name, w);
  }
  POLDER_CHECK(!out.empty(), "blend \"{}\" names no dataset (expected e.g. \"nl: 0.4, en: 0.6\")", spec);
  return out;
}

void apply_blend(std::vector<DatasetSpec>& datasets, std::string_view spec) {
  auto entries = parse_blend(spec);
  std::vector<std::string> known;
  for (const auto& d : datasets) known.push_back(d.name);
  for (auto& d : datasets) d.weight = 0.0;
  for (const auto& [name, w] : entries) {
    auto it =
        std::find_if(datasets.begin(), datasets.end(), [&](const DatasetSpec& d) { return d.name == name; });
    POLDER_CHECK(it != datasets.end(), "blend \"{}\": unknown dataset {} (known datasets: {})", spec, name,
                 known);
    it->weight = w;
  }
  normalise_weights(datasets);  // validates
}

std::vector<double> normalise_weights(const std::vector<DatasetSpec>& datasets) {
  POLDER_CHECK(!datasets.empty(), "the data loader needs at least one dataset");
  double sum = 0;
  for (const auto& d : datasets) {
    POLDER_CHECK(std::isfinite(d.weight) && d.weight >= 0,
                 "dataset {}: blend weight {} is invalid (expected a finite number >= 0)", d.name, d.weight);
    sum += d.weight;
  }
  POLDER_CHECK(sum > 0, "blend weights sum to {} (expected a positive sum; they are normalised by it)", sum);
  std::vector<double> w;
  for (const auto& d : datasets) w.push_back(d.weight / sum);
  return w;
}

// ---------------------------------------------------------------------------------------------------------------
// Train/validation split

DocumentSplit split_documents(int64_t num_documents, double valid_fraction, uint64_t split_seed,
                              const std::string& what) {
  POLDER_CHECK(valid_fraction >= 0 && valid_fraction < 1, "valid_fraction is {} (expected 0 <= fraction < 1)",
               valid_fraction);
  POLDER_CHECK(num_documents < std::numeric_limits<int32_t>::max(),
               "{}: {} documents exceed the loader's int32 ids", what, num_documents);
  int64_t n_valid = 0;
  if (valid_fraction > 0) {
    n_valid = std::max<int64_t>(1, std::llround(valid_fraction * static_cast<double>(num_documents)));
    POLDER_CHECK(
        n_valid < num_documents,
        "{}: {} documents are too few to hold out {} for validation (valid_fraction {}) and keep any for "
        "training",
        what, num_documents, n_valid, valid_fraction);
  }
  std::vector<char> is_valid(static_cast<size_t>(num_documents), 0);
  if (n_valid > 0) {
    std::vector<int32_t> perm(static_cast<size_t>(num_documents));
    for (int32_t i = 0; i < static_cast<int32_t>(num_documents); ++i) perm[static_cast<size_t>(i)] = i;
    deterministic_shuffle(perm, split_seed);
    for (int64_t i = 0; i < n_valid; ++i) is_valid[static_cast<size_t>(perm[static_cast<size_t>(i)])] = 1;
  }
  DocumentSplit split;
  split.valid.reserve(static_cast<size_t>(n_valid));
  split.train.reserve(static_cast<size_t>(num_documents - n_valid));
  for (int32_t d = 0; d < static_cast<int32_t>(num_documents); ++d)
    (is_valid[static_cast<size_t>(d)] ? split.valid : split.train).push_back(d);
  return split;
}

// ---------------------------------------------------------------------------------------------------------------
// Packing

PackedDataset::PackedDataset(std::shared_ptr<const IndexedDataset> dataset, std::string name,
                             std::vector<int32_t> documents, int64_t seq_len, uint64_t seed, bool shuffle)
    : dataset_(std::move(dataset)),
      name_(std::move(name)),
      documents_(std::move(documents)),
      seq_len_(seq_len),
      seed_(seed),
      shuffle_(shuffle) {
  POLDER_CHECK(seq_len_ > 0, "seq_len must be positive, got {}", seq_len_);
  for (int32_t d : documents_) num_tokens_ += dataset_->document_length(d);
  samples_per_epoch_ = num_tokens_ > 0 ? (num_tokens_ - 1) / seq_len_ : 0;
  POLDER_CHECK(
      samples_per_epoch_ > 0,
      "dataset {} ({}): this split has {} documents and {} tokens, fewer than one sample of seq_len + 1 = "
      "{} tokens",
      name_, dataset_->prefix(), documents_.size(), num_tokens_, seq_len_ + 1);
}

std::vector<int32_t> PackedDataset::epoch_order(int64_t epoch) const {
  std::vector<int32_t> order = documents_;
  if (shuffle_) deterministic_shuffle(order, mix_seed(seed_, static_cast<uint64_t>(epoch)));
  return order;
}

void PackedDataset::build_epoch(int64_t epoch) {
  order_ = epoch_order(epoch);
  sample_start_.resize(static_cast<size_t>(samples_per_epoch_));
  sample_offset_.resize(static_cast<size_t>(samples_per_epoch_));
  // Sample k starts at token k * seq_len of the concatenated stream: record which document holds that token.
  int64_t k = 0, doc_start = 0;
  for (size_t i = 0; i < order_.size() && k < samples_per_epoch_; ++i) {
    const int64_t len = dataset_->document_length(order_[i]);
    while (k < samples_per_epoch_ && k * seq_len_ < doc_start + len) {
      sample_start_[static_cast<size_t>(k)] = static_cast<int64_t>(i);
      sample_offset_[static_cast<size_t>(k)] = k * seq_len_ - doc_start;
      ++k;
    }
    doc_start += len;
  }
  cached_epoch_ = epoch;
}

void PackedDataset::sample(int64_t index, int32_t* out) {
  POLDER_CHECK(index >= 0, "dataset {}: negative sample index {}", name_, index);
  const int64_t epoch = index / samples_per_epoch_, k = index % samples_per_epoch_;
  if (epoch != cached_epoch_) build_epoch(epoch);
  size_t i = static_cast<size_t>(sample_start_[static_cast<size_t>(k)]);
  int64_t offset = sample_offset_[static_cast<size_t>(k)];
  int64_t remaining = seq_len_ + 1;
  // (tokens - 1) / seq_len samples guarantee that the last one ends inside the stream.
  while (remaining > 0) {
    POLDER_CHECK(i < order_.size(), "dataset {}: sample {} runs past the end of epoch {}", name_, index,
                 epoch);
    const int64_t n = std::min(remaining, dataset_->document_length(order_[i]) - offset);
    if (n > 0) {
      dataset_->read_document(order_[i], offset, n, out);
      out += n;
      remaining -= n;
    }
    offset = 0;
    ++i;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Loader

DataLoader::DataLoader(LoaderConfig config) : config_(std::move(config)) {
  const auto& c = config_;
  POLDER_CHECK(c.split == "train" || c.split == "valid",
               "loader split is \"{}\" (expected \"train\" or \"valid\")", c.split);
  POLDER_CHECK(c.split == "train" || c.valid_fraction > 0,
               "loader split is \"valid\" but valid_fraction is {}: there is no validation split",
               c.valid_fraction);
  POLDER_CHECK(c.seq_len > 0, "seq_len must be positive, got {}", c.seq_len);
  POLDER_CHECK(c.micro_batch > 0, "micro_batch must be positive, got {}", c.micro_batch);
  POLDER_CHECK(c.dp_size > 0 && c.dp_rank >= 0 && c.dp_rank < c.dp_size,
               "dp_rank {} is outside [0, dp_size = {})", c.dp_rank, c.dp_size);
  std::set<std::string> names;
  for (const auto& d : c.datasets) {
    POLDER_CHECK(!d.name.empty(), "dataset {} has no name", d.prefix);
    POLDER_CHECK(names.insert(d.name).second, "dataset name {} is used twice", d.name);
  }
  weights_ = normalise_weights(c.datasets);
  for (const auto& d : c.datasets) {
    auto ds = std::make_shared<const IndexedDataset>(d.prefix);
    if (c.vocab_size > 0) ds->check_vocab(c.vocab_size);
    DocumentSplit split = split_documents(ds->num_documents(), c.valid_fraction, c.split_seed,
                                          "dataset " + d.name + " (" + d.prefix + ")");
    auto docs = c.split == "train" ? std::move(split.train) : std::move(split.valid);
    packed_.push_back(std::make_unique<PackedDataset>(ds, d.name, std::move(docs), c.seq_len,
                                                      mix_seed(c.seed, hash_name(d.name)), c.shuffle));
  }
  dataset_samples_.assign(packed_.size(), 0);
}

size_t DataLoader::pick(int64_t global_sample) const {
  // The dataset whose realised count lags its target the most; ties go to the first. std::fma rounds once on
  // every platform, so a compiler contracting w * n - c differently cannot change the schedule.
  size_t best = 0;
  double best_error = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < weights_.size(); ++i) {
    if (weights_[i] <= 0) continue;
    double error = std::fma(weights_[i], static_cast<double>(global_sample + 1),
                            -static_cast<double>(dataset_samples_[i]));
    if (error > best_error) {
      best_error = error;
      best = i;
    }
  }
  return best;
}

Batch DataLoader::next() {
  const int64_t mb = config_.micro_batch, row = config_.seq_len + 1;
  const int64_t chunk = mb * config_.dp_size, first = config_.dp_rank * mb;
  Batch b;
  b.batch_size = mb;
  b.seq_len = config_.seq_len;
  b.tokens.resize(static_cast<size_t>(mb * row));
  b.dataset.resize(static_cast<size_t>(mb));
  b.first_global_sample = consumed_;
  // Every rank walks the whole chunk's schedule (cheap) so the per-dataset counters stay identical on all
  // ranks; only this rank's rows are read.
  for (int64_t j = 0; j < chunk; ++j) {
    const size_t i = pick(consumed_ + j);
    const int64_t local = dataset_samples_[i]++;
    if (j >= first && j < first + mb) {
      const int64_t r = j - first;
      packed_[i]->sample(local, b.tokens.data() + r * row);
      b.dataset[static_cast<size_t>(r)] = static_cast<int32_t>(i);
    }
  }
  consumed_ += chunk;
  return b;
}

void DataLoader::reset() {
  consumed_ = 0;
  std::fill(dataset_samples_.begin(), dataset_samples_.end(), 0);
}

int64_t DataLoader::epoch(size_t i) const {
  return dataset_samples_.at(i) / packed_.at(i)->samples_per_epoch();
}

nlohmann::json DataLoader::state() const {
  nlohmann::json datasets = nlohmann::json::array();
  nlohmann::json samples = nlohmann::json::object();
  for (size_t i = 0; i < packed_.size(); ++i) {
    const auto& p = *packed_[i];
    datasets.push_back({{"name", p.name()},
                        {"weight", weights_[i]},
                        {"documents", p.num_documents()},
                        {"tokens", p.num_tokens()},
                        {"samples_per_epoch", p.samples_per_epoch()},
                        {"epoch", epoch(i)}});
    samples[p.name()] = dataset_samples_[i];
  }
  return {{"format", kStateFormat},           {"split", config_.split},     {"seed", config_.seed},
          {"split_seed", config_.split_seed}, {"shuffle", config_.shuffle}, {"seq_len", config_.seq_len},
          {"consumed_samples", consumed_},    {"dataset_samples", samples}, {"datasets", datasets}};
}

void DataLoader::load_state(const nlohmann::json& s) {
  try {
    load_state_checked(s);
  } catch (const nlohmann::json::exception& e) {
    POLDER_FAIL("loader state is malformed: {}", e.what());
  }
}

void DataLoader::load_state_checked(const nlohmann::json& s) {
  POLDER_CHECK(s.is_object() && s.contains("format") && s["format"] == kStateFormat,
               "loader state: format is {} (expected \"{}\")",
               s.is_object() && s.contains("format") ? s["format"].dump() : std::string("missing"),
               kStateFormat);
  const nlohmann::json mine = state();
  // The fingerprint: what must match for the counters to mean the same samples.
  for (const char* key : {"split", "seed", "split_seed", "shuffle", "seq_len"}) {
    POLDER_CHECK(s.contains(key) && s[key] == mine[key], "loader state: {} is {} but this loader has {}", key,
                 s.contains(key) ? s[key].dump() : std::string("missing"), mine[key].dump());
  }
  const auto& theirs = s.at("datasets");
  POLDER_CHECK(theirs.is_array() && theirs.size() == packed_.size(),
               "loader state has {} datasets but this loader has {}", theirs.size(), packed_.size());
  for (size_t i = 0; i < packed_.size(); ++i) {
    const auto& t = theirs[i];
    const auto& m = mine["datasets"][i];
    for (const char* key : {"name", "documents", "tokens"}) {
      POLDER_CHECK(t.contains(key) && t[key] == m[key],
                   "loader state: dataset {} has {} {} but this loader has {}", i, key,
                   t.contains(key) ? t[key].dump() : std::string("missing"), m[key].dump());
    }
    POLDER_CHECK(std::abs(t.at("weight").get<double>() - weights_[i]) < 1e-12,
                 "loader state: dataset {} has blend weight {} but this loader has {}",
                 m["name"].get<std::string>(), t.at("weight").get<double>(), weights_[i]);
  }
  const int64_t consumed = s.at("consumed_samples").get<int64_t>();
  std::vector<int64_t> counts;
  int64_t sum = 0;
  for (const auto& p : packed_) {
    int64_t n = s.at("dataset_samples").at(p->name()).get<int64_t>();
    POLDER_CHECK(n >= 0, "loader state: dataset {} has {} consumed samples", p->name(), n);
    counts.push_back(n);
    sum += n;
  }
  POLDER_CHECK(consumed >= 0 && sum == consumed,
               "loader state: per-dataset samples sum to {} but consumed_samples is {}", sum, consumed);
  consumed_ = consumed;
  dataset_samples_ = std::move(counts);
}

}  // namespace polder::data
