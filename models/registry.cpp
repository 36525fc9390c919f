// The model families polder trains. Llama is the only one today (Mistral and Qwen2 imports are Llama-family
// configs); a new family implements models::Model in its own folder and adds its case here.
#include "models/llama/model.h"

namespace polder::models {

std::unique_ptr<Model> make_model(const ModelConfig& config, DType dtype, const ParallelLayout& layout,
                                  Device device) {
  return std::make_unique<Llama>(config, dtype, layout, device);
}

int64_t model_flat_size(const ModelConfig& config, const ParallelLayout& layout) {
  return Llama::flat_size(config, layout);
}

std::vector<std::pair<std::string, Shape>> model_parameter_shapes(const ModelConfig& config) {
  return llama_parameter_shapes(config);
}

int64_t model_parameter_count(const ModelConfig& config) {
  return llama_parameter_count(config);
}

}  // namespace polder::models
