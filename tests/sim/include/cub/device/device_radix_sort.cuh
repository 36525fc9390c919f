// Emulator stand-in for CUB's <cub/device/device_radix_sort.cuh> (tests/sim): DeviceRadixSort::SortPairs with
// CUB's two-phase temporary-storage protocol, run on the host as an operation of the stream (sim::enqueue),
// so it is ordered with the kernels and copies around it and touches device memory only while it runs.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

namespace cub {

namespace sim_detail {

// CUB's key twiddling (DeviceRadixSort, "Bitwise Transformations"): the bits that sort as unsigned integers
// in the key's order; unsigned keys as they are, signed ones with the sign bit inverted, floats with the sign
// bit inverted where positive and every bit where negative, -0.0 and +0.0 equal.
template <typename K>
uint64_t twiddle(K k) {
  static_assert(std::is_arithmetic_v<K> && sizeof(K) <= 8, "radix sort keys are integers or floats");
  using U = std::conditional_t<
      sizeof(K) == 1, uint8_t,
      std::conditional_t<sizeof(K) == 2, uint16_t, std::conditional_t<sizeof(K) == 4, uint32_t, uint64_t>>>;
  U u;
  std::memcpy(&u, &k, sizeof(K));
  constexpr U kHigh = static_cast<U>(U(1) << (sizeof(K) * 8 - 1));
  if constexpr (std::is_floating_point_v<K>) {
    if (u == kHigh) u = 0;  // -0.0 sorts as +0.0 (equal keys, input order kept)
    u = (u & kHigh) ? static_cast<U>(~u) : static_cast<U>(u | kHigh);
  } else if constexpr (std::is_signed_v<K>)
    u = static_cast<U>(u ^ kHigh);
  return u;
}

// What the sort needs in the temporary storage: a copy of the keys and of the values (CUB's double buffers).
inline size_t temp_bytes(size_t n, size_t key, size_t value) {
  return std::max<size_t>(1, (n * key + 255) / 256 * 256 + (n * value + 255) / 256 * 256);
}

}  // namespace sim_detail

struct DeviceRadixSort {
  // Sorts (key, value) pairs by bits [begin_bit, end_bit) of the keys (integers or floats, in their numeric
  // order), stably. With d_temp_storage == nullptr only sets temp_storage_bytes (nothing is enqueued); then,
  // with that much temporary storage, enqueues the sort on `stream` (CUB: "Stable"; inputs and outputs must
  // not overlap).
  template <typename K, typename V, typename N>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in,
                               K* d_keys_out, const V* d_values_in, V* d_values_out, N num_items,
                               int begin_bit = 0, int end_bit = sizeof(K) * 8,
                               cudaStream_t stream = nullptr) {
    const size_t n = num_items > 0 ? static_cast<size_t>(num_items) : 0;
    const size_t need = sim_detail::temp_bytes(n, sizeof(K), sizeof(V));
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = need;
      return cudaSuccess;
    }
    if (temp_storage_bytes < need || begin_bit < 0 || end_bit > static_cast<int>(sizeof(K) * 8) ||
        begin_bit > end_bit) {
      std::fprintf(stderr,
                   "sim: cub::DeviceRadixSort::SortPairs: %zu bytes of temporary storage (%zu needed), bits "
                   "[%d, %d) of %zu-byte keys\n",
                   temp_storage_bytes, need, begin_bit, end_bit, sizeof(K));
      return cudaErrorInvalidValue;
    }
    if (n == 0) return cudaSuccess;
    auto op = [=] {
      // Through the temporary storage (as CUB's double buffers): a temporary freed or shared too early shows.
      K* keys = static_cast<K*>(d_temp_storage);
      V* values =
          reinterpret_cast<V*>(static_cast<char*>(d_temp_storage) + (n * sizeof(K) + 255) / 256 * 256);
      std::memcpy(keys, d_keys_in, n * sizeof(K));
      std::memcpy(values, d_values_in, n * sizeof(V));
      const int bits = end_bit - begin_bit;
      const uint64_t mask = bits >= 64 ? ~uint64_t(0) : (uint64_t(1) << bits) - 1;
      std::vector<uint64_t> digit(n);
      for (size_t i = 0; i < n; ++i)
        digit[i] = bits == 0 ? 0 : (sim_detail::twiddle(keys[i]) >> begin_bit) & mask;
      std::vector<size_t> order(n);
      std::iota(order.begin(), order.end(), size_t(0));
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return digit[a] < digit[b]; });
      for (size_t i = 0; i < n; ++i) {
        d_keys_out[i] = keys[order[i]];
        d_values_out[i] = values[order[i]];
      }
    };
    return ::sim::enqueue(stream, "cub::DeviceRadixSort::SortPairs", op);
  }
};

}  // namespace cub
