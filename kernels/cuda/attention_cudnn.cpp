// cuDNN SDPA for the attention dispatcher, loaded at run time: dlopen("libcudnn.so.9") so that a build or a
// machine without cuDNN still works (the path is then "unavailable" with a reason). Needs cuDNN >= 9.13.1, the
// first with native SDPA operation descriptors in the backend API (CUDNN_ATTR_OPERATION_SDPA_FWD_* / _BWD_*).
// Status: the loader and version check are done; the SDPA graph itself is not built yet (see docs/perf/NOTES.md,
// "Flash attention"): the descriptors of cuDNN 9.19's cudnn_graph.h carry no causal attribute (only a block
// mask), and a graph written without a GPU to try it on could not be checked. Until it is, forward/backward
// return false and the dispatcher falls back to polder's own kernel.
#include <dlfcn.h>

#include <cstddef>
#include <string>

#include "kernels/cuda/common.cuh"  // first: it defines POLDER_HAVE_CUDA, which opens attention.h's CUDA block
#include "kernels/attention.h"

namespace polder::kernels::cuda {
namespace {

constexpr size_t kMinVersion = 91301;  // 9.13.1 as cudnnGetVersion() encodes it

struct Cudnn {
  void* lib = nullptr;
  size_t version = 0;
  bool usable = false;
  std::string why;
};

std::string version_string(size_t v) {
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

Cudnn load() {
  Cudnn c;
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
    c.why = "cuDNN " + version_string(c.version) + " is older than 9.13.1 (no native SDPA descriptors)";
    return c;
  }
  c.why = "cuDNN " + version_string(c.version) +
          " loaded, but polder's SDPA graph is not built yet (backend SDPA descriptors have no causal attribute; "
          "see docs/perf/NOTES.md)";
  return c;
}

const Cudnn& cudnn() {
  static const Cudnn c = load();
  return c;
}

}  // namespace

bool cudnn_attention_available(std::string* why) {
  const Cudnn& c = cudnn();
  if (why != nullptr) *why = c.usable ? "cuDNN " + version_string(c.version) : c.why;
  return c.usable;
}

template <typename T>
bool cudnn_attention_forward(const AttentionShape&, const T*, const T*, const T*, T*, float*, void*) {
  return cudnn_attention_available();
}

template <typename T>
bool cudnn_attention_backward(const AttentionShape&, const T*, const T*, const T*, const T*, const float*, const T*,
                              T*, T*, T*, void*) {
  return cudnn_attention_available();
}

#define POLDER_INSTANTIATE_CUDNN_ATTENTION(T)                                                                    \
  template bool cudnn_attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, T*, float*,      \
                                           void*);                                                              \
  template bool cudnn_attention_backward<T>(const AttentionShape&, const T*, const T*, const T*, const T*,       \
                                            const float*, const T*, T*, T*, T*, void*);
POLDER_INSTANTIATE_CUDNN_ATTENTION(float)
POLDER_INSTANTIATE_CUDNN_ATTENTION(bf16)
POLDER_INSTANTIATE_CUDNN_ATTENTION(f16)

}  // namespace polder::kernels::cuda
