// GradSync. Buckets are filled in reverse parameter order (the order backward produces gradients) and each
// covers a contiguous flat range, so a bucket's all-reduce is one call on a view of the gradient buffer.
#include "parallel/data_parallel.h"

#include <algorithm>

namespace polder::parallel {

GradSync::GradSync(ParameterSet& params, Mesh& mesh, const GradSyncOptions& options, Mesh* scalar_mesh)
    : model_(params),
      mesh_(mesh),
      scalar_mesh_(scalar_mesh ? *scalar_mesh : mesh),
      zero_(mesh.replica_size() > 1 ? options.zero : 0) {
  const int64_t n = params.flat_numel();
  const int dp = mesh.replica_size();
  // The shard group: all replicas, or hybrid groups of zero_group consecutive replica ranks (a node).
  const int g = shard_size(mesh, options.zero_group);
  if (g == dp) {
    shard_ = std::shared_ptr<Comm>(&mesh.replicas(), [](Comm*) {});  // the mesh owns it
    cross_ = std::make_shared<SingleComm>("zero-cross");
  } else {
    POLDER_CHECK(dp % g == 0, "parallel.zero_group {} does not divide the {} replicas (dp x cp)", g, dp);
    shard_ = mesh.replicas().split(mesh.replica_rank() / g, mesh.replica_rank() % g, "zero-shard");
    cross_ = mesh.replicas().split(mesh.replica_rank() % g, mesh.replica_rank() / g, "zero-cross");
    mesh.add_group(shard_);
    mesh.add_group(cross_);
  }
  std::tie(owned_begin_, owned_end_) =
      zero_ > 0 ? owned_range(n, g, shard_->rank()) : std::pair<int64_t, int64_t>{0, n};
  // The tied embedding's gradient must be summed across stages before the data-parallel reduction: no
  // overlap.
  const bool tied = options.tied_across_stages && mesh.pp_size() > 1;
  if (zero_ == 2)
    POLDER_CHECK(params.grads_sharded() && params.grad_offset() == owned_begin_ &&
                     params.flat_grads().numel() == owned_end_ - owned_begin_,
                 "ZeRO-2: the model's gradient shard [{}, {}) is not this rank's range [{}, {})",
                 params.grad_offset(), params.grad_offset() + params.flat_grads().numel(), owned_begin_,
                 owned_end_);
  if (tied) {
    const bool member = mesh.first_stage() || mesh.last_stage();
    const int column = mesh.replica_rank() * mesh.tp_size() + mesh.tp_rank();
    embed_group_ =
        mesh.world().split(member ? column : mesh.world_size() + mesh.rank(), mesh.pp_rank(), "embedding");
    mesh.add_group(embed_group_);
  }
  // Schedules that run several backward passes per parameter and micro-batch (interleaved stages): reduce
  // after the step instead.
  overlap_ = zero_ == 0 && !tied && dp > 1 && options.overlap_with_backward;
  if (overlap_ || zero_ == 2) build_buckets(options.bucket_mb);
}

void GradSync::build_buckets(int64_t bucket_mb) {
  const int64_t n = model_.flat_numel();
  const int64_t cap = std::max<int64_t>(1, bucket_mb) * (1 << 20) /
                      static_cast<int64_t>(dtype_size(model_.flat_grads().dtype()));
  auto& params = model_.parameters();
  Bucket cur;
  cur.end = -1;
  std::vector<int> bucket_of(params.size());
  // ZeRO-2 with a tied embedding across stages: its gradient must be summed with the other stage's before it
  // is reduce-scattered, and the stages finish their backward passes at different times (the head's gradient
  // comes first on the last stage, the embedding's last on the first). So it gets a bucket of its own that
  // accumulates over the micro-batches and is reduced in finish(), after the cross-stage sum.
  auto deferred = [&](size_t k) { return embed_group_ && params[k].tied; };
  auto close = [&](Bucket& b) {
    b.fired.assign(b.params.size(), false);
    buckets_.push_back(std::move(b));
    b = Bucket();
    b.end = -1;
  };
  for (size_t k = params.size(); k-- > 0;) {
    const Parameter& p = params[k];
    if (deferred(k) && cur.end >= 0) close(cur);  // the run after the embedding ends here
    if (cur.end < 0) cur.end = p.offset + p.value.numel();
    cur.begin = p.offset;
    cur.expected += 1;
    cur.params.push_back(k);
    bucket_of[k] = static_cast<int>(buckets_.size());
    cur.deferred = deferred(k);
    if (cur.end - cur.begin >= cap || k == 0 || cur.deferred) {
      if (k == 0) cur.begin = 0;  // include any leading padding
      close(cur);
    }
  }
  if (!buckets_.empty()) buckets_.front().end = n;  // and the trailing padding of the flat buffer
  for (size_t k = 0; k < params.size(); ++k) {
    const int b = bucket_of[k];
    params[k].value.impl()->post_accumulate_hook = [this, b, k] {
      Bucket& bucket = buckets_[static_cast<size_t>(b)];
      if (bucket.deferred) return;  // accumulates until finish()
      if (zero_ == 2) {
        // Every micro-batch: once each parameter of the bucket has its gradient, reduce and release them.
        for (size_t i = 0; i < bucket.params.size(); ++i)
          if (bucket.params[i] == k && !bucket.fired[i]) {
            bucket.fired[i] = true;
            ++bucket.ready;
          }
        if (bucket.ready == bucket.expected) reduce_bucket_into_shard(bucket);
        return;
      }
      if (!armed_) return;
      if (++bucket.ready == bucket.expected) launch(bucket);
    };
  }
}

GradSync::~GradSync() {
  for (Parameter& p : model_.parameters()) p.value.impl()->post_accumulate_hook = nullptr;
}

void GradSync::launch(Bucket& b) {
  Tensor view = model_.flat_grads().narrow(0, b.begin, b.end - b.begin);
  b.work = mesh_.replicas().all_reduce_async(view, ReduceOp::avg);
}

void GradSync::reduce_bucket_into_shard(Bucket& b) {
  // Gather the bucket's gradients into one staging buffer in flat order, releasing each parameter's tensor.
  const DType gd = model_.flat_grads().dtype();
  const Device dev = model_.flat_grads().device();
  Tensor staging = Tensor::zeros({b.end - b.begin}, gd, dev);
  auto& params = model_.parameters();
  for (size_t idx : b.params) {
    Tensor& g = params[idx].value.grad();
    if (!g.defined()) continue;
    staging.narrow(0, params[idx].offset - b.begin, g.numel()).copy_(g.view({g.numel()}));
    g = Tensor();
  }
  // Rank r of the shard group receives the part of the bucket that lies in its shard.
  const int dp = shard_->size();
  const int64_t n = model_.flat_numel();
  std::vector<int64_t> counts(static_cast<size_t>(dp));
  for (int r = 0; r < dp; ++r) {
    auto [lo, hi] = owned_range(n, dp, r);
    counts[static_cast<size_t>(r)] = std::max<int64_t>(0, std::min(hi, b.end) - std::max(lo, b.begin));
  }
  const int64_t mine = counts[static_cast<size_t>(shard_->rank())];
  Tensor part = Tensor::empty({mine}, gd, dev);
  shard_->reduce_scatter_v(staging, part, counts, ReduceOp::sum);
  if (mine > 0) {
    const int64_t at = std::max(owned_begin_, b.begin) - owned_begin_;
    model_.flat_grads().narrow(0, at, mine).add_(part);
  }
  b.ready = 0;
  b.fired.assign(b.fired.size(), false);
}

void GradSync::sum_tied_embedding() {
  if (!embed_group_ || embed_group_->size() < 2) return;
  for (Parameter& p : model_.parameters()) {
    if (!p.tied) continue;
    if (zero_ != 2) {
      embed_group_->all_reduce(p.grad, ReduceOp::sum);
      continue;
    }
    // ZeRO-2: the gradient accumulated over the micro-batches (its deferred bucket); the full local tensor is
    // summed here, then reduce-scattered with the other buckets.
    Tensor& g = p.value.grad();
    const Tensor& flat = model_.flat_grads();
    if (!g.defined()) g = Tensor::zeros(p.value.shape(), flat.dtype(), flat.device());
    embed_group_->all_reduce(g, ReduceOp::sum);
  }
}

void GradSync::finish() {
  sum_tied_embedding();
  reduce_data_parallel();
  // Sequence parallel: each tp rank saw only its tokens in the norms, so their weight gradients are partial
  // sums. Summing over tp commutes with the data-parallel average, so it runs on the owned range afterwards.
  if (mesh_.tp_size() > 1) {
    for (Parameter& p : model_.parameters()) {
      if (!p.tp_partial_grad) continue;
      const int64_t lo = std::max(owned_begin_, p.offset),
                    hi = std::min(owned_end_, p.offset + p.value.numel());
      if (lo >= hi) continue;
      Tensor part = model_.flat_grads().narrow(0, lo - model_.grad_offset(), hi - lo);
      mesh_.tp().all_reduce(part, ReduceOp::sum);
    }
  }
}

void GradSync::reduce_data_parallel() {
  Tensor& g = model_.flat_grads();
  if (mesh_.replica_size() == 1) return;
  if (zero_ == 2) {
    // Buckets still holding gradients (parameters that got none in the last micro-batch): reduce them too, in
    // the same order on every rank. Then the summed shard becomes the average.
    for (Bucket& b : buckets_)
      if (b.ready > 0 || b.deferred) reduce_bucket_into_shard(b);
    if (cross_->size() > 1) cross_->all_reduce(g, ReduceOp::sum);  // hybrid: the same shard in every group
    g.mul_(1.0 / mesh_.replica_size());
    return;
  }
  if (zero_ == 1) {
    Tensor mine = g.narrow(0, owned_begin_, owned_end_ - owned_begin_);
    if (cross_->size() == 1) {
      shard_->reduce_scatter(g, mine, ReduceOp::avg);
      return;
    }
    shard_->reduce_scatter(g, mine, ReduceOp::sum);
    cross_->all_reduce(mine, ReduceOp::sum);
    mine.mul_(1.0 / mesh_.replica_size());
    return;
  }
  if (!overlap_) {
    mesh_.replicas().all_reduce(g, ReduceOp::avg);
    return;
  }
  for (Bucket& b : buckets_) {
    if (!b.work) launch(b);  // a bucket whose parameters got no gradient this step
    b.work->wait();
    b.work.reset();
    b.ready = 0;
  }
}

double GradSync::reduce_norm_sq(double local) {
  Tensor v = Tensor::scalar(local, DType::f64);
  Mesh& m = scalar_mesh_;
  if (m.tp_size() > 1) m.tp().all_reduce(v, ReduceOp::sum);
  if (m.pp_size() > 1) m.pp().all_reduce(v, ReduceOp::sum);
  if (zero_ > 0 && m.replica_size() > 1) {
    m.replicas().all_reduce(v, ReduceOp::sum);
    // Hybrid groups each hold every shard once: the sum over all replicas counts each one per group.
    if (cross_->size() > 1) return v.item() / static_cast<double>(cross_->size());
  }
  return v.item();
}

void GradSync::all_gather_params() {
  // ZeRO-3 keeps only the shard: layers gather their parameters when they run (parallel/zero3.h).
  if (zero_ == 0 || mesh_.replica_size() == 1 || model_.params_sharded()) return;
  Tensor& p = model_.flat_params();
  Tensor mine = p.narrow(0, owned_begin_, owned_end_ - owned_begin_);
  shard_->all_gather(mine, p);
}

}  // namespace polder::parallel
