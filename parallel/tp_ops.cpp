// Tensor-parallel ops. Backward formulas next to each forward.
#include "parallel/tp_ops.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/dispatch.h"
#include "core/ops.h"
#include "core/ops_util.h"
#include "kernels/softmax.h"

namespace polder::parallel {
using ops::detail::record;

Tensor copy_to_tp(const Tensor& x, Comm& tp) {
  Tensor out = x.detach();
  record("copy_to_tp", {x}, {&out}, [&] {
    Comm* c = &tp;
    // d(x)/d(out) summed over the ranks that each used x: all-reduce.
    return [c](std::vector<Tensor>& g) {
      Tensor gx = g[0].clone();
      c->all_reduce(gx, ReduceOp::sum);
      return std::vector<Tensor>{gx};
    };
  });
  return out;
}

Tensor reduce_from_tp(const Tensor& x, Comm& tp) {
  Tensor out = x.clone();
  tp.all_reduce(out, ReduceOp::sum);
  record("reduce_from_tp", {x}, {&out}, [&] {
    // out = sum over ranks of x_r: d out / d x_r = identity.
    return [](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0]}; };
  });
  return out;
}

namespace {
// (B, T, C) <-> (tp, B, T/tp, C): the layout collectives concatenate along.
Tensor seq_to_rank_major(const Tensor& x, int64_t tp) {
  NoGradGuard guard;
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  return ops::transpose(x.view({B, tp, T / tp, C}), 0, 1);
}
Tensor rank_major_to_seq(const Tensor& y, int64_t tp) {
  NoGradGuard guard;
  const int64_t B = y.size(1), Tl = y.size(2), C = y.size(3);
  return ops::transpose(y, 0, 1).view({B, tp * Tl, C});
}
Tensor gather_seq(const Tensor& x, Comm& tp) {
  const int64_t p = tp.size();
  Tensor all = Tensor::empty({p, x.size(0), x.size(1), x.size(2)}, x.dtype(), x.device());
  tp.all_gather(x.contiguous(), all);
  return rank_major_to_seq(all, p);
}
Tensor reduce_scatter_seq(const Tensor& x, Comm& tp) {
  const int64_t p = tp.size();
  POLDER_CHECK(x.size(1) % p == 0, "sequence parallel: sequence length {} is not divisible by tp {}",
               x.size(1), p);
  Tensor rm = seq_to_rank_major(x, p);
  Tensor out = Tensor::empty({x.size(0), x.size(1) / p, x.size(2)}, x.dtype(), x.device());
  tp.reduce_scatter(rm, out, ReduceOp::sum);
  return out;
}
}  // namespace

Tensor sp_gather(const Tensor& x, Comm& tp) {
  Tensor out = gather_seq(x, tp);
  record("sp_gather", {x}, {&out}, [&] {
    Comm* c = &tp;
    // Every rank used every token: the gradient of a local token is the sum over ranks of its gradient.
    return [c](std::vector<Tensor>& g) { return std::vector<Tensor>{reduce_scatter_seq(g[0], *c)}; };
  });
  return out;
}

Tensor sp_reduce_scatter(const Tensor& x, Comm& tp) {
  Tensor out = reduce_scatter_seq(x, tp);
  record("sp_reduce_scatter", {x}, {&out}, [&] {
    Comm* c = &tp;
    // out_r = sum over ranks of x's chunk r: d out_r / d x = the chunk selector on every rank.
    return [c](std::vector<Tensor>& g) { return std::vector<Tensor>{gather_seq(g[0], *c)}; };
  });
  return out;
}

std::vector<Tensor> TensorParallelRegion::enter_linears(const Tensor& x, const std::vector<Tensor>& weights,
                                                        const std::vector<Tensor>& biases) const {
  POLDER_CHECK(weights.size() == biases.size(),
               "enter_linears: {} weights but {} biases (undefined for none)", weights.size(), biases.size());
  std::vector<Tensor> outs;
  if (tp_ == nullptr) {
    for (size_t i = 0; i < weights.size(); ++i) outs.push_back(ops::linear(x, weights[i], biases[i]));
    return outs;
  }
  Tensor h;  // the region's input: all T tokens
  {
    NoGradGuard guard;
    h = sp_ ? gather_seq(x, *tp_) : x;
    for (size_t i = 0; i < weights.size(); ++i) outs.push_back(ops::linear(h, weights[i], biases[i]));
  }
  std::vector<Tensor> inputs{x};
  inputs.insert(inputs.end(), weights.begin(), weights.end());
  inputs.insert(inputs.end(), biases.begin(), biases.end());
  std::vector<Tensor*> out_ptrs;
  for (Tensor& o : outs) out_ptrs.push_back(&o);
  record("tp_enter_linears", inputs, out_ptrs, [&] {
    // Not x itself: under sequence parallelism it is a tensor of its own that nothing else keeps.
    return [c = tp_, sp = sp_, x_shape = x.shape(), x_grad = x.requires_grad(), h, weights,
            biases](std::vector<Tensor>& g) {
      const size_t n = weights.size();
      const int64_t K = h.size(-1), M = h.numel() / std::max<int64_t>(K, 1);
      std::vector<Tensor> grads(1 + 2 * n);
      // 1) The region input's gradient, summed over the projections: dh = sum_i dy_i W_i.
      std::unique_ptr<Work> work;
      Tensor gh, rank_major;
      if (x_grad) {
        gh = Tensor::empty(h.shape(), h.dtype(), h.device());
        size_t done = 0;
        for (size_t i = 0; i < n; ++i) {
          if (!g[i].defined()) continue;
          ops::detail::gemm_2d(g[i], false, weights[i], false, gh, M, K, weights[i].size(0),
                               done++ ? 1.0f : 0.0f, ops::detail::weight_id(weights[i]));
        }
        if (done == 0) gh = Tensor::zeros(h.shape(), h.dtype(), h.device());
        // 2) Its collective, in flight during 3).
        if (sp) {
          const int64_t p = c->size();
          rank_major = seq_to_rank_major(gh, p).contiguous();
          grads[0] = Tensor::empty(x_shape, h.dtype(), h.device());
          work = c->reduce_scatter_async(rank_major, grads[0], ReduceOp::sum);
        } else {
          grads[0] = gh;
          work = c->all_reduce_async(grads[0], ReduceOp::sum);
        }
      }
      // 3) Weight and bias gradients (f32 for bf16; straight into a parameter's gradient buffer when it has
      // one).
      for (size_t i = 0; i < n; ++i) {
        if (!g[i].defined()) continue;
        const Tensor& w = weights[i];
        const int64_t N = w.size(0);
        if (w.requires_grad()) {
          if (Tensor* target = ops::detail::direct_grad_target(w, ops::detail::acc_dtype(w.dtype()))) {
            ops::detail::gemm_2d(g[i], true, h, false, *target, N, K, M, 1.0f);
          } else {
            grads[1 + i] = Tensor::empty(w.shape(), ops::detail::acc_dtype(w.dtype()), w.device());
            ops::detail::gemm_2d(g[i], true, h, false, grads[1 + i], N, K, M);
          }
        }
        const Tensor& b = biases[i];
        if (b.defined() && b.requires_grad()) {
          NoGradGuard guard;
          grads[1 + n + i] = ops::sum(ops::reshape(g[i], {M, N}), 0);
        }
      }
      if (work) work->wait();
      return grads;
    };
  });
  return outs;
}

Tensor vocab_parallel_embedding(const Tensor& table_local, const Tensor& ids, int64_t vocab_start, Comm& tp,
                                bool sequence_parallel) {
  POLDER_CHECK(ids.dtype() == DType::i32, "vocab_parallel_embedding: ids are {}, expected i32", ids.dtype());
  const int64_t v_local = table_local.size(0);
  // Local ids and the row mask from the ids on the host (the loader's ids are host tensors): in-shard ids
  // shifted, others mapped to row 0 and masked out afterwards. Only these two (tokens,) vectors go to the
  // table's device; the rows are gathered and masked there.
  const Tensor host_ids = ids.device().is_cpu() ? ids : ids.to(Device::cpu());
  Tensor local = Tensor::empty(ids.shape(), DType::i32);
  const int32_t* g = host_ids.data<int32_t>();
  int32_t* l = local.data<int32_t>();
  std::vector<double> m(static_cast<size_t>(ids.numel()));
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const bool mine = g[i] >= vocab_start && g[i] < vocab_start + v_local;
    l[i] = mine ? static_cast<int32_t>(g[i] - vocab_start) : 0;
    m[static_cast<size_t>(i)] = mine ? 1.0 : 0.0;
  }
  const Tensor mask =
      Tensor::from_vector(m, {ids.numel(), 1}).to(table_local.dtype()).to(table_local.device());
  Tensor rows = ops::embedding(table_local, local);  // (..., C)
  Shape s = rows.shape();
  Tensor masked = ops::reshape(ops::mul(ops::reshape(rows, {ids.numel(), s.back()}), mask), s);
  return sequence_parallel ? sp_reduce_scatter(masked, tp) : reduce_from_tp(masked, tp);
}

Tensor vocab_parallel_cross_entropy(const Tensor& logits_local, const Tensor& targets, int64_t vocab_start,
                                    int64_t vocab_size, Comm& tp, int64_t ignore_index) {
  POLDER_CHECK(targets.dtype() == DType::i32, "vocab_parallel_cross_entropy: targets are {}, expected i32",
               targets.dtype());
  const int64_t V = logits_local.size(-1), N = logits_local.numel() / std::max<int64_t>(V, 1);
  POLDER_CHECK(targets.numel() == N,
               "vocab_parallel_cross_entropy: logits {} hold {} rows but targets {} hold {}",
               logits_local.shape(), N, targets.shape(), targets.numel());
  // Targets are checked and counted on the host (the loader's are host tensors), then used on the logits'
  // device: on a GPU nothing of the logits' size leaves it.
  const Tensor host_targets = targets.device().is_cpu() ? targets : targets.to(Device::cpu());
  const int32_t* t = host_targets.data<int32_t>();
  int64_t valid = 0;
  for (int64_t r = 0; r < N; ++r) {
    if (t[r] == ignore_index) continue;
    POLDER_CHECK(t[r] >= 0 && t[r] < vocab_size, "cross_entropy: target {} at position {} is outside [0, {})",
                 t[r], r, vocab_size);
    ++valid;
  }
  const Device device = logits_local.device();
  const Tensor dev_targets = host_targets.to(device);
  const Tensor logits = logits_local.contiguous();
  const int64_t cols = std::max<int64_t>(0, std::min(V, vocab_size - vocab_start));  // real columns here
  const DType adt = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const double inv_valid = valid ? 1.0 / static_cast<double>(valid) : 0.0;
  // Three numbers per row cross the tp group: the max of the anchors, then the rescaled sums and the target
  // logits in one all-reduce (kernels/softmax.h).
  Tensor stats = Tensor::empty({3, N}, adt, device), lse = Tensor::empty({N}, adt, device),
         loss_rows = Tensor::empty({N}, adt, device);
  Tensor gmax;
  POLDER_DISPATCH_FLOAT(logits.dtype(), "vocab_parallel_cross_entropy", [&] {
    using A = acc_t<scalar_t>;
    POLDER_FUSED_KERNEL(device, scalar_t, vocab_ce_stats, logits.data<scalar_t>(),
                        dev_targets.data<int32_t>(), stats.data<A>(), N, V, cols, vocab_start, ignore_index);
    gmax = ops::narrow(stats, 0, 0, 1).clone();
    tp.all_reduce(gmax, ReduceOp::max);
    POLDER_FUSED_KERNEL(device, scalar_t, vocab_ce_rescale, stats.data<A>(), gmax.data<A>(), N);
    Tensor sums = ops::narrow(stats, 0, 1, 2);  // contiguous rows 1 and 2: reduced in place
    tp.all_reduce(sums, ReduceOp::sum);
    POLDER_FUSED_KERNEL(device, scalar_t, vocab_ce_finish, gmax.data<A>(), stats.data<A>(),
                        dev_targets.data<int32_t>(), lse.data<A>(), loss_rows.data<A>(), N, ignore_index);
  });
  Tensor out;
  {
    NoGradGuard guard;
    out = ops::scale(ops::sum(loss_rows), inv_valid);
  }
  record("vocab_parallel_cross_entropy", {logits_local}, {&out}, [&] {
    return [logits, dev_targets, lse, N, V, cols, vocab_start, inv_valid, ignore_index,
            adt](std::vector<Tensor>& g) {
      // d loss / d logit[r, c] = (softmax[r, c] - [c == target]) / valid, on this shard's real columns.
      Tensor dloss = ops::mul(Tensor::full({N}, inv_valid, adt, logits.device()), g[0].to(adt));
      Tensor gl = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
      POLDER_DISPATCH_FLOAT(logits.dtype(), "vocab_parallel_cross_entropy backward", [&] {
        using A = acc_t<scalar_t>;
        POLDER_FUSED_KERNEL(logits.device(), scalar_t, vocab_ce_backward, logits.data<scalar_t>(),
                            dev_targets.data<int32_t>(), lse.data<A>(), dloss.data<A>(), gl.data<scalar_t>(),
                            N, V, cols, vocab_start, ignore_index);
      });
      return std::vector<Tensor>{gl};
    };
  });
  return out;
}

}  // namespace polder::parallel
