// Memory per process of a training run, predicted from the config alone: the buffers polder allocates (flat
// parameters and gradients, AdamW state, RoPE tables) and the peak of the activations and temporaries of a
// train_step(), derived op by op from what each op saves for backward (core/ops*.cpp, parallel/tp_ops.cpp)
// and when the trainer and the autograd engine free it. The CPU prediction is the peak of
// polder::memory::stats (live Storage bytes); tests/test_plan.cpp and tests/test_mpi_plan.cpp measure it.
// On a GPU the same tensors are allocated (in bf16), plus what only a GPU has: GpuOverheads.
#pragma once

#include <cstdint>
#include <string>

#include "train/config.h"

namespace polder::plan {

// What a GPU adds on top of the tensors: none of it is measured yet (no GPU run of the trainer exists), so
// every number is a documented estimate (docs/scale.md) that a cluster file can override.
struct GpuOverheads {
  double context_bytes = 0;           // CUDA context, cuBLAS/cuDNN handles and kernels: outside the allocator
  double cublas_workspace_bytes = 0;  // cuBLASLt workspace per stream (core/cuda_context: 32 MiB)
  double nccl_bytes_per_comm = 0;     // NCCL channel buffers per communicator this rank belongs to
  double allocator_slack = 0;         // fraction of the activation peak lost to pool fragmentation
};

struct MemoryBreakdown {
  double weights = 0;       // flat parameter buffer (model dtype), padding included
  double gradients = 0;     // flat gradient buffer (f32): all of it, or the ZeRO-2 shard
  double optimizer = 0;     // AdamW: two f32 moments and (bf16 models) f32 master weights of the owned range
  double other = 0;         // RoPE cos/sin tables
  double activations = 0;   // peak of activations and temporaries of a step above the persistent state
  double comm_buffers = 0;  // GPU: NCCL buffers
  double workspace = 0;     // GPU: CUDA context and cuBLAS workspace
  double slack = 0;         // GPU: allocator fragmentation
  int64_t stage = 0;        // pipeline stage of this breakdown
  std::string peak_at;      // where in the step the activation peak falls
  double persistent() const { return weights + gradients + optimizer + other; }
  // What polder's allocator holds at the peak (the CPU check compares this with memory::stats().peak).
  double allocated_peak() const { return persistent() + activations; }
  double total() const { return allocated_peak() + comm_buffers + workspace + slack; }
};

// The breakdown of pipeline stage `stage` (tp rank 0; the tp ranks differ only by vocabulary padding) for
// config.parallel (dp must be set, not 0) and config.train (precision, micro_batch, recompute). With `gpu`,
// adds its overheads; without, the result is what the CPU trainer allocates.
MemoryBreakdown predict_memory(const Config& config, int64_t stage, const GpuOverheads* gpu = nullptr);
// The stage with the largest total.
MemoryBreakdown predict_memory_max(const Config& config, const GpuOverheads* gpu = nullptr);

}  // namespace polder::plan
