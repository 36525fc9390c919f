// Tensor-parallel ops. Backward formulas next to each forward.
#include "parallel/tp_ops.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/ops.h"
#include "core/ops_util.h"

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
  Tensor all = Tensor::empty({p, x.size(0), x.size(1), x.size(2)}, x.dtype());
  tp.all_gather(x.contiguous(), all);
  return rank_major_to_seq(all, p);
}
Tensor reduce_scatter_seq(const Tensor& x, Comm& tp) {
  const int64_t p = tp.size();
  POLDER_CHECK(x.size(1) % p == 0, "sequence parallel: sequence length {} is not divisible by tp {}",
               x.size(1), p);
  Tensor rm = seq_to_rank_major(x, p);
  Tensor out = Tensor::empty({x.size(0), x.size(1) / p, x.size(2)}, x.dtype());
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

Tensor vocab_parallel_embedding(const Tensor& table_local, const Tensor& ids, int64_t vocab_start, Comm& tp,
                                bool sequence_parallel) {
  POLDER_CHECK(ids.dtype() == DType::i32, "vocab_parallel_embedding: ids are {}, expected i32", ids.dtype());
  const int64_t v_local = table_local.size(0);
  // Local ids: in-shard ids shifted, others mapped to row 0 and masked out afterwards.
  Tensor local = Tensor::empty(ids.shape(), DType::i32);
  Tensor mask = Tensor::empty({ids.numel(), 1}, table_local.dtype());
  const int32_t* g = ids.data<int32_t>();
  int32_t* l = local.data<int32_t>();
  std::vector<double> m(static_cast<size_t>(ids.numel()));
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const bool mine = g[i] >= vocab_start && g[i] < vocab_start + v_local;
    l[i] = mine ? static_cast<int32_t>(g[i] - vocab_start) : 0;
    m[static_cast<size_t>(i)] = mine ? 1.0 : 0.0;
  }
  mask.copy_(Tensor::from_vector(m, {ids.numel(), 1}));
  Tensor rows = ops::embedding(table_local, local);  // (..., C)
  Shape s = rows.shape();
  Tensor masked = ops::reshape(ops::mul(ops::reshape(rows, {ids.numel(), s.back()}), mask), s);
  return sequence_parallel ? sp_reduce_scatter(masked, tp) : reduce_from_tp(masked, tp);
}

Tensor vocab_parallel_cross_entropy(const Tensor& logits_local, const Tensor& targets, int64_t vocab_start,
                                    int64_t vocab_size, Comm& tp, int64_t ignore_index) {
  POLDER_CHECK(targets.dtype() == DType::i32, "vocab_parallel_cross_entropy: targets are {}, expected i32",
               targets.dtype());
  const int64_t V = logits_local.size(-1), N = logits_local.numel() / V;
  POLDER_CHECK(targets.numel() == N,
               "vocab_parallel_cross_entropy: logits {} hold {} rows but targets {} hold {}",
               logits_local.shape(), N, targets.shape(), targets.numel());
  const DType adt = logits_local.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor x = logits_local.to(DType::f64);  // the shard in f64: small (N x V/tp) and exact for the reductions
  const double* xp = x.data<double>();
  const int32_t* t = targets.data<int32_t>();
  const int64_t cols = std::max<int64_t>(0, std::min(V, vocab_size - vocab_start));  // real columns here
  // 1) row max over the real columns of every shard.
  Tensor mx = Tensor::empty({N}, DType::f64);
  double* mp = mx.data<double>();
  for (int64_t r = 0; r < N; ++r) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, xp[r * V + c]);
    mp[r] = m;
  }
  tp.all_reduce(mx, ReduceOp::max);
  // 2) sum of exp and 3) the target logit (from the shard that owns it).
  Tensor se = Tensor::empty({N}, DType::f64), tl = Tensor::zeros({N}, DType::f64);
  double* sp = se.data<double>();
  double* tp_ = tl.data<double>();
  int64_t valid = 0;
  for (int64_t r = 0; r < N; ++r) {
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) s += std::exp(xp[r * V + c] - mp[r]);
    sp[r] = s;
    if (t[r] == ignore_index) continue;
    POLDER_CHECK(t[r] >= 0 && t[r] < vocab_size, "cross_entropy: target {} at position {} is outside [0, {})",
                 t[r], r, vocab_size);
    ++valid;
    if (t[r] >= vocab_start && t[r] < vocab_start + cols) tp_[r] = xp[r * V + (t[r] - vocab_start)];
  }
  tp.all_reduce(se, ReduceOp::sum);
  tp.all_reduce(tl, ReduceOp::sum);
  Tensor lse = Tensor::empty({N}, DType::f64);
  double total = 0;
  for (int64_t r = 0; r < N; ++r) {
    lse.data<double>()[r] = mp[r] + std::log(sp[r]);
    if (t[r] != ignore_index) total += lse.data<double>()[r] - tp_[r];
  }
  Tensor out = Tensor::scalar(valid ? total / static_cast<double>(valid) : 0.0, adt);
  record("vocab_parallel_cross_entropy", {logits_local}, {&out}, [&] {
    return [x, targets, lse, N, V, cols, vocab_start, valid, ignore_index,
            dtype = logits_local.dtype()](std::vector<Tensor>& g) {
      // d loss / d logit[r, c] = (softmax[r, c] - [c == target]) / valid, on this shard's real columns.
      const double scale = valid ? g[0].item() / static_cast<double>(valid) : 0.0;
      Tensor gl = Tensor::zeros({N, V}, DType::f64);
      double* gp = gl.data<double>();
      const double* xq = x.data<double>();
      const double* lp = lse.data<double>();
      const int32_t* tq = targets.data<int32_t>();
      for (int64_t r = 0; r < N; ++r) {
        if (tq[r] == ignore_index) continue;
        for (int64_t c = 0; c < cols; ++c) gp[r * V + c] = scale * std::exp(xq[r * V + c] - lp[r]);
        if (tq[r] >= vocab_start && tq[r] < vocab_start + cols) gp[r * V + (tq[r] - vocab_start)] -= scale;
      }
      return std::vector<Tensor>{gl.to(dtype).view(x.shape())};
    };
  });
  return out;
}

}  // namespace polder::parallel
