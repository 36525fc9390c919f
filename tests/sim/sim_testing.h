// Helpers of the emulated tensor-core tests (tests/sim): "device" buffers that end at a PROT_NONE page (a
// read or write past the end faults instead of passing unnoticed), poisoned with 0xFF bytes (NaN in f32, bf16
// and f16); normal random inputs; device_sync. The attention tests' error measure is
// tests/attention_testing.h's. The buffers are host memory the kernels reach directly (the emulated device
// shares the address space), so the host reads them itself, after device_sync: kernels run asynchronously on
// the stream's worker.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../host_random.h"
#include "sim/cudart.h"

namespace polder::sim_testing {

// Waits for every launch issued so far (before the host reads what the kernels wrote); throws on a failure.
inline void device_sync() {
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("cudaDeviceSynchronize: ") + cudaGetErrorString(e));
}

template <typename T>
class GuardedBuf {
 public:
  explicit GuardedBuf(size_t n) : n_(n) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t bytes = n * sizeof(T), data_pages = (bytes + 16 + page - 1) / page;
    map_bytes_ = (data_pages + 1) * page;
    void* m = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("GuardedBuf: mmap failed");
    map_ = static_cast<char*>(m);
    char* guard = map_ + data_pages * page;
    mprotect(guard, page, PROT_NONE);
    // The data ends as close to the guard page as 16-byte alignment of its start allows.
    data_ = reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(guard - bytes) / 16 * 16);
    std::memset(map_, 0xFF, data_pages * page);
  }
  explicit GuardedBuf(const std::vector<T>& h) : GuardedBuf(h.size()) {
    std::copy(h.begin(), h.end(), data_);
  }
  ~GuardedBuf() { munmap(map_, map_bytes_); }
  GuardedBuf(const GuardedBuf&) = delete;
  GuardedBuf& operator=(const GuardedBuf&) = delete;
  T* get() const { return data_; }
  std::vector<T> host() const { return std::vector<T>(data_, data_ + n_); }

 private:
  size_t n_, map_bytes_;
  char* map_;
  T* data_;
};

using ::polder::testing::randn;  // tests/host_random.h

}  // namespace polder::sim_testing
