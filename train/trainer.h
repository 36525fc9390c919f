// The training loop: data -> forward/backward over micro-batches (gradient accumulation) -> clip -> AdamW,
// with periodic validation, metrics, checkpoints and exact resume. Single process here; the distributed
// layer plugs in through the gradient hook and the loader's dp rank.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "models/model.h"
#include "parallel/data_parallel.h"
#include "parallel/mesh.h"
#include "parallel/schedule.h"
#include "train/config.h"
#include "train/distributed.h"
#include "train/energy.h"
#include "train/metrics.h"
#include "train/numerics.h"
#include "train/optimizer.h"
#include "train/watchdog.h"

namespace polder::parallel {
class Zero3;
}

namespace polder::train {

// Model FLOPs per token for one forward + backward: 6 N (N = parameters in matrices touched per token, i.e.
// all but the embedding table when untied) + 12 L H D T (attention scores and values, PaLM's convention,
// counting the full T x T product). The formula behind MFU.
double flops_per_token(const ModelConfig& model, int64_t seq_len);

struct StepResult {
  double loss = 0, grad_norm = 0, lr = 0, seconds = 0;
  bool skipped = false;  // not finite: no update (numerics.h)
};

class Trainer {
 public:
  // quiet: no stdout lines (tests). Opens datasets, builds the model, resumes if asked. `world` is the
  // communicator of all ranks (default: parallel::world_comm(), a single process without a launcher); the
  // mesh pp x dp x tp comes from config.parallel.
  explicit Trainer(Config config, bool quiet = false, std::shared_ptr<parallel::Comm> world = nullptr);
  ~Trainer();

  // Until train.steps, with eval, checkpoints and metrics; or until a stop request (SIGUSR1/SIGTERM once
  // install_stop_handlers() ran, or train.max_duration) that all ranks agree on at a step boundary: then it
  // saves a checkpoint and returns the reason (signals.h); 0 when the run is complete.
  int run();
  StepResult train_step();  // one optimizer step (accumulation over micro-batches)
  double evaluate();        // mean validation loss over eval_batches micro-batches from the split's start
  std::string save();       // a checkpoint of the current state; returns its path
  void resume(const std::string& path);  // exactly this checkpoint (an error if it is corrupt)

  int64_t step() const { return step_; }
  models::Model& model() { return *model_; }
  // Runs f with every parameter's value readable: under ZeRO-3 all units are gathered first (collective over
  // the replicas) and released afterwards; otherwise just f().
  void with_gathered_parameters(const std::function<void()>& f);
  AdamW& optimizer() { return *optimizer_; }
  data::DataLoader& loader() { return *train_loader_; }
  const Config& config() const { return config_; }
  int64_t accumulation() const { return accumulation_; }
  std::string checkpoint_dir() const;
  parallel::Mesh& mesh() { return *mesh_; }
  // Where the model trains (train.device): the CPU, or the CUDA device this rank drives (local rank modulo
  // the visible devices). With CUDA and several ranks, tensors travel on device_mesh() (NCCL), scalars on
  // mesh().
  Device device() const { return device_; }
  parallel::Mesh& device_mesh() { return device_mesh_ ? *device_mesh_ : *mesh_; }
  bool is_rank0() const { return mesh_->rank() == 0; }
  Watchdog& watchdog() { return *watchdog_; }
  const NonFiniteGuard& nonfinite() const { return *nonfinite_; }

 private:
  void write_provenance();
  void open_datasets();  // the train (and validation) loaders; a data error is agreed like a config error
  void build_model();    // the model from the registry, GradSync and AdamW for this rank's place in the mesh
  // train.resume: auto: the newest checkpoint that is intact on every rank (warning about the skipped ones).
  void resume_auto();
  void apply_resumed(const nlohmann::json& meta, const std::string& path);  // step, loader, counters
  Tensor batch_tensor(const data::Batch& b, bool targets) const;
  // Forward (and backward when train) over micro-batches: this rank's events of its pipeline schedule
  // (parallel/schedule.h; pp = 1: plain accumulation). Returns the sum of the micro-batch losses seen on this
  // rank (last stage only when pp > 1).
  double run_microbatches(std::vector<data::Batch>& batches, bool train);
  struct MicroBatchRun;  // the tensors in flight between the events (trainer.cpp)
  void post_transfers(MicroBatchRun& run, const std::vector<parallel::P2PMessage>& group);
  void write_profile(int64_t steps,
                     double outside_seconds);  // train.profile: the report on rank 0 and in the run folder
  void run_forward(MicroBatchRun& run, const parallel::ScheduleEvent& e, size_t index);
  void run_backward(MicroBatchRun& run, const parallel::ScheduleEvent& e, size_t index);
  // train.device rules that need no device (the build, the layouts the GPU path runs): before any collective.
  static void check_device_config(const Config& c);
  void phase(const char* what) { watchdog_->enter(what); }
  void log_step(const StepResult& r, double& ema);
  void evaluate_and_save();  // the periodic validation and checkpoint after step_
  void select_device();

  Config config_;
  bool quiet_;
  int64_t accumulation_ = 1;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
  int64_t saved_step_ = -1;  // the step of the checkpoint last written or loaded
  // state.hf of the checkpoint resumed from (JSON text, "" if none: HF architecture, BOS/EOS ids of an
  // imported model, train/convert.h HfInfo), written into every later checkpoint so that export keeps them.
  std::string hf_info_;
  std::string precision_choice_;  // resolve_auto_precision's line ("" unless train.precision was auto)
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::shared_ptr<parallel::Comm> world_;
  std::unique_ptr<parallel::Mesh> mesh_;
  Device device_ = Device::cpu();
  std::unique_ptr<parallel::Mesh> device_mesh_;  // NCCL twin of mesh_ (CUDA with more than one rank)
  std::shared_ptr<parallel::Comm> stage_comm_;   // host comm of this pipeline stage's ranks (kernel choices)
  std::unique_ptr<parallel::Zero3> zero3_;       // ZeRO-3's unit gathers (parallel.zero: 3)
  std::shared_ptr<parallel::Comm> host_shard_;   // hybrid sharding: the host shard group (checkpoints)
  std::unique_ptr<EnergyMeter> energy_;          // NVML, CUDA only
  double energy_at_last_step_ = 0;
  std::unique_ptr<models::Model> model_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<parallel::GradSync>
      sync_;  // after model_: destroyed first (it unhooks the model's parameters)
  std::unique_ptr<data::DataLoader> train_loader_, valid_loader_;
  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<NonFiniteGuard> nonfinite_;
};

}  // namespace polder::train
