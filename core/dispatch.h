// The one device dispatch of core (marian's DISPATCH): an op names its kernel once and the tensor's device
// picks the twin. kernels::cpu::f(args...) and kernels::cuda::f(args..., stream) take the same arguments but
// the CUDA one's trailing stream; the CUDA call is compiled only in CUDA builds, else it is one error line.
#pragma once

#include <type_traits>

#include "core/cuda_context.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/profile.h"

// How to call a kernel from an op (or the optimizer); `device` is the device of the tensors it works on:
//
//   POLDER_KERNEL(x.device(), silu_forward, x.data<scalar_t>(), y.data<scalar_t>(), n);
//     -> kernels::cpu::silu_forward(x, y, n)  or  kernels::cuda::silu_forward(x, y, n, cuda::stream(index))
//     (template kernels deduce their types from the pointers; an explicit f<P, A> would split at the comma)
//   POLDER_FUSED_KERNEL(x.device(), scalar_t, rms_norm_forward, ...);
//     the same for the fused kernels, which CUDA has for f32/bf16/f16 only: f64 on CUDA is one error line and
//     the f64 CUDA instantiation is never referenced (use it inside POLDER_DISPATCH_FLOAT).
//   dispatch::on_device("sum", x.device(), [&] { host path }, [&](void* stream) { CUDA path });
//     where the two paths differ in more than the kernel call (a result kept on the host vs on the device, a
//     different reduction); wrap kernels::cuda calls in the CUDA path in POLDER_CUDA_KERNEL(...).
//
// Every branch on a tensor's device that chooses a kernel goes through on_device; the macros are on_device
// with the two calls written out. The stream is the device's compute stream, so ops stay ordered on it.

namespace polder::dispatch {

// Runs cpu() for a host device and cuda(stream) for a CUDA device, with the device's compute stream.
// `what` (the kernel or op) names the error of a CUDA device in a build without CUDA.
template <typename CpuFn, typename CudaFn>
void on_device([[maybe_unused]] const char* what, Device device, CpuFn&& cpu, CudaFn&& cuda) {
  // train.profile: every kernel call timed under its kind (core/profile.h); off, one branch.
  const profile::Scope scope(profile::enabled() ? profile::kind_of_kernel(what) : "");
  if (!device.is_cuda()) {
    cpu();
    return;
  }
#ifdef POLDER_HAVE_CUDA
  cuda(::polder::cuda::stream(device.index));
#else
  (void)cuda;
  POLDER_FAIL("{}: a tensor is on {} but this build of polder has no CUDA kernels (POLDER_CUDA=OFF)", what,
              device);
#endif
}

// The fused CUDA kernels (rms_norm, rope, attention, embedding, cross-entropy) exist for f32, bf16 and f16;
// the generic ones (elementwise, reductions, softmax, transposes, copies, GEMM) also for f64.
template <typename T>
constexpr bool cuda_fused_dtype() {
  return !std::is_same_v<T, double>;
}

}  // namespace polder::dispatch

// kernels::cpu::kernel(args...) on the host, kernels::cuda::kernel(args..., stream) on a CUDA device.
#define POLDER_KERNEL(device, kernel, ...)                                                \
  ::polder::dispatch::on_device(                                                          \
      #kernel, (device), [&] { ::polder::kernels::cpu::kernel(__VA_ARGS__); },            \
      [&]([[maybe_unused]] void* polder_stream_) {                                        \
        POLDER_CUDA_KERNEL(::polder::kernels::cuda::kernel(__VA_ARGS__, polder_stream_)); \
      })

// POLDER_KERNEL for a fused kernel of scalar type T: on CUDA, f64 is one clear error (no instantiation used).
#define POLDER_FUSED_KERNEL(device, T, kernel, ...)                                                   \
  ::polder::dispatch::on_device(                                                                      \
      #kernel, (device), [&] { ::polder::kernels::cpu::kernel(__VA_ARGS__); },                        \
      [&]([[maybe_unused]] void* polder_stream_) {                                                    \
        if constexpr (::polder::dispatch::cuda_fused_dtype<T>()) {                                    \
          POLDER_CUDA_KERNEL(::polder::kernels::cuda::kernel(__VA_ARGS__, polder_stream_));           \
        } else {                                                                                      \
          POLDER_FAIL(                                                                                \
              "{}: f64 tensors on CUDA are not supported by the fused kernel (use f32, bf16 or f16)", \
              #kernel);                                                                               \
        }                                                                                             \
      })
