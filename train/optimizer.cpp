// AdamW and LR schedules. The update loops run per parameter (so weight decay can be switched per tensor) and
// in parallel over elements; results do not depend on the thread count (no reductions in the update).
#include "train/optimizer.h"

#include <cmath>

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
    const int64_t decay_steps = std::max<int64_t>(1, static_cast<int64_t>(std::llround(s.decay_fraction * total)));
    const int64_t decay_start = total - decay_steps;
    if (step < decay_start) return peak;
    const double p = std::min(1.0, static_cast<double>(step - decay_start + 1) / static_cast<double>(decay_steps));
    return peak + (min_lr - peak) * p;
  }
  POLDER_FAIL("schedule.type '{}' is unknown (expected constant, cosine, linear or wsd)", s.type);
}

AdamW::AdamW(models::Llama& model, const OptimConfig& config, int64_t begin, int64_t end)
    : model_(model), config_(config), begin_(begin), end_(end < 0 ? model.flat_params().numel() : end) {
  POLDER_CHECK(begin_ >= 0 && begin_ <= end_ && end_ <= model.flat_params().numel(),
               "AdamW: owned range [{}, {}) outside the flat buffer of {} elements", begin_, end_,
               model.flat_params().numel());
  const DType state_dtype = model.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const int64_t n = end_ - begin_;
  if (model.dtype() != state_dtype) master_ = model.flat_params().narrow(0, begin_, n).to(state_dtype);
  m_ = Tensor::zeros({n}, state_dtype);
  v_ = Tensor::zeros({n}, state_dtype);
}

namespace {
template <typename A>
POLDER_CPU_CLONES
double sum_squares(const A* g, int64_t n) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks));
#pragma omp parallel for
  for (int64_t c = 0; c < chunks; ++c) {
    double s = 0;
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) s += static_cast<double>(g[i]) * g[i];
    partial[static_cast<size_t>(c)] = s;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}
}  // namespace

double AdamW::local_grad_sumsq() const {
  Tensor& g = model_.flat_grads();
  const int64_t tp_rank = model_.layout().tp_rank;
  double total = 0;
  for (const models::Parameter& p : model_.parameters()) {
    if (p.tied_copy || (p.shard_dim < 0 && tp_rank != 0)) continue;
    const int64_t lo = std::max(begin_, p.offset), hi = std::min(end_, p.offset + p.value.numel());
    if (lo >= hi) continue;
    const int64_t at = lo - model_.grad_offset();
    total += g.dtype() == DType::f64 ? sum_squares(g.data<double>() + at, hi - lo)
                                     : sum_squares(g.data<float>() + at, hi - lo);
  }
  return total;
}

double AdamW::grad_norm() const { return std::sqrt(local_grad_sumsq()); }

double AdamW::clip_grad_norm(double max_norm, const std::function<double(double)>& reduce) {
  const double local = local_grad_sumsq();
  const double norm = std::sqrt(reduce ? reduce(local) : local);
  if (max_norm > 0 && norm > max_norm) {
    Tensor g = model_.flat_grads().narrow(0, begin_ - model_.grad_offset(), end_ - begin_);
    const double coef = max_norm / (norm + 1e-6);
    POLDER_DISPATCH_FLOAT(g.dtype(), "clip_grad_norm",
                          [&] { kernels::cpu::scale(g.data<scalar_t>(), g.data<scalar_t>(), g.numel(), coef); });
  }
  return norm;
}

namespace {
template <typename A, typename P>
POLDER_CPU_CLONES
void adamw_update(P* param, A* master, const A* grad, A* m, A* v, int64_t n, A lr, A wd, A b1, A b2, A eps, A bc1,
                  A bc2) {
#pragma omp parallel for if (n > 16384)
  for (int64_t i = 0; i < n; ++i) {
    A w = master ? master[i] : static_cast<A>(param[i]);
    const A g = grad[i];
    w -= lr * wd * w;  // decoupled weight decay
    m[i] = b1 * m[i] + (A(1) - b1) * g;
    v[i] = b2 * v[i] + (A(1) - b2) * g * g;
    const A mhat = m[i] / bc1;
    const A denom = std::sqrt(v[i] / bc2) + eps;
    w -= lr * mhat / denom;
    if (master) master[i] = w;
    param[i] = static_cast<P>(w);
  }
}
}  // namespace

void AdamW::step(double lr) {
  ++step_;
  const double bc1 = 1.0 - std::pow(config_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(config_.beta2, static_cast<double>(step_));
  NoGradGuard guard;
  for (models::Parameter& prm : model_.parameters()) {
    const int64_t lo = std::max(begin_, prm.offset), hi = std::min(end_, prm.offset + prm.value.numel());
    if (lo >= hi) continue;
    const int64_t off = lo, n = hi - lo, s = lo - begin_;  // flat position, count, position in the owned state
    const double wd = (prm.decay || config_.decay_norms_and_embeddings) ? config_.weight_decay : 0.0;
    POLDER_DISPATCH_FLOAT(model_.dtype(), "AdamW", [&] {
      using A = acc_t<scalar_t>;
      A* master = master_.defined() ? master_.data<A>() + s : nullptr;
      adamw_update<A, scalar_t>(model_.flat_params().data<scalar_t>() + off, master,
                                model_.flat_grads().data<A>() + (off - model_.grad_offset()), m_.data<A>() + s,
                                v_.data<A>() + s, n,
                                static_cast<A>(lr), static_cast<A>(wd), static_cast<A>(config_.beta1),
                                static_cast<A>(config_.beta2), static_cast<A>(config_.eps), static_cast<A>(bc1),
                                static_cast<A>(bc2));
    });
  }
}

void AdamW::sync_model_from_master() {
  if (master_.defined()) model_.flat_params().narrow(0, begin_, end_ - begin_).copy_(master_);
}

}  // namespace polder::train
