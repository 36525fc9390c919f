// Data-parallel gradient synchronisation over the flat gradient buffer. Plain DP: bucketed all-reduces started
// from the parameters' post-accumulate hooks on the last micro-batch (overlapping the rest of backward).
// ZeRO-1: one reduce-scatter so rank r holds the averaged chunk r. ZeRO-2: the model keeps only its gradient
// shard; every micro-batch, each bucket is reduce-scattered into the shards as soon as backward has produced
// it and the per-parameter gradients are released. Also: the tied embedding's gradient sum between the first
// and last pipeline stage (under ZeRO-2 before its own, deferred bucket is reduce-scattered), and the global
// gradient-norm reduction.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/llama/model.h"
#include "parallel/mesh.h"
#include "train/config.h"

namespace polder::train {

// The lowest failing rank's message, known to every rank of `world` afterwards (empty: no rank failed). One
// all-reduce; two broadcasts only on failure. Every rank calls it, failed or not, so it cannot hang.
std::string agree_on_failure(parallel::Comm& world, const std::string& mine);

// The first collective of a run. Each rank has validated its config against the world size (`error`: the
// message, empty when valid) and passes its resolved YAML. Throws the same ConfigError on every rank when
// some rank's config is invalid (the lowest such rank's message) or the ranks' configs differ, so that every
// rank exits alike and cli/main.cpp prints the one line on rank 0.
void agree_on_config(parallel::Comm& world, const std::string& error, const std::string& config_yaml);

class GradSync {
 public:
  // zero: 0 (plain data parallel), 1 or 2. For zero 2 the model must have been built with its gradient shard
  // equal to owned_range(flat size, dp, dp rank).
  // scalar_mesh: the (host) mesh for the scalar gradient-norm reduction when `mesh` carries device tensors over
  // NCCL (nullptr: `mesh` itself).
  GradSync(models::Llama& model, parallel::Mesh& mesh, int zero, int64_t bucket_mb,
           parallel::Mesh* scalar_mesh = nullptr);
  ~GradSync();
  // The flat range rank `rank` of `dp` owns under ZeRO (n is a multiple of dp).
  static std::pair<int64_t, int64_t> owned_range(int64_t n, int dp, int rank) { return {n / dp * rank, n / dp * (rank + 1)}; }
  // Plain DP hooks act only when armed: arm before the last micro-batch's backward. ZeRO-2 reduces every
  // micro-batch, armed or not.
  void arm(bool on) { armed_ = on; }
  // Completes the reduction; afterwards the owned gradient range holds the average over data-parallel ranks of
  // the summed micro-batch gradients.
  void finish();
  // Sums a local value over the ranks that hold different parts of the model (tp, pp, and dp under ZeRO).
  double reduce_norm_sq(double local);
  // ZeRO: the flat range [begin, end) this rank owns; all_gather_params() assembles the updated parameters.
  int64_t owned_begin() const { return owned_begin_; }
  int64_t owned_end() const { return owned_end_; }
  void all_gather_params();

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;  // flat range
    std::vector<size_t> params;  // indices into model.parameters()
    int expected = 0, ready = 0;
    std::vector<bool> fired;     // ZeRO-2: which parameters have a gradient waiting since the last reduction
    bool deferred = false;       // ZeRO-2: the tied embedding, reduced in finish() after the cross-stage sum
    std::unique_ptr<parallel::Work> work;
  };
  void build_buckets(int64_t bucket_mb);
  void launch(Bucket& b);
  void reduce_bucket_into_shard(Bucket& b);  // ZeRO-2
  void sum_tied_embedding();
  void reduce_data_parallel();

  models::Llama& model_;
  parallel::Mesh& mesh_;
  parallel::Mesh& scalar_mesh_;
  int zero_;
  bool armed_ = false;
  bool overlap_ = true;
  std::vector<Bucket> buckets_;
  std::shared_ptr<parallel::Comm> embed_group_;  // first and last stage of this (dp, tp) column, when tied
  int64_t owned_begin_ = 0, owned_end_ = 0;
};

}  // namespace polder::train
