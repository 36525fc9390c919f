// Text and JSON reports of a plan.
#include "plan/report.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "models/llama/model.h"

namespace polder::plan {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string seconds(double s) {
  if (s >= 1) return fixed(s, 3) + " s";
  if (s >= 1e-3) return fixed(s * 1e3, 1) + " ms";
  return fixed(s * 1e6, 0) + " us";
}

std::string with_commas(int64_t n) {
  std::string s = std::to_string(n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string headline(const PlanRequest& r) {
  const int64_t n = models::llama_parameter_count(r.base.model);
  const int64_t nodes = (r.gpus + r.cluster.gpus_per_node - 1) / r.cluster.gpus_per_node;
  return format(
      "{} parameters ({}B), {} x {} ({}, {} nodes of {}), {} tokens per step ({} x {}), {}", with_commas(n),
      fixed(static_cast<double>(n) / 1e9, 2), r.gpus, r.cluster.gpu_name, r.cluster.name, nodes,
      r.cluster.gpus_per_node, with_commas(r.global_batch_tokens), r.global_batch_tokens / r.seq_len,
      r.seq_len,
      r.base.train.precision.empty() || r.base.train.precision == "auto" ? "bf16" : r.base.train.precision);
}

std::string calibration_line(const Calibration& k) {
  return format(
      "GEMM {} TFLOP/s, attention {} / {} TFLOP/s (fwd / bwd), copy {} GB/s x {} for memory-bound ops, "
      "links x {}",
      fixed(k.gemm_tflops, 0), fixed(k.attention_fwd_tflops, 1), fixed(k.attention_bwd_tflops, 1),
      fixed(k.copy_gbps, 0), fixed(k.memory_efficiency, 2), fixed(k.comm_efficiency, 2));
}

}  // namespace

std::string plan_text(const PlanRequest& r, const PlanResult& res, int64_t top, int64_t show_rejected) {
  std::string o = "polder plan: " + headline(r) + "\n";
  o += "calibration: " + r.calibration.source + "\n             " + calibration_line(r.calibration) + "\n";
  for (const std::string& n : r.calibration.notes) o += "             " + n + "\n";
  int64_t rules = 0;
  for (auto& [why, n] : res.rule_rejections) rules += n;
  o += format("layouts: {} considered: {} fit, {} need more than {} GiB per GPU, {} break a rule of polder\n",
              res.considered, res.valid.size(), res.too_big.size(), r.cluster.hbm_gib, rules);
  if (res.valid.empty()) {
    o += "\nno layout fits.\n";
  } else {
    char line[256];
    std::snprintf(line, sizeof line, "\n%-4s %-34s %10s %10s %13s %6s %12s\n", "rank", "layout", "GiB/GPU",
                  "step", "tokens/s/GPU", "MFU", "energy/step");
    o += line;
    for (int64_t i = 0; i < std::min<int64_t>(top, static_cast<int64_t>(res.valid.size())); ++i) {
      const Candidate& c = res.valid[static_cast<size_t>(i)];
      std::snprintf(line, sizeof line, "%-4lld %-34s %10.1f %10s %13.0f %5.1f%% %9.2f MJ\n",
                    static_cast<long long>(i + 1), c.layout.describe().c_str(), c.memory.total() / kGiB,
                    seconds(c.time.total).c_str(), c.tokens_per_s_per_gpu, 100 * c.mfu, c.energy_j / 1e6);
      o += line;
    }
    const Candidate& b = res.valid.front();
    const MemoryBreakdown& m = b.memory;
    const StepTime& t = b.time;
    o += format("\nbest: {}\n", b.layout.describe());
    o += format(
        "  memory per GPU (stage {}): weights {}, gradients {}, optimizer {}, activations {} (peak: {}), "
        "RoPE "
        "{}, NCCL buffers {}, CUDA context + cuBLAS workspace {}, allocator slack {} = {} of {} GiB\n",
        m.stage, fixed(m.weights / kGiB, 2), fixed(m.gradients / kGiB, 2), fixed(m.optimizer / kGiB, 2),
        fixed(m.activations / kGiB, 2), m.peak_at, fixed(m.other / kGiB, 3), fixed(m.comm_buffers / kGiB, 2),
        fixed(m.workspace / kGiB, 2), fixed(m.slack / kGiB, 2), fixed(m.total() / kGiB, 2),
        r.cluster.hbm_gib);
    o += format(
        "  step {} (slowest stage {}): GEMM {}, attention {}, memory-bound {}, {} comm {}, pp comm {}, "
        "pipeline bubble {}, dp comm {} ({} exposed){}, optimizer {}, other comm {}\n",
        seconds(t.total), t.slowest_stage, seconds(t.gemm), seconds(t.attention), seconds(t.memory_bound),
        b.config.parallel.cp > 1 ? "tp + cp" : "tp", seconds(t.tp_comm), seconds(t.pp_comm),
        seconds(t.bubble), seconds(t.dp_comm), seconds(t.dp_exposed),
        t.dp_in_backward > 0 ? ", ZeRO-2 reduce-scatters in the backward " + seconds(t.dp_in_backward) : "",
        seconds(t.optimizer), seconds(t.other_comm));
    o += format(
        "  {} tokens/s per GPU, MFU {}% (model FLOPs of train::flops_per_token over {} TFLOP/s per GPU), "
        "energy {} MJ per step = {} MWh per 1T tokens\n",
        fixed(b.tokens_per_s_per_gpu, 0), fixed(100 * b.mfu, 1), fixed(r.cluster.peak_tflops, 0),
        fixed(b.energy_j / 1e6, 3), fixed(b.energy_j / b.tokens_per_step * 1e12 / 3.6e9, 0));
    o += "\nconfig for the best layout:\n" + layout_yaml(b);
  }
  if (!res.measured.empty()) {
    o += "\npolder's measured GPU runs against this model (one GPU, data.seq_len x micro-batches as "
         "measured):\n";
    for (const MeasuredComparison& m : res.measured) {
      const MeasuredRun& x = m.run;
      o += format("  {} ({}: {} x {} tokens, micro-batch {}): ", x.model, x.file, x.global_batch, x.seq_len,
                  x.micro_batch);
      if (!m.error.empty()) {
        o += "not predicted: " + m.error + "\n";
        continue;
      }
      o += format("step measured {}, predicted {} ({}x)", seconds(x.step_time_s), seconds(m.predicted_step_s),
                  fixed(m.predicted_step_s / x.step_time_s, 2));
      if (x.peak_memory_gib > 0)
        o += format("; peak memory measured {} GiB, predicted {} GiB", fixed(x.peak_memory_gib, 2),
                    fixed(m.predicted_memory_gib, 2));
      o += "\n";
    }
  }
  if (show_rejected > 0) {
    o += "\nrejected:\n";
    for (int64_t i = 0; i < std::min<int64_t>(show_rejected, static_cast<int64_t>(res.too_big.size())); ++i)
      o += "  " + res.too_big[static_cast<size_t>(i)].layout.describe() + ": " +
           res.too_big[static_cast<size_t>(i)].rejected + "\n";
    for (auto& [why, n] : res.rule_rejections) o += format("  {} layout{}: {}\n", n, n == 1 ? "" : "s", why);
  }
  return o;
}

nlohmann::json candidate_json(const Candidate& c) {
  nlohmann::json j;
  const Layout& l = c.layout;
  j["layout"] = {{"dp", l.dp},
                 {"tp", l.tp},
                 {"pp", l.pp},
                 {"cp", l.cp},
                 {"virtual_stages", l.virtual_stages},
                 {"micro_batch", l.micro_batch},
                 {"zero", l.zero},
                 {"zero_group", l.zero_group},
                 {"sequence_parallel", l.sequence_parallel},
                 {"recompute", l.recompute}};
  const MemoryBreakdown& m = c.memory;
  j["memory_bytes"] = {{"stage", m.stage},
                       {"weights", m.weights},
                       {"gradients", m.gradients},
                       {"optimizer", m.optimizer},
                       {"activations", m.activations},
                       {"rope", m.other},
                       {"communication_buffers", m.comm_buffers},
                       {"workspace", m.workspace},
                       {"allocator_slack", m.slack},
                       {"total", m.total()},
                       {"peak_at", m.peak_at}};
  const StepTime& t = c.time;
  j["step_seconds"] = {{"total", t.total},
                       {"gemm", t.gemm},
                       {"attention", t.attention},
                       {"memory_bound", t.memory_bound},
                       {"tp_comm", t.tp_comm},
                       {"pp_comm", t.pp_comm},
                       {"dp_in_backward", t.dp_in_backward},
                       {"bubble", t.bubble},
                       {"dp_comm", t.dp_comm},
                       {"dp_exposed", t.dp_exposed},
                       {"optimizer", t.optimizer},
                       {"other_comm", t.other_comm},
                       {"slowest_stage", t.slowest_stage}};
  j["tokens_per_s_per_gpu"] = c.tokens_per_s_per_gpu;
  j["mfu"] = c.mfu;
  j["energy_j_per_step"] = c.energy_j;
  if (!c.rejected.empty()) j["rejected"] = c.rejected;
  return j;
}

nlohmann::json plan_json(const PlanRequest& r, const PlanResult& res, int64_t show_rejected) {
  nlohmann::json j;
  j["request"] = {{"gpus", r.gpus},
                  {"global_batch_tokens", r.global_batch_tokens},
                  {"seq_len", r.seq_len},
                  {"cluster", r.cluster.name},
                  {"gpu", r.cluster.gpu_name},
                  {"hbm_gib", r.cluster.hbm_gib},
                  {"parameters", models::llama_parameter_count(r.base.model)}};
  const Calibration& k = r.calibration;
  j["calibration"] = {{"source", k.source},
                      {"notes", k.notes},
                      {"gemm_tflops", k.gemm_tflops},
                      {"attention_fwd_tflops", k.attention_fwd_tflops},
                      {"attention_bwd_tflops", k.attention_bwd_tflops},
                      {"copy_gbps", k.copy_gbps},
                      {"memory_efficiency", k.memory_efficiency},
                      {"comm_efficiency", k.comm_efficiency}};
  j["considered"] = res.considered;
  j["valid"] = nlohmann::json::array();
  for (const Candidate& c : res.valid) j["valid"].push_back(candidate_json(c));
  j["too_big_count"] = res.too_big.size();
  j["too_big"] = nlohmann::json::array();
  for (int64_t i = 0; i < std::min<int64_t>(show_rejected, static_cast<int64_t>(res.too_big.size())); ++i)
    j["too_big"].push_back(candidate_json(res.too_big[static_cast<size_t>(i)]));
  j["rule_rejections"] = res.rule_rejections;
  j["measured"] = nlohmann::json::array();
  for (const MeasuredComparison& m : res.measured) {
    nlohmann::json x = {{"file", m.run.file},
                        {"model", m.run.model},
                        {"config", m.run.config},
                        {"seq_len", m.run.seq_len},
                        {"micro_batch", m.run.micro_batch},
                        {"global_batch", m.run.global_batch},
                        {"measured_step_s", m.run.step_time_s},
                        {"predicted_step_s", m.predicted_step_s},
                        {"measured_memory_gib", m.run.peak_memory_gib},
                        {"predicted_memory_gib", m.predicted_memory_gib}};
    if (!m.error.empty()) x["error"] = m.error;
    j["measured"].push_back(x);
  }
  if (!res.valid.empty()) j["best_yaml"] = layout_yaml(res.valid.front());
  return j;
}

}  // namespace polder::plan
