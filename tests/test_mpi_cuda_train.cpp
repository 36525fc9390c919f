// Training on the CUDA path against the CPU path, at one rank and data-parallel with ZeRO 0, 1 and 2 over
// NCCL (issue 21). In the emulated-device build (POLDER_CUDA_EMULATOR, tests/sim) this runs polder's CUDA
// sources, cuBLASLt and NCCL on the CPU in CI; on a GPU machine the same test runs on the GPU. Each layout
// trains a shrunk model a few steps on train.device cpu (the MPI backend) and on cuda (NCCL), from the same
// seed and data, and compares:
//   - f32: losses and final parameters (this rank's shards) within 1e-5 relative: the two paths differ only
//     in the order of their float reductions (GEMM blocking, the norms' and the loss's sums), a few ulps per
//     step that the optimizer does not amplify in a handful of steps;
//   - bf16: the same bf16 policy on both paths (bf16 weights and activations, f32 master weights and
//     accumulation), so the paths differ by where a value lands on a bf16 rounding boundary: a bound of
//     kBf16Ulps ulps of bf16 (2^-8 relative each) on the losses, and on the f32 master weights the same for
//     the step's update (lr times a few bf16 ulps of the Adam direction);
//   - checkpoints: a checkpoint written by the CUDA run loads and continues on the CPU, and the reverse, on
//     the curve of the uninterrupted run.
// Without a CUDA device (a CUDA build on a machine without a GPU) the cases skip with a message.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <map>

#include "core/cuda_context.h"
#include "core/ops.h"
#include "kernels/gemm.h"
#include "models/model.h"
#include "parallel/comm.h"
#include "tests/parity.h"
#include "tests/synthetic_data.h"
#include "train/distributed.h"
#include "train/trainer.h"

using namespace polder;
namespace fs = std::filesystem;

namespace {

constexpr int kSteps = 3;
constexpr double kF32Tol = 1e-5;
constexpr double kBf16Ulp = 1.0 / 256;  // 2^-8: one unit in the last place of bf16, relative
constexpr double kBf16Ulps = 4;

std::string work_dir() {
  return (fs::path(POLDER_BINARY_DIR) / "tests" / "mpi_work" /
          ("cuda_np" + std::to_string(parallel::world_comm()->size())))
      .string();
}

// The work folder with the synthetic dataset every case trains on (written by rank 0).
std::string dataset_dir(parallel::Comm& world) {
  const std::string dir = work_dir();
  if (world.rank() == 0) testing::write_synthetic_dataset(dir + "/a", 120, 61, 1);
  world.barrier();
  return dir;
}

Config shrunk(const std::string& dir, const std::string& tag) {
  Config c;
  testing::parity::tiny_model(c.model, 2);
  c.data.datasets = {{"a", dir + "/a", 1.0}};
  c.data.seq_len = 16;
  c.data.valid_fraction = 0;
  c.train.steps = kSteps;
  c.train.global_batch = 4;
  c.train.micro_batch = 2;
  c.train.eval_every = 0;
  c.train.run_dir = dir + "/run-" + tag;
  c.train.resume = "none";
  c.optim.lr = 3e-3;
  c.schedule.warmup_steps = 1;
  c.logging.tensorboard = false;
  return c;
}

struct Run {
  std::vector<double> losses;
  std::map<std::string, std::vector<double>> params;  // this rank's shards, as f64 on the host
};

Run train_run(Config c) {
  train::Trainer t(c, true, parallel::world_comm());
  Run r;
  for (int i = 0; i < kSteps; ++i) r.losses.push_back(t.train_step().loss);
  for (const models::Parameter& p : t.model().parameters())
    r.params[p.name] = p.value.to(Device::cpu()).to(DType::f64).to_vector<double>();
  return r;
}

// The worst relative loss difference, and the worst parameter difference relative to the tensor's norm.
std::pair<double, double> distance(const Run& a, const Run& b) {
  double loss = 0, param = 0;
  for (size_t i = 0; i < a.losses.size(); ++i)
    loss = std::max(loss, std::abs(a.losses[i] - b.losses[i]) / std::abs(b.losses[i]));
  for (const auto& [name, va] : a.params) {
    const std::vector<double>& vb = b.params.at(name);
    REQUIRE(va.size() == vb.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < va.size(); ++i) {
      num += (va[i] - vb[i]) * (va[i] - vb[i]);
      den += vb[i] * vb[i];
    }
    param = std::max(param, std::sqrt(num / std::max(den, 1e-30)));
  }
  return {loss, param};
}

}  // namespace

TEST_CASE("the CUDA path trains as the CPU path does, at one rank and data-parallel with ZeRO 0, 1, 2",
          "[cuda][mpi][train]") {
  POLDER_SKIP_WITHOUT_GPU();
  auto world = parallel::world_comm();
  const std::string dir = dataset_dir(*world);
  const std::vector<std::string> zeros =
      world->size() == 1 ? std::vector<std::string>{"none"} : std::vector<std::string>{"none", "1", "2"};
  for (std::string precision : {"f32", "bf16"}) {
    for (const std::string& zero : zeros) {
      if (precision == "bf16" && zero != zeros.back()) continue;  // bf16 once per rank count (CI time)
      const std::string tag = precision + "-zero" + zero;
      INFO("dp " << world->size() << ", ZeRO " << zero << ", " << precision);
      Config c = shrunk(dir, tag);
      c.parallel.dp = world->size();
      c.parallel.zero = zero;
      c.train.precision = precision;
      const Run cpu = train_run(c);
      c.train.device = "cuda";
      c.train.run_dir += "-cuda";
      const Run gpu = train_run(c);
      const auto [loss, param] = distance(gpu, cpu);
      INFO("worst loss difference " << loss << ", worst parameter difference " << param << "; losses cuda "
                                    << gpu.losses.back() << " cpu " << cpu.losses.back());
      if (precision == "f32") {
        CHECK(loss <= kF32Tol);
        CHECK(param <= kF32Tol);
      } else {
        CHECK(loss <= kBf16Ulps * kBf16Ulp);
        // After kSteps AdamW steps every weight moved by at most about lr per step; the two runs' updates
        // differ by a few bf16 ulps of that, relative to weights of norm ~ 0.02 x sqrt(n) per element.
        CHECK(param <= kBf16Ulps * kBf16Ulp);
      }
    }
  }
}

TEST_CASE("a checkpoint written on the CUDA path continues on the CPU, and the reverse",
          "[cuda][mpi][train]") {
  POLDER_SKIP_WITHOUT_GPU();
  auto world = parallel::world_comm();
  const std::string dir = dataset_dir(*world);
  Config c = shrunk(dir, "ckpt");
  c.parallel.dp = world->size();
  c.parallel.zero = world->size() > 1 ? "2" : "none";
  c.train.precision = "f32";
  const Run full = train_run(c);  // the uninterrupted CPU run
  for (std::string first : {"cuda", "cpu"}) {
    const std::string second = first == "cuda" ? "cpu" : "cuda";
    INFO("saved on " << first << ", continued on " << second);
    Config a = c;
    a.train.device = first;
    a.train.run_dir = dir + "/run-ckpt-" + first;
    std::vector<double> losses;
    {
      train::Trainer t(a, true, world);
      losses.push_back(t.train_step().loss);
      t.save();
    }
    a.train.device = second;
    a.train.resume = "auto";
    train::Trainer t(a, true, world);
    REQUIRE(t.step() == 1);
    for (int i = 1; i < kSteps; ++i) losses.push_back(t.train_step().loss);
    for (int i = 0; i < kSteps; ++i) CHECK(std::abs(losses[i] - full.losses[i]) <= kF32Tol * full.losses[i]);
  }
}

#ifdef POLDER_HAVE_CUDA
TEST_CASE("kernel choices by timing are agreed across replicas and come back with a checkpoint",
          "[cuda][mpi][train]") {
  POLDER_SKIP_WITHOUT_GPU();
  auto world = parallel::world_comm();
  const std::string dir = dataset_dir(*world);
  Config c = shrunk(dir, "choices");
  c.parallel.dp = world->size();
  c.train.device = "cuda";
  c.train.precision = "bf16";  // the own GEMM and flash kernels take bf16: auto has choices to make
  c.model.gemm_impl = "auto";
  c.model.attention_impl = "auto";
  kernels::cuda::clear_gemm_choices();
  std::string saved;
  {
    train::Trainer t(c, true, world);
    t.train_step();
    saved = kernels::cuda::kernel_choices();
    t.save();
  }
  INFO("choices:\n" << saved);
  CHECK(saved.find("gemm ") != std::string::npos);
  CHECK(saved.find("attention ") != std::string::npos);
  // Every replica holds rank 0's choices (rank 0 measured; the others took its answers).
  CHECK(train::broadcast_string(*world, saved, 0) == saved);
  // A resumed run starts with the recorded choices instead of measuring again.
  kernels::cuda::clear_gemm_choices();
  c.train.resume = "auto";
  train::Trainer t(c, true, world);
  REQUIRE(t.step() == 1);
  CHECK(kernels::cuda::kernel_choices() == saved);
}

// Issue 22: tensor-parallel peers agree like replicas (one stage); pipeline stages choose for themselves
// (they run different shapes: the last one has the LM head's GEMMs) and each gets its own choices back on
// resume.
TEST_CASE("kernel choices are agreed within a pipeline stage and come back per stage", "[cuda][mpi][train]") {
  POLDER_SKIP_WITHOUT_GPU();
  auto world = parallel::world_comm();
  if (world->size() != 2) return;
  const std::string dir = dataset_dir(*world);
  for (const char* layout : {"tp2", "pp2"}) {
    INFO(layout);
    const bool tp = std::string(layout) == "tp2";
    Config c = shrunk(dir, std::string("choices-") + layout);
    c.parallel.tp = tp ? 2 : 1;
    c.parallel.pp = tp ? 1 : 2;
    c.train.device = "cuda";
    c.train.precision = "bf16";
    c.model.gemm_impl = "auto";
    c.model.attention_impl = "auto";
    kernels::cuda::clear_gemm_choices();
    std::string saved;
    {
      train::Trainer t(c, true, world);
      t.train_step();
      saved = kernels::cuda::kernel_choices();
      t.save();
    }
    INFO("rank " << world->rank() << " choices:\n" << saved);
    CHECK(saved.find("gemm ") != std::string::npos);
    const std::string rank0 = train::broadcast_string(*world, saved, 0);
    if (tp) {
      CHECK(rank0 == saved);  // one stage: rank 1 took rank 0's answers
    } else if (world->rank() == 1) {
      CHECK(rank0 != saved);  // the last stage measured its own shapes (the LM head)
    }
    kernels::cuda::clear_gemm_choices();
    c.train.resume = "auto";
    train::Trainer t(c, true, world);
    REQUIRE(t.step() == 1);
    CHECK(kernels::cuda::kernel_choices() == saved);
  }
}
#endif
