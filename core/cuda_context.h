// The per-device CUDA context behind Storage and Tensor copies: one compute stream per device, the
// stream-ordered pool allocator (cudaMallocAsync on that stream, freed blocks kept in the pool), pinned
// staging buffers for host-to-device uploads, and the pool's memory statistics. A process drives one device
// (chosen by its local rank: set_device); kernels run on that device's stream, so every op, copy and free is
// ordered on it and the host only waits where it reads device memory. Without CUDA (built or present) these
// throw polder::Error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/dtype.h"

// POLDER_CUDA_KERNEL(call): the call of a kernels::cuda function, which exists only in CUDA builds. Without
// CUDA no tensor can live on a CUDA device (Storage refuses), so such a branch is unreachable and fails if
// reached. Kernels are called through core/dispatch.h (POLDER_KERNEL), which uses it; write it out only in
// the CUDA path of a dispatch::on_device.
#ifdef POLDER_HAVE_CUDA
#define POLDER_CUDA_KERNEL(...) __VA_ARGS__
#else
#define POLDER_CUDA_KERNEL(...) POLDER_FAIL("this build of polder has no CUDA kernels")
#endif

namespace polder::cuda {

bool compiled();     // polder was built with CUDA
int device_count();  // 0 when not compiled or no device/driver (cached after the first call)
// Why device_count() is 0 when the runtime said so: cudaGetDeviceCount's error name and text (e.g.
// "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version" on a driver
// older than the runtime); "" when it succeeded or polder has no CUDA.
std::string device_count_error();
// The device this process works on (default 0): host/device copies without a device argument use its stream.
void set_device(int device);
int current_device();

void* device_alloc(size_t nbytes, int device);
void device_free(void* ptr, int device);
// Copies between host and device memory (either side). The host may reuse `src` and read `dst` when it
// returns: device-to-host waits for the stream; host-to-device goes through a pinned staging buffer and
// returns without waiting for the device; device-to-device is ordered on the stream (no host wait).
void copy(void* dst, bool dst_is_device, const void* src, bool src_is_device, size_t nbytes);
void memset_zero(void* ptr, size_t nbytes, int device);
void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, int device);
void fill(void* dst, DType dtype, int64_t n, double value, int device);
// dst += alpha * src, converting src to dst's dtype.
void accumulate(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, double alpha,
                int device);
void scale(void* x, DType dtype, int64_t n, double alpha, int device);  // x *= alpha (floating dtypes)
void* stream(int device);                                               // the device's cudaStream_t
void synchronize(int device);

struct DeviceInfo {
  std::string name;
  std::string
      pci_bus_id;    // "0000:1B:00.0": how NVML finds the same device whatever CUDA_VISIBLE_DEVICES says
  std::string uuid;  // 32 hex digits of cudaDeviceProp::uuid: the same GPU whatever the process sees it as
  int sm_count = 0, major = 0, minor = 0;
  size_t total_memory = 0;
  double clock_ghz = 0;  // maximum SM clock
  // Dense bf16 tensor-core peak in TFLOP/s: from a table of known parts (H100 SXM 989, H100 PCIe 756, H200
  // 989, A100 312, ...) by name, else estimated from SMs x clock x the architecture's per-SM rate; 0 when
  // unknown.
  double bf16_peak_tflops = 0;
};
DeviceInfo device_info(int device);
// The dense bf16 peak of a part missing from the table, from its compute capability, SMs and maximum SM clock
// (GHz); 0 for architectures without a known per-SM rate. Compiled in every build (it needs no device).
double estimated_bf16_peak_tflops(int major, int minor, int sm_count, double clock_ghz);

// The pool's bytes: in use by tensors now / at peak since the last reset, and reserved from the driver.
struct PoolStats {
  size_t used = 0, used_peak = 0, reserved = 0, reserved_peak = 0;
};
PoolStats pool_stats(int device);
void reset_pool_peak(int device);

}  // namespace polder::cuda
