// Embedding on the CPU. The backward splits columns across threads so every table cell is summed by one
// thread in token order: deterministic without atomics. The backward is compiled once per ISA level (the
// #else section; kernels/cpu/isa.h).
#ifndef POLDER_ISA_NS
#include "kernels/embedding.h"

#include <algorithm>
#include <cstring>

#include <omp.h>

#include "kernels/cpu/isa.h"

#define POLDER_ISA_SOURCE "kernels/cpu/embedding.cpp"
#include "kernels/cpu/isa_passes.h"

namespace polder::kernels::cpu {

template <typename T, typename I>
void embedding_forward(const T* table, const I* ids, T* out, int64_t n, int64_t C) {
#pragma omp parallel for if (n * C > 65536)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(out + i * C, table + static_cast<int64_t>(ids[i]) * C, static_cast<size_t>(C) * sizeof(T));
}

template <typename T, typename I>
void embedding_backward(const T* dout, const I* ids, acc_t<T>* dtable, int64_t n, int64_t V, int64_t C,
                        bool accumulate) {
  POLDER_ISA_CALL(embedding_backward, dout, ids, dtable, n, V, C, accumulate);
}

#define POLDER_INSTANTIATE(T, I)                                                   \
  template void embedding_forward<T, I>(const T*, const I*, T*, int64_t, int64_t); \
  template void embedding_backward<T, I>(const T*, const I*, acc_t<T>*, int64_t, int64_t, int64_t, bool);
POLDER_INSTANTIATE(float, int32_t)
POLDER_INSTANTIATE(double, int32_t)
POLDER_INSTANTIATE(bf16, int32_t)
POLDER_INSTANTIATE(f16, int32_t)
POLDER_INSTANTIATE(float, int64_t)
POLDER_INSTANTIATE(double, int64_t)
POLDER_INSTANTIATE(bf16, int64_t)
POLDER_INSTANTIATE(f16, int64_t)

}  // namespace polder::kernels::cpu

#else  // the backward, once per ISA level

namespace polder::kernels::cpu::POLDER_ISA_NS {

template <typename T, typename I>
void embedding_backward(const T* dout, const I* ids, acc_t<T>* dtable, int64_t n, int64_t V, int64_t C,
                        bool accumulate) {
  if (!accumulate) std::fill(dtable, dtable + V * C, acc_t<T>(0));
#pragma omp parallel if (n * C > 65536)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t c0 = C * t / nt, c1 = C * (t + 1) / nt;
    for (int64_t i = 0; i < n; ++i) {
      acc_t<T>* row = dtable + static_cast<int64_t>(ids[i]) * C;
      const T* g = dout + i * C;
      for (int64_t c = c0; c < c1; ++c) row[c] += static_cast<acc_t<T> >(g[c]);
    }
  }
}

}  // namespace polder::kernels::cpu::POLDER_ISA_NS
#endif
