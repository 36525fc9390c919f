// The scale planner: every layout (dp, tp, pp, virtual stages, micro-batch, ZeRO stage, sequence parallelism,
// recompute) of a model on a number of GPUs, each checked against polder's rules and the GPU's memory, priced
// by the step-time model and ranked by throughput. cli/cmd_plan.cpp prints it; tests/test_plan.cpp checks it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "plan/calibration.h"
#include "plan/cluster.h"
#include "plan/memory.h"
#include "plan/step_time.h"
#include "train/config.h"

namespace polder::plan {

struct Layout {
  int64_t dp = 1, tp = 1, pp = 1, virtual_stages = 1, micro_batch = 1;
  int64_t cp = 1;  // context parallelism
  int zero = 0;
  int64_t zero_group = 0;  // hybrid sharding: the shard group (0: all replicas)
  bool sequence_parallel = false, recompute = false;
  std::string describe() const;  // "dp 32 tp 8 pp 1 cp 2 v 1 mb 1 zero 1 sp rc" (cp named when > 1)
};

// `base` with the layout applied (parallel section, micro-batch, recompute).
Config apply_layout(const Config& base, const Layout& layout);
// Why polder cannot run this layout (the first broken rule, one line), or "" when it can.
std::string layout_error(const Config& config, int64_t gpus);

struct Candidate {
  Layout layout;
  Config config;
  MemoryBreakdown memory;
  StepTime time;
  double tokens_per_step = 0;
  double tokens_per_s_per_gpu = 0;
  double mfu = 0;        // model FLOPs (train::flops_per_token) per second over the GPUs' bf16 peak
  double energy_j = 0;   // per step: GPUs, nodes, PUE
  std::string rejected;  // why it does not fit; empty when it does
};

struct PlanRequest {
  Config
      base;  // the model and training settings (precision, bucket size); data.seq_len and batch are set below
  Cluster cluster;
  Calibration calibration;
  int64_t gpus = 0;
  int64_t global_batch_tokens = 0;
  int64_t seq_len = 0;
  int64_t max_micro_batch = 16;
  int64_t max_virtual_stages = 8;
  int64_t max_tp = 0, max_pp = 0;  // 0: no limit
  int64_t max_cp = 0;              // 0: up to 16 (context parallelism, where seq_len splits into 2 cp chunks)
  // polder's own measured GPU runs (load_measured_runs) and the folder their config paths are relative to:
  // the planner predicts each and reports both.
  std::vector<MeasuredRun> measured;
  std::string repo_root = ".";
};

// One measured run beside the model's prediction for the same config on one GPU of the cluster.
struct MeasuredComparison {
  MeasuredRun run;
  double predicted_step_s = 0;
  double predicted_memory_gib = 0;  // tensors (what the CUDA pool holds at its peak) and the cuBLAS workspace
  std::string error;                // the config could not be loaded or predicted
};

struct PlanResult {
  std::vector<Candidate> valid;                    // fits, fastest first
  std::vector<Candidate> too_big;                  // runnable but over the GPU's memory, smallest first
  std::map<std::string, int64_t> rule_rejections;  // layouts polder cannot run, counted by reason
  int64_t considered = 0;
  std::vector<MeasuredComparison> measured;
};

std::vector<MeasuredComparison> compare_measured(const PlanRequest& request);

// polder::Error (one line) when the request itself is impossible (batch not a multiple of the sequence
// length, GPUs not a multiple of anything, ...).
PlanResult plan(const PlanRequest& request);

// The `parallel:` section (and the train keys the layout sets) of a candidate, ready to paste into a config.
std::string layout_yaml(const Candidate& c);

}  // namespace polder::plan
