// Deterministic initialisation: element values are a pure function of (seed, stream key, global index), so a
// shard of a parameter holds exactly its slice of the unsharded tensor whatever the parallel layout.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/tensor.h"

namespace polder::rng {

// A stable 64-bit key for a name (FNV-1a), e.g. the parameter name "model.layers.0.mlp.up_proj.weight".
uint64_t stream_key(std::string_view name);

// Where a tensor sits inside the full (unsharded) tensor: the full shape and, along `dim`, the first index.
// The default is the tensor itself.
struct Slice {
  Shape full_shape;  // empty: the tensor is the full tensor
  int64_t dim = 0;
  int64_t start = 0;
};

void fill_uniform(Tensor& t, uint64_t seed, uint64_t key, double low, double high, const Slice& slice = {});
void fill_normal(Tensor& t, uint64_t seed, uint64_t key, double mean, double std, const Slice& slice = {});

}  // namespace polder::rng
