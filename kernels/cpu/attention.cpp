// Flash-style attention on the CPU. Forward: one query row at a time, keys in blocks of kBlock with an online
// softmax. Backward in two passes so every output row is owned by one thread (deterministic, no atomics):
// pass 1 computes dq per query row, pass 2 computes dk/dv per key row, both recomputing P from lse. Compiled
// once per ISA level (the #else section; kernels/cpu/isa.h); the public functions forward to the chosen one.
#ifndef POLDER_ISA_NS
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/vmath.h"

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

// delta_i = sum(dO_i * O_i) of every query row, laid out like lse: float rows through vmath's fixed-lane dot,
// f64 rows (the oracle) in order.
template <typename A, typename T>
std::vector<A> output_deltas(const AttentionShape& s, const T* dout, const T* o) {
  const int64_t D = s.D;
  std::vector<A> delta(static_cast<size_t>(s.B * s.Hq * s.T));
#pragma omp parallel for collapse(3) if (work(s) > kParallelWork)
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t t = 0; t < s.T; ++t) {
        const int64_t row = ((b * s.T + t) * s.Hq + h) * D;
        A acc = 0;
        if constexpr (std::is_same_v<A, float>) {
          acc = vmath::row_dot(dout + row, o + row, D);
        } else {
          for (int64_t d = 0; d < D; ++d) acc += static_cast<A>(dout[row + d]) * static_cast<A>(o[row + d]);
        }
        delta[static_cast<size_t>((b * s.Hq + h) * s.T + t)] = acc;
      }
  return delta;
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
void attention_forward_rows(const AttentionShape& s, const T* q, const T* k, const T* v, T* o,
                            acc_t<T>* lse) {
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
void attention_backward_rows(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                             const acc_t<T>* lse, const T* dout, T* dq, T* dk, T* dv) {
  using A = acc_t<T>;
  const int64_t D = s.D, group = s.Hq / s.Hkv;
  const A scale = static_cast<A>(s.scale);
  const std::vector<A> delta = output_deltas<A>(s, dout, o);

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

// ---- Blocked kernels (float accumulation: f32, bf16, f16) ----
// Tiles of kQ queries x kK keys: scores and their gradients are small GEMMs on packed float tiles (the
// inner loops run over a tile row of fixed width, so they vectorize with every element's sum in d order:
// the same result on AVX2 and AVX-512), and the softmax's exp is vmath::exp_approx. f64 keeps the row
// kernels above (the oracle precision of the tests).
namespace {
constexpr int64_t kQ = 32, kK = 64;

// The tile products keep their accumulators in registers: GCC vector types of this pass's register width
// (16 floats on AVX-512, 8 on AVX2, 4 on the baseline), as many tile rows at a time as kAcc accumulator
// registers hold (AVX-512 has 32 vector registers, AVX2 and SSE 16). Every element is summed in the same
// order on every level, so AVX2 and AVX-512 give the same bits.
#if POLDER_ISA_LEVEL == 2
constexpr int kVec = 16, kAcc = 16;
#elif POLDER_ISA_LEVEL == 1
constexpr int kVec = 8, kAcc = 8;
#else
constexpr int kVec = 4, kAcc = 8;
#endif
using vf = float __attribute__((vector_size(kVec * sizeof(float))));
[[gnu::always_inline]] inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
[[gnu::always_inline]] inline void storev(float* p, vf v) {
  std::memcpy(p, &v, sizeof v);
}

// Rows [i, i + R) of c = a bt (see tile_abt).
template <int64_t W, int R>
[[gnu::always_inline]] inline void abt_rows(const float* a, const float* bt, int64_t D, float* c) {
  constexpr int V = static_cast<int>(W / kVec);
  vf acc[R][V] = {};
  for (int64_t d = 0; d < D; ++d) {
    vf b[V];
    for (int v = 0; v < V; ++v) b[v] = loadv(bt + d * W + v * kVec);
    for (int r = 0; r < R; ++r) {
      const float x = a[r * D + d];
      for (int v = 0; v < V; ++v) acc[r][v] += x * b[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) storev(c + r * W + v * kVec, acc[r][v]);
}

// c[i][0, W) = sum_d a[i][d] * bt[d][0, W) for i < m; a: m x D (row stride D), bt: D x W.
template <int64_t W>
inline void tile_abt(const float* a, int64_t m, const float* bt, int64_t D, float* c) {
  static_assert(W % kVec == 0);
  constexpr int V = static_cast<int>(W / kVec);
  constexpr int R = kAcc / V >= 4 ? 4 : (kAcc / V >= 2 ? 2 : 1);
  int64_t i = 0;
  for (; i + R <= m; i += R) abt_rows<W, R>(a + i * D, bt, D, c + i * W);
  for (; i < m; ++i) abt_rows<W, 1>(a + i * D, bt, D, c + i * W);
}

// Rows [0, R) and columns [d0, d0 + CV kVec) of c += p b (see tile_ab).
template <int64_t W, int R, int CV>
[[gnu::always_inline]] inline void ab_block(const float* p, int64_t n, const float* b, int64_t D, float* c,
                                            int64_t d0) {
  vf acc[R][CV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < CV; ++v) acc[r][v] = loadv(c + r * D + d0 + v * kVec);
  for (int64_t j = 0; j < n; ++j) {
    vf bj[CV];
    for (int v = 0; v < CV; ++v) bj[v] = loadv(b + j * D + d0 + v * kVec);
    for (int r = 0; r < R; ++r) {
      const float pv = p[r * W + j];
      for (int v = 0; v < CV; ++v) acc[r][v] += pv * bj[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < CV; ++v) storev(c + r * D + d0 + v * kVec, acc[r][v]);
}

template <int64_t W, int R>
[[gnu::always_inline]] inline void ab_rows(const float* p, int64_t n, const float* b, int64_t D, float* c) {
  int64_t d0 = 0;
  for (; d0 + 4 * kVec <= D; d0 += 4 * kVec) ab_block<W, R, 4>(p, n, b, D, c, d0);
  for (; d0 + 2 * kVec <= D; d0 += 2 * kVec) ab_block<W, R, 2>(p, n, b, D, c, d0);
  for (; d0 + kVec <= D; d0 += kVec) ab_block<W, R, 1>(p, n, b, D, c, d0);
  // Columns past the last whole vector: explicit fmas, the vector code's rounding. A plain `acc += p * b`
  // here may become an in-order vector reduction that rounds the products apart (GCC does so on AVX-512), and
  // then AVX2 and AVX-512 would differ.
  for (; d0 < D; ++d0)
    for (int r = 0; r < R; ++r) {
      float acc = c[r * D + d0];
      for (int64_t j = 0; j < n; ++j) acc = std::fma(p[r * W + j], b[j * D + d0], acc);
      c[r * D + d0] = acc;
    }
}

// c[i][0, D) += sum_{j < n} p[i][j] * b[j][0, D) for i < m; p: m x W, b: n x D.
template <int64_t W>
inline void tile_ab(const float* p, int64_t m, int64_t n, const float* b, int64_t D, float* c) {
  constexpr int R = kAcc >= 16 ? 4 : 2;  // 4 vectors of columns per row at most
  int64_t i = 0;
  for (; i + R <= m; i += R) ab_rows<W, R>(p + i * W, n, b, D, c + i * D);
  for (; i < m; ++i) ab_rows<W, 1>(p + i * W, n, b, D, c + i * D);
}

// Rows [r0, r0 + n) of a (rows, heads, D) tensor's head `head`, times `mul`: packed row-major (n x D) into
// dst, or transposed (D x W, columns >= n zero) into dst_t.
template <typename T>
inline void pack_rows(const T* src, int64_t r0, int64_t n, int64_t heads, int64_t head, int64_t D, float mul,
                      float* dst) {
  for (int64_t r = 0; r < n; ++r) {
    const T* row = src + ((r0 + r) * heads + head) * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) dst[r * D + d] = mul * static_cast<float>(row[d]);
  }
}
template <int64_t W, typename T>
inline void pack_cols(const T* src, int64_t r0, int64_t n, int64_t heads, int64_t head, int64_t D, float mul,
                      float* dst_t) {
  for (int64_t r = 0; r < n; ++r) {
    const T* row = src + ((r0 + r) * heads + head) * D;
    for (int64_t d = 0; d < D; ++d) dst_t[d * W + r] = mul * static_cast<float>(row[d]);
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t r = n; r < W; ++r) dst_t[d * W + r] = 0.0f;
}

template <typename T>
inline void store_rows(const float* src, int64_t n, int64_t D, float mul, T* dst, int64_t heads, int64_t head,
                       int64_t r0) {
  for (int64_t r = 0; r < n; ++r) {
    T* row = dst + ((r0 + r) * heads + head) * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) vmath::store(row, d, mul * src[r * D + d]);
  }
}

// Long sequences: every tile of one (B, rows, heads, D) tensor packed once per call, as pack_rows (W x D) or
// pack_cols (D x W) would pack it, so the tile loops read them instead of packing the same key, value, query
// and gradient tiles again for each tile they meet (up to T / kQ times; the transposing pack is a strided
// scalar loop). Per-thread buffers reused across calls, one slot per tensor a kernel keeps. Short sequences
// pack each tile where it is used: there the extra parallel regions and the pass over whole tensors out of
// cache cost as much as the few repeated packs save (kPrepackMinT).
template <int64_t W>
struct PackedTiles {
  const float* base = nullptr;
  int64_t heads = 0, ntiles = 0, D = 0;
  const float* at(int64_t b, int64_t head, int64_t tile) const {
    return base + ((b * heads + head) * ntiles + tile) * W * D;
  }
};
template <int64_t W, typename T>
PackedTiles<W> pack_all(int slot, const T* src, int64_t B, int64_t rows, int64_t heads, int64_t D, float mul,
                        bool transposed, bool parallel) {
  thread_local std::vector<float> buffers[8];
  std::vector<float>& buf = buffers[slot];
  PackedTiles<W> p;
  p.heads = heads;
  p.ntiles = (rows + W - 1) / W;
  p.D = D;
  const size_t n = static_cast<size_t>(B * heads * p.ntiles * W * D);
  if (buf.size() < n) buf.resize(n);
  p.base = buf.data();
  float* out = buf.data();
#pragma omp parallel for collapse(3) if (parallel)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hd = 0; hd < heads; ++hd)
      for (int64_t t = 0; t < p.ntiles; ++t) {
        const int64_t r0 = t * W, cnt = std::min(W, rows - r0);
        float* dst = out + ((b * heads + hd) * p.ntiles + t) * W * D;
        if (transposed) {
          pack_cols<W>(src + b * rows * heads * D, r0, cnt, heads, hd, D, mul, dst);
        } else {
          pack_rows(src + b * rows * heads * D, r0, cnt, heads, hd, D, mul, dst);
        }
      }
  return p;
}

// Where the tile loops get a tile: the call's packed copy, or packed into the caller's `local` now.
template <int64_t W, typename T>
struct TileSource {
  const T* src;
  int64_t rows, heads, D;
  float mul;
  bool transposed;
  PackedTiles<W> all;  // base null: pack on demand
  const float* get(int64_t b, int64_t head, int64_t r0, int64_t n, float* local) const {
    if (all.base) return all.at(b, head, r0 / W);
    const T* bsrc = src + b * rows * heads * D;
    if (transposed) {
      pack_cols<W>(bsrc, r0, n, heads, head, D, mul, local);
    } else {
      pack_rows(bsrc, r0, n, heads, head, D, mul, local);
    }
    return local;
  }
};
template <int64_t W, typename T>
TileSource<W, T> tile_source(int slot, bool prepack, const T* src, int64_t B, int64_t rows, int64_t heads,
                             int64_t D, float mul, bool transposed, bool parallel) {
  TileSource<W, T> t{src, rows, heads, D, mul, transposed, {}};
  if (prepack) t.all = pack_all<W>(slot, src, B, rows, heads, D, mul, transposed, parallel);
  return t;
}

// Measured (bench_cpu_kernels --attention, f32 fwd+bwd, alternating runs): T 2048 +36-46%, 1024 +18-25%, 512
// -1.5% to +16%; 128 and 256 between -20% and +13.5% across runs (docs/perf/NOTES.md).
constexpr int64_t kPrepackMinT = 512;
// The packed copies live in per-thread buffers for the process's life (up to 7 tensors in the backward): no
// packing of a tensor larger than this, whatever T (such shapes pack per tile as before).
constexpr int64_t kPrepackMaxFloats = int64_t{16} << 20;  // 64 MiB per tensor

inline bool prepack_pays(const AttentionShape& s) {
  const int64_t rows = std::max(s.T, s.S) + std::max(kQ, kK), heads = std::max(s.Hq, s.Hkv);
  return s.T >= kPrepackMinT && s.B * rows * heads * s.D <= kPrepackMaxFloats;
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}  // namespace

template <typename T>
void attention_forward_blocked(const AttentionShape& s, const T* q, const T* k, const T* v, T* o,
                               float* lse) {
  const int64_t D = s.D, group = s.Hq / s.Hkv, nqb = (s.T + kQ - 1) / kQ;
  const float scale = static_cast<float>(s.scale);
  const bool parallel = work(s) > kParallelWork, prepack = prepack_pays(s);
  const auto ks = tile_source<kK>(0, prepack, k, s.B, s.S, s.Hkv, D, 1.0f, true, parallel);
  const auto vs = tile_source<kK>(1, prepack, v, s.B, s.S, s.Hkv, D, 1.0f, false, parallel);
#pragma omp parallel if (parallel)
  {
    std::vector<float> qb(static_cast<size_t>(kQ * D)), kt(static_cast<size_t>(D * kK)),
        vb(static_cast<size_t>(kK * D)), sc(static_cast<size_t>(kQ * kK)), ob(static_cast<size_t>(kQ * D)),
        m(kQ), l(kQ);
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.Hq; ++h)
        for (int64_t blk = 0; blk < nqb; ++blk) {
          const int64_t hk = h / group, t0 = blk * kQ, mq = std::min(kQ, s.T - t0);
          pack_rows(q + b * s.T * s.Hq * D, t0, mq, s.Hq, h, D, scale, qb.data());
          std::fill(ob.begin(), ob.end(), 0.0f);
          std::fill(m.begin(), m.end(), kNegInf);
          std::fill(l.begin(), l.end(), 0.0f);
          const int64_t kend = key_end(s, t0 + mq - 1);
          for (int64_t j0 = 0; j0 < kend; j0 += kK) {
            const int64_t n = std::min(kK, kend - j0);
            const float* ktile = ks.get(b, hk, j0, n, kt.data());
            const float* vtile = vs.get(b, hk, j0, n, vb.data());
            tile_abt<kK>(qb.data(), mq, ktile, D, sc.data());
            for (int64_t i = 0; i < mq; ++i) {
              float* si = sc.data() + i * kK;
              const int64_t visible = std::clamp<int64_t>(key_end(s, t0 + i) - j0, 0, n);
              for (int64_t j = visible; j < kK; ++j) si[j] = kNegInf;
              const float m_new = std::max(m[i], vmath::row_max(si, kK));
              if (m_new == kNegInf) {  // no visible key yet: this row adds nothing
                std::fill(si, si + kK, 0.0f);
                continue;
              }
              const float correction = vmath::exp_approx(m[i] - m_new);  // 0 on the first visible block
#pragma omp simd
              for (int64_t j = 0; j < kK; ++j) si[j] = vmath::exp_approx(si[j] - m_new);
              l[i] = l[i] * correction + vmath::row_sum(si, kK);
              float* oi = ob.data() + i * D;
#pragma omp simd
              for (int64_t d = 0; d < D; ++d) oi[d] *= correction;
              m[i] = m_new;
            }
            tile_ab<kK>(sc.data(), mq, n, vtile, D, ob.data());
          }
          for (int64_t i = 0; i < mq; ++i) {
            float* oi = ob.data() + i * D;
            const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;  // a query that sees no key: zeros
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) oi[d] *= inv;
            lse[(b * s.Hq + h) * s.T + t0 + i] = l[i] > 0.0f ? m[i] + std::log(l[i]) : kNegInf;
          }
          store_rows(ob.data(), mq, D, 1.0f, o + b * s.T * s.Hq * D, s.Hq, h, t0);
        }
  }
}

template <typename T>
void attention_backward_blocked(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                                const float* lse, const T* dout, T* dq, T* dk, T* dv) {
  const int64_t D = s.D, group = s.Hq / s.Hkv, nqb = (s.T + kQ - 1) / kQ, nkb = (s.S + kK - 1) / kK;
  const float scale = static_cast<float>(s.scale);
  const std::vector<float> delta = output_deltas<float>(s, dout, o);
  const size_t tile = static_cast<size_t>(std::max(kQ, kK) * D);

  const bool parallel = work(s) > kParallelWork, prepack = prepack_pays(s);
  const auto kts = tile_source<kK>(0, prepack, k, s.B, s.S, s.Hkv, D, 1.0f, true, parallel);
  const auto vts = tile_source<kK>(1, prepack, v, s.B, s.S, s.Hkv, D, 1.0f, true, parallel);
  const auto kbs = tile_source<kK>(2, prepack, k, s.B, s.S, s.Hkv, D, 1.0f, false, parallel);

  // Pass 1: dq per (batch, head, query tile): dS = P * (dO V^T - delta), dq = scale * dS K.
#pragma omp parallel if (parallel)
  {
    std::vector<float> qb(tile), gb(tile), kt(tile), vt(tile), kb(tile), sc(static_cast<size_t>(kQ * kK)),
        dp(static_cast<size_t>(kQ * kK)), acc(tile);
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.Hq; ++h)
        for (int64_t blk = 0; blk < nqb; ++blk) {
          const int64_t hk = h / group, t0 = blk * kQ, mq = std::min(kQ, s.T - t0);
          const int64_t stat0 = (b * s.Hq + h) * s.T + t0;
          pack_rows(q + b * s.T * s.Hq * D, t0, mq, s.Hq, h, D, scale, qb.data());
          pack_rows(dout + b * s.T * s.Hq * D, t0, mq, s.Hq, h, D, 1.0f, gb.data());
          std::fill(acc.begin(), acc.end(), 0.0f);
          const int64_t kend = key_end(s, t0 + mq - 1);
          for (int64_t j0 = 0; j0 < kend; j0 += kK) {
            const int64_t n = std::min(kK, kend - j0);
            const float* ktile = kts.get(b, hk, j0, n, kt.data());
            const float* vtile = vts.get(b, hk, j0, n, vt.data());
            const float* krows = kbs.get(b, hk, j0, n, kb.data());
            tile_abt<kK>(qb.data(), mq, ktile, D, sc.data());
            tile_abt<kK>(gb.data(), mq, vtile, D, dp.data());
            for (int64_t i = 0; i < mq; ++i) {
              float* si = sc.data() + i * kK;
              const float* dpi = dp.data() + i * kK;
              const int64_t visible = std::clamp<int64_t>(key_end(s, t0 + i) - j0, 0, n);
              // A query that sees no key has lse -inf; all its entries are masked, so any finite shift works.
              const float li = visible > 0 ? lse[stat0 + i] : 0.0f,
                          di = delta[static_cast<size_t>(stat0 + i)];
              for (int64_t j = visible; j < kK; ++j) si[j] = kNegInf;
#pragma omp simd
              for (int64_t j = 0; j < kK; ++j) si[j] = vmath::exp_approx(si[j] - li) * (dpi[j] - di);
            }
            tile_ab<kK>(sc.data(), mq, n, krows, D, acc.data());
          }
          store_rows(acc.data(), mq, D, scale, dq + b * s.T * s.Hq * D, s.Hq, h, t0);
        }
  }

  // Pass 2: dk and dv per (batch, KV head, key tile), over the query heads of its group and the query tiles
  // that see it: dv = P^T dO, dk = scale * dS^T q.
  const auto qts = tile_source<kQ>(3, prepack, q, s.B, s.T, s.Hq, D, scale, true, parallel);
  const auto gts = tile_source<kQ>(4, prepack, dout, s.B, s.T, s.Hq, D, 1.0f, true, parallel);
  const auto qrs = tile_source<kQ>(5, prepack, q, s.B, s.T, s.Hq, D, 1.0f, false, parallel);
  const auto grs = tile_source<kQ>(6, prepack, dout, s.B, s.T, s.Hq, D, 1.0f, false, parallel);
#pragma omp parallel if (parallel)
  {
    std::vector<float> kb(tile), vb(tile), qt(tile), gt(tile), qr(tile), gr(tile),
        pt(static_cast<size_t>(kK * kQ)), dpt(static_cast<size_t>(kK * kQ)), dka(tile), dva(tile);
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t hk = 0; hk < s.Hkv; ++hk)
        for (int64_t kblk = 0; kblk < nkb; ++kblk) {
          const int64_t j0 = kblk * kK, nk = std::min(kK, s.S - j0);
          pack_rows(k + b * s.S * s.Hkv * D, j0, nk, s.Hkv, hk, D, 1.0f, kb.data());
          pack_rows(v + b * s.S * s.Hkv * D, j0, nk, s.Hkv, hk, D, 1.0f, vb.data());
          std::fill(dka.begin(), dka.end(), 0.0f);
          std::fill(dva.begin(), dva.end(), 0.0f);
          const int64_t first_query = query_begin(s, j0);
          for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
            for (int64_t blk = first_query / kQ; blk < nqb; ++blk) {
              const int64_t t0 = blk * kQ, mq = std::min(kQ, s.T - t0);
              const int64_t stat0 = (b * s.Hq + h) * s.T + t0;
              const float* qtile = qts.get(b, h, t0, mq, qt.data());
              const float* gtile = gts.get(b, h, t0, mq, gt.data());
              const float* qrows = qrs.get(b, h, t0, mq, qr.data());
              const float* grows = grs.get(b, h, t0, mq, gr.data());
              tile_abt<kQ>(kb.data(), nk, qtile, D, pt.data());   // S^T: keys x queries
              tile_abt<kQ>(vb.data(), nk, gtile, D, dpt.data());  // (dO V^T)^T
              float li[kQ], di[kQ];
              for (int64_t i = 0; i < kQ; ++i) {
                li[i] = i < mq && lse[stat0 + i] != kNegInf ? lse[stat0 + i] : 0.0f;  // see pass 1
                di[i] = i < mq ? delta[static_cast<size_t>(stat0 + i)] : 0.0f;
              }
              for (int64_t j = 0; j < nk; ++j) {
                float* pj = pt.data() + j * kQ;
                float* dpj = dpt.data() + j * kQ;
                // Query t0 + i sees key j0 + j when j0 + j < key_end(t0 + i); queries past mq are padding.
                for (int64_t i = 0; i < kQ; ++i)
                  if (i >= mq || j0 + j >= key_end(s, t0 + i)) pj[i] = kNegInf;
#pragma omp simd
                for (int64_t i = 0; i < kQ; ++i) {
                  const float p = vmath::exp_approx(pj[i] - li[i]);
                  pj[i] = p;
                  dpj[i] = p * (dpj[i] - di[i]);
                }
              }
              tile_ab<kQ>(pt.data(), nk, mq, grows, D, dva.data());
              tile_ab<kQ>(dpt.data(), nk, mq, qrows, D, dka.data());
            }
          store_rows(dka.data(), nk, D, scale, dk + b * s.S * s.Hkv * D, s.Hkv, hk, j0);
          store_rows(dva.data(), nk, D, 1.0f, dv + b * s.S * s.Hkv * D, s.Hkv, hk, j0);
        }
  }
}

template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, acc_t<T>* lse) {
  if constexpr (std::is_same_v<acc_t<T>, float>) {
    attention_forward_blocked(s, q, k, v, o, lse);
  } else {
    attention_forward_rows(s, q, k, v, o, lse);
  }
}

template <typename T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                        const acc_t<T>* lse, const T* dout, T* dq, T* dk, T* dv) {
  if constexpr (std::is_same_v<acc_t<T>, float>) {
    attention_backward_blocked(s, q, k, v, o, lse, dout, dq, dk, dv);
  } else {
    attention_backward_rows(s, q, k, v, o, lse, dout, dq, dk, dv);
  }
}
}  // namespace polder::kernels::cpu::POLDER_ISA_NS
#endif
