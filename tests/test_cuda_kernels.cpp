// Every memory-bound CUDA kernel against its CPU twin on fresh random inputs, odd shapes included (scalar and
// 16-byte paths, a misaligned pointer), outputs poisoned with NaN bytes first so that every element must be
// written. Normalised error max|gpu - cpu| / max|cpu|: f32 < 1e-5, bf16 < 1e-2, f16 < 2e-3. Tagged [cuda];
// without a device (CI, development machines) each test warns that it skipped and passes.
#include <catch2/catch.hpp>

#ifdef POLDER_HAVE_CUDA

#include <cuda_runtime.h>

#include "tests/cuda_testing.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/norm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"

using namespace polder;
using polder::testing::DevBuf;
using polder::testing::randn;

namespace {

template <typename I>
std::vector<I> randint(size_t n, int64_t hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, hi - 1);
  std::vector<I> v(n);
  for (auto& x : v) x = static_cast<I>(dist(rng));
  return v;
}

// max |got - ref| / max |ref|; a NaN anywhere in got (an element never written) gives infinity.
template <typename T>
double nerr(const std::vector<T>& got, const std::vector<T>& ref) {
  REQUIRE(got.size() == ref.size());
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<float>(got[i]), r = static_cast<float>(ref[i]);
    if (std::isnan(g) && !std::isnan(r)) return std::numeric_limits<double>::infinity();
    num = std::max(num, std::abs(g - r));
    den = std::max(den, std::abs(r));
  }
  return num / den;
}

template <typename T>
double tol() {
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  if constexpr (std::is_same_v<T, bf16>) return 1e-2;
  return 2e-3;  // f16
}
constexpr double kTolAcc = 1e-5;  // fp32 results (rstd, lse, loss, dw, dtable) of any storage type

#define CHECK_ERR(got, ref, limit)                                            \
  do {                                                                        \
    const double e_ = nerr(got, ref);                                         \
    INFO(#got << " normalised error " << e_ << " (limit " << (limit) << ")"); \
    CHECK(e_ < (limit));                                                      \
  } while (0)

}  // namespace

TEMPLATE_TEST_CASE("cuda rms_norm forward/backward match the CPU twin", "[cuda]", float, bf16, f16) {
  SKIP_WITHOUT_GPU();
  using T = TestType;
  // 7 rows: one chunk of rows for the weight gradient; 1000 x 65 (16 chunks) and 130 x 4097 (3, the last one
  // short): its two-stage sum.
  const std::pair<int64_t, int64_t> shapes[] = {{7, 1000}, {7, 4096}, {7, 4097}, {1000, 65}, {130, 4097}};
  for (const auto& [rows, cols] : shapes) {
    INFO("rows " << rows << " cols " << cols);
    const size_t n = static_cast<size_t>(rows * cols);
    auto x = randn<T>(n, 1 + cols), dy = randn<T>(n, 2 + cols);
    auto w = randn<T>(static_cast<size_t>(cols), 3 + cols, 0.2f, 1.0f);
    std::vector<T> y(n), dx(n);
    std::vector<float> rstd(static_cast<size_t>(rows)), dw(static_cast<size_t>(cols));
    kernels::cpu::rms_norm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, cols, 1e-5f);
    kernels::cpu::rms_norm_backward(x.data(), w.data(), rstd.data(), dy.data(), dx.data(), dw.data(), rows,
                                    cols);

    DevBuf<T> dx_d(x), dw_d(w), ddy(dy), gy(n), gdx(n);
    DevBuf<float> grstd(static_cast<size_t>(rows)), gdw(static_cast<size_t>(cols));
    kernels::cuda::rms_norm_forward(dx_d.get(), dw_d.get(), gy.get(), grstd.get(), rows, cols, 1e-5f,
                                    nullptr);
    CHECK_ERR(gy.host(), y, tol<T>());
    CHECK_ERR(grstd.host(), rstd, kTolAcc);
    kernels::cuda::rms_norm_backward(dx_d.get(), dw_d.get(), grstd.get(), ddy.get(), gdx.get(), gdw.get(),
                                     rows, cols, nullptr);
    CHECK_ERR(gdx.host(), dx, tol<T>());
    CHECK_ERR(gdw.host(), dw, kTolAcc);
  }
}

TEMPLATE_TEST_CASE("cuda rope forward/backward match the CPU twin", "[cuda]", float, bf16, f16) {
  SKIP_WITHOUT_GPU();
  using T = TestType;
  const int64_t B = 2, T_ = 5, H = 3, pos0 = 3;
  for (int64_t D : {6, 64, 128}) {
    INFO("B " << B << " T " << T_ << " H " << H << " D " << D);
    const int64_t P = pos0 + T_, half = D / 2;
    std::vector<float> cos(static_cast<size_t>(P * D)), sin(cos.size());
    for (int64_t p = 0; p < P; ++p)
      for (int64_t i = 0; i < half; ++i) {
        const double a = static_cast<double>(p) * std::pow(10000.0, -2.0 * static_cast<double>(i) / D);
        cos[p * D + i] = cos[p * D + i + half] = static_cast<float>(std::cos(a));
        sin[p * D + i] = sin[p * D + i + half] = static_cast<float>(std::sin(a));
      }
    const size_t n = static_cast<size_t>(B * T_ * H * D);
    auto x = randn<T>(n, 10 + D);
    std::vector<T> y(n), dx(n);
    kernels::cpu::rope_forward(x.data(), y.data(), cos.data(), sin.data(), B, T_, H, D, pos0);
    kernels::cpu::rope_backward(x.data(), dx.data(), cos.data(), sin.data(), B, T_, H, D, pos0);
    DevBuf<T> gx(x), gy(n), gdx(n);
    DevBuf<float> gcos(cos), gsin(sin);
    kernels::cuda::rope_forward(gx.get(), gy.get(), gcos.get(), gsin.get(), B, T_, H, D, pos0, nullptr);
    kernels::cuda::rope_backward(gx.get(), gdx.get(), gcos.get(), gsin.get(), B, T_, H, D, pos0, nullptr);
    CHECK_ERR(gy.host(), y, tol<T>());
    CHECK_ERR(gdx.host(), dx, tol<T>());
  }
}

TEMPLATE_TEST_CASE("cuda silu and swiglu forward/backward match the CPU twin", "[cuda]", float, bf16, f16) {
  SKIP_WITHOUT_GPU();
  using T = TestType;
  struct Case {
    size_t n, offset;  // offset 1: misaligned pointers, the scalar path
  };
  for (Case c : {Case{1000, 0}, Case{4097, 0}, Case{4097, 1}, Case{(size_t(1) << 20) + 3, 0}}) {
    INFO("n " << c.n << " offset " << c.offset);
    const size_t n = c.n;
    const int64_t ni = static_cast<int64_t>(n);
    auto g = randn<T>(n, 21 + n, 2.0f), u = randn<T>(n, 22 + n), dy = randn<T>(n, 23 + n);
    std::vector<T> y(n), dx(n), sy(n), dg(n), du(n);
    kernels::cpu::silu_forward(g.data(), y.data(), ni);
    kernels::cpu::silu_backward(g.data(), dy.data(), dx.data(), ni);
    kernels::cpu::swiglu_forward(g.data(), u.data(), sy.data(), ni);
    kernels::cpu::swiglu_backward(g.data(), u.data(), dy.data(), dg.data(), du.data(), ni);
    DevBuf<T> gg(g, c.offset), gu(u, c.offset), gdy(dy, c.offset);
    DevBuf<T> gy(n, c.offset), gdx(n, c.offset), gsy(n, c.offset), gdg(n, c.offset), gdu(n, c.offset);
    kernels::cuda::silu_forward(gg.get(), gy.get(), ni, nullptr);
    kernels::cuda::silu_backward(gg.get(), gdy.get(), gdx.get(), ni, nullptr);
    kernels::cuda::swiglu_forward(gg.get(), gu.get(), gsy.get(), ni, nullptr);
    kernels::cuda::swiglu_backward(gg.get(), gu.get(), gdy.get(), gdg.get(), gdu.get(), ni, nullptr);
    CHECK_ERR(gy.host(), y, tol<T>());
    CHECK_ERR(gdx.host(), dx, tol<T>());
    CHECK_ERR(gsy.host(), sy, tol<T>());
    CHECK_ERR(gdg.host(), dg, tol<T>());
    CHECK_ERR(gdu.host(), du, tol<T>());
  }
}

namespace {
template <typename T, typename I>
void check_cross_entropy(int64_t rows, int64_t cols) {
  INFO("rows " << rows << " cols " << cols << " index bytes " << sizeof(I));
  const int64_t ignore = -100;
  const size_t n = static_cast<size_t>(rows * cols), nr = static_cast<size_t>(rows);
  auto logits = randn<T>(n, 31 + cols, 3.0f);
  auto targets = randint<I>(nr, cols, 32 + cols);
  targets[2 % nr] = static_cast<I>(ignore);
  targets[0] = static_cast<I>(cols - 1);  // the last column: the tail of the vector loop
  // Row 1: the first half of the vocabulary masked to -inf (padding), so some threads start with -inf logits.
  for (int64_t c = 0; c < cols / 2; ++c) logits[static_cast<size_t>(cols + c)] = static_cast<T>(-INFINITY);
  targets[1] = static_cast<I>(cols - 2);
  std::vector<float> dloss(nr);
  for (size_t r = 0; r < nr; ++r) dloss[r] = 0.5f + 0.25f * static_cast<float>(r);
  std::vector<float> loss(nr), lse(nr);
  std::vector<T> dlogits(n);
  kernels::cpu::cross_entropy_forward(logits.data(), targets.data(), loss.data(), lse.data(), rows, cols,
                                      ignore);
  kernels::cpu::cross_entropy_backward(logits.data(), targets.data(), lse.data(), dloss.data(),
                                       dlogits.data(), rows, cols, ignore);
  DevBuf<T> gl(logits), gdl(n);
  DevBuf<I> gt(targets);
  DevBuf<float> gloss(nr), glse(nr), gdloss(dloss);
  kernels::cuda::cross_entropy_forward(gl.get(), gt.get(), gloss.get(), glse.get(), rows, cols, ignore,
                                       nullptr);
  CHECK_ERR(gloss.host(), loss, kTolAcc);
  CHECK_ERR(glse.host(), lse, kTolAcc);
  kernels::cuda::cross_entropy_backward(gl.get(), gt.get(), glse.get(), gdloss.get(), gdl.get(), rows, cols,
                                        ignore, nullptr);
  CHECK_ERR(gdl.host(), dlogits, tol<T>());
}
}  // namespace

TEMPLATE_TEST_CASE("cuda cross_entropy forward/backward match the CPU twin", "[cuda]", float, bf16, f16) {
  SKIP_WITHOUT_GPU();
  for (int64_t cols : {1000, 4096, 4097, 50257}) {
    check_cross_entropy<TestType, int32_t>(7, cols);
    check_cross_entropy<TestType, int64_t>(7, cols);
  }
}

// The vocabulary-parallel cross-entropy's kernels (CUDA and CPU twin) over tp = 2 shards of a vocabulary that
// does not divide evenly (the second shard has a padding column), with the two all-reduces done here on the
// host, against the single-device cross-entropy of the whole row (the oracle): lse, per-row loss and every
// real column of the gradient; padding columns get zero gradient.
template <typename T>
void check_vocab_parallel_ce(int64_t rows, int64_t vocab, bool on_gpu) {
  INFO("rows " << rows << " vocab " << vocab << (on_gpu ? " cuda" : " cpu"));
  const int64_t ignore = -100, tp = 2, vl = (vocab + tp - 1) / tp;
  const size_t nr = static_cast<size_t>(rows);
  auto full = randn<T>(nr * static_cast<size_t>(vocab), 41 + vocab, 3.0f);
  auto targets = randint<int32_t>(nr, vocab, 42 + vocab);
  targets[1 % nr] = static_cast<int32_t>(ignore);
  targets[0] = static_cast<int32_t>(vocab - 1);  // the last real column, in the padded shard
  std::vector<float> dloss(nr);
  for (size_t r = 0; r < nr; ++r) dloss[r] = 0.5f + 0.25f * static_cast<float>(r);
  std::vector<float> loss(nr), lse(nr);
  std::vector<T> dfull(full.size());
  kernels::cpu::cross_entropy_forward(full.data(), targets.data(), loss.data(), lse.data(), rows, vocab,
                                      ignore);
  kernels::cpu::cross_entropy_backward(full.data(), targets.data(), lse.data(), dloss.data(), dfull.data(),
                                       rows, vocab, ignore);
  // Shards (rows, vl); the padding column of the last shard holds a large value that must not count.
  std::vector<std::vector<T>> shard(tp, std::vector<T>(nr * static_cast<size_t>(vl), static_cast<T>(50.0f)));
  for (int64_t s = 0; s < tp; ++s)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < vl && s * vl + c < vocab; ++c)
        shard[s][static_cast<size_t>(r * vl + c)] = full[static_cast<size_t>(r * vocab + s * vl + c)];
  std::vector<std::vector<float>> stats(tp);
  for (int64_t s = 0; s < tp; ++s) {
    const int64_t real = std::min(vl, vocab - s * vl);
    stats[s].resize(3 * nr);
    if (on_gpu) {
      DevBuf<T> gl(shard[s]);
      DevBuf<int32_t> gt(targets);
      DevBuf<float> gs(3 * nr);
      kernels::cuda::vocab_ce_stats(gl.get(), gt.get(), gs.get(), rows, vl, real, s * vl, ignore, nullptr);
      stats[s] = gs.host();
    } else {
      kernels::cpu::vocab_ce_stats(shard[s].data(), targets.data(), stats[s].data(), rows, vl, real, s * vl,
                                   ignore);
    }
  }
  std::vector<float> gmax(nr, -INFINITY), sums(2 * nr, 0.0f), glse(nr), gloss(nr);
  for (int64_t s = 0; s < tp; ++s)
    for (size_t r = 0; r < nr; ++r) gmax[r] = std::max(gmax[r], stats[s][r]);
  for (int64_t s = 0; s < tp; ++s) {
    if (on_gpu) {
      DevBuf<float> gs(stats[s]), gm(gmax);
      kernels::cuda::vocab_ce_rescale(gs.get(), gm.get(), rows, nullptr);
      stats[s] = gs.host();
    } else {
      kernels::cpu::vocab_ce_rescale(stats[s].data(), gmax.data(), rows);
    }
    for (size_t i = 0; i < 2 * nr; ++i) sums[i] += stats[s][nr + i];
  }
  std::vector<float> combined(3 * nr);
  std::copy(gmax.begin(), gmax.end(), combined.begin());
  std::copy(sums.begin(), sums.end(), combined.begin() + static_cast<std::ptrdiff_t>(nr));
  if (on_gpu) {
    DevBuf<float> gm(gmax), gc(combined), gl(nr), gls(nr);
    DevBuf<int32_t> gt(targets);
    kernels::cuda::vocab_ce_finish(gm.get(), gc.get(), gt.get(), gl.get(), gls.get(), rows, ignore, nullptr);
    glse = gl.host();
    gloss = gls.host();
  } else {
    kernels::cpu::vocab_ce_finish(gmax.data(), combined.data(), targets.data(), glse.data(), gloss.data(),
                                  rows, ignore);
  }
  CHECK_ERR(gloss, loss, kTolAcc);
  CHECK_ERR(glse, lse, kTolAcc);
  for (int64_t s = 0; s < tp; ++s) {
    const int64_t real = std::min(vl, vocab - s * vl);
    std::vector<T> d(shard[s].size()), expect(shard[s].size(), static_cast<T>(0.0f));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < real; ++c)
        expect[static_cast<size_t>(r * vl + c)] = dfull[static_cast<size_t>(r * vocab + s * vl + c)];
    if (on_gpu) {
      DevBuf<T> gl(shard[s]), gd(d.size());
      DevBuf<int32_t> gt(targets);
      DevBuf<float> gls(glse), gdl(dloss);
      kernels::cuda::vocab_ce_backward(gl.get(), gt.get(), gls.get(), gdl.get(), gd.get(), rows, vl, real,
                                       s * vl, ignore, nullptr);
      d = gd.host();
    } else {
      kernels::cpu::vocab_ce_backward(shard[s].data(), targets.data(), glse.data(), dloss.data(), d.data(),
                                      rows, vl, real, s * vl, ignore);
    }
    CHECK_ERR(d, expect, tol<T>());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = real; c < vl; ++c)
        CHECK(static_cast<float>(d[static_cast<size_t>(r * vl + c)]) == 0.0f);
  }
}

TEMPLATE_TEST_CASE("vocab-parallel cross-entropy kernels (cuda and the CPU twin) equal the whole row's",
                   "[cuda]", float, bf16) {
  SKIP_WITHOUT_GPU();
  for (int64_t vocab : {63, 1001, 4097}) {
    check_vocab_parallel_ce<TestType>(5, vocab, false);
    check_vocab_parallel_ce<TestType>(5, vocab, true);
  }
}

namespace {
template <typename T, typename I>
void check_embedding(int64_t n, int64_t V, int64_t C) {
  INFO("n " << n << " V " << V << " C " << C << " index bytes " << sizeof(I));
  auto table = randn<T>(static_cast<size_t>(V * C), 41 + C);
  auto ids = randint<I>(static_cast<size_t>(n), V, 42 + C);  // n > V: repeated ids
  auto dout = randn<T>(static_cast<size_t>(n * C), 43 + C);
  std::vector<T> out(static_cast<size_t>(n * C));
  std::vector<float> dtable(static_cast<size_t>(V * C));
  kernels::cpu::embedding_forward(table.data(), ids.data(), out.data(), n, C);
  kernels::cpu::embedding_backward(dout.data(), ids.data(), dtable.data(), n, V, C);
  DevBuf<T> gtable(table), gout(out.size()), gdout(dout);
  DevBuf<I> gids(ids);
  DevBuf<float> gdtable(dtable.size());
  kernels::cuda::embedding_forward(gtable.get(), gids.get(), gout.get(), n, C, nullptr);
  kernels::cuda::embedding_backward(gdout.get(), gids.get(), gdtable.get(), n, V, C, false, nullptr);
  // A gather is a copy, and both backwards add the same values per cell in token order: exactly equal.
  CHECK_ERR(gout.host(), out, 1e-30);
  CHECK_ERR(gdtable.host(), dtable, 1e-30);
}
}  // namespace

TEMPLATE_TEST_CASE("cuda embedding forward/backward match the CPU twin", "[cuda]", float, bf16, f16) {
  SKIP_WITHOUT_GPU();
  for (int64_t C : {64, 1000, 4097}) {
    check_embedding<TestType, int32_t>(37, 11, C);
    check_embedding<TestType, int64_t>(37, 11, C);
  }
}

#else

TEST_CASE("cuda kernels: built without CUDA", "[cuda]") {
  WARN("skipped: polder was built without CUDA (POLDER_HAVE_CUDA undefined)");
  SUCCEED();
}

#endif
