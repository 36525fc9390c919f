// Checkpoint conversion: Hugging Face Llama/Mistral/Qwen2 folders <-> polder checkpoints, and offline
// resharding of a polder checkpoint into another (tp, pp) layout. Everything streams tensor by tensor (mapped
// reads, a writer that emits the safetensors header first), so peak memory stays near the largest tensor, not
// the model. What is specific to the model (config.json keys, architectures, tensor names) is in
// models/llama/hf.h; this file holds the files, the special tokens and the checkpoint side.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "models/llama/hf.h"
#include "train/config.h"

namespace polder::data {
class Tokenizer;
}

namespace polder::train {

// What a checkpoint keeps of the HF folder it came from, in metadata.json under state.hf (imports write it,
// the trainer carries it into every later checkpoint, reshard copies it): the architecture export writes
// back, and the special tokens that generate stops at and export writes into generation_config.json.
struct HfInfo {
  std::string architecture;             // "" (trained by polder): see export_architecture
  std::optional<int64_t> bos_token_id;  // none: no file defines one
  std::vector<int64_t> eos_token_ids;   // empty: no file defines one (then guessed by name where needed)
  std::string bos_from, eos_from;       // the file that defined each, for messages

  nlohmann::json to_json() const;
  static HfInfo from_json(const nlohmann::json& j);  // {} or null: nothing known
  bool operator==(const HfInfo&) const = default;
};

// The Llama-family mapping (config.json <-> ModelConfig, architectures, tensor names) lives with the model in
// models/llama/hf.h; these names keep the conversion API in one namespace.
using models::export_architecture;
using models::hf_architecture;
using models::hf_config_to_model;

// BOS and EOS ids of an HF folder, from the first file that defines each: generation_config.json (what
// transformers' generate uses; eos_token_id an int or a list), config.json, then tokenizer_config.json
// (bos_token / eos_token, a string or {"content": ...}, looked up in tokenizer.json). Ids outside
// [0, vocab_size) are an error naming the file. Fills bos/eos fields of the result only.
HfInfo hf_special_tokens(const std::string& hf_dir, int64_t vocab_size);
// A checkpoint's state.hf (metadata.json as read_checkpoint_metadata / load_checkpoint return it).
HfInfo checkpoint_hf_info(const nlohmann::json& meta);
// The ids `polder generate` stops at: the recorded EOS ids; when none are recorded, tok.eos_id() guessed by
// name (the token polder's data preparation ends documents with) and `note` says which; when that fails too,
// none, and `note` says so. `note` is empty when the ids were recorded.
std::vector<int32_t> generation_stop_ids(const HfInfo& info, const data::Tokenizer& tok, std::string& note);

struct ImportOptions {
  std::string config;                  // a run YAML for the non-model sections (empty: placeholders)
  std::vector<std::string> overrides;  // --set a.b=c applied to it
};

// HF folder -> polder checkpoint directory `ckpt_dir` (step 0, layout tp = pp = 1, zero Adam moments),
// loadable by load_checkpoint / polder eval / polder generate. Copies tokenizer.json (and points
// data.tokenizer at the copy unless the run config names one); records HfInfo (architecture, BOS/EOS) in
// state.hf. Returns ckpt_dir.
std::string import_hf(const std::string& hf_dir, const std::string& ckpt_dir,
                      const ImportOptions& options = {});

// polder checkpoint (any layout; a checkpoints folder means its latest) -> HF folder: config.json (the
// imported architecture), generation_config.json (bos/eos ids), model.safetensors in out_dtype (f32 or bf16;
// lm_head omitted when tied), tokenizer.json (from the run's data.tokenizer, when that file exists) and
// tokenizer_config.json. With no EOS recorded, it is guessed by name from the tokenizer (Tokenizer::eos_id,
// the token polder's data preparation ends documents with). Returns a line saying what was guessed, or "".
std::string export_hf(const std::string& checkpoint, const std::string& hf_dir, DType out_dtype = DType::f32);

// Rewrites a checkpoint (weights, Adam moments, step, state) into layout (tp, pp) at `out`. Returns out.
std::string reshard(const std::string& checkpoint, const std::string& out, int64_t tp, int64_t pp);

}  // namespace polder::train
