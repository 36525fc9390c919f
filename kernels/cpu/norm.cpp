// RMSNorm on the CPU: rows in parallel; the weight gradient is reduced over fixed blocks of rows combined in
// order, so it does not depend on the number of threads. Compiled once per ISA level (the #else section;
// kernels/cpu/isa.h); the public functions forward to the chosen one.
#ifndef POLDER_ISA_NS
#include "kernels/norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/isa.h"

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

template <typename T>
void rms_norm_forward(const T* x, const T* w, T* y, acc_t<T>* rstd, int64_t rows, int64_t cols, float eps) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    A ss = 0;
    for (int64_t c = 0; c < cols; ++c) ss += static_cast<A>(xr[c]) * static_cast<A>(xr[c]);
    A inv = A(1) / std::sqrt(ss / static_cast<A>(cols) + static_cast<A>(eps));
    rstd[r] = inv;
    T* yr = y + r * cols;
    for (int64_t c = 0; c < cols; ++c)
      yr[c] = static_cast<T>(static_cast<A>(xr[c]) * inv * static_cast<A>(w[c]));
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
    A* pw = partial.data() + b * cols;
    for (int64_t r = b * kBlock; r < std::min(rows, (b + 1) * kBlock); ++r) {
      const T* xr = x + r * cols;
      const T* dyr = dy + r * cols;
      const A inv = rstd[r];
      A dot = 0;  // sum(g * x)
      for (int64_t c = 0; c < cols; ++c) {
        dot += static_cast<A>(dyr[c]) * static_cast<A>(w[c]) * static_cast<A>(xr[c]);
        pw[c] += static_cast<A>(dyr[c]) * static_cast<A>(xr[c]) * inv;
      }
      const A coef = inv * inv * inv * dot / static_cast<A>(cols);
      T* dxr = dx + r * cols;
      for (int64_t c = 0; c < cols; ++c)
        dxr[c] = static_cast<T>(inv * static_cast<A>(dyr[c]) * static_cast<A>(w[c]) -
                                static_cast<A>(xr[c]) * coef);
    }
  }
  for (int64_t c = 0; c < cols; ++c) dw[c] = 0;
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t c = 0; c < cols; ++c) dw[c] += partial[static_cast<size_t>(b * cols + c)];
}

}  // namespace polder::kernels::cpu::POLDER_ISA_NS
#endif
