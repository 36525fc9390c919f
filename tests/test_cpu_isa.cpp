// The CPU instruction-set choice (kernels/cpu/isa.h): the level never exceeds what the CPU runs, follows
// POLDER_CPU_ISA when it is set (ctest runs this file again with POLDER_CPU_ISA=baseline), and caps oneDNN
// to the same level, so the baseline runs of the numerics tests really run the baseline code.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <string>

#include "kernels/cpu/isa.h"
#include "kernels/gemm.h"

using namespace polder::kernels::cpu;

TEST_CASE("the chosen ISA is supported and follows POLDER_CPU_ISA", "[isa]") {
  const CpuIsa isa = cpu_isa(), best = cpu_isa_supported();
  CHECK(static_cast<int>(isa) <= static_cast<int>(best));
  const char* env = std::getenv("POLDER_CPU_ISA");
  const std::string want = env ? env : "";
  if (want.empty() || want == "best")
    CHECK(isa == best);
  else
    CHECK(std::string(cpu_isa_name(isa)) == want);
  const std::string described = cpu_isa_describe();
  INFO(described);
  CHECK(described.rfind(cpu_isa_name(isa), 0) == 0);
#ifdef POLDER_HAVE_ONEDNN
  // oneDNN's effective ISA after the cap: sse41 for the baseline, avx2 for avx2.
  if (want == "baseline" && !std::getenv("ONEDNN_MAX_CPU_ISA"))
    CHECK(described.find("oneDNN: sse41") != std::string::npos);
  if (want == "avx2" && !std::getenv("ONEDNN_MAX_CPU_ISA"))
    CHECK(described.find("oneDNN: avx2") != std::string::npos);
#endif
}

TEST_CASE("the ISA level names", "[isa]") {
  CHECK(std::string(cpu_isa_name(CpuIsa::baseline)) == "baseline");
  CHECK(std::string(cpu_isa_name(CpuIsa::avx2)) == "avx2");
  CHECK(std::string(cpu_isa_name(CpuIsa::avx512)) == "avx512");
}
