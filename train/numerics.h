// Non-finite steps: a loss or gradient norm that is NaN or infinite (an fp overflow, a bad batch) skips the
// step instead of poisoning the weights: no parameter, moment or optimizer-step change, and the LR schedule
// does not advance either (the schedule counts applied updates, so a skipped step is retried with the next
// batch at the same learning rate; the batch itself is consumed). The skip is logged with the step and the
// first parameter (in the model's order) whose gradient is not finite; train.max_nonfinite_steps in a row end
// the run. Also the debug.nan_* test hook that provokes it.
#pragma once

#include <cstdint>
#include <string>

#include "core/parameter_set.h"
#include "models/model.h"
#include "parallel/comm.h"
#include "train/config.h"

namespace polder::train {

// The first parameter, in the order of the unsharded model, with a non-finite gradient element in the flat
// range [begin, end) that this rank owns, over every rank of `world` (a collective); "" when there is none.
// Scans every gradient: call it only on the rare path.
std::string first_nonfinite_gradient(ParameterSet& model, const ModelConfig& config, int64_t begin,
                                     int64_t end, parallel::Comm& world);
inline std::string first_nonfinite_gradient(models::Model& model, int64_t begin, int64_t end,
                                            parallel::Comm& world) {
  return first_nonfinite_gradient(model.parameter_set(), model.config(), begin, end, world);
}

class NonFiniteGuard {
 public:
  NonFiniteGuard(const Config& config, bool print) : config_(config), print_(print) {}
  // debug.nan_*: the first nan_steps attempts at a step >= nan_step (a skipped step is attempted again with
  // the same number) get a NaN in one element of a gradient (in [begin, end), on every rank that holds it) or
  // in the loss.
  void inject(int64_t step, ParameterSet& model, int64_t begin, int64_t end, double& loss);
  // Call once the loss and the gradient norm are known (identical on every rank). Returns true when the step
  // must be skipped; throws polder::Error (on every rank alike) when the run must end. Collective when the
  // step is not finite (it looks for the first non-finite gradient).
  bool skip(int64_t step, double loss, double grad_norm, ParameterSet& model, int64_t begin, int64_t end,
            parallel::Comm& world);
  int64_t in_a_row() const { return in_a_row_; }
  int64_t total() const { return total_; }
  void set_total(int64_t n) { total_ = n; }  // from a checkpoint

 private:
  const Config& config_;
  bool print_;
  int64_t in_a_row_ = 0, total_ = 0, injected_ = 0;
};

}  // namespace polder::train
