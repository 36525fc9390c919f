// CPU GEMM through oneDNN's matmul primitive: f32 uses AVX-512 brgemm or AVX2 kernels, bf16 uses AMX /
// AVX-512-BF16 where the CPU has it (oneDNN detects the ISA at run time; we never build with -march=native).
// Where oneDNN has no bf16/f16 matmul for the CPU (AVX2-only machines), operands are upcast to f32.
// Primitives are cached per (shape, layout, dtypes, alpha, beta-is-nonzero) because creating one costs far
// more than running a small one.
#include "kernels/gemm.h"

#include "kernels/cpu/isa.h"
#include "kernels/elementwise.h"

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#ifdef POLDER_HAVE_ONEDNN
#include <dnnl.hpp>
#endif

namespace polder::kernels::cpu {
namespace {

template <typename T>
void reference_typed(const GemmArgs& g) {
  using A = acc_t<T>;
  const T* a = static_cast<const T*>(g.A);
  const T* b = static_cast<const T*>(g.B);
  const int64_t M = g.M, N = g.N, K = g.K;
  auto a_at = [&](const T* base, int64_t i, int64_t k) {
    return static_cast<A>(g.trans_a ? base[k * g.lda + i] : base[i * g.lda + k]);
  };
  auto b_at = [&](const T* base, int64_t k, int64_t j) {
    return static_cast<A>(g.trans_b ? base[j * g.ldb + k] : base[k * g.ldb + j]);
  };
#pragma omp parallel for collapse(2) if (g.batch * M * N * K > 32768)
  for (int64_t p = 0; p < g.batch; ++p)
    for (int64_t i = 0; i < M; ++i) {
      std::vector<A> row(static_cast<size_t>(N), A(0));
      const T* ab = a + p * g.stride_a;
      const T* bb = b + p * g.stride_b;
      for (int64_t k = 0; k < K; ++k) {
        const A av = a_at(ab, i, k);
        for (int64_t j = 0; j < N; ++j) row[static_cast<size_t>(j)] += av * b_at(bb, k, j);
      }
      auto store = [&](auto* c) {
        using C = std::remove_pointer_t<decltype(c)>;
        C* cr = c + p * g.stride_c + i * g.ldc;
        for (int64_t j = 0; j < N; ++j) {
          A v = static_cast<A>(g.alpha) * row[static_cast<size_t>(j)];
          if (g.beta != 0.0f) v += static_cast<A>(g.beta) * static_cast<A>(cr[j]);
          cr[j] = static_cast<C>(v);
        }
      };
      if (g.c_dtype == DType::f32) {
        store(static_cast<float*>(g.C));
      } else {
        store(static_cast<T*>(g.C));
      }
    }
}

void check_args(const GemmArgs& g) {
  bool ok_ab = g.ab_dtype == DType::f32 || g.ab_dtype == DType::bf16 || g.ab_dtype == DType::f16 ||
               g.ab_dtype == DType::f64;
  if (!ok_ab) throw std::invalid_argument("gemm: unsupported A/B dtype");
  if (g.c_dtype != g.ab_dtype && g.c_dtype != DType::f32)
    throw std::invalid_argument("gemm: C must have A's dtype or be f32");
}

#ifdef POLDER_HAVE_ONEDNN
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int, int, bool, bool, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, float, bool>;

struct Entry {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul matmul;
};

struct Cache {
  // POLDER_CPU_ISA's cap must reach oneDNN before its first call (the engine).
  bool capped = (cap_onednn_isa(), true);
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::mutex mutex;
  std::map<Key, Entry> primitives;
  std::map<Key, bool> unsupported;
};

Cache& cache() {
  static Cache c;
  return c;
}

dnnl::memory::data_type dnnl_type(DType d) {
  switch (d) {
    case DType::f32:
      return dnnl::memory::data_type::f32;
    case DType::bf16:
      return dnnl::memory::data_type::bf16;
    case DType::f16:
      return dnnl::memory::data_type::f16;
    default:
      return dnnl::memory::data_type::undef;
  }
}

Key key_of(const GemmArgs& g) {
  return Key{g.M,
             g.N,
             g.K,
             g.batch,
             static_cast<int>(g.ab_dtype),
             static_cast<int>(g.c_dtype),
             g.trans_a,
             g.trans_b,
             g.lda,
             g.ldb,
             g.ldc,
             g.stride_a,
             g.stride_b,
             g.stride_c,
             g.alpha,
             g.beta != 0.0f};
}

dnnl::memory::desc desc(int64_t batch, int64_t rows, int64_t cols, bool trans, int64_t ld, int64_t stride,
                        DType d) {
  using dims = dnnl::memory::dims;
  // Logical (rows, cols); stored transposed means element (r, c) sits at c * ld + r.
  dims s2 = trans ? dims{1, ld} : dims{ld, 1};
  return dnnl::memory::desc(dims{batch, rows, cols}, dnnl_type(d), dims{stride, s2[0], s2[1]});
}

// Returns nullptr when oneDNN cannot do this combination (then the reference GEMM runs).
const Entry* primitive(const GemmArgs& g) {
  if (g.ab_dtype == DType::f64) return nullptr;
  Cache& c = cache();
  Key key = key_of(g);
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.primitives.find(key);
  if (it != c.primitives.end()) return &it->second;
  if (c.unsupported.count(key)) return nullptr;
  try {
    auto a = desc(g.batch, g.M, g.K, g.trans_a, g.lda, g.batch > 1 ? g.stride_a : g.M * g.K, g.ab_dtype);
    auto b = desc(g.batch, g.K, g.N, g.trans_b, g.ldb, g.batch > 1 ? g.stride_b : g.K * g.N, g.ab_dtype);
    auto cd = desc(g.batch, g.M, g.N, false, g.ldc, g.batch > 1 ? g.stride_c : g.M * g.N, g.c_dtype);
    dnnl::primitive_attr attr;
    if (g.alpha != 1.0f) attr.set_output_scales(0, {g.alpha});
    if (g.beta != 0.0f) {
      dnnl::post_ops ops;
      ops.append_sum(g.beta);
      attr.set_post_ops(ops);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, cd), attr, c.engine);
    auto [pos, inserted] = c.primitives.emplace(key, Entry{pd, dnnl::matmul(pd)});
    return &pos->second;
  } catch (const dnnl::error&) {
    c.unsupported[key] = true;
    return nullptr;
  }
}

void run_onednn(const GemmArgs& g, const Entry& e) {
  Cache& c = cache();
  dnnl::memory a(e.pd.src_desc(), c.engine, const_cast<void*>(g.A));
  dnnl::memory b(e.pd.weights_desc(), c.engine, const_cast<void*>(g.B));
  dnnl::memory cm(e.pd.dst_desc(), c.engine, g.C);
  thread_local dnnl::stream stream(c.engine);
  e.matmul.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, cm}});
  stream.wait();
}

// Elements spanned by a strided (batch, rows, ld) operand.
int64_t span(int64_t batch, int64_t stride, int64_t rows, int64_t ld) {
  return (batch - 1) * stride + rows * ld;
}

// CPUs without native bf16/f16 matmul in oneDNN (e.g. AVX2-only): convert the operands to f32 (O(n^2)) and
// run the f32 primitive (O(n^3)); C is converted back when it is bf16/f16.
bool run_upcast(const GemmArgs& g) {
  if (g.ab_dtype != DType::bf16 && g.ab_dtype != DType::f16) return false;
  GemmArgs f = g;
  f.ab_dtype = DType::f32;
  f.c_dtype = DType::f32;
  const Entry* e = primitive(f);
  if (!e) return false;
  const int64_t na = span(g.batch, g.stride_a, g.trans_a ? g.K : g.M, g.lda);
  const int64_t nb = span(g.batch, g.stride_b, g.trans_b ? g.N : g.K, g.ldb);
  const int64_t nc = span(g.batch, g.stride_c, g.M, g.ldc);
  // Buffers kept per thread and grown, never shrunk: fresh ones of tens of MB (a 32k head's operands) came
  // from mmap and paid a page fault per 4 KiB on every call.
  thread_local std::vector<float> a, b, c;
  auto fit = [](std::vector<float>& v, int64_t n) {
    if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  };
  fit(a, na);
  fit(b, nb);
  convert(a.data(), DType::f32, g.A, g.ab_dtype, na);
  convert(b.data(), DType::f32, g.B, g.ab_dtype, nb);
  f.A = a.data();
  f.B = b.data();
  if (g.c_dtype != DType::f32) {
    fit(c, nc);
    if (g.beta != 0.0f) convert(c.data(), DType::f32, g.C, g.c_dtype, nc);
    f.C = c.data();
  }
  run_onednn(f, *e);
  if (g.c_dtype != DType::f32) {
    // Write back only the M x N block of each batch: C's padding may belong to someone else.
    for (int64_t p = 0; p < g.batch; ++p)
      for (int64_t i = 0; i < g.M; ++i) {
        const int64_t off = p * g.stride_c + i * g.ldc;
        convert(static_cast<char*>(g.C) + off * 2, g.c_dtype, c.data() + off, DType::f32, g.N);
      }
  }
  return true;
}
#endif

}  // namespace

void gemm_reference(const GemmArgs& g) {
  check_args(g);
  switch (g.ab_dtype) {
    case DType::f32:
      reference_typed<float>(g);
      return;
    case DType::f64:
      reference_typed<double>(g);
      return;
    case DType::bf16:
      reference_typed<bf16>(g);
      return;
    case DType::f16:
      reference_typed<f16>(g);
      return;
    default:
      return;
  }
}

const char* gemm_backend([[maybe_unused]] const GemmArgs& g) {
#ifdef POLDER_HAVE_ONEDNN
  if (primitive(g)) return "onednn";
  if (g.ab_dtype == DType::bf16 || g.ab_dtype == DType::f16) {
    GemmArgs f = g;
    f.ab_dtype = f.c_dtype = DType::f32;
    if (primitive(f)) return "onednn-f32-upcast";
  }
#endif
  return "reference";
}

void gemm(const GemmArgs& g) {
  check_args(g);
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
#ifdef POLDER_HAVE_ONEDNN
  if (g.K > 0) {
    if (const Entry* mm = primitive(g)) {
      run_onednn(g, *mm);
      return;
    }
    if (run_upcast(g)) return;
  }
#endif
  gemm_reference(g);
}

}  // namespace polder::kernels::cpu
