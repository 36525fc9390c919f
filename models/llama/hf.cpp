// The Hugging Face mapping of the Llama family: config.json keys of transformers 4 and 5, the architecture
// rules (which biases each architecture has, sliding windows refused) and the tensor names.
#include "models/llama/hf.h"

#include "core/error.h"
#include "models/llama/model.h"

namespace polder::models {

namespace {

int64_t get_int(const nlohmann::json& hf, const char* key) {
  POLDER_CHECK(hf.contains(key) && hf[key].is_number_integer(), "convert: config.json has no integer '{}'",
               key);
  return hf[key].get<int64_t>();
}

template <typename T>
T get_or(const nlohmann::json& hf, const char* key, T fallback) {
  return hf.contains(key) && !hf[key].is_null() ? hf[key].get<T>() : fallback;
}

// Qwen2's sliding window applies to layers >= max_window_layers when use_sliding_window is true
// (transformers 5 also writes the result as layer_types). polder attends over the full causal context, so a
// window in use is refused; the keys Qwen2 checkpoints carry with use_sliding_window false are fine.
void check_qwen2_window(const nlohmann::json& hf) {
  const int64_t layers = get_int(hf, "num_hidden_layers");
  if (hf.contains("layer_types") && hf["layer_types"].is_array())
    for (size_t i = 0; i < hf["layer_types"].size(); ++i)
      POLDER_CHECK(
          hf["layer_types"][i] != "sliding_attention",
          "convert: Qwen2ForCausalLM with layer_types[{}] 'sliding_attention' is not supported (polder "
          "has full attention only)",
          i);
  const bool use = get_or<bool>(hf, "use_sliding_window", false);
  const bool window = hf.contains("sliding_window") && !hf["sliding_window"].is_null();
  const int64_t from = get_or<int64_t>(hf, "max_window_layers", layers);
  POLDER_CHECK(
      !use || !window || from >= layers,
      "convert: Qwen2ForCausalLM with a sliding window in use (use_sliding_window true, sliding_window "
      "{}, max_window_layers {} of {} layers) is not supported (polder has full attention only)",
      window ? hf["sliding_window"].dump() : "null", from, layers);
}

}  // namespace

std::string hf_architecture(const nlohmann::json& hf) {
  POLDER_CHECK(hf.is_object(), "convert: config.json is not a JSON object");
  if (hf.contains("architectures") && hf["architectures"].is_array() && !hf["architectures"].empty() &&
      hf["architectures"][0].is_string())
    return hf["architectures"][0].get<std::string>();
  const std::string type = get_or<std::string>(hf, "model_type", "");
  for (auto [t, arch] :
       {std::pair<const char*, const char*>{"llama", kHfLlama}, {"mistral", kHfMistral}, {"qwen2", kHfQwen2}})
    if (type == t) return arch;
  return type.empty() ? "(none)" : type;
}

ModelConfig hf_config_to_model(const nlohmann::json& hf) {
  const std::string arch = hf_architecture(hf);
  POLDER_CHECK(arch == kHfLlama || arch == kHfMistral || arch == kHfQwen2,
               "convert: architecture '{}' is not supported ({}, {}, {})", arch, kHfLlama, kHfMistral,
               kHfQwen2);
  if (arch == kHfMistral)
    POLDER_CHECK(
        !hf.contains("sliding_window") || hf["sliding_window"].is_null(),
        "convert: MistralForCausalLM with sliding_window {} is not supported (only null: full attention)",
        hf["sliding_window"].dump());
  if (arch == kHfQwen2) check_qwen2_window(hf);
  const std::string act = get_or<std::string>(hf, "hidden_act", "silu");
  POLDER_CHECK(act == "silu", "convert: hidden_act '{}' is not supported (silu)", act);
  POLDER_CHECK(!get_or<bool>(hf, "mlp_bias", false),
               "convert: mlp_bias true is not supported (polder's MLP has no biases)");

  ModelConfig m;
  // Llama's attention_bias puts biases on q, k, v and o_proj; Qwen2 always has them on q, k, v only;
  // Mistral never (its config has no such key).
  const bool llama_bias = arch == kHfLlama && get_or<bool>(hf, "attention_bias", false);
  m.qkv_bias = llama_bias || arch == kHfQwen2;
  m.o_proj_bias = llama_bias;
  m.vocab_size = get_int(hf, "vocab_size");
  m.hidden_size = get_int(hf, "hidden_size");
  m.intermediate_size = get_int(hf, "intermediate_size");
  m.num_layers = get_int(hf, "num_hidden_layers");
  m.num_heads = get_int(hf, "num_attention_heads");
  m.num_kv_heads = get_or<int64_t>(hf, "num_key_value_heads", m.num_heads);
  const int64_t head_dim = get_or<int64_t>(hf, "head_dim", 0);
  m.head_dim = head_dim != 0 && m.num_heads > 0 && head_dim * m.num_heads != m.hidden_size ? head_dim : 0;
  m.max_seq_len = get_or<int64_t>(hf, "max_position_embeddings", 2048);
  m.rms_norm_eps = get_or<double>(hf, "rms_norm_eps", 1e-6);
  m.tie_embeddings = get_or<bool>(hf, "tie_word_embeddings", false);
  m.init_std = get_or<double>(hf, "initializer_range", 0.02);

  // transformers 5: rope_parameters {rope_theta, rope_type, ...}; 4: rope_theta and rope_scaling
  // {type|rope_type}.
  nlohmann::json rope = nlohmann::json::object();
  if (hf.contains("rope_parameters") && hf["rope_parameters"].is_object()) {
    rope = hf["rope_parameters"];
    m.rope_theta = get_or<double>(rope, "rope_theta", get_or<double>(hf, "rope_theta", 10000.0));
  } else {
    m.rope_theta = get_or<double>(hf, "rope_theta", 10000.0);
    if (hf.contains("rope_scaling") && hf["rope_scaling"].is_object()) rope = hf["rope_scaling"];
  }
  const std::string type =
      get_or<std::string>(rope, "rope_type", get_or<std::string>(rope, "type", "default"));
  POLDER_CHECK(type == "default" || type == "llama3",
               "convert: rope type '{}' is not supported (default, llama3)", type);
  if (type == "llama3") {
    for (const char* key :
         {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
      POLDER_CHECK(rope.contains(key) && rope[key].is_number(),
                   "convert: llama3 rope scaling has no number '{}'", key);
    m.rope_scaling_type = "llama3";
    m.rope_scaling_factor = rope["factor"].get<double>();
    m.rope_low_freq_factor = rope["low_freq_factor"].get<double>();
    m.rope_high_freq_factor = rope["high_freq_factor"].get<double>();
    m.rope_original_max_position = rope["original_max_position_embeddings"].get<int64_t>();
  }
  return m;
}

std::string export_architecture(const ModelConfig& m, const std::string& architecture) {
  const std::string arch =
      !architecture.empty() ? architecture : (m.qkv_bias && !m.o_proj_bias ? kHfQwen2 : kHfLlama);
  const auto biases = [&] { return format("qkv_bias {}, o_proj_bias {}", m.qkv_bias, m.o_proj_bias); };
  if (arch == kHfLlama)
    POLDER_CHECK(
        m.qkv_bias == m.o_proj_bias,
        "convert: LlamaForCausalLM has biases on q, k, v and o_proj or on none, but the model has {}",
        biases());
  else if (arch == kHfMistral)
    POLDER_CHECK(!m.qkv_bias && !m.o_proj_bias,
                 "convert: MistralForCausalLM has no biases, but the model has {}", biases());
  else if (arch == kHfQwen2)
    POLDER_CHECK(m.qkv_bias && !m.o_proj_bias,
                 "convert: Qwen2ForCausalLM has biases on q, k, v only, but the model has {}", biases());
  else
    POLDER_FAIL("convert: architecture '{}' cannot be exported ({}, {}, {})", arch, kHfLlama, kHfMistral,
                kHfQwen2);
  return arch;
}

nlohmann::json model_to_hf_config(const ModelConfig& m, const HfConfigOptions& options) {
  const DType dtype = options.dtype;
  POLDER_CHECK(dtype == DType::f32 || dtype == DType::bf16,
               "convert: output dtype {} is not supported (f32, bf16)", dtype);
  const std::string arch = export_architecture(m, options.architecture);
  const int64_t head_dim = m.head_dim ? m.head_dim : m.hidden_size / m.num_heads;
  nlohmann::ordered_json j;
  j["architectures"] = {arch};
  j["model_type"] = arch == kHfLlama ? "llama" : arch == kHfMistral ? "mistral" : "qwen2";
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.hidden_size;
  j["intermediate_size"] = m.intermediate_size;
  j["num_hidden_layers"] = m.num_layers;
  j["num_attention_heads"] = m.num_heads;
  j["num_key_value_heads"] = m.num_kv_heads ? m.num_kv_heads : m.num_heads;
  j["head_dim"] = head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = m.max_seq_len;
  j["initializer_range"] = m.init_std;
  j["rms_norm_eps"] = m.rms_norm_eps;
  j["rope_theta"] = m.rope_theta;
  if (m.rope_scaling_type == "llama3")
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", m.rope_scaling_factor},
                         {"low_freq_factor", m.rope_low_freq_factor},
                         {"high_freq_factor", m.rope_high_freq_factor},
                         {"original_max_position_embeddings", m.rope_original_max_position}};
  else
    j["rope_scaling"] = nullptr;
  j["attention_dropout"] = 0.0;
  if (arch == kHfLlama) {
    j["attention_bias"] = m.qkv_bias;
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  } else {
    j["sliding_window"] = nullptr;
  }
  if (arch == kHfQwen2) {
    j["use_sliding_window"] = false;
    j["max_window_layers"] = m.num_layers;
  }
  if (options.bos_token_id) j["bos_token_id"] = *options.bos_token_id;
  const std::vector<int64_t>& eos = options.eos_token_ids;
  if (!eos.empty()) j["eos_token_id"] = eos.size() == 1 ? nlohmann::json(eos[0]) : nlohmann::json(eos);
  j["tie_word_embeddings"] = m.tie_embeddings;
  j["torch_dtype"] = dtype == DType::bf16 ? "bfloat16" : "float32";
  j["use_cache"] = true;
  return nlohmann::json(j);
}

std::vector<HfTensor> hf_tensors(const ModelConfig& model) {
  std::vector<HfTensor> out;
  for (auto& [name, shape] : llama_parameter_shapes(model)) out.push_back({name, name, shape});
  return out;
}

bool hf_tensor_ignored(const ModelConfig& model, const std::string& hf_name) {
  return hf_name.find("rotary_emb.inv_freq") != std::string::npos ||
         (model.tie_embeddings && hf_name == "lm_head.weight");
}

std::optional<std::pair<std::string, std::string>> hf_tied_copy(const ModelConfig& model) {
  if (!model.tie_embeddings) return std::nullopt;
  return std::pair<std::string, std::string>{"lm_head.weight", "model.embed_tokens.weight"};
}

}  // namespace polder::models
