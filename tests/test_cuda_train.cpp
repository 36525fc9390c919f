// Training on the GPU end to end: the tiny model trained 50 steps with train.device cuda in bf16 follows the
// CPU f32 run's loss curve within bf16 tolerance; f32 on the GPU follows it closely; a GPU checkpoint resumes
// exactly on the GPU and loads on the CPU; the memory pool's peak covers the model state. And on any machine:
// device cuda without a GPU (or without CUDA) is one clear error. The GPU cases skip with a message where no
// GPU is visible.
#include <cmath>
#include <cstdlib>

#include "core/cuda_context.h"
#include "models/llama/model.h"
#include "tests/emulated.h"
#include "tests/synthetic_data.h"
#include "tests/testing.h"
#include "train/trainer.h"

using namespace polder;

namespace {

bool gpu_present() {
  return cuda::compiled() && cuda::device_count() > 0;
}

Config tiny(const std::string& dir) {
  testing::write_synthetic_dataset(dir + "/a", 200, 61, 1);
  Config c;
  c.model.vocab_size = 64;
  c.model.hidden_size = 64;
  c.model.intermediate_size = 128;
  c.model.num_layers = 2;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.max_seq_len = 32;
  c.data.datasets = {{"a", dir + "/a", 1.0}};
  c.data.seq_len = 32;
  c.data.valid_fraction = 0;
  c.train.steps = 50;
  c.train.global_batch = 8;
  c.train.micro_batch = 4;
  c.train.eval_every = 0;
  c.train.run_dir = dir + "/run";
  c.train.resume = "none";
  if (testing::kEmulatedDevice) {  // a quarter of the tokens per step: every kernel thread runs on the CPU
    c.data.seq_len = c.model.max_seq_len = 16;
    c.train.global_batch = 4;
    c.train.micro_batch = 2;
  }
  c.optim.lr = 3e-3;
  c.schedule.warmup_steps = 5;
  c.logging.tensorboard = false;
  return c;
}

std::vector<double> losses(Config c, int steps) {
  train::Trainer t(c, true);
  std::vector<double> out;
  for (int i = 0; i < steps; ++i) out.push_back(t.train_step().loss);
  return out;
}

}  // namespace

TEST_CASE("train.device cuda without a usable GPU is one clear error", "[train][cuda]") {
  if (gpu_present()) return;  // covered by the GPU cases
  const std::string dir = testing::fresh_dir("cuda_train", "no_gpu");
  Config c = tiny(dir);
  c.train.device = "cuda";
  CHECK_THROWS_WITH(train::Trainer(c, true),
                    Catch::Contains(cuda::compiled() ? "no CUDA device is visible" : "built without CUDA"));
  // The emulated device with an old driver (ctest test_cuda_train_old_driver: POLDER_SIM_DRIVER=12040, a
  // CUDA 12.4 driver under the CUDA 13 runtime): the line names the runtime's error, not just "no device".
  if (std::getenv("POLDER_SIM_DRIVER") != nullptr)
    CHECK_THROWS_WITH(train::Trainer(c, true), Catch::Contains("cudaErrorInsufficientDriver"));
}

// 50 steps on a GPU, 12 on the emulated device (its kernels run on the CPU), where the curve has not come as
// far down: it must still fall by 0.1.
constexpr int kCurveSteps = testing::gpu_or_emulated(50, 12);
constexpr double kLearned = testing::gpu_or_emulated(0.5, 0.1);

TEST_CASE("cuda training: the tiny model follows the CPU f32 loss curve", "[cuda][train]") {
  if (!gpu_present()) {
    WARN("skipped: no CUDA device; [cuda] tests run on a GPU machine via scripts/gpu/check.sh");
    return;
  }
  const std::string dir = testing::fresh_dir("cuda_train", "curve");
  Config cpu = tiny(dir);
  const std::vector<double> ref = losses(cpu, kCurveSteps);
  for (std::string precision : {"f32", "bf16"}) {
    INFO("precision " << precision);
    Config g = cpu;
    g.train.device = "cuda";
    g.train.precision = precision;
    g.train.run_dir = dir + "/run_" + precision;
    const std::vector<double> got = losses(g, kCurveSteps);
    REQUIRE(got.size() == ref.size());
    double worst = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      worst = std::max(worst, std::abs(got[i] - ref[i]) / std::abs(ref[i]));
    INFO("first loss " << got.front() << " vs " << ref.front() << ", last " << got.back() << " vs "
                       << ref.back() << ", worst relative difference " << worst);
    CHECK(worst < (precision == "f32" ? 1e-3 : 3e-2));
    CHECK(got.back() < got.front() - kLearned);  // it learns
  }
  // The pool saw at least the flat buffers: parameters (bf16), gradients, master, two moments (f32).
  const int64_t n = models::llama_parameter_count(cpu.model);
  CHECK(cuda::pool_stats(0).used_peak >= static_cast<size_t>(n) * (2 + 4 * 4));
}

TEST_CASE("cuda training: a GPU checkpoint resumes exactly on the GPU and loads on the CPU",
          "[cuda][train]") {
  if (!gpu_present()) {
    WARN("skipped: no CUDA device; [cuda] tests run on a GPU machine via scripts/gpu/check.sh");
    return;
  }
  const std::string dir = testing::fresh_dir("cuda_train", "resume");
  Config c = tiny(dir);
  c.train.device = "cuda";
  c.train.precision = "bf16";
  std::vector<double> full = losses(c, 6);
  Config c2 = c;
  c2.train.run_dir = dir + "/run2";
  std::vector<double> resumed;
  {
    train::Trainer t(c2, true);
    for (int i = 0; i < 3; ++i) resumed.push_back(t.train_step().loss);
    t.save();
  }
  c2.train.resume = "auto";
  {
    train::Trainer t(c2, true);
    REQUIRE(t.step() == 3);
    for (int i = 3; i < 6; ++i) resumed.push_back(t.train_step().loss);
  }
  for (size_t i = 0; i < full.size(); ++i) CHECK(resumed[i] == full[i]);  // bit-identical on the same device
  // The step-3 checkpoint written from the GPU continues on the CPU (same bf16 policy) on the same curve.
  Config on_cpu = c2;
  on_cpu.train.device = "cpu";
  train::Trainer t(on_cpu, true);
  REQUIRE(t.step() == 3);
  const double next = t.train_step().loss;
  CHECK(std::abs(next - full[3]) < 2e-2 * std::abs(full[3]));
}
