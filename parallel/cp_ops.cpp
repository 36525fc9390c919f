// Context parallelism's ops (parallel/cp_ops.h). Backward formulas next to each forward.
#include "parallel/cp_ops.h"

#include <vector>

#include <cmath>

#include "core/dispatch.h"
#include "core/ops.h"
#include "core/ops_util.h"
#include "kernels/attention.h"

namespace polder::parallel {
using ops::detail::record;

std::vector<int64_t> cp_local_positions(int64_t seq_len, int cp, int rank) {
  const int64_t L = seq_len / (2 * cp);
  std::vector<int64_t> out;
  for (int64_t c : {static_cast<int64_t>(rank), static_cast<int64_t>(2 * cp - 1 - rank)})
    for (int64_t t = 0; t < L; ++t) out.push_back(c * L + t);
  return out;
}

namespace {

// (p, B, 2L, F) rank-major local sequences -> (B, 2pL, F) in sequence order.
Tensor rank_major_to_sequence(const Tensor& all, int64_t p) {
  NoGradGuard guard;
  const int64_t L = all.size(2) / 2;
  std::vector<Tensor> blocks(static_cast<size_t>(2 * p));
  for (int64_t r = 0; r < p; ++r) {
    Tensor mine = ops::narrow(all, 0, r, 1).view({all.size(1), 2 * L, all.size(3)});
    blocks[static_cast<size_t>(r)] = ops::narrow(mine, 1, 0, L);
    blocks[static_cast<size_t>(2 * p - 1 - r)] = ops::narrow(mine, 1, L, L);
  }
  return ops::concat(blocks, 1);
}

// (B, 2pL, F) in sequence order -> (p, B, 2L, F): rank r's chunks r and 2p - 1 - r, rank-major.
Tensor sequence_to_rank_major(const Tensor& full, int64_t p) {
  NoGradGuard guard;
  const int64_t L = full.size(1) / (2 * p);
  std::vector<Tensor> ranks;
  for (int64_t r = 0; r < p; ++r) {
    Tensor pair =
        ops::concat({ops::narrow(full, 1, r * L, L), ops::narrow(full, 1, (2 * p - 1 - r) * L, L)}, 1);
    ranks.push_back(pair.view({1, full.size(0), 2 * L, full.size(2)}));
  }
  return ops::concat(ranks, 0);
}

}  // namespace

Tensor ContextParallel::gather_sequence(const Tensor& x) const {
  if (!cp_) return x;
  const int64_t p = cp_->size(), B = x.size(0), T2 = x.size(1);
  POLDER_CHECK(T2 % 2 == 0, "context parallel: a local sequence of {} tokens is not two chunks", T2);
  const int64_t F = x.numel() / std::max<int64_t>(B * T2, 1);
  Shape full_shape = x.shape();
  full_shape[1] = T2 * p;
  Tensor out;
  {
    NoGradGuard guard;
    Tensor all = Tensor::empty({p, B, T2, F}, x.dtype(), x.device());
    cp_->all_gather(x.contiguous().view({B, T2, F}), all);
    out = rank_major_to_sequence(all, p).view(full_shape);
  }
  record("cp_gather_sequence", {x}, {&out}, [&] {
    // Every rank used every position: a position's gradient is the sum over ranks, kept by its owner.
    return
        [self = *this](std::vector<Tensor>& g) { return std::vector<Tensor>{self.scatter_sequence(g[0])}; };
  });
  return out;
}

Tensor ContextParallel::scatter_sequence(const Tensor& full) const {
  if (!cp_) return full;
  NoGradGuard guard;
  const int64_t p = cp_->size(), B = full.size(0), T = full.size(1);
  const int64_t F = full.numel() / std::max<int64_t>(B * T, 1);
  Tensor rm = sequence_to_rank_major(full.contiguous().view({B, T, F}), p);
  Tensor mine = Tensor::empty({B, T / p, F}, rm.dtype(), rm.device());
  cp_->reduce_scatter(rm, mine, ReduceOp::sum);
  Shape shape = full.shape();
  shape[1] = T / p;
  return mine.view(shape);
}

Tensor ContextParallel::rope(const Tensor& x, const ops::RopeTable& table, int64_t pos0) const {
  if (!cp_) return ops::rope(x, table, pos0);
  const int64_t L = x.size(1) / 2;
  return ops::concat({ops::rope(ops::narrow(x, 1, 0, L), table, pos0 + first_chunk() * L),
                      ops::rope(ops::narrow(x, 1, L, L), table, pos0 + second_chunk() * L)},
                     1);
}

namespace {

// Rows [start, start + len) of dim 1 of a contiguous (B, T, H, D) tensor, contiguous: a view for B = 1, else
// a copy (no autograd).
Tensor seq_rows(const Tensor& x, int64_t start, int64_t len) {
  const int64_t B = x.size(0), T = x.size(1), F = x.numel() / std::max<int64_t>(B * T, 1);
  if (B == 1) return x.view({T, F}).narrow(0, start, len).view({1, len, x.size(2), x.size(3)});
  Tensor out = Tensor::empty({B, len, x.size(2), x.size(3)}, x.dtype(), x.device());
  for (int64_t b = 0; b < B; ++b)
    out.narrow(0, b, 1).view({len, F}).copy_(x.narrow(0, b, 1).view({T, F}).narrow(0, start, len));
  return out;
}

// dst (B, T, ...) rows [start, start + len) = (or += when add) src (B, len, ...).
void put_rows(Tensor& dst, int64_t start, const Tensor& src, bool add) {
  NoGradGuard guard;
  const int64_t B = dst.size(0), T = dst.size(1), len = src.size(1),
                F = dst.numel() / std::max<int64_t>(B * T, 1);
  for (int64_t b = 0; b < B; ++b) {
    Tensor d = dst.narrow(0, b, 1).view({T, F}).narrow(0, start, len);
    const Tensor s = src.contiguous().narrow(0, b, 1).view({len, F});
    d.copy_(add ? ops::add(d, s) : s);
  }
}

}  // namespace

// One autograd node for the two chunks: forward gathers K and V, runs the attention kernel per chunk over its
// key prefix and keeps only what plain attention keeps (the local q, k, v, the output and the chunks'
// log-sum-exp); backward gathers K and V again (as Megatron's all-gather context parallelism does), runs the
// kernels' backward per chunk, sums the K/V gradients over the sequence and reduce-scatters them to their
// owners. The gathered K/V live only inside each pass, so memory per rank follows the local tokens.
Tensor ContextParallel::attention(const Tensor& q, const Tensor& k, const Tensor& v) const {
  if (!cp_) return ops::attention(q, k, v, true);
  const int64_t B = q.size(0), T2 = q.size(1), L = T2 / 2;
  POLDER_CHECK(k.shape() == v.shape() && k.size(1) == T2 && T2 % 2 == 0,
               "context-parallel attention: q {} k {} v {}: expected two chunks of equal length", q.shape(),
               k.shape(), v.shape());
  kernels::AttentionShape base;
  base.B = B, base.T = L, base.Hq = q.size(2), base.Hkv = k.size(2), base.D = q.size(3), base.causal = true;
  base.scale = 1.0 / std::sqrt(static_cast<double>(base.D));
  // The keys chunk c (0: this rank's first, 1: its second) may see: the sequence up to the chunk's end.
  auto shape_of = [base, L, c0 = first_chunk(), c1 = second_chunk()](int c) {
    kernels::AttentionShape s = base;
    s.S = ((c == 0 ? c0 : c1) + 1) * L;
    return s;
  };
  const DType acc = q.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  std::vector<Tensor> lse = {Tensor::empty({B, base.Hq, L}, acc, q.device()),
                             Tensor::empty({B, base.Hq, L}, acc, q.device())};
  {
    NoGradGuard guard;
    const Tensor kf = gather_sequence(kc), vf = gather_sequence(vc);
    for (int c = 0; c < 2; ++c) {
      const kernels::AttentionShape s = shape_of(c);
      const Tensor qi = seq_rows(qc, c * L, L), ki = seq_rows(kf, 0, s.S), vi = seq_rows(vf, 0, s.S);
      Tensor oi = Tensor::empty(qi.shape(), q.dtype(), q.device());
      POLDER_DISPATCH_FLOAT(q.dtype(), "cp attention", [&] {
        POLDER_FUSED_KERNEL(q.device(), scalar_t, attention_forward, s, qi.data<scalar_t>(),
                            ki.data<scalar_t>(), vi.data<scalar_t>(), oi.data<scalar_t>(),
                            lse[c].data<acc_t<scalar_t>>());
      });
      put_rows(out, c * L, oi, false);
    }
  }
  record("cp_attention", {q, k, v}, {&out}, [&] {
    return [self = *this, qc, kc, vc, out = out.detach(), lse, shape_of, L](std::vector<Tensor>& g) {
      NoGradGuard guard;
      const Tensor go = g[0].to(qc.dtype()).contiguous();
      const Tensor kf = self.gather_sequence(kc), vf = self.gather_sequence(vc);
      Tensor gq = Tensor::empty(qc.shape(), qc.dtype(), qc.device());
      Tensor gkf = Tensor::zeros(kf.shape(), kf.dtype(), kf.device()),
             gvf = Tensor::zeros(vf.shape(), vf.dtype(), vf.device());
      for (int c = 0; c < 2; ++c) {
        const kernels::AttentionShape s = shape_of(c);
        const Tensor qi = seq_rows(qc, c * L, L), ki = seq_rows(kf, 0, s.S), vi = seq_rows(vf, 0, s.S);
        const Tensor oi = seq_rows(out, c * L, L), goi = seq_rows(go, c * L, L);
        Tensor gqi = Tensor::empty(qi.shape(), qi.dtype(), qi.device()),
               gki = Tensor::empty(ki.shape(), ki.dtype(), ki.device()),
               gvi = Tensor::empty(vi.shape(), vi.dtype(), vi.device());
        POLDER_DISPATCH_FLOAT(qc.dtype(), "cp attention backward", [&] {
          POLDER_FUSED_KERNEL(qc.device(), scalar_t, attention_backward, s, qi.data<scalar_t>(),
                              ki.data<scalar_t>(), vi.data<scalar_t>(), oi.data<scalar_t>(),
                              lse[c].data<acc_t<scalar_t>>(), goi.data<scalar_t>(), gqi.data<scalar_t>(),
                              gki.data<scalar_t>(), gvi.data<scalar_t>());
        });
        put_rows(gq, c * L, gqi, false);
        put_rows(gkf, 0, gki, true);
        put_rows(gvf, 0, gvi, true);
      }
      return std::vector<Tensor>{gq, self.scatter_sequence(gkf), self.scatter_sequence(gvf)};
    };
  });
  return out;
}

}  // namespace polder::parallel
