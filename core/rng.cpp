// Counter-based fills on the host (converted to the tensor's dtype and copied to its device).
#include "core/rng.h"

#include "kernels/philox.h"

namespace polder::rng {

uint64_t stream_key(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

namespace {

template <typename F>
void fill(Tensor& t, const Slice& slice, F&& value_at) {
  POLDER_CHECK(is_floating(t.dtype()), "random fill: tensor is {}, expected a floating dtype", t.dtype());
  const int64_t n = t.numel();
  Tensor host = Tensor::empty(t.shape(), DType::f64);
  double* out = host.data<double>();
  if (slice.full_shape.empty()) {
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) out[i] = value_at(static_cast<uint64_t>(i));
  } else {
    const Shape& full = slice.full_shape;
    POLDER_CHECK(static_cast<int64_t>(full.size()) == t.dim() && slice.dim >= 0 && slice.dim < t.dim(),
                 "random fill: slice of full shape {} along dim {} does not match tensor shape {}", full,
                 slice.dim, t.shape());
    for (int64_t d = 0; d < t.dim(); ++d) {
      int64_t want = d == slice.dim ? t.size(d) : full[static_cast<size_t>(d)];
      POLDER_CHECK(
          t.size(d) == want && slice.start + t.size(slice.dim) <= full[static_cast<size_t>(slice.dim)],
          "random fill: tensor of shape {} is not a slice of {} at dim {} from {}", t.shape(), full,
          slice.dim, slice.start);
    }
    // (outer, len, inner) inside (outer, full_len, inner).
    int64_t inner = 1;
    for (size_t d = static_cast<size_t>(slice.dim) + 1; d < full.size(); ++d) inner *= full[d];
    const int64_t len = t.size(slice.dim), full_len = full[static_cast<size_t>(slice.dim)];
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
      int64_t o = i / (len * inner), r = (i / inner) % len, c = i % inner;
      out[i] = value_at(static_cast<uint64_t>((o * full_len + slice.start + r) * inner + c));
    }
  }
  t.copy_(host);
}

}  // namespace

void fill_uniform(Tensor& t, uint64_t seed, uint64_t key, double low, double high, const Slice& slice) {
  fill(t, slice, [&](uint64_t i) { return low + (high - low) * philox::uniform(seed, key, i); });
}

void fill_normal(Tensor& t, uint64_t seed, uint64_t key, double mean, double std, const Slice& slice) {
  fill(t, slice, [&](uint64_t i) { return mean + std * philox::normal(seed, key, i); });
}

}  // namespace polder::rng
