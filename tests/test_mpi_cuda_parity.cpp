// Tensor, sequence, pipeline (issue 22), context (issue 23) parallelism and ZeRO-3 (issue 24) on the CUDA
// path against the single-process CPU run, with the oracle and bounds of test_mpi_parity (tests/parity.h):
// the layout trains on train.device cuda in f32 (NCCL between the ranks, the vocabulary-parallel embedding
// and cross-entropy on the device, pipeline transfers in groups) and must be no further from the
// single-process f64 CPU run than kF32Factor times the single-process f32 CPU run is. In the emulated-device
// build (tests/sim) this runs polder's CUDA sources and NCCL on the CPU in CI; on a machine with one GPU per
// rank the same test runs on the GPUs (scripts/gpu/check.sh). Also: checkpoints cross between a GPU layout
// and the CPU in both directions.
#include <catch2/catch.hpp>

#include <filesystem>
#include <map>

#include "core/cuda_context.h"
#include "parallel/comm.h"
#include "tests/parity.h"
#include "tests/synthetic_data.h"
#include "train/trainer.h"

using namespace polder;
using namespace polder::testing::parity;
namespace fs = std::filesystem;

namespace {

constexpr int kSteps = 3;

std::string work_dir() {
  return (fs::path(POLDER_BINARY_DIR) / "tests" / "mpi_work" /
          ("cuda_parity_np" + std::to_string(parallel::world_comm()->size())))
      .string();
}

Config base_config(const std::string& dir, const std::string& tag) {
  Config c;
  testing::parity::tiny_model(c.model, 4);
  c.model.tie_embeddings = false;
  c.data.datasets = {{"a", dir + "/a", 1.0}};
  c.data.seq_len = 16;
  c.data.valid_fraction = 0;
  c.train.steps = kSteps;
  c.train.global_batch = 8;
  c.train.micro_batch = 2;
  c.train.eval_every = 0;
  c.train.run_dir = dir + "/run-" + tag;
  c.train.resume = "none";
  c.optim.lr = 3e-3;
  c.schedule.warmup_steps = 1;
  c.logging.tensorboard = false;
  return c;
}

struct Layout {
  const char* name;
  int64_t dp, tp, pp;
  std::string zero = "none";
  int64_t vocab = 64;
  bool tied = false;
  bool sp = false;
  int64_t virtual_stages = 1;
  int64_t cp = 1;
};

std::string prepare(parallel::Comm& world) {
  const std::string dir = work_dir();
  if (world.rank() == 0) {
    fs::create_directories(dir);
    testing::write_synthetic_dataset(dir + "/a", 120, 61, 1);
  }
  world.barrier();
  return dir;
}

Config with_layout(Config c, const Layout& l) {
  c.parallel.dp = l.dp;
  c.parallel.tp = l.tp;
  c.parallel.pp = l.pp;
  c.parallel.zero = l.zero;
  c.parallel.sequence_parallel = l.sp;
  c.parallel.virtual_stages = l.virtual_stages;
  c.parallel.cp = l.cp;
  return c;
}

}  // namespace

TEST_CASE("tensor, sequence and pipeline layouts on the CUDA path reproduce the single-process CPU run",
          "[cuda][mpi][parity]") {
  POLDER_SKIP_WITHOUT_GPU();
  auto world = parallel::world_comm();
  const std::string dir = prepare(*world);
  const std::vector<Layout> layouts = {
      {"tp2", 1, 2, 1},
      {"tp2 sp vocab 63", 1, 2, 1, "none", 63, false, true},
      {"pp2 tied", 1, 1, 2, "none", 64, true},
      {"pp2 interleaved v2", 1, 1, 2, "none", 64, false, false, 2},
      {"tp2 x pp2", 1, 2, 2},
      {"tp2 sp x pp2 tied", 1, 2, 2, "none", 64, true, true},
      {"dp2 x tp2 sp zero1", 2, 2, 1, "1", 64, false, true},
      {"dp2 x pp2 interleaved v2 zero2", 2, 1, 2, "2", 64, false, false, 2},
      {"cp2", 1, 1, 1, "none", 64, false, false, 1, 2},
      {"cp4", 1, 1, 1, "none", 64, false, false, 1, 4},
      {"cp2 x tp2 sp", 1, 2, 1, "none", 64, false, true, 1, 2},
      {"cp2 x pp2", 1, 1, 2, "none", 64, false, false, 1, 2},
      {"dp2 x cp2 zero2", 2, 1, 1, "2", 64, false, false, 1, 2},
      {"dp2 zero3", 2, 1, 1, "3"},
      {"dp2 x tp2 sp zero3", 2, 2, 1, "3", 63, false, true},
      {"dp2 x pp2 zero3 tied", 2, 1, 2, "3", 64, true},
      {"dp4 zero3", 4, 1, 1, "3"},
      {"dp2 x tp2 x pp2 zero2", 2, 2, 2, "2", 63},
  };
  std::map<std::string, std::pair<Run, Run>> references;  // (f64, f32) per model shape
  int ran = 0;
  for (const Layout& l : layouts) {
    if (l.dp * l.tp * l.pp * l.cp != world->size()) continue;
    ++ran;
    INFO("layout " << l.name << " on " << world->size() << " ranks");
    Config c = base_config(dir, l.name);
    c.model.vocab_size = l.vocab;
    c.model.tie_embeddings = l.tied;
    const std::string key = std::to_string(l.vocab) + "/" + std::to_string(l.tied);
    if (!references.count(key)) {
      auto single = std::make_shared<parallel::SingleComm>();
      references[key] = {run(c, "f64", single, {}, kSteps), run(c, "f32", single, {}, kSteps)};
    }
    const auto& [ref64, ref32] = references.at(key);
    Config cp = with_layout(c, l);
    cp.train.device = "cuda";
    cp.train.run_dir = c.train.run_dir + "-cuda";
    const Run gpu = run(cp, "f32", world, {}, kSteps);
    const Distance single = distance(ref32, ref64), parallel = distance(gpu, ref64);
    if (world->rank() == 0)
      std::fprintf(stderr,
                   "cuda parity: %-24s f32 from f64: single cpu loss %.1e param %.1e, cuda layout loss %.1e "
                   "param %.1e\n",
                   l.name, single.loss, single.param, parallel.loss, parallel.param);
    INFO("f32 distance from the f64 run: single process loss "
         << single.loss << " params " << single.param << ", cuda layout loss " << parallel.loss << " params "
         << parallel.param);
    CHECK(parallel.loss <= kF32Factor * single.loss + kF32LossFloor);
    CHECK(parallel.param <= kF32Factor * single.param + kF32ParamFloor);
    world->barrier();
  }
  if (world->size() > 1) CHECK(ran > 0);
}

TEST_CASE("checkpoints cross between a GPU tp x pp layout and the single-process CPU run, both ways",
          "[cuda][mpi][checkpoint]") {
  POLDER_SKIP_WITHOUT_GPU();
  auto world = parallel::world_comm();
  if (world->size() != 4) return;
  const std::string dir = prepare(*world);
  const Layout l{"tp2 x pp2", 1, 2, 2};
  Config c = base_config(dir, "cross");
  auto single = std::make_shared<parallel::SingleComm>();
  const Run ref64 = run(c, "f64", single, {}, kSteps), ref32 = run(c, "f32", single, {}, kSteps);
  // The f32 bound per step: the single f32 run's own distance from f64, times kF32Factor, plus the floor.
  auto check_losses = [&](const std::vector<double>& got, int from) {
    for (size_t i = 0; i < got.size(); ++i) {
      const size_t s = static_cast<size_t>(from) + i;
      INFO("step " << s + 1 << ": " << got[i] << " vs f64 " << ref64.losses[s] << ", single f32 "
                   << ref32.losses[s]);
      CHECK(rel(got[i], ref64.losses[s]) <=
            kF32Factor * rel(ref32.losses[s], ref64.losses[s]) + kF32LossFloor);
    }
  };
  c.train.precision = "f32";
  // GPU tp2 x pp2 saves after 2 steps; the CPU continues at one rank.
  Config g = with_layout(c, l);
  g.train.device = "cuda";
  g.train.run_dir = dir + "/run-cross-gpu";
  {
    train::Trainer t(g, true, world);
    std::vector<double> losses;
    for (int i = 0; i < 2; ++i) losses.push_back(t.train_step().loss);
    check_losses(losses, 0);
    t.save();
  }
  if (world->rank() == 0) {
    Config c1 = c;
    c1.train.resume = g.train.run_dir + "/checkpoints";
    c1.train.run_dir = dir + "/run-cross-cpu1";
    train::Trainer t(c1, true, single);
    REQUIRE(t.step() == 2);
    check_losses({t.train_step().loss}, 2);
  }
  world->barrier();
  // The CPU at one rank saves after 2 steps; the GPU tp2 x pp2 continues.
  if (world->rank() == 0) {
    Config c1 = c;
    c1.train.run_dir = dir + "/run-cross-cpu2";
    train::Trainer t(c1, true, single);
    for (int i = 0; i < 2; ++i) t.train_step();
    t.save();
  }
  world->barrier();
  Config g2 = g;
  g2.train.resume = dir + "/run-cross-cpu2/checkpoints";
  g2.train.run_dir = dir + "/run-cross-gpu2";
  train::Trainer t(g2, true, world);
  REQUIRE(t.step() == 2);
  check_losses({t.train_step().loss}, 2);
  world->barrier();
}

// Evaluation runs the forward events only, whose transfer groups differ from training's (no backward to pair
// with): the validation loss of a pipeline layout on the GPU path equals the single-process CPU one.
TEST_CASE("evaluation through a pipeline on the CUDA path equals the single-process CPU run",
          "[cuda][mpi][parity]") {
  POLDER_SKIP_WITHOUT_GPU();
  auto world = parallel::world_comm();
  if (world->size() != 2 && world->size() != 4) return;
  const std::string dir = prepare(*world);
  Config c = base_config(dir, "eval");
  c.data.valid_fraction = 0.2;
  c.train.eval_every = 1;
  c.train.eval_batches = 4;
  auto single_eval = [&](const std::string& precision) {
    Config s = c;
    s.train.precision = precision;
    s.train.run_dir += "-" + precision;
    train::Trainer t(s, true, std::make_shared<parallel::SingleComm>());
    t.train_step();
    return t.evaluate();
  };
  const double ref64 = single_eval("f64"), ref32 = single_eval("f32");
  const Layout l = world->size() == 2
                       ? Layout{"pp2 interleaved v2", 1, 1, 2, "none", 64, false, false, 2}
                       : Layout{"tp2 x pp2 interleaved v2", 1, 2, 2, "none", 64, false, false, 2};
  INFO(l.name);
  Config g = with_layout(c, l);
  g.train.device = "cuda";
  g.train.precision = "f32";
  g.train.run_dir = dir + "/run-eval-gpu";
  train::Trainer t(g, true, world);
  t.train_step();
  const double got = t.evaluate();
  // The parity bound: no further from the f64 answer than kF32Factor times the single-process f32 run.
  INFO("validation loss: cuda layout " << got << ", single f64 " << ref64 << ", single f32 " << ref32);
  CHECK(rel(got, ref64) <= kF32Factor * rel(ref32, ref64) + kF32LossFloor);
  world->barrier();
}
