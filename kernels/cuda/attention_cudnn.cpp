// cuDNN SDPA (fused flash attention, forward and backward) for the attention dispatcher, through the cuDNN
// frontend's graph API (header-only, pinned by scripts/fetch_cudnn_frontend.sh; host code, compiled by the
// C++ compiler). The frontend runs in its dynamic-loading mode: libcudnn.so.9 is opened here with dlopen and
// handed to it, so a build or a machine without cuDNN still works (the path is then "unavailable" with a
// reason).
//
// Layout: polder's (B, T, H, D) activations are described to cuDNN as (B, H, T, D) tensors with strides
// (T H D, D, H D, 1), so nothing is permuted; K/V have Hkv heads (grouped-query attention is native to the
// SDPA node: dK/dV come back summed over each group's query heads). The saved statistic is cuDNN's "Stats"
// tensor, (B, H, T, 1) in f32: the natural-log log-sum-exp of the scaled scores, the same quantity as
// polder's lse, so a forward by one implementation and a backward by another agree (the dispatcher chooses
// per direction). Causal masks: top-left when T == S, bottom-right (queries aligned to the end of the keys,
// polder's convention) otherwise. The backward asks for cuDNN's deterministic algorithm (no dQ atomics), so
// results are repeatable.
//
// One graph per (device, dtype, B, T, S, Hq, Hkv, D, causal, scale, direction), built on first use (validate,
// operation graph, heuristics mode A, support check, plan) and cached; a shape cuDNN rejects is remembered
// with cuDNN's reason (one stderr line, once) and forward/backward then return false without writing
// anything. Declined before asking cuDNN: f32 (SDPA is bf16/f16 only), D not a multiple of 8 or above 256,
// pointers not 16-byte aligned, and causal attention with fewer keys than queries (its first T - S queries
// see no key; polder defines their output as 0 and cuDNN does not document one).
#ifndef POLDER_HAVE_CUDA
#define POLDER_HAVE_CUDA 1
#endif
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>

#include "kernels/attention.h"

#ifdef POLDER_HAVE_CUDNN_FRONTEND
#include <cudnn_frontend.h>

// The frontend's dynamic loading reads libcudnn's symbols through this handle, which the program must
// provide.
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}
#endif

namespace polder::kernels::cuda {
namespace {

constexpr size_t kMinVersion = 90000;  // cuDNN 9.0.0 as cudnnGetVersion() encodes it

struct Cudnn {
  void* lib = nullptr;
  size_t version = 0;
  bool usable = false;
  std::string why;
};

std::string version_string(size_t v) {
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

// The frontend loads a CUDA runtime of its own by soname (libcudart.so.12 before .13); make it the one this
// process already runs on, so that streams and pointers mean the same thing to both (a user's setting wins).
[[maybe_unused]] void pin_cudart_for_frontend() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&cudaGetDevice), &info) != 0 && info.dli_fname != nullptr &&
      std::strstr(info.dli_fname, "libcudart") != nullptr)
    setenv("CUDNN_FRONTEND_CUDART_LIB_NAME", info.dli_fname, 0);
}

Cudnn load() {
  Cudnn c;
#ifndef POLDER_HAVE_CUDNN_FRONTEND
  c.why =
      "polder was built without the cuDNN frontend headers (scripts/fetch_cudnn_frontend.sh fetches them; "
      "then reconfigure)";
  return c;
#else
  c.lib = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
  if (c.lib == nullptr) {
    const char* err = dlerror();
    c.why = std::string("libcudnn.so.9 not loadable (") + (err ? err : "no error text") +
            "): put cuDNN 9's folder on LD_LIBRARY_PATH";
    return c;
  }
  using GetVersion = size_t (*)();
  auto get_version = reinterpret_cast<GetVersion>(dlsym(c.lib, "cudnnGetVersion"));
  if (get_version == nullptr) {
    c.why = "libcudnn.so.9 has no cudnnGetVersion";
    return c;
  }
  c.version = get_version();
  if (c.version < kMinVersion) {
    c.why = "cuDNN " + version_string(c.version) + " is older than 9.0.0";
    return c;
  }
  pin_cudart_for_frontend();
  cudnn_frontend::cudnn_dlhandle = c.lib;
  c.usable = true;
  return c;
#endif
}

const Cudnn& cudnn() {
  static const Cudnn c = load();
  return c;
}

// Why polder does not hand these arguments to cuDNN; empty when it does.
template <typename T>
std::string declined(const AttentionShape& s, std::initializer_list<const void*> ptrs) {
  if constexpr (std::is_same_v<T, float>) {
    return "f32 (cuDNN SDPA takes bf16 or f16)";
  } else {
    if (s.D % 8 != 0 || s.D > 256)
      return "head dim " + std::to_string(s.D) + " (cuDNN: a multiple of 8, <= 256)";
    if (s.causal && s.S < s.T) return "causal with fewer keys than queries";
    for (const void* p : ptrs)
      if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return "a tensor not 16-byte aligned";
    return {};
  }
}

}  // namespace

bool cudnn_attention_available(std::string* why) {
  const Cudnn& c = cudnn();
  if (why != nullptr) *why = c.usable ? "cuDNN " + version_string(c.version) : c.why;
  return c.usable;
}

#ifndef POLDER_HAVE_CUDNN_FRONTEND

template <typename T>
bool cudnn_attention_forward(const AttentionShape&, const T*, const T*, const T*, T*, float*, void*) {
  return false;
}

template <typename T>
bool cudnn_attention_backward(const AttentionShape&, const T*, const T*, const T*, const T*, const float*,
                              const T*, T*, T*, T*, void*) {
  return false;
}

std::string cudnn_attention_validate(const AttentionShape&, DType, bool, int) {
  return "cuDNN unavailable: " + cudnn().why;
}

#else

namespace {

namespace fe = cudnn_frontend;

enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

using Key = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, uint64_t, bool>;

struct Entry {
  std::shared_ptr<fe::graph::Graph> graph;  // null: cuDNN rejected the shape (why says how)
  int64_t workspace = 0;
  std::string why;
};

struct State {
  std::mutex mutex;  // guards the maps and serialises execution on the per-device handles
  std::map<int, cudnnHandle_t> handles;
  std::map<Key, Entry> graphs;
};

State& state() {
  static State* s = new State;  // never destroyed: handles outlive static destruction order
  return *s;
}

std::string shape_text(const AttentionShape& s, bool backward) {
  return std::string(backward ? "backward" : "forward") + " B=" + std::to_string(s.B) +
         " T=" + std::to_string(s.T) + " S=" + std::to_string(s.S) + " Hq=" + std::to_string(s.Hq) +
         " Hkv=" + std::to_string(s.Hkv) + " D=" + std::to_string(s.D) + (s.causal ? " causal" : " full");
}

template <typename T>
fe::DataType_t io_type() {
  return std::is_same_v<T, bf16> ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF;
}

// (B, H, L, D) view of a (B, L, H, D) tensor.
fe::graph::Tensor_attributes bhld(const char* name, int64_t uid, int64_t B, int64_t H, int64_t L, int64_t D) {
  return fe::graph::Tensor_attributes()
      .set_name(name)
      .set_uid(uid)
      .set_dim({B, H, L, D})
      .set_stride({L * H * D, D, H * D, 1});
}

void set_bhld(const std::shared_ptr<fe::graph::Tensor_attributes>& t, const char* name, int64_t uid,
              int64_t B, int64_t H, int64_t L, int64_t D) {
  t->set_output(true).set_name(name).set_uid(uid).set_dim({B, H, L, D}).set_stride({L * H * D, D, H * D, 1});
}

template <typename Attributes>
void set_mask(Attributes& a, const AttentionShape& s) {
  if (!s.causal) return;
  if (s.T == s.S)
    a.set_causal_mask(true);
  else
    a.set_causal_mask_bottom_right(true);
}

// Validates, lowers, picks a plan and sizes its workspace; the entry's graph stays null with cuDNN's reason
// when any step fails.
Entry finish(std::shared_ptr<fe::graph::Graph> g, cudnnHandle_t handle) {
  Entry e;
  auto fail = [&](const char* step, fe::error_t st) {
    e.why = std::string(step) + ": " + st.get_message();
    return e;
  };
  fe::error_t st = g->validate();
  if (st.is_bad()) return fail("validate", st);
  st = g->build_operation_graph(handle);
  if (st.is_bad()) return fail("build_operation_graph", st);
  st = g->create_execution_plans({fe::HeurMode_t::A});
  if (st.is_bad()) return fail("create_execution_plans", st);
  st = g->check_support();
  if (st.is_bad()) return fail("check_support", st);
  st = g->build_plans();
  if (st.is_bad()) return fail("build_plans", st);
  st = g->get_workspace_size(e.workspace);
  if (st.is_bad()) return fail("get_workspace_size", st);
  e.graph = std::move(g);
  return e;
}

// The Stats tensor: (B, Hq, T, 1) f32, polder's lse layout.
fe::graph::Tensor_attributes& stats_layout(fe::graph::Tensor_attributes& t, const AttentionShape& s) {
  return t.set_name("Stats")
      .set_uid(kStats)
      .set_data_type(fe::DataType_t::FLOAT)
      .set_dim({s.B, s.Hq, s.T, 1})
      .set_stride({s.Hq * s.T, s.T, 1, 1});
}

// The graph of one direction. Forward: Q, K, V in; O and Stats out. Backward: Q, K, V, O, dO, Stats in; dQ,
// dK, dV out. sm_version > 0 describes it for that compute capability instead of the current device's.
template <typename T>
std::shared_ptr<fe::graph::Graph> describe(const AttentionShape& s, bool backward, int sm_version = 0) {
  auto g = std::make_shared<fe::graph::Graph>();
  if (sm_version > 0) g->set_sm_version(sm_version);  // before the nodes, which copy the graph's context
  g->set_io_data_type(io_type<T>())
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto q = g->tensor(bhld("Q", kQ, s.B, s.Hq, s.T, s.D));
  auto k = g->tensor(bhld("K", kK, s.B, s.Hkv, s.S, s.D));
  auto v = g->tensor(bhld("V", kV, s.B, s.Hkv, s.S, s.D));
  if (!backward) {
    auto attrs = fe::graph::SDPA_attributes()
                     .set_name("polder_sdpa_forward")
                     .set_generate_stats(true)
                     .set_attn_scale(static_cast<float>(s.scale));
    set_mask(attrs, s);
    auto [o, stats] = g->sdpa(q, k, v, attrs);
    set_bhld(o, "O", kO, s.B, s.Hq, s.T, s.D);
    stats_layout(stats->set_output(true), s);
    return g;
  }
  auto o = g->tensor(bhld("O", kO, s.B, s.Hq, s.T, s.D));
  auto dout = g->tensor(bhld("dO", kDO, s.B, s.Hq, s.T, s.D));
  fe::graph::Tensor_attributes stats_in;
  auto stats = g->tensor(stats_layout(stats_in, s));
  auto attrs = fe::graph::SDPA_backward_attributes()
                   .set_name("polder_sdpa_backward")
                   .set_attn_scale(static_cast<float>(s.scale))
                   .set_deterministic_algorithm(true);
  set_mask(attrs, s);
  auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, attrs);
  set_bhld(dq, "dQ", kDQ, s.B, s.Hq, s.T, s.D);
  set_bhld(dk, "dK", kDK, s.B, s.Hkv, s.S, s.D);
  set_bhld(dv, "dV", kDV, s.B, s.Hkv, s.S, s.D);
  return g;
}

// Builds (once) and runs the graph of this shape and direction; false when cuDNN rejects it or fails.
template <typename T>
bool run(const AttentionShape& s, bool backward, std::unordered_map<int64_t, void*> pack, void* stream) {
  if (!cudnn().usable) return false;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  uint64_t scale_bits = 0;
  std::memcpy(&scale_bits, &s.scale, sizeof scale_bits);
  const Key key{
      device,  std::is_same_v<T, bf16> ? 0 : 1, s.B, s.T, s.S, s.Hq, s.Hkv, s.D, s.causal, scale_bits,
      backward};
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  try {
    cudnnHandle_t& handle = st.handles[device];
    if (handle == nullptr && fe::detail::create_handle(&handle) != CUDNN_STATUS_SUCCESS) {
      handle = nullptr;
      std::fprintf(stderr,
                   "polder: cuDNN SDPA: cudnnCreate failed on device %d; using other implementations\n",
                   device);
      return false;
    }
    auto it = st.graphs.find(key);
    if (it == st.graphs.end()) {
      Entry e = finish(describe<T>(s, backward), handle);
      if (!e.graph)
        std::fprintf(stderr, "polder: cuDNN SDPA rejected %s: %s\n", shape_text(s, backward).c_str(),
                     e.why.c_str());
      it = st.graphs.emplace(key, std::move(e)).first;
    }
    const Entry& e = it->second;
    if (!e.graph) return false;
    const auto cs = static_cast<cudaStream_t>(stream);
    void* workspace = nullptr;
    if (e.workspace > 0 && cudaMallocAsync(&workspace, static_cast<size_t>(e.workspace), cs) != cudaSuccess) {
      std::fprintf(stderr, "polder: cuDNN SDPA: no %lld bytes of workspace for %s\n",
                   static_cast<long long>(e.workspace), shape_text(s, backward).c_str());
      return false;
    }
    bool ok = fe::detail::set_stream(handle, cs) == CUDNN_STATUS_SUCCESS;
    if (ok) {
      fe::error_t r = e.graph->execute(handle, pack, workspace);
      if (r.is_bad()) {
        std::fprintf(stderr, "polder: cuDNN SDPA execute failed for %s: %s\n",
                     shape_text(s, backward).c_str(), r.get_message().c_str());
        ok = false;
      }
    }
    if (workspace != nullptr) cudaFreeAsync(workspace, cs);
    return ok;
  } catch (const std::exception& ex) {  // the frontend throws where it cannot load a library
    std::fprintf(stderr, "polder: cuDNN SDPA failed for %s: %s\n", shape_text(s, backward).c_str(),
                 ex.what());
    st.graphs[key] = Entry{nullptr, 0, ex.what()};
    return false;
  }
}

}  // namespace

template <typename T>
bool cudnn_attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, float* lse,
                             void* stream) {
  if (!declined<T>(s, {q, k, v, o, lse}).empty()) return false;
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    return run<T>(
        s, false,
        {{kQ, const_cast<T*>(q)}, {kK, const_cast<T*>(k)}, {kV, const_cast<T*>(v)}, {kO, o}, {kStats, lse}},
        stream);
  }
}

template <typename T>
bool cudnn_attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                              const float* lse, const T* dout, T* dq, T* dk, T* dv, void* stream) {
  if (!declined<T>(s, {q, k, v, o, lse, dout, dq, dk, dv}).empty()) return false;
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    return run<T>(s, true,
                  {{kQ, const_cast<T*>(q)},
                   {kK, const_cast<T*>(k)},
                   {kV, const_cast<T*>(v)},
                   {kO, const_cast<T*>(o)},
                   {kStats, const_cast<float*>(lse)},
                   {kDO, const_cast<T*>(dout)},
                   {kDQ, dq},
                   {kDK, dk},
                   {kDV, dv}},
                  stream);
  }
}

std::string cudnn_attention_validate(const AttentionShape& s, DType dtype, bool backward, int sm_version) {
  if (!cudnn().usable) return "cuDNN unavailable: " + cudnn().why;
  try {
    auto g = dtype == DType::f16 ? describe<f16>(s, backward, sm_version)
                                 : describe<bf16>(s, backward, sm_version);
    fe::error_t st = g->validate();
    return st.is_bad() ? "validate: " + st.get_message() : std::string();
  } catch (const std::exception& ex) {
    return ex.what();
  }
}

#endif  // POLDER_HAVE_CUDNN_FRONTEND

std::string cudnn_attention_declined(const AttentionShape& s, DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return declined<bf16>(s, {});
    case DType::f16:
      return declined<f16>(s, {});
    default:
      return declined<float>(s, {});
  }
}

#define POLDER_INSTANTIATE_CUDNN_ATTENTION(T)                                                               \
  template bool cudnn_attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, T*, float*, \
                                           void*);                                                          \
  template bool cudnn_attention_backward<T>(const AttentionShape&, const T*, const T*, const T*, const T*,  \
                                            const float*, const T*, T*, T*, T*, void*);
POLDER_INSTANTIATE_CUDNN_ATTENTION(float)
POLDER_INSTANTIATE_CUDNN_ATTENTION(bf16)
POLDER_INSTANTIATE_CUDNN_ATTENTION(f16)

}  // namespace polder::kernels::cuda
