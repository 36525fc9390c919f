// Multi-rank training parity: every layout that fits the world size trains the tiny model for 10 steps and
// must reproduce the single-process run (computed on every rank, no communication): losses within 1e-5
// relative and each rank's final parameter shards equal to the slices of the single-process parameters within
// 1e-5 relative. Also: a checkpoint saved at tp2 x pp2 resumes at dp2 and at one rank with the same losses.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>

#include "tests/synthetic_data.h"
#include "kernels/philox.h"
#include "parallel/comm.h"
#include "train/trainer.h"

using namespace polder;
namespace fs = std::filesystem;

namespace {

constexpr int kSteps = 10;

std::string work_dir() {
  return (fs::path(POLDER_BINARY_DIR) / "tests" / "mpi_work" / ("np" + std::to_string(parallel::world_comm()->size())))
      .string();
}


Config base_config(const std::string& dir, const std::string& tag) {
  Config c;
  c.model.vocab_size = 64;
  c.model.hidden_size = 32;
  c.model.intermediate_size = 48;
  c.model.num_layers = 4;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.max_seq_len = 16;
  c.model.tie_embeddings = false;
  c.data.datasets = {{"a", dir + "/a", 0.7}, {"b", dir + "/b", 0.3}};
  c.data.seq_len = 16;
  c.data.valid_fraction = 0.1;
  c.train.steps = kSteps;
  c.train.global_batch = 8;
  c.train.micro_batch = 2;
  c.train.run_dir = dir + "/run-" + tag;
  c.train.resume = "none";
  c.optim.lr = 3e-3;
  c.schedule.warmup_steps = 2;
  c.logging.tensorboard = false;
  return c;
}

struct Run {
  std::vector<double> losses;
  std::map<std::string, Tensor> params;  // name -> full tensor (reference) or this rank's shard
};

Run run(const Config& c, std::shared_ptr<parallel::Comm> world, int steps = kSteps) {
  train::Trainer t(c, true, std::move(world));
  Run r;
  for (int i = 0; i < steps; ++i) r.losses.push_back(t.train_step().loss);
  for (const models::Parameter& p : t.model().parameters()) r.params[p.name] = p.value.to(DType::f64).clone();
  return r;
}

double rel(double a, double b) { return std::abs(a - b) / std::max(1e-12, std::abs(b)); }

// ||shard - slice of reference|| / ||slice||, and the padding rows must be zero.
double shard_error(const Tensor& shard, const Tensor& full, const models::Parameter& p) {
  Tensor expect = full;
  Tensor got = shard;
  if (p.shard_dim >= 0) {
    const int d = p.shard_dim;
    const int64_t real = std::max<int64_t>(0, std::min(shard.size(d), p.global_shape[static_cast<size_t>(d)] - p.shard_start));
    expect = ops::narrow(full, d, p.shard_start, real);
    got = ops::narrow(shard, d, 0, real);
    if (real < shard.size(d)) {
      auto pad = ops::narrow(shard, d, real, shard.size(d) - real).to_vector<double>();
      for (double v : pad) REQUIRE(v == 0.0);
    }
  }
  auto a = got.to_vector<double>(), b = expect.to_vector<double>();
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

struct Layout {
  const char* name;
  int64_t dp, tp, pp;
  std::string zero = "none";
  int64_t vocab = 64;
  bool tied = false;
  int64_t layers = 4;
  bool sp = false;
  int64_t virtual_stages = 1;
};

}  // namespace

TEST_CASE("every layout reproduces the single-process run", "[mpi][parity]") {
  auto world = parallel::world_comm();
  const std::string dir = work_dir();
  if (world->rank() == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    testing::write_synthetic_dataset(dir + "/a", 120, 61, 1);
    testing::write_synthetic_dataset(dir + "/b", 80, 61, 2);
  }
  world->barrier();

  const std::vector<Layout> layouts = {
      {"dp2", 2, 1, 1},
      {"tp2", 1, 2, 1},
      {"pp2", 1, 1, 2},
      {"dp2 zero1", 2, 1, 1, "1"},
      {"dp2 zero2", 2, 1, 1, "2"},
      {"tp2 vocab 63", 1, 2, 1, "none", 63},
      {"pp2 tied", 1, 1, 2, "none", 64, true},
      {"pp2 5 layers", 1, 1, 2, "none", 64, false, 5},
      {"tp2 sp", 1, 2, 1, "none", 64, false, 4, true},
      {"tp2 x pp2", 1, 2, 2},
      {"tp2 sp x pp2 tied", 1, 2, 2, "none", 64, true, 4, true},
      {"dp2 x tp2 sp zero1", 2, 2, 1, "1", 63, false, 4, true},
      {"dp2 x tp2 sp zero2", 2, 2, 1, "2", 63, false, 4, true},
      {"dp2 x pp2 zero2", 2, 1, 2, "2"},
      {"dp2 x tp2 x pp2 zero2", 2, 2, 2, "2"},
      {"dp2 x tp2", 2, 2, 1},
      {"dp2 x pp2 zero1 tied", 2, 1, 2, "1", 64, true},
      {"dp2 x pp2 zero2 tied", 2, 1, 2, "2", 64, true},
      {"dp2 x tp2 x pp2", 2, 2, 2},
      {"pp2 interleaved v2", 1, 1, 2, "none", 64, false, 4, false, 2},
      {"pp2 interleaved v2 tied 5 layers", 1, 1, 2, "none", 64, true, 5, false, 2},
      {"pp4 interleaved v2 8 layers", 1, 1, 4, "none", 64, false, 8, false, 2},
      {"dp2 x pp2 interleaved v2 zero1", 2, 1, 2, "1", 64, false, 4, false, 2},
      {"tp2 x pp2 interleaved v2", 1, 2, 2, "none", 64, false, 4, false, 2},
  };
  int ran = 0;
  for (const Layout& l : layouts) {
    if (l.dp * l.tp * l.pp != world->size()) continue;
    ++ran;
    INFO("layout " << l.name << " on " << world->size() << " ranks");
    if (world->rank() == 0) std::fprintf(stderr, "parity: layout %s\n", l.name);
    Config c = base_config(dir, l.name);
    c.model.vocab_size = l.vocab;
    c.model.tie_embeddings = l.tied;
    c.model.num_layers = l.layers;
    Run ref = run(c, std::make_shared<parallel::SingleComm>());
    Config cp = c;
    cp.parallel.dp = l.dp;
    cp.parallel.tp = l.tp;
    cp.parallel.pp = l.pp;
    cp.parallel.zero = l.zero;
    cp.parallel.sequence_parallel = l.sp;
    cp.parallel.virtual_stages = l.virtual_stages;
    cp.train.run_dir = c.train.run_dir + "-par";
    train::Trainer t(cp, true, world);
    std::vector<double> losses;
    for (int i = 0; i < kSteps; ++i) losses.push_back(t.train_step().loss);
    for (int i = 0; i < kSteps; ++i) {
      INFO("step " << i << ": " << losses[static_cast<size_t>(i)] << " vs " << ref.losses[static_cast<size_t>(i)]);
      CHECK(rel(losses[static_cast<size_t>(i)], ref.losses[static_cast<size_t>(i)]) < 1e-5);
    }
    if (l.zero == "2") {
      // ZeRO-2 keeps only this rank's gradient shard, and no per-parameter gradient survives the step.
      CHECK(t.model().flat_grads().numel() == t.model().flat_params().numel() / l.dp);
      for (const models::Parameter& p : t.model().parameters()) CHECK_FALSE(p.value.grad().defined());
    }
    double worst = 0;
    for (const models::Parameter& p : t.model().parameters())
      worst = std::max(worst, shard_error(p.value.to(DType::f64), ref.params.at(p.name), p));
    CHECK(worst < 1e-5);
    world->barrier();
  }
  if (world->size() > 1) CHECK(ran > 0);
}

TEST_CASE("a checkpoint saved at tp2 x pp2 resumes at dp2 and at one rank", "[mpi][checkpoint]") {
  auto world = parallel::world_comm();
  if (world->size() != 4) return;
  const std::string dir = work_dir();
  Config c = base_config(dir, "reshard");
  Run ref = run(c, std::make_shared<parallel::SingleComm>());
  Config cp = c;
  cp.parallel.tp = 2;
  cp.parallel.pp = 2;
  cp.train.run_dir = dir + "/run-reshard-tp2pp2";
  {
    train::Trainer t(cp, true, world);
    for (int i = 0; i < 5; ++i) t.train_step();
    t.save();
  }
  const std::string ckpt = cp.train.run_dir + "/checkpoints";
  // dp2 on ranks 0 and 1 (ranks 2 and 3 form their own group and sit this one out).
  auto half = world->split(world->rank() < 2 ? 0 : 1, world->rank(), "half");
  if (world->rank() < 2) {
    Config cd = c;
    cd.parallel.dp = 2;
    cd.train.resume = ckpt;
    cd.train.run_dir = dir + "/run-reshard-dp2";
    train::Trainer t(cd, true, half);
    REQUIRE(t.step() == 5);
    for (int i = 5; i < kSteps; ++i) CHECK(rel(t.train_step().loss, ref.losses[static_cast<size_t>(i)]) < 1e-5);
  }
  if (world->rank() == 0) {
    Config c1 = c;
    c1.train.resume = ckpt;
    c1.train.run_dir = dir + "/run-reshard-1";
    train::Trainer t(c1, true, std::make_shared<parallel::SingleComm>());
    REQUIRE(t.step() == 5);
    for (int i = 5; i < kSteps; ++i) CHECK(rel(t.train_step().loss, ref.losses[static_cast<size_t>(i)]) < 1e-5);
  }
  world->barrier();
}

TEST_CASE("a checkpoint saved with interleaved pipeline stages resumes at one rank", "[mpi][checkpoint]") {
  auto world = parallel::world_comm();
  if (world->size() != 2) return;
  const std::string dir = work_dir();
  Config c = base_config(dir, "reshard-v2");
  Run ref = run(c, std::make_shared<parallel::SingleComm>());
  Config cp = c;
  cp.parallel.pp = 2;
  cp.parallel.virtual_stages = 2;
  cp.train.run_dir = dir + "/run-reshard-pp2v2";
  {
    train::Trainer t(cp, true, world);
    for (int i = 0; i < 5; ++i) CHECK(rel(t.train_step().loss, ref.losses[static_cast<size_t>(i)]) < 1e-5);
    t.save();
  }
  if (world->rank() == 0) {
    Config c1 = c;
    c1.train.resume = cp.train.run_dir + "/checkpoints";
    c1.train.run_dir = dir + "/run-reshard-v2-1";
    train::Trainer t(c1, true, std::make_shared<parallel::SingleComm>());
    REQUIRE(t.step() == 5);
    for (int i = 5; i < kSteps; ++i) CHECK(rel(t.train_step().loss, ref.losses[static_cast<size_t>(i)]) < 1e-5);
  }
  world->barrier();
}
