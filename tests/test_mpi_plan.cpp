// The planner against real multi-rank training steps (under mpirun with 1, 2 and 4 ranks): for every layout
// that fits the world (dp, ZeRO-1/2, tp with and without sequence parallelism, pp 1F1B and interleaved, tied
// embeddings across stages, recompute, bf16), each rank trains one warm-up step, then one measured step, and
//   - its persistent bytes (flat buffers, AdamW state, RoPE) equal the planner's exactly,
//   - the allocator's peak during the step is within 10% of the planner's (polder::memory::stats),
//   - the bytes and calls it sends per collective kind (Mesh::stats(), the counters bench/comm_volume reads)
//     equal the planner's communication model exactly.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/memory_stats.h"
#include "parallel/comm.h"
#include "plan/comm.h"
#include "plan/memory.h"
#include "tests/synthetic_data.h"
#include "train/trainer.h"

using namespace polder;
namespace fs = std::filesystem;

namespace {

struct Layout {
  const char* name;
  int64_t dp, tp, pp;
  std::string zero = "none";
  bool sp = false, recompute = false, tied = false;
  int64_t virtual_stages = 1, layers = 4;
  std::string precision = "f32";
  int64_t cp = 1;
  int64_t zero_group = 0;
};

Config make_config(const std::string& dir, const Layout& l) {
  Config c;
  c.model.vocab_size = 96;
  c.model.hidden_size = 64;
  c.model.intermediate_size = 128;
  c.model.num_layers = l.layers;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.max_seq_len = 32;
  c.model.tie_embeddings = l.tied;
  c.data.datasets = {{"a", dir + "/a", 1.0}};
  c.data.seq_len = 32;
  c.data.valid_fraction = 0.1;
  c.train.steps = 4;
  c.train.global_batch = 8;
  c.train.micro_batch = 2;
  c.train.recompute = l.recompute;
  c.train.precision = l.precision;
  c.train.threads = 1;
  c.train.resume = "none";
  c.logging.tensorboard = false;
  c.logging.jsonl = false;
  c.parallel.dp = l.dp;
  c.parallel.tp = l.tp;
  c.parallel.pp = l.pp;
  c.parallel.zero = l.zero;
  c.parallel.sequence_parallel = l.sp;
  c.parallel.virtual_stages = l.virtual_stages;
  c.parallel.cp = l.cp;
  c.parallel.zero_group = l.zero_group;
  return c;
}

struct Result {
  double persistent = 0, peak = 0;
  parallel::CommStats stats;
  int64_t stage = 0, dp_rank = 0;
};

Result measure(const Config& c, const std::shared_ptr<parallel::Comm>& world) {
  Result r;
  const int64_t base = memory::stats(Device::cpu()).current;
  train::Trainer t(c, true, world);
  t.train_step();
  t.mesh().reset_stats();
  memory::reset_peak(Device::cpu());
  const memory::Stats before = memory::stats(Device::cpu());
  t.train_step();
  r.peak = static_cast<double>(memory::stats(Device::cpu()).peak - before.current);
  r.persistent = static_cast<double>(before.current - base);
  r.stats = t.mesh().stats();
  r.stage = t.mesh().pp_rank();
  r.dp_rank = t.mesh().replica_rank();  // the plan's data-parallel rank: a place among dp x cp replicas
  return r;
}

}  // namespace

TEST_CASE("the planner's memory and communication match real multi-rank steps", "[plan][mpi]") {
  auto world = parallel::world_comm();
  const int P = world->size(), me = world->rank();
  const std::string dir =
      (fs::path(POLDER_BINARY_DIR) / "tests" / "mpi_plan_work" / ("np" + std::to_string(P))).string();
  if (me == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    testing::write_synthetic_dataset(dir + "/a", 300, 96, 1);
  }
  world->barrier();
  const std::vector<Layout> layouts = {
      {"single process", 1, 1, 1},
      {"single process bf16 recompute", 1, 1, 1, "none", false, true, false, 1, 4, "bf16"},
      {"dp2", 2, 1, 1},
      {"dp2 zero1 bf16", 2, 1, 1, "1", false, false, false, 1, 4, "bf16"},
      {"dp2 zero2", 2, 1, 1, "2"},
      {"tp2", 1, 2, 1},
      {"tp2 sp", 1, 2, 1, "none", true},
      {"tp2 sp recompute bf16", 1, 2, 1, "none", true, true, false, 1, 4, "bf16"},
      {"pp2", 1, 1, 2},
      {"pp2 tied recompute", 1, 1, 2, "none", false, true, true},
      {"pp2 interleaved", 1, 1, 2, "none", false, false, false, 2},
      {"dp2 x tp2 sp zero1", 2, 2, 1, "1", true},
      {"tp2 x pp2", 1, 2, 2},
      {"dp2 x pp2 zero2", 2, 1, 2, "2"},
      {"dp2 x pp2 zero2 tied", 2, 1, 2, "2", false, false, true},
      {"pp4", 1, 1, 4},
      {"pp4 interleaved (8 layers)", 1, 1, 4, "none", false, false, false, 2, 8},
      {"dp4 zero1", 4, 1, 1, "1"},
      {"tp2 sp x pp2 tied", 1, 2, 2, "none", true, false, true},
      {"cp2", 1, 1, 1, "none", false, false, false, 1, 4, "f32", 2},
      {"cp2 recompute bf16", 1, 1, 1, "none", false, true, false, 1, 4, "bf16", 2},
      {"cp4", 1, 1, 1, "none", false, false, false, 1, 4, "f32", 4},
      {"cp2 x tp2 sp", 1, 2, 1, "none", true, false, false, 1, 4, "f32", 2},
      {"dp2 x cp2 zero2", 2, 1, 1, "2", false, false, false, 1, 4, "f32", 2},
      {"cp2 x pp2", 1, 1, 2, "none", false, false, false, 1, 4, "f32", 2},
      {"dp2 zero3", 2, 1, 1, "3"},
      {"dp2 zero3 bf16 recompute", 2, 1, 1, "3", false, true, false, 1, 4, "bf16"},
      {"dp4 zero3", 4, 1, 1, "3"},
      {"dp2 x pp2 zero3 tied", 2, 1, 2, "3", false, false, true},
      {"dp2 x tp2 sp zero3", 2, 2, 1, "3", true},
      {"dp4 zero3 hybrid 2", 4, 1, 1, "3", false, false, false, 1, 4, "f32", 1, 2},
      {"dp4 zero1 hybrid 2", 4, 1, 1, "1", false, false, false, 1, 4, "f32", 1, 2},
  };
  int ran = 0;
  for (const Layout& l : layouts) {
    if (l.dp * l.tp * l.pp * l.cp != P) continue;
    INFO(l.name << ", rank " << me << " of " << P);
    Config c = make_config(dir, l);
    c.train.run_dir = dir + "/run-" + std::to_string(ran++);
    const Result m = measure(c, world);
    const plan::MemoryBreakdown p = plan::predict_memory(c, m.stage);
    INFO("stage " << m.stage << ": persistent measured " << m.persistent << " predicted " << p.persistent()
                  << "; step peak measured " << m.peak << " predicted " << p.activations << " (" << p.peak_at
                  << "), ratio " << p.activations / m.peak);
    CHECK(p.persistent() == m.persistent);
    CHECK(std::abs(p.allocated_peak() - (m.persistent + m.peak)) <= 0.10 * (m.persistent + m.peak));
    CHECK(std::abs(p.activations - m.peak) <= 0.10 * m.peak);

    const plan::CommVolume v = plan::predict_comm(c, m.stage, m.dp_rank);
    const std::pair<plan::CollKind, const parallel::OpStats*> kinds[] = {
        {plan::CollKind::all_reduce, &m.stats.all_reduce},
        {plan::CollKind::reduce_scatter, &m.stats.reduce_scatter},
        {plan::CollKind::all_gather, &m.stats.all_gather},
        {plan::CollKind::p2p, &m.stats.p2p}};
    for (auto [kind, measured] : kinds) {
      INFO(plan::coll_kind_name(kind) << ": measured " << measured->bytes << " bytes in " << measured->calls
                                      << " calls, predicted " << v.bytes(kind) << " in " << v.calls(kind));
      CHECK(v.bytes(kind) == Approx(measured->bytes).epsilon(1e-12).margin(1e-9));
      CHECK(v.calls(kind) == static_cast<double>(measured->calls));
    }
    CHECK(m.stats.broadcast.calls == 0);
    world->barrier();
  }
  CHECK(ran > 0);
}

// Context parallelism (issue 23): the allocator's peak above the persistent buffers (the step's activations
// and temporaries) per rank at cp = the world size, against the single-process run of the same 256-token
// sequence. Every saved tensor is per local token (attention keeps its local q, k, v and gathers K/V again in
// backward), so the peak should be 1/cp of cp 1's plus the one transient that does not shrink: a layer's
// whole-sequence K and V (and their gradients) inside its attention backward.
TEST_CASE("context parallelism divides the activation memory per rank", "[plan][mpi]") {
  auto world = parallel::world_comm();
  const int P = world->size();
  if (P < 2) return;
  const std::string dir =
      (fs::path(POLDER_BINARY_DIR) / "tests" / "mpi_plan_work" / ("cp_np" + std::to_string(P))).string();
  if (world->rank() == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    testing::write_synthetic_dataset(dir + "/a", 64, 96, 1);
  }
  world->barrier();
  Layout l{"cp", 1, 1, 1};
  Config c = make_config(dir, l);
  c.model.max_seq_len = 256;
  c.data.seq_len = 256;
  c.data.valid_fraction = 0;
  c.model.num_layers = 2;
  c.train.global_batch = 2;
  c.train.micro_batch = 1;
  c.train.run_dir = dir + "/run-cp1";
  const Result one = measure(c, std::make_shared<parallel::SingleComm>());
  c.parallel.dp = 0;
  c.parallel.cp = P;
  c.train.run_dir = dir + "/run-cp" + std::to_string(P);
  const Result split = measure(c, world);
  const double ratio = split.peak / one.peak;
  if (world->rank() == 0)
    std::fprintf(stderr,
                 "cp memory: seq 256, cp %d: activation peak per rank %.0f B vs %.0f B at cp 1: %.3f "
                 "(1/cp = %.3f)\n",
                 P, split.peak, one.peak, ratio, 1.0 / P);
  INFO("cp " << P << ": " << split.peak << " vs " << one.peak << " bytes, ratio " << ratio);
  CHECK(split.persistent == one.persistent);  // parameters and optimizer state do not depend on cp
  // Measured: 0.500 at cp 2, 0.285 at cp 4 (1/cp + 0.035: that transient). Keeping the gathered K/V for
  // backward instead (the first version) measured 0.571 and 0.317; keeping whole activations would be near 1.
  CHECK(ratio < 1.0 / P + 0.05);
}

// ZeRO-3 (issue 24): what a rank keeps between steps (parameters, gradients, optimizer state, the RoPE table)
// at dp = the world size is 1/dp of plain data parallelism's for everything but the RoPE table, and the
// step's peak above it holds at most a few gathered units (the one running, the one prefetched) beyond the
// activations.
TEST_CASE("ZeRO-3 keeps 1/dp of the parameters, gradients and optimizer state", "[plan][mpi]") {
  auto world = parallel::world_comm();
  const int P = world->size();
  if (P < 2) return;
  const std::string dir =
      (fs::path(POLDER_BINARY_DIR) / "tests" / "mpi_plan_work" / ("zero3_np" + std::to_string(P))).string();
  if (world->rank() == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    testing::write_synthetic_dataset(dir + "/a", 300, 96, 1);
  }
  world->barrier();
  Layout l{"zero3", P, 1, 1};
  Config c = make_config(dir, l);
  c.model.num_layers = 8;
  c.train.run_dir = dir + "/run-zero0";
  const Result z0 = measure(c, world);
  c.parallel.zero = "2";
  c.train.run_dir = dir + "/run-zero2";
  const Result z2 = measure(c, world);
  c.parallel.zero = "3";
  c.train.run_dir = dir + "/run-zero3";
  const Result z3 = measure(c, world);
  const double rope = 2.0 * 4.0 * static_cast<double>(c.model.max_seq_len * (c.model.hidden_size / 4));
  const double state0 = z0.persistent - rope, state3 = z3.persistent - rope;
  // One layer's parameters (its unit) and the whole model's, in bytes (f32).
  const double layer = 4.0 * (2 * 64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64);
  if (world->rank() == 0)
    std::fprintf(
        stderr,
        "zero3 memory: dp %d, 8 layers: kept between steps %.0f B vs %.0f B at ZeRO-0 (%.4f, 1/dp = "
        "%.4f), %.0f B at ZeRO-2; step peak above it %.0f B vs %.0f B at ZeRO-2, %.0f B at ZeRO-0 (one "
        "layer's parameters: %.0f B)\n",
        P, state3, state0, state3 / state0, 1.0 / P, z2.persistent - rope, z3.peak, z2.peak, z0.peak, layer);
  INFO("kept " << state3 << " vs " << state0 << ", peaks " << z3.peak << " vs " << z2.peak);
  // 1/dp up to the flat buffer's padding to a multiple of dp (a few elements per buffer).
  CHECK(std::abs(state3 - state0 / P) <= 3 * 4.0 * P * 16);
  // The step: what ZeRO-2's step holds (activations, per-parameter gradients until their bucket is reduced),
  // plus gathered units: at most three layers' worth (running, prefetched, and the head or embedding unit),
  // not the whole model's.
  CHECK(z3.peak <= z2.peak + 3 * layer + 4.0 * 96 * 64 * 2);
}
