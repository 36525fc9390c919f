// polder's own bf16 GEMM kernel (kernels/cuda/gemm_sm80.cu + gemm_own.cuh: mma.sync on register-staged shared
// tiles), compiled as C++ and run through its launch function on the CPU emulator (tests/sim), against
// kernels::cpu::gemm_reference on the same inputs: layouts NN, NT, TN, TT; M, N, K from {1, 7, 9, 129, 300,
// 1000, 1100} (not multiples of the 128 x 128 x 32 tile; more than 8 tile-rows for the grouped order);
// leading dimensions padded by 0 (16-byte loads) and 1 (the element-wise path); f32 and bf16 C; beta 0 on C
// poisoned with NaN and beta 1 (alpha 0.5) over 3 batches with gaps. C outside the M x N blocks must come
// back byte for byte. Normalised error max|got - ref| / max|ref|: f32 C < 1e-4, bf16 C < 1e-2 (as on a GPU).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/gemm.h"
#include "sim/runtime.h"
#include "tests/sim/sim_gemm_testing.h"

namespace polder::kernels::cuda::detail {
void gemm_bf16_sm80(const GemmArgs& g, cudaStream_t stream);  // kernels/cuda/gemm_sm80.cu
}

using namespace polder;
using namespace sim_testing;

namespace {

constexpr GemmLaunch kLaunch = &kernels::cuda::detail::gemm_bf16_sm80;
constexpr int64_t kLdMultiple = 1;

}  // namespace

TEST_CASE("emulated own GEMM (mma.sync) matches gemm_reference on every layout", "[sim]") {
  const Shape shapes[] = {{1, 7, 129},   {7, 129, 1},    {129, 1, 7},
                          {1100, 9, 40}, {9, 300, 1000}, {130, 135, 70}};
  uint64_t seed = 3000;
  const uint64_t mma_before = sim::counters().mma;
  check_sweep(shapes, {0, 1}, 3, seed, kLaunch, kLdMultiple);
  CHECK(sim::counters().mma > mma_before);
}
