// libFuzzer target: the YAML config loader. Any input either parses into a valid Config or throws one
// polder::Error; a Config that parsed must survive config_to_yaml -> parse_config unchanged.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "train/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  polder::Config config;
  try {
    config = polder::parse_config(text, {}, "fuzz.yaml");
  } catch (const polder::Error&) {
    return 0;
  }
  const polder::Config back = polder::parse_config(polder::config_to_yaml(config), {}, "<emitted>");
  if (!(back == config)) std::abort();  // the round trip lost or changed a value
  return 0;
}
