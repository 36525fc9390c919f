// The run configuration: one struct per YAML section. load_config() parses YAML (yaml-cpp), applies
// `--set a.b=c` overrides, and validates everything before any work starts; every problem is one
// polder::Error line naming the key, the expected type or range, and the given value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "models/config.h"

namespace polder {

struct DatasetEntry {
  std::string name;    // e.g. "nl"
  std::string prefix;  // path of <prefix>.bin / <prefix>.idx
  double weight = 1.0;

  bool operator==(const DatasetEntry&) const = default;
};

struct DataConfig {
  // YAML: a list `- {name: nl, prefix: data/nl, weight: 0.4}`, or a map keyed by name
  // `{nl: {prefix: data/nl, weight: 0.4}, ...}`; weight defaults to 1. Blended by weight (need not sum to 1).
  std::vector<DatasetEntry> datasets;
  std::string tokenizer;  // tokenizer.json
  int64_t seq_len = 0;
  double valid_fraction = 0.01;  // documents held out for validation
  uint64_t split_seed = 1234;

  bool operator==(const DataConfig&) const = default;
};

struct TrainConfig {
  int64_t steps = 0;
  int64_t global_batch = 0;  // sequences per optimizer step (= micro_batch * accumulation * dp)
  int64_t micro_batch = 0;   // sequences per forward/backward
  // "f32", "bf16" (bf16 params/activations, f32 grads and master weights), "f64" (CPU only: everything in
  // double; the reference precision of the parity tests, where summation order moves results by ~1e-15) or
  // "auto", which the trainer (and `polder info`) replace with resolve_auto_precision: on the CPU bf16 where
  // it has native bf16 dot products (oneDNN's avx512_core_bf16 or AMX kernels), else f32 (bf16 would run as
  // f32 GEMMs plus conversions); on GPUs bf16.
  std::string precision = "f32";
  bool recompute = false;  // activation recompute per block
  // Time per op kind and direction, printed after the run and written to <run_dir>/profile.{txt,json}
  // (core/profile.h).
  bool profile = false;
  uint64_t seed = 1234;
  int64_t eval_every = 0;    // 0: no periodic validation
  int64_t eval_batches = 8;  // micro-batches per validation
  std::string resume =
      "auto";  // "auto" (from <checkpoint.dir>/latest if present), "none", or a checkpoint path
  std::string run_dir = "runs/default";
  std::string device = "cpu";  // "cpu" or "cuda"
  int64_t threads = 0;         // OpenMP threads; 0: leave the default
  double peak_tflops = 0;  // the device's peak dense TFLOP/s for MFU (e.g. 989 for H100 bf16); 0: MFU unknown
  // Cluster operation (see README "Running on a cluster"). max_duration: after this much time since the
  // start, stop at the next step boundary with a checkpoint, as on SIGUSR1 ("23h30m", "90m", "3600" =
  // seconds; "" or "0": no limit). watchdog_s: abort the job when no step completes for this long (0: off).
  std::string max_duration;
  double watchdog_s = 1800;
  // A step whose loss or gradient norm is not finite is skipped (no update, the LR schedule does not
  // advance); max_nonfinite_steps such steps in a row end the run. skip_nonfinite false: the first one ends
  // the run.
  bool skip_nonfinite = true;
  int64_t max_nonfinite_steps = 5;

  bool operator==(const TrainConfig&) const = default;
};

struct OptimConfig {
  double lr = 3e-4;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  // global-norm clipping; 0: off
  bool decay_norms_and_embeddings = false;

  bool operator==(const OptimConfig&) const = default;
};

struct ScheduleConfig {
  std::string type = "cosine";  // "constant", "cosine", "linear", "wsd" (warmup-stable-decay)
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.1;    // final lr = min_lr_ratio * lr (cosine, linear, wsd)
  double decay_fraction = 0.2;  // wsd: share of the steps spent decaying at the end

  bool operator==(const ScheduleConfig&) const = default;
};

struct CheckpointConfig {
  std::string dir;    // empty: <run_dir>/checkpoints
  int64_t every = 0;  // 0: only at the end
  int64_t keep_last = 3;

  bool operator==(const CheckpointConfig&) const = default;
};

struct LoggingConfig {
  int64_t every = 1;  // steps between stdout lines
  bool jsonl = true;
  bool tensorboard = true;

  bool operator==(const LoggingConfig&) const = default;
};

struct ParallelConfig {
  int64_t dp = 0;  // 0: world_size / (tp * pp * cp)
  int64_t tp = 1;
  int64_t pp = 1;
  // Context parallelism: each sequence split over cp ranks, rank r holding chunks r and 2 cp - 1 - r of 2 cp
  // (balanced causal work); attention all-gathers K and V over the cp group (parallel/cp_ops.h).
  int64_t cp = 1;
  int64_t virtual_stages = 1;
  // The pipeline schedule (parallel/schedule.h): "auto" (none without a pipeline, 1f1b, or interleaved_1f1b
  // with virtual stages), or one by name: none, 1f1b, interleaved_1f1b, gpipe.
  std::string schedule = "auto";
  // "none"; "1": optimizer state sharded over the replicas (dp x cp); "2": and gradients; "3": and
  // parameters, gathered unit by unit (parallel/zero3.h).
  std::string zero = "none";
  // Hybrid sharding: ZeRO shards within groups of this many consecutive replicas (one node's) and replicates
  // across groups; 0: over all dp x cp replicas.
  int64_t zero_group = 0;
  int64_t bucket_mb = 25;
  bool sequence_parallel =
      false;  // with tp > 1: norms and residuals on sequence shards (all-gather/reduce-scatter)

  bool operator==(const ParallelConfig&) const = default;
};

// Test hooks for the failure paths of issue 10; never set them in a real run. nan_step: the first nan_steps
// attempts at steps >= nan_step (1-based; a skipped step is attempted again) get a NaN in the gradient of
// nan_param ("" = the last parameter each rank holds) after the data-parallel reduction, or in the loss when
// nan_param is "loss".
// stall_step: the last rank stops itself (SIGSTOP) at the start of that step, as a hung node would.
struct DebugConfig {
  int64_t nan_step = 0;
  int64_t nan_steps = 1;
  std::string nan_param;
  int64_t stall_step = 0;

  bool operator==(const DebugConfig&) const = default;
};

struct Config {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  OptimConfig optim;
  ScheduleConfig schedule;
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  ParallelConfig parallel;
  DebugConfig debug;

  int64_t resolved_head_dim() const {
    return model.head_dim ? model.head_dim : model.hidden_size / model.num_heads;
  }
  int64_t resolved_kv_heads() const { return model.num_kv_heads ? model.num_kv_heads : model.num_heads; }
  // Field by field (checkpoints compare the saved config with the resumed one; tests check round trips).
  bool operator==(const Config&) const = default;
};

// Parses a YAML file, applies overrides ("train.steps=100", "model.num_layers=4", ...) in order, validates.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from YAML text (tests); `origin` names the source in messages.
Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides = {},
                    const std::string& origin = "<string>");
// Checks ranges and consistency (heads divisible by kv heads, hidden = heads * head_dim unless head_dim is
// set explicitly, global_batch divisible by micro_batch, seq_len <= max_seq_len, ...). world_size > 0 also
// checks the parallel layout against it.
void validate_config(const Config& config, int64_t world_size = 0);
// Replaces train.precision "auto" by what this machine runs fastest (see TrainConfig::precision) and returns
// one line saying what it chose and why ("" when the precision was not auto).
std::string resolve_auto_precision(TrainConfig& t);
// A run that cannot start (its config, or the datasets or checkpoint it names, does not fit), raised alike on
// every rank after they agreed on it (train::agree_on_config, agree_on_failure): printed once, by rank 0,
// and every rank exits with code 2.
class ConfigError : public Error {
 public:
  using Error::Error;
};
// A duration in seconds: "23h30m", "1d", "90m", "45s", "1.5h", or a plain number of seconds; "" is 0.
// polder::Error naming the text otherwise.
double parse_duration(const std::string& text);
// Every key with its resolved value, as YAML (recorded in the run folder and in checkpoints).
std::string config_to_yaml(const Config& config);

}  // namespace polder
