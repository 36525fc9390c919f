// Allocator statistics per device: bytes held by live Storage objects now and at their peak since the last
// reset_peak(). Storage's constructor and destructor report every allocation (its requested size, not the
// allocator's rounding or cache), so the peak is what the tensors of a program need at once; the planner
// (plan/) predicts exactly this number. Thread-safe; one counter pair per (device kind, index).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace polder::memory {

struct Stats {
  int64_t current = 0;  // bytes held by live storages
  int64_t peak = 0;     // the largest `current` since the last reset_peak (or program start)
};

Stats stats(Device device);
// Starts a new peak measurement: peak = current.
void reset_peak(Device device);

// Called by Storage (core/tensor.cpp) and by any other allocator that wants its bytes counted.
void record_alloc(Device device, size_t bytes);
void record_free(Device device, size_t bytes);

}  // namespace polder::memory
