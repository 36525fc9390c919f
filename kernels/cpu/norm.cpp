// RMSNorm on the CPU: rows in parallel; the weight gradient is reduced over fixed blocks of rows combined in
// order, so it does not depend on the number of threads. Compiled once per ISA level (the #else section;
// kernels/cpu/isa.h); the public functions forward to the chosen one.
#ifndef POLDER_ISA_NS
#include "kernels/norm.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/vmath.h"

#define POLDER_ISA_SOURCE "kernels/cpu/norm.cpp"
#include "kernels/cpu/isa_passes.h"

namespace polder::kernels::cpu {

template <typename T>
void rms_norm_forward(const T* x, const T* w, T* y, acc_t<T>* rstd, int64_t rows, int64_t cols, float eps) {
  POLDER_ISA_CALL(rms_norm_forward, x, w, y, rstd, rows, cols, eps);
}
template <typename T>
void rms_norm_backward(const T* x, const T* w, const acc_t<T>* rstd, const T* dy, T* dx, acc_t<T>* dw,
                       int64_t rows, int64_t cols) {
  POLDER_ISA_CALL(rms_norm_backward, x, w, rstd, dy, dx, dw, rows, cols);
}

#define POLDER_INSTANTIATE(T)                                                                               \
  template void rms_norm_forward<T>(const T*, const T*, T*, acc_t<T>*, int64_t, int64_t, float);            \
  template void rms_norm_backward<T>(const T*, const T*, const acc_t<T>*, const T*, T*, acc_t<T>*, int64_t, \
                                     int64_t);
POLDER_INSTANTIATE(float)
POLDER_INSTANTIATE(double)
POLDER_INSTANTIATE(bf16)
POLDER_INSTANTIATE(f16)

}  // namespace polder::kernels::cpu

#else  // the kernels, once per ISA level

namespace polder::kernels::cpu::POLDER_ISA_NS {

// Row sums of float rows in vmath's 16 fixed lanes (a serial float sum does not vectorize, and the lanes make
// AVX2 and AVX-512 agree bit for bit); f64 rows (the oracles' precision) sum in order.
template <typename T>
acc_t<T> sum_sq(const T* x, int64_t n) {
  if constexpr (std::is_same_v<acc_t<T>, float>) {
    return vmath::row_dot(x, x, n);
  } else {
    acc_t<T> s = 0;
    for (int64_t c = 0; c < n; ++c) s += static_cast<acc_t<T> >(x[c]) * static_cast<acc_t<T> >(x[c]);
    return s;
  }
}

// sum over c of dy[c] * w[c] * x[c]
template <typename T>
acc_t<T> sum_dy_w_x(const T* dy, const T* w, const T* x, int64_t n) {
  using A = acc_t<T>;
  if constexpr (std::is_same_v<A, float>) {
    float acc[vmath::kLanes] = {};
    int64_t c = 0;
    for (; c + vmath::kLanes <= n; c += vmath::kLanes) {
#pragma omp simd
      for (int l = 0; l < vmath::kLanes; ++l)
        acc[l] += static_cast<float>(dy[c + l]) * static_cast<float>(w[c + l]) * static_cast<float>(x[c + l]);
    }
    for (int l = 0; c + l < n; ++l)
      acc[l] += static_cast<float>(dy[c + l]) * static_cast<float>(w[c + l]) * static_cast<float>(x[c + l]);
    return vmath::sum_lanes(acc);
  } else {
    A s = 0;
    for (int64_t c = 0; c < n; ++c) s += static_cast<A>(dy[c]) * static_cast<A>(w[c]) * static_cast<A>(x[c]);
    return s;
  }
}

template <typename T>
void rms_norm_forward(const T* x, const T* w, T* y, acc_t<T>* rstd, int64_t rows, int64_t cols, float eps) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict xr = x + r * cols;
    const A inv = A(1) / std::sqrt(sum_sq(xr, cols) / static_cast<A>(cols) + static_cast<A>(eps));
    rstd[r] = inv;
    T* __restrict yr = y + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c)
      vmath::store(yr, c, static_cast<A>(xr[c]) * inv * static_cast<A>(w[c]));
  }
}

template <typename T>
void rms_norm_backward(const T* x, const T* w, const acc_t<T>* rstd, const T* dy, T* dx, acc_t<T>* dw,
                       int64_t rows, int64_t cols) {
  using A = acc_t<T>;
  constexpr int64_t kBlock = 32;
  const int64_t blocks = (rows + kBlock - 1) / kBlock;
  std::vector<A> partial(static_cast<size_t>(blocks * cols), A(0));
#pragma omp parallel for if (rows * cols > 16384)
  for (int64_t b = 0; b < blocks; ++b) {
    A* __restrict pw = partial.data() + b * cols;
    for (int64_t r = b * kBlock; r < std::min(rows, (b + 1) * kBlock); ++r) {
      const T* __restrict xr = x + r * cols;
      const T* __restrict dyr = dy + r * cols;
      const A inv = rstd[r];
      const A coef = inv * inv * inv * sum_dy_w_x(dyr, w, xr, cols) / static_cast<A>(cols);
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) pw[c] += static_cast<A>(dyr[c]) * static_cast<A>(xr[c]) * inv;
      T* __restrict dxr = dx + r * cols;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c)
        vmath::store(dxr, c,
                     inv * static_cast<A>(dyr[c]) * static_cast<A>(w[c]) - static_cast<A>(xr[c]) * coef);
    }
  }
  for (int64_t c = 0; c < cols; ++c) dw[c] = 0;
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t c = 0; c < cols; ++c) dw[c] += partial[static_cast<size_t>(b * cols + c)];
}

}  // namespace polder::kernels::cpu::POLDER_ISA_NS
#endif
