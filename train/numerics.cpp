// Non-finite step handling (see numerics.h). Only the rare path scans gradients; the common path is two
// std::isfinite checks on values every rank already has.
#include "train/numerics.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <map>

namespace polder::train {
namespace {

template <typename T>
bool any_nonfinite(const T* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return true;
  return false;
}

// The part of parameter p's gradient that lies in [begin, end) and in this rank's gradient buffer, as a flat
// range; empty (lo >= hi) when none.
std::pair<int64_t, int64_t> grad_range(const ParameterSet& model, const Parameter& p, int64_t begin,
                                       int64_t end) {
  const Tensor& g = model.flat_grads();
  const int64_t lo = std::max({begin, p.offset, model.grad_offset()});
  const int64_t hi = std::min({end, p.offset + p.value.numel(), model.grad_offset() + g.numel()});
  return {lo, hi};
}

}  // namespace

std::string first_nonfinite_gradient(ParameterSet& model, const ModelConfig& config, int64_t begin,
                                     int64_t end, parallel::Comm& world) {
  // Global order: the parameters of the single-process model (Parameter::index).
  const auto names = models::model_parameter_shapes(config);
  const int64_t none = static_cast<int64_t>(names.size());
  int64_t first = none;
  const Tensor g = model.flat_grads().to(Device::cpu());  // a rare path: a GPU's gradients are copied once
  for (const Parameter& p : model.parameters()) {
    auto [lo, hi] = grad_range(model, p, begin, end);
    if (lo >= hi) continue;
    const int64_t at = lo - model.grad_offset();
    const bool bad = g.dtype() == DType::f64 ? any_nonfinite(g.data<double>() + at, hi - lo)
                                             : any_nonfinite(g.data<float>() + at, hi - lo);
    if (bad) first = std::min(first, p.index);
  }
  if (world.size() > 1) {  // min over ranks, as max of the complement
    Tensor t = Tensor::from_vector<int64_t>({none - first}, {1});
    world.all_reduce(t, parallel::ReduceOp::max);
    first = none - t.data<int64_t>()[0];
  }
  return first == none ? "" : names[static_cast<size_t>(first)].first;
}

void NonFiniteGuard::inject(int64_t step, ParameterSet& model, int64_t begin, int64_t end, double& loss) {
  const DebugConfig& d = config_.debug;
  if (d.nan_step <= 0 || step < d.nan_step || injected_ >= d.nan_steps) return;
  ++injected_;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (d.nan_param == "loss") {
    loss = nan;
    return;
  }
  const Parameter* target = nullptr;
  for (const Parameter& p : model.parameters())
    if (d.nan_param.empty() ? !p.tied_copy : p.name == d.nan_param) target = &p;
  if (!target) return;  // another rank holds it
  auto [lo, hi] = grad_range(model, *target, begin, end);
  if (lo >= hi) return;
  model.flat_grads().narrow(0, lo - model.grad_offset(), 1).fill_(nan);
}

bool NonFiniteGuard::skip(int64_t step, double loss, double grad_norm, ParameterSet& model, int64_t begin,
                          int64_t end, parallel::Comm& world) {
  if (std::isfinite(loss) && std::isfinite(grad_norm)) {
    in_a_row_ = 0;
    return false;
  }
  std::string first = first_nonfinite_gradient(model, config_.model, begin, end, world);
  if (first.empty()) first = "none";
  ++in_a_row_;
  ++total_;
  const TrainConfig& t = config_.train;
  POLDER_CHECK(t.skip_nonfinite,
               "training diverged at step {}: loss {}, gradient norm {} (first non-finite gradient: {}); "
               "train.skip_nonfinite is false (lower optim.lr or check the data)",
               step, loss, grad_norm, first);
  POLDER_CHECK(
      in_a_row_ < t.max_nonfinite_steps,
      "{} steps in a row had a non-finite loss or gradient norm (train.max_nonfinite_steps = {}); last at "
      "step {}: loss {}, gradient norm {}, first non-finite gradient: {} (lower optim.lr, check the data, "
      "or resume from an earlier checkpoint)",
      in_a_row_, t.max_nonfinite_steps, step, loss, grad_norm, first);
  if (print_) {
    std::printf(
        "step %lld: loss %g, gradient norm %g: not finite, step skipped without an update (first non-finite "
        "gradient: %s; %lld in a row, %lld in total)\n",
        static_cast<long long>(step), loss, grad_norm, first.c_str(), static_cast<long long>(in_a_row_),
        static_cast<long long>(total_));
    std::fflush(stdout);
  }
  return true;
}

}  // namespace polder::train
