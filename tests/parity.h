// The parity tests' oracle and bounds (test_mpi_parity on the CPU, test_mpi_cuda_parity on the GPU path): a
// layout's run against the single-process run. See test_mpi_parity.cpp's file comment for why the f32 bound
// is relative to the f32 single-process run's own distance from f64.
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/cuda_context.h"
#include "core/ops.h"
#include "core/sha256.h"
#include "parallel/comm.h"
#include "train/trainer.h"

// [cuda] cases: without a CUDA device (a CUDA build on a machine without a GPU) the case passes with a
// warning; the emulated-device build (scripts/emulated_gpu.sh) runs it on the CPU.
#define POLDER_SKIP_WITHOUT_GPU()                                                     \
  do {                                                                                \
    if (!::polder::cuda::compiled() || ::polder::cuda::device_count() == 0) {         \
      WARN(                                                                           \
          "skipped: no CUDA device (the emulated-device build runs this on the CPU: " \
          "scripts/emulated_gpu.sh)");                                                \
      return;                                                                         \
    }                                                                                 \
  } while (0)

namespace polder::testing::parity {

// The parity tests' model: vocabulary 64, width 32, MLP 48, 4 heads over 2 KV heads, 16 positions.
inline void tiny_model(ModelConfig& m, int64_t layers) {
  m.vocab_size = 64;
  m.hidden_size = 32;
  m.intermediate_size = 48;
  m.num_layers = layers;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  m.max_seq_len = 16;
}

// f32 bound (see the file comment): the parallel run's distance from the f64 answer over the single-process
// f32 run's. Measured on this test's layouts (10 steps, worst over steps and parameters) on a 2-core AMD EPYC
// with AVX-512 at POLDER_CPU_ISA baseline, avx2 and best: the ratio is at most 1.9 for the losses and 1.75
// for the parameters, while the single run's own distance moves with the ISA (dp2 parameters: 3.9e-6
// baseline, 9.7e-7 avx2, 1.9e-6 avx512), which is why a fixed f32 tolerance could not hold on every CPU.
// kF32Factor 4 leaves room for other CPUs and libraries; a real bug moves the f32 run by 1e3 times its
// rounding error or more. The f64 runs measured at most 2.3e-16 (losses) and 3.4e-15 (parameters) against
// kF64Tol 1e-12.
constexpr double kF64Tol = 1e-12;
constexpr double kF32Factor = 4;
// Relative floors of two f32 ulps (2^-22), for a single-process error that is small by chance.
constexpr double kF32LossFloor = 2.4e-7;
constexpr double kF32ParamFloor = 2.4e-7;

struct Run {
  std::vector<double> losses;
  std::vector<models::Parameter> params;  // the whole tensors (single process) or this rank's shards, as f64
};

inline Run run(Config c, const std::string& precision, std::shared_ptr<parallel::Comm> world,
               const std::function<void(train::Trainer&)>& inspect = {}, int steps = 10) {
  c.train.precision = precision;
  c.train.run_dir += "-" + precision;
  train::Trainer t(c, true, std::move(world));
  Run r;
  for (int i = 0; i < steps; ++i) r.losses.push_back(t.train_step().loss);
  t.with_gathered_parameters([&] {  // ZeRO-3: the parameters live in shards between uses
    for (models::Parameter p : t.model().parameters()) {
      p.value = p.value.to(Device::cpu()).to(DType::f64).clone();
      r.params.push_back(std::move(p));
    }
  });
  if (inspect) inspect(t);
  return r;
}

inline double rel(double a, double b) {
  return std::abs(a - b) / std::max(1e-12, std::abs(b));
}

// POLDER_PARITY_DUMP=<file>: every run appends its losses (hex floats) and a SHA-256 of each final parameter
// (shard) to <file>.rank<R>, so that a refactoring can show its results bit-identical to the code before it
// (run before and after, then diff the files; docs/ARCHITECTURE.md, "Refactoring without changing numbers").
inline void dump(const std::string& what, const Run& r, int rank) {
  const char* path = std::getenv("POLDER_PARITY_DUMP");
  if (path == nullptr || *path == 0) return;
  std::ofstream out(std::string(path) + ".rank" + std::to_string(rank), std::ios::app);
  out << what << " losses";
  char buf[64];
  for (double l : r.losses) {
    std::snprintf(buf, sizeof buf, " %a", l);
    out << buf;
  }
  out << "\n";
  for (const models::Parameter& p : r.params) {
    Sha256 h;
    h.update(p.value.data<double>(), static_cast<size_t>(p.value.numel()) * sizeof(double));
    out << what << " " << p.name << " " << h.hex() << "\n";
  }
}

// ||shard - slice of reference|| / ||slice||, and the padding rows must be zero.
inline double shard_error(const models::Parameter& p, const Tensor& full) {
  Tensor expect = full;
  Tensor got = p.value;
  if (p.shard_dim >= 0) {
    const int d = p.shard_dim;
    const int64_t real =
        std::max<int64_t>(0, std::min(got.size(d), p.global_shape[static_cast<size_t>(d)] - p.shard_start));
    expect = ops::narrow(full, d, p.shard_start, real);
    if (real < got.size(d)) {
      auto pad = ops::narrow(got, d, real, got.size(d) - real).to_vector<double>();
      for (double v : pad) REQUIRE(v == 0.0);
    }
    got = ops::narrow(got, d, 0, real);
  }
  auto a = got.to_vector<double>(), b = expect.to_vector<double>();
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// How far a run is from the reference: the worst relative loss error over the steps and the worst relative
// parameter (shard) error.
struct Distance {
  double loss = 0, param = 0;
};

inline Distance distance(const Run& r, const Run& ref) {
  Distance d;
  for (size_t i = 0; i < r.losses.size(); ++i) d.loss = std::max(d.loss, rel(r.losses[i], ref.losses[i]));
  std::map<std::string, const Tensor*> full;
  for (const models::Parameter& p : ref.params) full[p.name] = &p.value;
  for (const models::Parameter& p : r.params) d.param = std::max(d.param, shard_error(p, *full.at(p.name)));
  return d;
}

}  // namespace polder::testing::parity
