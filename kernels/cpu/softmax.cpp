// Softmax family on the CPU, rows in parallel, max-subtracted for stability. The kernels are compiled once
// per ISA level (the #else section; kernels/cpu/isa.h) and the public functions forward to the chosen one.
#ifndef POLDER_ISA_NS
#include "kernels/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/isa.h"

#define POLDER_ISA_SOURCE "kernels/cpu/softmax.cpp"
#include "kernels/cpu/isa_passes.h"

namespace polder::kernels::cpu {

template <typename T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols) {
  POLDER_ISA_CALL(softmax_forward, x, y, rows, cols);
}
template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
  POLDER_ISA_CALL(softmax_backward, y, dy, dx, rows, cols);
}
template <typename T>
void log_softmax_forward(const T* x, T* y, int64_t rows, int64_t cols) {
  POLDER_ISA_CALL(log_softmax_forward, x, y, rows, cols);
}
template <typename T>
void log_softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
  POLDER_ISA_CALL(log_softmax_backward, y, dy, dx, rows, cols);
}
template <typename T, typename I>
void cross_entropy_forward(const T* logits, const I* targets, acc_t<T>* loss, acc_t<T>* lse, int64_t rows,
                           int64_t cols, int64_t ignore_index) {
  POLDER_ISA_CALL(cross_entropy_forward, logits, targets, loss, lse, rows, cols, ignore_index);
}
template <typename T, typename I>
void cross_entropy_backward(const T* logits, const I* targets, const acc_t<T>* lse, const acc_t<T>* dloss,
                            T* dlogits, int64_t rows, int64_t cols, int64_t ignore_index) {
  POLDER_ISA_CALL(cross_entropy_backward, logits, targets, lse, dloss, dlogits, rows, cols, ignore_index);
}
#define POLDER_INSTANTIATE(T)                                                  \
  template void softmax_forward<T>(const T*, T*, int64_t, int64_t);            \
  template void softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t); \
  template void log_softmax_forward<T>(const T*, T*, int64_t, int64_t);        \
  template void log_softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t);
#define POLDER_INSTANTIATE_CE(T, I)                                                                     \
  template void cross_entropy_forward<T, I>(const T*, const I*, acc_t<T>*, acc_t<T>*, int64_t, int64_t, \
                                            int64_t);                                                   \
  template void cross_entropy_backward<T, I>(const T*, const I*, const acc_t<T>*, const acc_t<T>*, T*,  \
                                             int64_t, int64_t, int64_t);
POLDER_INSTANTIATE(float)
POLDER_INSTANTIATE(double)
POLDER_INSTANTIATE(bf16)
POLDER_INSTANTIATE(f16)
POLDER_INSTANTIATE_CE(float, int32_t)
POLDER_INSTANTIATE_CE(double, int32_t)
POLDER_INSTANTIATE_CE(bf16, int32_t)
POLDER_INSTANTIATE_CE(f16, int32_t)
POLDER_INSTANTIATE_CE(float, int64_t)
POLDER_INSTANTIATE_CE(double, int64_t)
POLDER_INSTANTIATE_CE(bf16, int64_t)
POLDER_INSTANTIATE_CE(f16, int64_t)

}  // namespace polder::kernels::cpu

#else  // the kernels, once per ISA level

namespace polder::kernels::cpu::POLDER_ISA_NS {
namespace {
template <typename T>
acc_t<T> row_lse(const T* x, int64_t cols) {
  using A = acc_t<T>;
  A m = -std::numeric_limits<A>::infinity();
  for (int64_t c = 0; c < cols; ++c) m = std::max(m, static_cast<A>(x[c]));
  A s = 0;
  for (int64_t c = 0; c < cols; ++c) s += std::exp(static_cast<A>(x[c]) - m);
  return m + std::log(s);
}
constexpr int64_t kPar = 16384;
}  // namespace

template <typename T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    const A lse = row_lse(x + r * cols, cols);
    for (int64_t c = 0; c < cols; ++c)
      y[r * cols + c] = static_cast<T>(std::exp(static_cast<A>(x[r * cols + c]) - lse));
  }
}

template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    const T* yr = y + r * cols;
    const T* dyr = dy + r * cols;
    A dot = 0;
    for (int64_t c = 0; c < cols; ++c) dot += static_cast<A>(yr[c]) * static_cast<A>(dyr[c]);
    for (int64_t c = 0; c < cols; ++c)
      dx[r * cols + c] = static_cast<T>(static_cast<A>(yr[c]) * (static_cast<A>(dyr[c]) - dot));
  }
}

template <typename T>
void log_softmax_forward(const T* x, T* y, int64_t rows, int64_t cols) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    const A lse = row_lse(x + r * cols, cols);
    for (int64_t c = 0; c < cols; ++c)
      y[r * cols + c] = static_cast<T>(static_cast<A>(x[r * cols + c]) - lse);
  }
}

template <typename T>
void log_softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    const T* yr = y + r * cols;
    const T* dyr = dy + r * cols;
    A s = 0;
    for (int64_t c = 0; c < cols; ++c) s += static_cast<A>(dyr[c]);
    for (int64_t c = 0; c < cols; ++c)
      dx[r * cols + c] = static_cast<T>(static_cast<A>(dyr[c]) - std::exp(static_cast<A>(yr[c])) * s);
  }
}

template <typename T, typename I>
void cross_entropy_forward(const T* logits, const I* targets, acc_t<T>* loss, acc_t<T>* lse, int64_t rows,
                           int64_t cols, int64_t ignore_index) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    const A l = row_lse(logits + r * cols, cols);
    lse[r] = l;
    const int64_t t = static_cast<int64_t>(targets[r]);
    loss[r] = t == ignore_index ? A(0) : l - static_cast<A>(logits[r * cols + t]);
  }
}

template <typename T, typename I>
void cross_entropy_backward(const T* logits, const I* targets, const acc_t<T>* lse, const acc_t<T>* dloss,
                            T* dlogits, int64_t rows, int64_t cols, int64_t ignore_index) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = static_cast<int64_t>(targets[r]);
    T* d = dlogits + r * cols;
    if (t == ignore_index) {
      for (int64_t c = 0; c < cols; ++c) d[c] = static_cast<T>(A(0));
      continue;
    }
    const A g = dloss[r], l = lse[r];
    const T* x = logits + r * cols;
    for (int64_t c = 0; c < cols; ++c) d[c] = static_cast<T>(g * std::exp(static_cast<A>(x[c]) - l));
    d[t] = static_cast<T>(static_cast<A>(d[t]) - g);
  }
}

}  // namespace polder::kernels::cpu::POLDER_ISA_NS
#endif
