// AdamW and the gradient sum of squares on the CPU (the spec for kernels/cuda/optim.cu). Compiled with
// -ffp-contract=off (kernels/CMakeLists.txt): the only fused multiply-adds are the explicit ones of
// detail::adamw_element, whatever ISA clone runs. The update has no reductions, so it is independent of the
// thread count; sum_squares sums fixed chunks and adds them in order. The loops are compiled once per ISA
// level (the #else section; kernels/cpu/isa.h).
#ifndef POLDER_ISA_NS
#include "kernels/optim.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/vmath.h"

#define POLDER_ISA_SOURCE "kernels/cpu/optim.cpp"
#include "kernels/cpu/isa_passes.h"

namespace polder::kernels::cpu {
namespace {

void check_segments(const char* what, const AdamWSegment* segments, int nsegments) {
  if (nsegments < 0)
    throw std::invalid_argument(std::string(what) + ": nsegments " + std::to_string(nsegments) + " < 0");
  if (nsegments > 0 && segments == nullptr)
    throw std::invalid_argument(std::string(what) + ": segments is null with nsegments " +
                                std::to_string(nsegments));
  int64_t prev_end = 0;
  for (int i = 0; i < nsegments; ++i) {
    const AdamWSegment& s = segments[i];
    if (s.begin < prev_end || s.end < s.begin)
      throw std::invalid_argument(std::string(what) + ": segment " + std::to_string(i) + " [" +
                                  std::to_string(s.begin) + ", " + std::to_string(s.end) +
                                  ") is not a range at or after the previous segment's end " +
                                  std::to_string(prev_end) + " (segments must be sorted and disjoint)");
    prev_end = s.end;
  }
}

template <bool kMaster, typename P, typename A>
void adamw_range(P* param, A* master, const A* grad, A* m, A* v, int64_t n, const detail::AdamWConst<A>& c) {
  POLDER_ISA_CALL(template adamw_range<kMaster>, param, master, grad, m, v, n, c);
}

template <typename A>
double sum_squares_range(const A* g, int64_t n) {
  POLDER_ISA_CALL(sum_squares_range, g, n);
}
}  // namespace

template <typename P, typename A>
void adamw(P* param, A* master, const A* grad, A* m, A* v, const AdamWSegment* segments, int nsegments,
           const AdamWStep& s) {
  check_segments("adamw", segments, nsegments);
  if (!std::is_same_v<P, A> && master == nullptr && nsegments > 0)
    throw std::invalid_argument("adamw: master is null but the parameters are not of the state dtype (" +
                                std::to_string(sizeof(P)) + "-byte parameters, " + std::to_string(sizeof(A)) +
                                "-byte state)");
  for (int k = 0; k < nsegments; ++k) {
    const AdamWSegment& seg = segments[k];
    const int64_t b = seg.begin, n = seg.end - seg.begin;
    const detail::AdamWConst<A> c = detail::adamw_const<A>(s, seg.weight_decay);
    if (master)
      adamw_range<true>(param + b, master + b, grad + b, m + b, v + b, n, c);
    else
      adamw_range<false>(param + b, static_cast<A*>(nullptr), grad + b, m + b, v + b, n, c);
  }
}

template <typename A>
double sum_squares(const A* g, const AdamWSegment* segments, int nsegments) {
  check_segments("sum_squares", segments, nsegments);
  double total = 0;
  for (int k = 0; k < nsegments; ++k)
    total += sum_squares_range(g + segments[k].begin, segments[k].end - segments[k].begin);
  return total;
}

template void adamw<float, float>(float*, float*, const float*, float*, float*, const AdamWSegment*, int,
                                  const AdamWStep&);
template void adamw<bf16, float>(bf16*, float*, const float*, float*, float*, const AdamWSegment*, int,
                                 const AdamWStep&);
template void adamw<f16, float>(f16*, float*, const float*, float*, float*, const AdamWSegment*, int,
                                const AdamWStep&);
template void adamw<double, double>(double*, double*, const double*, double*, double*, const AdamWSegment*,
                                    int, const AdamWStep&);
template double sum_squares<float>(const float*, const AdamWSegment*, int);
template double sum_squares<double>(const double*, const AdamWSegment*, int);

}  // namespace polder::kernels::cpu

#else  // the loops, once per ISA level

namespace polder::kernels::cpu::POLDER_ISA_NS {

// One chunk, with restrict pointers and the constants by value: the loop vectorizes (elementwise, so chunking
// changes no result).
template <bool kMaster, typename P, typename A>
inline void adamw_chunk(P* __restrict param, A* __restrict master, const A* __restrict grad, A* __restrict m,
                        A* __restrict v, int64_t n, const detail::AdamWConst<A> k) {
  for (int64_t i = 0; i < n; ++i) {
    A w;
    if constexpr (kMaster) {
      w = master[i];
    } else {
      w = static_cast<A>(param[i]);
    }
    w = detail::adamw_element(w, grad[i], m[i], v[i], k);
    if constexpr (kMaster) master[i] = w;
    vmath::store(param, i, w);  // bf16 through its bits, so that the loop vectorizes
  }
}

template <bool kMaster, typename P, typename A>
void adamw_range(P* param, A* master, const A* grad, A* m, A* v, int64_t n, const detail::AdamWConst<A>& c) {
  constexpr int64_t kChunk = 8192;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const detail::AdamWConst<A> k = c;
#pragma omp parallel for if (n > 16384)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t b = ch * kChunk, len = std::min(kChunk, n - b);
    adamw_chunk<kMaster>(param + b, kMaster ? master + b : nullptr, grad + b, m + b, v + b, len, k);
  }
}

template <typename A>
double sum_squares_range(const A* g, int64_t n) {
  const int64_t chunks = (n + kSumSquaresChunk - 1) / kSumSquaresChunk;
  std::vector<double> partial(static_cast<size_t>(chunks));
#pragma omp parallel for
  for (int64_t c = 0; c < chunks; ++c) {
    // kSumSquaresLanes independent chains (one long fma chain is latency-bound: ~4 cycles per element), in
    // the documented order (kernels/optim.h).
    double lane[kSumSquaresLanes] = {};
    const int64_t begin = c * kSumSquaresChunk, end = std::min(n, (c + 1) * kSumSquaresChunk);
    int64_t i = begin;
    for (; i + kSumSquaresLanes <= end; i += kSumSquaresLanes)
      for (int l = 0; l < kSumSquaresLanes; ++l) {
        const double x = static_cast<double>(g[i + l]);
        lane[l] = detail::fma_rn(x, x, lane[l]);
      }
    for (int l = 0; i + l < end; ++l) {
      const double x = static_cast<double>(g[i + l]);
      lane[l] = detail::fma_rn(x, x, lane[l]);
    }
    partial[static_cast<size_t>(c)] = detail::sum_lanes(lane);
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace polder::kernels::cpu::POLDER_ISA_NS
#endif
