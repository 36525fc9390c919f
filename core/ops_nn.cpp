// The fused neural-network ops: embedding, rms_norm, rope, attention, activations, softmax, cross-entropy.
// Each is one autograd node with its backward next to the forward.
#include <cmath>
#include <numbers>
#include <type_traits>

#include "core/ops.h"
#include "core/ops_util.h"
#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"

namespace polder::ops {
using namespace detail;

namespace {
template <typename F>
auto dispatch_index(DType d, F&& f) {
  if (d == DType::i32) return f(int32_t{});
  return f(int64_t{});
}

Tensor on_host(const Tensor& t) {
  return t.device().is_cpu() ? t : t.to(Device::cpu());
}

// First id outside [0, limit), or -1 when all are valid.
int64_t first_bad_index(const Tensor& ids, int64_t limit, int64_t ignore, int64_t& bad_value) {
  return dispatch_index(ids.dtype(), [&](auto tag) -> int64_t {
    using I = decltype(tag);
    const I* p = ids.data<I>();
    for (int64_t i = 0; i < ids.numel(); ++i) {
      int64_t v = static_cast<int64_t>(p[i]);
      if (v != ignore && (v < 0 || v >= limit)) {
        bad_value = v;
        return i;
      }
    }
    return -1;
  });
}

}  // namespace

Tensor embedding(const Tensor& table, const Tensor& ids) {
  check_defined("embedding", table, "table");
  check_defined("embedding", ids, "ids");
  check_float("embedding", table, "table");
  check_index("embedding", ids, "ids");
  POLDER_CHECK(table.dim() == 2, "embedding: table is {}, expected (vocab, dim)", table.shape());
  const int64_t V = table.size(0), C = table.size(1), n = ids.numel();
  // Ids are checked on the host (the loader's ids are host tensors; device ids are copied back for the
  // check).
  int64_t bad = 0;
  int64_t at = first_bad_index(on_host(ids), V, INT64_MIN, bad);
  POLDER_CHECK(at < 0, "embedding: id {} at position {} is outside the vocabulary [0, {})", bad, at, V);
  const Tensor dev_ids = ids.to(table.device());
  Shape out_shape = ids.shape();
  out_shape.push_back(C);
  Tensor out = Tensor::empty(out_shape, table.dtype(), table.device());
  POLDER_DISPATCH_FLOAT(table.dtype(), "embedding", [&] {
    dispatch_index(ids.dtype(), [&](auto tag) {
      using I = decltype(tag);
      POLDER_FUSED_KERNEL(table.device(), scalar_t, embedding_forward, table.data<scalar_t>(),
                          dev_ids.data<I>(), out.data<scalar_t>(), n, C);
    });
  });
  record("embedding", {table}, {&out}, [&] {
    return [table, ids = dev_ids, V, C, n, dtype = table.dtype()](std::vector<Tensor>& g) {
      // The dense (V, C) table gradient: added straight into the parameter's gradient buffer when it has one.
      Tensor* target = direct_grad_target(table, acc_dtype(dtype));
      Tensor gt = target ? *target : Tensor::empty({V, C}, acc_dtype(dtype), table.device());
      POLDER_DISPATCH_FLOAT(dtype, "embedding backward", [&] {
        dispatch_index(ids.dtype(), [&](auto tag) {
          using I = decltype(tag);
          Tensor go = g[0].to(dtype);
          POLDER_FUSED_KERNEL(go.device(), scalar_t, embedding_backward, go.data<scalar_t>(), ids.data<I>(),
                              gt.data<acc_t<scalar_t>>(), n, V, C, target != nullptr);
        });
      });
      return std::vector<Tensor>{target ? Tensor() : gt};
    };
  });
  return out;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_defined("rms_norm", x, "x");
  check_defined("rms_norm", weight, "weight");
  check_same_device("rms_norm", {{&x, "x"}, {&weight, "weight"}});
  check_same_dtype("rms_norm", x, "x", weight, "weight");
  check_float("rms_norm", x, "x");
  const int64_t C = x.size(-1), rows = x.numel() / std::max<int64_t>(C, 1);
  POLDER_CHECK(weight.dim() == 1 && weight.size(0) == C,
               "rms_norm: x is {} but weight is {}: expected weight ({})", x.shape(), weight.shape(), C);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty({rows}, acc_dtype(x.dtype()), x.device());
  POLDER_DISPATCH_FLOAT(x.dtype(), "rms_norm", [&] {
    POLDER_FUSED_KERNEL(x.device(), scalar_t, rms_norm_forward, x.data<scalar_t>(), weight.data<scalar_t>(),
                        out.data<scalar_t>(), rstd.data<acc_t<scalar_t>>(), rows, C, static_cast<float>(eps));
  });
  record("rms_norm", {x, weight}, {&out}, [&] {
    return [x, weight, rstd, rows, C](std::vector<Tensor>& g) {
      Tensor gx = Tensor::empty(x.shape(), x.dtype(), x.device());
      Tensor gw = Tensor::empty({C}, acc_dtype(x.dtype()), x.device());
      POLDER_DISPATCH_FLOAT(x.dtype(), "rms_norm backward", [&] {
        Tensor go = g[0].to(x.dtype());
        POLDER_FUSED_KERNEL(x.device(), scalar_t, rms_norm_backward, x.data<scalar_t>(),
                            weight.data<scalar_t>(), rstd.data<acc_t<scalar_t>>(), go.data<scalar_t>(),
                            gx.data<scalar_t>(), gw.data<acc_t<scalar_t>>(), rows, C);
      });
      return std::vector<Tensor>{x.requires_grad() ? gx : Tensor(), weight.requires_grad() ? gw : Tensor()};
    };
  });
  return out;
}

namespace {
// One step per torch op of _compute_llama3_parameters, in T (float: as transformers computes it).
template <typename T>
std::vector<double> inv_freq_in(int64_t head_dim, double theta, const RopeScaling& sc) {
  const int64_t half = head_dim / 2;
  std::vector<double> out(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    T inv;
    if constexpr (std::is_same_v<T, float>)
      inv = 1.0f /
            static_cast<float>(std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(head_dim)));
    else
      inv = 1.0 / std::pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    if (sc.type == "llama3") {
      const T factor = static_cast<T>(sc.factor), low = static_cast<T>(sc.low_freq_factor);
      const T old_len = static_cast<T>(sc.original_max_positions);
      const T low_wavelen =
          static_cast<T>(static_cast<double>(sc.original_max_positions) / sc.low_freq_factor);
      const T high_wavelen =
          static_cast<T>(static_cast<double>(sc.original_max_positions) / sc.high_freq_factor);
      const T wavelen =
          (T(1) / inv) * static_cast<T>(2 * std::numbers::pi);  // torch: scalar / t = t.reciprocal() * scalar
      T scaled = wavelen > low_wavelen ? inv / factor : inv;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        const T s =
            ((T(1) / wavelen) * old_len - low) / static_cast<T>(sc.high_freq_factor - sc.low_freq_factor);
        scaled = (T(1) - s) * scaled / factor + s * scaled;
      }
      inv = scaled;
    }
    out[static_cast<size_t>(i)] = static_cast<double>(inv);
  }
  return out;
}
}  // namespace

std::vector<double> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling, DType dtype) {
  POLDER_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim {} must be positive and even", head_dim);
  POLDER_CHECK(theta > 0, "rope: theta {} must be positive", theta);
  POLDER_CHECK(scaling.type == "none" || scaling.type == "llama3",
               "rope: scaling type '{}' is not supported (none, llama3)", scaling.type);
  if (scaling.type == "llama3")
    POLDER_CHECK(scaling.factor > 0 && scaling.low_freq_factor > 0 &&
                     scaling.high_freq_factor > scaling.low_freq_factor && scaling.original_max_positions > 0,
                 "rope: llama3 scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                 "original_max_positions > 0; got {}, {}, {}, {}",
                 scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor,
                 scaling.original_max_positions);
  return dtype == DType::f64 ? inv_freq_in<double>(head_dim, theta, scaling)
                             : inv_freq_in<float>(head_dim, theta, scaling);
}

RopeTable make_rope_table(int64_t max_positions, int64_t head_dim, double theta, DType dtype,
                          const RopeScaling& scaling) {
  POLDER_CHECK(max_positions > 0, "rope: max_positions {} must be positive", max_positions);
  POLDER_CHECK(dtype == DType::f32 || dtype == DType::f64, "rope: table dtype {} must be f32 or f64", dtype);
  const std::vector<double> inv = rope_inv_freq(head_dim, theta, scaling, dtype);
  RopeTable t;
  t.theta = theta;
  t.head_dim = head_dim;
  Tensor c = Tensor::empty({max_positions, head_dim}, DType::f64),
         s = Tensor::empty({max_positions, head_dim}, DType::f64);
  double* cp = c.data<double>();
  double* sp = s.data<double>();
  const int64_t half = head_dim / 2;
  for (int64_t p = 0; p < max_positions; ++p)
    for (int64_t i = 0; i < half; ++i) {
      // HF computes inv_freq in f32 (rope_inv_freq); the angle pos * inv_freq also in f32.
      const double f = inv[static_cast<size_t>(i)];
      // (f64 without scaling: p / theta^(2i/D), the unscaled table bit for bit as before.)
      const bool plain = scaling.type == "none";
      double angle =
          dtype == DType::f64
              ? (plain ? static_cast<double>(p) /
                             std::pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(head_dim))
                       : static_cast<double>(p) * f)
              : static_cast<double>(static_cast<float>(p) * static_cast<float>(f));
      cp[p * head_dim + i] = cp[p * head_dim + i + half] = std::cos(angle);
      sp[p * head_dim + i] = sp[p * head_dim + i + half] = std::sin(angle);
    }
  t.cos = c.to(dtype);
  t.sin = s.to(dtype);
  return t;
}

Tensor rope(const Tensor& x, const RopeTable& table, int64_t pos0) {
  check_defined("rope", x, "x");
  check_float("rope", x, "x");
  POLDER_CHECK(x.dim() == 4, "rope: x is {}, expected (B, T, H, D)", x.shape());
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  POLDER_CHECK(D == table.head_dim, "rope: x has head dim {} but the table was built for {}", D,
               table.head_dim);
  POLDER_CHECK(pos0 >= 0 && pos0 + T <= table.cos.size(0),
               "rope: positions [{}, {}) exceed the table's {} positions (raise max_seq_len)", pos0, pos0 + T,
               table.cos.size(0));
  const DType tdt = acc_dtype(x.dtype());
  // A table already on x's device and in acc dtype is used as is (the model keeps one there); else converted.
  Tensor c = table.cos.to(tdt).to(x.device()), s = table.sin.to(tdt).to(x.device());
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  POLDER_DISPATCH_FLOAT(x.dtype(), "rope", [&] {
    POLDER_FUSED_KERNEL(x.device(), scalar_t, rope_forward, x.data<scalar_t>(), out.data<scalar_t>(),
                        c.data<acc_t<scalar_t>>(), s.data<acc_t<scalar_t>>(), B, T, H, D, pos0);
  });
  record("rope", {x}, {&out}, [&] {
    return [c, s, B, T, H, D, pos0, dtype = x.dtype()](std::vector<Tensor>& g) {
      Tensor go = g[0].to(dtype);
      Tensor gx = Tensor::empty(go.shape(), dtype, go.device());
      POLDER_DISPATCH_FLOAT(dtype, "rope backward", [&] {
        POLDER_FUSED_KERNEL(go.device(), scalar_t, rope_backward, go.data<scalar_t>(), gx.data<scalar_t>(),
                            c.data<acc_t<scalar_t>>(), s.data<acc_t<scalar_t>>(), B, T, H, D, pos0);
      });
      return std::vector<Tensor>{gx};
    };
  });
  return out;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  for (auto [t, n] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    check_defined("attention", *t, n);
    POLDER_CHECK(t->dim() == 4, "attention: {} is {}, expected (B, T, H, D)", n, t->shape());
  }
  check_same_device("attention", {{&q, "q"}, {&k, "k"}, {&v, "v"}});
  check_same_dtype("attention", q, "q", k, "k");
  check_same_dtype("attention", q, "q", v, "v");
  check_float("attention", q, "q");
  POLDER_CHECK(k.shape() == v.shape(), "attention: k is {} but v is {}, expected equal shapes", k.shape(),
               v.shape());
  kernels::AttentionShape s;
  s.B = q.size(0);
  s.T = q.size(1);
  s.Hq = q.size(2);
  s.D = q.size(3);
  s.S = k.size(1);
  s.Hkv = k.size(2);
  s.causal = causal;
  POLDER_CHECK(k.size(0) == s.B && k.size(3) == s.D,
               "attention: q is {} but k is {}: batch and head dim must match", q.shape(), k.shape());
  POLDER_CHECK(s.Hkv > 0 && s.Hq % s.Hkv == 0, "attention: {} query heads are not a multiple of {} KV heads",
               s.Hq, s.Hkv);
  s.scale = scale != 0.0 ? scale : 1.0 / std::sqrt(static_cast<double>(s.D));
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  Tensor lse = Tensor::empty({s.B, s.Hq, s.T}, acc_dtype(q.dtype()), q.device());
  POLDER_DISPATCH_FLOAT(q.dtype(), "attention", [&] {
    POLDER_FUSED_KERNEL(q.device(), scalar_t, attention_forward, s, q.data<scalar_t>(), k.data<scalar_t>(),
                        v.data<scalar_t>(), out.data<scalar_t>(), lse.data<acc_t<scalar_t>>());
  });
  record("attention", {q, k, v}, {&out}, [&] {
    return [q, k, v, out = out.detach(), lse, s](std::vector<Tensor>& g) {
      Tensor go = g[0].to(q.dtype());
      Tensor gq = Tensor::empty(q.shape(), q.dtype(), q.device()),
             gk = Tensor::empty(k.shape(), k.dtype(), q.device()),
             gv = Tensor::empty(v.shape(), v.dtype(), q.device());
      POLDER_DISPATCH_FLOAT(q.dtype(), "attention backward", [&] {
        POLDER_FUSED_KERNEL(q.device(), scalar_t, attention_backward, s, q.data<scalar_t>(),
                            k.data<scalar_t>(), v.data<scalar_t>(), out.data<scalar_t>(),
                            lse.data<acc_t<scalar_t>>(), go.data<scalar_t>(), gq.data<scalar_t>(),
                            gk.data<scalar_t>(), gv.data<scalar_t>());
      });
      return std::vector<Tensor>{gq, gk, gv};
    };
  });
  return out;
}

Tensor silu(const Tensor& x) {
  check_defined("silu", x, "x");
  check_float("silu", x, "x");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  POLDER_DISPATCH_FLOAT(x.dtype(), "silu", [&] {
    POLDER_KERNEL(x.device(), silu_forward, x.data<scalar_t>(), out.data<scalar_t>(), x.numel());
  });
  record("silu", {x}, {&out}, [&] {
    return [x](std::vector<Tensor>& g) {
      Tensor go = g[0].to(x.dtype());
      Tensor gx = Tensor::empty(x.shape(), x.dtype(), x.device());
      POLDER_DISPATCH_FLOAT(x.dtype(), "silu backward", [&] {
        POLDER_KERNEL(x.device(), silu_backward, x.data<scalar_t>(), go.data<scalar_t>(), gx.data<scalar_t>(),
                      x.numel());
      });
      return std::vector<Tensor>{gx};
    };
  });
  return out;
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  check_defined("swiglu", gate, "gate");
  check_defined("swiglu", up, "up");
  check_same_device("swiglu", {{&gate, "gate"}, {&up, "up"}});
  check_same_dtype("swiglu", gate, "gate", up, "up");
  check_float("swiglu", gate, "gate");
  POLDER_CHECK(gate.shape() == up.shape(), "swiglu: gate is {} but up is {}, expected equal shapes",
               gate.shape(), up.shape());
  Tensor out = Tensor::empty(gate.shape(), gate.dtype(), gate.device());
  POLDER_DISPATCH_FLOAT(gate.dtype(), "swiglu", [&] {
    POLDER_KERNEL(gate.device(), swiglu_forward, gate.data<scalar_t>(), up.data<scalar_t>(),
                  out.data<scalar_t>(), gate.numel());
  });
  record("swiglu", {gate, up}, {&out}, [&] {
    return [gate, up](std::vector<Tensor>& g) {
      Tensor go = g[0].to(gate.dtype());
      Tensor gg = Tensor::empty(gate.shape(), gate.dtype(), gate.device()),
             gu = Tensor::empty(up.shape(), up.dtype(), up.device());
      POLDER_DISPATCH_FLOAT(gate.dtype(), "swiglu backward", [&] {
        POLDER_KERNEL(gate.device(), swiglu_backward, gate.data<scalar_t>(), up.data<scalar_t>(),
                      go.data<scalar_t>(), gg.data<scalar_t>(), gu.data<scalar_t>(), gate.numel());
      });
      return std::vector<Tensor>{gg, gu};
    };
  });
  return out;
}

namespace {
Tensor softmax_like(const char* name, const Tensor& x, bool log) {
  check_defined(name, x, "x");
  check_float(name, x, "x");
  POLDER_CHECK(x.dim() >= 1, "{}: x is a scalar, expected at least 1 dim", name);
  const int64_t cols = x.size(-1), rows = x.numel() / std::max<int64_t>(cols, 1);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  POLDER_DISPATCH_FLOAT(x.dtype(), name, [&] {
    if (log) {
      POLDER_KERNEL(x.device(), log_softmax_forward, x.data<scalar_t>(), out.data<scalar_t>(), rows, cols);
    } else {
      POLDER_KERNEL(x.device(), softmax_forward, x.data<scalar_t>(), out.data<scalar_t>(), rows, cols);
    }
  });
  record(name, {x}, {&out}, [&] {
    return [y = out.detach(), rows, cols, log](std::vector<Tensor>& g) {
      Tensor go = g[0].to(y.dtype());
      Tensor gx = Tensor::empty(y.shape(), y.dtype(), y.device());
      POLDER_DISPATCH_FLOAT(y.dtype(), "softmax backward", [&] {
        if (log) {
          POLDER_KERNEL(y.device(), log_softmax_backward, y.data<scalar_t>(), go.data<scalar_t>(),
                        gx.data<scalar_t>(), rows, cols);
        } else {
          POLDER_KERNEL(y.device(), softmax_backward, y.data<scalar_t>(), go.data<scalar_t>(),
                        gx.data<scalar_t>(), rows, cols);
        }
      });
      return std::vector<Tensor>{gx};
    };
  });
  return out;
}
}  // namespace

Tensor softmax(const Tensor& x) {
  return softmax_like("softmax", x, false);
}
Tensor log_softmax(const Tensor& x) {
  return softmax_like("log_softmax", x, true);
}

namespace {
// Checks cross-entropy's targets against logits of `shape` on the host (device targets are copied back) and
// counts the ones not ignored.
int64_t checked_valid_targets(const char* op, const Shape& shape, const Tensor& targets,
                              int64_t ignore_index) {
  check_defined(op, targets, "targets");
  check_index(op, targets, "targets");
  int64_t V = shape.empty() ? 1 : shape.back(), N = 1;
  for (int64_t d : shape) N *= d;
  N /= std::max<int64_t>(V, 1);
  POLDER_CHECK(targets.numel() == N, "{}: logits {} hold {} rows but targets {} hold {}", op, shape, N,
               targets.shape(), targets.numel());
  const Tensor host_targets = on_host(targets);
  int64_t bad = 0;
  int64_t at = first_bad_index(host_targets, V, ignore_index, bad);
  POLDER_CHECK(at < 0, "{}: target {} at position {} is outside [0, {}) and is not the ignore index {}", op,
               bad, at, V, ignore_index);
  return dispatch_index(targets.dtype(), [&](auto tag) {
    using I = decltype(tag);
    int64_t c = 0;
    const I* t = host_targets.data<I>();
    for (int64_t i = 0; i < N; ++i) c += static_cast<int64_t>(t[i]) != ignore_index;
    return c;
  });
}
}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  check_defined("cross_entropy", logits, "logits");
  check_float("cross_entropy", logits, "logits");
  const int64_t V = logits.size(-1), N = logits.numel() / std::max<int64_t>(V, 1);
  const int64_t valid = checked_valid_targets("cross_entropy", logits.shape(), targets, ignore_index);
  const Tensor dev_targets = targets.to(logits.device());
  const Device device = logits.device();
  const DType adt = acc_dtype(logits.dtype());
  Tensor loss_rows = Tensor::empty({N}, adt, device), lse = Tensor::empty({N}, adt, device);
  const double inv_valid = valid ? 1.0 / static_cast<double>(valid) : 0.0;
  Tensor out;
  POLDER_DISPATCH_FLOAT(logits.dtype(), "cross_entropy", [&] {
    using A = acc_t<scalar_t>;
    dispatch_index(targets.dtype(), [&](auto tag) {
      using I = decltype(tag);
      POLDER_FUSED_KERNEL(device, scalar_t, cross_entropy_forward, logits.data<scalar_t>(),
                          dev_targets.data<I>(), loss_rows.data<A>(), lse.data<A>(), N, V, ignore_index);
    });
    // The mean: a host scalar on the CPU; on CUDA it stays on the device, so reading the loss is the caller's
    // (one) synchronisation.
    dispatch::on_device(
        "cross_entropy mean", device,
        [&] {
          out = Tensor::scalar(
              valid ? kernels::cpu::sum(loss_rows.data<A>(), N) / static_cast<double>(valid) : 0.0, adt);
        },
        [&]([[maybe_unused]] void* stream) {
          out = Tensor::empty({}, adt, device);
          POLDER_CUDA_KERNEL(kernels::cuda::sum(loss_rows.data<A>(), out.data<A>(), N, inv_valid, stream));
        });
  });
  record("cross_entropy", {logits}, {&out}, [&] {
    return [logits, targets = dev_targets, lse, N, V, valid, inv_valid, ignore_index,
            adt](std::vector<Tensor>& g) {
      Tensor gl = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
      POLDER_DISPATCH_FLOAT(logits.dtype(), "cross_entropy backward", [&] {
        using A = acc_t<scalar_t>;
        // dloss[r] = d(mean)/d(loss_r) * upstream gradient, broadcast on the device without a host round
        // trip.
        Tensor up = g[0].to(adt);
        Tensor dloss = Tensor::empty({N}, adt, logits.device());
        dispatch_index(targets.dtype(), [&](auto tag) {
          using I = decltype(tag);
          // dloss: filled from the host value on the CPU, broadcast on the device on CUDA.
          dispatch::on_device(
              "cross_entropy backward", logits.device(),
              [&] { dloss.fill_(valid ? up.item() / static_cast<double>(valid) : 0.0); },
              [&]([[maybe_unused]] void* stream) {
                POLDER_CUDA_KERNEL(
                    kernels::cuda::expand_dim(up.data<A>(), dloss.data<A>(), 1, N, 1, inv_valid, stream));
              });
          POLDER_FUSED_KERNEL(logits.device(), scalar_t, cross_entropy_backward, logits.data<scalar_t>(),
                              targets.data<I>(), lse.data<A>(), dloss.data<A>(), gl.data<scalar_t>(), N, V,
                              ignore_index);
        });
      });
      return std::vector<Tensor>{gl};
    };
  });
  return out;
}

Tensor linear_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                            int64_t ignore_index) {
  check_defined("linear_cross_entropy", x, "x");
  check_defined("linear_cross_entropy", weight, "weight");
  const bool grad = GradMode::enabled() && (x.requires_grad() || weight.requires_grad());
  if (!x.device().is_cpu() || !grad) return cross_entropy(linear(x, weight), targets, ignore_index);
  check_same_device("linear_cross_entropy", {{&x, "x"}, {&weight, "weight"}});
  check_same_dtype("linear_cross_entropy", x, "x", weight, "weight");
  check_float("linear_cross_entropy", x, "x");
  POLDER_CHECK(weight.dim() == 2, "linear_cross_entropy: weight is {}, expected (vocab, in_features)",
               weight.shape());
  POLDER_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1),
               "linear_cross_entropy: x is {} but weight is {}: inner sizes {} and {} differ", x.shape(),
               weight.shape(), x.dim() ? x.size(-1) : 0, weight.size(1));
  const int64_t K = weight.size(1), V = weight.size(0), N = x.numel() / std::max<int64_t>(K, 1);
  const int64_t valid = checked_valid_targets("linear_cross_entropy", {N, V}, targets, ignore_index);
  const Tensor host_targets = on_host(targets);  // this path runs on the CPU
  const DType adt = acc_dtype(x.dtype());
  // logits = x W^T, then, in place, their gradient for an upstream gradient of 1. Where bf16/f16 GEMMs run as
  // f32 on converted operands (CPUs without native bf16 kernels), the logits stay f32: the GEMMs write and
  // read them without the three conversions of the largest activation of the step.
  const DType ldt = kernels::cpu::gemm_converts(x.dtype()) ? DType::f32 : x.dtype();
  Tensor dlogits = Tensor::empty({N, V}, ldt);
  detail::gemm_2d(x, false, weight, true, dlogits, N, V, K, 0.0f, weight_id(weight));
  Tensor loss_rows = Tensor::empty({N}, adt);
  Tensor out;
  POLDER_DISPATCH_FLOAT(ldt, "linear_cross_entropy", [&] {
    using A = acc_t<scalar_t>;
    dispatch_index(targets.dtype(), [&](auto tag) {
      using I = decltype(tag);
      const profile::Scope scope(profile::enabled() ? profile::kind_of_kernel("cross_entropy") : "");
      kernels::cpu::cross_entropy_forward_backward(
          dlogits.data<scalar_t>(), host_targets.data<I>(), loss_rows.data<A>(), N, V, ignore_index,
          static_cast<A>(valid ? 1.0 / static_cast<double>(valid) : 0.0));
    });
    out = Tensor::scalar(valid ? kernels::cpu::sum(loss_rows.data<A>(), N) / static_cast<double>(valid) : 0.0,
                         adt);
  });
  record("linear_cross_entropy", {x, weight}, {&out}, [&] {
    return [x, weight, dlogits, N, V, K](std::vector<Tensor>& g) {
      const float up = static_cast<float>(g[0].item());
      Tensor gx, gw;
      if (x.requires_grad()) {
        gx = Tensor::empty(x.shape(), x.dtype(), x.device());
        detail::gemm_2d(dlogits, false, weight, false, gx, N, K, V, 0.0f, weight_id(weight), up);  // up dl W
      }
      if (weight.requires_grad()) {
        if (Tensor* target = direct_grad_target(weight, acc_dtype(weight.dtype()))) {
          detail::gemm_2d(dlogits, true, x, false, *target, V, K, N, 1.0f, 0, up);  // += up dl^T x
        } else {
          gw = Tensor::empty(weight.shape(), acc_dtype(weight.dtype()), weight.device());
          detail::gemm_2d(dlogits, true, x, false, gw, V, K, N, 0.0f, 0, up);
        }
      }
      return std::vector<Tensor>{gx, gw};
    };
  });
  return out;
}

}  // namespace polder::ops
