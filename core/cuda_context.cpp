// CUDA context: one non-blocking stream per device and the stream-ordered pool (cudaMallocAsync with a
// release threshold so freed blocks stay cached). Compiled to throwing stubs when CUDA is not built.
#include "core/cuda_context.h"

#include "core/error.h"

#ifdef POLDER_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <vector>

#include "kernels/cuda/convert.h"

#define CUDA_CHECK(expr)                                                                          \
  do {                                                                                            \
    cudaError_t err_ = (expr);                                                                    \
    POLDER_CHECK(err_ == cudaSuccess, "{} failed: {} ({})", #expr, cudaGetErrorString(err_),      \
                 cudaGetErrorName(err_));                                                         \
  } while (0)

namespace polder::cuda {
namespace {

struct DeviceState {
  cudaStream_t stream = nullptr;
  bool ready = false;
};

std::mutex g_mutex;
std::vector<DeviceState> g_devices;

DeviceState& state(int device) {
  std::lock_guard<std::mutex> lock(g_mutex);
  int n = device_count();
  POLDER_CHECK(device >= 0 && device < n, "CUDA device {} requested but {} device(s) are visible", device, n);
  if (g_devices.empty()) g_devices.resize(static_cast<size_t>(n));
  DeviceState& s = g_devices[static_cast<size_t>(device)];
  if (!s.ready) {
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t threshold = UINT64_MAX;  // keep freed memory in the pool instead of returning it to the driver
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    s.ready = true;
  }
  return s;
}

}  // namespace

bool compiled() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

void* device_alloc(size_t nbytes, int device) {
  DeviceState& s = state(device);
  CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  CUDA_CHECK(cudaMallocAsync(&p, nbytes, s.stream));
  return p;
}

void device_free(void* ptr, int device) {
  DeviceState& s = state(device);
  cudaSetDevice(device);
  cudaFreeAsync(ptr, s.stream);  // destructors must not throw
}

void copy(void* dst, bool dst_is_device, const void* src, bool src_is_device, size_t nbytes) {
  cudaMemcpyKind kind = dst_is_device ? (src_is_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                      : (src_is_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  cudaStream_t stream = state(0).stream;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, kind, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

void memset_zero(void* ptr, size_t nbytes, int device) {
  CUDA_CHECK(cudaMemsetAsync(ptr, 0, nbytes, state(device).stream));
}

void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, int device) {
  kernels::cuda::convert(dst, dst_dtype, src, src_dtype, n, state(device).stream);
}

void* stream(int device) { return state(device).stream; }

void synchronize(int device) { CUDA_CHECK(cudaStreamSynchronize(state(device).stream)); }

}  // namespace polder::cuda

#else  // !POLDER_HAVE_CUDA

namespace polder::cuda {
namespace {
[[noreturn]] void unavailable() { POLDER_FAIL("CUDA requested but polder was built without CUDA (POLDER_CUDA=OFF)"); }
}  // namespace
bool compiled() { return false; }
int device_count() { return 0; }
void* device_alloc(size_t, int) { unavailable(); }
void device_free(void*, int) {}
void copy(void*, bool, const void*, bool, size_t) { unavailable(); }
void memset_zero(void*, size_t, int) { unavailable(); }
void convert(void*, DType, const void*, DType, int64_t, int) { unavailable(); }
void* stream(int) { unavailable(); }
void synchronize(int) { unavailable(); }
}  // namespace polder::cuda

#endif
