// POLDER_CPU_ISA: which instruction-set level polder's hot loops run at, and the matching cap on oneDNN.
// Read once per process; a bad value is one std::invalid_argument naming it and the accepted ones.
#include "kernels/cpu/isa.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

#ifdef POLDER_HAVE_ONEDNN
#include <dnnl.hpp>
#endif

namespace polder::kernels::cpu {
namespace {

CpuIsa detect() {
#if POLDER_ISA_PASSES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return CpuIsa::avx512;
  if (__builtin_cpu_supports("x86-64-v3")) return CpuIsa::avx2;
#endif
  return CpuIsa::baseline;
}

CpuIsa choose() {
  const CpuIsa best = detect();
  const char* env = std::getenv("POLDER_CPU_ISA");
  const std::string v = env ? env : "";
  if (v.empty() || v == "best") return best;
  CpuIsa want;
  if (v == "baseline")
    want = CpuIsa::baseline;
  else if (v == "avx2")
    want = CpuIsa::avx2;
  else if (v == "avx512")
    want = CpuIsa::avx512;
  else
    throw std::invalid_argument("POLDER_CPU_ISA '" + v +
                                "' is unknown (expected baseline, avx2, avx512 or best)");
  if (static_cast<int>(want) > static_cast<int>(best))
    throw std::invalid_argument("POLDER_CPU_ISA '" + v + "' is above what this CPU runs (at most " +
                                cpu_isa_name(best) + "; expected baseline up to " + cpu_isa_name(best) +
                                ", or best)");
  return want;
}

#ifdef POLDER_HAVE_ONEDNN
const char* onednn_isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41:
      return "sse41";
    case dnnl::cpu_isa::avx:
      return "avx";
    case dnnl::cpu_isa::avx2:
      return "avx2";
    case dnnl::cpu_isa::avx2_vnni:
      return "avx2_vnni";
    case dnnl::cpu_isa::avx512_core:
      return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "other";
  }
}
#endif

}  // namespace

CpuIsa cpu_isa_supported() {
  static const CpuIsa isa = detect();
  return isa;
}

CpuIsa cpu_isa() {
  static const CpuIsa isa = choose();
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::baseline:
      return "baseline";
    case CpuIsa::avx2:
      return "avx2";
    case CpuIsa::avx512:
      return "avx512";
  }
  return "unknown";
}

void cap_onednn_isa() {
#ifdef POLDER_HAVE_ONEDNN
  static const bool capped = [] {
    const char* env = std::getenv("POLDER_CPU_ISA");
    // An explicit ONEDNN_MAX_CPU_ISA is the user's word for oneDNN; "best" (or nothing) leaves oneDNN alone.
    if (env == nullptr || *env == 0 || std::string(env) == "best" || std::getenv("ONEDNN_MAX_CPU_ISA"))
      return false;
    const CpuIsa isa = cpu_isa();
    const dnnl::cpu_isa cap = isa == CpuIsa::avx512 ? dnnl::cpu_isa::avx512_core
                              : isa == CpuIsa::avx2 ? dnnl::cpu_isa::avx2
                                                    : dnnl::cpu_isa::sse41;
    dnnl::set_max_cpu_isa(cap);
    return true;
  }();
  (void)capped;
#endif
}

bool cpu_native_bf16() {
#ifdef POLDER_HAVE_ONEDNN
  cap_onednn_isa();
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
#else
  return false;
#endif
}

std::string cpu_isa_describe() {
  std::string s = std::string(cpu_isa_name(cpu_isa())) + " (CPU: " + cpu_isa_name(cpu_isa_supported());
#ifdef POLDER_HAVE_ONEDNN
  cap_onednn_isa();
  s += std::string("; oneDNN: ") + onednn_isa_name(dnnl::get_effective_cpu_isa());
#endif
  return s + ")";
}

}  // namespace polder::kernels::cpu
