// Every differentiable op: finite-difference gradients in f64 (odd sizes, GQA), fused ops against their
// composition from primitives, low-precision paths against f32, and error messages.
#include <cmath>

#include "kernels/gemm.h"
#include "tests/testing.h"

using namespace polder;
using namespace polder::testing;

namespace {
Tensor leaf(const Shape& s, uint64_t key, double std = 1.0) {
  return randn(s, key, DType::f64, std).set_requires_grad(true);
}
Tensor ids_tensor(const std::vector<int32_t>& v, const Shape& s) {
  return Tensor::from_vector(v, s);
}
constexpr double kGradTol = 1e-6;
}  // namespace

TEST_CASE("gradcheck: elementwise with broadcasting", "[ops]") {
  Tensor a = leaf({3, 1, 5}, 1), b = leaf({4, 5}, 2), c = leaf({3, 4, 5}, 3);
  CHECK(gradcheck([](const std::vector<Tensor>& x) { return ops::add(x[0], x[1]); }, {a, b}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& x) { return ops::sub(x[0], x[1]); }, {a, b}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& x) { return ops::mul(x[0], x[1]); }, {a, b}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& x) { return ops::mul(x[0], x[1]); },
                  {c, c.detach().clone().set_requires_grad(true)}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& x) { return ops::scale(x[0], -2.5); }, {c}) < kGradTol);
  // Broadcast values: out[i, j, k] = a[i, 0, k] + b[j, k].
  Tensor s = ops::add(a, b);
  auto av = values(a), bv = values(b), sv = values(s);
  CHECK(sv[(2 * 4 + 3) * 5 + 4] == Approx(av[2 * 5 + 4] + bv[3 * 5 + 4]));
}

TEST_CASE("gradcheck: reductions and shape ops", "[ops]") {
  Tensor x = leaf({3, 7, 5}, 4);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::sum(v[0]); }, {x}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::mean(v[0]); }, {x}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::sum(v[0], 1); }, {x}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::mean(v[0], -1, true); }, {x}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::reshape(v[0], {7, -1}); }, {x}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::transpose(v[0], 0, 2); }, {x}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::narrow(v[0], 1, 2, 4); }, {x}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::narrow(v[0], 0, 1, 2); }, {x}) < kGradTol);
  Tensor y = leaf({3, 2, 5}, 5);
  CHECK(gradcheck(
            [](const std::vector<Tensor>& v) {
              return ops::concat({v[0], v[1]}, 1);
            },
            {x, y}) < kGradTol);
  CHECK(gradcheck(
            [](const std::vector<Tensor>& v) {
              auto parts = ops::split(v[0], {2, 4, 1}, 1);
              return ops::add(ops::mul(parts[0], parts[0]), ops::narrow(parts[1], 1, 0, 2));
            },
            {x}) < kGradTol);
  // Values: transpose moves element (i, j, k) to (k, j, i); narrow keeps [start, start + len).
  Tensor t = ops::transpose(x, 0, 2);
  CHECK(t.shape() == Shape{5, 7, 3});
  CHECK(values(t)[(4 * 7 + 6) * 3 + 2] == values(x)[(2 * 7 + 6) * 5 + 4]);
  CHECK(values(ops::narrow(x, 1, 2, 4))[(1 * 4 + 0) * 5 + 3] == values(x)[(1 * 7 + 2) * 5 + 3]);
}

TEST_CASE("gradcheck: matmul and linear, all transposes", "[ops]") {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      INFO("trans_a " << ta << " trans_b " << tb);
      Tensor a = leaf(ta ? Shape{2, 5, 3} : Shape{2, 3, 5}, 6),
             b = leaf(tb ? Shape{2, 4, 5} : Shape{2, 5, 4}, 7);
      CHECK(gradcheck([ta, tb](const std::vector<Tensor>& v) { return ops::matmul(v[0], v[1], ta, tb); },
                      {a, b}) < kGradTol);
      Tensor b2 = leaf(tb ? Shape{4, 5} : Shape{5, 4}, 8);
      CHECK(gradcheck([ta, tb](const std::vector<Tensor>& v) { return ops::matmul(v[0], v[1], ta, tb); },
                      {a, b2}) < kGradTol);
    }
  Tensor x = leaf({2, 7, 6}, 9), w = leaf({5, 6}, 10), bias = leaf({5}, 11);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::linear(v[0], v[1], v[2]); }, {x, w, bias}) <
        kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::linear(v[0], v[1]); }, {x, w}) < kGradTol);
}

TEST_CASE("linear equals matmul against the transposed weight, and a direct triple loop", "[ops]") {
  Tensor x = randn({7, 6}, 12), w = randn({5, 6}, 13);
  Tensor y = ops::linear(x, w);
  auto xv = values(x), wv = values(w), yv = values(y);
  double worst = 0;
  for (int i = 0; i < 7; ++i)
    for (int j = 0; j < 5; ++j) {
      double s = 0;
      for (int k = 0; k < 6; ++k) s += xv[i * 6 + k] * wv[j * 6 + k];
      worst = std::max(worst, std::abs(s - yv[i * 5 + j]));
    }
  CHECK(worst < 1e-12);
  CHECK(rel_error(ops::matmul(x, w, false, true), y) < 1e-14);
}

TEST_CASE("gradcheck: embedding, rms_norm, rope, silu, swiglu, softmax, log_softmax", "[ops]") {
  Tensor table = leaf({11, 6}, 14);
  Tensor ids = ids_tensor({3, 0, 10, 3, 7, 3}, {2, 3});
  CHECK(gradcheck([&](const std::vector<Tensor>& v) { return ops::embedding(v[0], ids); }, {table}) <
        kGradTol);
  Tensor x = leaf({3, 7, 24}, 15), w = randu({24}, 16, 0.5, 1.5).set_requires_grad(true);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::rms_norm(v[0], v[1], 1e-5); }, {x, w}) <
        kGradTol);
  auto table_r = ops::make_rope_table(16, 24, 10000.0, DType::f64);
  Tensor q = leaf({2, 7, 3, 24}, 17);
  CHECK(gradcheck([&](const std::vector<Tensor>& v) { return ops::rope(v[0], table_r, 3); }, {q}) < kGradTol);
  Tensor g = leaf({4, 9}, 18, 2.0), u = leaf({4, 9}, 19);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::silu(v[0]); }, {g}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::swiglu(v[0], v[1]); }, {g, u}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::softmax(v[0]); }, {g}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& v) { return ops::log_softmax(v[0]); }, {g}) < kGradTol);
}

TEST_CASE("gradcheck: cross_entropy with an ignore index", "[ops]") {
  Tensor logits = leaf({7, 13}, 20, 2.0);
  Tensor targets = ids_tensor({1, 12, -100, 0, 5, -100, 12}, {7});
  CHECK(gradcheck([&](const std::vector<Tensor>& v) { return ops::cross_entropy(v[0], targets); }, {logits}) <
        kGradTol);
  Tensor t64 = Tensor::from_vector<int64_t>({1, 12, 3, 0, 5, 2, 12}, {7});
  CHECK(gradcheck([&](const std::vector<Tensor>& v) { return ops::cross_entropy(v[0], t64); }, {logits}) <
        kGradTol);
}

TEST_CASE("gradcheck: causal attention with GQA and odd sizes", "[ops]") {
  // T=7, head dim 24, 6 query heads sharing 2 KV heads.
  Tensor q = leaf({2, 7, 6, 24}, 21), k = leaf({2, 7, 2, 24}, 22), v = leaf({2, 7, 2, 24}, 23);
  CHECK(gradcheck([](const std::vector<Tensor>& x) { return ops::attention(x[0], x[1], x[2]); }, {q, k, v}) <
        kGradTol);
  // Non-causal, and fewer queries than keys (queries aligned to the end), with more than one key block.
  Tensor q2 = leaf({1, 5, 2, 8}, 24), k2 = leaf({1, 70, 1, 8}, 25), v2 = leaf({1, 70, 1, 8}, 26);
  CHECK(gradcheck([](const std::vector<Tensor>& x) { return ops::attention(x[0], x[1], x[2], false); },
                  {q2, k2, v2}) < kGradTol);
  CHECK(gradcheck([](const std::vector<Tensor>& x) { return ops::attention(x[0], x[1], x[2], true); },
                  {q2, k2, v2}) < kGradTol);
}

namespace {
// softmax(Q K^T * scale + causal mask) V built from primitives, per query head (KV head h / group).
Tensor attention_composed(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  const int64_t T = q.size(1), S = k.size(1), Hq = q.size(2), Hkv = k.size(2), D = q.size(3);
  Tensor qt = ops::transpose(q, 1, 2), kt = ops::transpose(k, 1, 2),
         vt = ops::transpose(v, 1, 2);  // (B, H, T, D)
  Tensor mask = Tensor::zeros({T, S}, q.dtype());
  if (causal) {
    double* m = mask.data<double>();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t s = 0; s < S; ++s)
        if (s > t + (S - T)) m[t * S + s] = -1e300;
  }
  std::vector<Tensor> heads;
  for (int64_t h = 0; h < Hq; ++h) {
    const int64_t hk = h / (Hq / Hkv);
    Tensor qh = ops::narrow(qt, 1, h, 1), kh = ops::narrow(kt, 1, hk, 1), vh = ops::narrow(vt, 1, hk, 1);
    Tensor scores = ops::add(ops::scale(ops::matmul(qh, kh, false, true), 1.0 / std::sqrt(double(D))), mask);
    heads.push_back(ops::matmul(ops::softmax(scores), vh));
  }
  return ops::transpose(ops::concat(heads, 1), 1, 2);
}
}  // namespace

TEST_CASE("fused ops equal their composition from primitives", "[ops]") {
  SECTION("attention vs softmax(QK^T/sqrt(d) + mask) V, values and gradients") {
    for (bool causal : {true, false}) {
      Tensor q = leaf({2, 9, 6, 16}, 27), k = leaf({2, 9, 2, 16}, 28), v = leaf({2, 9, 2, 16}, 29);
      Tensor r = randn({2, 9, 6, 16}, 30);
      Tensor fused = ops::attention(q, k, v, causal);
      ops::sum(ops::mul(fused, r)).backward();
      Tensor gq = q.grad(), gk = k.grad(), gv = v.grad();
      q.grad() = Tensor();
      k.grad() = Tensor();
      v.grad() = Tensor();
      Tensor composed = attention_composed(q, k, v, causal);
      ops::sum(ops::mul(composed, r)).backward();
      CHECK(rel_error(fused, composed) < 1e-12);
      CHECK(rel_error(gq, q.grad()) < 1e-12);
      CHECK(rel_error(gk, k.grad()) < 1e-12);
      CHECK(rel_error(gv, v.grad()) < 1e-12);
    }
  }
  SECTION("cross_entropy vs -mean(log_softmax gathered by one-hot)") {
    Tensor logits = leaf({6, 10}, 31, 3.0);
    std::vector<int32_t> t = {3, 9, 0, -100, 4, 4};
    Tensor fused = ops::cross_entropy(logits, ids_tensor(t, {6}));
    fused.backward();
    Tensor g_fused = logits.grad();
    logits.grad() = Tensor();
    Tensor onehot = Tensor::zeros({6, 10}, DType::f64);
    for (int i = 0; i < 6; ++i)
      if (t[static_cast<size_t>(i)] >= 0) onehot.data<double>()[i * 10 + t[static_cast<size_t>(i)]] = 1.0;
    Tensor composed = ops::scale(ops::sum(ops::mul(ops::log_softmax(logits), onehot)), -1.0 / 5.0);
    composed.backward();
    CHECK(std::abs(fused.item() - composed.item()) < 1e-12);
    CHECK(rel_error(g_fused, logits.grad()) < 1e-12);
  }
  SECTION("swiglu vs silu(gate) * up; silu vs x * sigmoid(x) by softmax of (0, x)") {
    Tensor g = randn({5, 8}, 32), u = randn({5, 8}, 33);
    CHECK(rel_error(ops::swiglu(g, u), ops::mul(ops::silu(g), u)) < 1e-14);
    auto gv = values(g), sv = values(ops::silu(g));
    for (size_t i = 0; i < gv.size(); ++i)
      CHECK(sv[i] == Approx(gv[i] / (1 + std::exp(-gv[i]))).epsilon(1e-12));
  }
  SECTION("rms_norm vs x / sqrt(mean(x^2) + eps) * w") {
    Tensor x = randn({4, 12}, 34), w = randn({12}, 35);
    Tensor ms = ops::mean(ops::mul(x, x), -1, true);
    auto msv = values(ms);
    Tensor inv = Tensor::empty({4, 1}, DType::f64);
    for (int i = 0; i < 4; ++i) inv.data<double>()[i] = 1.0 / std::sqrt(msv[static_cast<size_t>(i)] + 1e-6);
    CHECK(rel_error(ops::rms_norm(x, w, 1e-6), ops::mul(ops::mul(x, inv), w)) < 1e-14);
  }
  SECTION("rope vs x * cos + rotate_half(x) * sin") {
    Tensor x = randn({1, 5, 2, 8}, 36);
    auto tab = ops::make_rope_table(8, 8, 500000.0, DType::f64);
    Tensor halves_neg = ops::concat({ops::scale(ops::narrow(x, 3, 4, 4), -1.0), ops::narrow(x, 3, 0, 4)}, 3);
    Tensor c = ops::reshape(ops::narrow(tab.cos, 0, 2, 5), {1, 5, 1, 8}),
           s = ops::reshape(ops::narrow(tab.sin, 0, 2, 5), {1, 5, 1, 8});
    CHECK(rel_error(ops::rope(x, tab, 2), ops::add(ops::mul(x, c), ops::mul(halves_neg, s))) < 1e-14);
  }
}

TEST_CASE("rope table follows the HF inv_freq convention", "[ops]") {
  auto tab = ops::make_rope_table(4, 8, 10000.0, DType::f64);
  auto c = values(tab.cos), s = values(tab.sin);
  // position 3, frequency index 1: angle = 3 / 10000^(2/8)
  const double angle = 3.0 / std::pow(10000.0, 0.25);
  CHECK(c[3 * 8 + 1] == Approx(std::cos(angle)).epsilon(1e-14));
  CHECK(c[3 * 8 + 5] == Approx(std::cos(angle)).epsilon(1e-14));
  CHECK(s[3 * 8 + 1] == Approx(std::sin(angle)).epsilon(1e-14));
}

TEST_CASE("bf16 and f16 paths agree with f32 within dtype tolerances", "[ops][lowp]") {
  // Inputs are rounded to the low dtype first, so the only difference is the arithmetic and output rounding.
  for (DType lp : {DType::bf16, DType::f16}) {
    INFO("dtype " << dtype_name(lp));
    const double tol =
        lp == DType::bf16 ? 2e-2 : 3e-3;  // ~3 ulp of bf16 (2^-8) / f16 (2^-11), relative to max
    auto pair = [&](const Shape& s, uint64_t key) {
      Tensor low = randn(s, key, DType::f32).to(lp);
      return std::pair{low, low.to(DType::f32)};
    };
    auto [x, x32] = pair({8, 7, 64}, 40);
    auto [w, w32] = pair({48, 64}, 41);
    CHECK(rel_error(ops::linear(x, w), ops::linear(x32, w32)) < tol);
    auto [nw, nw32] = pair({64}, 42);
    CHECK(rel_error(ops::rms_norm(x, nw, 1e-5), ops::rms_norm(x32, nw32, 1e-5)) < tol);
    CHECK(rel_error(ops::swiglu(x, x), ops::swiglu(x32, x32)) < tol);
    CHECK(rel_error(ops::softmax(x), ops::softmax(x32)) < tol);
    auto [q, q32] = pair({2, 17, 4, 32}, 43);
    auto [k, k32] = pair({2, 17, 2, 32}, 44);
    auto [v, v32] = pair({2, 17, 2, 32}, 45);
    auto tab = ops::make_rope_table(32, 32, 10000.0);
    CHECK(rel_error(ops::rope(q, tab), ops::rope(q32, tab)) < tol);
    CHECK(rel_error(ops::attention(q, k, v), ops::attention(q32, k32, v32)) < tol);
    Tensor t = Tensor::from_vector<int32_t>({1, 2, 3, 4, 5, 6, 7, 0}, {8});
    auto [lg, lg32] = pair({8, 50}, 46);
    CHECK(std::abs(ops::cross_entropy(lg, t).item() - ops::cross_entropy(lg32, t).item()) < 1e-5);
    // Backward through linear: weight gradient comes out in f32 and matches the f32 computation.
    Tensor wl = w.detach().set_requires_grad(true), wf = w32.detach().set_requires_grad(true);
    Tensor r = randn({8, 7, 48}, 47, DType::f32);
    ops::sum(ops::mul(ops::cast(ops::linear(x, wl), DType::f32), r)).backward();
    ops::sum(ops::mul(ops::linear(x32, wf), r)).backward();
    CHECK(wl.grad().dtype() == DType::f32);
    CHECK(rel_error(wl.grad(), wf.grad()) < tol);
  }
}

TEST_CASE("ops report bad arguments with one clear message", "[ops][errors]") {
  Tensor a = randn({4, 96}, 50, DType::f32), w = randn({128, 64}, 51, DType::f32);
  require_error([&] { ops::linear(a, w); },
                "x is (4, 96) but weight is (128, 64): inner sizes 96 and 64 differ");
  require_error(
      [&] {
        ops::add(randn({3, 4}, 1), randn({5, 4}, 2));
      },
      "shapes (3, 4) and (5, 4) cannot be broadcast");
  require_error([&] { ops::add(randn({3}, 1, DType::f32), randn({3}, 2, DType::f64)); },
                "a is f32 but b is f64");
  require_error([&] { ops::matmul(randn({2, 3}, 1), randn({4, 5}, 2)); }, "inner sizes 3 and 4 differ");
  require_error(
      [&] {
        ops::embedding(randn({5, 2}, 1), Tensor::from_vector<int32_t>({1, 5}, {2}));
      },
      "id 5 at position 1 is outside the vocabulary [0, 5)");
  require_error([&] { ops::embedding(randn({5, 2}, 1), randn({2}, 2)); }, "ids is f64, expected i32 or i64");
  require_error(
      [&] {
        ops::cross_entropy(randn({2, 5}, 1), Tensor::from_vector<int32_t>({1, 7}, {2}));
      },
      "target 7 at position 1 is outside [0, 5)");
  require_error(
      [&] {
        ops::attention(randn({1, 3, 5, 8}, 1), randn({1, 3, 2, 8}, 2), randn({1, 3, 2, 8}, 3));
      },
      "5 query heads are not a multiple of 2 KV heads");
  require_error([&] { ops::rms_norm(randn({2, 8}, 1), randn({7}, 2), 1e-5); }, "expected weight (8)");
  require_error([&] { ops::split(randn({2, 8}, 1), {3, 3}, 1); }, "sizes (3, 3) sum to 6 but dim 1");
  auto tab = ops::make_rope_table(4, 8, 10000.0);
  require_error(
      [&] {
        ops::rope(randn({1, 5, 1, 8}, 1, DType::f32), tab);
      },
      "positions [0, 5) exceed the table's 4");
}

TEST_CASE("gradcheck: linear_cross_entropy with an ignore index", "[ops]") {
  // f64: the fused path (the gradient made in the forward, the upstream gradient as the GEMMs' alpha) against
  // finite differences; the sum with a second use of x makes the upstream gradient of the loss differ from 1.
  Tensor x = leaf({7, 5}, 60), w = leaf({13, 5}, 61);
  Tensor targets = ids_tensor({1, 12, -100, 0, 5, -100, 12}, {7});
  CHECK(gradcheck(
            [&](const std::vector<Tensor>& v) {
              return ops::add(ops::scale(ops::linear_cross_entropy(v[0], v[1], targets), 0.37),
                              ops::scale(ops::sum(v[0]), 0.01));
            },
            {x, w}) < kGradTol);
}

TEST_CASE("linear_cross_entropy equals cross_entropy of linear", "[ops]") {
  for (DType dt : {DType::f32, DType::bf16}) {
    INFO("dtype " << dtype_name(dt));
    const int64_t N = 24, K = 40, V = 301;  // V: not a multiple of any vector width
    std::vector<int32_t> tv(N);
    for (int64_t i = 0; i < N; ++i) tv[static_cast<size_t>(i)] = static_cast<int32_t>((i * 37) % V);
    tv[3] = tv[17] = -100;
    Tensor targets = ids_tensor(tv, {N});
    Tensor x0 = randn({N, K}, 62, DType::f32).to(dt), w0 = randn({V, K}, 63, DType::f32, 0.5).to(dt);
    Tensor xa = x0.clone().set_requires_grad(true), wa = w0.clone().set_requires_grad(true);
    Tensor xb = x0.clone().set_requires_grad(true), wb = w0.clone().set_requires_grad(true);
    // Two backward passes, each with an upstream gradient of 0.25 (a micro-batch's share): the second adds
    // into the weight's gradient buffer (the direct path of a parameter).
    // Where bf16 GEMMs run as f32 (POLDER_CPU_ISA=avx2 or baseline here), the fused op keeps f32 logits.
    const bool f32_logits = kernels::cpu::gemm_converts(dt);
    for (int pass = 0; pass < 2; ++pass) {
      Tensor fused = ops::linear_cross_entropy(xa, wa, targets);
      Tensor plain = ops::cross_entropy(ops::linear(xb, wb), targets);
      // The loss: the same kernels on the same logits, bit for bit (f32 logits: those of the f32
      // computation).
      if (f32_logits) {
        NoGradGuard no_grad;
        CHECK(fused.item() ==
              ops::cross_entropy(ops::linear(x0.to(DType::f32), w0.to(DType::f32)), targets).item());
      } else {
        CHECK(fused.item() == plain.item());
      }
      ops::scale(fused, 0.25).backward();
      ops::scale(plain, 0.25).backward();
    }
    // Gradients: the same sums, rounded in other places (the 0.25 as alpha, softmax as exp(x - max) / sum).
    const double tol = dt == DType::f32 ? 1e-6 : 2e-2;
    CHECK(rel_error(xa.grad(), xb.grad()) < tol);
    CHECK(rel_error(wa.grad(), wb.grad()) < tol);
    CHECK(wa.grad().dtype() == DType::f32);
    // Without a gradient it is the composition.
    NoGradGuard no_grad;
    CHECK(ops::linear_cross_entropy(x0, w0, targets).item() ==
          ops::cross_entropy(ops::linear(x0, w0), targets).item());
  }
  require_error(
      [&] {
        ops::linear_cross_entropy(randn({2, 3}, 1).set_requires_grad(true), randn({5, 3}, 2),
                                  Tensor::from_vector<int32_t>({1, 7}, {2}));
      },
      "linear_cross_entropy: target 7 at position 1 is outside [0, 5)");
  require_error(
      [&] {
        ops::linear_cross_entropy(randn({2, 4}, 1).set_requires_grad(true), randn({5, 3}, 2),
                                  Tensor::from_vector<int32_t>({1, 2}, {2}));
      },
      "x is (2, 4) but weight is (5, 3): inner sizes 4 and 3 differ");
}
