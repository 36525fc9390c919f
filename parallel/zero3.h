// ZeRO-3 (parallel.zero: 3): parameters sharded over the replica group like the gradients and optimizer
// state of ZeRO-2. Between uses every rank keeps only its contiguous shard of the flat parameter space
// (ParameterSet::shard_parameters); a unit (the embedding, a layer, the final norm with the LM head) is
// all-gathered into its buffer just before its forward, released right after it, gathered again just before
// its backward (an autograd boundary at the unit's output) and released when its backward is done (a boundary
// at its input). The next unit's gather is posted while the current one computes (prefetch), forward and
// backward. Gradients take ZeRO-2's path (per-parameter gradients, bucket reduce-scatters into the owners'
// shards); the optimizer updates the shard in place, so no all-gather follows the step.
//
// Gathers per micro-batch: every unit twice (forward, backward), plus nothing for recompute (a recomputed
// block runs inside its backward, after the backward gather); units used by several micro-batches are
// gathered again for each (no caching across micro-batches: that would hold the parameters as ZeRO-2 does).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/parameter_set.h"
#include "core/tensor.h"
#include "parallel/comm.h"

namespace polder::parallel {

class Zero3 {
 public:
  // params: already sharded (shard [r s, (r + 1) s) on replica rank r of `replicas`, s = shard size).
  Zero3(ParameterSet& params, Comm& replicas);
  Zero3(const Zero3&) = delete;
  Zero3& operator=(const Zero3&) = delete;
  ~Zero3();

  // The unit of a parameter (-1: none).
  int unit(const std::string& param_name) const { return params_.unit_of(param_name); }
  int num_units() const { return static_cast<int>(params_.units().size()); }
  // Unit u holds its parameters when this returns (waits for its prefetch, or gathers now).
  void gather(int u);
  // Posts unit u's gather in the background (nothing when resident or in flight, or u out of range).
  void prefetch(int u);
  void release(int u);
  void release_all();

  // Identity autograd boundaries around a unit's use: the backward of exit() gathers `units` (and prefetches
  // `next`, the unit whose backward comes after), the backward of entry() releases them.
  Tensor exit(const Tensor& y, const std::vector<int>& units, int next = -1);
  Tensor entry(const Tensor& x, const std::vector<int>& units);

 private:
  void post(int u);
  ParameterSet& params_;
  Comm& comm_;
  int64_t shard_ = 0;
  std::vector<char> resident_;
  std::map<int, std::unique_ptr<Work>> pending_;
};

}  // namespace polder::parallel
