// Rotary position embedding, Hugging Face convention: rotate_half(x) = cat(-x2, x1) over the head dim, and
// y = x * cos + rotate_half(x) * sin with cos/sin tables of shape (positions, D) holding cat(f, f).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace polder::kernels::cpu {
// x, y: (B, T, H, D); the row of token t uses table row pos0 + t.
template <typename T>
void rope_forward(const T* x, T* y, const acc_t<T>* cos, const acc_t<T>* sin, int64_t B, int64_t T_,
                  int64_t H, int64_t D, int64_t pos0);
// The rotation is orthogonal, so dx = rotate by -angle: dx = dy * cos - rotate_half(dy) * sin.
template <typename T>
void rope_backward(const T* dy, T* dx, const acc_t<T>* cos, const acc_t<T>* sin, int64_t B, int64_t T_,
                   int64_t H, int64_t D, int64_t pos0);
}  // namespace polder::kernels::cpu

#ifdef POLDER_HAVE_CUDA
// CUDA twins (kernels/cuda/rope.cu): device pointers (tables too), launched on `stream` (a cudaStream_t).
namespace polder::kernels::cuda {
template <typename T>
void rope_forward(const T* x, T* y, const acc_t<T>* cos, const acc_t<T>* sin, int64_t B, int64_t T_,
                  int64_t H, int64_t D, int64_t pos0, void* stream);
template <typename T>
void rope_backward(const T* dy, T* dx, const acc_t<T>* cos, const acc_t<T>* sin, int64_t B, int64_t T_,
                   int64_t H, int64_t D, int64_t pos0, void* stream);
}  // namespace polder::kernels::cuda
#endif
