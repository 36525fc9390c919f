// CPU kernel benchmark: polder's linear (forward + backward through autograd) against direct oneDNN matmul
// calls of the same three GEMMs in the same run; attention forward + backward tokens/s; autograd overhead per
// op; a training step's weight GEMMs with and without the weight copies of kernels/gemm.h. Prints tables.
// Usage: bench_cpu_kernels [--quick | --weights (only the weight copies) | --attention (only attention, more
// shapes)]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/rng.h"
#include "kernels/cpu/isa.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"

#ifdef POLDER_HAVE_ONEDNN
#include <dnnl.hpp>
#endif

using namespace polder;

namespace {

double median_seconds(const std::function<void()>& fn, int reps) {
  fn();  // warm-up (primitive creation, page faults)
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    fn();
    auto b = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double>(b - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

Tensor randn(const Shape& s, uint64_t key, DType dt) {
  Tensor t = Tensor::empty(s, DType::f32);
  rng::fill_normal(t, 1, key, 0.0, 1.0);
  return t.to(dt);
}

#ifdef POLDER_HAVE_ONEDNN
// One plain oneDNN matmul C(M,N) = op(A) op(B), primitive created once.
struct DirectMatmul {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{eng};
  dnnl::matmul mm;
  dnnl::matmul::primitive_desc pd;
  DirectMatmul(int64_t M, int64_t N, int64_t K, bool ta, bool tb, dnnl::memory::data_type ab,
               dnnl::memory::data_type c) {
    using dims = dnnl::memory::dims;
    dnnl::memory::desc a({M, K}, ab, ta ? dims{1, M} : dims{K, 1});
    dnnl::memory::desc b({K, N}, ab, tb ? dims{1, K} : dims{N, 1});
    dnnl::memory::desc cd({M, N}, c, dims{N, 1});
    pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, cd), eng);
    mm = dnnl::matmul(pd);
  }
  void run(const void* A, const void* B, void* C) {
    dnnl::memory a(pd.src_desc(), eng, const_cast<void*>(A)), b(pd.weights_desc(), eng, const_cast<void*>(B)),
        c(pd.dst_desc(), eng, C);
    mm.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    stream.wait();
  }
};
#endif

void bench_linear(int64_t M, int64_t K, int64_t N, DType dt, int reps) {
  Tensor x = randn({M, K}, 1, dt).set_requires_grad(true);
  Tensor w = randn({N, K}, 2, dt);
  w.set_requires_grad(true);
  Tensor gy = randn({M, N}, 3, dt);
  const double flops = 3.0 * 2.0 * M * N * K;  // forward, dx, dW
  double t_polder = median_seconds(
      [&] {
        x.grad() = Tensor();
        w.grad() = Tensor();
        Tensor y = ops::linear(x, w);
        y.backward(gy);
      },
      reps);
  double t_direct = 0;
#ifdef POLDER_HAVE_ONEDNN
  auto abt = dt == DType::bf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
  try {
    DirectMatmul fwd(M, N, K, false, true, abt, abt);                          // y = x W^T
    DirectMatmul dx(M, K, N, false, false, abt, abt);                          // dx = dy W
    DirectMatmul dw(N, K, M, true, false, abt, dnnl::memory::data_type::f32);  // dW = dy^T x (f32)
    Tensor y = Tensor::empty({M, N}, dt), gx = Tensor::empty({M, K}, dt),
           gw = Tensor::empty({N, K}, DType::f32);
    t_direct = median_seconds(
        [&] {
          fwd.run(x.raw_data(), w.raw_data(), y.raw_data());
          dx.run(gy.raw_data(), w.raw_data(), gx.raw_data());
          dw.run(gy.raw_data(), x.raw_data(), gw.raw_data());
        },
        reps);
  } catch (const dnnl::error&) {
    // No native bf16 matmul in oneDNN on this CPU: polder upcasts to f32 (see kernels/cpu/gemm.cpp).
  }
#endif
  char direct[64] = "n/a (no native bf16)", ratio[32] = "n/a";
  if (t_direct > 0) {
    std::snprintf(direct, sizeof direct, "%8.1f GFLOP/s", flops / t_direct / 1e9);
    std::snprintf(ratio, sizeof ratio, "%+6.1f%%", (t_polder / t_direct - 1) * 100);
  }
  std::printf("| linear fwd+bwd %-5s | M=%-5ld K=%-5ld N=%-5ld | %8.1f GFLOP/s | %s | %s |\n", dtype_name(dt),
              static_cast<long>(M), static_cast<long>(K), static_cast<long>(N), flops / t_polder / 1e9,
              direct, ratio);
}

// One training step's GEMMs of one weight (micro x (forward, dx, dW) through ops::linear) inside a
// kernels::cpu::WeightScope, per weight-copy mode, the modes interleaved rep by rep so that a noisy machine
// slows them alike; median step time, relative to no copies.
void bench_weight_copies(int64_t M, int64_t K, int64_t N, DType dt, int64_t micro, int reps) {
  namespace kc = kernels::cpu;
  Tensor x = randn({M, K}, 1, dt).set_requires_grad(true);
  Tensor w = randn({N, K}, 2, dt);
  w.set_requires_grad(true);
  Tensor gy = randn({M, N}, 3, dt);
  const kc::WeightCacheMode modes[] = {kc::WeightCacheMode::off, kc::WeightCacheMode::convert,
                                       kc::WeightCacheMode::pack};
  auto step = [&](kc::WeightCacheMode mode) {
    kc::WeightScope scope(micro, mode);
    for (int64_t m = 0; m < micro; ++m) {
      x.grad() = Tensor();
      ops::linear(x, w).backward(gy);
    }
  };
  std::vector<double> t[3];
  for (int r = 0; r <= reps; ++r)
    for (int i = 0; i < 3; ++i) {
      auto a = std::chrono::steady_clock::now();
      step(modes[i]);
      if (r > 0) t[i].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
    }
  double med[3];
  for (int i = 0; i < 3; ++i) {
    std::sort(t[i].begin(), t[i].end());
    med[i] = t[i][t[i].size() / 2];
  }
  std::printf(
      "| %-5s M=%-5ld K=%-5ld N=%-5ld x %ld | %8.2f ms | %8.2f ms (%+5.1f%%) | %8.2f ms (%+5.1f%%) |\n",
      dtype_name(dt), static_cast<long>(M), static_cast<long>(K), static_cast<long>(N),
      static_cast<long>(micro), med[0] * 1e3, med[1] * 1e3, (med[1] / med[0] - 1) * 100, med[2] * 1e3,
      (med[2] / med[0] - 1) * 100);
}

void bench_attention(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, DType dt, int reps) {
  Tensor q = randn({B, T, Hq, D}, 4, dt).set_requires_grad(true);
  Tensor k = randn({B, T, Hkv, D}, 5, dt).set_requires_grad(true);
  Tensor v = randn({B, T, Hkv, D}, 6, dt).set_requires_grad(true);
  Tensor go = randn({B, T, Hq, D}, 7, dt);
  double t_fwd = median_seconds(
      [&] {
        NoGradGuard g;
        ops::attention(q, k, v);
      },
      reps);
  double t_all = median_seconds(
      [&] {
        for (Tensor* t : {&q, &k, &v}) t->grad() = Tensor();
        ops::attention(q, k, v).backward(go);
      },
      reps);
  // Causal: about half of the 4*T*T*D*H forward FLOPs (QK^T and PV); backward recomputes, ~2.5x forward.
  const double fwd_flops = 2.0 * B * Hq * T * T * D;
  std::printf(
      "| attention fwd %-5s | B=%ld T=%ld Hq=%ld Hkv=%ld D=%ld | %8.0f tok/s fwd | %8.0f tok/s fwd+bwd | "
      "%5.1f GFLOP/s fwd |\n",
      dtype_name(dt), static_cast<long>(B), static_cast<long>(T), static_cast<long>(Hq),
      static_cast<long>(Hkv), static_cast<long>(D), B * T / t_fwd, B * T / t_all, fwd_flops / t_fwd / 1e9);
}

void bench_autograd_overhead(int reps) {
  Tensor a = Tensor::full({8}, 1.0).set_requires_grad(true);
  Tensor b = Tensor::full({8}, 2.0);
  Tensor out = Tensor::empty({8});
  kernels::Broadcast bc;
  bc.ndim = 1;
  bc.shape[0] = 8;
  bc.a_stride[0] = bc.b_stride[0] = 1;
  bc.numel = 8;
  bc.same_shape = true;
  constexpr int kOps = 1000;
  double t_kernel = median_seconds(
      [&] {
        for (int i = 0; i < kOps; ++i)
          kernels::cpu::binary(kernels::BinaryOp::add, a.data<float>(), b.data<float>(), out.data<float>(),
                               bc);
      },
      reps);
  double t_nograd = median_seconds(
      [&] {
        NoGradGuard g;
        for (int i = 0; i < kOps; ++i) ops::add(a, b);
      },
      reps);
  double t_record = median_seconds(
      [&] {
        Tensor h = a;
        for (int i = 0; i < kOps; ++i) h = ops::add(h, b);
      },
      reps);
  double t_backward = median_seconds(
      [&] {
        a.grad() = Tensor();
        Tensor h = a;
        for (int i = 0; i < kOps; ++i) h = ops::add(h, b);
        ops::sum(h).backward();
      },
      reps);
  auto us = [&](double t) { return t / kOps * 1e6; };
  std::printf(
      "| autograd overhead per op (8 elements) | raw kernel %.2f us | op, no grad %.2f us | op, recorded "
      "%.2f us | "
      "recorded + backward %.2f us |\n",
      us(t_kernel), us(t_nograd), us(t_record), us(t_backward));
  std::printf("|   framework cost per op: forward %.2f us (recorded - kernel), forward+backward %.2f us |\n",
              us(t_record - t_kernel), us(t_backward - 2 * t_kernel));
}

void bench_weight_section(bool quick, int reps) {
  std::printf("Weight copies in a step (kernels/gemm.h WeightScope; CPU kernels: %s)\n",
              kernels::cpu::cpu_isa_describe().c_str());
  std::printf("| weight GEMMs (linear fwd+bwd) | off | convert | pack |\n|---|---|---|---|\n");
  const std::vector<std::array<int64_t, 3>> shapes =
      quick ? std::vector<std::array<int64_t, 3>>{{256, 128, 4096}}
            : std::vector<std::array<int64_t, 3>>{{512, 256, 32000}, {512, 256, 688}, {2048, 256, 32000}};
  for (DType dt : {DType::f32, DType::bf16})
    for (auto [M, K, N] : shapes) bench_weight_copies(M, K, N, dt, 4, quick ? 3 : 11);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int reps = quick ? 3 : 7;
  if (argc > 1 && std::strcmp(argv[1], "--weights") == 0) {
    bench_weight_section(false, reps);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--attention") == 0) {
    for (DType dt : {DType::f32, DType::bf16}) {
      bench_attention(1, 1024, 8, 2, 64, dt, reps);   // one long sequence
      bench_attention(4, 128, 8, 4, 32, dt, reps);    // the tiny model's micro-batch
      bench_attention(1, 256, 12, 12, 64, dt, reps);  // the 125m shape's
      bench_attention(1, 512, 12, 12, 64, dt, reps);
      bench_attention(1, 2048, 12, 12, 64, dt, reps);  // the 125m config's sequence length
    }
    return 0;
  }
  std::printf("polder CPU kernels (baseline: direct oneDNN matmul primitives in the same process)\n");
  std::printf("| case | shape | polder | oneDNN direct | polder vs direct |\n|---|---|---|---|---|\n");
  const std::vector<std::array<int64_t, 3>> shapes =
      quick ? std::vector<std::array<int64_t, 3>>{{256, 512, 1024}}
            : std::vector<std::array<int64_t, 3>>{{1024, 1024, 1024}, {2048, 1024, 2816}, {2048, 2816, 1024}};
  for (DType dt : {DType::f32, DType::bf16})
    for (auto [M, K, N] : shapes) bench_linear(M, K, N, dt, reps);
  std::printf("\n");
  for (DType dt : {DType::f32, DType::bf16}) bench_attention(1, quick ? 256 : 1024, 8, 2, 64, dt, reps);
  std::printf("\n");
  bench_weight_section(quick, reps);
  std::printf("\n");
  bench_autograd_overhead(reps);
  return 0;
}
