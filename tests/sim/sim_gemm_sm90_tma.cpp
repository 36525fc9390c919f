// polder's own bf16 GEMM for Hopper (kernels/cuda/gemm_sm90_tma.cu: TMA loads into a 4-stage mbarrier ring,
// a producer warpgroup and two wgmma consumer warpgroups, persistent grid), compiled as C++ and run through
// its launch function on the CPU emulator (tests/sim, compute capability 9.0, 4 SMs), against
// kernels::cpu::gemm_reference on the same inputs: layouts NN, NT, TN, TT; M x N x K 1x1x1, 7x129x100,
// 129x7x70, 300x520x64 (9 tiles on 4 SMs: the persistent loop), 64x200x70 (K tails, partial MN boxes,
// MN-major tiles narrower than one box), 100x100x600 (10 k-tiles through the 4-stage ring); lda/ldb the
// columns rounded up to 8 (TMA strides) plus pads 0 and 8, ldc padded by 0 and 8; f32 and bf16 C; beta 0 on C
// poisoned with NaN and beta 1 (alpha 0.5) over 2 batches with gaps. C outside the M x N blocks must come
// back byte for byte. Normalised error max|got - ref| / max|ref|: f32 C < 1e-4, bf16 C < 1e-2 (as on a GPU).
// Twice: wgmma running at the wait_group that retires it (a stage released before then is overwritten under
// it) and at issue.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/gemm.h"
#include "sim/cudart.h"
#include "sim/runtime.h"
#include "tests/sim/sim_gemm_testing.h"

namespace polder::kernels::cuda::detail {
void gemm_bf16_sm90_tma(const GemmArgs& g, cudaStream_t stream);  // kernels/cuda/gemm_sm90_tma.cu
bool gemm_sm90_tma_available();
bool gemm_sm90_tma_supported(const GemmArgs& g);
}  // namespace polder::kernels::cuda::detail

using namespace polder;
using namespace sim_testing;

namespace {

// TMA needs 16-byte strides: lda/ldb rounded up to multiples of 8 elements before the padding.
void launch_tma(const kernels::GemmArgs& g, cudaStream_t stream) {
  REQUIRE(kernels::cuda::detail::gemm_sm90_tma_supported(g));
  kernels::cuda::detail::gemm_bf16_sm90_tma(g, stream);
}
constexpr GemmLaunch kLaunch = &launch_tma;
constexpr int64_t kLdMultiple = 8;

}  // namespace

TEST_CASE("emulated TMA GEMM (sm_90a: TMA, mbarrier, wgmma) matches gemm_reference on every layout",
          "[sim]") {
  sim::set_arch(9);
  sim::set_sm_count(4);  // fewer SMs than tiles: the persistent loop
  REQUIRE(kernels::cuda::detail::gemm_sm90_tma_available());
  int sms = 0;
  REQUIRE(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess);
  CHECK(sms == 4);
  const auto timing = GENERATE(sim::WgmmaTiming::at_wait, sim::WgmmaTiming::at_issue);
  INFO("wgmma runs " << (timing == sim::WgmmaTiming::at_wait ? "at the wait_group retiring it" : "at issue"));
  sim::set_wgmma_timing(timing);
  // The last: 10 k-tiles through the 4-stage ring in one tile (phases wrap; stages are reused while the
  // consumers still have wgmma groups in flight).
  const Shape shapes[] = {{1, 1, 1},      {7, 129, 100}, {129, 7, 70},
                          {300, 520, 64}, {64, 200, 70}, {100, 100, 600}};
  uint64_t seed = 5000;
  const sim::Counters before = sim::counters();
  check_sweep(shapes, {0, 8}, 2, seed, kLaunch, kLdMultiple);
  const sim::Counters& after = sim::counters();
  CHECK(after.wgmma > before.wgmma);
  CHECK(after.tma > before.tma);
  CHECK(after.mbar_blocked_waits > before.mbar_blocked_waits);  // the consumers did wait for the producer
  CHECK(after.setmaxnreg > before.setmaxnreg);
  sim::set_wgmma_timing(sim::WgmmaTiming::at_wait);
  sim::set_sm_count(132);
}
