// Register-fragment helpers shared by the tensor-core attention kernels (flash_attention.cu: mma.sync;
// flash_attention_sm90.cu: wgmma). Only included by kernels/cuda/*.cu (nvcc, or the CPU emulator of
// tests/sim).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/dtype.h"

namespace polder::kernels::cuda::detail {

// Two floats as one register of two T (bf16 or f16), lo in the low half (the lower column of a fragment
// pair).
template <typename T>
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  if constexpr (std::is_same_v<T, bf16>) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

}  // namespace polder::kernels::cuda::detail
