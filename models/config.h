// The model's architecture: what a model is, independent of how it is trained. Lives with the models (the
// `model:` section of the run config, train/config.h, is this struct; HF import fills it from config.json).
#pragma once

#include <cstdint>
#include <string>

namespace polder {

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // 0: equal to num_heads
  int64_t head_dim = 0;      // 0: hidden_size / num_heads
  int64_t max_seq_len = 2048;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  bool tie_embeddings = false;
  // Attention biases (imported models): qkv_bias adds q/k/v projection biases (Qwen2; HF Llama's
  // attention_bias), o_proj_bias an o_proj bias (HF Llama's attention_bias). Biases start at zero, no decay.
  bool qkv_bias = false;
  bool o_proj_bias = false;
  double init_std = 0.02;
  // RoPE frequency scaling: "none" or "llama3" (Llama 3.1: low frequencies divided by the factor, a smooth
  // blend between the low_freq and high_freq wavelengths; see ops::RopeScaling).
  std::string rope_scaling_type = "none";
  double rope_scaling_factor = 8.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t rope_original_max_position = 8192;
  // Attention on the GPU (train.device cuda): "cudnn" (cuDNN SDPA, else the baseline kernel), "auto"
  // (measured once per shape, see kernels/attention.h), "polder" (own flash kernel) or "baseline"; GEMMs:
  // "cublaslt", "auto" (the own kernel where measured correct and faster) or "polder" (kernels/gemm.h).
  // Ignored on the CPU. The libraries are the defaults until polder's own kernels have passed
  // scripts/gpu/check.sh on a GPU: auto runs them inside its first-call measurement, where a fault would
  // poison the CUDA context.
  std::string attention_impl = "cudnn";
  std::string gemm_impl = "cublaslt";

  bool operator==(const ModelConfig&) const = default;
};

}  // namespace polder
