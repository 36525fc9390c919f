// Trainer implementation. Determinism: every source of randomness is a pure function of the config seed (init
// by Philox per parameter name, data order by the loader's seed), and every kernel reduces in a fixed order,
// so a resumed run reproduces an uninterrupted one bit for bit.
#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/sha256.h"
#include "train/checkpoint.h"

#ifndef POLDER_GIT_COMMIT
#define POLDER_GIT_COMMIT "unknown"
#endif

namespace polder::train {
namespace fs = std::filesystem;

double flops_per_token(const ModelConfig& m, int64_t seq_len) {
  const int64_t hd = m.head_dim ? m.head_dim : m.hidden_size / m.num_heads;
  // N: every parameter a token's forward multiplies with; the embedding lookup is not a matmul, but a tied
  // embedding is also the LM head, so it counts then.
  double n = static_cast<double>(models::llama_parameter_count(m));
  if (!m.tie_embeddings) n -= static_cast<double>(m.vocab_size) * m.hidden_size;
  const double attention = 12.0 * m.num_layers * m.num_heads * hd * seq_len;
  return 6.0 * n + attention;
}

MemoryEstimate estimate_memory(const Config& c, int64_t dp) {
  const ModelConfig& m = c.model;
  const double params = static_cast<double>(models::llama_parameter_count(m));
  const int64_t tp = std::max<int64_t>(1, c.parallel.tp), pp = std::max<int64_t>(1, c.parallel.pp);
  const double local = params / static_cast<double>(tp * pp);
  const bool bf16 = c.train.precision == "bf16";
  MemoryEstimate e;
  const double zero_div = c.parallel.zero == "none" ? 1.0 : static_cast<double>(dp);
  e.weights = local * (bf16 ? 2 : 4);
  e.gradients = local * 4 / (c.parallel.zero == "2" ? static_cast<double>(dp) : 1.0);
  e.optimizer = local * (bf16 ? 12 : 8) / zero_div;  // moments (+ fp32 master under bf16)
  // Saved activations per token per layer, in elements: block input, normed input, q/k/v, attention output,
  // residual, second norm, gate, up, swiglu output (see models/llama/model.cpp and what each op saves).
  const int64_t hd = c.resolved_head_dim(), kv = c.resolved_kv_heads();
  const double per_layer = 6.0 * m.hidden_size + 2.0 * kv * hd + 3.0 * m.intermediate_size;
  const double tokens = static_cast<double>(c.train.micro_batch * c.data.seq_len);
  const double act_bytes = bf16 ? 2 : 4;
  const double layers_here = static_cast<double>(m.num_layers) / pp;
  const double stored = c.train.recompute ? layers_here * m.hidden_size + per_layer : layers_here * per_layer;
  // Logits and their gradient for the cross-entropy (full vocabulary, this tp rank's share).
  e.activations = tokens * (stored / tp * act_bytes + 2.0 * m.vocab_size / tp * act_bytes);
  return e;
}

Trainer::Trainer(Config config, bool quiet) : config_(std::move(config)), quiet_(quiet) {
  validate_config(config_, 1);
  if (config_.train.threads > 0) omp_set_num_threads(static_cast<int>(config_.train.threads));
  POLDER_CHECK(config_.train.device == "cpu",
               "train.device '{}' is not available in this build yet; use 'cpu' (the CUDA trainer comes with the "
               "CUDA backend)",
               config_.train.device);
  const int64_t dp = 1;
  accumulation_ = config_.train.global_batch / (config_.train.micro_batch * dp);

  data::LoaderConfig lc;
  for (const DatasetEntry& d : config_.data.datasets) lc.datasets.push_back({d.name, d.prefix, d.weight});
  lc.seq_len = config_.data.seq_len;
  lc.micro_batch = config_.train.micro_batch;
  lc.seed = config_.train.seed;
  lc.valid_fraction = config_.data.valid_fraction;
  lc.split_seed = config_.data.split_seed;
  lc.vocab_size = config_.model.vocab_size;
  lc.split = "train";
  train_loader_ = std::make_unique<data::DataLoader>(lc);
  if (config_.train.eval_every > 0 && config_.data.valid_fraction > 0) {
    lc.split = "valid";
    lc.shuffle = false;
    lc.vocab_size = 0;  // already checked
    valid_loader_ = std::make_unique<data::DataLoader>(lc);
  }

  const DType dtype = config_.train.precision == "bf16" ? DType::bf16 : DType::f32;
  model_ = std::make_unique<models::Llama>(config_.model, dtype);
  model_->init(config_.train.seed);
  optimizer_ = std::make_unique<AdamW>(*model_, config_.optim);

  const std::string& r = config_.train.resume;
  if (r == "auto") {
    if (auto latest = latest_checkpoint(checkpoint_dir())) resume(*latest);
  } else if (r != "none" && !r.empty()) {
    resume(r);
  }
  fs::create_directories(config_.train.run_dir);
  write_provenance();
  metrics_ = std::make_unique<MetricsWriter>(config_.train.run_dir, config_.logging.jsonl, config_.logging.tensorboard);
  if (step_ > 0) metrics_->log_resume(step_ + 1);
}

Trainer::~Trainer() = default;

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

Tensor Trainer::batch_tensor(const data::Batch& b, bool targets) const {
  const int64_t B = b.batch_size, T = b.seq_len;
  Tensor t = Tensor::empty({B, T}, DType::i32);
  int32_t* out = t.data<int32_t>();
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < T; ++j) out[i * T + j] = b.tokens[static_cast<size_t>(i * (T + 1) + j + (targets ? 1 : 0))];
  return t;
}

StepResult Trainer::train_step() {
  auto t0 = std::chrono::steady_clock::now();
  model_->zero_grad();
  double loss_sum = 0;
  for (int64_t micro = 0; micro < accumulation_; ++micro) {
    data::Batch b = train_loader_->next();
    Tensor loss = model_->loss(batch_tensor(b, false), batch_tensor(b, true), config_.train.recompute);
    loss_sum += loss.item();
    // Each micro-batch contributes 1/accumulation of the mean loss over the global batch.
    ops::scale(loss, 1.0 / static_cast<double>(accumulation_)).backward();
  }
  StepResult r;
  r.loss = loss_sum / static_cast<double>(accumulation_);
  r.grad_norm = optimizer_->clip_grad_norm(config_.optim.grad_clip);
  r.lr = lr_at(config_.schedule, config_.optim.lr, step_, config_.train.steps);
  optimizer_->step(r.lr);
  ++step_;
  tokens_seen_ += config_.train.global_batch * config_.data.seq_len;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

double Trainer::evaluate() {
  POLDER_CHECK(valid_loader_ != nullptr, "evaluate: no validation split (set data.valid_fraction > 0 and "
                                         "train.eval_every > 0)");
  NoGradGuard guard;
  valid_loader_->reset();
  double sum = 0;
  for (int64_t i = 0; i < config_.train.eval_batches; ++i) {
    data::Batch b = valid_loader_->next();
    sum += model_->loss(batch_tensor(b, false), batch_tensor(b, true)).item();
  }
  return sum / static_cast<double>(config_.train.eval_batches);
}

std::string Trainer::save() {
  nlohmann::json state;
  state["loader"] = train_loader_->state();
  state["tokens_seen"] = tokens_seen_;
  state["config_yaml"] = config_to_yaml(config_);
  state["seed"] = config_.train.seed;
  return save_checkpoint(checkpoint_dir(), step_, *model_, *optimizer_, state, config_.checkpoint.keep_last);
}

void Trainer::resume(const std::string& path) {
  nlohmann::json meta = load_checkpoint(path, *model_, optimizer_.get());
  step_ = meta.at("step").get<int64_t>();
  const nlohmann::json& state = meta.at("state");
  train_loader_->load_state(state.at("loader"));
  tokens_seen_ = state.value("tokens_seen", int64_t{0});
  if (!quiet_) std::printf("resumed from %s at step %lld\n", meta.value("path", path).c_str(), static_cast<long long>(step_));
}

void Trainer::run() {
  const int64_t total = config_.train.steps;
  const double tokens_per_step = static_cast<double>(config_.train.global_batch * config_.data.seq_len);
  const double fpt = flops_per_token(config_.model, config_.data.seq_len);
  if (!quiet_) {
    std::printf("polder train: %lld parameters, %lld steps of %lld sequences x %lld tokens (%lld micro-batches of %lld), "
                "%s, %d threads\n",
                static_cast<long long>(models::llama_parameter_count(config_.model)), static_cast<long long>(total),
                static_cast<long long>(config_.train.global_batch), static_cast<long long>(config_.data.seq_len),
                static_cast<long long>(accumulation_), static_cast<long long>(config_.train.micro_batch),
                config_.train.precision.c_str(), omp_get_max_threads());
    std::fflush(stdout);
  }
  double ema = -1;
  while (step_ < total) {
    StepResult r = train_step();
    POLDER_CHECK(std::isfinite(r.loss), "training diverged at step {}: loss is {} (lower optim.lr or check the data)",
                 step_, r.loss);
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
    metrics_->log_step(m);
    if (!quiet_ && (step_ % std::max<int64_t>(1, config_.logging.every) == 0 || step_ == total)) {
      std::printf("%s\n", format_step_line(m).c_str());
      std::fflush(stdout);
    }
    if (valid_loader_ && (step_ % config_.train.eval_every == 0 || step_ == total)) {
      const double vl = evaluate();
      metrics_->log_scalar("valid/loss", vl, step_);
      metrics_->log_scalar("valid/perplexity", std::exp(vl), step_);
      if (!quiet_) {
        std::printf("step %lld | validation loss %.4f | perplexity %.2f\n", static_cast<long long>(step_), vl,
                    std::exp(vl));
        std::fflush(stdout);
      }
    }
    if ((config_.checkpoint.every > 0 && step_ % config_.checkpoint.every == 0) || step_ == total) {
      const std::string path = save();
      if (!quiet_) {
        std::printf("saved checkpoint %s\n", path.c_str());
        std::fflush(stdout);
      }
    }
  }
  metrics_->flush();
}

}  // namespace polder::train
