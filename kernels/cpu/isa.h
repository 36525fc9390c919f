// The instruction-set level of polder's own hot CPU loops, chosen once per process: the best the CPU has
// (AVX-512 = x86-64-v4, AVX2+FMA = x86-64-v3, or the x86-64 baseline), lowered by POLDER_CPU_ISA
// (baseline | avx2 | avx512 | best) so that one machine can run and test every path. The same variable caps
// oneDNN (kernels/cpu/gemm.cpp) unless ONEDNN_MAX_CPU_ISA is set. The build never uses -march=native.
//
// A hot kernel file compiles its ISA section once per level (kernels/cpu/isa_passes.h, in namespaces
// isa_baseline / isa_avx2 / isa_avx512 under `#pragma GCC target`, OpenMP bodies included) and its public
// functions forward with POLDER_ISA_CALL. Unlike GCC target_clones (an ifunc resolved by the loader before
// main), the choice can be made from the environment.
#pragma once

#include <string>

namespace polder::kernels::cpu {

enum class CpuIsa { baseline = 0, avx2 = 1, avx512 = 2 };

// The level the kernels run at. The first call reads POLDER_CPU_ISA and throws std::invalid_argument naming
// the value when it is unknown or above what this CPU supports.
CpuIsa cpu_isa();
// The best level this CPU supports (baseline on non-x86 builds and on compilers without the ISA passes).
CpuIsa cpu_isa_supported();
const char* cpu_isa_name(CpuIsa isa);
// One line for logs: "avx512 (CPU: avx512; oneDNN: avx512_core_bf16)".
std::string cpu_isa_describe();
// Whether bf16 GEMMs run natively (oneDNN's effective ISA, after POLDER_CPU_ISA's cap, has AVX512-BF16 or
// AMX kernels); false without oneDNN. train.precision auto picks bf16 on the CPU only then.
bool cpu_native_bf16();
// Applies POLDER_CPU_ISA to oneDNN (dnnl::set_max_cpu_isa); kernels/cpu/gemm.cpp calls it before its first
// oneDNN call, since oneDNN accepts the cap only then. No effect when ONEDNN_MAX_CPU_ISA is set.
void cap_onednn_isa();

}  // namespace polder::kernels::cpu

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define POLDER_ISA_PASSES 1
// Forwards to fn in the namespace of the chosen level; template arguments are deduced from the call's.
#define POLDER_ISA_CALL(fn, ...)                   \
  switch (::polder::kernels::cpu::cpu_isa()) {     \
    case ::polder::kernels::cpu::CpuIsa::avx512:   \
      return isa_avx512::fn(__VA_ARGS__);          \
    case ::polder::kernels::cpu::CpuIsa::avx2:     \
      return isa_avx2::fn(__VA_ARGS__);            \
    case ::polder::kernels::cpu::CpuIsa::baseline: \
      break;                                       \
  }                                                \
  return isa_baseline::fn(__VA_ARGS__)
#else
#define POLDER_ISA_PASSES 0
#define POLDER_ISA_CALL(fn, ...) return isa_baseline::fn(__VA_ARGS__)
#endif
