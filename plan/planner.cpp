// Layout enumeration and ranking. Rules come from validate_config (the same checks `polder train` runs) plus
// the trainer's own (pipeline micro-batches, interleaving); memory from plan/memory,
// time from plan/step_time.
#include "plan/planner.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "models/llama/model.h"
#include "train/trainer.h"

namespace polder::plan {

std::string Layout::describe() const {
  std::string s = format("dp {} tp {} pp {}", dp, tp, pp);
  if (cp > 1) s += format(" cp {}", cp);
  if (virtual_stages > 1) s += format(" v {}", virtual_stages);
  s += format(" mb {}", micro_batch);
  if (zero > 0) s += format(" zero{}", zero);
  if (zero > 0 && zero_group > 0) s += format(" groups of {}", zero_group);
  if (sequence_parallel) s += " sp";
  if (recompute) s += " rc";
  return s;
}

Config apply_layout(const Config& base, const Layout& l) {
  Config c = base;
  c.parallel.dp = l.dp;
  c.parallel.tp = l.tp;
  c.parallel.pp = l.pp;
  c.parallel.cp = l.cp;
  c.parallel.virtual_stages = l.virtual_stages;
  c.parallel.zero = l.zero == 0 ? "none" : std::to_string(l.zero);
  c.parallel.zero_group = l.zero_group;
  c.parallel.sequence_parallel = l.sequence_parallel;
  c.train.micro_batch = l.micro_batch;
  c.train.recompute = l.recompute;
  return c;
}

std::string layout_error(const Config& c, int64_t gpus) {
  try {
    validate_config(c, gpus);
  } catch (const Error& e) {
    return e.message();
  }
  const ParallelConfig& p = c.parallel;
  const int64_t M = c.train.global_batch / (c.train.micro_batch * p.dp);
  if (p.pp > 1 && M < p.pp)
    return format("parallel.pp = {} needs at least as many micro-batches per step, but there are {}", p.pp,
                  M);
  if (p.virtual_stages > 1 && (p.pp == 1 || M % p.pp != 0))
    return format(
        "parallel.virtual_stages = {} needs pp > 1 and micro-batches per step ({}) divisible by pp ({})",
        p.virtual_stages, M, p.pp);
  return "";
}

namespace {

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> out;
  for (int64_t i = 1; i <= n; ++i)
    if (n % i == 0) out.push_back(i);
  return out;
}

// The stages whose memory can be the largest: stage 0 holds the most micro-batches in flight (and, with
// uneven splits, the most layers), the last one the LM head; the others lie between (all of them for short
// pipelines).
std::vector<int64_t> stages_to_check(int64_t pp) {
  if (pp <= 8) {
    std::vector<int64_t> all;
    for (int64_t s = 0; s < pp; ++s) all.push_back(s);
    return all;
  }
  return {0, 1, pp / 2, pp - 2, pp - 1};
}

GpuOverheads overheads_of(const Cluster& cl) {
  GpuOverheads g;
  g.context_bytes = cl.context_gib * 1024.0 * 1024.0 * 1024.0;
  g.cublas_workspace_bytes = cl.cublas_workspace_mib * 1024.0 * 1024.0;
  g.nccl_bytes_per_comm = cl.nccl_mib_per_comm * 1024.0 * 1024.0;
  g.allocator_slack = cl.allocator_slack;
  return g;
}

std::string gib(double b) {
  return format("{}", std::round(b / (1 << 30) * 10) / 10);
}

}  // namespace

namespace {

// What plan() derives once from the request: the base config at the requested batch, and the constants of
// every candidate's evaluation.
struct PlanContext {
  Config base;
  int64_t G = 0;  // sequences per step
  GpuOverheads gpu;
  double hbm = 0;    // bytes of HBM per GPU
  double fpt = 0;    // FLOPs per token
  double power = 0;  // W of the whole job
};

PlanContext plan_context(const PlanRequest& r) {
  POLDER_CHECK(r.gpus >= 1, "plan: --gpus must be at least 1, got {}", r.gpus);
  POLDER_CHECK(r.seq_len >= 1, "plan: --seq-len must be positive, got {}", r.seq_len);
  POLDER_CHECK(r.global_batch_tokens >= r.seq_len && r.global_batch_tokens % r.seq_len == 0,
               "plan: --global-batch-tokens {} is not a multiple of --seq-len {}", r.global_batch_tokens,
               r.seq_len);
  POLDER_CHECK(r.seq_len <= r.base.model.max_seq_len, "plan: --seq-len {} exceeds the model's max_seq_len {}",
               r.seq_len, r.base.model.max_seq_len);
  PlanContext ctx;
  ctx.G = r.global_batch_tokens / r.seq_len;
  ctx.base = r.base;
  ctx.base.data.seq_len = r.seq_len;
  ctx.base.train.global_batch = ctx.G;
  // The planner plans GPU runs: auto is bf16 there (train::resolve_auto_precision).
  if (ctx.base.train.precision.empty() || ctx.base.train.precision == "auto")
    ctx.base.train.precision = "bf16";
  ctx.gpu = overheads_of(r.cluster);
  ctx.hbm = r.cluster.hbm_gib * 1024.0 * 1024.0 * 1024.0;
  ctx.fpt = train::flops_per_token(ctx.base.model, r.seq_len);
  const int64_t nodes = (r.gpus + r.cluster.gpus_per_node - 1) / r.cluster.gpus_per_node;
  ctx.power = (static_cast<double>(r.gpus) * r.cluster.gpu_power_w +
               static_cast<double>(nodes) * r.cluster.node_power_w) *
              r.cluster.pue;
  return ctx;
}

// Predicts memory (the largest stage), step time, throughput and energy of one valid layout, and files it as
// valid or too big for the HBM.
void evaluate(Candidate cand, const PlanRequest& r, const PlanContext& ctx, PlanResult& out) {
  for (int64_t s : stages_to_check(cand.layout.pp)) {
    MemoryBreakdown m = predict_memory(cand.config, s, &ctx.gpu);
    if (m.total() > cand.memory.total()) cand.memory = m;
  }
  cand.time = predict_step_time(cand.config, r.cluster, r.calibration);
  cand.tokens_per_step = static_cast<double>(ctx.G * r.seq_len);
  cand.tokens_per_s_per_gpu = cand.tokens_per_step / cand.time.total / static_cast<double>(r.gpus);
  cand.mfu = cand.tokens_per_step * ctx.fpt / cand.time.total /
             (static_cast<double>(r.gpus) * r.cluster.peak_tflops * 1e12);
  cand.energy_j = ctx.power * cand.time.total;
  if (cand.memory.total() > ctx.hbm) {
    const MemoryBreakdown& m = cand.memory;
    cand.rejected = format(
        "needs {} GiB on stage {} (weights {}, gradients {}, optimizer {}, activations {}, "
        "other {}) > "
        "{} GiB of HBM",
        gib(m.total()), m.stage, gib(m.weights), gib(m.gradients), gib(m.optimizer), gib(m.activations),
        gib(m.other + m.comm_buffers + m.workspace + m.slack), r.cluster.hbm_gib);
    out.too_big.push_back(std::move(cand));
  } else {
    out.valid.push_back(std::move(cand));
  }
}

// Structural rules first, on a representative layout (dp, tp, pp), so that a tp that cannot split the heads
// is one rejection, not hundreds. Returns whether the (dp, tp, pp) was rejected.
bool reject_structure(const PlanRequest& r, const PlanContext& ctx, const Layout& l0, PlanResult& out) {
  if (std::string why = layout_error(apply_layout(ctx.base, l0), r.gpus);
      !why.empty() && why.find("micro") == std::string::npos &&
      why.find("global_batch") == std::string::npos) {
    out.rule_rejections[why] += 1;
    ++out.considered;
    return true;
  }
  if (ctx.G % l0.dp != 0) {
    out.rule_rejections[format("{} sequences per step are not divisible by dp = {}", ctx.G, l0.dp)] += 1;
    ++out.considered;
    return true;
  }
  return false;
}

// Every micro-batch size, interleaving, ZeRO stage, sequence parallelism and recompute of one (dp, tp, pp).
void enumerate_layouts(const PlanRequest& r, const PlanContext& ctx, const Layout& l0, PlanResult& out) {
  const int64_t dp = l0.dp, tp = l0.tp, pp = l0.pp;
  const int64_t max_v = pp > 1 ? std::min(r.max_virtual_stages, ctx.base.model.num_layers / pp) : 1;
  for (int64_t mb : divisors(ctx.G / dp)) {
    if (mb > r.max_micro_batch) break;
    for (int64_t v = 1; v <= max_v; ++v) {
      // Hybrid sharding: the replicas on one node (tp x cp x group ranks fill it) as the shard group.
      const int64_t replicas = dp * l0.cp, per_node = r.cluster.gpus_per_node / (tp * l0.cp);
      std::vector<int64_t> groups = {0};
      if (per_node > 1 && per_node < replicas && replicas % per_node == 0 &&
          r.cluster.gpus_per_node % (tp * l0.cp) == 0)
        groups.push_back(per_node);
      for (int zero = 0; zero <= (replicas > 1 ? 3 : 0); ++zero) {
        for (int64_t group : zero > 0 ? groups : std::vector<int64_t>{0}) {
          for (int sp = 0; sp <= (tp > 1 ? 1 : 0); ++sp) {
            for (int rc = 0; rc <= 1; ++rc) {
              Layout l = l0;
              l.micro_batch = mb, l.virtual_stages = v, l.zero = zero, l.sequence_parallel = sp,
              l.recompute = rc, l.zero_group = group;
              Candidate cand;
              cand.layout = l;
              cand.config = apply_layout(ctx.base, l);
              ++out.considered;
              if (std::string why = layout_error(cand.config, r.gpus); !why.empty()) {
                out.rule_rejections[why] += 1;
                continue;
              }
              evaluate(std::move(cand), r, ctx, out);
            }
          }
        }
      }
    }
  }
}

}  // namespace

PlanResult plan(const PlanRequest& r) {
  const PlanContext ctx = plan_context(r);
  PlanResult out;
  for (int64_t tp : divisors(r.gpus)) {
    if (r.max_tp > 0 && tp > r.max_tp) continue;
    for (int64_t pp : divisors(r.gpus / tp)) {
      if (pp > ctx.base.model.num_layers || (r.max_pp > 0 && pp > r.max_pp)) continue;
      for (int64_t cp : divisors(r.gpus / (tp * pp))) {
        if (cp > (r.max_cp > 0 ? r.max_cp : 16) || ctx.base.data.seq_len % (2 * cp) != 0) continue;
        Layout l0;
        l0.dp = r.gpus / (tp * pp * cp), l0.tp = tp, l0.pp = pp, l0.cp = cp;
        if (!reject_structure(r, ctx, l0, out)) enumerate_layouts(r, ctx, l0, out);
      }
    }
  }
  out.measured = compare_measured(r);
  std::stable_sort(out.valid.begin(), out.valid.end(), [](const Candidate& a, const Candidate& b) {
    if (a.time.total != b.time.total) return a.time.total < b.time.total;
    return a.memory.total() < b.memory.total();
  });
  std::stable_sort(out.too_big.begin(), out.too_big.end(), [](const Candidate& a, const Candidate& b) {
    return a.memory.total() < b.memory.total();
  });
  return out;
}

std::vector<MeasuredComparison> compare_measured(const PlanRequest& r) {
  std::vector<MeasuredComparison> out;
  const GpuOverheads gpu = overheads_of(r.cluster);
  for (const MeasuredRun& m : r.measured) {
    MeasuredComparison cmp;
    cmp.run = m;
    try {
      Config c = load_config(r.repo_root + "/" + m.config);
      c.data.seq_len = m.seq_len;
      c.train.micro_batch = m.micro_batch;
      c.train.global_batch = m.global_batch;
      c.train.precision = "bf16";
      c.parallel = ParallelConfig{};
      c.parallel.dp = 1;
      cmp.predicted_step_s = predict_step_time(c, r.cluster, r.calibration).total;
      const MemoryBreakdown mem = predict_memory(c, 0, &gpu);
      cmp.predicted_memory_gib =
          (mem.allocated_peak() + gpu.cublas_workspace_bytes) / (1024.0 * 1024.0 * 1024.0);
    } catch (const Error& e) {
      cmp.error = e.message();
    }
    out.push_back(cmp);
  }
  return out;
}

std::string layout_yaml(const Candidate& c) {
  const Layout& l = c.layout;
  std::string y = "parallel:\n";
  y += format("  tp: {}\n  pp: {}\n", l.tp, l.pp);
  if (l.cp > 1) y += format("  cp: {}\n", l.cp);
  y += format("  dp: 0                    # derived: world size / (tp * pp{}) = {}\n",
              l.cp > 1 ? " * cp" : "", l.dp);
  y += format("  virtual_stages: {}\n", l.virtual_stages);
  y += format("  zero: \"{}\"\n", l.zero == 0 ? "none" : std::to_string(l.zero));
  if (l.zero > 0 && l.zero_group > 0) y += format("  zero_group: {}\n", l.zero_group);
  y += format("  sequence_parallel: {}\n", l.sequence_parallel ? "true" : "false");
  y += format("  bucket_mb: {}\n", c.config.parallel.bucket_mb);
  y += "train:\n";
  y += format("  micro_batch: {}\n  global_batch: {}\n  recompute: {}\n", l.micro_batch,
              c.config.train.global_batch, l.recompute ? "true" : "false");
  y += format("  precision: {}\n", c.config.train.precision);
  y += format("data:\n  seq_len: {}\n", c.config.data.seq_len);
  return y;
}

}  // namespace polder::plan
