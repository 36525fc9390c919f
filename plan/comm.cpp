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
    case CommGroup::cp:
      return "cp";
    case CommGroup::zero:
      return "zero";
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

// Everything predict_comm derives from the config for one (stage, dp rank), and the ops found so far.
struct CommModel {
  explicit CommModel(const Config& config) : c(config) {}
  const Config& c;
  int64_t t = 1, P = 1, d = 1, V = 1;  // tp, pp, replicas (dp x cp), virtual stages
  int64_t cp = 1;                      // context parallelism
  int64_t g = 1;                       // ZeRO shard group (all replicas, or the hybrid group)
  int64_t dp_rank = 0;
  int zero = 0;
  bool sp = false, rc = false;
  bool first = false, last = false;  // rank 0 holds virtual stage 0, rank P-1 the last
  double e = 4;                      // bytes per activation element
  double N = 0, C = 0, M = 0;        // tokens per micro-batch, hidden size, micro-batches per step
  double act = 0, act_local = 0;     // one (b, s, C) activation; what a pipeline stage sends
  std::vector<LocalParam> params;
  int64_t flat = 0, layers = 0;
  CommVolume v;

  void add(CommGroup g, CollKind k, int64_t size, double bytes, double count, const std::string& what,
           bool overlap = false, bool per_micro_batch = false) {
    if (count <= 0 || size < 2) return;
    v.ops.push_back({g, k, size, bytes, count, overlap, per_micro_batch, what});
  }
  void add_mb(CommGroup g, CollKind k, int64_t size, double bytes, double count, const std::string& what) {
    add(g, k, size, bytes, count, what, false, true);
  }
};

CommModel comm_model(const Config& c, int64_t stage, int64_t dp_rank) {
  CommModel m(c);
  m.t = std::max<int64_t>(1, c.parallel.tp), m.P = std::max<int64_t>(1, c.parallel.pp);
  m.cp = std::max<int64_t>(1, c.parallel.cp);
  m.d = c.parallel.dp * m.cp, m.V = std::max<int64_t>(1, c.parallel.virtual_stages);
  POLDER_CHECK(c.parallel.dp >= 1, "plan: parallel.dp must be set (got {})", c.parallel.dp);
  POLDER_CHECK(stage >= 0 && stage < m.P, "plan: stage {} of {}", stage, m.P);
  POLDER_CHECK(dp_rank >= 0 && dp_rank < m.d, "plan: replica rank {} of {}", dp_rank, m.d);
  m.dp_rank = dp_rank;
  m.zero = m.d > 1 ? (c.parallel.zero == "3"   ? 3
                      : c.parallel.zero == "2" ? 2
                      : c.parallel.zero == "1" ? 1
                                               : 0)
                   : 0;
  m.g = c.parallel.zero_group > 0 && c.parallel.zero_group < m.d ? c.parallel.zero_group : m.d;
  m.sp = m.t > 1 && c.parallel.sequence_parallel, m.rc = c.train.recompute;
  m.e = c.train.precision == "bf16" ? 2 : 4;
  m.N = static_cast<double>(c.train.micro_batch * c.data.seq_len / m.cp);  // this rank's tokens
  m.C = static_cast<double>(c.model.hidden_size);
  m.M = static_cast<double>(c.train.global_batch / (c.train.micro_batch * c.parallel.dp));
  m.act = m.e * m.N * m.C;
  m.act_local = m.sp ? m.act / static_cast<double>(m.t) : m.act;

  models::ParallelLayout layout;
  layout.tp = m.t;
  layout.pp = m.P;
  layout.pp_rank = stage;
  layout.virtual_stages = m.V;
  m.params = local_params(c.model, m.t, m.P, stage, m.V);
  m.flat = flat_numel(m.params, m.zero > 0 ? m.d : 1);
  for (auto [lo, hi] : models::rank_chunks(c.model.num_layers, layout)) m.layers += hi - lo;
  m.first = stage == 0, m.last = stage == m.P - 1;
  return m;
}

// Sequence parallel: the norm weights' partial gradients, summed over tp per parameter after the step (only
// the part of each replicated parameter this dp rank owns under ZeRO).
void add_sp_norm_gradients(CommModel& m) {
  const int64_t owned_lo = m.zero > 0 ? m.flat / m.g * (m.dp_rank % m.g) : 0;
  const int64_t owned_hi = m.zero > 0 ? m.flat / m.g * (m.dp_rank % m.g + 1) : m.flat;
  double count = 0, bytes = 0;
  int64_t off = 0;
  for (const LocalParam& p : m.params) {
    const int64_t n = p.numel;
    if (p.replicated) {
      const int64_t lo = std::max(owned_lo, off), hi = std::min(owned_hi, off + n);
      if (lo < hi) count += 1, bytes += 4.0 * static_cast<double>(hi - lo);
    }
    off += n;
  }
  if (count > 0)
    m.add(CommGroup::tp, CollKind::all_reduce, m.t, bytes / count, count, "sp norm weight gradients");
}

// Tensor parallel, per micro-batch. Without sp: reduce_from_tp after o_proj and down_proj (forward, again
// under recompute), copy_to_tp's all-reduce of the gradient before q/k/v and gate/up (backward); the vocab-
// parallel embedding's reduce_from_tp (forward), the head's copy_to_tp (backward). With sp each of these
// becomes a reduce-scatter / all-gather pair: sp_gather (all-gather forward, reduce-scatter backward) and
// sp_reduce_scatter (reduce-scatter forward, all-gather backward).
void add_tensor_parallel(CommModel& m) {
  const int64_t t = m.t;
  const double act = m.act, M = m.M, L = static_cast<double>(m.layers);
  if (!m.sp) {
    m.add_mb(CommGroup::tp, CollKind::all_reduce, t, act, M * L * (m.rc ? 6 : 4), "block activations");
    if (m.first) m.add_mb(CommGroup::tp, CollKind::all_reduce, t, act, M, "vocab-parallel embedding");
    if (m.last) m.add_mb(CommGroup::tp, CollKind::all_reduce, t, act, M, "LM head input gradient");
  } else {
    const double per = M * L * (m.rc ? 6 : 4);  // each: 2 (forward) + 2 (backward) + 2 (recompute) per layer
    m.add_mb(CommGroup::tp, CollKind::all_gather, t, act, per, "block activations (sp)");
    m.add_mb(CommGroup::tp, CollKind::reduce_scatter, t, act, per, "block activations (sp)");
    if (m.first) {
      m.add_mb(CommGroup::tp, CollKind::reduce_scatter, t, act, M, "vocab-parallel embedding (sp)");
      m.add_mb(CommGroup::tp, CollKind::all_gather, t, act, M, "vocab-parallel embedding gradient (sp)");
    }
    if (m.last) {
      m.add_mb(CommGroup::tp, CollKind::all_gather, t, act, M, "LM head input (sp)");
      m.add_mb(CommGroup::tp, CollKind::reduce_scatter, t, act, M, "LM head input gradient (sp)");
    }
  }
  // Vocabulary-parallel cross-entropy: the row max, then the sums of exponentials with the target logits (one
  // all-reduce of 2 values per token), in the accumulation dtype (f64 for f64, else f32).
  if (m.last) {
    const double acc = m.c.train.precision == "f64" ? 8 : 4;
    m.add_mb(CommGroup::tp, CollKind::all_reduce, t, acc * m.N, M, "vocab-parallel cross-entropy (max)");
    m.add_mb(CommGroup::tp, CollKind::all_reduce, t, 2 * acc * m.N, M, "vocab-parallel cross-entropy (sums)");
  }
  if (m.sp) add_sp_norm_gradients(m);
  m.add(CommGroup::tp, CollKind::all_reduce, t, 8, 1, "gradient norm");
}

// Pipeline: each chunk's output to the next virtual stage and its input gradient back, per micro-batch; and
// with an embedding tied across stages, the first and last stage sum the table's gradient.
void add_pipeline(CommModel& m) {
  const double sends = m.M * (2.0 * static_cast<double>(m.V) - (m.last ? 1 : 0) - (m.first ? 1 : 0));
  m.add_mb(CommGroup::pp, CollKind::p2p, m.P, m.act_local, sends, "stage activations and gradients");
  m.add(CommGroup::pp, CollKind::all_reduce, m.P, 8, 2, "loss and gradient norm");
}

void add_tied_embedding(CommModel& m) {
  const double vocab_local = static_cast<double>(models::padded_vocab(m.c.model.vocab_size, m.t) / m.t);
  m.add(CommGroup::embedding, CollKind::all_reduce, 2, 4.0 * vocab_local * m.C, 1, "tied embedding gradient");
}

// Data parallel: gradient buckets overlapped with backward, one all-reduce after the step, ZeRO-1 or ZeRO-2.
void add_data_parallel(CommModel& m) {
  const Config& c = m.c;
  const int64_t d = m.d, g = m.g, cross = m.d / m.g;
  // The shard group's link: all replicas (CommGroup::dp), or hybrid sharding's group (CommGroup::zero); the
  // shard's all-reduce across the groups runs on the cross group.
  const CommGroup sg = g < d ? CommGroup::zero : CommGroup::dp;
  const double grads = 4.0 * static_cast<double>(m.flat), param_bytes = m.e * static_cast<double>(m.flat);
  const double shard_grads = grads / static_cast<double>(g);
  if (m.zero == 0) {
    const bool overlap = !(c.model.tie_embeddings && m.P > 1) && m.V == 1;
    if (overlap) {
      for (int64_t b : bucket_sizes(c, m.params, m.flat))
        m.add(CommGroup::dp, CollKind::all_reduce, d, 4.0 * static_cast<double>(b), 1, "gradient bucket",
              true);
    } else {
      m.add(CommGroup::dp, CollKind::all_reduce, d, grads, 1, "gradients (after the step)");
    }
  } else if (m.zero == 1) {
    m.add(sg, CollKind::reduce_scatter, g, grads, 1, "gradients (ZeRO-1)");
    m.add(CommGroup::dp, CollKind::all_reduce, cross, shard_grads, 1, "gradient shard across groups");
    m.add(sg, CollKind::all_gather, g, param_bytes, 1, "parameters (ZeRO)");
  } else {
    // ZeRO-2 and 3: every micro-batch, each bucket once all of its parameters have their gradient
    // (interleaved chunks may merge micro-batches of a bucket that spans two chunks; counted as every
    // micro-batch here). An embedding tied across stages is reduced once, after the step's cross-stage sum.
    int64_t tied = 0;
    const bool split = c.model.tie_embeddings && m.P > 1 && (m.first || m.last);
    for (int64_t b : bucket_sizes(c, m.params, m.flat, split ? &tied : nullptr))
      m.add_mb(sg, CollKind::reduce_scatter, g, 4.0 * static_cast<double>(b), m.M,
               "gradient bucket (ZeRO-2)");
    if (tied > 0)
      m.add(sg, CollKind::reduce_scatter, g, 4.0 * static_cast<double>(tied), 1,
            "tied embedding gradient bucket (ZeRO-2)");
    m.add(CommGroup::dp, CollKind::all_reduce, cross, shard_grads, 1, "gradient shard across groups");
    if (m.zero == 2) m.add(sg, CollKind::all_gather, g, param_bytes, 1, "parameters (ZeRO)");
  }
  if (m.zero == 3) {
    // Every unit (the embedding, each layer, the head) gathered before its forward and again before its
    // backward, every micro-batch; with tied embeddings and no pipeline the embedding is also the head's.
    std::vector<std::pair<int64_t, double>> units;  // (key, bytes)
    for (const LocalParam& p : m.params) {
      const int64_t key = p.kind == LocalParam::layer       ? p.layer_index
                          : p.kind == LocalParam::embedding ? -1
                                                            : -2;
      if (units.empty() || units.back().first != key) units.push_back({key, 0.0});
      units.back().second += m.e * static_cast<double>(p.numel);
    }
    for (auto [key, bytes] : units) {
      const bool twice = key == -1 && c.model.tie_embeddings && m.P == 1;  // embedding and head
      m.add_mb(sg, CollKind::all_gather, g, bytes, m.M * (twice ? 4 : 2), "unit parameters (ZeRO-3)");
    }
  }
  m.add(CommGroup::dp, CollKind::all_reduce, d, 8, m.zero > 0 ? 2 : 1, "loss and gradient norm");
}

// Context parallel, per micro-batch: every layer's attention all-gathers K and V over cp in forward (again
// under recompute) and again in backward, and reduce-scatters their gradients (parallel/cp_ops.cpp); the big
// side is the whole sequence's K (or V) of this rank's tp share.
void add_context_parallel(CommModel& m) {
  const models::LlamaShape sh = models::LlamaShape::from(m.c.model);
  const double kv = m.e * static_cast<double>(m.c.train.micro_batch * m.c.data.seq_len) *
                    static_cast<double>(sh.kv_heads / m.t * sh.head_dim);
  const double L = static_cast<double>(m.layers);
  m.add_mb(CommGroup::cp, CollKind::all_gather, m.cp, kv, m.M * L * (m.rc ? 6 : 4), "attention K and V (cp)");
  m.add_mb(CommGroup::cp, CollKind::reduce_scatter, m.cp, kv, m.M * L * 2,
           "attention K and V gradients (cp)");
}

}  // namespace

CommVolume predict_comm(const Config& c, int64_t stage, int64_t dp_rank) {
  CommModel m = comm_model(c, stage, dp_rank);
  if (m.t > 1) add_tensor_parallel(m);
  if (m.P > 1) add_pipeline(m);
  if (c.model.tie_embeddings && m.P > 1 && (m.first || m.last)) add_tied_embedding(m);
  if (m.d > 1) add_data_parallel(m);
  if (m.cp > 1) add_context_parallel(m);
  return std::move(m.v);
}

}  // namespace polder::plan
