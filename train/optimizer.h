// AdamW over the flat parameter/gradient buffers, with fp32 master weights and moments (the mixed-precision
// policy: bf16 model parameters are a rounded copy of the fp32 master), global-norm clipping, and the LR
// schedules. A range [begin, end) of the flat buffer can be owned (ZeRO shards); by default all of it.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/parameter_set.h"
#include "kernels/optim.h"
#include "train/config.h"

namespace polder::train {

// Learning rate at optimizer step `step` (0-based) of `total` steps: linear warmup from lr/warmup to lr over
// warmup steps, then constant, cosine or linear decay to min_lr_ratio * lr, or warmup-stable-decay (constant
// until the last decay_fraction of the steps, then linear to min_lr_ratio * lr).
double lr_at(const ScheduleConfig& schedule, double peak_lr, int64_t step, int64_t total);

class AdamW {
 public:
  // Owns [begin, end) of the flat buffers (end -1: all of it). ZeRO-1 gives each data-parallel rank one
  // chunk: master weights and moments exist only for it, and only it is updated (the parameters are
  // all-gathered after).
  AdamW(ParameterSet& params, const OptimConfig& config, int64_t begin = 0, int64_t end = -1);

  // Sum of squared gradients over the owned range, counting each parameter of the unsharded model once: a
  // tied embedding's last-stage copy and (on tp ranks > 0) replicated tensors are skipped (norm_segments()).
  double local_grad_sumsq() const;
  // Global L2 norm: sqrt(reduce(local_grad_sumsq())), where reduce sums over the ranks that hold different
  // parts of the model (identity in one process). When the norm exceeds max_norm (max_norm 0: no clipping),
  // the next step() scales the gradients by max_norm / (norm + 1e-6) inside its update (the same result as
  // scaling them in place first, one pass over them fewer; the gradient buffer itself stays unscaled).
  // Returns the norm before clipping.
  double clip_grad_norm(double max_norm, const std::function<double(double)>& reduce = nullptr);
  double grad_norm() const;
  int64_t begin() const { return begin_; }
  int64_t end() const { return end_; }
  // One AdamW update at learning rate lr (torch.optim.AdamW semantics: decoupled decay p -= lr * wd * p,
  // bias-corrected moments, eps added to sqrt(v_hat)). Copies the master weights into the model parameters.
  void step(double lr);

  int64_t steps_taken() const { return step_; }
  void set_steps_taken(int64_t s) { step_ = s; }
  // Checkpointed state: fp32 master weights (empty when the model itself is f32/f64), first and second
  // moments.
  Tensor& master() { return master_; }
  Tensor& exp_avg() { return m_; }
  Tensor& exp_avg_sq() { return v_; }
  // After loading master weights from a checkpoint: copy them into the model parameters.
  void sync_model_from_master();

  // Element ranges of the owned state, relative to begin() (index 0 is flat element begin()): what step()
  // updates (runs of parameters with the same weight decay merged) and what local_grad_sumsq() sums (one per
  // counted parameter, unmerged: the chunks of the sum start at each parameter). Built once by the
  // constructor.
  const std::vector<kernels::AdamWSegment>& update_segments() const { return update_segments_; }
  const std::vector<kernels::AdamWSegment>& norm_segments() const { return norm_segments_; }

 private:
  ParameterSet& model_;
  OptimConfig config_;
  Tensor master_, m_, v_;  // the owned range of the flat buffers, f32 (f64 for f64 models)
  int64_t begin_ = 0, end_ = 0;
  int64_t step_ = 0;
  double grad_scale_ = 1.0;  // clip_grad_norm's factor for the next step()
  std::vector<kernels::AdamWSegment> update_segments_, norm_segments_;
};

}  // namespace polder::train
