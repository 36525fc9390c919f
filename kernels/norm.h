// RMSNorm: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps), over the last dim of (rows, cols).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace polder::kernels::cpu {
template <typename T>
void rms_norm_forward(const T* x, const T* w, T* y, acc_t<T>* rstd, int64_t rows, int64_t cols, float eps);
// g = dy * w;  dx = rstd * g - x * rstd^3 * mean(g * x);  dw = sum_rows(dy * x * rstd) (written, acc_t)
template <typename T>
void rms_norm_backward(const T* x, const T* w, const acc_t<T>* rstd, const T* dy, T* dx, acc_t<T>* dw,
                       int64_t rows, int64_t cols);
}  // namespace polder::kernels::cpu

#ifdef POLDER_HAVE_CUDA
// CUDA twins (kernels/cuda/norm.cu): device pointers, launched on `stream` (a cudaStream_t); float, bf16,
// f16.
namespace polder::kernels::cuda {
template <typename T>
void rms_norm_forward(const T* x, const T* w, T* y, acc_t<T>* rstd, int64_t rows, int64_t cols, float eps,
                      void* stream);
template <typename T>
void rms_norm_backward(const T* x, const T* w, const acc_t<T>* rstd, const T* dy, T* dx, acc_t<T>* dw,
                       int64_t rows, int64_t cols, void* stream);
}  // namespace polder::kernels::cuda
#endif
