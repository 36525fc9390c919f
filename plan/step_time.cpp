// The step-time model. FLOPs and bytes are counted per rank (local heads, MLP width and vocabulary under tp).
#include "plan/step_time.h"

#include <algorithm>
#include <cmath>

#include "models/llama/model.h"
#include "plan/shapes.h"

namespace polder::plan {

const Link& group_link(const Cluster& cl, const Config& c, CommGroup group) {
  const int64_t t = std::max<int64_t>(1, c.parallel.tp), d = c.parallel.dp,
                p = std::max<int64_t>(1, c.parallel.pp), cp = std::max<int64_t>(1, c.parallel.cp);
  int64_t span = t;  // consecutive ranks one group covers (rank order tp, cp, dp, pp)
  if (group == CommGroup::cp) span = t * cp;
  if (group == CommGroup::zero) {  // hybrid sharding's group: zero_group consecutive replicas
    const int64_t g = c.parallel.zero_group > 0 ? c.parallel.zero_group : cp * d;
    span = t * g;
  }
  if (group == CommGroup::dp) span = t * cp * d;
  if (group == CommGroup::pp || group == CommGroup::embedding) span = t * cp * d * p;
  return span <= cl.gpus_per_node && cl.gpus_per_node % span == 0 ? cl.intra : cl.inter;
}

double op_seconds(const CommOp& op, const Link& link, double efficiency) {
  const double p = static_cast<double>(op.group_size), alpha = link.latency_us * 1e-6;
  const double beta = 1.0 / (link.bandwidth_gbs * 1e9 * efficiency);
  double one = 0;
  switch (op.kind) {
    case CollKind::all_reduce:
      one = 2 * (p - 1) * alpha + 2 * (p - 1) / p * op.buffer_bytes * beta;
      break;
    case CollKind::reduce_scatter:
    case CollKind::all_gather:
      one = (p - 1) * alpha + (p - 1) / p * op.buffer_bytes * beta;
      break;
    case CollKind::p2p:
      one = alpha + op.buffer_bytes * beta;
      break;
  }
  return one * op.count;
}

namespace {

struct Stage {
  double gemm_f = 0, attn_f = 0, mem_f = 0;  // forward seconds per micro-batch (all chunks of the rank)
  double gemm = 0, attn = 0, mem = 0;        // forward + backward (+ recompute) per micro-batch
  double comm = 0, pp = 0;                   // tp and pp message time per micro-batch
  double dp_mb = 0;                          // ZeRO-2: reduce-scatters inside each micro-batch's backward
  double unit = 0;                           // one micro-batch through this rank
  double backward = 0;                       // one micro-batch's backward (the DP overlap window)
  double dp = 0, dp_exposed = 0, other = 0, optimizer = 0;
};

// Compute of one micro-batch through rank s of the pipeline: GEMMs, attention and the memory-bound ops,
// forward and forward + backward (+ recompute). Sets the compute fields of st and st.backward.
void stage_compute(const Config& c, const Calibration& k, int64_t s, Stage& st) {
  const models::LlamaShape sh = models::LlamaShape::from(c.model);
  const int64_t t = std::max<int64_t>(1, c.parallel.tp), P = std::max<int64_t>(1, c.parallel.pp);
  const int64_t v = std::max<int64_t>(1, c.parallel.virtual_stages);
  const bool sp = t > 1 && c.parallel.sequence_parallel, rc = c.train.recompute;
  const bool first = s == 0, last = s == P - 1;
  const double e = c.train.precision == "bf16" ? 2 : 4;
  // N: this rank's tokens (2 of 2 cp chunks under context parallelism); attention spans the whole sequence.
  const double seq = static_cast<double>(c.data.seq_len),
               N = static_cast<double>(c.train.micro_batch) * seq /
                   static_cast<double>(std::max<int64_t>(1, c.parallel.cp));
  const double Nl = sp ? N / static_cast<double>(t) : N, C = static_cast<double>(sh.hidden);
  const double Q = static_cast<double>(sh.heads / t * sh.head_dim),
               K = static_cast<double>(sh.kv_heads / t * sh.head_dim);
  const double I = static_cast<double>(sh.inter / t),
               Vl = static_cast<double>(models::padded_vocab(sh.vocab, t) / t);

  models::ParallelLayout layout;
  layout.tp = t;
  layout.pp = P;
  layout.pp_rank = s;
  layout.virtual_stages = v;
  double layers = 0;
  for (auto [lo, hi] : models::rank_chunks(sh.layers, layout)) layers += static_cast<double>(hi - lo);

  const double gemm_rate = k.gemm_tflops * 1e12, bw = k.copy_gbps * 1e9 * k.memory_efficiency;
  // Per layer, forward: q/k/v/o and the MLP's three projections; causal attention (half of QK^T and PV);
  // bytes of the memory-bound ops: two norms, RoPE on q and k, swiglu, two residual adds, and the copies
  // around the tensor-parallel regions (reduce_from_tp's clone, sequence parallelism's transposes).
  // Each GEMM (M x K) @ (K x N) at the calibrated rate, or at the memory bandwidth when its operands are what
  // limits it (skinny shards such as k/v under tp 8): max(2 M N K / rate, (M K + K N + M N) e / bandwidth).
  // Backward: the input gradient and the weight gradient, each as many FLOPs as the forward.
  auto gemm = [&](double m, double n, double kk) {
    return std::max(2 * m * n * kk / gemm_rate, (m * kk + kk * n + m * n) * e / bw);
  };
  const double gemm_layer_s =
      gemm(N, Q, C) + 2 * gemm(N, K, C) + gemm(N, C, Q) + 2 * gemm(N, I, C) + gemm(N, C, I);
  const double attn_layer = 2 * N * seq * Q;
  double mem_layer = e * (4 * Nl * C + 2 * N * (Q + K) + 3 * N * I + 6 * Nl * C);
  if (t > 1) mem_layer += e * (sp ? 8 * N * C : 4 * N * C);
  st.gemm_f = layers * gemm_layer_s;
  st.attn_f = layers * attn_layer / (k.attention_fwd_tflops * 1e12);
  st.mem_f = layers * mem_layer / bw;
  st.gemm = 3 * st.gemm_f + (rc ? st.gemm_f : 0);
  st.attn = st.attn_f + 2.5 * layers * attn_layer / (k.attention_bwd_tflops * 1e12) + (rc ? st.attn_f : 0);
  st.mem = 3 * st.mem_f + (rc ? st.mem_f : 0);
  // Embedding (gather, its gradient's scatter-add) and head (LM head GEMMs, cross-entropy passes).
  if (first) st.mem += e * (2 * N * C + 2 * N * C) / bw;
  if (last) {
    const double head = gemm(N, Vl, C);
    st.gemm += 3 * head;
    // Read the logits (forward, and backward) and write their gradient, vocabulary-parallel or not.
    st.mem += 3 * e * N * Vl / bw;
  }
  st.backward = (st.gemm - st.gemm_f) + (st.attn - st.attn_f) + (st.mem - st.mem_f);
}

// Communication of rank s from plan/comm: tp and pp per micro-batch, dp per step and what of it the last
// backward cannot hide, the rest (gradient norm, loss) per step. Needs st.backward.
void stage_comm(const Config& c, const Cluster& cl, const Calibration& k, int64_t s, Stage& st) {
  const double M = static_cast<double>(c.train.global_batch / (c.train.micro_batch * c.parallel.dp));
  const CommVolume vol = predict_comm(c, s);
  for (const CommOp& op : vol.ops) {
    const double sec = op_seconds(op, group_link(cl, c, op.group), k.comm_efficiency);
    if (op.per_micro_batch && (op.group == CommGroup::tp || op.group == CommGroup::cp))
      st.comm += sec / M;  // inline: the compute stream waits for each
    else if (op.per_micro_batch && op.group == CommGroup::pp)
      st.pp += sec / M;
    else if (op.group == CommGroup::dp || op.group == CommGroup::zero) {
      st.dp += sec;
      if (op.per_micro_batch) st.dp_mb += sec / M;  // ZeRO-2: synchronous inside each backward
    } else {
      st.other += sec;
    }
  }
  // Data parallel: buckets overlap the last backward except the last bucket; ZeRO-1 and the non-overlapped
  // all-reduce are exposed; ZeRO-2's per-micro-batch reductions are already in st.dp_mb, its all-gather is
  // exposed.
  double overlapped = 0, last_bucket = 0, exposed = 0;
  for (const CommOp& op : vol.ops) {
    if (op.group != CommGroup::dp && op.group != CommGroup::zero) continue;
    const double sec = op_seconds(op, group_link(cl, c, op.group), k.comm_efficiency);
    if (op.overlaps_backward) {
      overlapped += sec;
      last_bucket = sec;  // the last op listed is the last bucket (the embedding's)
    } else if (!op.per_micro_batch) {
      exposed += sec;
    }
  }
  st.dp_exposed = exposed + std::max(last_bucket, overlapped - st.backward);
}

// Optimizer, per owned element: AdamW reads gradient, master (bf16), moments, parameter and writes them
// back; zeroing the gradient buffer; the norm's read and the clipping's read and write.
double optimizer_seconds(const Config& c, const Calibration& k, int64_t s) {
  const int64_t t = std::max<int64_t>(1, c.parallel.tp), P = std::max<int64_t>(1, c.parallel.pp);
  const int64_t v = std::max<int64_t>(1, c.parallel.virtual_stages), d = c.parallel.dp;
  const double e = c.train.precision == "bf16" ? 2 : 4;
  const double bw = k.copy_gbps * 1e9 * k.memory_efficiency;
  const int zero = d > 1 ? (c.parallel.zero == "2" ? 2 : c.parallel.zero == "1" ? 1 : 0) : 0;
  const double flat = static_cast<double>(flat_numel(local_params(c.model, t, P, s, v), zero > 0 ? d : 1));
  const double owned = zero > 0 ? flat / static_cast<double>(d) : flat;
  const double adam = e == 2 ? 4 + 4 + 8 + 2 + 12 + 2 : 4 + 8 + 4 + 8 + 4;
  return (owned * (adam + 12) + 4 * (zero == 2 ? owned : flat)) / bw;
}

Stage stage_time(const Config& c, const Cluster& cl, const Calibration& k, int64_t s) {
  Stage st;
  stage_compute(c, k, s, st);
  stage_comm(c, cl, k, s, st);
  st.unit = st.gemm + st.attn + st.mem + st.comm + st.pp + st.dp_mb;
  st.optimizer = optimizer_seconds(c, k, s);
  return st;
}

}  // namespace

StepTime predict_step_time(const Config& c, const Cluster& cl, const Calibration& k) {
  const int64_t P = std::max<int64_t>(1, c.parallel.pp), v = std::max<int64_t>(1, c.parallel.virtual_stages);
  const double M = static_cast<double>(c.train.global_batch / (c.train.micro_batch * c.parallel.dp));
  std::vector<Stage> stages;
  for (int64_t s = 0; s < P; ++s) stages.push_back(stage_time(c, cl, k, s));
  StepTime r;
  double sum = 0, slowest = 0;
  for (int64_t s = 0; s < P; ++s) {
    sum += stages[static_cast<size_t>(s)].unit;
    if (stages[static_cast<size_t>(s)].unit > slowest)
      slowest = stages[static_cast<size_t>(s)].unit, r.slowest_stage = s;
  }
  const Stage& w = stages[static_cast<size_t>(r.slowest_stage)];
  // 1F1B: the slowest stage sets the pace of the M micro-batches; filling and draining the pipeline costs the
  // other stages once (interleaving cuts that by v: each unit is one of v chunks).
  const double pipe = M * slowest + (sum - slowest) / static_cast<double>(v);
  r.gemm = M * w.gemm;
  r.attention = M * w.attn;
  r.memory_bound = M * w.mem;
  r.tp_comm = M * w.comm;
  r.pp_comm = M * w.pp;
  r.dp_in_backward = M * w.dp_mb;
  r.bubble = pipe - M * slowest;
  // Stage s finishes its last backward about s backward units before stage 0: that hides part of its DP time.
  double dp_exposed = 0, dp = 0, other = 0, optimizer = 0;
  for (int64_t s = 0; s < P; ++s) {
    const Stage& st = stages[static_cast<size_t>(s)];
    dp_exposed = std::max(dp_exposed, st.dp_exposed - static_cast<double>(s) * st.backward);
    dp = std::max(dp, st.dp);
    other = std::max(other, st.other);
    optimizer = std::max(optimizer, st.optimizer);
  }
  r.dp_comm = dp;
  r.dp_exposed = std::max(0.0, dp_exposed);
  r.other_comm = other;
  r.optimizer = optimizer;
  r.total = pipe + r.dp_exposed + r.other_comm + r.optimizer;
  return r;
}

}  // namespace polder::plan
