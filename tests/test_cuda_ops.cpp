// The differentiable ops on CUDA tensors against the same ops on the CPU: forward values and the gradients of
// every input, for f32 (normalised error < 1e-5 against an f64 CPU run) and bf16 (< 2e-2), odd shapes,
// broadcasting, index inputs on the host and on the device; the Llama model's loss and gradients on the GPU
// against the CPU; device mismatches as one-line errors. Compiled in every build; the cases skip with a
// message where no GPU is visible (the GPU machine runs them through scripts/gpu/check.sh).
#include <catch2/catch.hpp>

#include <functional>

#include "core/cuda_context.h"
#include "core/ops.h"
#include "models/llama/model.h"
#include "testing.h"

using namespace polder;
using polder::testing::randn;
using polder::testing::rel_error;

namespace {

bool gpu_present() {
  return cuda::compiled() && cuda::device_count() > 0;
}

#define SKIP_WITHOUT_GPU()                                                                                  \
  do {                                                                                                      \
    if (!gpu_present()) {                                                                                   \
      WARN("skipped: no CUDA device (" << (cuda::compiled() ? "none visible" : "built without CUDA")        \
                                       << "); [cuda] tests run on a GPU machine via scripts/gpu/check.sh"); \
      return;                                                                                               \
    }                                                                                                       \
  } while (0)

const Device kGpu = Device::cuda(0);

double tolerance(DType d) {
  return d == DType::f32 ? 1e-5 : 2e-2;
}

// Runs f on `inputs` twice: on the CPU in f64 (the reference) and on the GPU in `dtype`. Float inputs require
// grad; the scalar objective is sum(f(x) * w) with a fixed random w, so every output element has its own
// gradient. Compares the outputs and every float input's gradient.
void compare(const std::string& what, const std::function<Tensor(const std::vector<Tensor>&)>& f,
             const std::vector<Tensor>& inputs, DType dtype) {
  auto prepare = [&](Device dev, DType dt) {
    std::vector<Tensor> xs;
    for (const Tensor& x : inputs) {
      Tensor t = is_floating(x.dtype()) ? x.to(dt).to(dev) : x.to(dev);
      if (is_floating(t.dtype())) t.set_requires_grad(true);
      xs.push_back(t);
    }
    return xs;
  };
  auto run = [&](std::vector<Tensor>& xs, Device dev, DType dt) {
    Tensor y = f(xs);
    Tensor w = randn(y.shape(), 991, DType::f64).to(y.dtype()).to(dev);
    (void)dt;
    Tensor obj = ops::sum(ops::mul(y, w));
    obj.backward();
    return y;
  };
  std::vector<Tensor> ref_in = prepare(Device::cpu(), DType::f64);
  Tensor ref = run(ref_in, Device::cpu(), DType::f64);
  std::vector<Tensor> gpu_in = prepare(kGpu, dtype);
  Tensor out = run(gpu_in, kGpu, dtype);
  INFO(what << " in " << dtype_name(dtype));
  REQUIRE(out.device() == kGpu);
  REQUIRE(out.shape() == ref.shape());
  CHECK(rel_error(out, ref) < tolerance(dtype));
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!is_floating(inputs[i].dtype())) continue;
    INFO("gradient of input " << i);
    REQUIRE(gpu_in[i].grad().defined());
    CHECK(gpu_in[i].grad().device() == kGpu);
    CHECK(rel_error(gpu_in[i].grad(), ref_in[i].grad()) < tolerance(dtype));
  }
}

Tensor ids(const Shape& shape, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> v(static_cast<size_t>(shape_numel(shape)));
  uint64_t s = seed;
  for (auto& x : v) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    x = static_cast<int32_t>((s >> 33) % static_cast<uint64_t>(vocab));
  }
  return Tensor::from_vector(v, shape);
}

}  // namespace

TEST_CASE("cuda ops: elementwise, broadcasting and reductions match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    compare(
        "add (R,C)+(C)", [](auto& x) { return ops::add(x[0], x[1]); }, {randn({37, 19}, 1), randn({19}, 2)},
        dt);
    compare(
        "sub (C)-(R,C)", [](auto& x) { return ops::sub(x[0], x[1]); }, {randn({19}, 3), randn({37, 19}, 4)},
        dt);
    compare(
        "mul (B,1,C)*(1,T,1)", [](auto& x) { return ops::mul(x[0], x[1]); },
        {randn({3, 1, 21}, 5), randn({1, 7, 1}, 6)}, dt);
    compare(
        "scale", [](auto& x) { return ops::scale(x[0], -1.75); }, {randn({1001}, 7)}, dt);
    compare(
        "sum", [](auto& x) { return ops::sum(x[0]); }, {randn({5, 333}, 8)}, dt);
    compare(
        "mean", [](auto& x) { return ops::mean(x[0]); }, {randn({5, 333}, 9)}, dt);
    compare(
        "sum dim 1", [](auto& x) { return ops::sum(x[0], 1); }, {randn({4, 77, 9}, 10)}, dt);
    compare(
        "mean dim -1 keepdim", [](auto& x) { return ops::mean(x[0], -1, true); }, {randn({6, 131}, 11)}, dt);
    compare(
        "silu", [](auto& x) { return ops::silu(x[0]); }, {randn({3, 517}, 12)}, dt);
    compare(
        "swiglu", [](auto& x) { return ops::swiglu(x[0], x[1]); }, {randn({5, 99}, 13), randn({5, 99}, 14)},
        dt);
    compare(
        "softmax", [](auto& x) { return ops::softmax(x[0]); }, {randn({7, 1031}, 15)}, dt);
    compare(
        "log_softmax", [](auto& x) { return ops::log_softmax(x[0]); }, {randn({7, 1031}, 16)}, dt);
  }
}

TEST_CASE("cuda ops: shape ops and casts match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    compare(
        "transpose 0,2", [](auto& x) { return ops::transpose(x[0], 0, 2); }, {randn({3, 5, 7, 2}, 20)}, dt);
    compare(
        "narrow (copy)", [](auto& x) { return ops::narrow(x[0], 1, 2, 5); }, {randn({4, 9, 3}, 21)}, dt);
    compare(
        "concat dim 1",
        [](auto& x) {
          return ops::concat({x[0], x[1]}, 1);
        },
        {randn({3, 4, 5}, 22), randn({3, 2, 5}, 23)}, dt);
    compare(
        "split dim 2",
        [](auto& x) {
          return ops::split(x[0], {3, 4}, 2)[1];
        },
        {randn({2, 3, 7}, 24)}, dt);
    compare(
        "reshape",
        [](auto& x) {
          return ops::reshape(x[0], {15, 4});
        },
        {randn({3, 5, 4}, 25)}, dt);
  }
  compare(
      "cast f32 -> bf16 -> f32", [](auto& x) { return ops::cast(ops::cast(x[0], DType::bf16), DType::f32); },
      {randn({333}, 26)}, DType::bf16);
}

TEST_CASE("cuda ops: matmul and linear through cuBLASLt match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    compare(
        "linear + bias", [](auto& x) { return ops::linear(x[0], x[1], x[2]); },
        {randn({2, 13, 40}, 30), randn({24, 40}, 31), randn({24}, 32)}, dt);
    compare(
        "matmul batched", [](auto& x) { return ops::matmul(x[0], x[1]); },
        {randn({3, 9, 17}, 33), randn({3, 17, 11}, 34)}, dt);
    compare(
        "matmul trans_a trans_b", [](auto& x) { return ops::matmul(x[0], x[1], true, true); },
        {randn({2, 17, 9}, 35), randn({2, 11, 17}, 36)}, dt);
    compare(
        "matmul shared b", [](auto& x) { return ops::matmul(x[0], x[1], false, true); },
        {randn({4, 6, 32}, 37), randn({8, 32}, 38)}, dt);
  }
}

TEST_CASE("cuda ops: embedding, rms_norm, rope, attention and cross-entropy match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const ops::RopeTable table64 = ops::make_rope_table(64, 24, 10000.0, DType::f64);
  const ops::RopeTable table32 = ops::make_rope_table(64, 24, 10000.0, DType::f32);
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor tok = ids({3, 11}, 50, 7);
    compare(
        "embedding (host ids)", [&](auto& x) { return ops::embedding(x[0], tok); }, {randn({50, 24}, 40)},
        dt);
    compare(
        "embedding (device ids)",
        [&](auto& x) { return ops::embedding(x[0], x[0].device().is_cuda() ? tok.to(kGpu) : tok); },
        {randn({50, 24}, 41)}, dt);
    compare(
        "rms_norm", [](auto& x) { return ops::rms_norm(x[0], x[1], 1e-5); },
        {randn({5, 3, 72}, 42), randn({72}, 43, DType::f64, 0.5)}, dt);
    compare(
        "rope pos0 3",
        [&](auto& x) { return ops::rope(x[0], x[0].dtype() == DType::f64 ? table64 : table32, 3); },
        {randn({2, 9, 3, 24}, 44)}, dt);
    compare(
        "attention causal GQA", [](auto& x) { return ops::attention(x[0], x[1], x[2], true); },
        {randn({2, 19, 6, 32}, 45), randn({2, 19, 2, 32}, 46), randn({2, 19, 2, 32}, 47)}, dt);
    Tensor tgt = ids({29}, 131, 9);
    tgt.data<int32_t>()[4] = -100;
    compare(
        "cross_entropy (host targets, one ignored)", [&](auto& x) { return ops::cross_entropy(x[0], tgt); },
        {randn({29, 131}, 48, DType::f64, 2.0)}, dt);
  }
}

TEST_CASE("cuda ops: the Llama loss and its gradients on the GPU match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 160;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.max_seq_len = 32;
  c.tie_embeddings = true;
  Tensor in = ids({2, 17}, 97, 3), tg = ids({2, 17}, 97, 4);
  models::Llama ref(c, DType::f64);
  ref.init(5);
  Tensor ref_loss = ref.loss(in, tg);
  ref_loss.backward();
  for (DType dt : {DType::f32, DType::bf16}) {
    INFO("model dtype " << dtype_name(dt));
    models::Llama m(c, dt, {}, kGpu);
    m.init(5);
    REQUIRE(m.flat_params().device() == kGpu);
    Tensor loss = m.loss(in, tg);
    REQUIRE(loss.device() == kGpu);
    loss.backward();
    CHECK(std::abs(loss.item() - ref_loss.item()) <
          (dt == DType::f32 ? 1e-5 : 2e-2) * std::abs(ref_loss.item()));
    CHECK(rel_error(m.flat_grads(), ref.flat_grads()) < (dt == DType::f32 ? 1e-4 : 5e-2));
  }
}

TEST_CASE("cuda ops: tensors on different devices are one clear error", "[cuda]") {
  SKIP_WITHOUT_GPU();
  Tensor a = randn({4, 3}, 60, DType::f32).to(kGpu), b = randn({3}, 61, DType::f32);
  CHECK_THROWS_WITH(ops::add(a, b), Catch::Contains("add: a is on cuda:0 but b is on cpu"));
  Tensor w = randn({5, 3}, 62, DType::f32);
  CHECK_THROWS_WITH(ops::linear(a, w), Catch::Contains("linear: x is on cuda:0 but weight is on cpu"));
}
