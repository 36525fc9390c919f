// The memory model. Persistent buffers come from the same functions the model uses to allocate them
// (Llama::flat_size, llama_local_parameters). Activations: per layer and micro-batch, the tensors each op's
// backward closure owns; per phase, the temporaries alive at the same time (traced through the autograd
// engine, which frees a node's saved tensors right after the node runs and its incoming gradients right after
// that). A pipeline stage is replayed event by event (its forward and backward order, the micro-batches in
// flight and the sent tensors, alive until their transfer group completes, parallel::p2p_groups): the same
// event list (parallel/schedule) the trainer executes, so 1F1B, interleaving and gradient accumulation come
// out of one loop.
#include "plan/memory.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "models/llama/model.h"
#include "parallel/schedule.h"
#include "plan/shapes.h"

namespace polder::plan {
namespace {

// Sizes of one micro-batch on one rank, in elements, and the bytes per element of each kind of tensor.
struct Sizes {
  double N = 0;   // tokens of the micro-batch (micro_batch x seq_len)
  double Nl = 0;  // tokens of the residual stream on this rank (N / tp under sequence parallelism)
  double C = 0, Q = 0, K = 0, I = 0;  // hidden, local query width, local key/value width, local MLP width
  double H = 0;                       // local query heads
  double Vl = 0;                      // local (padded) vocabulary
  double e = 4;                       // activation bytes (model dtype)
  double a = 4;                       // accumulator bytes (rstd, lse, weight gradients): f32
  double cp = 1;                      // context parallelism: N is this rank's 2 of 2 cp chunks
  bool tp = false, sp = false;
  bool fused_head = false;  // ops::linear_cross_entropy's CPU path: the logits become their gradient in place
};

Sizes sizes_of(const Config& c) {
  const models::LlamaShape s = models::LlamaShape::from(c.model);
  const int64_t tp = std::max<int64_t>(1, c.parallel.tp);
  Sizes z;
  z.tp = tp > 1;
  z.sp = z.tp && c.parallel.sequence_parallel;
  z.cp = static_cast<double>(std::max<int64_t>(1, c.parallel.cp));
  z.N = static_cast<double>(c.train.micro_batch * c.data.seq_len) / z.cp;
  z.Nl = z.sp ? z.N / static_cast<double>(tp) : z.N;
  z.C = static_cast<double>(s.hidden);
  z.Q = static_cast<double>(s.heads / tp * s.head_dim);
  z.K = static_cast<double>(s.kv_heads / tp * s.head_dim);
  z.I = static_cast<double>(s.inter / tp);
  z.H = static_cast<double>(s.heads / tp);
  z.Vl = static_cast<double>(models::padded_vocab(s.vocab, tp) / tp);
  z.e = c.train.precision == "bf16" ? 2.0 : 4.0;
  z.fused_head = !z.tp && c.train.device == "cpu";
  return z;
}

// One decoder block (model.cpp Llama::block), what stays saved for backward per micro-batch: the input x
// (rms_norm), rstd, the normed input h (the q/k/v linears; under sequence parallelism the gathered one),
// q and k after RoPE, v, the attention output and its log-sum-exp, x1 (second rms_norm) and its rstd, the
// second normed input h2 (gate/up linears), gate and up (swiglu) and their product (down linear). With
// context parallelism the same per local token (cp_ops.cpp: the gathered K/V live only inside attention).
double layer_saved(const Sizes& z) {
  return z.e * (z.Nl * z.C + z.N * z.C + 2 * z.N * z.Q + 2 * z.N * z.K + z.Nl * z.C + z.N * z.C +
                3 * z.N * z.I) +
         z.a * (2 * z.Nl + z.N * z.H);
}

// Temporaries at the end of a block's forward beyond what it saves and its output: the locals o and d live
// until the block returns; leaving the tensor-parallel region copies (reduce_from_tp clones the linear's
// output, sp_reduce_scatter transposes it into rank-major order first).
double block_forward_extra(const Sizes& z) {
  if (z.sp) return z.e * (2 * z.N * z.C + 2 * z.Nl * z.C);
  if (z.tp) return z.e * 3 * z.N * z.C;
  return z.e * 2 * z.N * z.C;
}

// The largest set of gradient temporaries inside a block's backward, beyond the block's saved tensors and the
// incoming gradient. Points (LIFO engine order): sp gather of the output gradient (all-gather buffer and its
// transpose); down_proj backward (dm, m still saved); swiglu backward (dm, dgate, dup; m freed); gate/up
// backward (dgate and both input gradients; gate, up and m freed); attention backward (d attn, dq, dk, dv;
// the MLP's tensors, h2 and x1 freed).
double block_backward_extra(const Sizes& z) {
  const double e = z.e, N = z.N;
  // Context parallelism: the attention backward gathers K and V of the whole sequence again and sums their
  // gradients there (kf, vf, gkf, gvf) beside a chunk's prefix gradients (up to the whole sequence each).
  const double cp_attn = z.cp > 1 ? 6 * N * z.cp * z.K : 0.0;
  double x = std::max({N * z.I + N * z.C, 2 * N * z.I, N * z.I + 2 * N * z.C - 3 * N * z.I,
                       2 * N * z.Q + 2 * N * z.K + cp_attn - 3 * N * z.I - N * z.C - z.Nl * z.C});
  if (z.sp) x = std::max(x, 2 * N * z.C);
  return e * x;
}

// How much of a block's saved tensors its backward has freed when the gradient of its parameter number
// `position` (reverse order: down, up, gate, post_attention_layernorm, o, v, k, q, input_layernorm) appears.
double freed_before_grad(const Sizes& z, int position) {
  const double e = z.e, N = z.N;
  const double mlp = 3 * N * z.I * e;                                   // gate, up, their product
  const double norm2 = N * z.C * e + z.Nl * z.C * e + z.Nl * z.a;       // h2, x1, rstd2
  const double attn = (2 * N * z.Q + 2 * N * z.K) * e + N * z.H * z.a;  // q, k, v, output, lse
  if (position == 0) return 0;
  if (position <= 2) return mlp;
  if (position <= 4) return mlp + norm2;
  if (position <= 7) return mlp + norm2 + attn;
  return layer_saved(z);
}

// The last stage's final norm, LM head and cross-entropy.
struct Head {
  double saved = 0;           // kept for backward per micro-batch
  double forward_extra = 0;   // temporaries of the head's forward
  double backward_extra = 0;  // temporaries of the cross-entropy backward (while the logits are still saved)
  double ce_saved = 0;        // what the cross-entropy node frees after its backward
  double logit_grad = 0;      // the logits' gradient, alive during the LM head's backward
};

Head head_of(const Sizes& z) {
  Head h;
  const double N = z.N, C = z.C, targets = 4 * N;
  if (z.fused_head) {
    // rms_norm saves rstd; linear_cross_entropy saves the normed hidden and the logits' gradient, which its
    // forward writes over the logits (models/llama/model.cpp); the d h of its backward is counted with it.
    h.ce_saved = z.e * N * z.Vl;
    h.saved = z.a * N + z.e * N * C + h.ce_saved;
    h.forward_extra = z.a * N;  // per-row losses
    h.logit_grad = h.ce_saved;  // still alive during the head's GEMMs
    return h;
  }
  if (!z.tp) {
    // rms_norm saves rstd; the linear saves the normed hidden; cross_entropy saves the logits, lse, targets.
    h.ce_saved = z.e * N * z.Vl + z.a * N + targets;
    h.saved = z.a * N + z.e * N * C + h.ce_saved;
    h.forward_extra = z.a * N;                    // per-row losses
    h.backward_extra = z.e * N * z.Vl + z.a * N;  // d logits and the per-row scale
    h.logit_grad = z.e * N * z.Vl;
    return h;
  }
  // Vocabulary-parallel: the head's input h (N, C) (gathered under sp); the cross-entropy keeps the logits
  // shard, the lse and the targets on the device (parallel/tp_ops.cpp), its forward the (3, N) statistics,
  // their max and the per-row losses.
  h.ce_saved = z.e * N * z.Vl + z.a * N + targets;
  h.saved = z.a * z.Nl + z.e * N * C + h.ce_saved;
  h.forward_extra = 5 * z.a * N;
  h.backward_extra = z.e * N * z.Vl + z.a * N;  // d logits and the per-row scale
  h.logit_grad = z.e * N * z.Vl;
  return h;
}

// A parameter's gradient under ZeRO-2, where the model has no gradient views: backward creates it, the
// engine's AccumulateGrad keeps a copy (the incoming tensor is freed after the hook), and it lives until its
// bucket is complete; then the bucket is packed into a staging buffer and reduce-scattered
// (train/distributed.cpp). In the order backward produces them (reverse parameter order).
struct ParamGrad {
  double bytes = 0;
  int64_t chunk = 0;
  int64_t layer = -1;      // global layer; -1 the embedding, -2 the final norm and LM head
  bool bias = false;       // a bias: its gradient appears with its weight's (same `position` in the block)
  bool completes = false;  // its hook completes a bucket
  double bucket_bytes = 0;
  // An embedding tied across stages: a bucket of its own, created in the first micro-batch's backward, added
  // into in place by the later ones, and reduced after the step (with bucket_bytes of staging).
  bool deferred = false;
};

std::vector<ParamGrad> zero2_grads(const Config& c, const std::vector<LocalParam>& params,
                                   const std::vector<std::pair<int64_t, int64_t>>& chunks, int64_t flat) {
  const int64_t cap = std::max<int64_t>(1, c.parallel.bucket_mb) * (1 << 20) / 4;
  std::vector<int64_t> offsets;
  int64_t off = 0;
  for (const LocalParam& p : params) offsets.push_back(off), off += p.numel;
  std::vector<ParamGrad> out;
  int64_t end = -1;
  bool first_bucket = true;
  const bool split = c.model.tie_embeddings && c.parallel.pp > 1;
  for (size_t k = params.size(); k-- > 0;) {
    const LocalParam& p = params[k];
    ParamGrad g;
    g.bytes = 4.0 * static_cast<double>(p.numel);
    g.deferred = split && p.kind == LocalParam::embedding;
    if (g.deferred && end >= 0 && !out.empty()) {  // the run after the embedding ends at the previous one
      out.back().completes = true;
      const int64_t pad = first_bucket ? flat - off : 0;
      out.back().bucket_bytes = 4.0 * static_cast<double>(end - offsets[k + 1] + pad);
      first_bucket = false;
      end = -1;
    }
    g.bias = p.bias;
    if (p.kind == LocalParam::layer) {
      g.layer = p.layer_index;
      for (size_t ch = 0; ch < chunks.size(); ++ch)
        if (g.layer >= chunks[ch].first && g.layer < chunks[ch].second) g.chunk = static_cast<int64_t>(ch);
    } else if (p.kind == LocalParam::embedding && !p.tied_copy) {
      g.layer = -1;
      g.chunk = 0;
    } else {
      g.layer = -2;
      g.chunk = static_cast<int64_t>(chunks.size()) - 1;
    }
    if (g.deferred) {
      g.bucket_bytes = 4.0 * static_cast<double>(offsets[k] + p.numel - (k == 0 ? 0 : offsets[k]));
      out.push_back(g);
      continue;
    }
    if (end < 0) end = offsets[k] + p.numel;
    const int64_t begin = k == 0 ? 0 : offsets[k];
    if (end - begin >= cap || k == 0) {
      g.completes = true;
      g.bucket_bytes = 4.0 * static_cast<double>(end - begin + (first_bucket ? flat - off : 0));
      first_bucket = false;
      end = -1;
    }
    out.push_back(g);
  }
  return out;
}

// One chunk (the layers a pipeline rank runs for one virtual stage) for one micro-batch.
struct Chunk {
  double saved = 0;          // in flight: everything kept until its backward, its output included
  double fwd_peak = 0;       // at the end of its forward, from its own tensors
  double bwd_peak = 0;       // at the peak of its backward
  double hold = 0;           // ZeRO-2: a deferred (tied embedding) gradient its first backward creates
  double bwd_peak_held = 0;  // the peak of a later backward, when that gradient exists from the start
  double output = 0;         // its output (sent to the next stage and kept in the trainer's list)
  double input_grad = 0;     // the gradient of its input (sent back and kept)
  const char* bwd_where = "";
};

Chunk chunk_of(const Config& c, const Sizes& z, int64_t index, std::pair<int64_t, int64_t> layers,
               int64_t vstage, int64_t vstages, const std::vector<ParamGrad>* grads) {
  const bool first = vstage == 0, last = vstage == vstages - 1;
  const bool rc = c.train.recompute;
  const double x = z.e * z.Nl * z.C;  // one residual-stream tensor (block input/output)
  const double ls = layer_saved(z);
  const int64_t n = layers.second - layers.first;
  Chunk k;
  k.output = last ? 0 : x;
  k.input_grad = first ? 0 : x;
  double embed = 0;
  if (first) embed = 4 * z.N + (z.tp ? 4 * z.N + z.e * z.N : 0);  // ids (+ local ids and the mask)
  const Head head = last ? head_of(z) : Head{};
  k.saved = embed + static_cast<double>(n) * (rc ? x : ls) + x + head.saved;
  // Forward: the last block's temporaries (under recompute its whole forward runs without recording), or the
  // head's.
  const double block_fwd = rc ? ls - x + block_forward_extra(z) : block_forward_extra(z);
  k.fwd_peak = std::max(k.saved - head.saved + block_fwd, k.saved + head.forward_extra);

  // Backward, walked from the top: the level of this chunk's own tensors, the peaks on the way, and (ZeRO-2)
  // the parameter gradients alive.
  double best = 0, alive = 0, held = 0;
  // This chunk's gradients are a contiguous run of `grads`, in the order the walk below produces them.
  size_t cur = 0, stop = 0;
  if (grads) {
    while (cur < grads->size() && (*grads)[cur].chunk != index) ++cur;
    stop = cur;
    while (stop < grads->size() && (*grads)[stop].chunk == index) ++stop;
    for (size_t i = cur; i < stop; ++i) k.hold += (*grads)[i].deferred ? (*grads)[i].bytes : 0.0;
  }
  auto at = [&](double v, const char* where) {
    if (v + held > best) best = v + held, k.bwd_where = where;
    k.bwd_peak_held = std::max(k.bwd_peak_held, v + k.hold);
  };
  // Produces the next `count` gradients of `layer` (all of them when count < 0) at activation level `level`;
  // inside a block, `level` is adjusted by what the block has freed when each parameter's gradient appears.
  auto produce = [&](int64_t layer, double level, int count = -1, int position = 0) {
    for (; grads && cur < stop && (*grads)[cur].layer == layer && count != 0; ++cur, --count) {
      const ParamGrad& g = (*grads)[cur];
      const int here = position;
      if (!g.bias) ++position;  // a bias comes just before its weight (reverse order): the same position
      const double lv = level - (layer >= 0 ? freed_before_grad(z, here) : 0.0);
      if (g.deferred) {
        // Created with the engine's copy in the first backward; the later ones write into it directly.
        const double created = lv + alive + held + 2 * g.bytes;
        if (created > best) best = created, k.bwd_where = "ZeRO-2 tied embedding gradient";
        k.bwd_peak_held = std::max(k.bwd_peak_held, lv + alive + k.hold);
        held += g.bytes;
        continue;
      }
      at(lv + alive + 2 * g.bytes, "ZeRO-2 parameter gradient");  // incoming and the engine's copy
      alive += g.bytes;
      if (g.completes) {
        at(lv + alive + g.bucket_bytes + g.bytes, "ZeRO-2 bucket reduction");
        alive = 0;
      }
    }
  };
  double level = k.saved;
  if (last) {
    at(level + head.backward_extra, "cross-entropy backward");
    const double linear = level - head.ce_saved + head.logit_grad + z.e * z.N * z.C;  // d logits, d h
    at(linear, "LM head backward");
    produce(-2, linear);
    level -= head.saved;  // the head's tensors and x_L freed, its gradient alive
  } else {
    level += 2 * x;  // the received gradient and the engine's copy of it
  }
  // A block's backward: its saved tensors (re-created by recompute, whose forward ends with the leave-copies
  // and whose backward starts from a copy of the incoming gradient) and the gradient temporaries.
  const double bwd = block_backward_extra(z);
  const double block = rc ? ls - x + std::max(block_forward_extra(z), 2 * x + bwd) : bwd;
  for (int64_t l = layers.second - 1; l >= layers.first; --l) {
    const double in_block = level + (rc ? ls - x + 2 * x : 0.0);  // recompute: the re-run block's tensors
    produce(l, in_block,
            1);  // down_proj's gradient exists before the peak inside the block (swiglu backward)
    at(level + alive + block, l == layers.second - 1 ? "last block backward" : "block backward");
    produce(l, in_block, -1, 1);
    level -= rc ? x : ls;
  }
  if (first) produce(-1, level);
  k.bwd_peak = best;
  return k;
}

}  // namespace

MemoryBreakdown predict_memory(const Config& c, int64_t stage, const GpuOverheads* gpu) {
  const int64_t tp = std::max<int64_t>(1, c.parallel.tp), pp = std::max<int64_t>(1, c.parallel.pp);
  const int64_t data_dp = c.parallel.dp, v = std::max<int64_t>(1, c.parallel.virtual_stages);
  POLDER_CHECK(data_dp >= 1, "plan: parallel.dp must be set (got {})", data_dp);
  const int64_t dp = data_dp * std::max<int64_t>(1, c.parallel.cp);  // the replicas ZeRO shards over
  POLDER_CHECK(stage >= 0 && stage < pp, "plan: stage {} of {}", stage, pp);
  const int zero = dp > 1 ? (c.parallel.zero == "3"   ? 3
                             : c.parallel.zero == "2" ? 2
                             : c.parallel.zero == "1" ? 1
                                                      : 0)
                          : 0;
  const bool bf16 = c.train.precision == "bf16";
  const double pbytes = bf16 ? 2 : 4;
  // The ranks a shard is spread over: all replicas, or hybrid groups of parallel.zero_group.
  const int64_t group = c.parallel.zero_group > 0 && c.parallel.zero_group < dp ? c.parallel.zero_group : dp;

  models::ParallelLayout layout;
  layout.tp = tp;
  layout.pp = pp;
  layout.pp_rank = stage;
  layout.virtual_stages = v;
  const std::vector<LocalParam> params = local_params(c.model, tp, pp, stage, v);
  const int64_t flat = flat_numel(params, zero > 0 ? dp : 1);
  const double owned = static_cast<double>(zero > 0 ? flat / group : flat);

  MemoryBreakdown m;
  m.stage = stage;
  m.weights = pbytes * (zero == 3 ? owned : static_cast<double>(flat));
  m.gradients = 4.0 * (zero >= 2 ? owned : static_cast<double>(flat));
  m.optimizer = 4.0 * owned * (bf16 ? 3 : 2);
  const int64_t head_dim = c.resolved_head_dim();
  m.other = 2.0 * 4.0 * static_cast<double>(c.model.max_seq_len * head_dim);

  // The schedule of this rank: which chunk runs forward or backward when (the list the trainer executes).
  const Sizes z = sizes_of(c);
  const int64_t M = c.train.global_batch / (c.train.micro_batch * data_dp);
  const auto chunks_layers = models::rank_chunks(c.model.num_layers, layout);
  std::vector<ParamGrad> grads;
  if (zero >= 2) grads = zero2_grads(c, params, chunks_layers, flat);
  std::vector<Chunk> chunks;
  for (int64_t ch = 0; ch < v; ++ch)
    chunks.push_back(chunk_of(c, z, ch, chunks_layers[static_cast<size_t>(ch)], ch * pp + stage, pp * v,
                              zero >= 2 ? &grads : nullptr));
  const parallel::Schedule events = parallel::make_schedule(c.parallel.schedule, {pp, stage, v, M});

  // held: ZeRO-2's tied embedding gradient, from its chunk's first backward to the end of the step.
  // The trainer's transfers (parallel::p2p_groups): a sent tensor lives until its group completes, which is
  // at once for a group with a receive (waited for before the next event) and at the end of the step for a
  // group of sends only (`keep`). A forward's output is also the chunk's saved output until its backward, so
  // it costs nothing extra until then; an input gradient is `pending` from its backward to its group. A
  // receive posted ahead (recv_ahead) holds the next backward's incoming gradient during the forward.
  const std::vector<std::vector<parallel::P2PMessage>> groups = parallel::p2p_groups(events);
  double in_flight = 0, keep = 0, pending = 0, peak = 0, held = 0;
  std::vector<bool> done(chunks.size(), false);
  std::vector<bool> output_kept(events.size(), false);  // a forward's output sent in a group of sends only
  std::vector<size_t> forward_of(static_cast<size_t>(v * M), 0);
  std::string where;
  auto post = [&](const std::vector<parallel::P2PMessage>& g) {
    const bool receives = std::any_of(g.begin(), g.end(), [](const auto& m) { return !m.send; });
    for (const parallel::P2PMessage& m : g) {
      if (!m.send) continue;
      const parallel::ScheduleEvent& from = events[m.event];
      if (from.forward()) {
        output_kept[m.event] = !receives;
      } else {
        const double bytes = chunks[static_cast<size_t>(from.chunk)].input_grad;
        pending -= bytes;
        if (!receives) keep += bytes;
      }
    }
  };
  for (size_t i = 0; i < events.size(); ++i) {
    const parallel::ScheduleEvent& ev = events[i];
    post(groups[i]);
    const Chunk& k = chunks[static_cast<size_t>(ev.chunk)];
    const size_t slot = static_cast<size_t>(ev.chunk * M + ev.micro_batch);
    if (ev.forward()) {
      const bool ahead = ev.recv_ahead && i + 1 < events.size() && !events[i + 1].forward();
      const double next_grad = ahead ? chunks[static_cast<size_t>(events[i + 1].chunk)].output : 0.0;
      const double level = in_flight + keep + pending + held + next_grad + k.fwd_peak;
      if (level > peak) peak = level, where = "forward";
      in_flight += k.saved;
      forward_of[slot] = i;
    } else {
      in_flight -= k.saved;
      const bool again = k.hold > 0 && done[static_cast<size_t>(ev.chunk)];
      const double level =
          in_flight + keep + pending + held + (again ? k.bwd_peak_held - k.hold : k.bwd_peak);
      if (level > peak) peak = level, where = k.bwd_where;
      if (output_kept[forward_of[slot]]) keep += k.output;
      pending += k.input_grad;
      if (!again) held += k.hold;
      done[static_cast<size_t>(ev.chunk)] = true;
    }
  }
  post(groups.back());
  // ZeRO-1: the reduce-scatter into the owned chunk of the gradient buffer goes through a temporary.
  if (zero == 1) peak = std::max(peak, keep + 4.0 * owned);
  // ZeRO-2, tied embedding: after the schedule, its bucket is staged and reduce-scattered (its owned part).
  for (const ParamGrad& g : grads)
    if (g.deferred) peak = std::max(peak, held + g.bucket_bytes + std::min(g.bucket_bytes, 4.0 * owned));
  // ZeRO-3: units are gathered as they run, the running one and the prefetched next one. The step's peak is
  // usually the last gradient bucket's reduction, inside the backward of the stage's first unit whose
  // gradient is not deferred, where that unit alone is resident (the embedding on the first stage, else the
  // first layer; an embedding tied across stages is reduced after the schedule): modelled as that unit on top
  // of ZeRO-2's peak. (A peak in forward would hold two layers; not modelled.)
  if (zero == 3) {
    std::vector<double> units;
    double cur = 0;
    int64_t cur_layer = -3;
    const bool tied_across = c.model.tie_embeddings && pp > 1;
    for (const LocalParam& p : params) {
      if (tied_across && p.kind == LocalParam::embedding) continue;  // deferred: not the binding unit
      const int64_t key = p.kind == LocalParam::layer       ? p.layer_index
                          : p.kind == LocalParam::embedding ? -1
                                                            : -2;
      if (key != cur_layer && cur > 0) units.push_back(cur), cur = 0;
      cur_layer = key;
      cur += pbytes * static_cast<double>(p.numel);
    }
    if (cur > 0) units.push_back(cur);
    peak += units.empty() ? 0.0 : units.front();
  }
  m.activations = peak;
  m.peak_at = where;

  if (gpu) {
    m.workspace = gpu->context_bytes + gpu->cublas_workspace_bytes;
    // The mesh's communicators that carry traffic (each connected by the trainer's warm-up): tp, dp, pp, the
    // tied-embedding group, and with context parallelism cp and the dp x cp replica group.
    const int64_t cp = std::max<int64_t>(1, c.parallel.cp);
    int comms = (tp > 1) + (data_dp > 1) + (pp > 1) + (pp > 1 && c.model.tie_embeddings) + (cp > 1 ? 2 : 0) +
                (zero > 0 && group < dp ? 2 : 0);  // hybrid: the shard and cross groups
    m.comm_buffers = gpu->nccl_bytes_per_comm * comms;
    m.slack = gpu->allocator_slack * m.activations;
  }
  return m;
}

MemoryBreakdown predict_memory_max(const Config& c, const GpuOverheads* gpu) {
  MemoryBreakdown best;
  const int64_t pp = std::max<int64_t>(1, c.parallel.pp);
  for (int64_t s = 0; s < pp; ++s) {
    MemoryBreakdown m = predict_memory(c, s, gpu);
    if (s == 0 || m.total() > best.total()) best = m;
  }
  return best;
}

}  // namespace polder::plan
