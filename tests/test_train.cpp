// Training end to end on tiny synthetic datasets: exact resume (bit-identical losses and weights), the bf16
// policy on CPU, gradient accumulation equivalence, checkpoint corruption detection, schedules, and KV-cache
// decoding against the full forward.
#include <cmath>
#include <filesystem>
#include <fstream>

#include <map>

#include <nlohmann/json.hpp>

#include "core/profile.h"
#include "kernels/philox.h"
#include "models/llama/model.h"
#include "tests/synthetic_data.h"
#include "tests/testing.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

using namespace polder;
using namespace polder::testing;
namespace fs = std::filesystem;

namespace {

std::string work_dir(const std::string& name) {
  return testing::fresh_dir("train_work", name);
}

Config tiny_config(const std::string& dir) {
  testing::write_synthetic_dataset(dir + "/a", 120, 61, 1);
  testing::write_synthetic_dataset(dir + "/b", 80, 61, 2);
  Config c;
  c.model.vocab_size = 64;
  c.model.hidden_size = 32;
  c.model.intermediate_size = 48;
  c.model.num_layers = 2;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.max_seq_len = 32;
  c.data.datasets = {{"a", dir + "/a", 0.7}, {"b", dir + "/b", 0.3}};
  c.data.seq_len = 16;
  c.data.valid_fraction = 0.1;
  c.train.steps = 8;
  c.train.global_batch = 8;
  c.train.micro_batch = 4;
  c.train.eval_every = 4;
  c.train.eval_batches = 2;
  c.train.run_dir = dir + "/run";
  c.train.resume = "none";
  c.optim.lr = 3e-3;
  c.schedule.warmup_steps = 2;
  c.checkpoint.keep_last = 2;
  c.logging.tensorboard = false;
  return c;
}

std::vector<float> weights_of(models::Model& m) {
  return m.flat_params().to(DType::f32).to_vector<float>();
}

}  // namespace

TEST_CASE("a run stopped at step k and resumed is bit-identical to an uninterrupted run", "[train][resume]") {
  for (std::string precision : {"f32", "bf16"}) {
    INFO("precision " << precision);
    const std::string dir = work_dir("resume_" + precision);
    Config c = tiny_config(dir);
    c.train.precision = precision;
    std::vector<double> full;
    std::vector<float> full_weights;
    {
      train::Trainer t(c, true);
      for (int i = 0; i < 8; ++i) full.push_back(t.train_step().loss);
      full_weights = weights_of(t.model());
    }
    Config c2 = c;
    c2.train.run_dir = dir + "/run2";
    std::vector<double> resumed;
    {
      train::Trainer t(c2, true);
      for (int i = 0; i < 3; ++i) resumed.push_back(t.train_step().loss);
      t.save();
    }
    c2.train.resume = "auto";
    train::Trainer t(c2, true);
    CHECK(t.step() == 3);
    for (int i = 3; i < 8; ++i) resumed.push_back(t.train_step().loss);
    REQUIRE(resumed.size() == full.size());
    for (size_t i = 0; i < full.size(); ++i) CHECK(resumed[i] == full[i]);  // bit-identical
    CHECK(weights_of(t.model()) == full_weights);
    CHECK(full.back() < full.front());  // it learns
  }
}

TEST_CASE("gradient accumulation: 2 x 4 gives the gradients of 1 x 8", "[train]") {
  const std::string dir = work_dir("accum");
  Config c = tiny_config(dir);
  c.optim.grad_clip = 0;
  // f64: the two summation orders then agree to ~1e-16 on any CPU (in f32 the gap depends on the ISA).
  c.train.precision = "f64";
  Config one = c;
  one.train.micro_batch = 8;
  train::Trainer a(c, true), b(one, true);
  a.train_step();
  b.train_step();
  CHECK(rel_error(a.model().flat_grads(), b.model().flat_grads()) < 1e-12);
  CHECK(rel_error(a.model().flat_params(), b.model().flat_params()) < 1e-12);
}

TEST_CASE("the bf16 policy keeps f32 master weights and tracks the f32 run", "[train][bf16]") {
  const std::string dir = work_dir("bf16");
  Config c = tiny_config(dir);
  Config cb = c;
  cb.train.precision = "bf16";
  train::Trainer f(c, true), b(cb, true);
  CHECK(b.model().dtype() == DType::bf16);
  CHECK(b.optimizer().master().dtype() == DType::f32);
  CHECK(b.model().flat_grads().dtype() == DType::f32);
  double lf = 0, lb = 0;
  for (int i = 0; i < 4; ++i) {
    lf = f.train_step().loss;
    lb = b.train_step().loss;
  }
  CHECK(std::abs(lf - lb) < 0.05 * lf);
  // The bf16 parameters are the rounded master weights.
  Tensor rounded = b.optimizer().master().to(DType::bf16);
  CHECK(max_abs_diff(rounded, b.model().flat_params()) == 0.0);
}

TEST_CASE("checkpoints: atomic layout, keep-last, corruption and mismatch errors", "[train][checkpoint]") {
  const std::string dir = work_dir("ckpt");
  Config c = tiny_config(dir);
  train::Trainer t(c, true);
  std::string first;
  for (int i = 0; i < 3; ++i) {
    t.train_step();
    std::string p = t.save();
    if (i == 0) first = p;
  }
  const std::string root = t.checkpoint_dir();
  CHECK_FALSE(fs::exists(first));  // keep_last = 2
  auto latest = train::latest_checkpoint(root);
  REQUIRE(latest.has_value());
  CHECK(fs::path(*latest).filename() == "step_00000003");
  for (const auto& e : fs::directory_iterator(root))
    CHECK(e.path().filename().string().rfind(".tmp", 0) != 0);

  // Loading into a fresh model reproduces the weights.
  models::Llama m(c.model, DType::f32);
  train::load_checkpoint(root, m, nullptr);
  CHECK(weights_of(m) == weights_of(t.model()));

  // Flip one byte in the middle of the weights: the checksum names the file.
  const std::string file = *latest + "/shard-pp0-tp0.safetensors";
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(file) / 2));
    char ch = 0;
    f.read(&ch, 1);
    f.seekp(static_cast<std::streamoff>(fs::file_size(file) / 2));
    ch = static_cast<char>(ch ^ 0x40);
    f.write(&ch, 1);
  }
  require_error([&] { train::load_checkpoint(root, m, nullptr); },
                "shard-pp0-tp0.safetensors' is corrupted: SHA-256");

  // A model of another shape: the tensor and both shapes are named.
  Config other = c;
  other.model.hidden_size = 16;
  models::Llama wrong(other.model, DType::f32);
  auto prev = fs::path(root) / "step_00000002";
  require_error([&] { train::load_checkpoint(prev.string(), wrong, nullptr); },
                "tensor 'model.embed_tokens.weight' is (64, 32) but the model expects (64, 16)");
  // A truncated file.
  fs::resize_file(prev / "shard-pp0-tp0.safetensors", 100);
  require_error([&] { train::load_checkpoint(prev.string(), m, nullptr); },
                "step_00000002/shard-pp0-tp0.safetensors' is corrupted");
  require_error([&] { train::load_checkpoint(dir + "/nowhere", m, nullptr); }, "does not exist");
}

namespace {
void flip_middle_byte(const std::string& file) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  const auto at = static_cast<std::streamoff>(fs::file_size(file) / 2);
  char ch = 0;
  f.seekg(at);
  f.read(&ch, 1);
  ch = static_cast<char>(ch ^ 0x40);
  f.seekp(at);
  f.write(&ch, 1);
}
}  // namespace

TEST_CASE("train.resume auto skips corrupt newest checkpoints; a named corrupt one is an error",
          "[train][resume][checkpoint]") {
  const std::string dir = work_dir("resume_fallback");
  Config c = tiny_config(dir);
  c.checkpoint.keep_last = 3;
  std::vector<double> full;
  {
    train::Trainer t(c, true);
    for (int i = 0; i < 6; ++i) full.push_back(t.train_step().loss);
  }
  Config c2 = c;
  c2.train.run_dir = dir + "/run2";
  std::string root;
  {
    train::Trainer t(c2, true);
    for (int i = 0; i < 3; ++i) {
      t.train_step();
      t.save();
    }
    root = t.checkpoint_dir();
  }
  const fs::path s1 = fs::path(root) / "step_00000001", s2 = fs::path(root) / "step_00000002",
                 s3 = fs::path(root) / "step_00000003";
  CHECK(train::resume_candidates(root) == std::vector<std::string>{s3.string(), s2.string(), s1.string()});
  // A storage fault in the newest shard: resume from step 2, on the uninterrupted run's loss curve.
  flip_middle_byte((s3 / "shard-pp0-tp0.safetensors").string());
  c2.train.resume = "auto";
  {
    train::Trainer t(c2, true);
    CHECK(t.step() == 2);
    for (int i = 2; i < 6; ++i) CHECK(t.train_step().loss == full[static_cast<size_t>(i)]);  // bit-identical
  }
  // A truncated metadata.json of the next one as well: back to step 1.
  fs::resize_file(s2 / "metadata.json", 40);
  {
    train::Trainer t(c2, true);
    CHECK(t.step() == 1);
    CHECK(t.train_step().loss == full[1]);
  }
  // A checkpoint named explicitly stays a hard error naming the file.
  Config named = c2;
  named.train.resume = s3.string();
  require_error([&] { train::Trainer t(named, true); },
                "step_00000003/shard-pp0-tp0.safetensors' is corrupted: SHA-256");
  // `latest` names a folder that is gone: skipped like the others.
  { std::ofstream(fs::path(root) / "latest") << "step_00000009\n"; }
  {
    train::Trainer t(c2, true);
    CHECK(t.step() == 1);
  }
  // Nothing intact at all: one error that lists every checkpoint and why.
  fs::remove(s1 / "metadata.json");
  require_error([&] { train::Trainer t(c2, true); }, "no intact checkpoint in");
  bool agreed = false;  // a ConfigError: every rank raises it alike, rank 0 prints it
  try {
    train::Trainer t(c2, true);
  } catch (const ConfigError& e) {
    agreed = true;
    CHECK(e.message().find("step_00000009 (checkpoint '") != std::string::npos);
    CHECK(e.message().find("step_00000003 (checkpoint file") != std::string::npos);
    CHECK(e.message().find("step_00000002 (checkpoint metadata") != std::string::npos);
    CHECK(e.message().find("step_00000001' has no metadata.json") != std::string::npos);
  }
  CHECK(agreed);
}

TEST_CASE("learning-rate schedules", "[train][schedule]") {
  ScheduleConfig s;
  s.warmup_steps = 10;
  s.min_lr_ratio = 0.1;
  s.type = "cosine";
  CHECK(train::lr_at(s, 1.0, 0, 110) == Approx(0.1));
  CHECK(train::lr_at(s, 1.0, 9, 110) == Approx(1.0));
  CHECK(train::lr_at(s, 1.0, 60, 110) == Approx(0.55));  // halfway through the decay
  CHECK(train::lr_at(s, 1.0, 110, 110) == Approx(0.1));
  s.type = "linear";
  CHECK(train::lr_at(s, 1.0, 60, 110) == Approx(0.55));
  s.type = "constant";
  CHECK(train::lr_at(s, 1.0, 100, 110) == Approx(1.0));
  s.type = "wsd";
  s.decay_fraction = 0.2;  // the last 22 steps decay
  CHECK(train::lr_at(s, 1.0, 80, 110) == Approx(1.0));
  CHECK(train::lr_at(s, 1.0, 109, 110) == Approx(0.1));
  CHECK(train::lr_at(s, 1.0, 98, 110) == Approx(1.0 - 0.9 * 11.0 / 22.0));
}

TEST_CASE("KV-cache decoding gives the logits of the full forward", "[model][generate]") {
  ModelConfig mc;
  mc.vocab_size = 50;
  mc.hidden_size = 24;
  mc.intermediate_size = 40;
  mc.num_layers = 2;
  mc.num_heads = 6;
  mc.num_kv_heads = 2;
  mc.max_seq_len = 16;
  models::Llama m(mc, DType::f64);
  m.init(5);
  std::vector<int32_t> ids = {3, 17, 42, 8, 8, 1, 49, 0, 23};
  Tensor full = m.forward(Tensor::from_vector(ids, {1, 9}));
  models::KVCache cache = m.make_cache(1, 16);
  Tensor first =
      m.decode(Tensor::from_vector(std::vector<int32_t>(ids.begin(), ids.begin() + 4), {1, 4}), cache);
  CHECK(rel_error(first, ops::narrow(full, 1, 0, 4)) < 1e-12);
  for (int i = 4; i < 9; ++i) {
    Tensor step =
        m.decode(Tensor::from_vector(std::vector<int32_t>{ids[static_cast<size_t>(i)]}, {1, 1}), cache);
    CHECK(rel_error(step, ops::narrow(full, 1, i, 1)) < 1e-12);
  }
  CHECK(cache.length == 9);
}

TEST_CASE("info: parameter count and FLOPs per token", "[train][info]") {
  Config c;
  c.model.vocab_size = 128256;
  c.model.hidden_size = 4096;
  c.model.intermediate_size = 14336;
  c.model.num_layers = 32;
  c.model.num_heads = 32;
  c.model.num_kv_heads = 8;
  c.data.seq_len = 8192;
  CHECK(models::llama_parameter_count(c.model) == 8030261248);  // Llama-3-8B as published
  // 6 * (N - embedding) + 12 * L * H * D * T
  const double expect = 6.0 * (8030261248.0 - 128256.0 * 4096) + 12.0 * 32 * 32 * 128 * 8192;
  CHECK(train::flops_per_token(c.model, 8192) == Approx(expect).epsilon(1e-12));
}

#include "models/llama/sampling.h"

TEST_CASE("sampling: greedy, top-k, top-p and temperature", "[model][generate]") {
  const std::vector<double> logits = {0.1, 2.0, -1.0, 1.9, 0.0};
  models::SamplingOptions o;
  o.temperature = 0;
  CHECK(models::sample_token(logits, o, 0) == 1);
  o.temperature = 1.0;
  o.top_k = 1;
  for (uint64_t pos = 0; pos < 50; ++pos) CHECK(models::sample_token(logits, o, pos) == 1);
  // top-k 2: only ids 1 and 3, in proportion exp(2.0) : exp(1.9).
  o.top_k = 2;
  o.top_p = 1.0;
  int ones = 0, threes = 0;
  for (uint64_t pos = 0; pos < 4000; ++pos) {
    const int32_t t = models::sample_token(logits, o, pos);
    ones += t == 1;
    threes += t == 3;
  }
  CHECK(ones + threes == 4000);
  const double expect = std::exp(2.0) / (std::exp(2.0) + std::exp(1.9));
  CHECK(std::abs(ones / 4000.0 - expect) < 0.03);  // ~4 standard errors
  // top-p 0.3: the most likely token alone already holds more than 30% of the mass.
  o.top_k = 0;
  o.top_p = 0.3;
  for (uint64_t pos = 0; pos < 50; ++pos) CHECK(models::sample_token(logits, o, pos) == 1);
  // Same seed and position: same token.
  o.top_p = 1.0;
  CHECK(models::sample_token(logits, o, 17) == models::sample_token(logits, o, 17));
  o.top_p = 0;
  require_error([&] { models::sample_token(logits, o, 0); }, "top_p 0 must be in (0, 1]");
}

// train.profile (issue 25): the report accounts each kernel call once under its kind and direction, with the
// GEMMs' FLOPs; counts are checked, not times (timed unit tests are not how speed is judged here).
TEST_CASE("train.profile: kernels counted per kind and direction, GEMM FLOPs, files in the run folder",
          "[train][profile]") {
  const std::string dir = work_dir("profile");
  Config c = tiny_config(dir);
  c.train.steps = 3;
  c.train.eval_every = 1;  // validation each step: not in the profile
  c.train.profile = true;
  {
    train::Trainer t(c, true);
    CHECK(t.run() == 0);
  }
  CHECK_FALSE(profile::enabled());  // a trainer switches it off again
  REQUIRE(fs::exists(dir + "/run/profile.txt"));
  REQUIRE(fs::exists(dir + "/run/profile.json"));
  std::ifstream in(dir + "/run/profile.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  CHECK(j.at("steps") == 2);  // the first step (warm-up) is left out
  std::map<std::string, nlohmann::json> by;
  double sum = 0;
  for (const auto& r : j.at("rows")) {
    by[r.at("kind").get<std::string>() + "/" + r.at("direction").get<std::string>()] = r;
    sum += r.at("seconds_per_step").get<double>();
  }
  // Per step, 2 micro-batches through 2 layers: forward GEMMs = 2 x (2 x 7 linears + the head) = 30, the
  // backward twice that (input and weight gradients), attention and the loss once per layer / micro-batch.
  CHECK(by.at("GEMM/forward").at("calls_per_step") == 30);
  CHECK(by.at("GEMM/backward").at("calls_per_step") == 60);
  CHECK(by.at("GEMM/forward").at("gflops").get<double>() > 0);
  CHECK(by.at("attention/forward").at("calls_per_step") == 4);
  CHECK(by.at("attention/backward").at("calls_per_step") == 4);
  CHECK(by.at("softmax / cross-entropy/forward").at("calls_per_step").get<double>() >= 2);
  CHECK(by.count("optimizer/step") == 1);
  CHECK(by.count("data loading/step") == 1);
  for (const auto& [key, row] : by)
    CHECK(key.find("/evaluation") == std::string::npos);  // validation left out
  // Exclusive times add up to no more than the run loop's wall time.
  CHECK(sum <= j.at("seconds_per_step").get<double>() * 1.0001);
  // Off: no files, no rows.
  Config off = tiny_config(work_dir("profile_off"));
  off.train.steps = 2;
  off.train.eval_every = 0;
  {
    train::Trainer t(off, true);
    CHECK(t.run() == 0);
  }
  CHECK_FALSE(fs::exists(off.train.run_dir + "/profile.txt"));
}
