// ZeRO-3 unit gathers and their autograd boundaries (parallel/zero3.h).
#include "parallel/zero3.h"

#include <algorithm>

#include "core/error.h"
#include "core/ops_util.h"

namespace polder::parallel {
using ops::detail::record;

Zero3::Zero3(ParameterSet& params, Comm& replicas) : params_(params), comm_(replicas) {
  POLDER_CHECK(params.params_sharded(), "Zero3: the parameters are not sharded");
  shard_ = params.flat_params().numel();
  POLDER_CHECK(params.param_offset() == shard_ * comm_.rank(),
               "Zero3: replica rank {} holds the shard at {} of size {}, expected it at {}", comm_.rank(),
               params.param_offset(), shard_, shard_ * comm_.rank());
  resident_.assign(params.units().size(), 0);
}

Zero3::~Zero3() {
  try {
    for (auto& [u, w] : pending_) w->wait();
  } catch (...) {  // a destructor must not throw
  }
}

void Zero3::post(int u) {
  ParameterSet::Unit& unit = params_.units()[static_cast<size_t>(u)];
  unit.buffer.storage()->materialize();
  // Rank r's piece of the unit: the overlap of [begin, end) with its shard [r s, (r + 1) s).
  std::vector<int64_t> counts(static_cast<size_t>(comm_.size()));
  for (int r = 0; r < comm_.size(); ++r) {
    const int64_t lo = std::max(unit.begin, shard_ * r), hi = std::min(unit.end, shard_ * (r + 1));
    counts[static_cast<size_t>(r)] = std::max<int64_t>(0, hi - lo);
  }
  const int64_t mine_lo = std::max(unit.begin, params_.param_offset());
  const Tensor mine = params_.flat_params().narrow(0, std::min(mine_lo - params_.param_offset(), shard_),
                                                   counts[static_cast<size_t>(comm_.rank())]);
  pending_[u] = comm_.all_gather_v_async(mine, unit.buffer, counts);
  resident_[static_cast<size_t>(u)] = 1;
}

void Zero3::prefetch(int u) {
  if (u < 0 || u >= num_units() || resident_[static_cast<size_t>(u)]) return;
  post(u);
}

void Zero3::gather(int u) {
  POLDER_CHECK(u >= 0 && u < num_units(), "Zero3: unit {} of {}", u, num_units());
  if (!resident_[static_cast<size_t>(u)]) post(u);
  auto it = pending_.find(u);
  if (it != pending_.end()) {
    it->second->wait();
    pending_.erase(it);
  }
}

void Zero3::release(int u) {
  if (u < 0 || u >= num_units() || !resident_[static_cast<size_t>(u)]) return;
  auto it = pending_.find(u);
  if (it != pending_.end()) {  // the collective still writes into the buffer
    it->second->wait();
    pending_.erase(it);
  }
  params_.units()[static_cast<size_t>(u)].buffer.storage()->release();
  resident_[static_cast<size_t>(u)] = 0;
}

void Zero3::release_all() {
  for (int u = 0; u < num_units(); ++u) release(u);
}

Tensor Zero3::exit(const Tensor& y, const std::vector<int>& units, int next) {
  Tensor out = y.detach();
  record("zero3_exit", {y}, {&out}, [&] {
    return [this, units, next](std::vector<Tensor>& g) {
      for (int u : units) gather(u);
      prefetch(next);
      return std::vector<Tensor>{g[0]};
    };
  });
  return out;
}

Tensor Zero3::entry(const Tensor& x, const std::vector<int>& units) {
  Tensor out = x.detach();
  record("zero3_entry", {x}, {&out}, [&] {
    return [this, units](std::vector<Tensor>& g) {
      for (int u : units) release(u);
      return std::vector<Tensor>{g[0]};
    };
  });
  return out;
}

}  // namespace polder::parallel
