// The scale planner (plan/). Oracles: the allocator's measured peak of real CPU training steps (memory model,
// within 10%; the persistent buffers exactly), models::llama_local_parameters (the planner's parameter
// shapes), hand-computed alpha-beta times and FLOP counts (step-time model with every other rate made
// infinite), and parse_config (the printed YAML of the best layout must load back as that layout). Multi-rank
// layouts and the communication volume: tests/test_mpi_plan.cpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "core/memory_stats.h"
#include "models/llama/model.h"
#include "plan/calibration.h"
#include "plan/cluster.h"
#include "plan/comm.h"
#include "plan/memory.h"
#include "plan/planner.h"
#include "plan/report.h"
#include "plan/shapes.h"
#include "plan/step_time.h"
#include "tests/synthetic_data.h"
#include "tests/temp_dir.h"
#include "tests/testing.h"
#include "train/trainer.h"

using namespace polder;

namespace {

constexpr double kTolerance = 0.10;  // the issue's bound for predicted vs measured peak memory

std::string cluster_path(const std::string& name) {
  return std::string(POLDER_SOURCE_DIR) + "/configs/clusters/" + name;
}

Config small_config(const std::string& dir) {
  Config c;
  c.model.vocab_size = 512;
  c.model.hidden_size = 64;
  c.model.intermediate_size = 176;
  c.model.num_layers = 3;
  c.model.num_heads = 8;
  c.model.num_kv_heads = 2;
  c.model.max_seq_len = 64;
  c.data.datasets = {{"a", dir + "/a", 1.0}};
  c.data.seq_len = 48;
  c.data.valid_fraction = 0.1;
  c.train.steps = 4;
  c.train.global_batch = 6;
  c.train.micro_batch = 3;
  c.train.threads = 2;
  c.train.run_dir = dir + "/run";
  c.train.resume = "none";
  c.logging.tensorboard = false;
  c.logging.jsonl = false;
  c.parallel.dp = 1;
  return c;
}

struct Measured {
  double persistent = 0;  // bytes the trainer holds between steps
  double peak = 0;        // peak during one train_step() above that
};

// One warm-up step, then the allocator's peak over a second step.
Measured measure(const Config& c) {
  const int64_t base = memory::stats(Device::cpu()).current;
  train::Trainer t(c, true);
  t.train_step();
  memory::reset_peak(Device::cpu());
  const memory::Stats before = memory::stats(Device::cpu());
  t.train_step();
  const memory::Stats after = memory::stats(Device::cpu());
  return {static_cast<double>(before.current - base), static_cast<double>(after.peak - before.current)};
}

// A calibration where everything but the named part is free (infinitely fast).
plan::Calibration only(const std::string& what) {
  plan::Calibration k;
  k.gemm_tflops = what == "gemm" ? 500 : 1e30;
  k.attention_fwd_tflops = what == "attention" ? 100 : 1e30;
  k.attention_bwd_tflops = what == "attention" ? 40 : 1e30;
  k.copy_gbps = 1e30;
  k.memory_efficiency = 1;
  k.comm_efficiency = 1;
  return k;
}

plan::Cluster fast_links(plan::Cluster cl) {
  cl.intra = {1e30, 0};
  cl.inter = {1e30, 0};
  return cl;
}

}  // namespace

TEST_CASE("memory_stats counts live and peak bytes of storages", "[plan][memory]") {
  const memory::Stats s0 = memory::stats(Device::cpu());
  memory::reset_peak(Device::cpu());
  {
    Tensor a = Tensor::empty({1000}, DType::f32);  // 4000 bytes
    Tensor b = Tensor::empty({10}, DType::f64);    // 80 bytes
    CHECK(memory::stats(Device::cpu()).current == s0.current + 4080);
  }
  Tensor c = Tensor::empty({3}, DType::bf16);  // 6 bytes
  const memory::Stats s1 = memory::stats(Device::cpu());
  CHECK(s1.current == s0.current + 6);
  CHECK(s1.peak == s0.current + 4080);
  memory::reset_peak(Device::cpu());
  CHECK(memory::stats(Device::cpu()).peak == s1.current);
  CHECK(memory::stats(Device::cuda(0)).current == 0);  // another device's counters are separate
}

TEST_CASE("predicted memory matches the allocator's peak of real training steps", "[plan][memory]") {
  testing::TempDir dir("plan_memory");
  testing::write_synthetic_dataset(dir.prefix("a"), 300, 64, 1);
  struct Case {
    const char* name;
    int64_t vocab, inter, micro_batch, seq;
    const char* precision;
    bool recompute, tied;
  };
  // A large vocabulary puts the peak in the cross-entropy backward, a wide MLP in the last block's backward;
  // recompute moves it into the re-run block.
  const Case cases[] = {
      {"vocab-heavy f32", 512, 176, 3, 48, "f32", false, false},
      {"vocab-heavy f32 recompute", 512, 176, 3, 48, "f32", true, false},
      {"vocab-heavy bf16", 512, 176, 1, 48, "bf16", false, false},
      {"vocab-heavy bf16 recompute tied", 512, 176, 3, 32, "bf16", true, true},
      {"mlp-heavy f32", 64, 512, 3, 48, "f32", false, false},
      {"mlp-heavy f32 recompute", 64, 512, 1, 64, "f32", true, false},
      {"mlp-heavy bf16", 64, 512, 3, 16, "bf16", false, true},
      {"mlp-heavy bf16 recompute", 64, 512, 3, 48, "bf16", true, false},
  };
  for (const Case& k : cases) {
    INFO(k.name);
    Config c = small_config(dir.path.string());
    c.model.vocab_size = k.vocab;
    c.model.intermediate_size = k.inter;
    c.model.tie_embeddings = k.tied;
    c.train.micro_batch = k.micro_batch;
    c.train.global_batch = 2 * k.micro_batch;
    c.data.seq_len = k.seq;
    c.train.precision = k.precision;
    c.train.recompute = k.recompute;
    c.train.run_dir = dir.prefix(std::string("run-") + k.name);
    const Measured m = measure(c);
    const plan::MemoryBreakdown p = plan::predict_memory(c, 0);
    INFO("persistent measured " << m.persistent << " predicted " << p.persistent()
                                << "; activations measured " << m.peak << " predicted " << p.activations
                                << " (" << p.peak_at << "), ratio " << p.activations / m.peak);
    CHECK(p.persistent() == m.persistent);  // flat buffers, AdamW state, RoPE: exactly
    CHECK(std::abs(p.allocated_peak() - (m.persistent + m.peak)) <= kTolerance * (m.persistent + m.peak));
    CHECK(std::abs(p.activations - m.peak) <= kTolerance * m.peak);  // the activations alone, too
    CHECK(p.comm_buffers == 0);
    CHECK(p.workspace == 0);
  }
}

TEST_CASE("the planner's parameter shapes are the model's", "[plan][shapes]") {
  ModelConfig m;
  m.vocab_size = 63;  // padded under tp
  m.hidden_size = 32;
  m.intermediate_size = 48;
  m.num_layers = 5;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  for (bool tied : {false, true})
    for (int64_t tp : {1, 2})
      for (int64_t pp : {1, 2, 3})
        for (int64_t v : {1, 2})
          for (int64_t stage = 0; stage < pp; ++stage) {
            if (pp * v > m.num_layers || (v > 1 && pp == 1)) continue;
            m.tie_embeddings = tied;
            INFO("tied " << tied << " tp " << tp << " pp " << pp << " v " << v << " stage " << stage);
            models::ParallelLayout l;
            l.tp = tp, l.pp = pp, l.pp_rank = stage, l.virtual_stages = v;
            const auto ref = models::llama_local_parameters(m, l);
            const auto got = plan::local_params(m, tp, pp, stage, v);
            REQUIRE(got.size() == ref.size());
            for (size_t i = 0; i < ref.size(); ++i) {
              INFO(ref[i].first.name);
              CHECK(got[i].numel == shape_numel(ref[i].second));
              CHECK(got[i].tied_copy == ref[i].first.tied_copy);
              if (tp > 1) CHECK(got[i].replicated == (ref[i].first.shard_dim < 0));
            }
            for (int64_t multiple : {1, 3, 4}) {
              l.flat_multiple = multiple;
              CHECK(plan::flat_numel(got, multiple) == models::Llama::flat_size(m, l));
            }
          }
}

TEST_CASE("collective times follow the alpha-beta model of their link", "[plan][time]") {
  const plan::Link link{100, 5};  // 100 GB/s, 5 us
  auto op = [](plan::CommGroup g, plan::CollKind k, int64_t p, double bytes, double count) {
    plan::CommOp o;
    o.group = g, o.kind = k, o.group_size = p, o.buffer_bytes = bytes, o.count = count;
    return o;
  };
  const plan::CommOp ar = op(plan::CommGroup::dp, plan::CollKind::all_reduce, 4, 8e9, 3);
  const plan::CommOp rs = op(plan::CommGroup::dp, plan::CollKind::reduce_scatter, 4, 8e9, 1);
  const plan::CommOp send = op(plan::CommGroup::pp, plan::CollKind::p2p, 2, 1e6, 10);
  // all-reduce: 2 (p-1) alpha + 2 (p-1)/p n / B, per call; at 80% of the link.
  CHECK(plan::op_seconds(ar, link, 0.8) == Approx(3 * (6 * 5e-6 + 1.5 * 8e9 / 80e9)));
  CHECK(plan::op_seconds(rs, link, 1.0) == Approx(3 * 5e-6 + 0.75 * 8e9 / 100e9));
  CHECK(plan::op_seconds(send, link, 1.0) == Approx(10 * (5e-6 + 1e6 / 100e9)));
  // Counted bytes: the Comm counters' ring accounting.
  CHECK(ar.counted_bytes() == Approx(3 * 1.5 * 8e9));
  CHECK(rs.counted_bytes() == Approx(0.75 * 8e9));
  CHECK(send.counted_bytes() == Approx(1e7));
}

TEST_CASE("groups use NVLink while their ranks fit in a node", "[plan][time]") {
  plan::Cluster cl = plan::load_cluster(cluster_path("h100-8x-ndr.yaml"));
  Config c;
  c.parallel.tp = 4, c.parallel.dp = 2, c.parallel.pp = 4;
  CHECK(&plan::group_link(cl, c, plan::CommGroup::tp) == &cl.intra);
  CHECK(&plan::group_link(cl, c, plan::CommGroup::dp) == &cl.intra);  // ranks 0, 4: one node
  CHECK(&plan::group_link(cl, c, plan::CommGroup::pp) == &cl.inter);  // ranks 0, 8, 16, 24
  c.parallel.dp = 4;
  CHECK(&plan::group_link(cl, c, plan::CommGroup::dp) == &cl.inter);
  cl.gpus_per_node = 4;
  c.parallel.tp = 8;
  CHECK(&plan::group_link(cl, c, plan::CommGroup::tp) ==
        &cl.inter);  // tp 8 on 4-GPU nodes crosses InfiniBand
}

TEST_CASE("step time from FLOPs: GEMMs and attention against hand counts", "[plan][time]") {
  plan::Cluster cl = fast_links(plan::load_cluster(cluster_path("h100-8x-ndr.yaml")));
  Config c;
  c.model.vocab_size = 1000;
  c.model.hidden_size = 256;
  c.model.intermediate_size = 768;
  c.model.num_layers = 4;
  c.model.num_heads = 8;
  c.model.num_kv_heads = 2;
  c.model.max_seq_len = 512;
  c.data.seq_len = 512;
  c.train.global_batch = 16;
  c.train.micro_batch = 4;
  c.train.precision = "bf16";
  c.parallel.dp = 1;
  const double tokens = 16.0 * 512;
  // GEMMs only: 6 x (parameters in matrices) per token, the embedding lookup excluded (untied); the norms'
  // weights are no GEMM either.
  const double norms = (2.0 * 4 + 1) * 256;
  const double matrix_params =
      static_cast<double>(models::llama_parameter_count(c.model)) - 1000.0 * 256 - norms;
  for (bool rc : {false, true}) {
    c.train.recompute = rc;
    const plan::StepTime t = plan::predict_step_time(c, cl, only("gemm"));
    // Recompute adds the blocks' forward (2 of the 6 FLOPs per parameter, the LM head excluded).
    const double block_params = matrix_params - 1000.0 * 256;
    const double flops = 6 * matrix_params * tokens + (rc ? 2 * block_params * tokens : 0);
    CHECK(t.total == Approx(flops / 500e12).epsilon(1e-9));
    CHECK(t.gemm == Approx(t.total).epsilon(1e-9));
  }
  c.train.recompute = false;
  // Attention only: causal, so half of the 4 b s^2 H D of QK^T and PV per layer; backward 2.5x the forward.
  const plan::StepTime a = plan::predict_step_time(c, cl, only("attention"));
  const double fwd = 4 * 0.5 * 16.0 * 512 * 512 * 8 * 32 * 4;
  CHECK(a.total == Approx(fwd / 100e12 + 2.5 * fwd / 40e12).epsilon(1e-9));
  // Tensor parallelism halves each rank's FLOPs (heads and MLP split; the vocabulary padded to 1000 -> 500 x
  // 2).
  c.parallel.tp = 2;
  CHECK(plan::predict_step_time(c, cl, only("attention")).total == Approx(a.total / 2).epsilon(1e-9));
}

TEST_CASE("pipeline bubble and exposed data-parallel communication", "[plan][time]") {
  plan::Cluster cl = plan::load_cluster(cluster_path("h100-8x-ndr.yaml"));
  Config c;
  c.model.vocab_size = 1024;
  c.model.hidden_size = 512;
  c.model.intermediate_size = 1024;
  c.model.num_layers = 8;
  c.model.num_heads = 8;
  c.model.num_kv_heads = 8;
  c.model.max_seq_len = 1024;
  c.data.seq_len = 1024;
  c.train.global_batch = 64;
  c.train.micro_batch = 1;
  c.train.precision = "bf16";
  c.parallel.dp = 1;
  c.parallel.pp = 4;
  // With only attention costing time every stage (2 layers each) takes the same: 1F1B's step is (M + P - 1)
  // units, interleaving with v chunks (M + (P - 1) / v).
  const plan::Calibration k = only("attention");
  const plan::Cluster free = fast_links(cl);
  const plan::StepTime one = plan::predict_step_time(c, free, k);
  const double unit = one.attention / 64;
  CHECK(one.total == Approx((64 + 3) * unit).epsilon(1e-9));
  CHECK(one.bubble == Approx(3 * unit).epsilon(1e-9));
  c.parallel.virtual_stages = 2;
  CHECK(plan::predict_step_time(c, free, k).total == Approx((64 + 1.5) * unit).epsilon(1e-9));
  c.parallel.virtual_stages = 1;
  // ZeRO-1 over 8 GPUs of a node: reduce-scatter of the f32 gradients and all-gather of the bf16 parameters,
  // both exposed: (p-1) alpha + (p-1)/p n / (B eff) each.
  c.parallel.pp = 1;
  c.parallel.dp = 8;
  c.parallel.zero = "1";
  c.train.global_batch = 8;
  plan::Calibration kz = only("attention");
  kz.comm_efficiency = 0.5;
  plan::Cluster slow = free;
  slow.intra = {100, 10};
  const plan::StepTime z = plan::predict_step_time(c, slow, kz);
  const double n = static_cast<double>(plan::flat_numel(plan::local_params(c.model, 1, 1, 0, 1), 8));
  const double alpha = 10e-6, bw = 100e9 * 0.5, scalar = 2 * (2 * 7 * alpha + 2 * 7.0 / 8 * 8 / bw);
  // (The loss and gradient-norm all-reduces of 8 bytes ride on the same group.)
  CHECK(z.dp_exposed == Approx(2 * 7 * alpha + 7.0 / 8 * (4 * n + 2 * n) / bw + scalar).epsilon(1e-9));
  CHECK(z.total == Approx(z.attention + z.dp_exposed).epsilon(1e-9));
}

TEST_CASE("cluster files: presets load, mistakes are one line naming the key", "[plan][cluster]") {
  const plan::Cluster c8 = plan::load_cluster(cluster_path("h100-8x-ndr.yaml"));
  CHECK(c8.gpus_per_node == 8);
  CHECK(c8.peak_tflops == 989);
  CHECK(c8.inter.bandwidth_gbs == 50);
  const plan::Cluster c4 = plan::load_cluster(cluster_path("h100-4x-ndr.yaml"));
  CHECK(c4.gpus_per_node == 4);
  const std::string good =
      "name: x\ngpus_per_node: 4\ngpu: {name: H100, bf16_peak_tflops: 989, hbm_gib: 80, hbm_bandwidth_gbs: "
      "3350, "
      "tdp_w: 700, average_power_w: 600}\nintra_node: {bandwidth_gbs: 450, latency_us: 3}\ninter_node: "
      "{bandwidth_gbs: 50, latency_us: 6}\nnode_power_w: 1000\n";
  CHECK(plan::parse_cluster(good).pue == 1.0);
  auto error_of = [](const std::string& text) {
    try {
      plan::parse_cluster(text, "c.yaml");
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  CHECK_THAT(error_of(good + "gpu_per_node: 8\n"), Catch::Contains("unknown key 'gpu_per_node'"));
  std::string bad = good;
  bad.erase(bad.find("gpus_per_node: 4\n"), 17);
  CHECK_THAT(error_of(bad), Catch::Contains("c.yaml: missing required key 'gpus_per_node'"));
  bad = good;
  bad.replace(bad.find("latency_us: 6"), 13, "latency_us: fast");
  CHECK_THAT(error_of(bad), Catch::Contains("inter_node.latency_us must be a number, got 'fast'"));
  bad = good;
  bad.replace(bad.find("hbm_gib: 80"), 11, "hbm_gib: -1");
  CHECK_THAT(error_of(bad), Catch::Contains("gpu.hbm_gib must be positive, got -1"));
  bad = good;
  bad.replace(bad.find("average_power_w: 600"), 20, "average_power_w: 900");
  CHECK_THAT(error_of(bad), Catch::Contains("average_power_w 900 exceeds gpu.tdp_w 700"));
  CHECK_THAT(error_of("[1, 2]"), Catch::Contains("expected a map"));
}

TEST_CASE("calibration: defaults, then polder's benchmark files for the same GPU model",
          "[plan][calibration]") {
  const plan::Cluster cl = plan::load_cluster(cluster_path("h100-8x-ndr.yaml"));
  const plan::Calibration d = plan::default_calibration(cl);
  CHECK(d.gemm_tflops == 790);
  CHECK(d.copy_gbps == 3000);
  CHECK(d.attention_fwd_tflops == Approx(0.25 * 989));
  CHECK(d.attention_bwd_tflops == Approx(0.20 * 989));
  CHECK_THAT(d.source, Catch::Contains("defaults"));
  plan::Cluster a100 = cl;
  a100.gpu_name = "A100 SXM4 80GB";
  a100.peak_tflops = 312;
  a100.hbm_gbs = 2039;
  CHECK(plan::default_calibration(a100).gemm_tflops == Approx(0.8 * 312));

  testing::TempDir dir("plan_calibration");
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir.prefix(name)) << text;
  };
  write(
      "gpu-2026-01-01-0000.json",
      R"({"kernels": {"device": {"name": "NVIDIA H100 80GB HBM3"}, "gemm_8192_tflops": 701.5, "copy_gbps": 2810,
            "records": [{"name": "attention fwd T2048 D128", "tflops": 300, "status": "ok"},
                        {"name": "attention fwd T8192 D128", "tflops": 320, "status": "ok"},
                        {"name": "attention bwd T8192 D128", "tflops": 150, "status": "ok"},
                        {"name": "attention bwd T4096 D64", "tflops": 999, "status": "nan in output"}]}})");
  write("gpu-2026-01-02-0000.json",
        R"({"kernels": {"device": {"name": "NVIDIA H200"}, "gemm_8192_tflops": 900}})");
  write("gpu-2026-01-03-0000.json", R"({"planner": {"comm_efficiency": 0.7}, "device": "H100 SXM"})");
  write("notes.json", "{ not json");
  write("other.txt", "ignored");
  const plan::Calibration k = plan::load_calibration(cl, dir.path.string());
  CHECK(k.gemm_tflops == 701.5);
  CHECK(k.copy_gbps == 2810);
  CHECK(k.attention_fwd_tflops == Approx(310));
  CHECK(k.attention_bwd_tflops == Approx(150));  // the failed record is not used
  CHECK(k.comm_efficiency == 0.7);
  CHECK(k.memory_efficiency == d.memory_efficiency);
  CHECK_THAT(k.source, Catch::Contains("gpu-2026-01-01-0000.json"));
  bool skipped_h200 = false, skipped_bad = false;
  for (const std::string& n : k.notes) {
    skipped_h200 = skipped_h200 || n.find("'NVIDIA H200' is not a H100") != std::string::npos;
    skipped_bad = skipped_bad || n.find("notes.json: skipped") != std::string::npos;
  }
  CHECK(skipped_h200);
  CHECK(skipped_bad);
  CHECK(plan::load_calibration(cl, dir.prefix("missing")).gemm_tflops == 790);

  // check.sh's attention and GEMM benchmarks: the dispatcher's causal attention, and the GEMM rate of the
  // llama layer shapes (the faster of polder's kernel and cuBLASLt per shape, total FLOPs over total time).
  write("gpu-2026-01-03-1200.json", R"J({
      "attention": {"polder": {"device": "NVIDIA H100 80GB HBM3", "records": [
          {"impl": "auto", "dir": "fwd", "causal": true, "tflops": 400},
          {"impl": "auto", "dir": "fwd", "causal": true, "tflops": 420},
          {"impl": "auto", "dir": "bwd", "causal": true, "tflops": 300},
          {"impl": "auto", "dir": "fwd", "causal": false, "tflops": 999},
          {"impl": "baseline", "dir": "fwd", "causal": true, "tflops": 20}]}},
      "gemm": {"device": "NVIDIA H100 80GB HBM3", "records": [
          {"name": "square 8192", "M": 8192, "N": 8192, "K": 8192, "own_ms": 1, "cublaslt_ms": 1},
          {"name": "llama-8b q_proj fwd", "M": 8192, "N": 4096, "K": 4096, "own_ms": 0.5, "cublaslt_ms": 0.4},
          {"name": "llama-8b down_proj dW", "M": 4096, "N": 14336, "K": 8192, "own_ms": 1.5, "cublaslt_ms": null}]}})J");
  const plan::Calibration m = plan::load_calibration(cl, dir.path.string());
  CHECK(m.attention_fwd_tflops == Approx(410));
  CHECK(m.attention_bwd_tflops == Approx(300));
  const double flops = 2.0 * 8192 * 4096 * 4096 + 2.0 * 4096 * 14336 * 8192;
  CHECK(m.gemm_tflops == Approx(flops / (0.4e-3 + 1.5e-3) / 1e12));
  CHECK(m.copy_gbps == 2810);  // from the earlier file

  // Measured training runs (scripts/gpu/bench_train.sh) are predicted with the same model, on one GPU.
  write("gpu-2026-01-04-0000.json",
        R"J({"training": {"device": "NVIDIA H100 80GB HBM3", "runs": [
              {"model": "llama-125m", "config": "configs/llama-125m.yaml", "seq_len": 1024, "micro_batch": 16,
               "global_batch": 32, "polder": {"step_time_s": 0.5, "max_memory_gib": 20.5}},
              {"model": "gone", "config": "configs/missing.yaml", "seq_len": 64, "micro_batch": 1, "global_batch": 1,
               "polder": {"step_time_s": 1}},
              {"model": "failed", "config": "configs/llama-1b.yaml", "seq_len": 2048, "micro_batch": 4,
               "global_batch": 8, "polder": {"status": "fail(1)"}}]},
            "kernels": {"device": {"name": "NVIDIA H100 80GB HBM3"}}})J");
  write("gpu-2026-01-05-0000.json", R"J({"training": {"device": "NVIDIA A100-SXM4-80GB", "runs": [
              {"model": "llama-125m", "config": "configs/llama-125m.yaml", "seq_len": 1024, "micro_batch": 16,
               "global_batch": 32, "polder": {"step_time_s": 0.9}}]}})J");
  const auto runs = plan::load_measured_runs(cl, dir.path.string());
  REQUIRE(runs.size() == 2);
  CHECK(runs[0].step_time_s == 0.5);
  CHECK(runs[0].peak_memory_gib == 20.5);
  plan::PlanRequest req;
  req.cluster = cl;
  req.calibration = d;
  req.measured = runs;
  req.repo_root = POLDER_SOURCE_DIR;
  const auto cmp = plan::compare_measured(req);
  REQUIRE(cmp.size() == 2);
  Config c125 = load_config(std::string(POLDER_SOURCE_DIR) + "/configs/llama-125m.yaml");
  c125.data.seq_len = 1024, c125.train.micro_batch = 16, c125.train.global_batch = 32, c125.parallel.dp = 1;
  c125.train.precision = "bf16";
  CHECK(cmp[0].error.empty());
  CHECK(cmp[0].predicted_step_s == Approx(plan::predict_step_time(c125, cl, d).total));
  CHECK(cmp[0].predicted_memory_gib > 1);
  CHECK_THAT(cmp[1].error, Catch::Contains("configs/missing.yaml"));
}

TEST_CASE("the planner ranks runnable layouts that fit and says why the others do not", "[plan][planner]") {
  plan::PlanRequest r;
  r.base = load_config(std::string(POLDER_SOURCE_DIR) + "/configs/llama-8b.yaml");
  r.cluster = plan::load_cluster(cluster_path("h100-8x-ndr.yaml"));
  r.calibration = plan::default_calibration(r.cluster);
  r.gpus = 16;
  r.global_batch_tokens = 64 * 8192;
  r.seq_len = 8192;
  r.max_micro_batch = 2;
  const plan::PlanResult res = plan::plan(r);
  REQUIRE(!res.valid.empty());
  const double hbm = r.cluster.hbm_gib * 1024 * 1024 * 1024;
  for (size_t i = 0; i < res.valid.size(); ++i) {
    const plan::Candidate& c = res.valid[i];
    CHECK(c.memory.total() <= hbm);
    CHECK(plan::layout_error(c.config, r.gpus).empty());
    CHECK(c.layout.dp * c.layout.tp * c.layout.pp * c.layout.cp == 16);
    if (i > 0) CHECK(c.time.total >= res.valid[i - 1].time.total);
    // Throughput, MFU and energy from the step time.
    CHECK(c.tokens_per_s_per_gpu == Approx(64.0 * 8192 / c.time.total / 16));
    CHECK(c.mfu == Approx(c.tokens_per_s_per_gpu * train::flops_per_token(r.base.model, 8192) / 989e12));
    CHECK(c.energy_j == Approx(c.time.total * (16 * 600.0 + 2 * 3000.0)));
  }
  // Plain data parallelism over 16 GPUs keeps 16 bytes of state per parameter on every GPU: 120 GiB.
  bool dp16_rejected = false;
  for (const plan::Candidate& c : res.too_big) {
    CHECK(c.memory.total() > hbm);
    CHECK_THAT(c.rejected, Catch::Contains("GiB of HBM"));
    if (c.layout.dp == 16 && c.layout.zero == 0) {
      dp16_rejected = true;
      CHECK(c.memory.persistent() > 8e9 * 16);
    }
  }
  CHECK(dp16_rejected);
  CHECK(res.rule_rejections.count("parallel.tp (16) does not divide model.num_kv_heads (8)") == 1);
  // The printed YAML of the winner loads back as its layout.
  const plan::Candidate& best = res.valid.front();
  const std::string yaml = plan::layout_yaml(best);
  const Config back = parse_config(
      "model: {vocab_size: 128256, hidden_size: 4096, intermediate_size: 14336, "
      "num_layers: 32, num_heads: 32, num_kv_heads: 8, max_seq_len: 8192}\n" +
          yaml + "  datasets: [{name: a, prefix: a}]\n",
      {"train.steps=1"}, "best");
  CHECK(back.parallel.tp == best.layout.tp);
  CHECK(back.parallel.pp == best.layout.pp);
  CHECK(back.parallel.dp == 0);  // derived from the world size
  CHECK(back.parallel.virtual_stages == best.layout.virtual_stages);
  CHECK(back.parallel.zero == best.config.parallel.zero);
  CHECK(back.parallel.sequence_parallel == best.layout.sequence_parallel);
  CHECK(back.train.micro_batch == best.layout.micro_batch);
  CHECK(back.train.recompute == best.layout.recompute);
  CHECK(back.train.global_batch == 64);
  CHECK(back.data.seq_len == 8192);
  // JSON: every valid layout.
  const nlohmann::json j = plan::plan_json(r, res, 3);
  CHECK(j["valid"].size() == res.valid.size());
  CHECK(j["too_big"].size() == 3);
  CHECK(j["valid"][0]["step_seconds"]["total"].get<double>() == best.time.total);
  CHECK_THAT(plan::plan_text(r, res, 3, 0), Catch::Contains("config for the best layout:\nparallel:\n"));
  // Only data parallelism (what the GPU path runs today): ZeRO is what makes 8B fit on 16 GPUs.
  r.max_tp = 1;
  r.max_pp = 1;
  const plan::PlanResult dp_only = plan::plan(r);
  REQUIRE(!dp_only.valid.empty());
  for (const plan::Candidate& c : dp_only.valid) {
    CHECK(c.layout.tp == 1);
    CHECK(c.layout.pp == 1);
    CHECK(c.layout.zero > 0);
  }
}

TEST_CASE("a model too large for the GPUs gets no layout, and impossible requests are one-line errors",
          "[plan][planner]") {
  plan::PlanRequest r;
  r.base = load_config(std::string(POLDER_SOURCE_DIR) + "/configs/llama-8b.yaml",
                       {"model.hidden_size=8192", "model.intermediate_size=28672", "model.num_layers=80",
                        "model.num_heads=64"});
  r.cluster = plan::load_cluster(cluster_path("h100-8x-ndr.yaml"));
  r.calibration = plan::default_calibration(r.cluster);
  r.gpus = 8;
  r.seq_len = 8192;
  r.global_batch_tokens = 8 * 8192;
  const plan::PlanResult res = plan::plan(r);
  CHECK(res.valid.empty());
  REQUIRE(!res.too_big.empty());
  // 70B parameters x 16 bytes of training state over 8 GPUs: over 130 GiB each before any activation.
  CHECK(res.too_big.front().memory.persistent() > 130.0 * (1 << 30));
  CHECK_THAT(plan::plan_text(r, res, 5, 2), Catch::Contains("no layout fits"));
  auto error_of = [&](int64_t tokens, int64_t seq) {
    plan::PlanRequest q = r;
    q.global_batch_tokens = tokens;
    q.seq_len = seq;
    try {
      plan::plan(q);
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  CHECK_THAT(error_of(1000, 8192),
             Catch::Contains("--global-batch-tokens 1000 is not a multiple of --seq-len 8192"));
  CHECK_THAT(error_of(16384, 16384), Catch::Contains("--seq-len 16384 exceeds the model's max_seq_len 8192"));
}
