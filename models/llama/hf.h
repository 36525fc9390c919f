// The Hugging Face mapping of the Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM):
// config.json <-> ModelConfig, which architecture a model exports as, and the tensors of its safetensors
// files. No file I/O: train/convert.cpp streams the files and calls these. polder names its parameters after
// HF's and RoPE uses HF's rotate_half convention, so tensors map one to one without permutation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/tensor.h"
#include "models/config.h"

namespace polder::models {

inline constexpr const char* kHfLlama = "LlamaForCausalLM";
inline constexpr const char* kHfMistral = "MistralForCausalLM";
inline constexpr const char* kHfQwen2 = "Qwen2ForCausalLM";

// The architecture of a config.json: "architectures"[0], else from "model_type" (llama, mistral, qwen2).
std::string hf_architecture(const nlohmann::json& hf);
// config.json of LlamaForCausalLM (attention_bias: q/k/v/o biases), MistralForCausalLM (sliding_window null)
// or Qwen2ForCausalLM (q/k/v biases; no sliding window in use) -> ModelConfig. Reads both the transformers 4
// keys (rope_theta, rope_scaling) and the 5 ones (rope_parameters). Unsupported architecture, rope type,
// activation, biases or sliding window: one polder::Error naming the value.
ModelConfig hf_config_to_model(const nlohmann::json& hf);
// The architecture export writes: the imported one; for a polder-trained model (architecture "")
// LlamaForCausalLM, or Qwen2ForCausalLM when only q/k/v have biases (Llama's attention_bias covers o_proj
// too). polder::Error when the model's biases do not fit the architecture.
std::string export_architecture(const ModelConfig& model, const std::string& architecture);

struct HfConfigOptions {
  DType dtype = DType::f32;             // torch_dtype: f32 or bf16
  std::string architecture = kHfLlama;  // export_architecture's rules apply
  std::optional<int64_t> bos_token_id;  // written when known
  std::vector<int64_t> eos_token_ids;   // written when known (an int when there is one)
};
// ModelConfig -> config.json of options.architecture (transformers 4 keys, which transformers 5 also reads).
nlohmann::json model_to_hf_config(const ModelConfig& model, const HfConfigOptions& options = {});

// One tensor of the HF checkpoint of a model and the polder parameter it holds.
struct HfTensor {
  std::string hf_name;
  std::string name;  // polder's parameter name
  Shape shape;
};
// The tensors HF's model.safetensors holds for `model`, in polder's parameter order (lm_head.weight only when
// the embedding is not tied).
std::vector<HfTensor> hf_tensors(const ModelConfig& model);
// Tensors an HF file may hold that import does not read: buffers older transformers versions saved
// (rotary_emb.inv_freq) and, for a tied model, the saved copy of the head (see hf_tied_copy).
bool hf_tensor_ignored(const ModelConfig& model, const std::string& hf_name);
// For a tied model: the HF name of the head a file may still hold and that of the embedding it must equal.
std::optional<std::pair<std::string, std::string>> hf_tied_copy(const ModelConfig& model);

}  // namespace polder::models
