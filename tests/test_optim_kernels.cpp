// The fused AdamW and gradient sum-of-squares kernels (kernels/optim.h). CPU: against plain loops written
// here from the formula (in double, and in the kernel's precision with the documented FMAs, bit for bit),
// segments with different weight decays and gaps that must stay untouched, bf16/f16 parameters with f32
// masters; the sum of squares against a naive double sum. [cuda]: the CUDA twins against the CPU twins,
// bit-identical master weights, parameters and moments, sum of squares to 1e-12 relative (skipped without a
// GPU).
#include <catch2/catch.hpp>

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/optim.h"

#ifdef POLDER_HAVE_CUDA
#include "tests/cuda_testing.h"
#endif

using namespace polder;
using kernels::AdamWSegment;
using kernels::AdamWStep;

namespace {

template <typename T>
std::vector<T> normal(size_t n, uint64_t seed, double std = 1.0, double mean = 0.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(mean, std);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(static_cast<acc_t<T>>(dist(rng)));
  return v;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Index of the first element whose bits differ, or -1.
template <typename T>
int64_t first_difference(const std::vector<T>& a, const std::vector<T>& b) {
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return static_cast<int64_t>(i);
  return -1;
}

// The optimizer state of n flat elements: parameters P, master weights/gradients/moments A.
template <typename P, typename A>
struct State {
  std::vector<P> param;
  std::vector<A> master, grad, m, v;
  State(size_t n, bool with_master, uint64_t seed) {
    std::vector<A> w = normal<A>(n, seed, 0.5);
    for (A x : w) param.push_back(static_cast<P>(x));
    if (with_master) master = w;
    m = normal<A>(n, seed + 1, 0.01);
    v = normal<A>(n, seed + 2, 0.001);
    for (A& x : v) x = x * x;  // second moments are non-negative
  }
};

AdamWStep make_step(int64_t t, double lr) {
  const double b1 = 0.9, b2 = 0.95;
  return AdamWStep{lr,
                   b1,
                   b2,
                   1e-8,
                   1.0 - std::pow(b1, static_cast<double>(t)),
                   1.0 - std::pow(b2, static_cast<double>(t))};
}

// Segments over 5000 elements: different weight decays, an empty segment, gaps [0, 3), [2000, 2100), [4999,
// 5000).
const std::vector<AdamWSegment> kSegments = {
    {3, 1203, 0.1}, {1203, 2000, 0.0}, {2100, 2100, 0.3}, {2100, 4999, 0.05}};
constexpr size_t kN = 5000;

bool in_segments(const std::vector<AdamWSegment>& segs, size_t i) {
  for (const AdamWSegment& s : segs)
    if (static_cast<int64_t>(i) >= s.begin && static_cast<int64_t>(i) < s.end) return true;
  return false;
}

double weight_decay_at(const std::vector<AdamWSegment>& segs, size_t i) {
  for (const AdamWSegment& s : segs)
    if (static_cast<int64_t>(i) >= s.begin && static_cast<int64_t>(i) < s.end) return s.weight_decay;
  return 0;
}

// torch.optim.AdamW for one element in double, straight from the formula.
void adamw_reference(double& w, double g, double& m, double& v, double wd, const AdamWStep& s) {
  w -= s.lr * wd * w;
  m = s.beta1 * m + (1 - s.beta1) * g;
  v = s.beta2 * v + (1 - s.beta2) * g * g;
  w -= s.lr * (m / s.bias_correction1) / (std::sqrt(v / s.bias_correction2) + s.eps);
}

// The same in A with the kernel's documented rounding: hyper-parameters rounded to A, FMAs exactly at the
// decay, m and v updates, every other operation rounded on its own.
template <typename A>
void adamw_exact(A& w, A g, A& m, A& v, double wd, const AdamWStep& s) {
  const A lr = static_cast<A>(s.lr), lr_wd = lr * static_cast<A>(wd);
  const A b1 = static_cast<A>(s.beta1), b2 = static_cast<A>(s.beta2);
  w = std::fma(-lr_wd, w, w);
  m = std::fma(b1, m, (A(1) - b1) * g);
  v = std::fma(b2, v, ((A(1) - b2) * g) * g);
  const A denom = std::sqrt(v / static_cast<A>(s.bias_correction2)) + static_cast<A>(s.eps);
  w = w - (lr * (m / static_cast<A>(s.bias_correction1))) / denom;
}

double normalised_error(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 1e-300;
  for (size_t i = 0; i < got.size(); ++i) {
    num = std::max(num, std::abs(got[i] - ref[i]));
    den = std::max(den, std::abs(ref[i]));
  }
  return num / den;
}

template <typename T>
std::vector<double> as_double(const std::vector<T>& v) {
  std::vector<double> d;
  for (const T& x : v) d.push_back(static_cast<double>(static_cast<acc_t<T>>(x)));
  return d;
}

}  // namespace

TEMPLATE_TEST_CASE("cpu adamw matches the formula over segments and leaves the gaps alone", "[optim]", float,
                   double) {
  using A = TestType;
  State<A, A> st(kN, false, 11);
  const State<A, A> init = st;
  std::vector<double> w = as_double(st.param), m = as_double(st.m), v = as_double(st.v);
  std::vector<A> we = st.param, me = st.m, ve = st.v;
  for (int64_t t = 1; t <= 3; ++t) {
    st.grad = normal<A>(kN, 100 + t);
    const AdamWStep s = make_step(t, 1e-3 * static_cast<double>(t));
    kernels::cpu::adamw<A, A>(st.param.data(), nullptr, st.grad.data(), st.m.data(), st.v.data(),
                              kSegments.data(), static_cast<int>(kSegments.size()), s);
    for (size_t i = 0; i < kN; ++i) {
      if (!in_segments(kSegments, i)) continue;
      const double wd = weight_decay_at(kSegments, i);
      adamw_reference(w[i], static_cast<double>(st.grad[i]), m[i], v[i], wd, s);
      adamw_exact(we[i], st.grad[i], me[i], ve[i], wd, s);
    }
  }
  // In double, the formula within f32/f64 rounding; in A with the documented FMAs, bit for bit.
  const double tol = std::is_same_v<A, float> ? 1e-6 : 1e-14;
  CHECK(normalised_error(as_double(st.param), w) < tol);
  CHECK(normalised_error(as_double(st.m), m) < tol);
  CHECK(normalised_error(as_double(st.v), v) < tol);
  INFO("first differing element: param " << first_difference(st.param, we) << ", m "
                                         << first_difference(st.m, me) << ", v "
                                         << first_difference(st.v, ve));
  CHECK(same_bits(st.param, we));
  CHECK(same_bits(st.m, me));
  CHECK(same_bits(st.v, ve));
  // The update moved every element of the segments and none outside them.
  size_t moved = 0, touched_gap = 0;
  for (size_t i = 0; i < kN; ++i) {
    const bool changed = st.param[i] != init.param[i] || st.m[i] != init.m[i] || st.v[i] != init.v[i];
    if (in_segments(kSegments, i))
      moved += changed;
    else
      touched_gap += changed;
  }
  CHECK(moved == 1200 + 797 + 2899);
  CHECK(touched_gap == 0);
}

TEMPLATE_TEST_CASE("cpu adamw with half-precision parameters updates the f32 master and rounds it", "[optim]",
                   bf16, f16) {
  using P = TestType;
  State<P, float> st(kN, true, 21);
  const State<P, float> init = st;
  std::vector<float> we = st.master, me = st.m, ve = st.v;
  std::vector<double> w = as_double(st.master), m = as_double(st.m), v = as_double(st.v);
  for (int64_t t = 1; t <= 3; ++t) {
    st.grad = normal<float>(kN, 200 + t);
    const AdamWStep s = make_step(t, 2e-3);
    kernels::cpu::adamw<P, float>(st.param.data(), st.master.data(), st.grad.data(), st.m.data(), st.v.data(),
                                  kSegments.data(), static_cast<int>(kSegments.size()), s);
    for (size_t i = 0; i < kN; ++i) {
      if (!in_segments(kSegments, i)) continue;
      const double wd = weight_decay_at(kSegments, i);
      adamw_reference(w[i], static_cast<double>(st.grad[i]), m[i], v[i], wd, s);
      adamw_exact(we[i], st.grad[i], me[i], ve[i], wd, s);
    }
  }
  CHECK(normalised_error(as_double(st.master), w) < 1e-6);
  CHECK(same_bits(st.master, we));
  CHECK(same_bits(st.m, me));
  CHECK(same_bits(st.v, ve));
  size_t wrong_rounding = 0, touched_gap = 0;
  for (size_t i = 0; i < kN; ++i) {
    if (in_segments(kSegments, i)) {
      const P r = static_cast<P>(st.master[i]);
      wrong_rounding += std::memcmp(&r, &st.param[i], sizeof(P)) != 0;
    } else {
      touched_gap += std::memcmp(&st.param[i], &init.param[i], sizeof(P)) != 0 ||
                     st.master[i] != init.master[i] || st.m[i] != init.m[i] || st.v[i] != init.v[i];
    }
  }
  CHECK(wrong_rounding == 0);
  CHECK(touched_gap == 0);
}

// Gradient clipping folded into the update (train::AdamW::clip_grad_norm): grad_scale must give exactly what
// scaling the gradients in place (g *= factor, rounded to A) and updating with grad_scale 1 gives.
TEMPLATE_TEST_CASE("cpu adamw's grad_scale equals scaling the gradients in place first", "[optim]", float,
                   double) {
  using A = TestType;
  State<A, A> folded(kN, false, 31);
  State<A, A> scaled = folded;
  const double factor = 0.3712;
  for (int64_t t = 1; t <= 3; ++t) {
    const std::vector<A> g = normal<A>(kN, 400 + t);
    AdamWStep s = make_step(t, 2e-3);
    std::vector<A> pre = g;
    for (A& x : pre) x = x * static_cast<A>(factor);
    kernels::cpu::adamw<A, A>(scaled.param.data(), nullptr, pre.data(), scaled.m.data(), scaled.v.data(),
                              kSegments.data(), static_cast<int>(kSegments.size()), s);
    s.grad_scale = factor;
    kernels::cpu::adamw<A, A>(folded.param.data(), nullptr, g.data(), folded.m.data(), folded.v.data(),
                              kSegments.data(), static_cast<int>(kSegments.size()), s);
  }
  CHECK(same_bits(folded.param, scaled.param));
  CHECK(same_bits(folded.m, scaled.m));
  CHECK(same_bits(folded.v, scaled.v));
  CHECK_FALSE(same_bits(folded.m, State<A, A>(kN, false, 31).m));  // the updates happened
}

TEST_CASE("cpu sum_squares matches a naive double sum, in a fixed order whatever the thread count",
          "[optim]") {
  // Segments long enough for several 65536-element chunks, with gaps of large values that must not count.
  const size_t n = 400000;
  std::vector<float> g = normal<float>(n, 31);
  const std::vector<AdamWSegment> segs = {
      {0, 70000, 0.1}, {70000, 70000, 0}, {80000, 230001, 0}, {300000, 399999, 0.5}};
  for (size_t i = 70000; i < 80000; ++i) g[i] = 1e6f;
  double naive = 0;
  for (const AdamWSegment& s : segs)
    for (int64_t i = s.begin; i < s.end; ++i) naive += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  // The documented order: chunks from each segment's start, in a chunk 8 lanes (element i of the chunk to
  // lane i % 8, s = fma(x, x, s)) combined pairwise, chunks then segments in order.
  double ordered = 0;
  for (const AdamWSegment& s : segs) {
    double seg = 0;
    for (int64_t c = s.begin; c < s.end; c += kernels::kSumSquaresChunk) {
      double lane[8] = {};
      for (int64_t i = c; i < std::min(s.end, c + kernels::kSumSquaresChunk); ++i) {
        const double x = static_cast<double>(g[i]);
        lane[(i - c) % 8] = std::fma(x, x, lane[(i - c) % 8]);
      }
      seg += ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    }
    ordered += seg;
  }
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = kernels::cpu::sum_squares(g.data(), segs.data(), static_cast<int>(segs.size()));
  omp_set_num_threads(3);
  const double three = kernels::cpu::sum_squares(g.data(), segs.data(), static_cast<int>(segs.size()));
  omp_set_num_threads(threads);
  CHECK(std::abs(one - naive) <= 1e-12 * naive);
  CHECK(one == ordered);
  CHECK(three == one);

  std::vector<double> gd(g.begin(), g.end());
  CHECK(kernels::cpu::sum_squares(gd.data(), segs.data(), static_cast<int>(segs.size())) ==
        Approx(naive).epsilon(1e-12));
  CHECK(kernels::cpu::sum_squares(gd.data(), segs.data(), 0) == 0.0);
}

TEST_CASE("cpu optim kernels reject unsorted segments and a missing master", "[optim]") {
  std::vector<float> x(100, 1.0f), m(100), v(100);
  std::vector<bf16> p(100);
  const std::vector<AdamWSegment> overlap = {{0, 50, 0}, {40, 60, 0}};
  const std::vector<AdamWSegment> reversed = {{10, 5, 0}};
  const std::vector<AdamWSegment> ok = {{0, 100, 0}};
  const AdamWStep s = make_step(1, 1e-3);
  auto adamw_f32 = [&](const std::vector<AdamWSegment>& segs) {
    kernels::cpu::adamw(x.data(), static_cast<float*>(nullptr), x.data(), m.data(), v.data(), segs.data(),
                        static_cast<int>(segs.size()), s);
  };
  auto adamw_bf16 = [&](float* master) {
    kernels::cpu::adamw(p.data(), master, x.data(), m.data(), v.data(), ok.data(), 1, s);
  };
  CHECK_THROWS_WITH(adamw_f32(overlap),
                    Catch::Contains("segment 1 [40, 60)") && Catch::Contains("previous segment's end 50"));
  CHECK_THROWS_WITH(kernels::cpu::sum_squares(x.data(), reversed.data(), 1),
                    Catch::Contains("segment 0 [10, 5)"));
  CHECK_THROWS_WITH(adamw_bf16(nullptr), Catch::Contains("master is null"));
  std::vector<float> master(100, 0.5f);
  CHECK_NOTHROW(adamw_bf16(master.data()));
}

#ifdef POLDER_HAVE_CUDA

using polder::testing::DevBuf;

namespace {

// Many segments (more than one launch's 128), of every length class: shorter than a vector, unaligned starts,
// longer than a chunk (4096), with gaps between some of them.
std::vector<AdamWSegment> many_segments(size_t& n) {
  std::vector<AdamWSegment> segs;
  std::mt19937_64 rng(7);
  int64_t at = 1;
  for (int k = 0; k < 300; ++k) {
    const int64_t len = k % 50 == 0 ? 9000 + k : static_cast<int64_t>(rng() % 700);
    const int64_t gap = k % 3 == 0 ? static_cast<int64_t>(rng() % 5) : 0;
    at += gap;
    segs.push_back({at, at + len, (k % 4) * 0.05});
    at += len;
  }
  n = static_cast<size_t>(at + 3);
  return segs;
}

template <typename P, typename A>
void check_cuda_adamw(bool with_master) {
  size_t n = 0;
  const std::vector<AdamWSegment> segs = many_segments(n);
  State<P, A> cpu(n, with_master, 41);
  DevBuf<P> dp(cpu.param);
  DevBuf<A> dmaster(with_master ? cpu.master : std::vector<A>(1)), dgrad(n), dm(cpu.m), dv(cpu.v);
  for (int64_t t = 1; t <= 3; ++t) {
    cpu.grad = normal<A>(n, 300 + t);
    CUDA_OK(cudaMemcpy(dgrad.get(), cpu.grad.data(), n * sizeof(A), cudaMemcpyHostToDevice));
    AdamWStep s = make_step(t, 1e-3);
    if (t == 2) s.grad_scale = 0.3712;  // a clipped step
    kernels::cpu::adamw<P, A>(cpu.param.data(), with_master ? cpu.master.data() : nullptr, cpu.grad.data(),
                              cpu.m.data(), cpu.v.data(), segs.data(), static_cast<int>(segs.size()), s);
    kernels::cuda::adamw<P, A>(dp.get(), with_master ? dmaster.get() : nullptr, dgrad.get(), dm.get(),
                               dv.get(), segs.data(), static_cast<int>(segs.size()), s, nullptr);
  }
  INFO("first differing element: param " << first_difference(dp.host(), cpu.param) << ", m "
                                         << first_difference(dm.host(), cpu.m) << ", v "
                                         << first_difference(dv.host(), cpu.v));
  CHECK(same_bits(dp.host(), cpu.param));
  CHECK(same_bits(dm.host(), cpu.m));
  CHECK(same_bits(dv.host(), cpu.v));
  if (with_master) CHECK(same_bits(dmaster.host(), cpu.master));
}

}  // namespace

TEST_CASE("cuda adamw is bit-identical to the CPU twin over 300 segments", "[cuda][optim]") {
  SKIP_WITHOUT_GPU();
  SECTION("f32") {
    check_cuda_adamw<float, float>(false);
  }
  SECTION("bf16 parameters, f32 master") {
    check_cuda_adamw<bf16, float>(true);
  }
  SECTION("f16 parameters, f32 master") {
    check_cuda_adamw<f16, float>(true);
  }
  SECTION("f64") {
    check_cuda_adamw<double, double>(false);
  }
}

TEST_CASE("cuda sum_squares matches the CPU twin to 1e-12 and is deterministic", "[cuda][optim]") {
  SKIP_WITHOUT_GPU();
  size_t n = 0;
  const std::vector<AdamWSegment> segs = many_segments(n);
  const int ns = static_cast<int>(segs.size());
  std::vector<float> g = normal<float>(n, 51);
  std::vector<double> gd(g.begin(), g.end());
  DevBuf<float> dg(g);
  DevBuf<double> dgd(gd), out(2);
  kernels::cuda::sum_squares(dg.get(), segs.data(), ns, out.get(), nullptr);
  kernels::cuda::sum_squares(dgd.get(), segs.data(), ns, out.get() + 1, nullptr);
  const std::vector<double> got = out.host();
  const double ref = kernels::cpu::sum_squares(g.data(), segs.data(), ns);
  CHECK(std::abs(got[0] - ref) <= 1e-12 * ref);
  CHECK(std::abs(got[1] - kernels::cpu::sum_squares(gd.data(), segs.data(), ns)) <= 1e-12 * ref);
  kernels::cuda::sum_squares(dg.get(), segs.data(), ns, out.get() + 1, nullptr);
  CHECK(out.host()[1] == got[0]);  // same bits on a second run
  // One long segment (several 65536-element chunks), and no segments at all (0).
  const std::vector<AdamWSegment> one = {{0, static_cast<int64_t>(n), 0}};
  kernels::cuda::sum_squares(dg.get(), one.data(), 1, out.get(), nullptr);
  kernels::cuda::sum_squares(dg.get(), one.data(), 0, out.get() + 1, nullptr);
  const std::vector<double> got2 = out.host();
  const double ref2 = kernels::cpu::sum_squares(g.data(), one.data(), 1);
  CHECK(std::abs(got2[0] - ref2) <= 1e-12 * ref2);
  CHECK(got2[1] == 0.0);
}

#endif
