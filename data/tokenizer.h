// Hugging Face tokenizer.json compatible tokenizers: byte-level BPE (GPT-2 ByteLevel or a Split regex such as
// Llama-3's) and SentencePiece-style BPE (Metaspace / Prepend+Replace, byte fallback). encode/decode give the
// same ids and text as the `tokenizers` library. The implementation lives behind a pimpl so this header is
// light.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace polder::data {

class Tokenizer {
 public:
  // Parse an HF tokenizer.json. A bad file or an unsupported component throws polder::Error with one clear
  // line.
  static Tokenizer from_file(const std::string& path);
  static Tokenizer from_json(const std::string& json_text);

  Tokenizer(const Tokenizer& other);
  Tokenizer& operator=(const Tokenizer& other);
  Tokenizer(Tokenizer&& other) noexcept;
  Tokenizer& operator=(Tokenizer&& other) noexcept;
  ~Tokenizer();

  // Thread-safe (const): several threads may encode with one Tokenizer. Invalid UTF-8 in `text` is replaced
  // by U+FFFD first (HF only ever sees valid UTF-8). add_special_tokens applies the post-processor (e.g.
  // BOS).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  int64_t vocab_size() const;  // including added tokens (max id + 1)
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // "" for an id that has no token
  // End-of-text id: <|end_of_text|>, <|endoftext|>, </s> (the first that exists); polder::Error if none.
  int32_t eos_id() const;
  std::string to_json() const;  // the tokenizer.json text

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;  // immutable after construction, so copies share it
};

}  // namespace polder::data
