// CPU GEMM through oneDNN's matmul primitive: f32 uses AVX-512 brgemm or AVX2 kernels, bf16 uses AMX /
// AVX-512-BF16 where the CPU has it (oneDNN detects the ISA at run time; we never build with -march=native).
// Where oneDNN has no bf16/f16 matmul for the CPU (AVX2-only machines), operands are upcast to f32.
// Primitives are cached per (shape, layout, dtypes, alpha, beta-is-nonzero) because creating one costs far
// more than running a small one. Inside a WeightScope, weights come from per-scope copies (packed, or f32).
#include "kernels/gemm.h"

#include "kernels/cpu/isa.h"
#include "kernels/elementwise.h"

#include <cstdlib>
#include <map>
#include <memory>
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
  // A batch p's operand A; f32 elements where a_f32.
  auto a_at = [&](int64_t p, int64_t i, int64_t k) {
    const int64_t at = p * g.stride_a + (g.trans_a ? k * g.lda + i : i * g.lda + k);
    if (g.a_f32) return static_cast<A>(static_cast<const float*>(g.A)[at]);
    return static_cast<A>(a[at]);
  };
  auto b_at = [&](const T* base, int64_t k, int64_t j) {
    return static_cast<A>(g.trans_b ? base[j * g.ldb + k] : base[k * g.ldb + j]);
  };
#pragma omp parallel for collapse(2) if (g.batch * M * N * K > 32768)
  for (int64_t p = 0; p < g.batch; ++p)
    for (int64_t i = 0; i < M; ++i) {
      std::vector<A> row(static_cast<size_t>(N), A(0));
      const T* bb = b + p * g.stride_b;
      for (int64_t k = 0; k < K; ++k) {
        const A av = a_at(p, i, k);
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
  if (g.a_f32 && g.ab_dtype != DType::bf16 && g.ab_dtype != DType::f16)
    throw std::invalid_argument("gemm: an f32 A goes with a bf16 or f16 B only");
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
  // The same problems with B in the layout oneDNN prefers (format_tag::any); null where that is the plain one
  // or oneDNN has none.
  std::map<Key, std::unique_ptr<Entry>> packed;
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

// alpha as the output scale, beta as a sum post-op.
dnnl::primitive_attr attr_of(const GemmArgs& g) {
  dnnl::primitive_attr attr;
  if (g.alpha != 1.0f) attr.set_output_scales(0, {g.alpha});
  if (g.beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(g.beta);
    attr.set_post_ops(ops);
  }
  return attr;
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
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, cd), attr_of(g), c.engine);
    auto [pos, inserted] = c.primitives.emplace(key, Entry{pd, dnnl::matmul(pd)});
    return &pos->second;
  } catch (const dnnl::error&) {
    c.unsupported[key] = true;
    return nullptr;
  }
}

// The primitive for B in oneDNN's preferred layout (batch 1 only), or nullptr where that layout is B's own.
const Entry* packed_primitive(const GemmArgs& g) {
  Cache& c = cache();
  Key key = key_of(g);
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.packed.find(key);
  if (it != c.packed.end()) return it->second.get();
  std::unique_ptr<Entry> made;
  try {
    auto a = desc(1, g.M, g.K, g.trans_a, g.lda, g.M * g.K, g.ab_dtype);
    auto plain = desc(1, g.K, g.N, g.trans_b, g.ldb, g.K * g.N, g.ab_dtype);
    dnnl::memory::desc any({1, g.K, g.N}, dnnl_type(g.ab_dtype), dnnl::memory::format_tag::any);
    auto cd = desc(1, g.M, g.N, false, g.ldc, g.M * g.N, g.c_dtype);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, any, cd), attr_of(g), c.engine);
    if (pd.weights_desc() != plain) made = std::make_unique<Entry>(Entry{pd, dnnl::matmul(pd)});
  } catch (const dnnl::error&) {
  }
  return c.packed.emplace(key, std::move(made)).first->second.get();
}

dnnl::stream& stream() {
  thread_local dnnl::stream s(cache().engine);
  return s;
}

// weights: B already in e's weights layout (a packed copy); nullptr: B itself.
void run_onednn(const GemmArgs& g, const Entry& e, const dnnl::memory* weights = nullptr) {
  Cache& c = cache();
  dnnl::memory a(e.pd.src_desc(), c.engine, const_cast<void*>(g.A));
  dnnl::memory cm(e.pd.dst_desc(), c.engine, g.C);
  if (weights) {
    e.matmul.execute(stream(), {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, *weights}, {DNNL_ARG_DST, cm}});
  } else {
    dnnl::memory b(e.pd.weights_desc(), c.engine, const_cast<void*>(g.B));
    e.matmul.execute(stream(), {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, cm}});
  }
  stream().wait();
}

// Copies of weights kept while a WeightScope is open (kernels/gemm.h).
struct WeightCopy {
  uint64_t generation = 0;  // the b_weight it was made from; valid only while fresh
  bool fresh = false;       // made in the open scope
  bool used = false;        // asked for in the open scope: kept when it closes
  int64_t bytes = 0;
  dnnl::memory packed;     // oneDNN's layout, or
  std::vector<float> f32;  // B's elements as f32
};

struct WeightCache {
  std::mutex mutex;
  bool scope_open = false;
  WeightCacheMode mode = WeightCacheMode::off;  // the open scope's; off when none is open
  int64_t uses_per_layout = 0, budget = 0;
  std::map<std::tuple<const void*, Key>, WeightCopy> packed;
  std::map<std::tuple<const void*, int, int64_t>, WeightCopy> f32;
  WeightCacheStats stats;

  // Room for a copy of `bytes` (false: over the budget, the call runs without one).
  bool make_room(WeightCopy& copy, int64_t bytes) {
    if (stats.bytes - copy.bytes + bytes > budget) return false;
    stats.bytes += bytes - copy.bytes;
    copy.bytes = bytes;
    return true;
  }
};

WeightCache& weight_cache() {
  static WeightCache w;
  return w;
}

constexpr int64_t kMinUsesToPack = 4;

// A weight GEMM from a packed copy of B, made on its first use in the scope; false where there is no scope,
// too few uses to pay for a pack, no packed layout, or no room.
bool run_packed(const GemmArgs& g) {
  if (g.b_weight == 0 || g.batch != 1) return false;
  WeightCache& w = weight_cache();
  std::unique_lock<std::mutex> lock(w.mutex);
  if (w.mode != WeightCacheMode::pack || w.uses_per_layout < kMinUsesToPack) return false;
  lock.unlock();
  const Entry* e = packed_primitive(g);
  if (!e) return false;
  lock.lock();
  WeightCopy& copy = w.packed[{g.B, key_of(g)}];
  copy.used = true;
  if (!copy.fresh || copy.generation != g.b_weight) {
    const dnnl::memory::desc& layout = e->pd.weights_desc();
    if (!w.make_room(copy, static_cast<int64_t>(layout.get_size()))) return false;
    if (!copy.packed) copy.packed = dnnl::memory(layout, cache().engine);
    dnnl::memory plain(desc(1, g.K, g.N, g.trans_b, g.ldb, g.K * g.N, g.ab_dtype), cache().engine,
                       const_cast<void*>(g.B));
    dnnl::reorder(plain, copy.packed).execute(stream(), plain, copy.packed);
    stream().wait();
    copy.fresh = true;
    copy.generation = g.b_weight;
    ++w.stats.copies;
  }
  ++w.stats.reuses;
  const dnnl::memory* weights = &copy.packed;
  lock.unlock();  // entries live until the scope closes
  run_onednn(g, *e, weights);
  return true;
}

// Elements spanned by a strided (batch, rows, ld) operand.
int64_t span(int64_t batch, int64_t stride, int64_t rows, int64_t ld) {
  return (batch - 1) * stride + rows * ld;
}

// bf16 runs as f32 where oneDNN has no native bf16 kernels: it would take them anyway on AVX-512 CPUs
// without AVX512-BF16 (Skylake/Cascade Lake class), emulated, at 2.3x an f32 step's time (tiny shape with
// POLDER_CPU_ISA=avx512 on Zen 4: 2.0 s against 0.85 s; as f32 GEMMs 0.93 s).
bool upcast_first(const GemmArgs& g) {
  static const bool native = cpu_native_bf16();
  return g.ab_dtype == DType::bf16 && !native;
}

// B (nb elements) as f32 from the scope's copy, made on the weight's first use; nullptr where there is no
// scope or no room.
const float* f32_weight(const GemmArgs& g, int64_t nb) {
  if (g.b_weight == 0) return nullptr;
  WeightCache& w = weight_cache();
  std::lock_guard<std::mutex> lock(w.mutex);
  if (w.mode == WeightCacheMode::off) return nullptr;
  WeightCopy& copy = w.f32[{g.B, static_cast<int>(g.ab_dtype), nb}];
  copy.used = true;
  if (!copy.fresh || copy.generation != g.b_weight) {
    if (!w.make_room(copy, nb * static_cast<int64_t>(sizeof(float)))) return nullptr;
    copy.f32.resize(static_cast<size_t>(nb));
    convert(copy.f32.data(), DType::f32, g.B, g.ab_dtype, nb);
    copy.fresh = true;
    copy.generation = g.b_weight;
    ++w.stats.copies;
  }
  ++w.stats.reuses;
  return copy.f32.data();
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
  f.a_f32 = false;
  if (!g.a_f32) {
    fit(a, na);
    convert(a.data(), DType::f32, g.A, g.ab_dtype, na);
    f.A = a.data();
  }
  f.B = f32_weight(g, nb);
  if (!f.B) {
    fit(b, nb);
    convert(b.data(), DType::f32, g.B, g.ab_dtype, nb);
    f.B = b.data();
  }
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
  if (!upcast_first(g) && !g.a_f32 && primitive(g)) return "onednn";
  if (g.ab_dtype == DType::bf16 || g.ab_dtype == DType::f16) {
    GemmArgs f = g;
    f.ab_dtype = f.c_dtype = DType::f32;
    if (primitive(f)) return "onednn-f32-upcast";
  }
#endif
  return "reference";
}

bool gemm_converts(DType ab) {
  auto probe = [](DType d) {
    GemmArgs g;
    g.M = g.N = g.K = 64;
    g.lda = g.ldb = g.ldc = 64;
    g.ab_dtype = g.c_dtype = d;
    return std::string(gemm_backend(g)) == "onednn-f32-upcast";
  };
  static const bool bf16 = probe(DType::bf16), f16 = probe(DType::f16);  // fixed for the process
  return ab == DType::bf16 ? bf16 : ab == DType::f16 ? f16 : false;
}

void gemm(const GemmArgs& g) {
  check_args(g);
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
#ifdef POLDER_HAVE_ONEDNN
  if (g.K > 0) {
    if (const Entry* mm = upcast_first(g) || g.a_f32 ? nullptr : primitive(g)) {
      if (!run_packed(g)) run_onednn(g, *mm);
      return;
    }
    if (run_upcast(g)) return;
  }
#endif
  gemm_reference(g);
}

WeightCacheMode weight_cache_mode_from_env() {
  const char* env = std::getenv("POLDER_CPU_WEIGHT_CACHE");
  const std::string v = env ? env : "";
  if (v.empty() || v == "convert") return WeightCacheMode::convert;
  if (v == "off") return WeightCacheMode::off;
  if (v == "pack") return WeightCacheMode::pack;
  throw std::invalid_argument("POLDER_CPU_WEIGHT_CACHE '" + v +
                              "' is unknown (expected off, convert or pack)");
}

WeightScope::WeightScope([[maybe_unused]] int64_t uses_per_layout, [[maybe_unused]] WeightCacheMode mode,
                         [[maybe_unused]] int64_t budget_bytes) {
#ifdef POLDER_HAVE_ONEDNN
  WeightCache& w = weight_cache();
  std::lock_guard<std::mutex> lock(w.mutex);
  if (w.scope_open) throw std::logic_error("WeightScope: a scope is already open (scopes do not nest)");
  w.scope_open = true;
  w.mode = mode;
  w.uses_per_layout = uses_per_layout;
  w.budget = budget_bytes;
#endif
}

WeightScope::~WeightScope() {
#ifdef POLDER_HAVE_ONEDNN
  WeightCache& w = weight_cache();
  std::lock_guard<std::mutex> lock(w.mutex);
  auto sweep = [&w](auto& copies) {
    for (auto it = copies.begin(); it != copies.end();) {
      WeightCopy& copy = it->second;
      if (!copy.used) {
        w.stats.bytes -= copy.bytes;
        it = copies.erase(it);
        continue;
      }
      copy.used = copy.fresh = false;
      ++it;
    }
  };
  sweep(w.packed);
  sweep(w.f32);
  w.scope_open = false;
  w.mode = WeightCacheMode::off;
#endif
}

WeightCacheStats weight_cache_stats() {
#ifdef POLDER_HAVE_ONEDNN
  WeightCache& w = weight_cache();
  std::lock_guard<std::mutex> lock(w.mutex);
  return w.stats;
#else
  return {};
#endif
}

}  // namespace polder::kernels::cpu
