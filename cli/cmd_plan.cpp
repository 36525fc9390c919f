// polder plan: which parallel layout fits a model on a cluster and how fast it trains (plan/). Parses flags,
// loads the config and the cluster, calls the planner, prints its report.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "plan/report.h"
#include "train/config.h"

namespace polder::cli {
namespace {

struct PlanArgs {
  std::string config, cluster, perf_dir = "docs/perf";
  std::vector<std::string> overrides, rates;
  int64_t gpus = 0, global_batch_tokens = 0, seq_len = 0, top = 5, show_rejected = 0, max_micro_batch = 16;
  int64_t max_tp = 0, max_pp = 0, max_cp = 0;
  bool json = false;
};

// --rate key=value: a calibration value given by hand (what the planner would read from docs/perf).
void apply_rate(plan::Calibration& k, const std::string& kv) {
  const auto eq = kv.find('=');
  POLDER_CHECK(eq != std::string::npos, "--rate '{}': expected key=value, e.g. attention_fwd_tflops=400", kv);
  const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
  double v = 0;
  try {
    size_t used = 0;
    v = std::stod(value, &used);
    POLDER_CHECK(used == value.size(), "");
  } catch (const std::exception&) {
    POLDER_FAIL("--rate {}: '{}' is not a number", key, value);
  }
  POLDER_CHECK(v > 0, "--rate {}: must be positive, got {}", key, v);
  struct Field {
    const char* name;
    double* value;
  };
  for (Field f : {Field{"gemm_tflops", &k.gemm_tflops},
                  {"attention_fwd_tflops", &k.attention_fwd_tflops},
                  {"attention_bwd_tflops", &k.attention_bwd_tflops},
                  {"copy_gbps", &k.copy_gbps},
                  {"memory_efficiency", &k.memory_efficiency},
                  {"comm_efficiency", &k.comm_efficiency}}) {
    if (key == f.name) {
      *f.value = v;
      k.notes.push_back("--rate " + kv);
      return;
    }
  }
  POLDER_FAIL(
      "--rate: unknown key '{}' (expected gemm_tflops, attention_fwd_tflops, attention_bwd_tflops, "
      "copy_gbps, "
      "memory_efficiency or comm_efficiency)",
      key);
}

void run_plan(const PlanArgs& a) {
  plan::PlanRequest r;
  r.base = load_config(a.config, a.overrides);
  r.cluster = plan::load_cluster(a.cluster);
  r.calibration = plan::load_calibration(r.cluster, a.perf_dir);
  for (const std::string& kv : a.rates) apply_rate(r.calibration, kv);
  if (!a.rates.empty()) r.calibration.source += "; --rate overrides";
  r.gpus = a.gpus;
  r.global_batch_tokens = a.global_batch_tokens;
  r.seq_len = a.seq_len;
  r.max_micro_batch = a.max_micro_batch;
  r.max_tp = a.max_tp;
  r.max_pp = a.max_pp;
  r.max_cp = a.max_cp;
  r.measured = plan::load_measured_runs(r.cluster, a.perf_dir);  // configs relative to the working directory
  const plan::PlanResult res = plan::plan(r);
  if (a.json) {
    std::printf("%s\n", plan::plan_json(r, res, a.show_rejected).dump(1).c_str());
  } else {
    std::printf("%s", plan::plan_text(r, res, a.top, a.show_rejected).c_str());
  }
}

}  // namespace

void register_plan(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  auto* cmd =
      app.add_subcommand("plan", "which parallel layouts fit a model on a cluster, and how fast they train");
  cmd->add_option("-c,--config", a->config,
                  "model config (configs/*.yaml): the model section and train.precision")
      ->required();
  cmd->add_option("--set", a->overrides,
                  "override a config key, e.g. --set model.num_layers=80 (repeatable)");
  cmd->add_option("--cluster", a->cluster, "cluster file (configs/clusters/*.yaml)")->required();
  cmd->add_option("--gpus", a->gpus, "number of GPUs")->required()->check(CLI::PositiveNumber);
  cmd->add_option("--global-batch-tokens", a->global_batch_tokens, "tokens per optimizer step")
      ->required()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", a->seq_len, "sequence length")->required()->check(CLI::PositiveNumber);
  cmd->add_option("--top", a->top, "layouts to list (default 5)")->check(CLI::PositiveNumber);
  cmd->add_option("--show-rejected", a->show_rejected,
                  "also list this many layouts that do not fit, with the reason");
  cmd->add_option("--max-micro-batch", a->max_micro_batch, "largest micro-batch to try (default 16)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-tp", a->max_tp, "largest tensor-parallel size to try (default: any)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-pp", a->max_pp, "largest pipeline-parallel size to try (default: any)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-cp", a->max_cp,
                  "largest context-parallel size to try (default 16; only sizes that split seq_len into 2 cp "
                  "chunks)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--perf-dir", a->perf_dir, "benchmark results to calibrate from (default docs/perf)");
  cmd->add_option(
      "--rate", a->rates,
      "a calibration value by hand, e.g. attention_fwd_tflops=400 (repeatable; keys: gemm_tflops, "
      "attention_fwd_tflops, attention_bwd_tflops, copy_gbps, memory_efficiency, comm_efficiency)");
  cmd->add_flag("--json", a->json, "every valid layout as JSON");
  cmd->callback([a] { run_plan(*a); });
}

}  // namespace polder::cli
