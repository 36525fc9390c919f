// The generic CUDA elementwise kernels, reductions and softmax against their CPU twins
// (kernels/elementwise.h, kernels/softmax.h): odd sizes, misaligned pointers (the scalar paths), broadcasting
// shapes ((rows, C) + (C), (B, 1, C) + (1, T, 1), scalars, 4-d mixes) and their gradient reductions in both
// plans (column and row, with and without slices), outputs poisoned with NaN bytes so that every element must
// be written. Normalised error max|gpu - cpu| / max|cpu|: f32 < 1e-5, f64 < 1e-12, bf16 < 1e-2, f16 < 2e-3;
// copies, fills and transposes byte for byte. Tagged [cuda]; without a device each test warns that it skipped
// and passes.
#include <catch2/catch.hpp>

#ifdef POLDER_HAVE_CUDA

#include <cuda_runtime.h>

#include "tests/cuda_testing.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/softmax.h"

using namespace polder;
using kernels::BinaryOp;
using kernels::Broadcast;
using polder::testing::DevBuf;
using polder::testing::randn;

namespace {

using Shape = std::vector<int64_t>;

// max |got - ref| / max |ref|; a NaN in got where ref has none (an element never written) gives infinity.
template <typename T>
double nerr(const std::vector<T>& got, const std::vector<T>& ref) {
  REQUIRE(got.size() == ref.size());
  double num = 0, den = 1e-300;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(static_cast<acc_t<T>>(got[i]));
    const double r = static_cast<double>(static_cast<acc_t<T>>(ref[i]));
    if (std::isnan(g) && !std::isnan(r)) return std::numeric_limits<double>::infinity();
    num = std::max(num, std::abs(g - r));
    den = std::max(den, std::abs(r));
  }
  return num / den;
}

template <typename T>
double tol() {
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  if constexpr (std::is_same_v<T, bf16>) return 1e-2;
  return 2e-3;  // f16
}

#define CHECK_ERR(got, ref, limit)                                            \
  do {                                                                        \
    const double e_ = nerr(got, ref);                                         \
    INFO(#got << " normalised error " << e_ << " (limit " << (limit) << ")"); \
    CHECK(e_ < (limit));                                                      \
  } while (0)

template <typename T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

std::string show(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// The Broadcast of a and b, as core/ops builds it: right-aligned dims, operand strides 0 where broadcast.
Broadcast make_broadcast(const Shape& a, const Shape& b) {
  const size_t nd = std::max(a.size(), b.size());
  Broadcast bc;
  bc.ndim = static_cast<int>(nd);
  Shape out(nd);
  auto dim = [nd](const Shape& s, size_t i) {
    return i + s.size() >= nd ? s[i + s.size() - nd] : int64_t(1);
  };
  for (size_t i = 0; i < nd; ++i) {
    const int64_t da = dim(a, i), db = dim(b, i);
    bc.shape[i] = out[i] = (da == 0 || db == 0) ? 0 : std::max(da, db);
  }
  int64_t sa = 1, sb = 1;
  for (size_t k = nd; k-- > 0;) {
    bc.a_stride[k] = (dim(a, k) == 1 && out[k] != 1) ? 0 : sa;
    bc.b_stride[k] = (dim(b, k) == 1 && out[k] != 1) ? 0 : sb;
    sa *= dim(a, k);
    sb *= dim(b, k);
  }
  bc.numel = numel(out);
  bc.same_shape = a == b;
  return bc;
}

struct BroadcastCase {
  Shape a, b;
};

}  // namespace

TEMPLATE_TEST_CASE("cuda binary ops and their reduce_to gradients match the CPU twin", "[cuda]", float,
                   double, bf16, f16) {
  SKIP_WITHOUT_GPU();
  using T = TestType;
  const std::vector<BroadcastCase> cases = {
      {{4097}, {4097}},               // same shape, vector path and tail
      {{3, 5, 7}, {3, 5, 7}},         // same shape, odd
      {{3000, 67}, {67}},             // (rows, C) + (C): bias; C kept, rows reduced with slices
      {{67}, {300, 67}},              // broadcast on the left operand
      {{6, 1, 40}, {1, 9, 1}},        // (B, 1, C) + (1, T, 1): row plan for b (runs of C = 40)
      {{6, 1, 5}, {1, 9, 1}},         // ... short runs: column plan for b
      {{200001}, {1}},                // tensor + scalar: one output, row plan with slices
      {{}, {7, 3}},                   // 0-d scalar
      {{2, 1, 3, 1}, {1, 4, 1, 5}},   // 4-d mix
      {{5, 1, 33, 2}, {5, 7, 1, 2}},  // kept dims around a reduced one
      {{2, 3}, {0, 2, 3}},            // empty output
  };
  const BinaryOp ops[] = {BinaryOp::add, BinaryOp::sub, BinaryOp::mul};
  for (const BroadcastCase& c : cases) {
    const Broadcast bc = make_broadcast(c.a, c.b);
    const size_t na = static_cast<size_t>(numel(c.a)), nb = static_cast<size_t>(numel(c.b));
    const size_t n = static_cast<size_t>(bc.numel);
    INFO("a " << show(c.a) << " b " << show(c.b));
    auto a = randn<T>(na, 1 + na), b = randn<T>(nb, 2 + nb), g = randn<T>(n, 3 + n);
    for (size_t offset : {size_t(0), size_t(1)}) {
      INFO("pointer offset " << offset);
      DevBuf<T> da(a, offset), db(b, offset), dg(g, offset);
      for (BinaryOp op : ops) {
        INFO("op " << static_cast<int>(op));
        std::vector<T> ref(n);
        kernels::cpu::binary(op, a.data(), b.data(), ref.data(), bc);
        DevBuf<T> out(n, offset);
        kernels::cuda::binary(op, da.get(), db.get(), out.get(), bc, nullptr);
        CHECK_ERR(out.host(), ref, tol<T>());
      }
      if (bc.same_shape) continue;
      // The gradient of each operand: g reduced over the dims where it was broadcast.
      std::vector<T> ra(na), rb(nb);
      kernels::cpu::reduce_to(g.data(), ra.data(), static_cast<int64_t>(na), bc.a_stride, bc);
      kernels::cpu::reduce_to(g.data(), rb.data(), static_cast<int64_t>(nb), bc.b_stride, bc);
      DevBuf<T> ga(na, offset), gb(nb, offset);
      kernels::cuda::reduce_to(dg.get(), ga.get(), static_cast<int64_t>(na), bc.a_stride, bc, nullptr);
      kernels::cuda::reduce_to(dg.get(), gb.get(), static_cast<int64_t>(nb), bc.b_stride, bc, nullptr);
      const std::vector<T> first = gb.host();
      CHECK_ERR(ga.host(), ra, tol<T>());
      CHECK_ERR(first, rb, tol<T>());
      kernels::cuda::reduce_to(dg.get(), gb.get(), static_cast<int64_t>(nb), bc.b_stride, bc, nullptr);
      CHECK(same_bytes(gb.host(), first));  // deterministic: the same bits again
    }
  }
}

TEST_CASE("cuda reduce_to sums a column in the CPU's order when one slice suffices", "[cuda]") {
  SKIP_WITHOUT_GPU();
  // (50, 1000) + (1000): 50 rows per column, fewer than a slice, so each column is one thread's serial sum.
  const Broadcast bc = make_broadcast({50, 1000}, {1000});
  auto g = randn<float>(50000, 5);
  std::vector<float> ref(1000);
  kernels::cpu::reduce_to(g.data(), ref.data(), 1000, bc.b_stride, bc);
  DevBuf<float> dg(g), out(1000);
  kernels::cuda::reduce_to(dg.get(), out.get(), 1000, bc.b_stride, bc, nullptr);
  CHECK(same_bytes(out.host(), ref));
}

TEMPLATE_TEST_CASE("cuda sum, sum_dim, expand_dim and scale match the CPU twin", "[cuda]", float, double,
                   bf16, f16) {
  SKIP_WITHOUT_GPU();
  using T = TestType;
  using A = acc_t<T>;
  for (int64_t n : {int64_t(1), int64_t(1000), int64_t(3 * 65536 + 7)}) {
    INFO("sum of " << n);
    auto x = randn<T>(static_cast<size_t>(n), 10 + n);
    DevBuf<T> dx(x, 1), out(1);
    kernels::cuda::sum(dx.get(), out.get(), n, 0.5, nullptr);
    const std::vector<T> ref = {static_cast<T>(static_cast<A>(0.5 * kernels::cpu::sum(x.data(), n)))};
    CHECK_ERR(out.host(), ref, tol<T>());
  }
  {
    DevBuf<T> out(1);
    kernels::cuda::sum(out.get(), out.get(), 0, 1.0, nullptr);  // empty: 0
    CHECK(static_cast<double>(static_cast<A>(out.host()[0])) == 0.0);
  }
  struct Dims {
    int64_t outer, reduce, inner;
  };
  for (Dims d : {Dims{3, 1000, 1}, Dims{5, 7, 33}, Dims{1, 5000, 3}, Dims{2, 3000, 40}, Dims{4, 1, 9},
                 Dims{1, 1, 1}}) {
    INFO("sum_dim / expand_dim over (" << d.outer << ", " << d.reduce << ", " << d.inner << ")");
    const size_t nx = static_cast<size_t>(d.outer * d.reduce * d.inner),
                 ny = static_cast<size_t>(d.outer * d.inner);
    auto x = randn<T>(nx, 20 + nx), y = randn<T>(ny, 21 + ny);
    std::vector<T> sref(ny), eref(nx);
    kernels::cpu::sum_dim(x.data(), sref.data(), d.outer, d.reduce, d.inner);
    kernels::cpu::expand_dim(y.data(), eref.data(), d.outer, d.reduce, d.inner, 0.25);
    for (size_t offset : {size_t(0), size_t(1)}) {
      DevBuf<T> dx(x, offset), dy(y, offset), sout(ny, offset), eout(nx, offset);
      kernels::cuda::sum_dim(dx.get(), sout.get(), d.outer, d.reduce, d.inner, nullptr);
      kernels::cuda::expand_dim(dy.get(), eout.get(), d.outer, d.reduce, d.inner, 0.25, nullptr);
      CHECK_ERR(sout.host(), sref, tol<T>());
      CHECK_ERR(eout.host(), eref, tol<T>());
    }
  }
  for (size_t n : {size_t(4097), size_t(1) << 20}) {
    auto x = randn<T>(n, 30 + n);
    std::vector<T> ref(n);
    kernels::cpu::scale(x.data(), ref.data(), static_cast<int64_t>(n), -1.5);
    for (size_t offset : {size_t(0), size_t(1)}) {
      DevBuf<T> dx(x, offset), out(n, offset);
      kernels::cuda::scale(dx.get(), out.get(), static_cast<int64_t>(n), -1.5, nullptr);
      CHECK_ERR(out.host(), ref, tol<T>());
    }
  }
}

TEST_CASE("cuda fill and accumulate match the CPU twin for every dtype", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const DType all[] = {DType::f32, DType::bf16, DType::f16, DType::f64, DType::i32, DType::i64, DType::u8};
  for (DType dt : all) {
    visit_dtype(dt, [&](auto z) {
      using D = decltype(z);
      for (double value : {0.0, 1.5, -3.0, 200.0}) {
        if (std::is_same_v<D, uint8_t> && value < 0) continue;  // out of u8's range: undefined conversion
        for (size_t offset : {size_t(0), size_t(1)}) {
          INFO("fill dtype " << static_cast<int>(dt) << " value " << value << " offset " << offset);
          const int64_t n = 1027;
          std::vector<D> ref(static_cast<size_t>(n));
          kernels::cpu::fill(ref.data(), dt, n, value);
          DevBuf<D> out(static_cast<size_t>(n), offset);
          kernels::cuda::fill(out.get(), dt, n, value, nullptr);
          CHECK(same_bytes(out.host(), ref));
        }
      }
    });
  }
  // dst += alpha * src for float pairs (vector and scalar paths) and an integer pair.
  const std::pair<DType, DType> pairs[] = {{DType::f32, DType::f32},  {DType::f32, DType::bf16},
                                           {DType::bf16, DType::f32}, {DType::f64, DType::f32},
                                           {DType::f16, DType::f16},  {DType::f32, DType::f64},
                                           {DType::i32, DType::i32}};
  for (auto [ddt, sdt] : pairs) {
    visit_dtype(ddt, [&](auto dz) {
      visit_dtype(sdt, [&](auto sz) {
        using D = decltype(dz);
        using S = decltype(sz);
        for (size_t offset : {size_t(0), size_t(1)}) {
          INFO("accumulate dtypes " << static_cast<int>(ddt) << " += " << static_cast<int>(sdt) << " offset "
                                    << offset);
          const size_t n = 4099;
          std::vector<D> dst(n);
          std::vector<S> src(n);
          std::mt19937 rng(static_cast<unsigned>(n + offset));
          std::uniform_int_distribution<int> u(-50, 50);
          for (size_t i = 0; i < n; ++i) {
            dst[i] = static_cast<D>(static_cast<float>(u(rng)) * 0.25f);
            src[i] = static_cast<S>(static_cast<float>(u(rng)) * 0.5f);
          }
          std::vector<D> ref = dst;
          kernels::cpu::accumulate(ref.data(), ddt, src.data(), sdt, static_cast<int64_t>(n), 0.75);
          DevBuf<D> dd(dst, offset);
          DevBuf<S> ds(src, offset);
          kernels::cuda::accumulate(dd.get(), ddt, ds.get(), sdt, static_cast<int64_t>(n), 0.75, nullptr);
          // Quarter and half integers times 0.75 are exact in every type here, so the results are too.
          CHECK(same_bytes(dd.host(), ref));
        }
      });
    });
  }
}

TEST_CASE("cuda transpose and copy_blocks move the same bytes as the CPU twin", "[cuda]") {
  SKIP_WITHOUT_GPU();
  struct Case {
    size_t es;
    int64_t outer, d0, mid, d1, inner;
  };
  const Case cases[] = {
      {4, 2, 33, 1, 65, 1},  // tiled: single-word rows
      {2, 2, 40, 3, 37, 1},  // tiled with a middle dim
      {1, 1, 70, 1, 3, 1},   // bytes
      {8, 3, 5, 1, 34, 1},   // doubles
      {4, 2, 7, 1, 5, 4},    // 16-byte rows
      {2, 3, 5, 4, 7, 3},    // 6-byte rows: 2-byte words
      {4, 2, 3, 5, 4, 20},   // (B, T, H, D) -> (B, H, T, D) style
      {1, 1, 1, 1, 1, 5},    // nothing to swap
  };
  for (const Case& c : cases) {
    INFO("transpose es " << c.es << " (" << c.outer << ", " << c.d0 << ", " << c.mid << ", " << c.d1 << ", "
                         << c.inner << ")");
    const size_t bytes = c.es * static_cast<size_t>(c.outer * c.d0 * c.mid * c.d1 * c.inner);
    std::vector<uint8_t> x(bytes);
    std::mt19937 rng(static_cast<unsigned>(bytes));
    for (auto& v : x) v = static_cast<uint8_t>(rng());
    std::vector<uint8_t> ref(bytes);
    kernels::cpu::transpose(x.data(), ref.data(), c.es, c.outer, c.d0, c.mid, c.d1, c.inner);
    for (size_t offset : {size_t(0), c.es}) {
      DevBuf<uint8_t> dx(x, offset), out(bytes, offset);
      kernels::cuda::transpose(dx.get(), out.get(), c.es, c.outer, c.d0, c.mid, c.d1, c.inner, nullptr);
      CHECK(same_bytes(out.host(), ref));
    }
  }
  // 7 blocks of 100 bytes from pitch 128 to pitch 300: the bytes between blocks keep their poison.
  std::vector<uint8_t> src(7 * 128), dst(7 * 300, 0xFF);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 3);
  kernels::cpu::copy_blocks(src.data(), 128, dst.data(), 300, 7, 100);
  DevBuf<uint8_t> ds(src), dd(dst.size());
  kernels::cuda::copy_blocks(ds.get(), 128, dd.get(), 300, 7, 100, nullptr);
  CHECK(same_bytes(dd.host(), dst));
  DevBuf<uint8_t> one(100);
  kernels::cuda::copy_blocks(ds.get(), 0, one.get(), 0, 1, 100, nullptr);
  CHECK(same_bytes(one.host(), std::vector<uint8_t>(src.begin(), src.begin() + 100)));
  CHECK_THROWS_WITH(kernels::cuda::copy_blocks(ds.get(), 50, dd.get(), 300, 7, 100, nullptr),
                    Catch::Contains("pitches 50 (src) and 300 (dst)"));
}

TEMPLATE_TEST_CASE("cuda softmax and log_softmax forward/backward match the CPU twin", "[cuda]", float,
                   double, bf16, f16) {
  SKIP_WITHOUT_GPU();
  using T = TestType;
  const int64_t rows = 7;
  for (int64_t cols : {int64_t(1), int64_t(5), int64_t(1000), int64_t(4097)}) {
    const size_t n = static_cast<size_t>(rows * cols);
    auto x = randn<T>(n, 40 + cols, 3.0f), dy = randn<T>(n, 41 + cols);
    std::vector<T> y(n), dx(n), ly(n), ldx(n);
    kernels::cpu::softmax_forward(x.data(), y.data(), rows, cols);
    kernels::cpu::softmax_backward(y.data(), dy.data(), dx.data(), rows, cols);
    kernels::cpu::log_softmax_forward(x.data(), ly.data(), rows, cols);
    kernels::cpu::log_softmax_backward(ly.data(), dy.data(), ldx.data(), rows, cols);
    for (size_t offset : {size_t(0), size_t(1)}) {
      INFO("rows " << rows << " cols " << cols << " offset " << offset);
      DevBuf<T> dxin(x, offset), ddy(dy, offset), dyv(y, offset), dly(ly, offset);
      DevBuf<T> gy(n, offset), gdx(n, offset), gly(n, offset), gldx(n, offset);
      kernels::cuda::softmax_forward(dxin.get(), gy.get(), rows, cols, nullptr);
      kernels::cuda::softmax_backward(dyv.get(), ddy.get(), gdx.get(), rows, cols, nullptr);
      kernels::cuda::log_softmax_forward(dxin.get(), gly.get(), rows, cols, nullptr);
      kernels::cuda::log_softmax_backward(dly.get(), ddy.get(), gldx.get(), rows, cols, nullptr);
      CHECK_ERR(gy.host(), y, tol<T>());
      CHECK_ERR(gdx.host(), dx, tol<T>());
      CHECK_ERR(gly.host(), ly, tol<T>());
      CHECK_ERR(gldx.host(), ldx, tol<T>());
    }
  }
}

#endif
