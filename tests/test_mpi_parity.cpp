// Multi-rank training parity: every layout that fits the world size trains the tiny model for 10 steps and
// must reproduce the single-process run (computed on every rank, no communication).
//
// The oracle is the f64 run: in double precision a different summation order (another layout, thread count,
// instruction set or GEMM library) moves results by ~1e-15, so losses and final parameter shards must match
// the single-process f64 run within kF64Tol = 1e-12 relative, on any CPU; a real bug (a missing all-reduce, a
// wrong shard) moves them by 1e-3 or more. The f32 runs check the production precision's code paths (float
// reductions and buffers) with a bound that scales with f32 rounding itself instead of a fixed number, which
// one instruction set passes and another fails: the parallel f32 run may be no further from the f64 answer
// than kF32Factor times the single-process f32 run is (plus a floor of a few f32 ulps), see kF32Factor.
// Also, in f64: a checkpoint saved at tp2 x pp2 resumes at dp2 and at one rank with the same losses, and one
// saved with interleaved stages resumes at one rank.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "core/ops.h"
#include "core/sha256.h"
#include "kernels/philox.h"
#include "parallel/comm.h"
#include "tests/parity.h"
#include "tests/synthetic_data.h"
#include "train/trainer.h"

using namespace polder;
namespace fs = std::filesystem;
using namespace polder::testing::parity;

namespace {

constexpr int kSteps = 10;

std::string work_dir() {
  return (fs::path(POLDER_BINARY_DIR) / "tests" / "mpi_work" /
          ("np" + std::to_string(parallel::world_comm()->size())))
      .string();
}

Config base_config(const std::string& dir, const std::string& tag) {
  Config c;
  testing::parity::tiny_model(c.model, 4);
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

struct Layout {
  const char* name;
  int64_t dp, tp, pp;
  std::string zero = "none";
  int64_t vocab = 64;
  bool tied = false;
  int64_t layers = 4;
  bool sp = false;
  int64_t virtual_stages = 1;
  bool biases = false;  // q/k/v and o_proj biases (Qwen2 / HF Llama attention_bias imports)
  std::string schedule = "auto";
  int64_t cp = 1;          // context parallelism (issue 23)
  int64_t zero_group = 0;  // hybrid sharding (issue 24)
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
      {"tp2 sp biases", 1, 2, 1, "none", 64, false, 4, true, 1, true},
      {"dp2 x tp2 x pp2 zero2 biases", 2, 2, 2, "2", 63, false, 4, false, 1, true},
      {"pp2 gpipe", 1, 1, 2, "none", 64, false, 4, false, 1, false, "gpipe"},
      {"dp2 x pp2 gpipe tied zero1", 2, 1, 2, "1", 64, true, 4, false, 1, false, "gpipe"},
      {"dp2 x tp2 x pp2", 2, 2, 2},
      {"pp2 interleaved v2", 1, 1, 2, "none", 64, false, 4, false, 2},
      {"pp2 interleaved v2 tied 5 layers", 1, 1, 2, "none", 64, true, 5, false, 2},
      {"pp4 interleaved v2 8 layers", 1, 1, 4, "none", 64, false, 8, false, 2},
      {"dp2 x pp2 interleaved v2 zero1", 2, 1, 2, "1", 64, false, 4, false, 2},
      {"tp2 x pp2 interleaved v2", 1, 2, 2, "none", 64, false, 4, false, 2},
      {"cp2", 1, 1, 1, "none", 64, false, 4, false, 1, false, "auto", 2},
      {"cp4", 1, 1, 1, "none", 64, false, 4, false, 1, false, "auto", 4},
      {"cp2 x tp2 sp", 1, 2, 1, "none", 64, false, 4, true, 1, false, "auto", 2},
      {"cp2 x pp2 tied", 1, 1, 2, "none", 64, true, 4, false, 1, false, "auto", 2},
      {"dp2 x cp2 zero2", 2, 1, 1, "2", 63, false, 4, false, 1, false, "auto", 2},
      {"dp2 x cp2 x tp2 zero1", 2, 2, 1, "1", 64, false, 4, true, 1, true, "auto", 2},
      {"dp2 zero3", 2, 1, 1, "3"},
      {"dp4 zero3", 4, 1, 1, "3"},
      {"dp2 x tp2 sp zero3", 2, 2, 1, "3", 63, false, 4, true},
      {"dp2 x pp2 zero3", 2, 1, 2, "3"},
      {"dp2 x pp2 zero3 tied", 2, 1, 2, "3", 64, true},
      {"dp2 zero3 tied", 2, 1, 1, "3", 64, true},
      {"dp2 x pp2 interleaved v2 zero3", 2, 1, 2, "3", 64, false, 4, false, 2},
      {"dp2 x cp2 zero3", 2, 1, 1, "3", 64, false, 4, false, 1, false, "auto", 2},
      {"dp4 zero3 hybrid groups of 2", 4, 1, 1, "3", 64, false, 4, false, 1, false, "auto", 1, 2},
      {"dp4 zero2 hybrid groups of 2", 4, 1, 1, "2", 64, false, 4, false, 1, false, "auto", 1, 2},
      {"dp4 zero1 hybrid groups of 2", 4, 1, 1, "1", 64, false, 4, false, 1, false, "auto", 1, 2},
      {"dp2 x cp2 zero3 hybrid groups of 2", 2, 1, 1, "3", 64, false, 4, false, 1, false, "auto", 2, 2},
  };
  // Single-process references per model shape and precision (several layouts share one).
  std::map<std::string, Run> references;
  auto reference = [&](const Config& c, const std::string& precision) -> const Run& {
    const std::string key =
        std::to_string(c.model.vocab_size) + "/" + std::to_string(c.model.tie_embeddings) + "/" +
        std::to_string(c.model.num_layers) + "/" + std::to_string(c.model.qkv_bias) + "/" + precision;
    auto it = references.find(key);
    if (it == references.end()) {
      it = references.emplace(key, run(c, precision, std::make_shared<parallel::SingleComm>())).first;
      dump("single " + key, it->second, world->rank());
    }
    return it->second;
  };
  int ran = 0;
  for (const Layout& l : layouts) {
    if (l.dp * l.tp * l.pp * l.cp != world->size()) continue;
    ++ran;
    INFO("layout " << l.name << " on " << world->size() << " ranks");
    Config c = base_config(dir, l.name);
    c.model.vocab_size = l.vocab;
    c.model.tie_embeddings = l.tied;
    c.model.num_layers = l.layers;
    c.model.qkv_bias = c.model.o_proj_bias = l.biases;
    const Run& ref64 = reference(c, "f64");
    const Run& ref32 = reference(c, "f32");
    Config cp = c;
    cp.parallel.dp = l.dp;
    cp.parallel.tp = l.tp;
    cp.parallel.pp = l.pp;
    cp.parallel.zero = l.zero;
    cp.parallel.sequence_parallel = l.sp;
    cp.parallel.virtual_stages = l.virtual_stages;
    cp.parallel.schedule = l.schedule;
    cp.parallel.cp = l.cp;
    cp.parallel.zero_group = l.zero_group;
    cp.train.run_dir = c.train.run_dir + "-par";
    auto zero2_checks = [&](train::Trainer& t) {
      if (l.zero == "3") {
        // ZeRO-3 keeps only this rank's parameter shard too, and no unit stays gathered after a step.
        const int64_t group = l.zero_group > 0 ? l.zero_group : l.dp * l.cp;
        CHECK(t.model().flat_params().numel() * group == t.model().parameter_set().flat_numel());
        for (const auto& u : t.model().parameter_set().units()) CHECK_FALSE(u.buffer.storage()->resident());
      }
      if (l.zero != "2" && l.zero != "3") return;
      // ZeRO-2 keeps only this rank's gradient shard, and no per-parameter gradient survives the step.
      CHECK(t.model().flat_grads().numel() ==
            t.model().parameter_set().flat_numel() / (l.zero_group > 0 ? l.zero_group : l.dp * l.cp));
      for (const models::Parameter& p : t.model().parameters()) CHECK_FALSE(p.value.grad().defined());
    };

    const Run par64 = run(cp, "f64", world, zero2_checks, kSteps);
    dump(std::string(l.name) + " f64", par64, world->rank());
    for (int i = 0; i < kSteps; ++i) {
      const size_t s = static_cast<size_t>(i);
      INFO("f64 step " << i << ": " << par64.losses[s] << " vs " << ref64.losses[s]);
      CHECK(rel(par64.losses[s], ref64.losses[s]) < kF64Tol);
    }
    const Distance d64 = distance(par64, ref64);
    CHECK(d64.param < kF64Tol);

    const Run par32 = run(cp, "f32", world, zero2_checks, kSteps);
    dump(std::string(l.name) + " f32", par32, world->rank());
    if (std::getenv("POLDER_PARITY_DUMP")) {  // the bf16 policy too, dumped only (its own test is test_train)
      dump(std::string(l.name) + " bf16", run(cp, "bf16", world), world->rank());
      if (world->rank() == 0)
        dump("single bf16 " + std::string(l.name), run(c, "bf16", std::make_shared<parallel::SingleComm>()),
             0);
    }
    const Distance single = distance(ref32, ref64), parallel = distance(par32, ref64);
    if (world->rank() == 0)
      std::fprintf(stderr,
                   "parity: %-34s f64: loss %.1e param %.1e | f32 from f64: single loss %.1e param %.1e, "
                   "parallel loss %.1e param %.1e\n",
                   l.name, d64.loss, d64.param, single.loss, single.param, parallel.loss, parallel.param);
    INFO("f32 distance from the f64 run: single process loss "
         << single.loss << " params " << single.param << ", parallel loss " << parallel.loss << " params "
         << parallel.param);
    CHECK(parallel.loss <= kF32Factor * single.loss + kF32LossFloor);
    CHECK(parallel.param <= kF32Factor * single.param + kF32ParamFloor);
    world->barrier();
  }
  if (world->size() > 1) CHECK(ran > 0);
}

namespace {

// The checkpoint tests: every layout's f64 losses are the single-process run's (`ref`) within kF64Tol.
// Trains `c` (run folder `run`) for 5 steps on `comm`, checking the losses, and saves; returns the checkpoint
// folder.
std::string train_and_save(Config c, const std::string& run, std::shared_ptr<parallel::Comm> comm,
                           const Run& ref) {
  c.train.run_dir = run;
  train::Trainer t(c, true, std::move(comm));
  for (int i = 0; i < 5; ++i) CHECK(rel(t.train_step().loss, ref.losses[static_cast<size_t>(i)]) < kF64Tol);
  t.save();
  return run + "/checkpoints";
}

// Resumes `c` (run folder `run`) from `checkpoint` on `comm`: it starts at step 5 and continues on ref's
// curve.
void resume_and_check(Config c, const std::string& checkpoint, const std::string& run,
                      std::shared_ptr<parallel::Comm> comm, const Run& ref) {
  c.train.resume = checkpoint;
  c.train.run_dir = run;
  train::Trainer t(c, true, std::move(comm));
  REQUIRE(t.step() == 5);
  for (int i = 5; i < kSteps; ++i)
    CHECK(rel(t.train_step().loss, ref.losses[static_cast<size_t>(i)]) < kF64Tol);
}

std::shared_ptr<parallel::Comm> one_rank() {
  return std::make_shared<parallel::SingleComm>();
}

}  // namespace

TEST_CASE("a checkpoint saved at tp2 x pp2 resumes at dp2 and at one rank", "[mpi][checkpoint]") {
  auto world = parallel::world_comm();
  if (world->size() != 4) return;
  const std::string dir = work_dir();
  Config c = base_config(dir, "reshard");
  c.train.precision = "f64";  // layout-independent to ~1e-15 (see the file comment)
  const Run ref = run(c, "f64", one_rank());
  Config cp = c;
  cp.parallel.tp = 2;
  cp.parallel.pp = 2;
  const std::string ckpt = train_and_save(cp, dir + "/run-reshard-tp2pp2", world, ref);
  // dp2 on ranks 0 and 1 (ranks 2 and 3 form their own group and sit this one out).
  auto half = world->split(world->rank() < 2 ? 0 : 1, world->rank(), "half");
  if (world->rank() < 2) {
    Config cd = c;
    cd.parallel.dp = 2;
    resume_and_check(cd, ckpt, dir + "/run-reshard-dp2", half, ref);
  }
  if (world->rank() == 0) resume_and_check(c, ckpt, dir + "/run-reshard-1", one_rank(), ref);
  world->barrier();
}

TEST_CASE("a checkpoint saved with interleaved pipeline stages resumes at one rank", "[mpi][checkpoint]") {
  auto world = parallel::world_comm();
  if (world->size() != 2) return;
  const std::string dir = work_dir();
  Config c = base_config(dir, "reshard-v2");
  c.train.precision = "f64";
  const Run ref = run(c, "f64", one_rank());
  Config cp = c;
  cp.parallel.pp = 2;
  cp.parallel.virtual_stages = 2;
  const std::string ckpt = train_and_save(cp, dir + "/run-reshard-pp2v2", world, ref);
  if (world->rank() == 0) resume_and_check(c, ckpt, dir + "/run-reshard-v2-1", one_rank(), ref);
  world->barrier();
}

TEST_CASE("a checkpoint saved at cp2 resumes at one rank, and one saved at one rank resumes at cp2",
          "[mpi][checkpoint]") {
  auto world = parallel::world_comm();
  if (world->size() != 2) return;
  const std::string dir = work_dir();
  Config c = base_config(dir, "reshard-cp");
  c.train.precision = "f64";
  const Run ref = run(c, "f64", one_rank());
  Config cp = c;
  cp.parallel.cp = 2;
  cp.parallel.zero = "1";  // the optimizer state sharded over the cp replicas too
  const std::string ckpt = train_and_save(cp, dir + "/run-reshard-cp2", world, ref);
  std::string single = dir + "/run-reshard-cp-single/checkpoints";
  if (world->rank() == 0) {
    resume_and_check(c, ckpt, dir + "/run-reshard-cp-1", one_rank(), ref);
    single = train_and_save(c, dir + "/run-reshard-cp-single", one_rank(), ref);
  }
  world->barrier();
  resume_and_check(cp, single, dir + "/run-reshard-cp2-back", world, ref);
  world->barrier();
}

TEST_CASE("a ZeRO-3 checkpoint resumes at ZeRO-1 and at one rank, and the reverse", "[mpi][checkpoint]") {
  auto world = parallel::world_comm();
  if (world->size() != 2) return;
  const std::string dir = work_dir();
  Config c = base_config(dir, "reshard-zero3");
  c.train.precision = "f64";
  const Run ref = run(c, "f64", one_rank());
  Config z3 = c;
  z3.parallel.dp = 2;
  z3.parallel.zero = "3";
  const std::string ckpt = train_and_save(z3, dir + "/run-reshard-zero3", world, ref);
  Config z1 = z3;
  z1.parallel.zero = "1";  // on the same two ranks
  resume_and_check(z1, ckpt, dir + "/run-reshard-zero3-to-1", world, ref);
  std::string single = dir + "/run-reshard-zero3-single/checkpoints";
  if (world->rank() == 0) {
    resume_and_check(c, ckpt, dir + "/run-reshard-zero3-1", one_rank(), ref);
    single = train_and_save(c, dir + "/run-reshard-zero3-single", one_rank(), ref);
  }
  world->barrier();
  resume_and_check(z3, single, dir + "/run-reshard-zero3-back", world, ref);
  world->barrier();
}

TEST_CASE("a checkpoint of ZeRO-3 with hybrid groups resumes at one rank", "[mpi][checkpoint]") {
  auto world = parallel::world_comm();
  if (world->size() != 4) return;
  const std::string dir = work_dir();
  Config c = base_config(dir, "reshard-hybrid");
  c.train.precision = "f64";
  const Run ref = run(c, "f64", one_rank());
  Config h = c;
  h.parallel.dp = 4;
  h.parallel.zero = "3";
  h.parallel.zero_group = 2;
  const std::string ckpt = train_and_save(h, dir + "/run-reshard-hybrid", world, ref);
  if (world->rank() == 0) resume_and_check(c, ckpt, dir + "/run-reshard-hybrid-1", one_rank(), ref);
  world->barrier();
}
