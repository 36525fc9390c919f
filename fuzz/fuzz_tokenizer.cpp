// libFuzzer target: the HF tokenizer.json loader. Any input either loads or throws one polder::Error; a
// loaded tokenizer then encodes (part of) the input as text and decodes the ids, which must not crash either.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    polder::data::Tokenizer tok = polder::data::Tokenizer::from_json(text);
    const std::vector<int32_t> ids = tok.encode(std::string_view(text).substr(0, 256), true);
    tok.decode(ids, false);
    tok.decode(ids, true);
  } catch (const polder::Error&) {
  }
  return 0;
}
