// AdamW and LR schedules. The update and the gradient norm are the fused kernels of kernels/optim.h over
// segment lists built once from the parameters (weight decay per segment); results do not depend on the
// thread count.
#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "core/autograd.h"
#include "core/cuda_context.h"
#include "core/dispatch.h"
#include "kernels/elementwise.h"

namespace polder::train {

double lr_at(const ScheduleConfig& s, double peak, int64_t step, int64_t total) {
  if (s.warmup_steps > 0 && step < s.warmup_steps)
    return peak * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  const double min_lr = peak * s.min_lr_ratio;
  const double span = static_cast<double>(std::max<int64_t>(1, total - s.warmup_steps));
  const double progress = std::min(1.0, static_cast<double>(step - s.warmup_steps) / span);
  if (s.type == "constant") return peak;
  if (s.type == "cosine") return min_lr + (peak - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
  if (s.type == "linear") return peak + (min_lr - peak) * progress;
  if (s.type == "wsd") {
    const int64_t decay_steps =
        std::max<int64_t>(1, static_cast<int64_t>(std::llround(s.decay_fraction * total)));
    const int64_t decay_start = total - decay_steps;
    if (step < decay_start) return peak;
    const double p =
        std::min(1.0, static_cast<double>(step - decay_start + 1) / static_cast<double>(decay_steps));
    return peak + (min_lr - peak) * p;
  }
  POLDER_FAIL("schedule.type '{}' is unknown (expected constant, cosine, linear or wsd)", s.type);
}

AdamW::AdamW(ParameterSet& model, const OptimConfig& config, int64_t begin, int64_t end)
    : model_(model), config_(config), begin_(begin), end_(end < 0 ? model.flat_numel() : end) {
  POLDER_CHECK(begin_ >= 0 && begin_ <= end_ && end_ <= model.flat_numel(),
               "AdamW: owned range [{}, {}) outside the flat buffer of {} elements", begin_, end_,
               model.flat_numel());
  // ZeRO-3: flat_params() is this rank's shard, which must be the owned range.
  POLDER_CHECK(!model.params_sharded() ||
                   (model.param_offset() == begin_ && model.flat_params().numel() == end_ - begin_),
               "AdamW: owned range [{}, {}) is not the parameter shard [{}, {})", begin_, end_,
               model.param_offset(), model.param_offset() + model.flat_params().numel());
  POLDER_CHECK(model.grad_offset() <= begin_ && end_ <= model.grad_offset() + model.flat_grads().numel(),
               "AdamW: owned range [{}, {}) outside the gradient buffer [{}, {})", begin_, end_,
               model.grad_offset(), model.grad_offset() + model.flat_grads().numel());
  const DType state_dtype = model.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const int64_t n = end_ - begin_;
  if (model.dtype() != state_dtype)
    master_ = model.flat_params().narrow(0, begin_ - model.param_offset(), n).to(state_dtype);
  m_ = Tensor::zeros({n}, state_dtype, model.device());
  v_ = Tensor::zeros({n}, state_dtype, model.device());

  for (const Parameter& p : model_.parameters()) {
    const int64_t lo = std::max(begin_, p.offset), hi = std::min(end_, p.offset + p.value.numel());
    if (lo >= hi) continue;
    const double wd = (p.decay || config_.decay_norms_and_embeddings) ? config_.weight_decay : 0.0;
    kernels::AdamWSegment seg{lo - begin_, hi - begin_, wd};
    if (!update_segments_.empty() && update_segments_.back().end == seg.begin &&
        update_segments_.back().weight_decay == wd)
      update_segments_.back().end = seg.end;  // elementwise update: merging runs changes no result
    else
      update_segments_.push_back(seg);
    if (p.counts_once) norm_segments_.push_back(seg);
  }
}

double AdamW::local_grad_sumsq() const {
  const Tensor& g = model_.flat_grads();
  const int64_t at = begin_ - model_.grad_offset();  // gradient element of state index 0
  const int ns = static_cast<int>(norm_segments_.size());
  double sum = 0;
  auto run = [&](auto zero) {  // the gradient buffer is f32, or f64 for f64 models
    using A = decltype(zero);
    dispatch::on_device(
        "sum_squares", g.device(),
        [&] { sum = kernels::cpu::sum_squares(g.data<A>() + at, norm_segments_.data(), ns); },
        [&]([[maybe_unused]] void* stream) {
          // The device result is read back: the host needs the norm for clipping and the log (one wait per
          // step).
          Tensor out = Tensor::empty({}, DType::f64, g.device());
          POLDER_CUDA_KERNEL(kernels::cuda::sum_squares(g.data<A>() + at, norm_segments_.data(), ns,
                                                        out.data<double>(), stream));
          sum = out.item();
        });
  };
  if (g.dtype() == DType::f64) {
    run(double{});
  } else {
    run(float{});
  }
  return sum;
}

double AdamW::grad_norm() const {
  return std::sqrt(local_grad_sumsq());
}

double AdamW::clip_grad_norm(double max_norm, const std::function<double(double)>& reduce) {
  const double local = local_grad_sumsq();
  const double norm = std::sqrt(reduce ? reduce(local) : local);
  // The factor is applied inside the next step's update (kernels::AdamWStep::grad_scale), with the rounding
  // of an in-place g *= factor: one pass over the gradients fewer.
  grad_scale_ = max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
  return norm;
}

void AdamW::step(double lr) {
  ++step_;
  const kernels::AdamWStep s{lr,
                             config_.beta1,
                             config_.beta2,
                             config_.eps,
                             1.0 - std::pow(config_.beta1, static_cast<double>(step_)),
                             1.0 - std::pow(config_.beta2, static_cast<double>(step_)),
                             grad_scale_};
  grad_scale_ = 1.0;
  NoGradGuard guard;
  const int ns = static_cast<int>(update_segments_.size());
  const int64_t at = begin_ - model_.grad_offset();
  POLDER_DISPATCH_FLOAT(model_.dtype(), "AdamW", [&] {
    using A = acc_t<scalar_t>;
    A* master = master_.defined() ? master_.data<A>() : nullptr;
    POLDER_KERNEL(m_.device(), adamw,
                  model_.flat_params().data<scalar_t>() + (begin_ - model_.param_offset()), master,
                  static_cast<const A*>(model_.flat_grads().data<A>() + at), m_.data<A>(), v_.data<A>(),
                  update_segments_.data(), ns, s);
  });
}

void AdamW::sync_model_from_master() {
  if (master_.defined())
    model_.flat_params().narrow(0, begin_ - model_.param_offset(), end_ - begin_).copy_(master_);
}

}  // namespace polder::train
