// Mesh: the world as a pp x dp x cp x tp grid with tp fastest, then cp, as Megatron orders it
// (tensor-parallel peers are neighbouring ranks, so on the same node, and context-parallel peers next):
// global rank =
// ((pp_rank * dp + dp_rank) * cp + cp_rank) * tp + tp_rank. Each rank gets one communicator per axis, split
// from the world; a group's rank equals the axis rank. The replicas of a parameter shard are the dp x cp
// ranks with the same (pp, tp): cp ranks hold the same parameters and see other tokens of the same sequences,
// so gradients are averaged and ZeRO shards over replicas(), while the data loader splits batches over dp
// only. Device communicators: a Mesh is built over host comms (world_comm(): single or MPI, the CPU path and
// the bootstrap) and on_device(cuda) gives its twin over NCCL comms, the same layout split the same way, so
// the constructor and the CPU path are unchanged.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parallel/comm.h"

namespace polder::parallel {

class Mesh {
 public:
  // dp = 0 derives dp = world size / (tp * pp). polder::Error naming tp, pp, dp and the world size when the
  // product does not match (or does not divide).
  Mesh(std::shared_ptr<Comm> world, int tp, int pp, int dp = 0, int cp = 1);

  int tp_size() const { return tp_; }
  int pp_size() const { return pp_; }
  int dp_size() const { return dp_; }
  int cp_size() const { return cp_; }
  int tp_rank() const { return tp_rank_; }
  int pp_rank() const { return pp_rank_; }
  int dp_rank() const { return dp_rank_; }
  int cp_rank() const { return cp_rank_; }
  // The replica group (dp x cp ranks of the same (pp, tp)): its size and this rank's place, dp-major.
  int replica_size() const { return dp_ * cp_; }
  int replica_rank() const { return dp_rank_ * cp_ + cp_rank_; }
  int rank() const { return world_->rank(); }
  int world_size() const { return world_->size(); }

  Comm& world() const { return *world_; }
  Comm& tp() const { return *tp_comm_; }  // ranks with the same (pp, dp): size tp, rank tp_rank
  Comm& dp() const { return *dp_comm_; }  // ranks with the same (pp, cp, tp): size dp, rank dp_rank
  Comm& cp() const { return *cp_comm_; }  // ranks with the same (pp, dp, tp): size cp, rank cp_rank
  Comm& pp() const { return *pp_comm_; }  // ranks with the same (dp, cp, tp): size pp, rank pp_rank
  Comm& replicas() const { return *replica_comm_; }  // same (pp, tp): size dp * cp, rank replica_rank()

  bool first_stage() const { return pp_rank_ == 0; }
  bool last_stage() const { return pp_rank_ == pp_ - 1; }
  // Global ranks of the same (dp, cp, tp) position on the next / previous stage, wrapping around (interleaved
  // schedules send from the last stage to the first). On pp(), the same peers are pp_rank +- 1 mod pp.
  int next_stage_rank() const { return global_rank(tp_rank_, (pp_rank_ + 1) % pp_, dp_rank_, cp_rank_); }
  int prev_stage_rank() const {
    return global_rank(tp_rank_, (pp_rank_ + pp_ - 1) % pp_, dp_rank_, cp_rank_);
  }
  int global_rank(int tp_rank, int pp_rank, int dp_rank, int cp_rank = 0) const {
    return ((pp_rank * dp_ + dp_rank) * cp_ + cp_rank) * tp_ + tp_rank;
  }

  // The same layout over communicators for `device`. For a CUDA device: an NCCL twin of world() bootstrapped
  // over it (make_nccl_comm, same ranks and name), split by the constructor with the same colors and keys, so
  // every rank keeps its place and its groups' ranks. For the CPU: a copy sharing this mesh's communicators.
  // Groups added with add_group() are not mirrored (split the twin's world() again for them). Collective over
  // the world; polder::Error when this build has no NCCL.
  Mesh on_device(Device device) const;

  // Byte counters of world, tp, dp, pp and the groups added with add_group() together.
  CommStats stats() const;
  // Another communicator built from this mesh (e.g. the tied-embedding group) whose traffic stats() includes.
  void add_group(std::shared_ptr<Comm> group);
  void reset_stats();
  std::string describe() const;  // "tp=2 pp=2 dp=1: rank 3 = (pp 1, dp 0, tp 1)" (cp named when > 1)

 private:
  std::shared_ptr<Comm> world_, tp_comm_, dp_comm_, pp_comm_, cp_comm_, replica_comm_;
  std::vector<std::shared_ptr<Comm>> extra_;
  int tp_, pp_, dp_, cp_;
  int tp_rank_ = 0, pp_rank_ = 0, dp_rank_ = 0, cp_rank_ = 0;
};

}  // namespace polder::parallel
