// Atomic counters per device. CUDA devices beyond kMaxCudaDevices share the last slot (never the case on the
// machines polder targets: 8 GPUs per node); the CPU has one slot.
#include "core/memory_stats.h"

#include <algorithm>
#include <atomic>

namespace polder::memory {
namespace {

constexpr int kMaxCudaDevices = 16;

struct Counter {
  std::atomic<int64_t> current{0};
  std::atomic<int64_t> peak{0};
};

Counter& counter(Device device) {
  static Counter counters[1 + kMaxCudaDevices];
  if (device.is_cpu()) return counters[0];
  return counters[1 + std::clamp(device.index, 0, kMaxCudaDevices - 1)];
}

}  // namespace

Stats stats(Device device) {
  Counter& c = counter(device);
  return {c.current.load(std::memory_order_relaxed), c.peak.load(std::memory_order_relaxed)};
}

void reset_peak(Device device) {
  Counter& c = counter(device);
  c.peak.store(c.current.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

void record_alloc(Device device, size_t bytes) {
  Counter& c = counter(device);
  const int64_t now = c.current.fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed) +
                      static_cast<int64_t>(bytes);
  int64_t seen = c.peak.load(std::memory_order_relaxed);
  while (now > seen && !c.peak.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
  }
}

void record_free(Device device, size_t bytes) {
  counter(device).current.fetch_sub(static_cast<int64_t>(bytes), std::memory_order_relaxed);
}

}  // namespace polder::memory
