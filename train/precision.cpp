// train.precision auto (train/config.h): kept out of config.cpp so that the config parser stays free of the
// kernels (the fuzz target compiles config.cpp alone).
#include "core/error.h"
#include "kernels/cpu/isa.h"
#include "train/config.h"

namespace polder {

std::string resolve_auto_precision(TrainConfig& t) {
  if (t.precision != "auto") return "";
  if (t.device == "cuda") {
    t.precision = "bf16";
    return "train.precision auto: bf16 (GPU)";
  }
  if (kernels::cpu::cpu_native_bf16()) {
    t.precision = "bf16";
    return format("train.precision auto: bf16 (this CPU has native bf16 dot products: {})",
                  kernels::cpu::cpu_isa_describe());
  }
  t.precision = "f32";
  return format(
      "train.precision auto: f32 (no native bf16 dot products on this CPU: {}; bf16 would run as "
      "f32 GEMMs plus conversions)",
      kernels::cpu::cpu_isa_describe());
}

}  // namespace polder
