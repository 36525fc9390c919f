// Trainer implementation. Determinism: every source of randomness is a pure function of the config seed (init
// by Philox per parameter name, data order by the loader's seed), and every kernel reduces in a fixed order,
// so a resumed run reproduces an uninterrupted one bit for bit.
#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include "core/autograd.h"
#include "core/cuda_context.h"
#include "core/ops.h"
#include "core/profile.h"
#include "core/sha256.h"
#include "kernels/attention.h"
#include "kernels/cpu/isa.h"
#include "kernels/gemm.h"
#include "parallel/comm_nccl.h"
#include "parallel/cp_ops.h"
#include "parallel/launch.h"
#include "parallel/zero3.h"
#include "train/checkpoint.h"
#include "train/distributed.h"
#include "train/signals.h"

#ifndef POLDER_GIT_COMMIT
#define POLDER_GIT_COMMIT "unknown"
#endif

namespace polder::train {
namespace fs = std::filesystem;

double flops_per_token(const ModelConfig& m, int64_t seq_len) {
  const int64_t hd = m.head_dim ? m.head_dim : m.hidden_size / m.num_heads;
  // N: every parameter a token's forward multiplies with; the embedding lookup is not a matmul, but a tied
  // embedding is also the LM head, so it counts then.
  double n = static_cast<double>(models::model_parameter_count(m));
  if (!m.tie_embeddings) n -= static_cast<double>(m.vocab_size) * m.hidden_size;
  const double attention = 12.0 * m.num_layers * m.num_heads * hd * seq_len;
  return 6.0 * n + attention;
}

Trainer::Trainer(Config config, bool quiet, std::shared_ptr<parallel::Comm> world)
    : config_(std::move(config)), quiet_(quiet), world_(world ? std::move(world) : parallel::world_comm()) {
  // What depends only on the config, the world size and the build is checked on every rank, and the ranks
  // agree on the verdict in the first collective: a bad layout is the same ConfigError everywhere, printed
  // once (cli/main.cpp), never a refusal that only the ranks reaching some later point print.
  std::string invalid;
  try {
    precision_choice_ = resolve_auto_precision(config_.train);
    validate_config(config_, world_->size());
    check_device_config(config_);
  } catch (const Error& e) {
    invalid = e.message();
  }
  agree_on_config(*world_, invalid, config_to_yaml(config_));
  watchdog_ = std::make_unique<Watchdog>(config_.train.watchdog_s, world_->rank());
  nonfinite_ = std::make_unique<NonFiniteGuard>(config_, !quiet_ && world_->rank() == 0);
  if (config_.train.threads > 0) omp_set_num_threads(static_cast<int>(config_.train.threads));
  if (config_.train.profile) {
    profile::reset();
    profile::set_enabled(true);
  }
  const ParallelConfig& pc = config_.parallel;
  mesh_ = std::make_unique<parallel::Mesh>(world_, static_cast<int>(pc.tp), static_cast<int>(pc.pp),
                                           static_cast<int>(pc.dp), static_cast<int>(pc.cp));
  select_device();
  const int64_t dp = mesh_->dp_size();
  accumulation_ = config_.train.global_batch / (config_.train.micro_batch * dp);  // >= pp: validate_config

  open_datasets();
  build_model();

  const std::string& r = config_.train.resume;
  if (r == "auto") {
    resume_auto();
  } else if (r != "none" && !r.empty()) {
    // A checkpoint named explicitly: loaded as named; any rank's failure is the same error everywhere.
    nlohmann::json meta;
    std::string mine;
    try {
      meta = load_checkpoint(r, *model_, optimizer_.get());
    } catch (const Error& e) {
      mine = e.message();
    }
    if (const std::string f = agree_on_failure(*world_, mine); !f.empty())
      throw ConfigError(f, __FILE__, __LINE__);
    apply_resumed(meta, r);
  }
  if (is_rank0()) {
    fs::create_directories(config_.train.run_dir);
    write_provenance();
    metrics_ = std::make_unique<MetricsWriter>(config_.train.run_dir, config_.logging.jsonl,
                                               config_.logging.tensorboard);
    if (step_ > 0) metrics_->log_resume(step_ + 1);
  }
}

// Opening the datasets checks them against the config (files present, token ids inside the vocabulary):
// agreed like a config error, so that it is one line from rank 0 and not one per rank.
void Trainer::open_datasets() {
  data::LoaderConfig lc;
  for (const DatasetEntry& d : config_.data.datasets) lc.datasets.push_back({d.name, d.prefix, d.weight});
  lc.seq_len = config_.data.seq_len;
  lc.micro_batch = config_.train.micro_batch;
  lc.dp_rank = mesh_->dp_rank();
  lc.dp_size = mesh_->dp_size();
  lc.seed = config_.train.seed;
  lc.valid_fraction = config_.data.valid_fraction;
  lc.split_seed = config_.data.split_seed;
  lc.vocab_size = config_.model.vocab_size;
  lc.split = "train";
  std::string data_error;
  try {
    train_loader_ = std::make_unique<data::DataLoader>(lc);
    if (config_.train.eval_every > 0 && config_.data.valid_fraction > 0) {
      lc.split = "valid";
      lc.shuffle = false;
      lc.vocab_size = 0;  // already checked
      valid_loader_ = std::make_unique<data::DataLoader>(lc);
    }
  } catch (const Error& e) {
    data_error = e.message();
  }
  if (const std::string f = agree_on_failure(*world_, data_error); !f.empty())
    throw ConfigError(f, __FILE__, __LINE__);
}

// The model for this rank's place in the mesh (from the model registry), its data-parallel sync and
// optimizer.
void Trainer::build_model() {
  const ParallelConfig& pc = config_.parallel;
  // Gradients are averaged and ZeRO shards over the replicas: the dp x cp ranks of this (pp, tp) place.
  const int64_t dp = mesh_->replica_size();
  const DType dtype = config_.train.precision == "bf16"  ? DType::bf16
                      : config_.train.precision == "f64" ? DType::f64
                                                         : DType::f32;
  models::ParallelLayout layout;
  layout.tp = mesh_->tp_size();
  layout.tp_rank = mesh_->tp_rank();
  layout.tp_comm = &device_mesh().tp();  // NCCL on a GPU: the model's tp collectives run on the device
  layout.cp_comm = &device_mesh().cp();
  layout.pp = mesh_->pp_size();
  layout.pp_rank = mesh_->pp_rank();
  layout.virtual_stages = pc.virtual_stages;
  const int zero = dp > 1 ? (pc.zero == "3" ? 3 : pc.zero == "2" ? 2 : pc.zero == "1" ? 1 : 0) : 0;
  layout.flat_multiple = zero > 0 ? dp : 1;
  layout.sequence_parallel = pc.sequence_parallel && layout.tp > 1;
  if (zero >= 2) {
    // ZeRO-2 (and 3): the model keeps only this rank's gradient shard.
    const int group = static_cast<int>(pc.zero_group);
    std::tie(layout.grad_begin, layout.grad_end) = parallel::GradSync::owned_range(
        models::model_flat_size(config_.model, layout), parallel::GradSync::shard_size(*mesh_, group),
        parallel::GradSync::shard_rank(*mesh_, group));
  }
  model_ = models::make_model(config_.model, dtype, layout, device_);
  model_->init(config_.train.seed);
  // ZeRO-3: keep the parameter shard the optimizer owns; units are gathered as they run (the whole stage's
  // parameters exist once here, at initialisation). Before GradSync, which hooks the parameter tensors.
  if (zero == 3) model_->parameter_set().shard_parameters(layout.grad_begin, layout.grad_end);
  parallel::GradSyncOptions so;
  so.zero = std::min(zero, 2);  // ZeRO-3's gradients take ZeRO-2's path
  so.zero_group = static_cast<int>(pc.zero_group);
  so.bucket_mb = pc.bucket_mb;
  so.tied_across_stages = config_.model.tie_embeddings && layout.pp > 1;
  // Plain DP may overlap its all-reduces with backward where the schedule arms the hooks (one backward per
  // parameter and micro-batch: not with interleaved stages).
  so.overlap_with_backward = false;
  for (const parallel::ScheduleEvent& e :
       parallel::make_schedule(config_.parallel.schedule,
                               {mesh_->pp_size(), mesh_->pp_rank(), model_->num_chunks(), accumulation_}))
    so.overlap_with_backward = so.overlap_with_backward || e.arm_dp_sync;
  sync_ = std::make_unique<parallel::GradSync>(model_->parameter_set(), device_mesh(), so, mesh_.get());
  if (zero == 3) {
    zero3_ = std::make_unique<parallel::Zero3>(model_->parameter_set(), sync_->shard_comm());
    model_->set_zero3(zero3_.get());
  }
  // Hybrid sharding: the host twin of the shard group, over which checkpoints gather the sharded state.
  if (zero > 0 && parallel::GradSync::shard_size(*mesh_, static_cast<int>(pc.zero_group)) < dp) {
    const int g = parallel::GradSync::shard_size(*mesh_, static_cast<int>(pc.zero_group));
    host_shard_ = mesh_->replicas().split(mesh_->replica_rank() / g, mesh_->replica_rank() % g, "zero-shard");
  }
  optimizer_ = std::make_unique<AdamW>(model_->parameter_set(), config_.optim, sync_->owned_begin(),
                                       sync_->owned_end());
}

void Trainer::check_device_config(const Config& c) {
  const std::string& d = c.train.device;
  POLDER_CHECK(d == "cpu" || d == "cuda", "train.device '{}' is unknown (expected cpu or cuda)", d);
  if (d == "cpu") return;
  POLDER_CHECK(cuda::compiled(),
               "train.device is cuda but this polder was built without CUDA (rebuild with "
               "-DPOLDER_CUDA=ON on a machine with the CUDA toolkit)");
}

namespace {

// Before any work on the GPUs: every rank on a GPU of its own (two ranks on one GPU, e.g. more ranks on a
// node than it has GPUs, would share its memory and NCCL refuses them), and bf16 tensor cores where the
// precision policy needs them. The UUIDs are all-gathered over the host communicator and the verdict agreed
// (agree_on_failure), so every rank exits alike and the one line is printed on rank 0 (issue 22).
// Also: tensor-parallel peers (tp consecutive ranks, parallel/mesh.h) on one node, where NVLink carries their
// per-layer collectives; the node is the host name, or POLDER_NODE_NAME where set (containers whose host
// names do not tell nodes apart, and tests).
void check_gpu_layout(parallel::Comm& world, const cuda::DeviceInfo& info, const std::string& precision,
                      int tp) {
  std::string why;
  if (precision == "bf16" && info.major < 8)
    why = format(
        "train.precision bf16 needs bf16 tensor cores (compute capability 8.0 or newer), but rank {}'s "
        "GPU ({}) is {}.{}: use train.precision f32 or a newer GPU",
        world.rank(), info.name, info.major, info.minor);
  if (world.size() > 1) {
    constexpr int64_t kLen = 32;
    Tensor mine = Tensor::zeros({kLen}, DType::u8);
    std::memcpy(mine.raw_data(), info.uuid.data(), std::min<size_t>(kLen, info.uuid.size()));
    Tensor all = Tensor::zeros({kLen * world.size()}, DType::u8);
    world.all_gather(mine, all);
    const auto* u = static_cast<const char*>(all.raw_data());
    for (int r = 0; r < world.size() && why.empty(); ++r)
      for (int q = r + 1; q < world.size() && why.empty(); ++q)
        if (std::memcmp(u + r * kLen, u + q * kLen, kLen) == 0)
          why = format(
              "ranks {} and {} would share one GPU (uuid {}): a node runs more ranks than it has "
              "visible GPUs (CUDA_VISIBLE_DEVICES shows each rank {} device(s)); start one rank per GPU",
              r, q, std::string(u + r * kLen, kLen), cuda::device_count());
    if (tp > 1 && why.empty()) {
      char host[kLen * 2] = {};
      const char* env = std::getenv("POLDER_NODE_NAME");
      if (env != nullptr && *env != 0) {
        std::strncpy(host, env, sizeof host - 1);
      } else {
        gethostname(host, sizeof host - 1);
      }
      Tensor me = Tensor::zeros({2 * kLen}, DType::u8),
             nodes = Tensor::zeros({2 * kLen * world.size()}, DType::u8);
      std::memcpy(me.raw_data(), host, sizeof host);
      world.all_gather(me, nodes);
      const auto* h = static_cast<const char*>(nodes.raw_data());
      auto node = [&](int r) { return std::string(h + r * 2 * kLen, strnlen(h + r * 2 * kLen, 2 * kLen)); };
      for (int r = 0; r < world.size() && why.empty(); ++r)
        if (r % tp != 0 && node(r) != node(r - r % tp))
          why = format(
              "parallel.tp = {} puts ranks {} and {} in one tensor-parallel group across nodes ({} and {}): "
              "tp peers exchange activations every layer and need the GPUs of one node; use tp <= the GPUs "
              "per node and start the ranks node by node (mpirun --map-by node would interleave them)",
              tp, r - r % tp, r, node(r - r % tp), node(r));
    }
  }
  const std::string failure = agree_on_failure(world, why);
  if (!failure.empty()) throw ConfigError(failure, __FILE__, __LINE__);
}

}  // namespace

void Trainer::select_device() {
  if (config_.train.device == "cpu") return;
  const int n = cuda::device_count();
  const std::string why = cuda::device_count_error();
  POLDER_CHECK(n > 0,
               "train.device is cuda but no CUDA device is visible{} (check nvidia-smi, the driver and "
               "CUDA_VISIBLE_DEVICES)",
               why.empty() ? "" : " (" + why + ")");
  const int local = parallel::detect_launch().local_rank;
  cuda::set_device(local % n);
  device_ = Device::cuda(local % n);
  const cuda::DeviceInfo info = cuda::device_info(device_.index);
  check_gpu_layout(*world_, info, config_.train.precision, mesh_->tp_size());
#ifdef POLDER_HAVE_CUDA
  kernels::cuda::set_attention_impl(config_.model.attention_impl);  // validated by the config loader
  kernels::cuda::set_gemm_impl(config_.model.gemm_impl);
  // Choices made by timing (GEMM and attention auto) agreed across the ranks of this pipeline stage (its
  // data-parallel replicas and tensor-parallel peers), which run the same shapes in the same order: the
  // stage's first rank measures and broadcasts its choice over the host comm, the others do not measure
  // (issue 22). Stages run different shapes (embedding, head) and choose for themselves. Removed again by
  // ~Trainer.
  stage_comm_ = world_->split(mesh_->pp_rank(), world_->rank(), "stage");
  if (stage_comm_->size() > 1) {
    parallel::Comm& stage = *stage_comm_;
    kernels::cuda::set_choice_agreement(
        [&stage](const std::string& key, const std::function<std::string()>& measure) {
          const std::string got =
              broadcast_string(stage, stage.rank() == 0 ? key + '\n' + measure() : std::string(), 0);
          const size_t cut = got.find('\n');
          POLDER_CHECK(got.substr(0, cut) == key,
                       "rank {} of a pipeline stage chose a kernel for '{}' while the stage's first rank "
                       "chose one for '{}': the ranks ran different shapes",
                       stage.rank(), key, got.substr(0, cut));
          return got.substr(cut + 1);
        });
  }
#endif
  if (world_->size() > 1) {
    // NCCL's initialisation is collective: a peer that never joins would leave ncclCommInitRank waiting
    // before the trainer's watchdog runs, so a watchdog of its own covers it (and the warm-up below).
    Watchdog init_watchdog(config_.train.watchdog_s, world_->rank());
    init_watchdog.enter("NCCL initialisation");
    init_watchdog.start();
    device_mesh_ = std::make_unique<parallel::Mesh>(mesh_->on_device(device_));
    // NCCL >= 2.22 connects lazily: a communicator's buffers are allocated at its first collective, which
    // would be inside step 1 with the pool near its peak. Connect each one now, before the model exists.
    for (parallel::Comm* c : {&device_mesh_->dp(), &device_mesh_->tp(), &device_mesh_->pp(),
                              &device_mesh_->cp(), &device_mesh_->replicas()})
      if (c->size() > 1) c->barrier();
    // A dead peer leaves an NCCL collective spinning: poll the communicators' async errors from the
    // watchdog's thread and end the job with NCCL's reason within seconds (issue 21).
    watchdog_->add_probe([] { return parallel::nccl_async_error(); }, 2.0);
  }
  if (config_.train.peak_tflops <= 0) config_.train.peak_tflops = info.bf16_peak_tflops;
  energy_ = std::make_unique<EnergyMeter>(info.pci_bus_id);
  if (!quiet_ && is_rank0()) {
    std::printf("device: %s (cuda:%d of %d, %d SMs, %.0f GiB, bf16 peak %.0f TFLOP/s%s); energy: %s\n",
                info.name.c_str(), device_.index, n, info.sm_count,
                static_cast<double>(info.total_memory) / (1 << 30), config_.train.peak_tflops,
                info.bf16_peak_tflops > 0 ? "" : " unknown",
                energy_->available() ? "NVML" : energy_->reason().c_str());
    std::fflush(stdout);
  }
}

Trainer::~Trainer() {
  if (config_.train.profile) profile::set_enabled(false);
#ifdef POLDER_HAVE_CUDA
  if (device_.is_cuda()) kernels::cuda::set_choice_agreement(nullptr);  // it refers to this trainer's mesh
#endif
}

void Trainer::with_gathered_parameters(const std::function<void()>& f) {
  if (!zero3_) {
    f();
    return;
  }
  for (int u = 0; u < zero3_->num_units(); ++u) zero3_->gather(u);
  try {
    f();
  } catch (...) {
    zero3_->release_all();
    throw;
  }
  zero3_->release_all();
}

std::string Trainer::checkpoint_dir() const {
  return config_.checkpoint.dir.empty() ? (fs::path(config_.train.run_dir) / "checkpoints").string()
                                        : config_.checkpoint.dir;
}

void Trainer::write_provenance() {
  std::ofstream(fs::path(config_.train.run_dir) / "config.yaml") << config_to_yaml(config_);
  nlohmann::json p;
  p["git_commit"] = POLDER_GIT_COMMIT;
  p["seed"] = config_.train.seed;
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  p["hostname"] = host;
  p["start_time"] = static_cast<int64_t>(std::time(nullptr));
  p["resumed_at_step"] = step_;
  p["threads"] = omp_get_max_threads();
  for (const DatasetEntry& d : config_.data.datasets) {
    nlohmann::json e;
    e["name"] = d.name;
    e["prefix"] = d.prefix;
    e["weight"] = d.weight;
    e["idx_sha256"] = sha256_file(d.prefix + ".idx");
    e["bin_bytes"] = static_cast<int64_t>(fs::file_size(d.prefix + ".bin"));
    p["datasets"].push_back(e);
  }
  if (!config_.data.tokenizer.empty() && fs::exists(config_.data.tokenizer))
    p["tokenizer_sha256"] = sha256_file(config_.data.tokenizer);
  std::ofstream(fs::path(config_.train.run_dir) / "provenance.json") << p.dump(2) << "\n";
}

// With context parallelism, this cp rank's two chunks of every sequence (parallel/cp_ops.h).
Tensor Trainer::batch_tensor(const data::Batch& b, bool targets) const {
  const int64_t B = b.batch_size, T = b.seq_len;
  const std::vector<int64_t> pos = parallel::cp_local_positions(T, mesh_->cp_size(), mesh_->cp_rank());
  const int64_t Tl = static_cast<int64_t>(pos.size());
  Tensor t = Tensor::empty({B, Tl}, DType::i32);
  int32_t* out = t.data<int32_t>();
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < Tl; ++j)
      out[i * Tl + j] =
          b.tokens[static_cast<size_t>(i * (T + 1) + pos[static_cast<size_t>(j)] + (targets ? 1 : 0))];
  return t;
}

// The tensors in flight between the events of one schedule run: each (chunk, micro-batch) slot's input and
// output from its forward to its backward, each event's received tensor (from its group's posting to the
// event) and sent tensor (from the event to its group's posting), the posted groups until they complete, and
// the losses.
struct Trainer::MicroBatchRun {
  MicroBatchRun(std::vector<data::Batch>& b, bool t, int64_t m, Shape shape, int64_t slots, size_t events)
      : batches(b),
        train(t),
        micro_batches(m),
        act_shape(std::move(shape)),
        inputs(static_cast<size_t>(slots)),
        outputs(static_cast<size_t>(slots)),
        received(events),
        sent(events) {}
  std::vector<data::Batch>& batches;
  bool train;
  int64_t micro_batches;
  Shape act_shape;  // (micro_batch, seq_len or seq_len / tp under sequence parallelism, hidden)
  std::vector<Tensor> inputs, outputs, received, sent, losses;
  std::vector<std::unique_ptr<parallel::Work>> sends;
  const parallel::Schedule* events = nullptr;
};

double Trainer::run_microbatches(std::vector<data::Batch>& batches, bool train) {
  // Executes this rank's events of its schedule (parallel/schedule.h: no pipeline, 1F1B or interleaved 1F1B);
  // evaluation runs the forward events only. Activations and their gradients travel on the pp communicator
  // in the groups of parallel::p2p_groups, posted at the event boundaries: a group with a receive is waited
  // for before the event runs (on a GPU the compute stream waits, the host does not), a group of sends only
  // completes in the background until the end.
  const int64_t M = static_cast<int64_t>(batches.size()), V = model_->num_chunks();
  parallel::Schedule events =
      parallel::make_schedule(config_.parallel.schedule, {mesh_->pp_size(), mesh_->pp_rank(), V, M});
  if (!train) events = parallel::forward_events(events);
  const std::vector<std::vector<parallel::P2PMessage>> groups = parallel::p2p_groups(events);
  MicroBatchRun run(batches, train, M,
                    model_->activation_shape(config_.train.micro_batch, config_.data.seq_len), V * M,
                    events.size());
  run.events = &events;
  std::optional<NoGradGuard> no_grad;
  if (!train) no_grad.emplace();
  // Parameters are constant until the optimizer step: the CPU GEMM may keep packed or converted copies of
  // them for this run. Each weight is multiplied in one layout once per micro-batch (twice in the forward
  // layout under activation recompute). Not under ZeRO-3: its units are gathered into fresh memory for every
  // use, so a copy would be used once and held until the run ends, the memory ZeRO-3 exists to save.
  const kernels::cpu::WeightScope weight_copies(
      M * (train && config_.train.recompute ? 2 : 1),
      zero3_ ? kernels::cpu::WeightCacheMode::off : kernels::cpu::weight_cache_mode_from_env());
  bool messages = false;
  for (size_t i = 0; i < events.size(); ++i) {
    const parallel::ScheduleEvent& e = events[i];
    messages = messages || e.recv_from >= 0 || e.send_to >= 0;
    post_transfers(run, groups[i]);
    if (e.forward()) {
      run_forward(run, e, i);
    } else {
      run_backward(run, e, i);
    }
  }
  if (zero3_) zero3_->release_all();  // evaluation: nothing stays gathered
  if (messages) {
    post_transfers(run, groups.back());
    phase("pipeline sends");
    for (auto& w : run.sends) w->wait();
  }
  // The losses stay where they were computed until every micro-batch ran: on a GPU, reading one waits for the
  // device, so they are read together at the end (the same sum in the same order as reading each at once).
  double loss_sum = 0;
  for (const Tensor& l : run.losses) loss_sum += l.item();
  return loss_sum;
}

void Trainer::post_transfers(MicroBatchRun& run, const std::vector<parallel::P2PMessage>& group) {
  if (group.empty()) return;
  std::vector<parallel::P2POp> ops;
  bool activations = false, gradients = false;
  for (const parallel::P2PMessage& m : group) {
    Tensor t;
    if (m.send) {
      t = std::move(run.sent[m.event]);  // the group holds it until complete
    } else {
      t = run.received[m.event] = Tensor::empty(run.act_shape, model_->dtype(), device_);
      ((*run.events)[m.event].forward() ? activations : gradients) = true;
    }
    ops.push_back({m.send, t, m.peer, m.tag});
  }
  std::unique_ptr<parallel::Work> w = device_mesh().pp().p2p_group(ops);
  if (!activations && !gradients) {
    run.sends.push_back(std::move(w));
    return;
  }
  const profile::Scope scope("pipeline transfers");
  phase(activations && gradients ? "pipeline receive of activations and gradients"
        : activations            ? "pipeline receive of activations"
                                 : "pipeline receive of gradients");
  w->wait();
  phase("forward/backward");
}

void Trainer::run_forward(MicroBatchRun& run, const parallel::ScheduleEvent& e, size_t index) {
  const data::Batch& b = run.batches[static_cast<size_t>(e.micro_batch)];
  Tensor in;
  if (e.first) {
    in = batch_tensor(b, false);
  } else {
    in = std::move(run.received[index]);
    if (run.train) in.set_requires_grad(true);
  }
  Tensor out = model_->stage_forward(in, run.train && config_.train.recompute, e.chunk);
  if (e.last) {
    Tensor loss = model_->stage_loss(out, batch_tensor(b, true));
    run.losses.push_back(loss.detach());
    // Each micro-batch contributes 1/M of the mean loss over the global batch.
    out = ops::scale(loss, 1.0 / static_cast<double>(run.micro_batches));
  } else {
    run.sent[index] = out.detach();
  }
  if (run.train) {
    const size_t slot = static_cast<size_t>(e.chunk * run.micro_batches + e.micro_batch);
    run.inputs[slot] = in;
    run.outputs[slot] = out;
  }
}

void Trainer::run_backward(MicroBatchRun& run, const parallel::ScheduleEvent& e, size_t index) {
  const size_t slot = static_cast<size_t>(e.chunk * run.micro_batches + e.micro_batch);
  sync_->arm(e.arm_dp_sync);  // plain data-parallel hooks reduce during the backward that ends the gradients
  Tensor& out = run.outputs[slot];
  if (e.last) {
    out.backward();
  } else {
    out.backward(std::move(run.received[index]));
  }
  if (!e.first) run.sent[index] = run.inputs[slot].grad().to(model_->dtype());
  out = Tensor();
  run.inputs[slot] = Tensor();
  // ZeRO-3: a unit gathered by a backward boundary without a release after it (the embedding) is released
  // here, so every micro-batch gathers each unit exactly twice.
  if (zero3_) zero3_->release_all();
}

// The mean loss over every micro-batch of every data-parallel rank (known to all ranks).
static double global_mean_loss(parallel::Mesh& mesh, double local_sum, int64_t micro_batches) {
  Tensor v = Tensor::scalar(local_sum / static_cast<double>(micro_batches), DType::f64);
  if (mesh.pp_size() > 1) mesh.pp().all_reduce(v, parallel::ReduceOp::sum);  // only the last stage has it
  // The replicas (dp x cp): a cp rank's loss is the mean over its tokens, as many as every other cp rank's.
  if (mesh.replica_size() > 1) mesh.replicas().all_reduce(v, parallel::ReduceOp::avg);
  return v.item();
}

StepResult Trainer::train_step() {
  auto t0 = std::chrono::steady_clock::now();
  debug_stall(config_.debug, step_ + 1, *world_);
  phase("data loading");
  model_->zero_grad();
  std::vector<data::Batch> batches;
  {
    const profile::DirectionGuard outside(profile::DirectionGuard::step);
    const profile::Scope scope("data loading");
    for (int64_t micro = 0; micro < accumulation_; ++micro) batches.push_back(train_loader_->next());
  }
  phase("forward/backward");
  const double local = run_microbatches(batches, true);
  sync_->arm(false);
  phase("gradient all-reduce (data parallel)");
  {
    const profile::DirectionGuard outside(profile::DirectionGuard::step);
    const profile::Scope scope("gradient reduction");
    sync_->finish();
  }
  StepResult r;
  phase("loss all-reduce");
  r.loss = global_mean_loss(*mesh_, local, accumulation_);
  nonfinite_->inject(step_ + 1, model_->parameter_set(), optimizer_->begin(), optimizer_->end(), r.loss);
  phase("gradient-norm all-reduce");
  {
    const profile::DirectionGuard outside(profile::DirectionGuard::step);
    const profile::Scope scope("optimizer");
    r.grad_norm = optimizer_->clip_grad_norm(config_.optim.grad_clip,
                                             [this](double x) { return sync_->reduce_norm_sq(x); });
  }
  r.lr = lr_at(config_.schedule, config_.optim.lr, step_, config_.train.steps);
  r.skipped = nonfinite_->skip(step_ + 1, r.loss, r.grad_norm, model_->parameter_set(), optimizer_->begin(),
                               optimizer_->end(), *world_);
  if (r.skipped) {
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }
  phase("optimizer step");
  {
    const profile::DirectionGuard outside(profile::DirectionGuard::step);
    const profile::Scope scope("optimizer");
    optimizer_->step(r.lr);
  }
  phase("parameter all-gather (ZeRO)");
  {
    const profile::DirectionGuard outside(profile::DirectionGuard::step);
    const profile::Scope scope("gradient reduction");
    sync_->all_gather_params();
  }
  ++step_;
  tokens_seen_ += config_.train.global_batch * config_.data.seq_len;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

double Trainer::evaluate() {
  POLDER_CHECK(valid_loader_ != nullptr,
               "evaluate: no validation split (set data.valid_fraction > 0 and "
               "train.eval_every > 0)");
  phase("evaluation");
  valid_loader_->reset();
  std::vector<data::Batch> batches;
  for (int64_t i = 0; i < config_.train.eval_batches; ++i) batches.push_back(valid_loader_->next());
  const profile::DirectionGuard direction(profile::DirectionGuard::evaluation);
  const double local = run_microbatches(batches, false);
  return global_mean_loss(*mesh_, local, config_.train.eval_batches);
}

std::string Trainer::save() {
  nlohmann::json state;
  state["loader"] = train_loader_->state();
  state["tokens_seen"] = tokens_seen_;
  state["config_yaml"] = config_to_yaml(config_);
  state["seed"] = config_.train.seed;
  state["nonfinite_skipped"] = nonfinite_->total();
  if (!hf_info_.empty()) state["hf"] = nlohmann::json::parse(hf_info_);
#ifdef POLDER_HAVE_CUDA
  // The kernels auto chose (agreed within each pipeline stage), one entry per stage, so that a resumed run
  // uses the same ones. Every stage's first rank sends its own to the others (rank 0 writes the state).
  if (device_.is_cuda()) {
    const std::string mine = kernels::cuda::kernel_choices();
    nlohmann::json stages = nlohmann::json::array();
    for (int s = 0; s < mesh_->pp_size(); ++s)
      stages.push_back(s == 0 && mesh_->pp_size() == 1
                           ? mine
                           : broadcast_string(*world_, mine, mesh_->global_rank(0, s, 0)));
    state["kernel_choices"] = stages;
  }
#endif
  phase("checkpoint write");
  watchdog_->kick(step_ + 1);  // the timeout covers the write itself, not the step before it
  SaveOptions o;
  o.dir = checkpoint_dir();
  o.step = step_;
  o.state = std::move(state);
  o.keep_last = config_.checkpoint.keep_last;
  o.mesh = mesh_.get();
  o.shard_comm = host_shard_.get();
  std::string path = save_checkpoint(*model_, *optimizer_, o);
  watchdog_->kick(step_ + 1);
  saved_step_ = step_;
  return path;
}

static std::string joined(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : "; ") + p;
  return out;
}

void Trainer::resume_auto() {
  // The newest checkpoint every rank can read: one whose metadata.json is unreadable or whose file fails its
  // SHA-256 on any rank (a storage fault) is skipped with a warning, so that a requeued job does not fail
  // again and again. The ranks agree after each attempt; a rank that loaded a checkpoint another rank could
  // not is overwritten completely by the next one. Other errors (a model that does not match) stay errors,
  // agreed first so that every rank leaves the loop at the same candidate.
  const std::vector<std::string> candidates = resume_candidates(checkpoint_dir());
  std::vector<std::string> skipped;
  for (const std::string& path : candidates) {
    nlohmann::json meta;
    std::string mine, hard;
    try {
      if (!fs::exists(fs::path(path) / "metadata.json"))  // a lost folder or file
        throw CheckpointCorruptError(format("checkpoint '{}' has no metadata.json", path), __FILE__,
                                     __LINE__);
      meta = load_checkpoint(path, *model_, optimizer_.get());
    } catch (const CheckpointCorruptError& e) {
      mine = e.message();
    } catch (const Error& e) {
      hard = e.message();
    }
    if (const std::string f = agree_on_failure(*world_, hard); !f.empty())
      throw ConfigError(f, __FILE__, __LINE__);
    const std::string failure = agree_on_failure(*world_, mine);
    if (failure.empty()) {
      if (!skipped.empty() && is_rank0()) {
        std::fprintf(stderr, "polder: warning: train.resume auto: skipped %s; resuming from %s\n",
                     joined(skipped).c_str(), path.c_str());
        std::fflush(stderr);
      }
      apply_resumed(meta, path);
      return;
    }
    skipped.push_back(format("{} ({})", fs::path(path).filename().string(), failure));
  }
  if (!skipped.empty())
    throw ConfigError(format("train.resume auto: no intact checkpoint in '{}': {} (set train.resume: none to "
                             "start over)",
                             checkpoint_dir(), joined(skipped)),
                      __FILE__, __LINE__);
}

void Trainer::resume(const std::string& path) {
  apply_resumed(load_checkpoint(path, *model_, optimizer_.get()), path);
}

void Trainer::apply_resumed(const nlohmann::json& meta, const std::string& path) {
  step_ = meta.at("step").get<int64_t>();
  const nlohmann::json& state = meta.at("state");
  if (state.contains("loader"))
    train_loader_->load_state(state.at("loader"));  // absent in imported checkpoints
  tokens_seen_ = state.value("tokens_seen", int64_t{0});
  nonfinite_->set_total(state.value("nonfinite_skipped", int64_t{0}));
  hf_info_ = state.contains("hf") ? state.at("hf").dump() : "";
#ifdef POLDER_HAVE_CUDA
  // One entry per pipeline stage (a single string before issue 22's pipelines); at another pp the shapes
  // differ and the stages choose again.
  if (device_.is_cuda() && state.contains("kernel_choices")) {
    const nlohmann::json& k = state.at("kernel_choices");
    if (k.is_string() && mesh_->pp_size() == 1) kernels::cuda::set_kernel_choices(k.get<std::string>());
    if (k.is_array() && static_cast<int64_t>(k.size()) == mesh_->pp_size())
      kernels::cuda::set_kernel_choices(k.at(static_cast<size_t>(mesh_->pp_rank())).get<std::string>());
  }
#endif
  saved_step_ = step_;
  if (!quiet_ && is_rank0())
    std::printf("resumed from %s at step %lld\n", meta.value("path", path).c_str(),
                static_cast<long long>(step_));
}

int Trainer::run() {
  const int64_t total = config_.train.steps;
  const bool print = !quiet_ && is_rank0();
  if (print) {
    std::printf(
        "polder train: %lld parameters, %lld steps of %lld sequences x %lld tokens (%lld micro-batches of "
        "%lld), "
        "%s, %d threads per rank, %s\n",
        static_cast<long long>(models::model_parameter_count(config_.model)), static_cast<long long>(total),
        static_cast<long long>(config_.train.global_batch), static_cast<long long>(config_.data.seq_len),
        static_cast<long long>(accumulation_), static_cast<long long>(config_.train.micro_batch),
        config_.train.precision.c_str(), omp_get_max_threads(), mesh_->describe().c_str());
    if (!device_.is_cuda()) std::printf("CPU kernels: %s\n", kernels::cpu::cpu_isa_describe().c_str());
    if (!precision_choice_.empty()) std::printf("%s\n", precision_choice_.c_str());
    std::fflush(stdout);
  }
  double ema = -1;
  const int64_t first_step = step_;
  const auto loop_start = std::chrono::steady_clock::now();
  const StopCheck stop_check(parse_duration(config_.train.max_duration), start_);
  watchdog_->kick(step_ + 1);
  watchdog_->start();
  auto profile_start = loop_start;
  int64_t profile_first = first_step;
  double profile_outside = 0;  // seconds of validation and checkpoint writes
  while (step_ < total) {
    StepResult r = train_step();
    // The profile is the steady state: the first step (primitive creation, first touch of every buffer) is
    // left out when there are more.
    if (config_.train.profile && step_ == first_step + 1 && total > step_) {
      profile::reset();
      profile_start = std::chrono::steady_clock::now();
      profile_first = step_;
      profile_outside = 0;
    }
    if (!r.skipped) {
      log_step(r, ema);
      // Not part of the step: the profile records none of it (its kernels included) and names its time below
      // the table.
      const auto t0 = std::chrono::steady_clock::now();
      if (config_.train.profile) profile::set_enabled(false);
      evaluate_and_save();
      if (config_.train.profile) profile::set_enabled(true);
      profile_outside += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } else if (metrics_) {
      metrics_->log_scalar("train/nonfinite_skipped", static_cast<double>(nonfinite_->total()), step_ + 1);
    }
    watchdog_->kick(step_ + 1);
    phase("stop-flag all-reduce");
    if (const int why = stop_check.agree(*world_); why != 0 && step_ < total) {
      const std::string path =
          saved_step_ == step_ ? latest_checkpoint(checkpoint_dir()).value_or("") : save();
      if (print) {
        std::printf("stopping at step %lld (%s): checkpoint %s; run the same command again to continue\n",
                    static_cast<long long>(step_), stop_reason(why), path.c_str());
        std::fflush(stdout);
      }
      if (metrics_) metrics_->flush();
      return why;
    }
  }
  if (metrics_) metrics_->flush();
  profile::add_step_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - profile_start).count() -
      profile_outside);
  write_profile(step_ - profile_first, profile_outside);
  return 0;
}

void Trainer::write_profile(int64_t steps, double outside_seconds) {
  if (!config_.train.profile || !is_rank0()) return;
  const std::string text =
      profile::report(steps) +
      format("  (not in the table: validation and checkpoint writes, {} s in those {} steps)\n",
             std::round(outside_seconds * 1000) / 1000, steps);
  std::ofstream(fs::path(config_.train.run_dir) / "profile.txt")
      << text
      << (device_.is_cuda() ? "(train.device cuda: host wall time, i.e. kernel launches, not GPU time)\n"
                            : "");
  std::ofstream(fs::path(config_.train.run_dir) / "profile.json") << profile::report_json(steps) << "\n";
  if (!quiet_) {
    std::printf("%s", text.c_str());
    if (device_.is_cuda()) std::printf("(train.device cuda: host wall time, i.e. kernel launches)\n");
    std::fflush(stdout);
  }
}

void Trainer::log_step(const StepResult& r, double& ema) {
  const int64_t total = config_.train.steps;
  const double tokens_per_step = static_cast<double>(config_.train.global_batch * config_.data.seq_len);
  const double fpt = flops_per_token(config_.model, config_.data.seq_len);
  ema = ema < 0 ? r.seconds : 0.9 * ema + 0.1 * r.seconds;
  StepMetrics m;
  m.step = step_;
  m.total_steps = total;
  m.loss = r.loss;
  m.lr = r.lr;
  m.grad_norm = r.grad_norm;
  m.step_time_s = r.seconds;
  m.tokens_per_s = tokens_per_step / r.seconds;
  m.mfu = config_.train.peak_tflops > 0 ? m.tokens_per_s * fpt / (config_.train.peak_tflops * 1e12) : -1;
  m.eta_s = ema * static_cast<double>(total - step_);
  m.tokens_seen = tokens_seen_;
  if (device_.is_cuda()) {
    const cuda::PoolStats ps = cuda::pool_stats(device_.index);
    m.peak_memory_gib = static_cast<double>(ps.used_peak) / (1 << 30);
    if (energy_ && energy_->available()) {
      const double j = energy_->joules();
      m.energy_kwh = joules_to_kwh(j - energy_at_last_step_);
      m.energy_total_kwh = joules_to_kwh(j);
      energy_at_last_step_ = j;
    }
  }
  if (metrics_) metrics_->log_step(m);
  if (!quiet_ && is_rank0() && (step_ % std::max<int64_t>(1, config_.logging.every) == 0 || step_ == total)) {
    std::printf("%s\n", format_step_line(m).c_str());
    std::fflush(stdout);
  }
}

void Trainer::evaluate_and_save() {
  const int64_t total = config_.train.steps;
  const bool print = !quiet_ && is_rank0();
  if (valid_loader_ && (step_ % config_.train.eval_every == 0 || step_ == total)) {
    const double vl = evaluate();
    if (metrics_) {
      metrics_->log_scalar("valid/loss", vl, step_);
      metrics_->log_scalar("valid/perplexity", std::exp(vl), step_);
    }
    if (print) {
      std::printf("step %lld | validation loss %.4f | perplexity %.2f\n", static_cast<long long>(step_), vl,
                  std::exp(vl));
      std::fflush(stdout);
    }
  }
  if ((config_.checkpoint.every > 0 && step_ % config_.checkpoint.every == 0) || step_ == total) {
    try {
      const std::string path = save();
      if (print) {
        std::printf("saved checkpoint %s\n", path.c_str());
        std::fflush(stdout);
      }
    } catch (const CheckpointWriteError& e) {
      // A periodic checkpoint that cannot be written loses nothing yet: say so and try again at the next one.
      // The last one (end of the run) must succeed: it propagates.
      if (step_ == total) throw;
      if (print) {
        std::fprintf(stderr, "polder: warning: %s; training continues\n", e.message().c_str());
        std::fflush(stderr);
      }
    }
  }
}

}  // namespace polder::train
