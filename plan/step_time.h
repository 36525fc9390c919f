// Step time of a training layout on a cluster: per pipeline stage and micro-batch, GEMM and attention time
// from their FLOPs at the calibrated throughputs, memory-bound ops from their bytes at the calibrated
// bandwidth, tensor-parallel and pipeline messages from an alpha-beta model on the link their group uses;
// then the 1F1B (or interleaved) schedule with its bubble, the data-parallel gradient reduction (overlapped
// with the last micro-batch's backward where polder overlaps it), the optimizer, and the scalar all-reduces.
// What polder does today, not what it could do: tensor-parallel communication is not overlapped, ZeRO
// reductions are not either.
#pragma once

#include "plan/calibration.h"
#include "plan/cluster.h"
#include "plan/comm.h"
#include "train/config.h"

namespace polder::plan {

// Which link a group's messages take: ranks are laid out tp fastest, then dp, then pp (parallel/mesh.h), so a
// group stays inside a node when the ranks it spans fit in one.
const Link& group_link(const Cluster& cluster, const Config& config, CommGroup group);
// Seconds for `op`'s `count` calls on `link` at `efficiency` of its bandwidth B:
//   ring all-reduce                 2(p-1) alpha + 2(p-1)/p n / B
//   reduce-scatter and all-gather   (p-1) alpha + (p-1)/p n / B
//   send                            alpha + n / B
double op_seconds(const CommOp& op, const Link& link, double efficiency);

struct StepTime {
  // Per step on the slowest stage (all micro-batches), seconds.
  double gemm = 0, attention = 0, memory_bound = 0;  // compute
  double tp_comm = 0, pp_comm = 0;                   // exposed inside the micro-batches
  double dp_in_backward = 0;                         // ZeRO-2's reduce-scatters inside each backward
  double bubble = 0;                                 // pipeline fill and drain
  // The data-parallel reduction after the micro-batches: all of it, and what the last backward does not hide.
  double dp_comm = 0, dp_exposed = 0;
  double optimizer = 0;   // AdamW, gradient zeroing, norm and clipping
  double other_comm = 0;  // tied embedding, sp norm gradients, scalars
  double total = 0;
  int64_t slowest_stage = 0;
};

StepTime predict_step_time(const Config& config, const Cluster& cluster, const Calibration& calibration);

}  // namespace polder::plan
