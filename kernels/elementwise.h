// Elementwise kernels: dtype conversion, fills, broadcasting binary ops and their reductions, activations,
// copies for transpose/concat/split. CPU twins here; CUDA twins (same names, + stream) come with the CUDA
// backend. Arithmetic happens in acc_t<T> (float, or double for double).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace polder::kernels {

enum class BinaryOp { add, sub, mul };

constexpr int kMaxDims = 8;
// Output shape of a broadcasting op and each operand's element strides over it (0 on broadcast dims).
struct Broadcast {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t a_stride[kMaxDims] = {};
  int64_t b_stride[kMaxDims] = {};
  int64_t numel = 0;
  bool same_shape = false;  // a, b and out all have the output shape
};

namespace cpu {

void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n);
void fill(void* dst, DType dtype, int64_t n, double value);
// dst += alpha * src, converting src to dst's dtype (gradient accumulation into f32 buffers).
void accumulate(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, double alpha = 1.0);

template <typename T>
void binary(BinaryOp op, const T* a, const T* b, T* out, const Broadcast& bc);
// out[j] = sum over output positions i that map to j through `stride` (bc.a_stride or bc.b_stride) of g[i].
template <typename T>
void reduce_to(const T* g, T* out, int64_t out_numel, const int64_t* stride, const Broadcast& bc);

template <typename T>
void scale(const T* x, T* y, int64_t n, double alpha);  // y = alpha * x
template <typename T>
double sum(const T* x, int64_t n);  // in double, deterministic for a given thread count
// y[o, i] = sum_r x[o, r, i]: reduction over the middle of (outer, reduce, inner).
template <typename T>
void sum_dim(const T* x, T* y, int64_t outer, int64_t reduce, int64_t inner);
// y[o, r, i] = alpha * x[o, i]: the backward of sum_dim (and of mean with alpha = 1/reduce).
template <typename T>
void expand_dim(const T* x, T* y, int64_t outer, int64_t reduce, int64_t inner, double alpha);

// silu(x) = x * sigmoid(x);  d/dx = s * (1 + x * (1 - s))
template <typename T>
void silu_forward(const T* x, T* y, int64_t n);
template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n);
// swiglu(g, u) = silu(g) * u;  dg = dy * u * silu'(g),  du = dy * silu(g)
template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n);
template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, int64_t n);

// Swaps two dims: x viewed as (outer, d0, mid, d1, inner) -> y as (outer, d1, mid, d0, inner).
void transpose(const void* x, void* y, size_t elem_size, int64_t outer, int64_t d0, int64_t mid, int64_t d1,
               int64_t inner);
// Copies `outer` blocks of `block` bytes from src (row pitch src_pitch) to dst (row pitch dst_pitch).
void copy_blocks(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t outer, int64_t block);

}  // namespace cpu
}  // namespace polder::kernels

#ifdef POLDER_HAVE_CUDA
// CUDA twins of the activations (kernels/cuda/elementwise.cu): device pointers, launched on `stream`.
namespace polder::kernels::cuda {
template <typename T>
void silu_forward(const T* x, T* y, int64_t n, void* stream);
template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n, void* stream);
template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n, void* stream);
template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, int64_t n, void* stream);
}  // namespace polder::kernels::cuda
#endif
