// Flash-style attention on the CPU. Forward: one query row at a time, keys in blocks of kBlock with an online
// softmax. Backward in two passes so every output row is owned by one thread (deterministic, no atomics):
// pass 1 computes dq per query row, pass 2 computes dk/dv per key row, both recomputing P from lse. Compiled
// once per ISA level (the #else section; kernels/cpu/isa.h); the public functions forward to the chosen one.
#ifndef POLDER_ISA_NS
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/isa.h"

#define POLDER_ISA_SOURCE "kernels/cpu/attention.cpp"
#include "kernels/cpu/isa_passes.h"

namespace polder::kernels::cpu {

template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, acc_t<T>* lse) {
  POLDER_ISA_CALL(attention_forward, s, q, k, v, o, lse);
}
template <typename T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                        const acc_t<T>* lse, const T* dout, T* dq, T* dk, T* dv) {
  POLDER_ISA_CALL(attention_backward, s, q, k, v, o, lse, dout, dq, dk, dv);
}

#define POLDER_INSTANTIATE(T)                                                                             \
  template void attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, T*, acc_t<T>*); \
  template void attention_backward<T>(const AttentionShape&, const T*, const T*, const T*, const T*,      \
                                      const acc_t<T>*, const T*, T*, T*, T*);
POLDER_INSTANTIATE(float)
POLDER_INSTANTIATE(double)
POLDER_INSTANTIATE(bf16)
POLDER_INSTANTIATE(f16)

}  // namespace polder::kernels::cpu

#else  // the kernels, once per ISA level

namespace polder::kernels::cpu::POLDER_ISA_NS {
namespace {

constexpr int64_t kBlock = 64;
// Below this many multiply-adds a parallel region costs more than it saves (and, on a loaded machine, waits
// for a descheduled thread at its barrier).
constexpr int64_t kParallelWork = 1 << 16;
inline int64_t work(const AttentionShape& s) {
  return s.B * s.Hq * s.T * s.S * s.D;
}

// Eight independent partial sums: without -ffast-math a single accumulator is a serial dependency chain the
// compiler may not reorder; eight lanes vectorise (one 256-bit FMA per step) and fix the summation order.
template <typename A, typename T>
inline A dot(const A* a, const T* b, int64_t n) {
  A lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] += a[i + l] * static_cast<A>(b[i + l]);
  A s = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  for (; i < n; ++i) s += a[i] * static_cast<A>(b[i]);
  return s;
}

template <typename A, typename T>
inline void load(A* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<A>(src[i]);
}

// Last key index (exclusive) that query t may see.
inline int64_t key_end(const AttentionShape& s, int64_t t) {
  return s.causal ? std::min(s.S, t + (s.S - s.T) + 1) : s.S;
}
// First query index that may see key j.
inline int64_t query_begin(const AttentionShape& s, int64_t j) {
  return s.causal ? std::max<int64_t>(0, j - (s.S - s.T)) : 0;
}

}  // namespace

template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, acc_t<T>* lse) {
  using A = acc_t<T>;
  const int64_t D = s.D, group = s.Hq / s.Hkv;
  const A scale = static_cast<A>(s.scale);
#pragma omp parallel if (work(s) > kParallelWork)
  {
    std::vector<A> qrow(static_cast<size_t>(D)), acc(static_cast<size_t>(D)), score(kBlock);
#pragma omp for collapse(3) schedule(dynamic, 4)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.Hq; ++h)
        for (int64_t t = 0; t < s.T; ++t) {
          const int64_t hk = h / group;
          load(qrow.data(), q + ((b * s.T + t) * s.Hq + h) * D, D);
          std::fill(acc.begin(), acc.end(), A(0));
          A m = -std::numeric_limits<A>::infinity(), l = 0;
          const int64_t end = key_end(s, t);
          for (int64_t j0 = 0; j0 < end; j0 += kBlock) {
            const int64_t n = std::min(kBlock, end - j0);
            A bm = -std::numeric_limits<A>::infinity();
            for (int64_t j = 0; j < n; ++j) {
              score[j] = scale * dot(qrow.data(), k + ((b * s.S + j0 + j) * s.Hkv + hk) * D, D);
              bm = std::max(bm, score[j]);
            }
            const A m_new = std::max(m, bm);
            const A correction = std::exp(m - m_new);  // exp(-inf) = 0 on the first block
            l *= correction;
            for (int64_t d = 0; d < D; ++d) acc[d] *= correction;
            for (int64_t j = 0; j < n; ++j) {
              const A p = std::exp(score[j] - m_new);
              l += p;
              const T* vr = v + ((b * s.S + j0 + j) * s.Hkv + hk) * D;
              for (int64_t d = 0; d < D; ++d) acc[d] += p * static_cast<A>(vr[d]);
            }
            m = m_new;
          }
          T* orow = o + ((b * s.T + t) * s.Hq + h) * D;
          if (end <= 0) {  // a query that sees no key (only possible when S < T): output zeros
            for (int64_t d = 0; d < D; ++d) orow[d] = static_cast<T>(A(0));
            lse[(b * s.Hq + h) * s.T + t] = -std::numeric_limits<A>::infinity();
            continue;
          }
          for (int64_t d = 0; d < D; ++d) orow[d] = static_cast<T>(acc[d] / l);
          lse[(b * s.Hq + h) * s.T + t] = m + std::log(l);
        }
  }
}

template <typename T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                        const acc_t<T>* lse, const T* dout, T* dq, T* dk, T* dv) {
  using A = acc_t<T>;
  const int64_t D = s.D, group = s.Hq / s.Hkv;
  const A scale = static_cast<A>(s.scale);
  // Di = sum(dO_i * O_i), laid out like lse.
  std::vector<A> delta(static_cast<size_t>(s.B * s.Hq * s.T));
#pragma omp parallel for collapse(3) if (work(s) > kParallelWork)
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t t = 0; t < s.T; ++t) {
        const int64_t row = ((b * s.T + t) * s.Hq + h) * D;
        A acc = 0;
        for (int64_t d = 0; d < D; ++d) acc += static_cast<A>(dout[row + d]) * static_cast<A>(o[row + d]);
        delta[static_cast<size_t>((b * s.Hq + h) * s.T + t)] = acc;
      }

      // Pass 1: dq, one query row per iteration.
#pragma omp parallel if (work(s) > kParallelWork)
  {
    std::vector<A> qrow(static_cast<size_t>(D)), grow(static_cast<size_t>(D)), acc(static_cast<size_t>(D));
#pragma omp for collapse(3) schedule(dynamic, 4)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.Hq; ++h)
        for (int64_t t = 0; t < s.T; ++t) {
          const int64_t hk = h / group, row = ((b * s.T + t) * s.Hq + h) * D;
          const int64_t stat = (b * s.Hq + h) * s.T + t;
          load(qrow.data(), q + row, D);
          load(grow.data(), dout + row, D);
          std::fill(acc.begin(), acc.end(), A(0));
          const int64_t end = key_end(s, t);
          for (int64_t j = 0; j < end; ++j) {
            const T* kr = k + ((b * s.S + j) * s.Hkv + hk) * D;
            const T* vr = v + ((b * s.S + j) * s.Hkv + hk) * D;
            const A p = std::exp(scale * dot(qrow.data(), kr, D) - lse[stat]);
            const A ds = p * (dot(grow.data(), vr, D) - delta[static_cast<size_t>(stat)]);
            for (int64_t d = 0; d < D; ++d) acc[d] += ds * static_cast<A>(kr[d]);
          }
          for (int64_t d = 0; d < D; ++d) dq[row + d] = static_cast<T>(scale * acc[d]);
        }
  }

  // Pass 2: dk and dv, one key row per iteration, summing over the query heads of its group.
#pragma omp parallel if (work(s) > kParallelWork)
  {
    std::vector<A> krow(static_cast<size_t>(D)), vrow(static_cast<size_t>(D)), dka(static_cast<size_t>(D)),
        dva(static_cast<size_t>(D));
#pragma omp for collapse(3) schedule(dynamic, 4)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t hk = 0; hk < s.Hkv; ++hk)
        for (int64_t j = 0; j < s.S; ++j) {
          const int64_t krow_off = ((b * s.S + j) * s.Hkv + hk) * D;
          load(krow.data(), k + krow_off, D);
          load(vrow.data(), v + krow_off, D);
          std::fill(dka.begin(), dka.end(), A(0));
          std::fill(dva.begin(), dva.end(), A(0));
          for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
            for (int64_t t = query_begin(s, j); t < s.T; ++t) {
              const int64_t row = ((b * s.T + t) * s.Hq + h) * D;
              const int64_t stat = (b * s.Hq + h) * s.T + t;
              const A p = std::exp(scale * dot(krow.data(), q + row, D) - lse[stat]);
              const A ds = p * (dot(vrow.data(), dout + row, D) - delta[static_cast<size_t>(stat)]);
              for (int64_t d = 0; d < D; ++d) {
                dka[d] += ds * static_cast<A>(q[row + d]);
                dva[d] += p * static_cast<A>(dout[row + d]);
              }
            }
          for (int64_t d = 0; d < D; ++d) {
            dk[krow_off + d] = static_cast<T>(scale * dka[d]);
            dv[krow_off + d] = static_cast<T>(dva[d]);
          }
        }
  }
}

}  // namespace polder::kernels::cpu::POLDER_ISA_NS
#endif
