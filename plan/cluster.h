// A cluster for the planner (configs/clusters/*.yaml): nodes of identical GPUs, the links between them, and
// the power figures behind the energy estimate. Every key is required except where a default is named;
// unknown keys are an error (a misspelt key would otherwise silently keep a default).
#pragma once

#include <string>

namespace polder::plan {

struct Link {
  double bandwidth_gbs = 0;  // GB/s per GPU and direction
  double latency_us = 0;     // one message's latency (the alpha of the alpha-beta model)
};

struct Cluster {
  std::string name;
  int64_t gpus_per_node = 0;
  std::string gpu_name;
  double peak_tflops = 0;   // dense bf16 peak of one GPU
  double hbm_gib = 0;       // memory one GPU has for polder
  double hbm_gbs = 0;       // HBM bandwidth (spec sheet)
  double tdp_w = 0;         // GPU power limit
  double gpu_power_w = 0;   // average GPU power under training load
  double node_power_w = 0;  // the rest of a node (CPUs, memory, NICs, switches, fans) under load
  double pue = 1.0;         // facility overhead (default 1: IT energy only)
  Link intra, inter;        // within a node (NVLink), between nodes (InfiniBand)
  // Defaults for what a GPU adds to the tensors (plan/memory.h GpuOverheads), overridable in the file.
  double context_gib = 0.75;         // CUDA context and library handles
  double cublas_workspace_mib = 32;  // per stream
  double nccl_mib_per_comm = 256;    // NCCL buffers per communicator
  double allocator_slack = 0.05;     // of the activation peak
};

// Reads and validates a cluster file; polder::Error naming the file, the key and the expected value.
Cluster load_cluster(const std::string& path);
Cluster parse_cluster(const std::string& yaml_text, const std::string& origin = "<string>");

}  // namespace polder::plan
