// GradSync. Buckets are filled in reverse parameter order (the order backward produces gradients) and each
// covers a contiguous flat range, so a bucket's all-reduce is one call on a view of the gradient buffer.
#include "train/distributed.h"

namespace polder::train {

GradSync::GradSync(models::Llama& model, parallel::Mesh& mesh, bool zero1, int64_t bucket_mb)
    : model_(model), mesh_(mesh), zero1_(zero1) {
  const int64_t n = model.flat_grads().numel();
  const int dp = mesh.dp_size();
  owned_begin_ = zero1 ? n / dp * mesh.dp_rank() : 0;
  owned_end_ = zero1 ? n / dp * (mesh.dp_rank() + 1) : n;
  // The tied embedding's gradient must be summed across stages before the data-parallel reduction: no overlap.
  const bool tied = model.config().tie_embeddings && mesh.pp_size() > 1;
  if (tied) {
    const bool member = mesh.first_stage() || mesh.last_stage();
    const int column = mesh.dp_rank() * mesh.tp_size() + mesh.tp_rank();
    embed_group_ = mesh.world().split(member ? column : mesh.world_size() + mesh.rank(), mesh.pp_rank(), "embedding");
    mesh.add_group(embed_group_);
  }
  overlap_ = !zero1 && !tied && mesh.dp_size() > 1;
  if (!overlap_) return;
  const int64_t cap = std::max<int64_t>(1, bucket_mb) * (1 << 20) / static_cast<int64_t>(dtype_size(model.flat_grads().dtype()));
  auto& params = model.parameters();
  Bucket cur;
  cur.end = -1;
  std::vector<int> bucket_of(params.size());
  for (size_t k = params.size(); k-- > 0;) {
    const models::Parameter& p = params[k];
    if (cur.end < 0) cur.end = p.offset + p.value.numel();
    cur.begin = p.offset;
    cur.expected += 1;
    bucket_of[k] = static_cast<int>(buckets_.size());
    if (cur.end - cur.begin >= cap || k == 0) {
      if (k == 0) cur.begin = 0;  // include any leading padding
      buckets_.push_back(std::move(cur));
      cur = Bucket();
      cur.end = -1;
    }
  }
  if (!buckets_.empty()) buckets_.front().end = n;  // and the trailing padding of the flat buffer
  for (size_t k = 0; k < params.size(); ++k) {
    const int b = bucket_of[k];
    params[k].value.impl()->post_accumulate_hook = [this, b] {
      if (!armed_) return;
      Bucket& bucket = buckets_[static_cast<size_t>(b)];
      if (++bucket.ready == bucket.expected) launch(bucket);
    };
  }
}

GradSync::~GradSync() {
  for (models::Parameter& p : model_.parameters()) p.value.impl()->post_accumulate_hook = nullptr;
}

void GradSync::launch(Bucket& b) {
  Tensor view = model_.flat_grads().narrow(0, b.begin, b.end - b.begin);
  b.work = mesh_.dp().all_reduce_async(view, parallel::ReduceOp::avg);
}

void GradSync::sum_tied_embedding() {
  if (!embed_group_ || embed_group_->size() < 2) return;
  for (models::Parameter& p : model_.parameters())
    if (p.name == "model.embed_tokens.weight") embed_group_->all_reduce(p.grad, parallel::ReduceOp::sum);
}

void GradSync::finish() {
  sum_tied_embedding();
  reduce_data_parallel();
  // Sequence parallel: each tp rank saw only its tokens in the norms, so their weight gradients are partial
  // sums. Summing over tp commutes with the data-parallel average, so it runs on the owned range afterwards.
  if (model_.layout().sequence_parallel && mesh_.tp_size() > 1) {
    for (models::Parameter& p : model_.parameters()) {
      if (p.shard_dim >= 0) continue;
      const int64_t lo = std::max(owned_begin_, p.offset), hi = std::min(owned_end_, p.offset + p.value.numel());
      if (lo >= hi) continue;
      Tensor part = model_.flat_grads().narrow(0, lo, hi - lo);
      mesh_.tp().all_reduce(part, parallel::ReduceOp::sum);
    }
  }
}

void GradSync::reduce_data_parallel() {
  Tensor& g = model_.flat_grads();
  if (mesh_.dp_size() == 1) return;
  if (zero1_) {
    Tensor mine = g.narrow(0, owned_begin_, owned_end_ - owned_begin_);
    mesh_.dp().reduce_scatter(g, mine, parallel::ReduceOp::avg);
    return;
  }
  if (!overlap_) {
    mesh_.dp().all_reduce(g, parallel::ReduceOp::avg);
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
  if (mesh_.tp_size() > 1) mesh_.tp().all_reduce(v, parallel::ReduceOp::sum);
  if (mesh_.pp_size() > 1) mesh_.pp().all_reduce(v, parallel::ReduceOp::sum);
  if (zero1_ && mesh_.dp_size() > 1) mesh_.dp().all_reduce(v, parallel::ReduceOp::sum);
  return v.item();
}

void GradSync::all_gather_params() {
  if (!zero1_ || mesh_.dp_size() == 1) return;
  Tensor& p = model_.flat_params();
  Tensor mine = p.narrow(0, owned_begin_, owned_end_ - owned_begin_);
  mesh_.dp().all_gather(mine, p);
}

}  // namespace polder::train
