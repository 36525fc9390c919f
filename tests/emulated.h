// The emulated CUDA device (POLDER_CUDA_EMULATED: the build of scripts/emulated_gpu.sh, tests/sim) runs every
// thread of every kernel on the CPU, some 10^4 times slower than a GPU. Tests of the CUDA path keep their
// code paths there (partial tiles, several tiles, GQA, batches, every dtype) but shrink their largest shapes
// and loops: gpu_or_emulated(real, emulated) picks the size.
#pragma once

namespace polder::testing {

#ifdef POLDER_CUDA_EMULATED
inline constexpr bool kEmulatedDevice = true;
#else
inline constexpr bool kEmulatedDevice = false;
#endif

template <typename T>
constexpr T gpu_or_emulated(T real, T emulated) {
  return kEmulatedDevice ? emulated : real;
}

}  // namespace polder::testing
