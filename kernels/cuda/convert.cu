// Elementwise dtype conversion on the GPU through float/double, one thread per element (grid-stride loop).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/cuda/convert.h"

namespace polder::kernels::cuda {
namespace {

template <typename T>
struct Via {
  using type = float;
};
template <>
struct Via<double> {
  using type = double;
};
template <>
struct Via<int64_t> {
  using type = double;
};

template <typename D, typename S>
__global__ void convert_kernel(D* dst, const S* src, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    using V = typename Via<S>::type;
    dst[i] = static_cast<D>(static_cast<V>(src[i]));
  }
}

}  // namespace

void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, void* stream) {
  if (n == 0) return;
  int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 65535));
  visit_dtype(dst_dtype, [&](auto d) {
    visit_dtype(src_dtype, [&](auto s) {
      using D = decltype(d);
      using S = decltype(s);
      convert_kernel<D, S><<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<D*>(dst), static_cast<const S*>(src), n);
    });
  });
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("cuda convert: ") + cudaGetErrorString(err));
}

}  // namespace polder::kernels::cuda
