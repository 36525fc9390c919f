// The step profile (`train.profile: true`, issue 25): wall time per op kind and direction (forward,
// backward, evaluation), exclusive of nested scopes, with GEMM FLOPs for their achieved rate. Kernels are
// timed where they are dispatched (core/dispatch.h: every CPU kernel call of an op), communication in the MPI
// backend, and the trainer adds its own phases (data, gradient reduction, optimizer, pipeline transfers).
// Disabled by default, and then one predictable branch per kernel call. Host wall time: on a GPU it is the
// launch time, not the kernels' (the trainer says so).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace polder::profile {

bool enabled();
void set_enabled(bool on);
void reset();

// Times its lifetime under `kind` (a string literal), minus the time of scopes opened inside it.
class Scope {
 public:
  explicit Scope(const char* kind);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  bool on_;
};

// FLOPs of the next scope this thread opens (the GEMM a caller is about to dispatch).
void next_flops(double flops);

// Marks this thread as running backward (autograd::backward) or evaluation while alive.
class DirectionGuard {
 public:
  enum Direction { forward = 0, backward = 1, evaluation = 2, step = 3 };  // step: outside forward/backward
  explicit DirectionGuard(Direction d);
  ~DirectionGuard();
  DirectionGuard(const DirectionGuard&) = delete;
  DirectionGuard& operator=(const DirectionGuard&) = delete;

 private:
  int prev_;
};

// The kind a kernel's dispatch name belongs to: GEMM, attention, norm, softmax/cross-entropy, embedding,
// RoPE, optimizer, elementwise (everything else).
const char* kind_of_kernel(const char* kernel);

struct Row {
  std::string kind, direction;
  double seconds = 0;
  int64_t calls = 0;
  double flops = 0;
};
std::vector<Row> rows();  // sorted by seconds, largest first
// Wall time of the profiled steps (the trainer's step loop after the first step, logging included,
// validation and checkpoint writes left out); the report's 100%.
void add_step_seconds(double s);
double step_seconds();
// The table the trainer prints and writes: kind, direction, seconds per step, share of the step, calls per
// step, GFLOP/s; the remainder of the step as "other (framework, waits)".
std::string report(int64_t steps);
std::string report_json(int64_t steps);

}  // namespace polder::profile
