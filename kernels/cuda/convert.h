// CUDA dtype conversion (twin of kernels::cpu::convert). Launch on `stream` (a cudaStream_t).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace polder::kernels::cuda {
void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, void* stream);
}
