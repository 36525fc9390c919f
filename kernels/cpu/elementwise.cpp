// CPU elementwise kernels (the spec for their CUDA twins). OpenMP across elements; reductions are serial
// within fixed chunks and combined in chunk order so results do not depend on the thread count. The hot ones
// are compiled once per ISA level (the #else section; kernels/cpu/isa.h) and forwarded to the chosen one.
#ifndef POLDER_ISA_NS
#include "kernels/elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/vmath.h"

namespace polder::kernels::cpu {
namespace {

template <typename T>
using via_t = std::conditional_t<std::is_same_v<T, double> || std::is_same_v<T, int64_t>, double, float>;

template <typename T>
inline acc_t<T> ld(T v) {
  return static_cast<acc_t<T>>(v);
}

constexpr int64_t kParallelMin = 1 << 14;

}  // namespace
}  // namespace polder::kernels::cpu

#define POLDER_ISA_SOURCE "kernels/cpu/elementwise.cpp"
#include "kernels/cpu/isa_passes.h"

namespace polder::kernels::cpu {

void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) {
  visit_dtype(dst_dtype, [&](auto d) {
    visit_dtype(src_dtype, [&](auto s) {
      using D = decltype(d);
      using S = decltype(s);
      D* out = static_cast<D*>(dst);
      const S* in = static_cast<const S*>(src);
#pragma omp parallel for if (n > kParallelMin)
      for (int64_t i = 0; i < n; ++i) vmath::store(out, i, static_cast<via_t<S>>(in[i]));
    });
  });
}

void fill(void* dst, DType dtype, int64_t n, double value) {
  visit_dtype(dtype, [&](auto d) {
    using D = decltype(d);
    D v = static_cast<D>(static_cast<via_t<D>>(value));
    D* out = static_cast<D*>(dst);
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) out[i] = v;
  });
}

void accumulate(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, double alpha) {
  visit_dtype(dst_dtype, [&](auto d) {
    visit_dtype(src_dtype, [&](auto s) {
      using D = decltype(d);
      using S = decltype(s);
      using V = std::conditional_t<std::is_same_v<D, double> || std::is_same_v<S, double>, double, float>;
      D* out = static_cast<D*>(dst);
      const S* in = static_cast<const S*>(src);
      V a = static_cast<V>(alpha);
#pragma omp parallel for if (n > kParallelMin)
      for (int64_t i = 0; i < n; ++i)
        vmath::store(
            out, i,
            static_cast<V>(static_cast<via_t<D>>(out[i])) + a * static_cast<V>(static_cast<via_t<S>>(in[i])));
    });
  });
}

template <typename T>
void reduce_to(const T* g, T* out, int64_t out_numel, const int64_t* stride, const Broadcast& bc) {
  std::vector<acc_t<T>> acc(static_cast<size_t>(out_numel), acc_t<T>(0));
  const int nd = bc.ndim;
  for (int64_t i = 0; i < bc.numel; ++i) {
    int64_t rem = i, o = 0;
    for (int d = nd - 1; d >= 0; --d) {
      o += (rem % bc.shape[d]) * stride[d];
      rem /= bc.shape[d];
    }
    acc[static_cast<size_t>(o)] += ld(g[i]);
  }
  for (int64_t j = 0; j < out_numel; ++j) out[j] = static_cast<T>(acc[static_cast<size_t>(j)]);
}

template <typename T>
double sum(const T* x, int64_t n) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    double s = 0;
    int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end; ++i) s += static_cast<double>(ld(x[i]));
    partial[static_cast<size_t>(c)] = s;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

void transpose(const void* x, void* y, size_t es, int64_t outer, int64_t d0, int64_t mid, int64_t d1,
               int64_t inner) {
  const char* src = static_cast<const char*>(x);
  char* dst = static_cast<char*>(y);
  const size_t row = static_cast<size_t>(inner) * es;
#pragma omp parallel for collapse(2) if (outer * d0 * mid * d1 * inner > kParallelMin)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < d1; ++j)
      for (int64_t m = 0; m < mid; ++m)
        for (int64_t i = 0; i < d0; ++i) {
          int64_t s = (((o * d0 + i) * mid + m) * d1 + j);
          int64_t t = (((o * d1 + j) * mid + m) * d0 + i);
          std::memcpy(dst + static_cast<size_t>(t) * row, src + static_cast<size_t>(s) * row, row);
        }
}

void copy_blocks(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t outer,
                 int64_t block) {
#pragma omp parallel for if (outer * block > (1 << 18))
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(static_cast<char*>(dst) + o * dst_pitch, static_cast<const char*>(src) + o * src_pitch,
                static_cast<size_t>(block));
}

template <typename T>
void binary(BinaryOp op, const T* a, const T* b, T* out, const Broadcast& bc) {
  POLDER_ISA_CALL(binary, op, a, b, out, bc);
}
template <typename T>
void scale(const T* x, T* y, int64_t n, double alpha) {
  POLDER_ISA_CALL(scale, x, y, n, alpha);
}
template <typename T>
void sum_dim(const T* x, T* y, int64_t outer, int64_t reduce, int64_t inner) {
  POLDER_ISA_CALL(sum_dim, x, y, outer, reduce, inner);
}
template <typename T>
void expand_dim(const T* x, T* y, int64_t outer, int64_t reduce, int64_t inner, double alpha) {
  POLDER_ISA_CALL(expand_dim, x, y, outer, reduce, inner, alpha);
}
template <typename T>
void silu_forward(const T* x, T* y, int64_t n) {
  POLDER_ISA_CALL(silu_forward, x, y, n);
}
template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n) {
  POLDER_ISA_CALL(silu_backward, x, dy, dx, n);
}
template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n) {
  POLDER_ISA_CALL(swiglu_forward, gate, up, y, n);
}
template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, int64_t n) {
  POLDER_ISA_CALL(swiglu_backward, gate, up, dy, dgate, dup, n);
}

#define POLDER_INSTANTIATE(T)                                                          \
  template void binary<T>(BinaryOp, const T*, const T*, T*, const Broadcast&);         \
  template void reduce_to<T>(const T*, T*, int64_t, const int64_t*, const Broadcast&); \
  template void scale<T>(const T*, T*, int64_t, double);                               \
  template double sum<T>(const T*, int64_t);                                           \
  template void sum_dim<T>(const T*, T*, int64_t, int64_t, int64_t);                   \
  template void expand_dim<T>(const T*, T*, int64_t, int64_t, int64_t, double);        \
  template void silu_forward<T>(const T*, T*, int64_t);                                \
  template void silu_backward<T>(const T*, const T*, T*, int64_t);                     \
  template void swiglu_forward<T>(const T*, const T*, T*, int64_t);                    \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t);
POLDER_INSTANTIATE(float)
POLDER_INSTANTIATE(double)
POLDER_INSTANTIATE(bf16)
POLDER_INSTANTIATE(f16)

}  // namespace polder::kernels::cpu

#else  // the hot kernels, once per ISA level

namespace polder::kernels::cpu::POLDER_ISA_NS {

// Float accumulation takes the vectorized exp (kernels/cpu/vmath.h), so these loops vectorize.
template <typename A>
inline A sigmoid(A x) {
  if constexpr (std::is_same_v<A, float>) {
    return 1.0f / (1.0f + vmath::exp_approx(-x));
  } else {
    return A(1) / (A(1) + std::exp(-x));
  }
}

template <typename T>
void binary(BinaryOp op, const T* a, const T* b, T* out, const Broadcast& bc) {
  auto apply = [op](acc_t<T> x, acc_t<T> y) -> acc_t<T> {
    switch (op) {
      case BinaryOp::add:
        return x + y;
      case BinaryOp::sub:
        return x - y;
      case BinaryOp::mul:
        return x * y;
    }
    return 0;
  };
  const int64_t n = bc.numel;
  if (bc.same_shape) {
    // One loop per op: with the switch inside, the loop did not vectorize.
    auto run = [&](auto f) {
#pragma omp parallel for if (n > kParallelMin)
      for (int64_t i = 0; i < n; ++i) vmath::store(out, i, f(ld(a[i]), ld(b[i])));
    };
    using A = acc_t<T>;
    switch (op) {
      case BinaryOp::add:
        run([](A x, A y) { return x + y; });
        return;
      case BinaryOp::sub:
        run([](A x, A y) { return x - y; });
        return;
      case BinaryOp::mul:
        run([](A x, A y) { return x * y; });
        return;
    }
    return;
  }
  // General broadcast: split the output into rows of the last dim and walk the outer index per row.
  const int nd = bc.ndim;
  const int64_t cols = nd ? bc.shape[nd - 1] : 1;
  const int64_t rows = cols ? n / cols : 0;
  const int64_t sa = nd ? bc.a_stride[nd - 1] : 0, sb = nd ? bc.b_stride[nd - 1] : 0;
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, oa = 0, ob = 0;
    for (int d = nd - 2; d >= 0; --d) {
      int64_t idx = rem % bc.shape[d];
      rem /= bc.shape[d];
      oa += idx * bc.a_stride[d];
      ob += idx * bc.b_stride[d];
    }
    T* o = out + r * cols;
    for (int64_t c = 0; c < cols; ++c) vmath::store(o, c, apply(ld(a[oa + c * sa]), ld(b[ob + c * sb])));
  }
}

template <typename T>
void scale(const T* x, T* y, int64_t n, double alpha) {
  const acc_t<T> a = static_cast<acc_t<T>>(alpha);
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) vmath::store(y, i, a * ld(x[i]));
}

template <typename T>
void sum_dim(const T* x, T* y, int64_t outer, int64_t reduce, int64_t inner) {
#pragma omp parallel for if (outer * reduce * inner > kParallelMin)
  for (int64_t o = 0; o < outer; ++o) {
    std::vector<acc_t<T>> acc(static_cast<size_t>(inner), acc_t<T>(0));
    for (int64_t r = 0; r < reduce; ++r) {
      const T* row = x + (o * reduce + r) * inner;
      for (int64_t i = 0; i < inner; ++i) acc[static_cast<size_t>(i)] += ld(row[i]);
    }
    for (int64_t i = 0; i < inner; ++i) vmath::store(y, o * inner + i, acc[static_cast<size_t>(i)]);
  }
}

template <typename T>
void expand_dim(const T* x, T* y, int64_t outer, int64_t reduce, int64_t inner, double alpha) {
  const acc_t<T> a = static_cast<acc_t<T>>(alpha);
#pragma omp parallel for if (outer * reduce * inner > kParallelMin)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t r = 0; r < reduce; ++r)
      for (int64_t i = 0; i < inner; ++i)
        vmath::store(y, (o * reduce + r) * inner + i, a * ld(x[o * inner + i]));
}

template <typename T>
void silu_forward(const T* x, T* y, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    acc_t<T> v = ld(x[i]);
    vmath::store(y, i, v * sigmoid(v));
  }
}

template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    acc_t<T> v = ld(x[i]), s = sigmoid(v);
    vmath::store(dx, i, ld(dy[i]) * s * (acc_t<T>(1) + v * (acc_t<T>(1) - s)));
  }
}

template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    acc_t<T> g = ld(gate[i]);
    vmath::store(y, i, g * sigmoid(g) * ld(up[i]));
  }
}

template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    acc_t<T> g = ld(gate[i]), s = sigmoid(g), d = ld(dy[i]);
    vmath::store(dgate, i, d * ld(up[i]) * s * (acc_t<T>(1) + g * (acc_t<T>(1) - s)));
    vmath::store(dup, i, d * g * s);
  }
}

}  // namespace polder::kernels::cpu::POLDER_ISA_NS
#endif
