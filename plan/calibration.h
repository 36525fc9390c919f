// The measured rates behind the step-time model: dense GEMM and attention throughput, device copy bandwidth
// and how much of it the memory-bound kernels and NCCL reach. Taken from polder's own GPU benchmark results
// (docs/perf/*.json, written by scripts/gpu/check.sh) for the cluster's GPU model when such a file exists,
// from documented defaults otherwise. Keys read (docs/perf/NOTES.md, "Planner"), later ones winning:
//   kernels.device.name, attention.polder.device, gemm.device, device    the GPU model (H100, H200, A100 ...)
//   kernels.gemm_8192_tflops            bf16 GEMM 8192^3 through cuda::gemm
//   kernels.copy_gbps                   device-to-device copy, read + write bytes per second
//   kernels.records[] "attention fwd|bwd ..." "tflops"   the baseline attention kernel
//   attention.polder.records[] impl "auto", causal, dir fwd|bwd, "tflops"   the attention training runs
//   gemm.records[] (llama layer shapes) M, N, K, own_ms, cublaslt_ms   GEMM rate = FLOPs / time of the faster
//   planner.{gemm_tflops, attention_fwd_tflops, attention_bwd_tflops, copy_gbps, memory_efficiency,
//            comm_efficiency}           hand-entered values
#pragma once

#include <string>
#include <vector>

#include "plan/cluster.h"

namespace polder::plan {

struct Calibration {
  double gemm_tflops = 0;           // dense bf16 GEMM throughput
  double attention_fwd_tflops = 0;  // causal attention forward (executed FLOPs: half of the T x T product)
  double attention_bwd_tflops = 0;  // its backward (2.5x the forward's FLOPs)
  double copy_gbps = 0;             // device copy bandwidth (bytes read + written per second)
  double memory_efficiency = 0.8;   // share of the copy bandwidth the memory-bound kernels reach
  double comm_efficiency = 0.8;     // share of a link's bandwidth NCCL reaches (bus bandwidth)
  std::string source;               // where these numbers come from, one line
  std::vector<std::string> notes;   // files read or skipped, and why
};

// A training run polder measured on one GPU (training.runs[] of a docs/perf JSON file, from
// scripts/gpu/bench_train.sh): its config and batch, and the median step time and peak memory it measured.
struct MeasuredRun {
  std::string file, model, config;  // config: a path relative to the repository root
  int64_t seq_len = 0, micro_batch = 0, global_batch = 0;
  double step_time_s = 0;
  double peak_memory_gib = 0;  // 0: not logged
};
// Every measured run in `perf_dir` on the cluster's GPU model (files in name order).
std::vector<MeasuredRun> load_measured_runs(const Cluster& cluster, const std::string& perf_dir);

// The defaults for a cluster's GPU: for H100, 790 TFLOP/s dense bf16 GEMM (cuBLAS, 8192^3) and 3.0 TB/s copy,
// as commonly measured on H100 SXM; for other GPUs 80% of the bf16 peak and 90% of the HBM bandwidth.
// Attention: 2% (forward) and 1.5% (backward) of the bf16 peak, an estimate for polder's baseline CUDA-core
// kernel (no tensor cores; H100's non-tensor FP32 peak is 67 TFLOP/s); no GPU has measured it yet.
Calibration default_calibration(const Cluster& cluster);
// The defaults, overridden by every docs/perf-style JSON file in `perf_dir` (name order, later files win)
// whose device is the cluster's GPU model. A missing directory leaves the defaults.
Calibration load_calibration(const Cluster& cluster, const std::string& perf_dir);

}  // namespace polder::plan
