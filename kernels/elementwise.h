// Elementwise kernels: dtype conversion, fills, broadcasting binary ops and their reductions, activations,
// copies for transpose/concat/split. CPU twins here, CUDA twins (same names, + stream) at the end. Arithmetic
// happens in acc_t<T> (float, or double for double).
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
void copy_blocks(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t outer,
                 int64_t block);

}  // namespace cpu
}  // namespace polder::kernels

#ifdef POLDER_HAVE_CUDA
// CUDA twins (kernels/cuda/elementwise.cu, reductions in kernels/cuda/reduce.cu): device pointers, launched
// on `stream`; float, double, bf16, f16 for the templates. Same semantics as the CPU twins, with these
// choices:
// - reductions (reduce_to, sum_dim, sum) are deterministic: fixed assignment of elements to threads, fixed
// trees,
//   no float atomics. Where the reduced elements are strided (a column of a (rows, C) gradient, the middle
//   dim of sum_dim) each output is summed by one thread in the CPU's order, split into at most 65535 row
//   slices whose partials are then added in slice order when the outputs alone cannot fill the GPU; where
//   they are contiguous, one block per output (and slice) and a shuffle tree.
// - reduce_to: `stride` is a HOST pointer (bc.a_stride or bc.b_stride) and the reduced operand is contiguous
//   (as every broadcasting operand of core/ops is).
// - sum: out[0] = alpha * sum(x) (a device scalar of T), accumulated in double like the CPU twin's return
// value.
// - scratch for partial sums comes from cudaMallocAsync on `stream` (the stream-ordered pool).
namespace polder::kernels::cuda {
void fill(void* dst, DType dtype, int64_t n, double value, void* stream);
void accumulate(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, double alpha,
                void* stream);
template <typename T>
void binary(BinaryOp op, const T* a, const T* b, T* out, const Broadcast& bc, void* stream);
template <typename T>
void reduce_to(const T* g, T* out, int64_t out_numel, const int64_t* stride, const Broadcast& bc,
               void* stream);
template <typename T>
void scale(const T* x, T* y, int64_t n, double alpha, void* stream);
template <typename T>
void sum(const T* x, T* out, int64_t n, double alpha, void* stream);
template <typename T>
void sum_dim(const T* x, T* y, int64_t outer, int64_t reduce, int64_t inner, void* stream);
template <typename T>
void expand_dim(const T* x, T* y, int64_t outer, int64_t reduce, int64_t inner, double alpha, void* stream);

template <typename T>
void silu_forward(const T* x, T* y, int64_t n, void* stream);
template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n, void* stream);
template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n, void* stream);
template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, int64_t n, void* stream);

// elem_size 1, 2, 4 or 8 (any size works: rows of inner * elem_size bytes are copied as words).
void transpose(const void* x, void* y, size_t elem_size, int64_t outer, int64_t d0, int64_t mid, int64_t d1,
               int64_t inner, void* stream);
// cudaMemcpy2DAsync (device to device).
void copy_blocks(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t outer,
                 int64_t block, void* stream);
}  // namespace polder::kernels::cuda
#endif
