// Softmax family on the CPU, rows in parallel, max-subtracted for stability. The kernels are compiled once
// per ISA level (the #else section; kernels/cpu/isa.h) and the public functions forward to the chosen one.
#ifndef POLDER_ISA_NS
#include "kernels/softmax.h"

#include <vector>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/vmath.h"

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
template <typename T, typename I>
void cross_entropy_forward_backward(T* logits, const I* targets, acc_t<T>* loss, int64_t rows, int64_t cols,
                                    int64_t ignore_index, acc_t<T> scale) {
  POLDER_ISA_CALL(cross_entropy_forward_backward, logits, targets, loss, rows, cols, ignore_index, scale);
}
template <typename T, typename I>
void vocab_ce_stats(const T* logits, const I* targets, acc_t<T>* stats, int64_t rows, int64_t cols,
                    int64_t real_cols, int64_t vocab_start, int64_t ignore_index) {
  POLDER_ISA_CALL(vocab_ce_stats, logits, targets, stats, rows, cols, real_cols, vocab_start, ignore_index);
}
template <typename T, typename I>
void vocab_ce_backward(const T* logits, const I* targets, const acc_t<T>* lse, const acc_t<T>* dloss,
                       T* dlogits, int64_t rows, int64_t cols, int64_t real_cols, int64_t vocab_start,
                       int64_t ignore_index) {
  POLDER_ISA_CALL(vocab_ce_backward, logits, targets, lse, dloss, dlogits, rows, cols, real_cols, vocab_start,
                  ignore_index);
}
// The per-row steps between the all-reduces: O(rows), compiled once.
template <typename A>
void vocab_ce_rescale(A* stats, const A* gmax, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    A& s = stats[rows + r];
    s = s == A(0) ? A(0) : s * std::exp(stats[r] - gmax[r]);
  }
}
template <typename A, typename I>
void vocab_ce_finish(const A* gmax, const A* stats, const I* targets, A* lse, A* loss, int64_t rows,
                     int64_t ignore_index) {
  for (int64_t r = 0; r < rows; ++r) {
    lse[r] = gmax[r] + std::log(stats[rows + r]);
    loss[r] = static_cast<int64_t>(targets[r]) == ignore_index ? A(0) : lse[r] - stats[2 * rows + r];
  }
}
template void vocab_ce_rescale<float>(float*, const float*, int64_t);
template void vocab_ce_rescale<double>(double*, const double*, int64_t);
#define POLDER_INSTANTIATE_VCE(T, I)                                                                       \
  template void vocab_ce_stats<T, I>(const T*, const I*, acc_t<T>*, int64_t, int64_t, int64_t, int64_t,    \
                                     int64_t);                                                             \
  template void vocab_ce_backward<T, I>(const T*, const I*, const acc_t<T>*, const acc_t<T>*, T*, int64_t, \
                                        int64_t, int64_t, int64_t, int64_t);
POLDER_INSTANTIATE_VCE(float, int32_t)
POLDER_INSTANTIATE_VCE(double, int32_t)
POLDER_INSTANTIATE_VCE(bf16, int32_t)
POLDER_INSTANTIATE_VCE(f16, int32_t)
POLDER_INSTANTIATE_VCE(float, int64_t)
POLDER_INSTANTIATE_VCE(double, int64_t)
POLDER_INSTANTIATE_VCE(bf16, int64_t)
POLDER_INSTANTIATE_VCE(f16, int64_t)
template void vocab_ce_finish<float, int32_t>(const float*, const float*, const int32_t*, float*, float*,
                                              int64_t, int64_t);
template void vocab_ce_finish<double, int32_t>(const double*, const double*, const int32_t*, double*, double*,
                                               int64_t, int64_t);
template void vocab_ce_finish<float, int64_t>(const float*, const float*, const int64_t*, float*, float*,
                                              int64_t, int64_t);
template void vocab_ce_finish<double, int64_t>(const double*, const double*, const int64_t*, double*, double*,
                                               int64_t, int64_t);

#define POLDER_INSTANTIATE(T)                                                  \
  template void softmax_forward<T>(const T*, T*, int64_t, int64_t);            \
  template void softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t); \
  template void log_softmax_forward<T>(const T*, T*, int64_t, int64_t);        \
  template void log_softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t);
#define POLDER_INSTANTIATE_CE(T, I)                                                                      \
  template void cross_entropy_forward<T, I>(const T*, const I*, acc_t<T>*, acc_t<T>*, int64_t, int64_t,  \
                                            int64_t);                                                    \
  template void cross_entropy_backward<T, I>(const T*, const I*, const acc_t<T>*, const acc_t<T>*, T*,   \
                                             int64_t, int64_t, int64_t);                                 \
  template void cross_entropy_forward_backward<T, I>(T*, const I*, acc_t<T>*, int64_t, int64_t, int64_t, \
                                                     acc_t<T>);
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
// Rows of float accumulation (f32, bf16, f16) take the vectorized exp and fixed-lane sums
// (kernels/cpu/vmath.h); f64 rows (the oracles' precision) keep libm.
template <typename A>
constexpr bool kVector = std::is_same_v<A, float>;

template <typename T>
acc_t<T> row_max(const T* x, int64_t cols) {
  using A = acc_t<T>;
  if constexpr (kVector<A>) {
    return vmath::row_max(x, cols);
  } else {
    A m = -std::numeric_limits<A>::infinity();
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, static_cast<A>(x[c]));
    return m;
  }
}
// sum of exp(x - m)
template <typename T>
acc_t<T> row_sum_exp(const T* x, int64_t cols, acc_t<T> m) {
  using A = acc_t<T>;
  if constexpr (kVector<A>) {
    return vmath::row_sum_exp(x, cols, 1.0f, m);
  } else {
    A s = 0;
    for (int64_t c = 0; c < cols; ++c) s += std::exp(static_cast<A>(x[c]) - m);
    return s;
  }
}
template <typename A>
A exp_of(A v) {
  if constexpr (kVector<A>) {
    return vmath::exp_approx(v);
  } else {
    return std::exp(v);
  }
}
template <typename T>
acc_t<T> row_lse(const T* x, int64_t cols) {
  const acc_t<T> m = row_max(x, cols);
  return m + std::log(row_sum_exp(x, cols, m));
}
// y[c] = g * exp(x[c] - l)
template <typename T>
void row_scaled_exp(const T* x, T* y, int64_t cols, acc_t<T> g, acc_t<T> l) {
  using A = acc_t<T>;
  if constexpr (kVector<A>) {
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c)
      vmath::store(y, c, g * vmath::exp_approx(static_cast<float>(x[c]) - l));
  } else {
    for (int64_t c = 0; c < cols; ++c) y[c] = static_cast<T>(g * std::exp(static_cast<A>(x[c]) - l));
  }
}
template <typename T>
acc_t<T> row_dot(const T* x, const T* y, int64_t cols) {
  using A = acc_t<T>;
  if constexpr (kVector<A>) {
    return vmath::row_dot(x, y, cols);
  } else {
    A dot = 0;
    for (int64_t c = 0; c < cols; ++c) dot += static_cast<A>(x[c]) * static_cast<A>(y[c]);
    return dot;
  }
}
constexpr int64_t kPar = 16384;
}  // namespace

template <typename T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols) {
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r)
    row_scaled_exp(x + r * cols, y + r * cols, cols, 1, row_lse(x + r * cols, cols));
}

template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    const T* yr = y + r * cols;
    const T* dyr = dy + r * cols;
    const A dot = row_dot(yr, dyr, cols);
    T* d = dx + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c)
      vmath::store(d, c, static_cast<A>(yr[c]) * (static_cast<A>(dyr[c]) - dot));
  }
}

template <typename T>
void log_softmax_forward(const T* x, T* y, int64_t rows, int64_t cols) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    const A lse = row_lse(x + r * cols, cols);
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) vmath::store(yr, c, static_cast<A>(xr[c]) - lse);
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
    T* d = dx + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c)
      vmath::store(d, c, static_cast<A>(dyr[c]) - exp_of<A>(static_cast<A>(yr[c])) * s);
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
      std::fill(d, d + cols, static_cast<T>(A(0)));
      continue;
    }
    const A g = dloss[r];
    row_scaled_exp(logits + r * cols, d, cols, g, lse[r]);
    d[t] = static_cast<T>(static_cast<A>(d[t]) - g);
  }
}

// One row at a time: the forward's two passes bring it into L2, where the gradient pass finds it (the row of
// a 32k vocabulary is 64 KB in bf16); the gradient overwrites the row after its last read.
template <typename T, typename I>
void cross_entropy_forward_backward(T* logits, const I* targets, acc_t<T>* loss, int64_t rows, int64_t cols,
                                    int64_t ignore_index, acc_t<T> scale) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    T* x = logits + r * cols;
    const int64_t t = static_cast<int64_t>(targets[r]);
    if (t == ignore_index) {
      loss[r] = A(0);
      std::fill(x, x + cols, static_cast<T>(A(0)));
      continue;
    }
    if constexpr (kVector<A>) {
      // One exp per element: exp(x - max) kept in a per-thread row, softmax = that / sum (the loss is
      // row_lse's, bit for bit; the gradient differs from cross_entropy_backward's exp(x - lse) by rounding).
      thread_local std::vector<float> e;
      if (e.size() < static_cast<size_t>(cols)) e.resize(static_cast<size_t>(cols));
      const float m = row_max(x, cols);
      const float s = vmath::row_sum_exp_store(x, cols, 1.0f, m, e.data());
      loss[r] = (m + std::log(s)) - static_cast<A>(x[t]);
      const float g = scale / s;
      const float* __restrict er = e.data();
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) vmath::store(x, c, g * er[c]);
      x[t] = static_cast<T>(g * er[t] - scale);
    } else {
      const A l = row_lse(x, cols);
      loss[r] = l - static_cast<A>(x[t]);
      row_scaled_exp(x, x, cols, scale, l);
      x[t] = static_cast<T>(static_cast<A>(x[t]) - scale);
    }
  }
}

template <typename T, typename I>
void vocab_ce_stats(const T* logits, const I* targets, acc_t<T>* stats, int64_t rows, int64_t cols,
                    int64_t real_cols, int64_t vocab_start, int64_t ignore_index) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * real_cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = logits + r * cols;
    const A m = real_cols > 0 ? row_max(x, real_cols) : -std::numeric_limits<A>::infinity();
    const A s = real_cols > 0 ? row_sum_exp(x, real_cols, m) : A(0);
    const int64_t t = static_cast<int64_t>(targets[r]) - vocab_start;
    const bool mine = static_cast<int64_t>(targets[r]) != ignore_index && t >= 0 && t < real_cols;
    stats[r] = m;
    stats[rows + r] = s;
    stats[2 * rows + r] = mine ? static_cast<A>(x[t]) : A(0);
  }
}

template <typename T, typename I>
void vocab_ce_backward(const T* logits, const I* targets, const acc_t<T>* lse, const acc_t<T>* dloss,
                       T* dlogits, int64_t rows, int64_t cols, int64_t real_cols, int64_t vocab_start,
                       int64_t ignore_index) {
  using A = acc_t<T>;
#pragma omp parallel for if (rows * cols > kPar)
  for (int64_t r = 0; r < rows; ++r) {
    T* d = dlogits + r * cols;
    const bool ignored = static_cast<int64_t>(targets[r]) == ignore_index;
    std::fill(d + (ignored ? 0 : real_cols), d + cols, static_cast<T>(A(0)));
    if (ignored) continue;
    const A g = dloss[r];
    row_scaled_exp(logits + r * cols, d, real_cols, g, lse[r]);
    const int64_t t = static_cast<int64_t>(targets[r]) - vocab_start;
    if (t >= 0 && t < real_cols) d[t] = static_cast<T>(static_cast<A>(d[t]) - g);
  }
}

}  // namespace polder::kernels::cpu::POLDER_ISA_NS
#endif
