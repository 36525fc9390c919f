// Internal helpers shared by the tokenizer and the BPE trainer: UTF-8 utilities, the GPT-2 byte<->unicode
// table, and a PCRE2 regex (UTF + UCP, JIT) that lists matches the way HF's onig-backed Regex does.
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace polder::data::bpe {

// Pre-tokenizer patterns of GPT-2 (ByteLevel use_regex=true) and Llama 3 (Split, Isolated).
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Length in bytes of the UTF-8 sequence starting with lead byte c (1 for invalid leads).
inline int utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;
}

void append_utf8(std::string& out, uint32_t cp);
// Decodes one code point at s[i] (valid UTF-8 assumed), advancing i.
uint32_t next_codepoint(std::string_view s, size_t& i);
// Lossy UTF-8 conversion as Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);
bool is_valid_utf8(std::string_view bytes);
// Unicode White_Space (what Rust's char::is_whitespace tests).
bool is_unicode_whitespace(uint32_t cp);

// GPT-2's reversible byte -> printable code point map, as UTF-8 strings, and its inverse.
struct ByteLevelTable {
  std::array<std::string, 256> byte_to_str;
  std::array<uint32_t, 256> byte_to_cp;
  // order[i] = the byte whose mapped char has the i-th rank in GPT-2's vocabulary order.
  std::array<uint8_t, 256> order;
  int32_t cp_to_byte(uint32_t cp) const;  // -1 if cp is not in the table
};
const ByteLevelTable& byte_level_table();
std::string byte_level_encode(std::string_view bytes);

// A compiled regex; immutable and shareable across threads (match data is per call).
class Regex {
 public:
  explicit Regex(const std::string& pattern);
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex();
  // Non-overlapping leftmost matches [start, end) in text (valid UTF-8); empty matches are skipped.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

}  // namespace polder::data::bpe
