// Running on a cluster, several ranks (pp = 2 when there are 2 or more ranks, the rest data parallel): a stop
// request that reaches only the last rank stops every rank at the same step with one checkpoint, and the
// resumed run ends bit-identical to an uninterrupted one; a NaN in a gradient that only the last stage holds
// makes every rank skip the same step and name the same parameter; a checkpoint write failing on one writer
// rank fails on every rank with that rank's message, leaves the previous checkpoint intact, and training goes
// on.
#include <catch2/catch.hpp>

#include <sys/resource.h>

#include <csignal>
#include <filesystem>
#include <limits>

#include "models/llama/model.h"
#include "parallel/comm.h"
#include "tests/synthetic_data.h"
#include "train/checkpoint.h"
#include "train/numerics.h"
#include "train/signals.h"
#include "train/trainer.h"

using namespace polder;
namespace fs = std::filesystem;

namespace {

std::string work_dir(const std::string& name) {
  auto world = parallel::world_comm();
  const fs::path p =
      fs::path(POLDER_BINARY_DIR) / "tests" / "mpi_cluster" / ("np" + std::to_string(world->size())) / name;
  if (world->rank() == 0) {
    fs::remove_all(p);
    fs::create_directories(p);
    testing::write_synthetic_dataset((p / "a").string(), 120, 61, 1);
  }
  world->barrier();
  return p.string();
}

Config layout_config(const std::string& dir) {
  const int n = parallel::world_comm()->size();
  Config c;
  c.model.vocab_size = 64;
  c.model.hidden_size = 32;
  c.model.intermediate_size = 48;
  c.model.num_layers = 4;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.max_seq_len = 16;
  c.data.datasets = {{"a", dir + "/a", 1.0}};
  c.data.seq_len = 16;
  c.data.valid_fraction = 0;
  c.train.steps = 4;
  c.train.global_batch = 8;
  c.train.micro_batch = 2;
  c.train.run_dir = dir + "/run";
  c.train.resume = "none";
  c.optim.lr = 3e-3;
  c.checkpoint.keep_last = 5;
  c.logging.tensorboard = false;
  c.logging.jsonl = false;
  c.parallel.pp = n >= 2 ? 2 : 1;
  return c;
}

std::vector<float> weights_of(train::Trainer& t) {
  return t.model().flat_params().to(DType::f32).to_vector<float>();
}

// Every rank's value equal to rank 0's (a broadcast and a comparison).
bool same_everywhere(int64_t v) {
  auto world = parallel::world_comm();
  Tensor t = Tensor::from_vector<int64_t>({v}, {1});
  world->broadcast(t, 0);
  Tensor diff = Tensor::from_vector<int64_t>({t.data<int64_t>()[0] != v ? 1 : 0}, {1});
  world->all_reduce(diff, parallel::ReduceOp::max);
  return diff.data<int64_t>()[0] == 0;
}

}  // namespace

TEST_CASE("mpi: a stop request on one rank stops every rank at the same step; the resume is exact",
          "[cluster][signal]") {
  auto world = parallel::world_comm();
  const std::string dir = work_dir("signal");
  Config c = layout_config(dir);
  std::vector<float> full;
  {
    train::Trainer t(c, true);
    CHECK(t.run() == 0);
    full = weights_of(t);
  }
  Config s = c;
  s.train.run_dir = dir + "/run_stopped";
  s.train.resume = "auto";
  train::clear_stop();
  {
    train::Trainer t(s, true);
    t.train_step();
    if (world->rank() == world->size() - 1) train::request_stop(SIGUSR1);  // as if only this rank got it
    CHECK(t.run() == SIGUSR1);
    CHECK(t.step() == 2);
    CHECK(same_everywhere(t.step()));
  }
  train::clear_stop();
  const std::string latest = *train::latest_checkpoint(s.train.run_dir + "/checkpoints");
  CHECK(fs::path(latest).filename() == "step_00000002");
  CHECK(fs::exists(fs::path(latest) /
                   (world->size() >= 2 ? "shard-pp1-tp0.safetensors" : "shard-pp0-tp0.safetensors")));
  {
    train::Trainer t(s, true);
    CHECK(t.step() == 2);
    CHECK(t.run() == 0);
    CHECK(weights_of(t) == full);
  }
}

TEST_CASE("mpi: a NaN in a gradient of the last stage is skipped on every rank and named everywhere",
          "[cluster][nonfinite]") {
  const std::string dir = work_dir("nonfinite");
  Config c = layout_config(dir);
  c.debug.nan_step = 2;
  c.debug.nan_param = "model.layers.3.mlp.down_proj.weight";  // on pp stage 1 only (layers 2 and 3)
  train::Trainer t(c, true);
  t.train_step();
  const std::vector<float> w = weights_of(t);
  train::StepResult r = t.train_step();
  CHECK(r.skipped);
  CHECK(std::isnan(r.grad_norm));
  CHECK(t.step() == 1);
  CHECK(t.optimizer().steps_taken() == 1);
  CHECK(weights_of(t) == w);
  r = t.train_step();
  CHECK_FALSE(r.skipped);
  CHECK(t.step() == 2);
  CHECK(t.nonfinite().total() == 1);
  // The scan agrees on the first parameter in the model's order over all ranks.
  auto world = parallel::world_comm();
  models::Model& m = t.model();
  const int64_t n = m.flat_grads().numel();
  auto poison = [&](const std::string& name) {
    for (const models::Parameter& p : m.parameters())
      if (p.name == name)
        m.flat_grads().data<float>()[p.offset - m.grad_offset() + 3] = std::numeric_limits<float>::infinity();
  };
  CHECK(train::first_nonfinite_gradient(m, m.grad_offset(), m.grad_offset() + n, *world).empty());
  poison("lm_head.weight");  // last stage
  poison("model.layers.3.self_attn.q_proj.weight");
  CHECK(train::first_nonfinite_gradient(m, m.grad_offset(), m.grad_offset() + n, *world) ==
        "model.layers.3.self_attn.q_proj.weight");
  poison("model.layers.1.self_attn.q_proj.weight");  // first stage
  CHECK(train::first_nonfinite_gradient(m, m.grad_offset(), m.grad_offset() + n, *world) ==
        "model.layers.1.self_attn.q_proj.weight");
}

TEST_CASE("mpi: a checkpoint write failing on one rank fails everywhere and keeps the previous checkpoint",
          "[cluster][disk]") {
  auto world = parallel::world_comm();
  const std::string dir = work_dir("disk");
  Config c = layout_config(dir);
  train::Trainer t(c, true);
  t.train_step();
  const std::string first = t.save();
  t.train_step();
  // The writer of the last pipeline stage cannot write more than 4 KiB per file.
  const int victim = t.mesh().global_rank(0, t.mesh().pp_size() - 1, 0);
  const std::string file = world->size() >= 2 ? "shard-pp1-tp0.safetensors" : "shard-pp0-tp0.safetensors";
  rlimit saved{};
  ::getrlimit(RLIMIT_FSIZE, &saved);
  if (world->rank() == victim) {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit r = saved;
    r.rlim_cur = 4096;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &r) == 0);
  }
  std::string message;
  try {
    t.save();
  } catch (const train::CheckpointWriteError& e) {
    message = e.message();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  INFO(message);
  CHECK(message.find("checkpoint step 2 not written: writing '" + t.checkpoint_dir() +
                     "/.tmp-step_00000002/" + file +
                     ".tmp' failed: File too large; the previous checkpoint (step 1) is intact") == 0);
  world->barrier();
  CHECK(train::latest_checkpoint(t.checkpoint_dir()) == first);
  CHECK_FALSE(fs::exists(fs::path(t.checkpoint_dir()) / ".tmp-step_00000002"));
  t.train_step();  // nobody hangs: training goes on
  const std::string third = t.save();
  CHECK(train::latest_checkpoint(t.checkpoint_dir()) == third);
  models::Llama m(c.model, DType::f32);
  train::load_checkpoint(third, m, nullptr);  // every shard's checksum verified
}
