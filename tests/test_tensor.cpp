// Tensor handles, views, dtype conversion (bf16/f16 rounding against known bit patterns), printing, the
// counter-based RNG (determinism, slices, moments) and CUDA storage when a device is present.
#include <cmath>
#include <cstring>

#include "core/cuda_context.h"
#include "tests/testing.h"

using namespace polder;
using namespace polder::testing;

TEST_CASE("views share storage; copies do not", "[tensor]") {
  Tensor t = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 4});
  Tensor v = t.view({2, -1});
  CHECK(v.shape() == Shape{2, 6});
  CHECK(v.same_storage(t));
  v.data<float>()[7] = 70;
  CHECK(t.data<float>()[7] == 70);
  Tensor n = t.narrow(0, 1, 2);
  CHECK(n.shape() == Shape{2, 4});
  CHECK(n.data<float>()[0] == 4);
  CHECK(n.offset() == 16);
  Tensor c = t.clone();
  c.data<float>()[0] = -1;
  CHECK(t.data<float>()[0] == 0);
  CHECK_FALSE(c.same_storage(t));
  // narrow along an inner dim is only a view when the outer dims are 1.
  Tensor row = t.narrow(0, 2, 1);
  Tensor cols = row.narrow(1, 1, 2);
  CHECK(cols.data<float>()[0] == 9);
  require_error([&] { t.narrow(1, 1, 2); }, "not contiguous; use ops::narrow");
  require_error(
      [&] {
        t.view({5, -1});
      },
      "shape (5, -1) is invalid for a tensor of shape (3, 4) (12 elements)");
  require_error([&] { t.narrow(0, 2, 2); }, "[2, 4) is out of range for dim 0 of size 3");
  require_error([&] { t.data<double>(); }, "tensor is f32 but data<f64>() was asked");
}

TEST_CASE("bf16 and f16 conversions round to nearest even", "[tensor]") {
  // 1 + 2^-8 lies exactly between bf16 neighbours 1 and 1 + 2^-7: ties to even (1.0).
  CHECK(float(bf16(1.0f + std::ldexp(1.0f, -8))) == 1.0f);
  CHECK(float(bf16(1.0f + 3 * std::ldexp(1.0f, -8))) == 1.0f + std::ldexp(1.0f, -6));
  CHECK(bf16(1.0f).bits == 0x3f80);
  CHECK(bf16(-2.0f).bits == 0xc000);
  CHECK(std::isnan(float(bf16(std::nanf("")))));
  CHECK(f16(1.0f).bits == 0x3c00);
  CHECK(f16(65504.0f).bits == 0x7bff);
  CHECK(f16(70000.0f).bits == 0x7c00);               // overflow to infinity
  CHECK(f16(std::ldexp(1.0f, -24)).bits == 0x0001);  // smallest subnormal
  CHECK(float(f16(std::ldexp(1.0f, -24))) == std::ldexp(1.0f, -24));
  CHECK(float(f16(1.0f + std::ldexp(1.0f, -11))) == 1.0f);  // tie to even
  CHECK(float(f16(0.1f)) == Approx(0.0999755859375).epsilon(1e-12));
  // Every f16 bit pattern (finite) round-trips through float.
  int mismatches = 0;
  for (uint32_t b = 0; b < 0x7c00; ++b) {
    f16 h;
    h.bits = static_cast<uint16_t>(b);
    mismatches += f16(float(h)).bits != b;
  }
  CHECK(mismatches == 0);
  Tensor x = Tensor::from_vector<float>({1.0f, 3.14159f, -2.5e-3f, 1e4f}, {4});
  auto back = x.to(DType::bf16).to(DType::f32).to_vector<float>();
  CHECK(back[1] == 3.140625f);
  CHECK(x.to(DType::i32).to_vector<int32_t>() == std::vector<int32_t>{1, 3, 0, 10000});
}

TEST_CASE("factories, item, printing", "[tensor]") {
  Tensor z = Tensor::zeros({2, 3}, DType::bf16);
  CHECK(z.nbytes() == 12);
  CHECK(Tensor::full({2}, 2.5, DType::f16).to(DType::f32).to_vector<float>() ==
        std::vector<float>{2.5f, 2.5f});
  CHECK(Tensor::scalar(4.0).item() == 4.0);
  require_error([&] { z.item(); }, "has 6 elements, expected 1");
  std::string s = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2}).to_string();
  CHECK(s.find("shape=(2, 2)") != std::string::npos);
  CHECK(s.find("[3, 4]") != std::string::npos);
  require_error([] { dtype_from_name("f8"); }, "unknown dtype 'f8'");
}

TEST_CASE("RNG: values are a pure function of (seed, key, index)", "[rng]") {
  Tensor a = Tensor::empty({64, 48}), b = Tensor::empty({64, 48}), c = Tensor::empty({64, 48});
  const uint64_t key = rng::stream_key("model.layers.0.mlp.up_proj.weight");
  rng::fill_normal(a, 7, key, 0.0, 0.02);
  rng::fill_normal(b, 7, key, 0.0, 0.02);
  rng::fill_normal(c, 8, key, 0.0, 0.02);
  CHECK(max_abs_diff(a, b) == 0.0);
  CHECK(max_abs_diff(a, c) > 0.0);
  Tensor d = Tensor::empty({64, 48});
  rng::fill_normal(d, 7, rng::stream_key("model.layers.1.mlp.up_proj.weight"), 0.0, 0.02);
  CHECK(max_abs_diff(a, d) > 0.0);

  SECTION("a slice filled directly equals the slice of the full fill") {
    for (int64_t dim : {0, 1}) {
      Tensor part = Tensor::empty(dim == 0 ? Shape{16, 48} : Shape{64, 12});
      rng::fill_normal(part, 7, key, 0.0, 0.02, {{64, 48}, dim, 24});
      Tensor expect = ops::narrow(a, dim, 24, dim == 0 ? 16 : 12);
      CHECK(max_abs_diff(part, expect) == 0.0);
    }
    Tensor upart = Tensor::empty({64, 5}, DType::f64), ufull = Tensor::empty({64, 48}, DType::f64);
    rng::fill_uniform(ufull, 3, key, -1, 1);
    rng::fill_uniform(upart, 3, key, -1, 1, {{64, 48}, 1, 43});
    CHECK(max_abs_diff(upart, ops::narrow(ufull, 1, 43, 5)) == 0.0);
  }
  SECTION("moments of normal and uniform fills") {
    Tensor n = Tensor::empty({200000}, DType::f64), u = Tensor::empty({200000}, DType::f64);
    rng::fill_normal(n, 1, 2, 1.5, 2.0);
    rng::fill_uniform(u, 1, 2, -1.0, 3.0);
    auto nv = values(n), uv = values(u);
    double m = 0, m2 = 0, um = 0, umin = 1e9, umax = -1e9;
    for (double x : nv) m += x;
    m /= nv.size();
    for (double x : nv) m2 += (x - m) * (x - m);
    for (double x : uv) {
      um += x;
      umin = std::min(umin, x);
      umax = std::max(umax, x);
    }
    // Standard errors: 2/sqrt(2e5) = 0.0045 for the mean; 5 sigma bounds.
    CHECK(std::abs(m - 1.5) < 0.025);
    CHECK(std::abs(std::sqrt(m2 / nv.size()) - 2.0) < 0.02);
    CHECK(std::abs(um / uv.size() - 1.0) < 0.015);
    CHECK(umin >= -1.0);
    CHECK(umax <= 3.0);
  }
}

TEST_CASE("CUDA storage and copies", "[tensor][cuda]") {
  if (cuda::device_count() == 0) {
    require_error(
        [] { Tensor::empty({4}, DType::f32, Device::cuda()); },
        cuda::compiled() ? "CUDA device 0 requested but 0 device(s) are visible" : "built without CUDA");
    SUCCEED("no CUDA device: the error path is what can be tested here");
    return;
  }
  Tensor h = randn({1000}, 5, DType::f32);
  Tensor d = h.to(Device::cuda());
  CHECK(d.device().is_cuda());
  Tensor back = d.to(DType::bf16).to(DType::f32).to(Device::cpu());
  CHECK(max_abs_diff(back, h.to(DType::bf16).to(DType::f32)) == 0.0);
  Tensor z = Tensor::zeros({10}, DType::f32, Device::cuda());
  CHECK(values(z.to(Device::cpu())) == std::vector<double>(10, 0.0));
}
