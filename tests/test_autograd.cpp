// The autograd engine: accumulation into leaves, shared subgraphs, freeing saved tensors, retain_graph,
// NoGradGuard, mixed-precision accumulation into f32 gradient buffers, and recompute().
#include "tests/testing.h"

using namespace polder;
using namespace polder::testing;

TEST_CASE("leaf gradients accumulate across backward calls; a reused tensor sums its gradients",
          "[autograd]") {
  Tensor x = randn({3, 4}, 1).set_requires_grad(true);
  Tensor y = ops::mul(x, x);               // reused twice below
  Tensor loss = ops::sum(ops::add(y, y));  // d/dx = 4x
  loss.backward();
  CHECK(rel_error(x.grad(), ops::scale(x, 4.0)) < 1e-15);
  ops::sum(ops::scale(x, 3.0)).backward();  // += 3
  Tensor expect = ops::add(ops::scale(x, 4.0), Tensor::full({3, 4}, 3.0, DType::f64));
  CHECK(rel_error(x.grad(), expect) < 1e-15);
  CHECK(x.is_leaf());
  CHECK_FALSE(y.is_leaf());
  CHECK(std::string(y.grad_fn()->name()) == "mul");
}

TEST_CASE("backward twice without retain_graph is a clear error; with it, gradients double", "[autograd]") {
  Tensor x = randn({5}, 2).set_requires_grad(true);
  Tensor loss = ops::sum(ops::mul(x, x));
  loss.backward(Tensor(), /*retain_graph=*/true);
  loss.backward();
  CHECK(rel_error(x.grad(), ops::scale(x, 4.0)) < 1e-15);
  require_error([&] { loss.backward(); }, "backward through the graph a second time");
}

TEST_CASE("errors: non-scalar root, root without grad", "[autograd]") {
  Tensor x = randn({5}, 3).set_requires_grad(true);
  require_error([&] { ops::mul(x, x).backward(); }, "root of shape (5) is not a scalar");
  Tensor c = randn({5}, 4);
  require_error([&] { ops::sum(c).backward(); }, "does not require grad");
  require_error([&] { randn({2}, 1, DType::f64).to(DType::i32).set_requires_grad(true); },
                "only floating tensors can require grad, not i32");
}

TEST_CASE("NoGradGuard records nothing; detach cuts the graph", "[autograd]") {
  Tensor x = randn({4}, 5).set_requires_grad(true);
  {
    NoGradGuard guard;
    Tensor y = ops::mul(x, x);
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
  }
  Tensor d = ops::mul(x, x).detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(GradMode::enabled());
}

TEST_CASE("saved tensors are freed after backward", "[autograd]") {
  Tensor x = randn({64, 64}, 6).set_requires_grad(true);
  std::weak_ptr<Storage> saved;
  Tensor loss;
  {
    Tensor h = ops::silu(x);  // silu saves its input x; the mul below saves h
    saved = h.storage();
    loss = ops::sum(ops::mul(h, h));
  }
  CHECK_FALSE(saved.expired());  // the graph keeps h alive
  loss.backward();
  CHECK(saved.expired());  // ... until backward has run
}

TEST_CASE("bf16 parameters accumulate gradients into an f32 buffer", "[autograd]") {
  Tensor w = randn({6, 8}, 7, DType::f32).to(DType::bf16).set_requires_grad(true);
  w.grad() = Tensor::zeros({6, 8}, DType::f32);  // a view into a flat f32 gradient buffer, in training
  Tensor x = randn({5, 8}, 8, DType::f32).to(DType::bf16);
  for (int micro = 0; micro < 2; ++micro) ops::sum(ops::cast(ops::linear(x, w), DType::f32)).backward();
  CHECK(w.grad().dtype() == DType::f32);
  // d/dW sum(x W^T) = column sums of x, per output row; twice.
  auto xv = values(x), gv = values(w.grad());
  for (int j = 0; j < 8; ++j) {
    double s = 0;
    for (int i = 0; i < 5; ++i) s += xv[static_cast<size_t>(i * 8 + j)];
    CHECK(gv[static_cast<size_t>(3 * 8 + j)] == Approx(2 * s).epsilon(1e-5));
  }
}

TEST_CASE("recompute gives identical gradients to the plain graph", "[autograd][recompute]") {
  Tensor w1 = randn({16, 16}, 9, DType::f32, 0.3).set_requires_grad(true);
  Tensor w2 = randn({16, 16}, 10, DType::f32, 0.3).set_requires_grad(true);
  Tensor nw = randu({16}, 11, 0.5, 1.5, DType::f32).set_requires_grad(true);
  Tensor x0 = randn({3, 5, 16}, 12, DType::f32).set_requires_grad(true);
  auto block = [&](const std::vector<Tensor>& in) {
    Tensor h = ops::rms_norm(in[0], nw, 1e-5);
    Tensor g = ops::swiglu(ops::linear(h, w1), ops::linear(h, w2));
    return std::vector<Tensor>{ops::add(in[0], g)};
  };
  auto run = [&](bool checkpoint) {
    for (Tensor* t : {&w1, &w2, &nw, &x0}) t->grad() = Tensor();
    Tensor h = x0;
    for (int layer = 0; layer < 3; ++layer) h = checkpoint ? recompute(block, {h})[0] : block({h})[0];
    Tensor loss = ops::mean(ops::mul(h, h));
    loss.backward();
    return std::vector<Tensor>{loss, w1.grad().clone(), w2.grad().clone(), nw.grad().clone(),
                               x0.grad().clone()};
  };
  auto plain = run(false);
  auto ckpt = run(true);
  for (size_t i = 0; i < plain.size(); ++i) {
    INFO("tensor " << i);
    CHECK(max_abs_diff(plain[i], ckpt[i]) == 0.0);  // the same kernels in the same order: bit-identical
  }
}

TEST_CASE("recompute keeps only its inputs alive", "[autograd][recompute]") {
  Tensor w = randn({32, 32}, 13, DType::f32).set_requires_grad(true);
  Tensor x = randn({4, 32}, 14, DType::f32).set_requires_grad(true);
  std::weak_ptr<Storage> inner;
  auto block = [&](const std::vector<Tensor>& in) {
    Tensor h = ops::silu(ops::linear(in[0], w));
    inner = h.storage();
    return std::vector<Tensor>{ops::linear(h, w)};
  };
  Tensor y = recompute(block, {x})[0];
  CHECK(inner.expired());  // the intermediate was not saved
  ops::sum(y).backward();
  CHECK(x.grad().defined());
  CHECK(w.grad().defined());
}

TEST_CASE("gradients added straight into a parameter's buffer equal the returned ones", "[autograd]") {
  // A tied table: used by embedding and as a linear weight. With a pre-installed f32 gradient buffer the ops
  // accumulate into it directly; without one they return gradients that AccumulateGrad sums.
  Tensor ids = Tensor::from_vector<int32_t>({3, 1, 4, 1, 5, 9, 2, 6}, {2, 4});
  Tensor r = randn({2, 4, 10}, 21, DType::f32);
  auto run = [&](bool preinstalled) {
    Tensor table = randn({10, 6}, 20, DType::f32).set_requires_grad(true);
    if (preinstalled) table.grad() = Tensor::zeros({10, 6}, DType::f32);
    int hooks = 0;
    table.impl()->post_accumulate_hook = [&hooks] { ++hooks; };
    for (int pass = 0; pass < 2; ++pass) {
      Tensor h = ops::embedding(table, ids);  // (2, 4, 6)
      Tensor logits = ops::linear(h, table);  // (2, 4, 10)
      ops::sum(ops::mul(logits, r)).backward();
    }
    CHECK(hooks == 2);  // once per backward, whichever path delivered the gradient
    return table.grad().clone();
  };
  Tensor direct = run(true), returned = run(false);
  CHECK(rel_error(direct, returned) < 1e-6);
  CHECK(max_abs_diff(direct, Tensor::zeros({10, 6})) > 0.0);
}
