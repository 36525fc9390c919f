// Checkpoint conversion: Hugging Face Llama folders <-> polder checkpoints, and offline resharding of a
// polder checkpoint into another (tp, pp) layout. Everything streams tensor by tensor (mapped reads, a writer
// that emits the safetensors header first), so peak memory stays near the largest tensor, not the model.
// polder's parameter names are the HF names and RoPE uses HF's rotate_half convention: no permutation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "train/config.h"

namespace polder::train {

// config.json of LlamaForCausalLM / MistralForCausalLM (sliding_window null) -> ModelConfig. Reads both the
// transformers 4 keys (rope_theta, rope_scaling) and the 5 ones (rope_parameters). Unsupported architecture,
// rope type, activation or biases: one polder::Error naming the value.
ModelConfig hf_config_to_model(const nlohmann::json& hf);
// ModelConfig -> config.json (LlamaForCausalLM, transformers 4 keys, which transformers 5 also reads).
nlohmann::json model_to_hf_config(const ModelConfig& model, DType dtype = DType::f32);

struct ImportOptions {
  std::string config;                  // a run YAML for the non-model sections (empty: placeholders)
  std::vector<std::string> overrides;  // --set a.b=c applied to it
};

// HF folder -> polder checkpoint directory `ckpt_dir` (step 0, layout tp = pp = 1, zero Adam moments),
// loadable by load_checkpoint / polder eval / polder generate. Copies tokenizer.json (and points
// data.tokenizer at the copy unless the run config names one). Returns ckpt_dir.
std::string import_hf(const std::string& hf_dir, const std::string& ckpt_dir,
                      const ImportOptions& options = {});

// polder checkpoint (any layout; a checkpoints folder means its latest) -> HF folder: config.json,
// generation_config.json, model.safetensors in out_dtype (f32 or bf16; lm_head omitted when tied),
// tokenizer.json (from the run's data.tokenizer, when that file exists) and tokenizer_config.json.
void export_hf(const std::string& checkpoint, const std::string& hf_dir, DType out_dtype = DType::f32);

// Rewrites a checkpoint (weights, Adam moments, step, state) into layout (tp, pp) at `out`. Returns out.
std::string reshard(const std::string& checkpoint, const std::string& out, int64_t tp, int64_t pp);

}  // namespace polder::train
