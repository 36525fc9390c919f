// Elementwise kernels on the GPU (twins of kernels/cpu/elementwise.cpp; the reductions are in reduce.cu):
// grid-stride loops over 16-byte vectors when every pointer is aligned for them, the scalar tail after them;
// arithmetic in acc_t<T>. Broadcasting and transposes decompose a flat output index (32-bit arithmetic when
// the sizes allow it); transposes of single-word rows go through 32 x 32 shared-memory tiles.
#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

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
    map1_1<T, V, SiluFwd><<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(SiluFwd{}, x, y, n);
  else
    map1_1<T, 1, SiluFwd><<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(SiluFwd{}, x, y, n);
  check_launch("silu_forward");
}

template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n, void* stream) {
  if (n == 0) return;
  constexpr int V = kVec<T>;
  if (all_aligned<T>({x, dy, dx}))
    map2_1<T, V, SiluBwd>
        <<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(SiluBwd{}, x, dy, dx, n);
  else
    map2_1<T, 1, SiluBwd><<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(SiluBwd{}, x, dy, dx, n);
  check_launch("silu_backward");
}

template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n, void* stream) {
  if (n == 0) return;
  constexpr int V = kVec<T>;
  if (all_aligned<T>({gate, up, y}))
    map2_1<T, V, SwigluFwd>
        <<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(SwigluFwd{}, gate, up, y, n);
  else
    map2_1<T, 1, SwigluFwd>
        <<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(SwigluFwd{}, gate, up, y, n);
  check_launch("swiglu_forward");
}

template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, int64_t n, void* stream) {
  if (n == 0) return;
  constexpr int V = kVec<T>;
  if (all_aligned<T>({gate, up, dy, dgate, dup}))
    map3_2<T, V, SwigluBwd><<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(
        SwigluBwd{}, gate, up, dy, dgate, dup, n);
  else
    map3_2<T, 1, SwigluBwd>
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

// ---- fill, accumulate, scale, expand_dim, binary, transpose, copy_blocks ----
namespace {

// The CPU twins convert through float (double for double and int64).
template <typename T>
using via_t = std::conditional_t<std::is_same_v<T, double> || std::is_same_v<T, int64_t>, double, float>;

template <typename T>
constexpr bool is_float_v = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                            std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

// Whether p can be accessed as Vec<T, V>.
template <typename T, int V>
bool vec_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * V) == 0;
}

template <typename D, int V>
__global__ void fill_kernel(D* dst, D value, int64_t n) {
  const int64_t nv = n / V, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  Vec<D, V> vv;
#pragma unroll
  for (int k = 0; k < V; ++k) vv.v[k] = value;
  for (int64_t i = start; i < nv; i += stride) reinterpret_cast<Vec<D, V>*>(dst)[i] = vv;
  for (int64_t i = nv * V + start; i < n; i += stride) dst[i] = value;
}

// dst = D(C(dst) + a * C(src)), C double when either side is double (as on the CPU).
template <typename D, typename S, int V>
__global__ void accumulate_kernel(D* dst, const S* src, int64_t n, double alpha) {
  using C = std::conditional_t<std::is_same_v<D, double> || std::is_same_v<S, double>, double, float>;
  const C a = static_cast<C>(alpha);
  const int64_t nv = n / V, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = start; i < nv; i += stride) {
    Vec<D, V> d = reinterpret_cast<const Vec<D, V>*>(dst)[i];
    const Vec<S, V> x = reinterpret_cast<const Vec<S, V>*>(src)[i];
#pragma unroll
    for (int k = 0; k < V; ++k)
      d.v[k] = static_cast<D>(static_cast<C>(static_cast<via_t<D>>(d.v[k])) +
                              a * static_cast<C>(static_cast<via_t<S>>(x.v[k])));
    reinterpret_cast<Vec<D, V>*>(dst)[i] = d;
  }
  for (int64_t i = nv * V + start; i < n; i += stride)
    dst[i] = static_cast<D>(static_cast<C>(static_cast<via_t<D>>(dst[i])) +
                            a * static_cast<C>(static_cast<via_t<S>>(src[i])));
}

template <typename A>
struct ScaleFn {
  A a;
  __device__ void operator()(A x, A& y) const { y = a * x; }
};

template <BinaryOp op>
struct BinaryFn {
  template <typename A>
  __device__ void operator()(A x, A y, A& r) const {
    if constexpr (op == BinaryOp::add)
      r = x + y;
    else if constexpr (op == BinaryOp::sub)
      r = x - y;
    else
      r = x * y;
  }
};

// y[(o * reduce + r) * inner + i] = alpha * x[o * inner + i], V outputs per step (inner % V == 0 on that
// path).
template <typename T, int V, typename I>
__global__ void expand_dim_kernel(const T* x, T* y, I total, I reduce_inner, I inner, double alpha) {
  using A = acc_t<T>;
  const A a = static_cast<A>(alpha);
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I e = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; e < total / V; e += stride) {
    const I j = e * V, o = j / reduce_inner, i = j % inner;
    const Vec<T, V> xv = *reinterpret_cast<const Vec<T, V>*>(x + o * inner + i);
    Vec<T, V> yv;
#pragma unroll
    for (int k = 0; k < V; ++k) yv.v[k] = static_cast<T>(a * static_cast<A>(xv.v[k]));
    *reinterpret_cast<Vec<T, V>*>(y + j) = yv;
  }
}

// A Broadcast with size-1 dims dropped and neighbours merged where both operands are contiguous across them.
Broadcast collapse(const Broadcast& bc) {
  Broadcast c = bc;
  c.ndim = 0;
  for (int d = 0; d < bc.ndim; ++d) {
    if (bc.shape[d] == 1) continue;
    const int64_t n = bc.shape[d], sa = bc.a_stride[d], sb = bc.b_stride[d];
    if (c.ndim > 0) {
      const int p = c.ndim - 1;
      if (c.a_stride[p] == sa * n && c.b_stride[p] == sb * n) {
        c.shape[p] *= n;
        c.a_stride[p] = sa;
        c.b_stride[p] = sb;
        continue;
      }
    }
    c.shape[c.ndim] = n;
    c.a_stride[c.ndim] = sa;
    c.b_stride[c.ndim] = sb;
    ++c.ndim;
  }
  return c;
}

// out[e] = op(a[offset_a(e)], b[offset_b(e)]) over the collapsed dims, one element per thread.
template <typename T, BinaryOp op, typename I>
__global__ void broadcast_kernel(const T* a, const T* b, T* out, const Broadcast bc) {
  using A = acc_t<T>;
  const I n = static_cast<I>(bc.numel), stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I e = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    I rem = e, oa = 0, ob = 0;
#pragma unroll
    for (int d = kMaxDims - 1; d >= 0; --d) {
      if (d >= bc.ndim) continue;
      const I size = static_cast<I>(bc.shape[d]), idx = rem % size;
      rem /= size;
      oa += idx * static_cast<I>(bc.a_stride[d]);
      ob += idx * static_cast<I>(bc.b_stride[d]);
    }
    A r;
    BinaryFn<op>{}(static_cast<A>(a[oa]), static_cast<A>(b[ob]), r);
    out[e] = static_cast<T>(r);
  }
}

// Transpose of words W: y (outer, d1, mid, d0, nw) from x (outer, d0, mid, d1, nw), one output word per
// thread.
template <typename W, typename I>
__global__ void transpose_words_kernel(const W* x, W* y, I total, I d0, I mid, I d1, I nw) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I e = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    I t = e / nw;
    const I w = e % nw, i = t % d0;
    t /= d0;
    const I m = t % mid;
    t /= mid;
    const I j = t % d1, o = t / d1;
    y[e] = x[(((o * d0 + i) * mid + m) * d1 + j) * nw + w];
  }
}

// Transpose of single words through a 32 x 33 shared tile: for each (o, m), the (d0, d1) matrix x[o, :, m, :]
// (row pitch mid * d1) becomes the (d1, d0) matrix y[o, :, m, :] (row pitch mid * d0). Reads and writes are
// coalesced along the tile's rows. Block (32, 8); grid (tiles of d1, tiles of d0, outer * mid), all
// grid-strided.
template <typename W>
__global__ void transpose_tiled_kernel(const W* x, W* y, int64_t outer_mid, int64_t d0, int64_t mid,
                                       int64_t d1) {
  __shared__ W tile[32][33];
  const int64_t tiles0 = (d0 + 31) / 32, tiles1 = (d1 + 31) / 32;
  for (int64_t om = blockIdx.z; om < outer_mid; om += gridDim.z) {
    const int64_t o = om / mid, m = om % mid;
    const W* xs = x + (o * d0 * mid + m) * d1;  // x[o, i, m, j] = xs[i * mid * d1 + j]
    W* ys = y + (o * d1 * mid + m) * d0;        // y[o, j, m, i] = ys[j * mid * d0 + i]
    for (int64_t t0 = blockIdx.y; t0 < tiles0; t0 += gridDim.y)
      for (int64_t t1 = blockIdx.x; t1 < tiles1; t1 += gridDim.x) {
        const int64_t i0 = t0 * 32, j0 = t1 * 32;
        __syncthreads();  // the previous tile has been written out
        for (int r = threadIdx.y; r < 32; r += blockDim.y) {
          const int64_t i = i0 + r, j = j0 + threadIdx.x;
          if (i < d0 && j < d1) tile[r][threadIdx.x] = xs[i * mid * d1 + j];
        }
        __syncthreads();
        for (int r = threadIdx.y; r < 32; r += blockDim.y) {
          const int64_t j = j0 + r, i = i0 + threadIdx.x;
          if (i < d0 && j < d1) ys[j * mid * d0 + i] = tile[threadIdx.x][r];
        }
      }
  }
}

// The widest word (16, 8, 4, 2 or 1 bytes) that divides the row and both pointers' alignment.
int word_bytes(size_t row, const void* x, const void* y) {
  const uintptr_t bits = row | reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y);
  for (int w : {16, 8, 4, 2})
    if (bits % static_cast<uintptr_t>(w) == 0) return w;
  return 1;
}

template <typename W>
struct Word {
  using type = W;
};
template <typename F>
void visit_word(int bytes, F&& f) {
  switch (bytes) {
    case 16:
      f(Word<uint4>{});
      return;
    case 8:
      f(Word<uint2>{});
      return;
    case 4:
      f(Word<uint32_t>{});
      return;
    case 2:
      f(Word<uint16_t>{});
      return;
    default:
      f(Word<uint8_t>{});
      return;
  }
}

// The largest element count indexed in uint32: a grid-stride loop's `e += stride` must not wrap past 2^32 (an
// index just below 2^32 - 1 plus a stride of up to 4096 x 1024 would, and loop forever or write out of
// bounds): below 2^31, e + stride < 2^31 + 2^22 never does.
constexpr int64_t kMaxU32 = int64_t{1} << 31;

}  // namespace

void fill(void* dst, DType dtype, int64_t n, double value, void* stream) {
  if (n <= 0) return;
  visit_dtype(dtype, [&](auto d) {
    using D = decltype(d);
    const D v = static_cast<D>(static_cast<via_t<D>>(value));
    unsigned char bytes[sizeof(D)];
    std::memcpy(bytes, &v, sizeof(D));
    bool uniform = true;
    for (size_t k = 1; k < sizeof(D); ++k) uniform = uniform && bytes[k] == bytes[0];
    if (uniform) {  // zero, and every u8 value
      check(cudaMemsetAsync(dst, bytes[0], static_cast<size_t>(n) * sizeof(D), as_stream(stream)), "fill");
      return;
    }
    constexpr int V = kVec<D>;
    D* out = static_cast<D*>(dst);
    if (vec_aligned<D, V>(dst))
      fill_kernel<D, V><<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(out, v, n);
    else
      fill_kernel<D, 1><<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(out, v, n);
    check_launch("fill");
  });
}

void accumulate(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, double alpha,
                void* stream) {
  if (n <= 0) return;
  visit_dtype(dst_dtype, [&](auto d) {
    visit_dtype(src_dtype, [&](auto s) {
      using D = decltype(d);
      using S = decltype(s);
      D* out = static_cast<D*>(dst);
      const S* in = static_cast<const S*>(src);
      if constexpr (is_float_v<D> && is_float_v<S>) {
        constexpr int V = kVec<D> < kVec<S> ? kVec<D> : kVec<S>;
        if (vec_aligned<D, V>(dst) && vec_aligned<S, V>(src)) {
          accumulate_kernel<D, S, V>
              <<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(out, in, n, alpha);
          check_launch("accumulate");
          return;
        }
      }
      accumulate_kernel<D, S, 1>
          <<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(out, in, n, alpha);
      check_launch("accumulate");
    });
  });
}

template <typename T>
void scale(const T* x, T* y, int64_t n, double alpha, void* stream) {
  if (n <= 0) return;
  constexpr int V = kVec<T>;
  const ScaleFn<acc_t<T>> f{static_cast<acc_t<T>>(alpha)};
  if (all_aligned<T>({x, y}))
    map1_1<T, V, ScaleFn<acc_t<T>>>
        <<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(f, x, y, n);
  else
    map1_1<T, 1, ScaleFn<acc_t<T>>><<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(f, x, y, n);
  check_launch("scale");
}

template <typename T>
void expand_dim(const T* x, T* y, int64_t outer, int64_t reduce, int64_t inner, double alpha, void* stream) {
  const int64_t total = outer * reduce * inner;
  if (total <= 0) return;
  constexpr int V = kVec<T>;
  auto launch = [&](auto vec, auto index) {
    constexpr int W = decltype(vec)::value;
    using I = decltype(index);
    expand_dim_kernel<T, W, I><<<grid_for(total / W, kThreads), kThreads, 0, as_stream(stream)>>>(
        x, y, static_cast<I>(total), static_cast<I>(reduce * inner), static_cast<I>(inner), alpha);
  };
  const bool vec = inner % V == 0 && all_aligned<T>({x, y});
  if (total < kMaxU32) {
    if (vec)
      launch(std::integral_constant<int, V>{}, uint32_t{});
    else
      launch(std::integral_constant<int, 1>{}, uint32_t{});
  } else {
    if (vec)
      launch(std::integral_constant<int, V>{}, int64_t{});
    else
      launch(std::integral_constant<int, 1>{}, int64_t{});
  }
  check_launch("expand_dim");
}

template <typename T>
void binary(BinaryOp op, const T* a, const T* b, T* out, const Broadcast& bc, void* stream) {
  const int64_t n = bc.numel;
  if (n <= 0) return;
  if (bc.ndim < 0 || bc.ndim > kMaxDims)
    throw std::invalid_argument("cuda binary: ndim " + std::to_string(bc.ndim) + " outside [0, " +
                                std::to_string(kMaxDims) + "]");
  auto run = [&](auto fn_op) {
    constexpr BinaryOp O = decltype(fn_op)::value;
    if (bc.same_shape) {
      constexpr int V = kVec<T>;
      if (all_aligned<T>({a, b, out}))
        map2_1<T, V, BinaryFn<O>>
            <<<grid_for(n / V, kThreads), kThreads, 0, as_stream(stream)>>>(BinaryFn<O>{}, a, b, out, n);
      else
        map2_1<T, 1, BinaryFn<O>>
            <<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(BinaryFn<O>{}, a, b, out, n);
      return;
    }
    const Broadcast c = collapse(bc);
    if (n < kMaxU32)
      broadcast_kernel<T, O, uint32_t>
          <<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(a, b, out, c);
    else
      broadcast_kernel<T, O, int64_t>
          <<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(a, b, out, c);
  };
  switch (op) {
    case BinaryOp::add:
      run(std::integral_constant<BinaryOp, BinaryOp::add>{});
      break;
    case BinaryOp::sub:
      run(std::integral_constant<BinaryOp, BinaryOp::sub>{});
      break;
    case BinaryOp::mul:
      run(std::integral_constant<BinaryOp, BinaryOp::mul>{});
      break;
  }
  check_launch("binary");
}

void transpose(const void* x, void* y, size_t elem_size, int64_t outer, int64_t d0, int64_t mid, int64_t d1,
               int64_t inner, void* stream) {
  const size_t row = static_cast<size_t>(inner) * elem_size;
  const int64_t rows = outer * d0 * mid * d1;
  if (rows <= 0 || row == 0) return;
  visit_word(word_bytes(row, x, y), [&](auto word) {
    using W = typename decltype(word)::type;
    const W* xs = static_cast<const W*>(x);
    W* ys = static_cast<W*>(y);
    const int64_t nw = static_cast<int64_t>(row / sizeof(W));
    if (nw == 1 && d0 > 1 && d1 > 1) {
      const int64_t om = outer * mid;
      const dim3 grid(static_cast<unsigned>(std::min<int64_t>((d1 + 31) / 32, 1 << 16)),
                      static_cast<unsigned>(std::min<int64_t>((d0 + 31) / 32, 65535)),
                      static_cast<unsigned>(std::min<int64_t>(om, 65535)));
      transpose_tiled_kernel<W><<<grid, dim3(32, 8), 0, as_stream(stream)>>>(xs, ys, om, d0, mid, d1);
    } else {
      const int64_t total = rows * nw;
      if (total < kMaxU32)
        transpose_words_kernel<W, uint32_t><<<grid_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
            xs, ys, static_cast<uint32_t>(total), static_cast<uint32_t>(d0), static_cast<uint32_t>(mid),
            static_cast<uint32_t>(d1), static_cast<uint32_t>(nw));
      else
        transpose_words_kernel<W, int64_t>
            <<<grid_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(xs, ys, total, d0, mid, d1, nw);
    }
  });
  check_launch("transpose");
}

void copy_blocks(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t outer,
                 int64_t block, void* stream) {
  if (outer <= 0 || block <= 0) return;
  if (outer == 1) {
    check(cudaMemcpyAsync(dst, src, static_cast<size_t>(block), cudaMemcpyDeviceToDevice, as_stream(stream)),
          "copy_blocks");
    return;
  }
  if (src_pitch < block || dst_pitch < block)
    throw std::invalid_argument("cuda copy_blocks: pitches " + std::to_string(src_pitch) + " (src) and " +
                                std::to_string(dst_pitch) + " (dst) must be at least the block of " +
                                std::to_string(block) + " bytes");
  check(cudaMemcpy2DAsync(dst, static_cast<size_t>(dst_pitch), src, static_cast<size_t>(src_pitch),
                          static_cast<size_t>(block), static_cast<size_t>(outer), cudaMemcpyDeviceToDevice,
                          as_stream(stream)),
        "copy_blocks (cudaMemcpy2DAsync)");
}

#define POLDER_INSTANTIATE_EW(T)                                                      \
  template void binary<T>(BinaryOp, const T*, const T*, T*, const Broadcast&, void*); \
  template void scale<T>(const T*, T*, int64_t, double, void*);                       \
  template void expand_dim<T>(const T*, T*, int64_t, int64_t, int64_t, double, void*);
POLDER_INSTANTIATE_EW(float)
POLDER_INSTANTIATE_EW(double)
POLDER_INSTANTIATE_EW(bf16)
POLDER_INSTANTIATE_EW(f16)

}  // namespace polder::kernels::cuda
