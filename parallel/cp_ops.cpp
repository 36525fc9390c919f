// Context parallelism's ops (parallel/cp_ops.h). Backward formulas next to each forward.
#include "parallel/cp_ops.h"

#include <vector>

#include "core/ops.h"
#include "core/ops_util.h"

namespace polder::parallel {
using ops::detail::record;

int64_t ContextParallel::position(int64_t t, int64_t local_len) const {
  const int64_t L = local_len / 2;
  return t < L ? first_chunk() * L + t : second_chunk() * L + (t - L);
}

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
    return [c = cp_, p, B, T2, F, shape = x.shape()](std::vector<Tensor>& g) {
      // Every rank used every position: a position's gradient is the sum over ranks, kept by its owner.
      Tensor rm = sequence_to_rank_major(g[0].contiguous().view({B, T2 * p, F}), p);
      Tensor mine = Tensor::empty({B, T2, F}, rm.dtype(), rm.device());
      c->reduce_scatter(rm, mine, ReduceOp::sum);
      return std::vector<Tensor>{mine.view(shape)};
    };
  });
  return out;
}

Tensor ContextParallel::rope(const Tensor& x, const ops::RopeTable& table, int64_t pos0) const {
  if (!cp_) return ops::rope(x, table, pos0);
  const int64_t L = x.size(1) / 2;
  return ops::concat({ops::rope(ops::narrow(x, 1, 0, L), table, pos0 + first_chunk() * L),
                      ops::rope(ops::narrow(x, 1, L, L), table, pos0 + second_chunk() * L)},
                     1);
}

Tensor ContextParallel::attention(const Tensor& q, const Tensor& k, const Tensor& v) const {
  if (!cp_) return ops::attention(q, k, v, true);
  const int64_t L = q.size(1) / 2;
  const Tensor kf = gather_sequence(k), vf = gather_sequence(v);
  // Chunk c's queries see the keys [0, (c + 1) L): the prefix, with the mask aligned to its end.
  auto part = [&](int64_t offset, int64_t chunk) {
    const int64_t S = (chunk + 1) * L;
    return ops::attention(ops::narrow(q, 1, offset, L), ops::narrow(kf, 1, 0, S), ops::narrow(vf, 1, 0, S),
                          true);
  };
  return ops::concat({part(0, first_chunk()), part(L, second_chunk())}, 1);
}

}  // namespace polder::parallel
