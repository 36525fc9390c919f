// RoPE on the GPU (twin of kernels/cpu/rope.cpp): one thread per V consecutive pairs (i, i + D/2) of a head
// row, 16-byte accesses when D/2 is a multiple of V; forward and backward share the rotation with sin's sign
// flipped.
#include "kernels/cuda/common.cuh"
#include "kernels/rope.h"

namespace polder::kernels::cuda {
namespace {
using namespace detail;

// x, y: (B, T, H, D) viewed as rows of D; a row's token is (row / H) % T; the tables are (positions, D).
template <typename T, int V>
__global__ void rotate_kernel(const T* x, T* y, const acc_t<T>* cos, const acc_t<T>* sin, int64_t rows,
                              int64_t T_, int64_t H, int64_t D, int64_t pos0, acc_t<T> sign) {
  using A = acc_t<T>;
  const int64_t half = D / 2, per_row = half / V, total = rows * per_row;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = idx / per_row, i = (idx % per_row) * V;
    const int64_t t = (row / H) % T_;
    const A* c = cos + (pos0 + t) * D;
    const A* s = sin + (pos0 + t) * D;
    const T* xr = x + row * D;
    T* yr = y + row * D;
    Vec<T, V> a = *reinterpret_cast<const Vec<T, V>*>(xr + i);
    Vec<T, V> b = *reinterpret_cast<const Vec<T, V>*>(xr + i + half);
    Vec<T, V> oa, ob;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A x1 = static_cast<A>(a.v[k]), x2 = static_cast<A>(b.v[k]);
      oa.v[k] = static_cast<T>(x1 * c[i + k] - sign * x2 * s[i + k]);
      ob.v[k] = static_cast<T>(x2 * c[i + k + half] + sign * x1 * s[i + k + half]);
    }
    *reinterpret_cast<Vec<T, V>*>(yr + i) = oa;
    *reinterpret_cast<Vec<T, V>*>(yr + i + half) = ob;
  }
}

template <typename T>
void rotate(const T* x, T* y, const acc_t<T>* cos, const acc_t<T>* sin, int64_t B, int64_t T_, int64_t H,
            int64_t D, int64_t pos0, acc_t<T> sign, void* stream) {
  const int64_t rows = B * T_ * H, half = D / 2;
  if (rows == 0 || half == 0) return;
  constexpr int V = kVec<T>;
  const bool vec = half % V == 0 && aligned16(x) && aligned16(y);
  const int64_t work = rows * (vec ? half / V : half);
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((work + threads - 1) / threads, 1 << 20));
  if (vec)
    rotate_kernel<T, V>
        <<<blocks, threads, 0, as_stream(stream)>>>(x, y, cos, sin, rows, T_, H, D, pos0, sign);
  else
    rotate_kernel<T, 1>
        <<<blocks, threads, 0, as_stream(stream)>>>(x, y, cos, sin, rows, T_, H, D, pos0, sign);
  check_launch("rope");
}

}  // namespace

template <typename T>
void rope_forward(const T* x, T* y, const acc_t<T>* cos, const acc_t<T>* sin, int64_t B, int64_t T_,
                  int64_t H, int64_t D, int64_t pos0, void* stream) {
  rotate(x, y, cos, sin, B, T_, H, D, pos0, acc_t<T>(1), stream);
}

// dx = dy * cos - rotate_half(dy) * sin: the same rotation by -angle.
template <typename T>
void rope_backward(const T* dy, T* dx, const acc_t<T>* cos, const acc_t<T>* sin, int64_t B, int64_t T_,
                   int64_t H, int64_t D, int64_t pos0, void* stream) {
  rotate(dy, dx, cos, sin, B, T_, H, D, pos0, acc_t<T>(-1), stream);
}

#define POLDER_INSTANTIATE(T)                                                                               \
  template void rope_forward<T>(const T*, T*, const acc_t<T>*, const acc_t<T>*, int64_t, int64_t, int64_t,  \
                                int64_t, int64_t, void*);                                                   \
  template void rope_backward<T>(const T*, T*, const acc_t<T>*, const acc_t<T>*, int64_t, int64_t, int64_t, \
                                 int64_t, int64_t, void*);
POLDER_INSTANTIATE(float)
POLDER_INSTANTIATE(bf16)
POLDER_INSTANTIATE(f16)

}  // namespace polder::kernels::cuda
