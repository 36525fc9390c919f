// The communication model: one CommOp per kind of message the code sends, derived from the same places that
// send it (model.cpp block / stage_loss, tp_ops.cpp, trainer.cpp pipelines, distributed.cpp GradSync).
#include "plan/comm.h"

#include <algorithm>

#include "core/error.h"
#include "models/llama/model.h"
#include "plan/shapes.h"

namespace polder::plan {

const char* coll_kind_name(CollKind k) {
  switch (k) {
    case CollKind::all_reduce:
      return "all_reduce";
    case CollKind::reduce_scatter:
      return "reduce_scatter";
    case CollKind::all_gather:
      return "all_gather";
    case CollKind::p2p:
      return "p2p";
  }
  return "?";
}

const char* comm_group_name(CommGroup g) {
  switch (g) {
    case CommGroup::tp:
      return "tp";
    case CommGroup::dp:
      return "dp";
    case CommGroup::pp:
      return "pp";
    case CommGroup::embedding:
      return "embedding";
  }
  return "?";
}

double CommOp::counted_bytes() const {
  const double p = static_cast<double>(group_size);
  double f = 1.0;
  if (kind == CollKind::all_reduce) f = 2.0 * (p - 1) / p;
  if (kind == CollKind::reduce_scatter || kind == CollKind::all_gather) f = (p - 1) / p;
  return f * buffer_bytes * count;
}

double CommVolume::bytes(CollKind kind) const {
  double s = 0;
  for (const CommOp& op : ops)
    if (op.kind == kind) s += op.counted_bytes();
  return s;
}

double CommVolume::calls(CollKind kind) const {
  double s = 0;
  for (const CommOp& op : ops)
    if (op.kind == kind) s += op.count;
  return s;
}

double CommVolume::bytes(CommGroup group) const {
  double s = 0;
  for (const CommOp& op : ops)
    if (op.group == group) s += op.counted_bytes();
  return s;
}

double CommVolume::total_bytes() const {
  double s = 0;
  for (const CommOp& op : ops) s += op.counted_bytes();
  return s;
}

namespace {

// The data-parallel gradient buckets (train/distributed.cpp build_buckets): sizes in elements, in the order
// they complete during backward (reverse parameter order); the first one also takes the trailing padding and
// the last one the leading. With `deferred` (ZeRO-2, embedding tied across stages) the embedding is a bucket
// of its own, reduced once per step after the cross-stage sum: its size goes there, not into the list.
std::vector<int64_t> bucket_sizes(const Config& c, const std::vector<LocalParam>& params, int64_t flat,
                                  int64_t* deferred = nullptr) {
  const int64_t cap = std::max<int64_t>(1, c.parallel.bucket_mb) * (1 << 20) / 4;
  std::vector<int64_t> offsets;
  int64_t off = 0;
  for (const LocalParam& p : params) offsets.push_back(off), off += p.numel;
  std::vector<int64_t> sizes;
  int64_t end = -1;
  for (size_t k = params.size(); k-- > 0;) {
    const bool own = deferred && params[k].kind == LocalParam::embedding;
    if (own && end >= 0) sizes.push_back(end - offsets[k + 1]);  // the run after the embedding ends here
    if (own) {
      *deferred = offsets[k] + params[k].numel - (k == 0 ? 0 : offsets[k]);
      end = -1;
      continue;
    }
    if (end < 0) end = offsets[k] + params[k].numel;
    const int64_t begin = k == 0 ? 0 : offsets[k];
    if (end - begin >= cap || k == 0) {
      sizes.push_back(end - begin);
      end = -1;
    }
  }
  if (!sizes.empty()) sizes.front() += flat - off;
  return sizes;
}

}  // namespace

CommVolume predict_comm(const Config& c, int64_t stage, int64_t dp_rank) {
  const int64_t t = std::max<int64_t>(1, c.parallel.tp), P = std::max<int64_t>(1, c.parallel.pp);
  const int64_t d = c.parallel.dp, V = std::max<int64_t>(1, c.parallel.virtual_stages);
  POLDER_CHECK(d >= 1, "plan: parallel.dp must be set (got {})", d);
  POLDER_CHECK(stage >= 0 && stage < P, "plan: stage {} of {}", stage, P);
  POLDER_CHECK(dp_rank >= 0 && dp_rank < d, "plan: dp rank {} of {}", dp_rank, d);
  const int zero = d > 1 ? (c.parallel.zero == "2" ? 2 : c.parallel.zero == "1" ? 1 : 0) : 0;
  const bool sp = t > 1 && c.parallel.sequence_parallel, rc = c.train.recompute;
  const double e = c.train.precision == "bf16" ? 2 : 4;
  const double N = static_cast<double>(c.train.micro_batch * c.data.seq_len),
               C = static_cast<double>(c.model.hidden_size);
  const double M = static_cast<double>(c.train.global_batch / (c.train.micro_batch * d));
  const double act = e * N * C;                                      // one (b, s, C) activation
  const double act_local = sp ? act / static_cast<double>(t) : act;  // what a pipeline stage sends

  models::ParallelLayout layout;
  layout.tp = t;
  layout.pp = P;
  layout.pp_rank = stage;
  layout.virtual_stages = V;
  const std::vector<LocalParam> params = local_params(c.model, t, P, stage, V);
  const int64_t flat = flat_numel(params, zero > 0 ? d : 1);
  const auto chunks = models::rank_chunks(c.model.num_layers, layout);
  int64_t layers = 0;
  for (auto [lo, hi] : chunks) layers += hi - lo;
  const bool first = stage == 0, last = stage == P - 1;  // rank 0 holds virtual stage 0, rank P-1 the last

  CommVolume v;
  auto add = [&](CommGroup g, CollKind k, int64_t size, double bytes, double count, const std::string& what,
                 bool overlap = false, bool per_micro_batch = false) {
    if (count <= 0 || size < 2) return;
    v.ops.push_back({g, k, size, bytes, count, overlap, per_micro_batch, what});
  };
  auto add_mb = [&](CommGroup g, CollKind k, int64_t size, double bytes, double count,
                    const std::string& what) { add(g, k, size, bytes, count, what, false, true); };

  // Tensor parallel, per micro-batch. Without sp: reduce_from_tp after o_proj and down_proj (forward, again
  // under recompute), copy_to_tp's all-reduce of the gradient before q/k/v and gate/up (backward); the vocab-
  // parallel embedding's reduce_from_tp (forward), the head's copy_to_tp (backward). With sp each of these
  // becomes a reduce-scatter / all-gather pair: sp_gather (all-gather forward, reduce-scatter backward) and
  // sp_reduce_scatter (reduce-scatter forward, all-gather backward).
  if (t > 1) {
    const double L = static_cast<double>(layers);
    if (!sp) {
      add_mb(CommGroup::tp, CollKind::all_reduce, t, act, M * L * (rc ? 6 : 4), "block activations");
      if (first) add_mb(CommGroup::tp, CollKind::all_reduce, t, act, M, "vocab-parallel embedding");
      if (last) add_mb(CommGroup::tp, CollKind::all_reduce, t, act, M, "LM head input gradient");
    } else {
      const double per = M * L * (rc ? 6 : 4);  // each: 2 (forward) + 2 (backward) + 2 (recompute) per layer
      add_mb(CommGroup::tp, CollKind::all_gather, t, act, per, "block activations (sp)");
      add_mb(CommGroup::tp, CollKind::reduce_scatter, t, act, per, "block activations (sp)");
      if (first) {
        add_mb(CommGroup::tp, CollKind::reduce_scatter, t, act, M, "vocab-parallel embedding (sp)");
        add_mb(CommGroup::tp, CollKind::all_gather, t, act, M, "vocab-parallel embedding gradient (sp)");
      }
      if (last) {
        add_mb(CommGroup::tp, CollKind::all_gather, t, act, M, "LM head input (sp)");
        add_mb(CommGroup::tp, CollKind::reduce_scatter, t, act, M, "LM head input gradient (sp)");
      }
    }
    // Vocabulary-parallel cross-entropy: row max, sum of exponentials, target logit (f64 per token).
    if (last) add_mb(CommGroup::tp, CollKind::all_reduce, t, 8 * N, 3 * M, "vocab-parallel cross-entropy");
    // Sequence parallel: the norm weights' partial gradients, summed over tp per parameter after the step.
    if (sp) {
      const int64_t owned_lo = zero > 0 ? flat / d * dp_rank : 0;
      const int64_t owned_hi = zero > 0 ? flat / d * (dp_rank + 1) : flat;
      double count = 0, bytes = 0;
      int64_t off = 0;
      for (const LocalParam& p : params) {
        const int64_t n = p.numel;
        if (p.replicated) {
          const int64_t lo = std::max(owned_lo, off), hi = std::min(owned_hi, off + n);
          if (lo < hi) count += 1, bytes += 4.0 * static_cast<double>(hi - lo);
        }
        off += n;
      }
      if (count > 0)
        add(CommGroup::tp, CollKind::all_reduce, t, bytes / count, count, "sp norm weight gradients");
    }
    add(CommGroup::tp, CollKind::all_reduce, t, 8, 1, "gradient norm");
  }

  // Pipeline: each chunk's output to the next virtual stage and its input gradient back, per micro-batch.
  if (P > 1) {
    const double sends = M * (2.0 * static_cast<double>(V) - (last ? 1 : 0) - (first ? 1 : 0));
    add_mb(CommGroup::pp, CollKind::p2p, P, act_local, sends, "stage activations and gradients");
    add(CommGroup::pp, CollKind::all_reduce, P, 8, 2, "loss and gradient norm");
  }

  // Tied embedding across stages: the first and last stage sum the table's gradient.
  if (c.model.tie_embeddings && P > 1 && (first || last)) {
    const double vocab_local = static_cast<double>(models::padded_vocab(c.model.vocab_size, t) / t);
    add(CommGroup::embedding, CollKind::all_reduce, 2, 4.0 * vocab_local * C, 1, "tied embedding gradient");
  }

  // Data parallel.
  if (d > 1) {
    const double grads = 4.0 * static_cast<double>(flat), param_bytes = e * static_cast<double>(flat);
    if (zero == 0) {
      const bool overlap = !(c.model.tie_embeddings && P > 1) && V == 1;
      if (overlap) {
        for (int64_t b : bucket_sizes(c, params, flat))
          add(CommGroup::dp, CollKind::all_reduce, d, 4.0 * static_cast<double>(b), 1, "gradient bucket",
              true);
      } else {
        add(CommGroup::dp, CollKind::all_reduce, d, grads, 1, "gradients (after the step)");
      }
    } else if (zero == 1) {
      add(CommGroup::dp, CollKind::reduce_scatter, d, grads, 1, "gradients (ZeRO-1)");
      add(CommGroup::dp, CollKind::all_gather, d, param_bytes, 1, "parameters (ZeRO)");
    } else {
      // ZeRO-2: every micro-batch, each bucket once all of its parameters have their gradient (interleaved
      // chunks may merge micro-batches of a bucket that spans two chunks; counted as every micro-batch here).
      // An embedding tied across stages is reduced once, after the step's cross-stage sum.
      int64_t tied = 0;
      const bool split = c.model.tie_embeddings && P > 1 && (first || last);
      for (int64_t b : bucket_sizes(c, params, flat, split ? &tied : nullptr))
        add_mb(CommGroup::dp, CollKind::reduce_scatter, d, 4.0 * static_cast<double>(b), M,
               "gradient bucket (ZeRO-2)");
      if (tied > 0)
        add(CommGroup::dp, CollKind::reduce_scatter, d, 4.0 * static_cast<double>(tied), 1,
            "tied embedding gradient bucket (ZeRO-2)");
      add(CommGroup::dp, CollKind::all_gather, d, param_bytes, 1, "parameters (ZeRO)");
    }
    add(CommGroup::dp, CollKind::all_reduce, d, 8, zero > 0 ? 2 : 1, "loss and gradient norm");
  }
  return v;
}

}  // namespace polder::plan
