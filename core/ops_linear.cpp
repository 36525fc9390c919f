// matmul and linear through kernels::cpu::gemm (oneDNN). Transposed operands are GEMM flags, never copies.
#include "core/ops.h"
#include "core/ops_util.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"

namespace polder::ops {
using namespace detail;

namespace {

// C (batch, M, N) [+]= op(A) op(B) with A (batch, *), B (batch or shared, *). ld are the stored row lengths.
void run_gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, bool b_shared, Tensor& c, int64_t batch,
              int64_t M, int64_t N, int64_t K, float beta = 0.0f, uint64_t b_weight = 0, float alpha = 1.0f) {
  kernels::GemmArgs g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.batch = batch;
  g.ab_dtype = b.dtype();
  g.a_f32 = a.dtype() != b.dtype();  // f32 A, bf16/f16 B: the CPU GEMM's mixed form (kernels/gemm.h)
  g.c_dtype = c.dtype();
  g.A = a.raw_data();
  g.trans_a = ta;
  g.lda = ta ? M : K;
  g.stride_a = M * K;
  g.B = b.raw_data();
  g.trans_b = tb;
  g.ldb = tb ? K : N;
  g.stride_b = b_shared ? 0 : K * N;
  g.C = c.raw_data();
  g.ldc = N;
  g.stride_c = M * N;
  g.alpha = alpha;
  g.beta = beta;
  g.b_weight = b_weight;
  if (b_shared && batch > 1 && !ta) {
    // A shared-B batch is one tall GEMM: (batch * M, K) @ (K, N).
    g.M = batch * M;
    g.batch = 1;
  }
  profile::next_flops(2.0 * static_cast<double>(g.M) * static_cast<double>(g.N) * static_cast<double>(g.K) *
                      static_cast<double>(g.batch));
  POLDER_KERNEL(c.device(), gemm, g);
}

}  // namespace

void detail::gemm_2d(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, int64_t M,
                     int64_t N, int64_t K, float beta, uint64_t b_weight, float alpha) {
  run_gemm(a, trans_a, b, trans_b, true, c, 1, M, N, K, beta, b_weight, alpha);
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_defined("matmul", a, "a");
  check_defined("matmul", b, "b");
  check_same_device("matmul", {{&a, "a"}, {&b, "b"}});
  check_same_dtype("matmul", a, "a", b, "b");
  check_float("matmul", a, "a");
  POLDER_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: a is {} and b is {}, expected at least 2-d operands",
               a.shape(), b.shape());
  const int64_t M = trans_a ? a.size(-1) : a.size(-2), Ka = trans_a ? a.size(-2) : a.size(-1);
  const int64_t Kb = trans_b ? b.size(-1) : b.size(-2), N = trans_b ? b.size(-2) : b.size(-1);
  POLDER_CHECK(Ka == Kb, "matmul: a is {}{} and b is {}{}: inner sizes {} and {} differ", a.shape(),
               trans_a ? " (transposed)" : "", b.shape(), trans_b ? " (transposed)" : "", Ka, Kb);
  Shape batch_shape(a.shape().begin(), a.shape().end() - 2);
  Shape b_batch(b.shape().begin(), b.shape().end() - 2);
  const bool b_shared = b.dim() == 2;
  POLDER_CHECK(b_shared || b_batch == batch_shape, "matmul: batch dims of a {} and b {} differ", a.shape(),
               b.shape());
  const int64_t batch = shape_numel(batch_shape);
  Shape out_shape = batch_shape;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  run_gemm(a, trans_a, b, trans_b, b_shared, out, batch, M, N, Ka);
  record("matmul", {a, b}, {&out}, [&] {
    return [a, b, trans_a, trans_b, b_shared, batch, M, N, K = Ka](std::vector<Tensor>& g) {
      const Tensor& go = g[0];  // (batch, M, N)
      Tensor ga, gb;
      if (a.requires_grad()) {
        // C = op(A) op(B): d op(A) = dC op(B)^T (M, K); stored transposed when trans_a: dA = op(B) dC^T (K,
        // M).
        ga = Tensor::empty(a.shape(), a.dtype(), a.device());
        if (!trans_a) {
          run_gemm(go, false, b, !trans_b, b_shared, ga, batch, M, K, N);
        } else {
          // dA (K, M) = op(B) (K, N) @ dC^T (N, M), per batch.
          for (int64_t p = 0; p < batch; ++p) {
            Tensor gop = go.view({batch, M, N}).narrow(0, p, 1).view({M, N});
            Tensor bp =
                b_shared ? b : b.view({batch, -1}).narrow(0, p, 1).view(trans_b ? Shape{N, K} : Shape{K, N});
            Tensor gap = ga.view({batch, K * M}).narrow(0, p, 1).view({K, M});
            run_gemm(bp, trans_b, gop, true, false, gap, 1, K, M, N);
          }
        }
      }
      if (b.requires_grad()) {
        // d op(B) = op(A)^T dC (K, N); stored transposed when trans_b: dB = dC^T op(A) (N, K).
        DType bd = b_shared ? acc_dtype(b.dtype()) : b.dtype();
        Tensor acc = Tensor::zeros(b.shape(), bd, b.device());
        for (int64_t p = 0; p < batch; ++p) {
          Tensor gop = go.view({batch, M, N}).narrow(0, p, 1).view({M, N});
          Tensor ap = a.view({batch, -1}).narrow(0, p, 1).view(trans_a ? Shape{K, M} : Shape{M, K});
          Tensor gbp = b_shared
                           ? acc
                           : acc.view({batch, -1}).narrow(0, p, 1).view(trans_b ? Shape{N, K} : Shape{K, N});
          const float beta = b_shared && p > 0 ? 1.0f : 0.0f;
          if (!trans_b) {
            run_gemm(ap, !trans_a, gop, false, false, gbp, 1, K, N, M, beta);
          } else {
            run_gemm(gop, true, ap, trans_a, false, gbp, 1, N, K, M, beta);
          }
        }
        gb = acc;
      }
      return std::vector<Tensor>{ga, gb};
    };
  });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_defined("linear", x, "x");
  check_defined("linear", weight, "weight");
  check_same_device("linear", {{&x, "x"}, {&weight, "weight"}, {&bias, "bias"}});
  check_same_dtype("linear", x, "x", weight, "weight");
  check_float("linear", x, "x");
  POLDER_CHECK(weight.dim() == 2, "linear: weight is {}, expected (out_features, in_features)",
               weight.shape());
  POLDER_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1),
               "linear: x is {} but weight is {}: inner sizes {} and {} differ", x.shape(), weight.shape(),
               x.dim() ? x.size(-1) : 0, weight.size(1));
  const int64_t K = weight.size(1), N = weight.size(0), M = x.numel() / std::max<int64_t>(K, 1);
  if (bias.defined()) {
    check_same_dtype("linear", x, "x", bias, "bias");
    POLDER_CHECK(bias.dim() == 1 && bias.size(0) == N,
                 "linear: bias is {} but weight is {}: expected bias ({})", bias.shape(), weight.shape(), N);
  }
  Shape out_shape = x.shape();
  out_shape.back() = N;
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  run_gemm(x, false, weight, true, true, out, 1, M, N, K, 0.0f, weight_id(weight));  // y = x W^T
  if (bias.defined()) {
    kernels::Broadcast bc;
    bc.ndim = 2;
    bc.shape[0] = M;
    bc.shape[1] = N;
    bc.a_stride[0] = N;
    bc.a_stride[1] = 1;
    bc.b_stride[0] = 0;
    bc.b_stride[1] = 1;
    bc.numel = M * N;
    POLDER_DISPATCH_FLOAT(x.dtype(), "linear bias", [&] {
      POLDER_KERNEL(x.device(), binary, kernels::BinaryOp::add, out.data<scalar_t>(), bias.data<scalar_t>(),
                    out.data<scalar_t>(), bc);
    });
  }
  record("linear", {x, weight, bias}, {&out}, [&] {
    return [x, weight, has_bias = bias.defined(), bias_needs = bias.defined() && bias.requires_grad(), M, N,
            K](std::vector<Tensor>& g) {
      const Tensor& go = g[0];  // (M, N)
      Tensor gx, gw, gb;
      if (x.requires_grad()) {
        gx = Tensor::empty(x.shape(), x.dtype(), x.device());
        run_gemm(go, false, weight, false, true, gx, 1, M, K, N, 0.0f, weight_id(weight));  // dx = dy W
      }
      if (weight.requires_grad()) {
        // dW = dy^T x, f32 for bf16 inputs; added straight into a parameter's gradient buffer when it has
        // one.
        if (Tensor* target = direct_grad_target(weight, acc_dtype(weight.dtype()))) {
          run_gemm(go, true, x, false, false, *target, 1, N, K, M, 1.0f);
        } else {
          gw = Tensor::empty(weight.shape(), acc_dtype(weight.dtype()), weight.device());
          run_gemm(go, true, x, false, false, gw, 1, N, K, M);
        }
      }
      if (bias_needs) {
        Tensor acc = Tensor::empty({N}, go.dtype(), go.device());
        POLDER_DISPATCH_FLOAT(go.dtype(), "linear bias backward", [&] {
          POLDER_KERNEL(go.device(), sum_dim, go.data<scalar_t>(), acc.data<scalar_t>(), 1, M, N);
        });
        gb = acc;
      }
      if (!has_bias) return std::vector<Tensor>{gx, gw, Tensor()};
      return std::vector<Tensor>{gx, gw, gb};
    };
  });
  return out;
}

}  // namespace polder::ops
