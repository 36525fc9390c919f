// Activations on the GPU (twins of silu/swiglu in kernels/cpu/elementwise.cpp): grid-stride loops over
// 16-byte vectors when every pointer is 16-byte aligned, the scalar tail after them; arithmetic in acc_t<T>.
#include <algorithm>
#include <initializer_list>

#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"

namespace polder::kernels::cuda {
namespace {
using namespace detail;

template <typename A>
__device__ __forceinline__ A sigmoid(A x) {
  return A(1) / (A(1) + exp(-x));
}

// silu(x) = x * s;  silu'(x) = s * (1 + x * (1 - s)),  s = sigmoid(x)
struct SiluFwd {
  template <typename A>
  __device__ void operator()(A x, A& y) const {
    y = x * sigmoid(x);
  }
};
struct SiluBwd {
  template <typename A>
  __device__ void operator()(A x, A dy, A& dx) const {
    const A s = sigmoid(x);
    dx = dy * s * (A(1) + x * (A(1) - s));
  }
};
// swiglu(g, u) = silu(g) * u;  dg = dy * u * silu'(g),  du = dy * silu(g)
struct SwigluFwd {
  template <typename A>
  __device__ void operator()(A g, A u, A& y) const {
    y = g * sigmoid(g) * u;
  }
};
struct SwigluBwd {
  template <typename A>
  __device__ void operator()(A g, A u, A dy, A& dg, A& du) const {
    const A s = sigmoid(g);
    dg = dy * u * s * (A(1) + g * (A(1) - s));
    du = dy * g * s;
  }
};

template <typename T, int V, typename F>
__global__ void map1_1(F f, const T* a, T* y, int64_t n) {
  using A = acc_t<T>;
  const int64_t nv = n / V, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = start; i < nv; i += stride) {
    Vec<T, V> va = reinterpret_cast<const Vec<T, V>*>(a)[i], vy;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      A r;
      f(static_cast<A>(va.v[k]), r);
      vy.v[k] = static_cast<T>(r);
    }
    reinterpret_cast<Vec<T, V>*>(y)[i] = vy;
  }
  for (int64_t i = nv * V + start; i < n; i += stride) {
    A r;
    f(static_cast<A>(a[i]), r);
    y[i] = static_cast<T>(r);
  }
}

template <typename T, int V, typename F>
__global__ void map2_1(F f, const T* a, const T* b, T* y, int64_t n) {
  using A = acc_t<T>;
  const int64_t nv = n / V, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = start; i < nv; i += stride) {
    Vec<T, V> va = reinterpret_cast<const Vec<T, V>*>(a)[i], vb = reinterpret_cast<const Vec<T, V>*>(b)[i],
              vy;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      A r;
      f(static_cast<A>(va.v[k]), static_cast<A>(vb.v[k]), r);
      vy.v[k] = static_cast<T>(r);
    }
    reinterpret_cast<Vec<T, V>*>(y)[i] = vy;
  }
  for (int64_t i = nv * V + start; i < n; i += stride) {
    A r;
    f(static_cast<A>(a[i]), static_cast<A>(b[i]), r);
    y[i] = static_cast<T>(r);
  }
}

template <typename T, int V, typename F>
__global__ void map3_2(F f, const T* a, const T* b, const T* c, T* y, T* z, int64_t n) {
  using A = acc_t<T>;
  const int64_t nv = n / V, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = start; i < nv; i += stride) {
    Vec<T, V> va = reinterpret_cast<const Vec<T, V>*>(a)[i], vb = reinterpret_cast<const Vec<T, V>*>(b)[i];
    Vec<T, V> vc = reinterpret_cast<const Vec<T, V>*>(c)[i], vy, vz;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      A r, q;
      f(static_cast<A>(va.v[k]), static_cast<A>(vb.v[k]), static_cast<A>(vc.v[k]), r, q);
      vy.v[k] = static_cast<T>(r);
      vz.v[k] = static_cast<T>(q);
    }
    reinterpret_cast<Vec<T, V>*>(y)[i] = vy;
    reinterpret_cast<Vec<T, V>*>(z)[i] = vz;
  }
  for (int64_t i = nv * V + start; i < n; i += stride) {
    A r, q;
    f(static_cast<A>(a[i]), static_cast<A>(b[i]), static_cast<A>(c[i]), r, q);
    y[i] = static_cast<T>(r);
    z[i] = static_cast<T>(q);
  }
}

// Enough blocks to fill a large GPU several times over; the grid-stride loop covers the rest.
inline unsigned grid_for(int64_t work, int threads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, 4096)));
}

template <typename T>
bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

constexpr int kThreads = 256;

}  // namespace

template <typename T>
void silu_forward(const T* x, T* y, int64_t n, void* stream) {
  if (n == 0) return;
  constexpr int V = kVec<T>;
  if (all_aligned<T>({x, y}))
    map1_1<T, V><<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(SiluFwd{}, x, y, n);
  else
    map1_1<T, 1><<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(SiluFwd{}, x, y, n);
  check_launch("silu_forward");
}

template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n, void* stream) {
  if (n == 0) return;
  constexpr int V = kVec<T>;
  if (all_aligned<T>({x, dy, dx}))
    map2_1<T, V><<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(SiluBwd{}, x, dy, dx, n);
  else
    map2_1<T, 1><<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(SiluBwd{}, x, dy, dx, n);
  check_launch("silu_backward");
}

template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n, void* stream) {
  if (n == 0) return;
  constexpr int V = kVec<T>;
  if (all_aligned<T>({gate, up, y}))
    map2_1<T, V><<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(SwigluFwd{}, gate, up, y, n);
  else
    map2_1<T, 1><<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(SwigluFwd{}, gate, up, y, n);
  check_launch("swiglu_forward");
}

template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, int64_t n, void* stream) {
  if (n == 0) return;
  constexpr int V = kVec<T>;
  if (all_aligned<T>({gate, up, dy, dgate, dup}))
    map3_2<T, V><<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(SwigluBwd{}, gate, up, dy,
                                                                                dgate, dup, n);
  else
    map3_2<T, 1>
        <<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(SwigluBwd{}, gate, up, dy, dgate, dup, n);
  check_launch("swiglu_backward");
}

#define POLDER_INSTANTIATE(T)                                              \
  template void silu_forward<T>(const T*, T*, int64_t, void*);             \
  template void silu_backward<T>(const T*, const T*, T*, int64_t, void*);  \
  template void swiglu_forward<T>(const T*, const T*, T*, int64_t, void*); \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, void*);
POLDER_INSTANTIATE(float)
POLDER_INSTANTIATE(double)
POLDER_INSTANTIATE(bf16)
POLDER_INSTANTIATE(f16)

}  // namespace polder::kernels::cuda
