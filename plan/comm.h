// Communication of one train_step() per rank, predicted from the config: every collective and send the
// trainer issues (tensor-parallel activations, vocabulary-parallel cross-entropy, pipeline activations and
// gradients, the data-parallel gradient reduction or ZeRO reduce-scatter / all-gather, the tied embedding's
// sum, the scalars of the loss and the gradient norm), with its group, buffer size and count. Counted bytes
// use the Comm counters' ring accounting (parallel/comm.h), so the sum per kind equals Mesh::stats() of a
// real step (tests/test_mpi_plan.cpp); the step-time model prices each op on its link with an alpha-beta
// model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/config.h"

namespace polder::plan {

enum class CollKind { all_reduce, reduce_scatter, all_gather, p2p };
// dp: the replicas (dp x cp ranks), or hybrid sharding's cross-group; zero: hybrid sharding's shard group.
enum class CommGroup { tp, dp, pp, embedding, cp, zero };
const char* coll_kind_name(CollKind k);
const char* comm_group_name(CommGroup g);

struct CommOp {
  CommGroup group = CommGroup::tp;
  CollKind kind = CollKind::all_reduce;
  int64_t group_size = 1;
  // n of comm.h: the whole buffer (reduce-scatter: its input; all-gather: its output).
  double buffer_bytes = 0;
  double count = 0;  // calls per step
  // Data-parallel gradient all-reduce buckets that polder starts during the last micro-batch's backward.
  bool overlaps_backward = false;
  // Issued inside every micro-batch's forward/backward (on the critical path of each pipeline unit) rather
  // than once per step.
  bool per_micro_batch = false;
  std::string what;
  // Bytes this rank sends for all `count` calls (ring accounting).
  double counted_bytes() const;
};

struct CommVolume {
  std::vector<CommOp> ops;
  double bytes(CollKind kind) const;  // counted bytes of every op of this kind
  double calls(CollKind kind) const;
  double bytes(CommGroup group) const;
  double total_bytes() const;
};

// The communication of the rank at pipeline stage `stage` and replica rank `dp_rank` (dp x cp; any tp rank)
// for config.parallel (dp set) and config.train. Ranks differ only by stage, except for the sequence-parallel
// norm gradients under ZeRO (each dp rank sums the norms in its own shard).
CommVolume predict_comm(const Config& config, int64_t stage, int64_t dp_rank = 0);

}  // namespace polder::plan
