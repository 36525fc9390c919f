// Data-parallel gradient synchronisation over the flat gradient buffer. Plain DP: bucketed all-reduces
// started from the parameters' post-accumulate hooks on the last micro-batch (overlapping the rest of
// backward). ZeRO-1: one reduce-scatter so rank r holds the averaged chunk r. ZeRO-2: the model keeps only
// its gradient shard; every micro-batch, each bucket is reduce-scattered into the shards as soon as backward
// has produced it and the per-parameter gradients are released. Also: the tied embedding's gradient sum
// between the first and last pipeline stage (under ZeRO-2 before its own, deferred bucket is
// reduce-scattered), and the global gradient-norm reduction.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/parameter_set.h"
#include "parallel/mesh.h"

namespace polder::parallel {

struct GradSyncOptions {
  int zero = 0;  // 0 (plain data parallel), 1 or 2
  int64_t bucket_mb = 25;
  // Some parameters are shared across pipeline stages (Parameter::tied) on the first and last stage; every
  // rank must say so alike, since the stages' common group is created collectively.
  bool tied_across_stages = false;
  // The schedule runs one backward per parameter and micro-batch (not interleaved stages): plain DP may then
  // start bucket all-reduces from the last micro-batch's backward.
  bool overlap_with_backward = true;
  // Hybrid sharding (ZeRO >= 1): shard within groups of this many consecutive replicas (a node) and replicate
  // across the groups: parameter all-gathers and gradient reduce-scatters stay in the group, and only the
  // shard's all-reduce across groups crosses the network. 0, or the replica count: one group (plain ZeRO).
  int zero_group = 0;
};

class GradSync {
 public:
  // For zero 2 the parameter set must hold only its gradient shard, equal to owned_range(flat size, dp, dp
  // rank).
  // scalar_mesh: the (host) mesh for the scalar gradient-norm reduction when `mesh` carries device tensors
  // over NCCL (nullptr: `mesh` itself).
  GradSync(ParameterSet& params, Mesh& mesh, const GradSyncOptions& options, Mesh* scalar_mesh = nullptr);
  ~GradSync();
  // The flat range rank `rank` of `dp` owns under ZeRO (n is a multiple of dp). With hybrid groups, dp is the
  // group size and rank the place in the group (shard_size(), shard_rank()).
  static std::pair<int64_t, int64_t> owned_range(int64_t n, int dp, int rank) {
    return {n / dp * rank, n / dp * (rank + 1)};
  }
  // Plain DP hooks act only when armed: arm before the last micro-batch's backward. ZeRO-2 reduces every
  // micro-batch, armed or not.
  void arm(bool on) { armed_ = on; }
  // Completes the reduction; afterwards the owned gradient range holds the average over data-parallel ranks
  // of the summed micro-batch gradients.
  void finish();
  // Sums a local value over the ranks that hold different parts of the model (tp, pp, and dp under ZeRO).
  double reduce_norm_sq(double local);
  // ZeRO: the flat range [begin, end) this rank owns; all_gather_params() assembles the updated parameters.
  int64_t owned_begin() const { return owned_begin_; }
  int64_t owned_end() const { return owned_end_; }
  void all_gather_params();
  // The ranks one shard of the flat space is spread over (all replicas, or the hybrid group), and the ranks
  // holding the same shard in the other groups (size 1 without hybrid sharding).
  Comm& shard_comm() const { return *shard_; }
  Comm& cross_comm() const { return *cross_; }
  // owned_range's arguments for a layout: the shard group size and this rank's place in it (before building).
  static int shard_size(const Mesh& mesh, int zero_group) {
    return zero_group > 0 && zero_group < mesh.replica_size() ? zero_group : mesh.replica_size();
  }
  static int shard_rank(const Mesh& mesh, int zero_group) {
    return mesh.replica_rank() % shard_size(mesh, zero_group);
  }

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;  // flat range
    std::vector<size_t> params;  // indices into model.parameters()
    int expected = 0, ready = 0;
    std::vector<bool> fired;  // ZeRO-2: which parameters have a gradient waiting since the last reduction
    bool deferred = false;    // ZeRO-2: the tied embedding, reduced in finish() after the cross-stage sum
    std::unique_ptr<Work> work;
  };
  void build_buckets(int64_t bucket_mb);
  void launch(Bucket& b);
  void reduce_bucket_into_shard(Bucket& b);  // ZeRO-2
  void sum_tied_embedding();
  void reduce_data_parallel();

  ParameterSet& model_;
  Mesh& mesh_;
  Mesh& scalar_mesh_;
  int zero_;
  bool armed_ = false;
  bool overlap_ = true;
  std::vector<Bucket> buckets_;
  std::shared_ptr<Comm> embed_group_;    // first and last stage of this (dp, tp) column, when tied
  std::shared_ptr<Comm> shard_, cross_;  // the shard group and the same shard's group across them
  int64_t owned_begin_ = 0, owned_end_ = 0;
};

}  // namespace polder::parallel
