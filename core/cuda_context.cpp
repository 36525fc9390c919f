// CUDA context: one non-blocking stream per device, the stream-ordered pool (cudaMallocAsync with a release
// threshold so freed blocks stay cached), pinned staging for uploads, device properties and pool statistics.
// Compiled to throwing stubs when CUDA is not built.
#include "core/cuda_context.h"

#include "core/error.h"

#ifdef POLDER_HAVE_CUDA
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "kernels/cuda/convert.h"
#include "kernels/elementwise.h"

#define CUDA_CHECK(expr)                                                                     \
  do {                                                                                       \
    cudaError_t err_ = (expr);                                                               \
    POLDER_CHECK(err_ == cudaSuccess, "{} failed: {} ({})", #expr, cudaGetErrorString(err_), \
                 cudaGetErrorName(err_));                                                    \
  } while (0)

namespace polder::cuda {
namespace {

// A pinned host buffer an upload is staged in, reusable once its event has completed.
struct Staging {
  void* host = nullptr;
  size_t capacity = 0;
  cudaEvent_t done = nullptr;
  bool in_flight = false;
};

struct DeviceState {
  cudaStream_t stream = nullptr;
  std::vector<Staging> staging;  // a small ring: uploads of consecutive micro-batches overlap the device work
  size_t next_staging = 0;
  bool ready = false;
};

std::mutex g_mutex;
std::vector<DeviceState> g_devices;
std::atomic<int> g_current{0};

DeviceState& state(int device) {
  const int n = device_count();
  POLDER_CHECK(device >= 0 && device < n, "CUDA device {} requested but {} device(s) are visible", device, n);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_devices.empty()) g_devices.resize(static_cast<size_t>(n));
  DeviceState& s = g_devices[static_cast<size_t>(device)];
  if (!s.ready) {
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t threshold = UINT64_MAX;  // keep freed memory in the pool instead of returning it to the driver
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    s.staging.resize(4);
    s.ready = true;
  }
  return s;
}

constexpr size_t kStagingMax = size_t{64} << 20;  // larger uploads go in pieces

// Host-to-device through pinned staging: memcpy into a free pinned slot, async copy on the stream, an event
// marks when the slot may be reused. The host never waits for kernels queued before the upload.
void upload(void* dst, const void* src, size_t nbytes, int device) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(g_mutex);
  for (size_t off = 0; off < nbytes;) {
    const size_t n = std::min(kStagingMax, nbytes - off);
    Staging& slot = s.staging[s.next_staging];
    s.next_staging = (s.next_staging + 1) % s.staging.size();
    if (slot.in_flight) CUDA_CHECK(cudaEventSynchronize(slot.done));  // only waits for that older upload
    if (slot.capacity < n) {
      if (slot.host) CUDA_CHECK(cudaFreeHost(slot.host));
      slot.capacity = std::max(n, size_t{1} << 20);
      CUDA_CHECK(cudaMallocHost(&slot.host, slot.capacity));
      if (!slot.done) CUDA_CHECK(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
    }
    std::memcpy(slot.host, static_cast<const char*>(src) + off, n);
    CUDA_CHECK(
        cudaMemcpyAsync(static_cast<char*>(dst) + off, slot.host, n, cudaMemcpyHostToDevice, s.stream));
    CUDA_CHECK(cudaEventRecord(slot.done, s.stream));
    slot.in_flight = true;
    off += n;
  }
}

cudaMemPool_t pool_of(int device) {
  cudaMemPool_t pool;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  return pool;
}

// Dense bf16 tensor-core TFLOP/s of known parts (NVIDIA data sheets, without sparsity).
double known_bf16_peak(const std::string& name) {
  struct Part {
    const char* key;
    double tflops;
  };
  static const Part parts[] = {{"H200", 989.0},  {"H100 PCIe", 756.0}, {"H100 NVL", 835.0}, {"H100", 989.0},
                               {"GH200", 989.0}, {"H800", 989.0},      {"A100", 312.0},     {"A800", 312.0},
                               {"L40S", 362.0},  {"B200", 2250.0},     {"B100", 1750.0}};
  for (const Part& p : parts)
    if (name.find(p.key) != std::string::npos) return p.tflops;
  return 0;
}

}  // namespace

bool compiled() {
  return true;
}

namespace {
std::string g_device_count_error;  // written once, by the first device_count()
}  // namespace

int device_count() {
  static const int n = [] {
    int c = 0;
    if (const cudaError_t e = cudaGetDeviceCount(&c); e != cudaSuccess) {
      // Kept, not swallowed: an old driver must not read as "no device".
      g_device_count_error = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
      cudaGetLastError();
      return 0;
    }
    return c;
  }();
  return n;
}

std::string device_count_error() {
  device_count();
  return g_device_count_error;
}

void set_device(int device) {
  state(device);
  CUDA_CHECK(cudaSetDevice(device));
  g_current = device;
}

int current_device() {
  return g_current;
}

void* device_alloc(size_t nbytes, int device) {
  DeviceState& s = state(device);
  void* p = nullptr;
  cudaError_t err = cudaMallocAsync(&p, nbytes, s.stream);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    PoolStats st = pool_stats(device);
    POLDER_FAIL(
        "CUDA out of memory on device {}: {} MiB requested, {} MiB in use by tensors, {} MiB reserved by "
        "the pool (peak in use {} MiB); lower train.micro_batch, enable recompute or shard more",
        device, nbytes >> 20, st.used >> 20, st.reserved >> 20, st.used_peak >> 20);
  }
  CUDA_CHECK(err);
  return p;
}

void device_free(void* ptr, int device) {
  DeviceState& s = state(device);
  cudaFreeAsync(ptr, s.stream);  // destructors must not throw
}

void copy(void* dst, bool dst_is_device, const void* src, bool src_is_device, size_t nbytes) {
  const int device = g_current;
  if (dst_is_device && !src_is_device) {
    upload(dst, src, nbytes, device);
    return;
  }
  cudaMemcpyKind kind = dst_is_device ? cudaMemcpyDeviceToDevice
                                      : (src_is_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  cudaStream_t stream = state(device).stream;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, kind, stream));
  if (!dst_is_device) CUDA_CHECK(cudaStreamSynchronize(stream));  // the host reads dst next
}

void memset_zero(void* ptr, size_t nbytes, int device) {
  CUDA_CHECK(cudaMemsetAsync(ptr, 0, nbytes, state(device).stream));
}

void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, int device) {
  kernels::cuda::convert(dst, dst_dtype, src, src_dtype, n, state(device).stream);
}

void fill(void* dst, DType dtype, int64_t n, double value, int device) {
  kernels::cuda::fill(dst, dtype, n, value, state(device).stream);
}

void accumulate(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, double alpha,
                int device) {
  kernels::cuda::accumulate(dst, dst_dtype, src, src_dtype, n, alpha, state(device).stream);
}

void scale(void* x, DType dtype, int64_t n, double alpha, int device) {
  cudaStream_t s = state(device).stream;
  POLDER_DISPATCH_FLOAT(dtype, "scale", [&] {
    kernels::cuda::scale(static_cast<scalar_t*>(x), static_cast<scalar_t*>(x), n, alpha, s);
  });
}

void* stream(int device) {
  return state(device).stream;
}

void synchronize(int device) {
  CUDA_CHECK(cudaStreamSynchronize(state(device).stream));
}

DeviceInfo device_info(int device) {
  state(device);
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  DeviceInfo info;
  info.name = p.name;
  char bus[32] = {};
  if (cudaDeviceGetPCIBusId(bus, sizeof bus, device) == cudaSuccess) info.pci_bus_id = bus;
  static const char* const hex = "0123456789abcdef";
  for (char c : p.uuid.bytes) {
    info.uuid += hex[(static_cast<unsigned char>(c) >> 4) & 15];
    info.uuid += hex[static_cast<unsigned char>(c) & 15];
  }
  info.sm_count = p.multiProcessorCount;
  info.major = p.major;
  info.minor = p.minor;
  info.total_memory = p.totalGlobalMem;
  int khz = 0;
  if (cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, device) == cudaSuccess) info.clock_ghz = khz * 1e-6;
  cudaGetLastError();
  info.bf16_peak_tflops = known_bf16_peak(info.name);
  if (info.bf16_peak_tflops == 0)
    info.bf16_peak_tflops = estimated_bf16_peak_tflops(info.major, info.minor, info.sm_count, info.clock_ghz);
  return info;
}

PoolStats pool_stats(int device) {
  cudaMemPool_t pool = pool_of(device);
  PoolStats st;
  uint64_t v = 0;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &v));
  st.used = v;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &v));
  st.used_peak = v;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &v));
  st.reserved = v;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &v));
  st.reserved_peak = v;
  return st;
}

void reset_pool_peak(int device) {
  cudaMemPool_t pool = pool_of(device);
  uint64_t zero = 0;
  CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero));
}

}  // namespace polder::cuda

#else  // !POLDER_HAVE_CUDA

namespace polder::cuda {
namespace {
[[noreturn]] void unavailable() {
  POLDER_FAIL("CUDA requested but polder was built without CUDA (POLDER_CUDA=OFF)");
}
}  // namespace
bool compiled() {
  return false;
}
int device_count() {
  return 0;
}
std::string device_count_error() {
  return "";
}
void set_device(int) {
  unavailable();
}
int current_device() {
  return 0;
}
void* device_alloc(size_t, int) {
  unavailable();
}
void device_free(void*, int) {}
void copy(void*, bool, const void*, bool, size_t) {
  unavailable();
}
void memset_zero(void*, size_t, int) {
  unavailable();
}
void convert(void*, DType, const void*, DType, int64_t, int) {
  unavailable();
}
void fill(void*, DType, int64_t, double, int) {
  unavailable();
}
void accumulate(void*, DType, const void*, DType, int64_t, double, int) {
  unavailable();
}
void scale(void*, DType, int64_t, double, int) {
  unavailable();
}
void* stream(int) {
  unavailable();
}
void synchronize(int) {
  unavailable();
}
DeviceInfo device_info(int) {
  unavailable();
}
PoolStats pool_stats(int) {
  unavailable();
}
void reset_pool_peak(int) {
  unavailable();
}
}  // namespace polder::cuda

#endif

namespace polder::cuda {

double estimated_bf16_peak_tflops(int major, int minor, int sm_count, double clock_ghz) {
  // Dense bf16 tensor-core FLOP per SM per clock: 2048 on A100 (sm_80: 312 TFLOP/s = 108 SMs x 1.41 GHz x
  // 2048), 4096 on Hopper (sm_90: 989 TFLOP/s = 132 SMs x 1.83 GHz x 4096); other parts: unknown.
  const double per_sm = major == 9 ? 4096 : (major == 8 && minor == 0 ? 2048 : 0);
  return per_sm * sm_count * clock_ghz * 1e-3;
}

}  // namespace polder::cuda
