// The training data loader: packs the documents of indexed datasets into samples of seq_len+1 tokens,
// shuffles deterministically from a seed (a new permutation per epoch), splits train/validation by document,
// blends several datasets by weight and shards by data-parallel rank. Its position is a few counters
// (state()), so a resumed run sees exactly the samples it would have seen. Algorithms in docs/DATA_FORMAT.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/indexed_dataset.h"

namespace polder::data {

// splitmix64: a tiny, fully specified generator, so shuffles are identical on every platform and standard
// library (std::shuffle and std::uniform_int_distribution are not).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next();
  uint64_t uniform(uint64_t n);  // unbiased draw in [0, n) by rejection; n > 0

 private:
  uint64_t state_;
};

// Fisher-Yates with SplitMix64::uniform: element i (from the back) swaps with a uniform j in [0, i].
void deterministic_shuffle(std::vector<int32_t>& v, uint64_t seed);

struct DatasetSpec {
  std::string name;     // "nl", "en", ... (names blends, state and per-row dataset ids)
  std::string prefix;   // <prefix>.bin / <prefix>.idx
  double weight = 1.0;  // relative; normalised over all datasets. 0 = opened and validated but never sampled.
};

// "nl: 0.4, en: 0.3, de: 0.15, fr: 0.15" -> {{"nl", 0.4}, ...}. Throws on syntax errors and duplicate names.
std::vector<std::pair<std::string, double>> parse_blend(std::string_view spec);
// Sets the weights of `datasets` from a blend spec. Every name in the spec must be one of the datasets;
// datasets the spec does not name get weight 0.
void apply_blend(std::vector<DatasetSpec>& datasets, std::string_view spec);
// Weights divided by their sum; throws for an empty list, negative or non-finite weights, or a sum that is
// not > 0.
std::vector<double> normalise_weights(const std::vector<DatasetSpec>& datasets);

// Train/validation split of a dataset's documents: a permutation of [0, num_documents) from split_seed; its
// first round(valid_fraction * num_documents) entries (at least 1 when valid_fraction > 0) are the validation
// documents. Both lists are returned in file order. The split depends only on (num_documents, valid_fraction,
// split_seed).
struct DocumentSplit {
  std::vector<int32_t> train, valid;
};
DocumentSplit split_documents(int64_t num_documents, double valid_fraction, uint64_t split_seed,
                              const std::string& what);

struct LoaderConfig {
  std::vector<DatasetSpec> datasets;
  int64_t seq_len = 2048;   // a sample holds seq_len + 1 tokens: inputs [:-1], targets [1:]
  int64_t micro_batch = 1;  // rows per next() on this rank
  int64_t dp_rank = 0;
  int64_t dp_size = 1;
  uint64_t seed = 1234;         // epoch shuffles
  std::string split = "train";  // "train" or "valid"
  double valid_fraction = 0.0;  // share of each dataset's documents held out for validation, in [0, 1)
  uint64_t split_seed =
      0x706f6c646572ULL;   // fixed by default: changing `seed` must not move documents across
  bool shuffle = true;     // false: documents in file order every epoch
  int64_t vocab_size = 0;  // > 0: every token is checked against it when the datasets are opened
};

// One dataset's documents of one split, packed GPT-style: per epoch the documents are concatenated in a
// shuffled order and cut into samples of seq_len+1 tokens that start every seq_len tokens (consecutive
// samples share one token). samples_per_epoch = (tokens - 1) / seq_len; the tail (< seq_len tokens) of each
// epoch is not used.
class PackedDataset {
 public:
  PackedDataset(std::shared_ptr<const IndexedDataset> dataset, std::string name,
                std::vector<int32_t> documents, int64_t seq_len, uint64_t seed, bool shuffle);

  const std::string& name() const { return name_; }
  int64_t num_documents() const { return static_cast<int64_t>(documents_.size()); }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t samples_per_epoch() const { return samples_per_epoch_; }
  // Sample `index` counted across epochs (epoch = index / samples_per_epoch); writes seq_len+1 tokens to out.
  void sample(int64_t index, int32_t* out);
  // The document order of an epoch (dataset document ids).
  std::vector<int32_t> epoch_order(int64_t epoch) const;

 private:
  void build_epoch(int64_t epoch);

  std::shared_ptr<const IndexedDataset> dataset_;
  std::string name_;
  std::vector<int32_t> documents_;  // this split's documents, file order
  int64_t seq_len_;
  uint64_t seed_;
  bool shuffle_;
  int64_t num_tokens_ = 0;
  int64_t samples_per_epoch_ = 0;
  int64_t cached_epoch_ = -1;
  std::vector<int32_t> order_;          // (documents,) this epoch's order
  std::vector<int64_t> sample_start_;   // (samples_per_epoch,) position in order_ where sample k starts
  std::vector<int64_t> sample_offset_;  // (samples_per_epoch,) token offset inside that document
};

struct Batch {
  int64_t batch_size = 0;
  int64_t seq_len = 0;
  std::vector<int32_t> tokens;   // (batch_size, seq_len + 1) row-major; inputs = [:, :-1], targets = [:, 1:]
  std::vector<int32_t> dataset;  // (batch_size,) index into LoaderConfig::datasets of each row
  int64_t first_global_sample = 0;  // global sample index of this step's chunk (all ranks)
};

// Global sample g (0, 1, 2, ...) is drawn from dataset argmax_i (w_i * (g + 1) - n_i), n_i = samples taken
// from i so far (Megatron's blending), and is that dataset's sample n_i. Each next() consumes the next
// micro_batch * dp_size global samples; rank r gets the contiguous slice [r * micro_batch, (r + 1) *
// micro_batch) of them (Megatron's pretraining sampler). A global batch of micro_batch x accumulation x
// dp_size samples is `accumulation` consecutive next() calls on every rank.
class DataLoader {
 public:
  explicit DataLoader(LoaderConfig config);

  Batch next();
  // Back to the first sample of the split (evaluation: iterate the validation split from the start).
  void reset();

  // {"format", "split", "consumed_samples", "dataset_samples": {name: n}, plus a fingerprint (seed, seq_len,
  // datasets with weights, documents and tokens) that load_state checks so a mismatched resume fails loudly.
  nlohmann::json state() const;
  void load_state(const nlohmann::json& state);

  const LoaderConfig& config() const { return config_; }
  int64_t consumed_samples() const { return consumed_; }  // global samples consumed, all ranks together
  size_t num_datasets() const { return packed_.size(); }
  const PackedDataset& dataset(size_t i) const { return *packed_[i]; }
  int64_t epoch(size_t i) const;  // current epoch of dataset i
  const std::vector<double>& weights() const { return weights_; }

 private:
  size_t pick(int64_t global_sample) const;  // the blend schedule's choice; does not advance
  void load_state_checked(const nlohmann::json& state);

  LoaderConfig config_;
  std::vector<double> weights_;
  std::vector<std::unique_ptr<PackedDataset>> packed_;
  int64_t consumed_ = 0;
  std::vector<int64_t> dataset_samples_;  // samples taken from each dataset so far (n_i)
};

}  // namespace polder::data
