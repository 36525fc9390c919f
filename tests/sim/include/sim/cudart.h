// The emulated CUDA device's runtime API (tests/sim/sim_cudart.cpp) and the hooks the emulated libraries
// (cuBLASLt: sim_cublaslt.cpp, NCCL: sim_nccl.cpp) build on. Included by the emulator's <cuda_runtime.h>.
//
// The model (docs/ARCHITECTURE.md, "The emulated CUDA device"): one H100 SXM per process (132 SMs, 227 KiB
// of opt-in shared memory per block, compute capability 9.0, 80 GiB unless POLDER_SIM_MEMORY says otherwise).
// Every stream is a worker thread that runs its operations in issue order, asynchronously to the host and to
// the other streams; events carry a vector clock so the emulator knows what is ordered before what. Kernels
// run one at a time (the block scheduler of sim/runtime.h), library work and copies run on the stream's worker.
// Hostile where hardware is: device memory starts NaN-filled (0xFF bytes), the host thread touching device
// memory faults at once (device memory is mapped PROT_NONE except while a device operation runs), freeing a
// block on one stream while another stream's launch that used it is not ordered before the free is reported,
// bad launch configurations fail as the driver fails them, and a kernel fault is sticky: every later call
// returns cudaErrorLaunchFailure.
// Details of the emulation: device memory is counted (capacity, pool statistics) in whole 4 KiB pages, each
// block page-aligned with a PROT_NONE guard page after it; cudaStreamPerThread is the legacy stream;
// cudaStreamDestroy returns when the stream's work is done; cudaMemcpyAsync takes a pageable host source at the
// call and returns only when done into a pageable host destination (as CUDA stages them); a host wait that
// lasts a minute reports what every unfinished stream is at; at exit queued work is dropped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "sim/runtime.h"

typedef struct CUevent_st* cudaEvent_t;
typedef struct CUmemPoolHandle_st* cudaMemPool_t;
#define CUDART_CB
typedef void (*cudaHostFn_t)(void* userData);

enum : cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorCudartUnloading = 4,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorUnknown = 999,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrClockRate = 13,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaMemPoolAttr {
  cudaMemPoolReuseFollowEventDependencies = 1,
  cudaMemPoolReuseAllowOpportunistic = 2,
  cudaMemPoolReuseAllowInternalDependencies = 3,
  cudaMemPoolAttrReleaseThreshold = 4,
  cudaMemPoolAttrReservedMemCurrent = 5,
  cudaMemPoolAttrReservedMemHigh = 6,
  cudaMemPoolAttrUsedMemCurrent = 7,
  cudaMemPoolAttrUsedMemHigh = 8
};
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2
};
constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDefault = 0, cudaEventBlockingSync = 1, cudaEventDisableTiming = 2;
constexpr unsigned cudaHostAllocDefault = 0;
#define cudaStreamLegacy (reinterpret_cast<cudaStream_t>(0x1))
#define cudaStreamPerThread (reinterpret_cast<cudaStream_t>(0x2))

struct cudaUUID_t {
  char bytes[16];
};
struct cudaDeviceProp {
  char name[256];
  cudaUUID_t uuid;
  size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor;
  int regsPerBlock, warpSize, maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3];
  int clockRate, memoryClockRate, memoryBusWidth, multiProcessorCount, major, minor;
  int pciBusID, pciDeviceID, pciDomainID, l2CacheSize, maxThreadsPerMultiProcessor;
  size_t totalConstMem;
};
// numRegs 168: what ptxas gives the sm_90a kernels with setmaxnreg (__launch_bounds__(384, 1)).
struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0, constSizeBytes = 0, localSizeBytes = 0;
  int maxThreadsPerBlock = 1024, numRegs = 168, ptxVersion = 90, binaryVersion = 90;
};

// ---- the runtime API (the subset polder calls; semantics of the CUDA Runtime API reference) -----------------
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceGetPCIBusId(char* bus_id, int len, int device);
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest);

cudaError_t cudaMalloc(void** p, size_t n);
template <typename T>
cudaError_t cudaMalloc(T** p, size_t n) {  // the runtime's typed overload
  return cudaMalloc(reinterpret_cast<void**>(p), n);
}
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t stream);
template <typename T>
cudaError_t cudaMallocAsync(T** p, size_t n, cudaStream_t stream) {
  return cudaMallocAsync(reinterpret_cast<void**>(p), n, stream);
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t stream);
cudaError_t cudaMallocHost(void** p, size_t n);
template <typename T>
cudaError_t cudaMallocHost(T** p, size_t n) {
  return cudaMallocHost(reinterpret_cast<void**>(p), n);
}
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemset(void* p, int value, size_t n);
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream = nullptr);
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device);
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* stream, unsigned flags, int priority);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);
cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data);

cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

cudaFuncAttributes sim_func_attributes(const void* kernel);
template <typename K>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, K* kernel) {
  *attr = sim_func_attributes(reinterpret_cast<const void*>(kernel));
  return cudaSuccess;
}
cudaError_t sim_func_set_attribute(const void* kernel, cudaFuncAttribute attr, int value);
template <typename K>
cudaError_t cudaFuncSetAttribute(K* kernel, cudaFuncAttribute attr, int value) {
  return sim_func_set_attribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// cudaGetDriverEntryPointByVersion: only "cuTensorMapEncodeTiled" (the emulator's encoder) exists.
enum cudaDriverEntryPointQueryResult {
  cudaDriverEntryPointSuccess = 0,
  cudaDriverEntryPointSymbolNotFound = 1,
  cudaDriverEntryPointVersionNotSufficent = 2
};
enum : unsigned long long { cudaEnableDefault = 0 };
cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned version, unsigned long long flags,
                                             cudaDriverEntryPointQueryResult* status);

namespace sim {

// ---- hooks for the emulated libraries ---------------------------------------------------------------------
// Enqueues `op` on `stream` (nullptr: the legacy default stream): the stream's worker runs it after everything
// issued to the stream before, with device memory accessible to it. `what` names the operation in error and
// deadlock reports ("ncclAllReduce on comm 3", "cublasLtMatmul"). An op that fails calls sim::device_fault.
// Returns the context's sticky error (or cudaErrorInvalidResourceHandle for a destroyed stream) without
// enqueuing anything.
cudaError_t enqueue(cudaStream_t stream, std::string what, std::function<void()> op);
// As above, and the device blocks `pointers` point into are opened for the operation before it runs and
// recorded as its uses for the cross-stream free check (blocks it touches otherwise are recorded when it ends).
cudaError_t enqueue(cudaStream_t stream, std::string what, std::function<void()> op,
                    std::vector<const void*> pointers);
// The calling thread may touch device memory while a DeviceAccess lives (the emulator's own synchronous work).
struct DeviceAccess {
  DeviceAccess();
  ~DeviceAccess();
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
};
// Whether p points into device memory (a live or freed block of the emulated device).
bool is_device_pointer(const void* p);
// Library-internal device memory (NCCL buffers, cuBLASLt workspaces) drawn from the device's one capacity:
// false (and the out-of-memory report) when it does not fit. release_capacity gives it back.
bool reserve_capacity(size_t bytes, const char* who);
void release_capacity(size_t bytes);
// A fault in device work (an illegal address, a failed collective): prints "sim: <what>: <message>" on
// stderr, makes the context's error sticky (every later runtime call returns `error`) and returns.
void device_fault(cudaError_t error, const std::string& what, const std::string& message);
// The stream the calling worker is running an operation of (nullptr on the host).
cudaStream_t current_stream();
// Emulator knobs, read once from the environment: POLDER_SIM_MEMORY (bytes of device memory, suffixes K/M/G),
// POLDER_SIM_DRIVER (the driver version cudaDriverGetVersion reports, e.g. 12040; default 13000: an older
// driver than the runtime's 13000 makes every call fail with cudaErrorInsufficientDriver), POLDER_SIM_DEVICES
// (devices per process, default 1; 0: cudaGetDeviceCount fails with cudaErrorNoDevice), POLDER_SIM_SHARED_GPU=1
// (every process reports the same device UUID, as ranks sharing one GPU do).
size_t device_memory();
int driver_version();

// ---- launches (tests/sim/transform.py rewrites kernel<<<grid, block, smem, stream>>>(args) into this) --------
struct LaunchConfig {
  dim3 grid, block;
  size_t smem = 0;
  cudaStream_t stream = nullptr;
};
// Checks the configuration at once (as the driver does: errors come back from cudaGetLastError), then runs
// the kernel on the stream's worker. Arguments are converted to the kernel's parameter types and copied at the
// launch, as CUDA copies them into the parameter buffer. Pointer arguments into device memory are recorded
// for the cross-stream free check.
cudaError_t launch_async(const void* kernel, std::function<void()> body, const LaunchConfig& config,
                         std::vector<const void*> pointers);
template <typename... P, typename... A>
cudaError_t launch(void (*kernel)(P...), LaunchConfig config, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  std::vector<const void*> pointers;
  std::apply(
      [&](const auto&... p) {
        (
            [&](const auto& v) {
              if constexpr (std::is_pointer_v<std::decay_t<decltype(v)>>)
                pointers.push_back(reinterpret_cast<const void*>(v));
            }(p),
            ...);
      },
      params);
  return launch_async(
      reinterpret_cast<const void*>(kernel), [kernel, params]() mutable { std::apply(kernel, params); }, config,
      std::move(pointers));
}

}  // namespace sim
