// The per-device CUDA context behind Storage and Tensor copies: a stream per device and the stream-ordered
// pool allocator (cudaMallocAsync). Without CUDA (built or present) these throw polder::Error.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace polder::cuda {

bool compiled();      // polder was built with CUDA
int device_count();   // 0 when not compiled or no device/driver
void* device_alloc(size_t nbytes, int device);
void device_free(void* ptr, int device);
// Copies between host and device memory (either side); synchronous with respect to the host.
void copy(void* dst, bool dst_is_device, const void* src, bool src_is_device, size_t nbytes);
void memset_zero(void* ptr, size_t nbytes, int device);
void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, int device);
void* stream(int device);  // the device's cudaStream_t
void synchronize(int device);

}  // namespace polder::cuda
