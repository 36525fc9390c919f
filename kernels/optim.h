// Fused multi-tensor AdamW and the gradient sum of squares (for global-norm clipping) over the flat
// parameter, gradient and moment buffers. Segments are element ranges of those buffers (one per parameter, or
// merged runs of parameters with the same weight decay); gaps between segments are never touched. The element
// update is one function shared by the CPU and CUDA twins (detail::adamw_element below): both perform the
// same IEEE operations in the same order, so f32 and f64 results are bit-identical between them.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/dtype.h"

namespace polder::kernels {

// Elements [begin, end) of the flat arrays, updated with this weight decay (double, so that f64 models get
// exactly the configured value; the f32 update rounds it to float like every other hyper-parameter).
struct AdamWSegment {
  int64_t begin = 0, end = 0;
  double weight_decay = 0.0;
};
// Hyper-parameters of one step; bias_correction1/2 = 1 - beta1^t, 1 - beta2^t. Rounded to A by the kernels.
struct AdamWStep {
  double lr, beta1, beta2, eps, bias_correction1, bias_correction2;
  // Gradient-clipping factor, applied to g (rounded to A, like an in-place g *= factor) before the update:
  // the clip costs no pass of its own over the gradients. 1 multiplies exactly.
  double grad_scale = 1.0;
};

namespace cpu {
// torch.optim.AdamW, per element i of every segment (arithmetic in A):
//   w = master ? master[i] : param[i]
//   w -= lr * wd * w;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w -= lr * (m / bc1) / (sqrt(v / bc2)
//   + eps) master[i] = w (when master);  param[i] = round_to_P(w)
// P: f32/bf16/f16/f64 parameters; A: f32 (or f64 with f64 parameters) master weights, gradients and moments;
// master is nullptr when the parameters are themselves A. Segments must be sorted and disjoint.
template <typename P, typename A>
void adamw(P* param, A* master, const A* grad, A* m, A* v, const AdamWSegment* segments, int nsegments,
           const AdamWStep& s);
// Sum of squares of g over the segments (weight decay ignored), in double and deterministic: each segment is
// cut into chunks of kSumSquaresChunk elements; in each chunk kSumSquaresLanes running sums (lane l takes the
// chunk's elements l, l + kSumSquaresLanes, ..., s = fma(x, x, s)) combined by detail::sum_lanes; a segment's
// chunk sums added in order, and the segment totals added in segment order.
template <typename A>
double sum_squares(const A* g, const AdamWSegment* segments, int nsegments);
}  // namespace cpu

constexpr int64_t kSumSquaresChunk = 1 << 16;
constexpr int kSumSquaresLanes = 8;

namespace detail {
// Exactly rounded single operations: on the device the _rn intrinsics (never contracted into FMAs, whatever
// -fmad says); on the host plain operators, in a translation unit compiled with -ffp-contract=off
// (kernels/CMakeLists.txt). The three fused multiply-adds of the update are explicit on both sides.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float fma_rn(float a, float b, float c) {
  return __fmaf_rn(a, b, c);
}
__device__ __forceinline__ double fma_rn(double a, double b, double c) {
  return __fma_rn(a, b, c);
}
__device__ __forceinline__ float mul_rn(float a, float b) {
  return __fmul_rn(a, b);
}
__device__ __forceinline__ double mul_rn(double a, double b) {
  return __dmul_rn(a, b);
}
__device__ __forceinline__ float div_rn(float a, float b) {
  return __fdiv_rn(a, b);
}
__device__ __forceinline__ double div_rn(double a, double b) {
  return __ddiv_rn(a, b);
}
__device__ __forceinline__ float add_rn(float a, float b) {
  return __fadd_rn(a, b);
}
__device__ __forceinline__ double add_rn(double a, double b) {
  return __dadd_rn(a, b);
}
__device__ __forceinline__ float sub_rn(float a, float b) {
  return __fsub_rn(a, b);
}
__device__ __forceinline__ double sub_rn(double a, double b) {
  return __dsub_rn(a, b);
}
__device__ __forceinline__ float sqrt_rn(float a) {
  return __fsqrt_rn(a);
}
__device__ __forceinline__ double sqrt_rn(double a) {
  return __dsqrt_rn(a);
}
#else
template <typename A>
inline A fma_rn(A a, A b, A c) {
  return std::fma(a, b, c);
}
template <typename A>
inline A mul_rn(A a, A b) {
  return a * b;
}
template <typename A>
inline A div_rn(A a, A b) {
  return a / b;
}
template <typename A>
inline A add_rn(A a, A b) {
  return a + b;
}
template <typename A>
inline A sub_rn(A a, A b) {
  return a - b;
}
template <typename A>
inline A sqrt_rn(A a) {
  return std::sqrt(a);
}
#endif

// The step's constants, rounded to A once: lr_wd = lr * wd, c1 = 1 - b1, c2 = 1 - b2.
template <typename A>
struct AdamWConst {
  A lr, lr_wd, b1, c1, b2, c2, eps, bc1, bc2, gs;
};

template <typename A>
POLDER_HD inline AdamWConst<A> adamw_const(const AdamWStep& s, double weight_decay) {
  AdamWConst<A> c;
  c.lr = static_cast<A>(s.lr);
  c.lr_wd = mul_rn(c.lr, static_cast<A>(weight_decay));
  c.b1 = static_cast<A>(s.beta1);
  c.c1 = sub_rn(A(1), c.b1);
  c.b2 = static_cast<A>(s.beta2);
  c.c2 = sub_rn(A(1), c.b2);
  c.eps = static_cast<A>(s.eps);
  c.bc1 = static_cast<A>(s.bias_correction1);
  c.bc2 = static_cast<A>(s.bias_correction2);
  c.gs = static_cast<A>(s.grad_scale);
  return c;
}

// The fixed combination of sum_squares' lanes: ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
inline double sum_lanes(const double* l) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// One element: returns the new weight and updates m, v. The FMAs sit where GCC contracts the plain formula on
// FMA hardware (x86-64-v3/v4, which is what polder's training results were produced with), so explicit FMAs
// keep those results and make them independent of the ISA and identical on the GPU.
template <typename A>
POLDER_HD inline A adamw_element(A w, A g, A& m, A& v, const AdamWConst<A>& c) {
  g = mul_rn(g, c.gs);                              // the clipping factor
  w = fma_rn(-c.lr_wd, w, w);                       // w -= lr * wd * w
  m = fma_rn(c.b1, m, mul_rn(c.c1, g));             // m = b1 m + (1 - b1) g
  v = fma_rn(c.b2, v, mul_rn(mul_rn(c.c2, g), g));  // v = b2 v + (1 - b2) g g
  const A denom = add_rn(sqrt_rn(div_rn(v, c.bc2)), c.eps);
  return sub_rn(w, div_rn(mul_rn(c.lr, div_rn(m, c.bc1)), denom));  // w -= lr (m / bc1) / denom
}
}  // namespace detail
}  // namespace polder::kernels

#ifdef POLDER_HAVE_CUDA
// CUDA twins (kernels/cuda/optim.cu): device arrays, `segments` a HOST array, launched on `stream`. adamw is
// one launch per 128 segments (a work list of (segment, chunk) blocks in the kernel's parameters);
// sum_squares writes its double result to the device scalar *out through per-chunk partials reduced in a
// fixed order (no atomics).
namespace polder::kernels::cuda {
template <typename P, typename A>
void adamw(P* param, A* master, const A* grad, A* m, A* v, const AdamWSegment* segments, int nsegments,
           const AdamWStep& s, void* stream);
template <typename A>
void sum_squares(const A* g, const AdamWSegment* segments, int nsegments, double* out, void* stream);
}  // namespace polder::kernels::cuda
#endif
