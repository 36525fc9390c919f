// GPU GEMM (twin of kernels/cpu/gemm.cpp): gemm() dispatches between cuBLASLt and polder's own kernel (the
// dispatcher is at the end of this file, the own kernel in gemm_sm80.cu); gemm_cublaslt() is cuBLASLt.
// Row-major is mapped onto cuBLASLt's column-major by swapping the operands, not by CUBLASLT_ORDER_ROW
// layouts (which far fewer cuBLASLt kernels accept): a row-major (R, C) matrix with leading dimension ld is
// the column-major (C, R) matrix with the same ld, so row-major C = op(A) op(B) is column-major C^T = op(B)^T
// op(A)^T, i.e. cublasLtMatmul with m = N, n = M and the operands B, A in that order, each keeping its own
// transpose flag. bf16/f16 inputs and f32 compute in fp32 (CUBLAS_COMPUTE_32F; f32 never uses TF32), f64 in
// fp64 (CUBLAS_COMPUTE_64F, C must be f64). Descriptors, layouts and the heuristic's algorithm are cached per
// (device, shape, layout, dtypes, pointer alignment, beta != 0); alpha and beta are passed by pointer at run
// time, so they are not part of the key. One cuBLASLt handle per device and one 32 MiB workspace per (device,
// stream) (cudaMallocAsync on that stream, so concurrent streams never share scratch space); both live as
// long as the process, because freeing them from static destructors after the CUDA runtime has shut down
// fails.
#include <cublasLt.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/common.cuh"  // first: it defines POLDER_HAVE_CUDA, which opens the headers' CUDA blocks

#include "kernels/attention.h"
#include "kernels/gemm.h"

namespace polder::kernels::cuda {
namespace {
using namespace detail;

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

std::string dtype_name(DType d) {
  switch (d) {
    case DType::f32:
      return "f32";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "f16";
    case DType::f64:
      return "f64";
    default:
      return "dtype#" + std::to_string(static_cast<int>(d));
  }
}

// "M 37 N 29 K 53 batch 3 bf16 -> f32 A^T (lda 40) B (ldb 29) C (ldc 29)": what every error message names.
std::string describe(const GemmArgs& g) {
  return "M " + std::to_string(g.M) + " N " + std::to_string(g.N) + " K " + std::to_string(g.K) + " batch " +
         std::to_string(g.batch) + " " + dtype_name(g.ab_dtype) + " -> " + dtype_name(g.c_dtype) + " A" +
         (g.trans_a ? "^T" : "") + " (lda " + std::to_string(g.lda) + ") B" + (g.trans_b ? "^T" : "") +
         " (ldb " + std::to_string(g.ldb) + ") C (ldc " + std::to_string(g.ldc) + ")";
}

#define CUBLAS_CHECK(call, args)                                                                          \
  do {                                                                                                    \
    cublasStatus_t st_ = (call);                                                                          \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                                     \
      throw std::runtime_error(std::string("cuda gemm: ") + #call +                                       \
                               " failed: " + cublasLtGetStatusString(st_) + " (" + describe(args) + ")"); \
  } while (0)

void check_args(const GemmArgs& g) {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument("cuda gemm: " + why + " (" + describe(g) + ")");
  };
  const bool half = g.ab_dtype == DType::bf16 || g.ab_dtype == DType::f16;
  if (!half && g.ab_dtype != DType::f32 && g.ab_dtype != DType::f64) fail("unsupported A/B dtype");
  if (g.a_f32) fail("f32 A with bf16/f16 B is CPU-only");
  if (g.c_dtype != g.ab_dtype && !(half && g.c_dtype == DType::f32))
    fail("C must have A's dtype, or be f32 when A and B are bf16/f16");
  if (g.M < 0 || g.N < 0 || g.K < 0 || g.batch < 0) fail("negative size");
  if (g.batch > INT32_MAX) fail("batch exceeds cuBLASLt's int32 batch count");
  const int64_t a_cols = g.trans_a ? g.M : g.K, b_cols = g.trans_b ? g.K : g.N;
  if (g.lda < std::max<int64_t>(a_cols, 1))
    fail("lda " + std::to_string(g.lda) + " < " + std::to_string(a_cols));
  if (g.ldb < std::max<int64_t>(b_cols, 1))
    fail("ldb " + std::to_string(g.ldb) + " < " + std::to_string(b_cols));
  if (g.ldc < std::max<int64_t>(g.N, 1)) fail("ldc " + std::to_string(g.ldc) + " < " + std::to_string(g.N));
}

cudaDataType_t cuda_type(DType d) {
  switch (d) {
    case DType::bf16:
      return CUDA_R_16BF;
    case DType::f16:
      return CUDA_R_16F;
    case DType::f64:
      return CUDA_R_64F;
    default:
      return CUDA_R_32F;
  }
}

// Largest power of two (at most 256) dividing the address: cuBLASLt picks kernels for the alignment it is
// told.
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

struct LtDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* d) const { cublasLtMatmulDescDestroy(d); }
  void operator()(cublasLtMatrixLayoutOpaque_t* l) const { cublasLtMatrixLayoutDestroy(l); }
  void operator()(cublasLtMatmulPreferenceOpaque_t* p) const { cublasLtMatmulPreferenceDestroy(p); }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, LtDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, LtDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, LtDeleter>;

struct Plan {
  MatmulDesc desc;
  Layout a, b, c;  // cuBLASLt's A, B, C: polder's B, A, C (see the header)
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int, int, bool, bool, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, uint32_t, uint32_t, uint32_t, bool>;

struct Context {
  std::mutex mutex;
  std::map<int, cublasLtHandle_t> handles;               // per device
  std::map<std::pair<int, cudaStream_t>, void*> spaces;  // workspace per (device, stream)
  std::map<Key, Plan> plans;
};

Context& context() {
  static Context* c = new Context;  // never destroyed: see the header
  return *c;
}

Key key_of(int device, const GemmArgs& g) {
  return Key{device,
             g.M,
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
             alignment(g.A),
             alignment(g.B),
             alignment(g.C),
             g.beta != 0.0f};
}

// Column-major layout of `rows` x `cols` with leading dimension ld, `batch` of them `stride` elements apart.
Layout layout(const GemmArgs& g, DType d, int64_t rows, int64_t cols, int64_t ld, int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, cuda_type(d), static_cast<uint64_t>(rows),
                                          static_cast<uint64_t>(cols), ld),
               g);
  Layout owned(l);
  if (g.batch > 1) {
    const int32_t count = static_cast<int32_t>(g.batch);
    CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)), g);
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                  sizeof(stride)),
                 g);
  }
  return owned;
}

Plan make_plan(cublasLtHandle_t handle, const GemmArgs& g) {
  Plan p;
  const bool f64 = g.ab_dtype == DType::f64;
  const cublasComputeType_t compute = f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  const cudaDataType_t scale = f64 ? CUDA_R_64F : CUDA_R_32F;
  cublasLtMatmulDesc_t d = nullptr;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&d, compute, scale), g);
  p.desc.reset(d);
  // cuBLASLt's A is polder's B: row-major B (K, N) is column-major (N, K) = op(B)^T as stored; a transposed
  // B, stored (N, K), is column-major (K, N) and needs cuBLASLt's transpose. Likewise for A.
  const cublasOperation_t op_a = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)), g);
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)), g);
  p.a = g.trans_b ? layout(g, g.ab_dtype, g.K, g.N, g.ldb, g.stride_b)
                  : layout(g, g.ab_dtype, g.N, g.K, g.ldb, g.stride_b);
  p.b = g.trans_a ? layout(g, g.ab_dtype, g.M, g.K, g.lda, g.stride_a)
                  : layout(g, g.ab_dtype, g.K, g.M, g.lda, g.stride_a);
  p.c = layout(g, g.c_dtype, g.N, g.M, g.ldc, g.stride_c);

  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), g);
  Preference owned_pref(pref);
  const uint64_t ws = kWorkspaceBytes;
  CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
      g);
  const uint32_t al_a = alignment(g.B), al_b = alignment(g.A), al_c = alignment(g.C);
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                                    sizeof(al_a)),
               g);
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
                                                    sizeof(al_b)),
               g);
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                                    sizeof(al_c)),
               g);
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c,
                                                    sizeof(al_c)),
               g);

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, d, p.a.get(), p.b.get(), p.c.get(), p.c.get(), pref, 1,
                                              &result, &found),
               g);
  if (found == 0 || result.state != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error("cuda gemm: cublasLtMatmulAlgoGetHeuristic found no algorithm (" + describe(g) +
                             ")");
  p.algo = result.algo;
  p.workspace = result.workspaceSize;
  return p;
}

// Handle, workspace and plan for this call; created on first use, under the context's lock.
struct Resources {
  cublasLtHandle_t handle;
  void* workspace;
  const Plan* plan;
};

Resources resources(const GemmArgs& g, cudaStream_t stream) {
  int device = 0;
  check(cudaGetDevice(&device), "gemm: cudaGetDevice");
  Context& c = context();
  std::lock_guard<std::mutex> lock(c.mutex);
  cublasLtHandle_t& handle = c.handles[device];
  if (!handle) CUBLAS_CHECK(cublasLtCreate(&handle), g);
  void*& ws = c.spaces[{device, stream}];
  if (!ws) check(cudaMallocAsync(&ws, kWorkspaceBytes, stream), "gemm: cudaMallocAsync (32 MiB workspace)");
  const Key key = key_of(device, g);
  auto it = c.plans.find(key);
  if (it == c.plans.end()) it = c.plans.emplace(key, make_plan(handle, g)).first;
  return {handle, ws, &it->second};
}

// C = beta * C over the M x N block of each batch, for K == 0 (cuBLASLt needs k >= 1). beta == 0 writes zeros
// without reading C, as BLAS does.
template <typename T>
__global__ void scale_c_kernel(T* c, int64_t M, int64_t N, int64_t ldc, int64_t stride, float beta) {
  using A = acc_t<T>;
  const int64_t p = blockIdx.y;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * N;
       i += int64_t(gridDim.x) * blockDim.x) {
    T& v = c[p * stride + (i / N) * ldc + i % N];
    v = beta == 0.0f ? static_cast<T>(A(0)) : static_cast<T>(static_cast<A>(v) * static_cast<A>(beta));
  }
}

template <typename T>
void scale_c(const GemmArgs& g, cudaStream_t stream) {
  const int64_t blocks = std::min<int64_t>((g.M * g.N + 255) / 256, 1024);
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(g.batch));
  scale_c_kernel<T><<<grid, 256, 0, stream>>>(static_cast<T*>(g.C), g.M, g.N, g.ldc, g.stride_c, g.beta);
  check_launch("gemm: scale_c_kernel (K = 0)");
}

}  // namespace

void gemm_cublaslt(const GemmArgs& g, void* stream_ptr) {
  check_args(g);
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
  const cudaStream_t stream = as_stream(stream_ptr);
  if (g.K == 0) {
    if (g.batch > 65535)
      throw std::invalid_argument("cuda gemm: K = 0 with batch > 65535 (" + describe(g) + ")");
    switch (g.c_dtype) {
      case DType::bf16:
        scale_c<bf16>(g, stream);
        return;
      case DType::f16:
        scale_c<f16>(g, stream);
        return;
      case DType::f64:
        scale_c<double>(g, stream);
        return;
      default:
        scale_c<float>(g, stream);
        return;
    }
  }
  const Resources r = resources(g, stream);
  const double alpha64 = g.alpha, beta64 = g.beta;
  const void* alpha = g.ab_dtype == DType::f64 ? static_cast<const void*>(&alpha64) : &g.alpha;
  const void* beta = g.ab_dtype == DType::f64 ? static_cast<const void*>(&beta64) : &g.beta;
  const Plan& p = *r.plan;
  CUBLAS_CHECK(cublasLtMatmul(r.handle, p.desc.get(), alpha, g.B, p.a.get(), g.A, p.b.get(), beta, g.C,
                              p.c.get(), g.C, p.c.get(), &p.algo, r.workspace, kWorkspaceBytes, stream),
               g);
}

// ---- The dispatcher: cuBLASLt or polder's own kernel, per shape, decided by measurement (see the header).

namespace detail {
void gemm_bf16_sm80(const GemmArgs& g, cudaStream_t stream);  // gemm_sm80.cu
void gemm_bf16_sm90(const GemmArgs& g, cudaStream_t stream);  // gemm_sm90.cu
bool gemm_sm90_available();
void gemm_bf16_sm90_tma(const GemmArgs& g, cudaStream_t stream);  // gemm_sm90_tma.cu
bool gemm_sm90_tma_available();
bool gemm_sm90_tma_supported(const GemmArgs& g);
std::string gemm_sm90_tma_unsupported(const GemmArgs& g);
}  // namespace detail

namespace {

enum class Impl : int { automatic, polder, cublaslt };
// cuBLASLt until a GPU has passed scripts/gpu/check.sh: "auto" runs the own kernels inside its first-call
// measurement, and a fault there would poison the context (issue 21).
std::atomic<int> g_impl{static_cast<int>(Impl::cublaslt)};
std::atomic<GemmKernel> g_candidate{nullptr};

// Everything the own kernel's result or speed depends on, beside the data.
using ChoiceKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int, bool, bool, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int64_t, bool, bool, bool>;

struct Choices {
  std::mutex mutex;
  std::map<ChoiceKey, bool> own;  // true: the own kernel won
};

Choices& choices() {
  static Choices* c = new Choices;  // never destroyed, like the cuBLASLt context
  return *c;
}

bool aligned16_ptr(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Batch strides matter only with several batches.
ChoiceKey choice_key(int device, const GemmArgs& g) {
  const bool b = g.batch > 1;
  return ChoiceKey{device,
                   g.M,
                   g.N,
                   g.K,
                   g.batch,
                   static_cast<int>(g.c_dtype),
                   g.trans_a,
                   g.trans_b,
                   g.lda,
                   g.ldb,
                   g.ldc,
                   b ? g.stride_a : 0,
                   b ? g.stride_b : 0,
                   b ? g.stride_c : 0,
                   g.beta != 0.0f,
                   aligned16_ptr(g.A),
                   aligned16_ptr(g.B)};
}

// The key without its device (ranks on different GPUs make the same decision): its fields, space-separated.
std::string key_text(const ChoiceKey& k) {
  std::string out;
  std::apply([&](int, const auto&... f) { ((out += (out.empty() ? "" : " ") + std::to_string(f)), ...); }, k);
  return out;
}

ChoiceKey key_from_text(int device, const std::string& text) {
  ChoiceKey k;
  std::istringstream in(text);
  std::get<0>(k) = device;
  std::apply([&](int&, auto&... f) { (in >> ... >> f); }, k);
  if (in.fail()) throw std::invalid_argument("kernel choices: '" + text + "' is not a gemm choice key");
  return k;
}

std::mutex g_agreement_mutex;
ChoiceAgreement g_agreement;

// Why the own kernel does not take these (checked) arguments on the current device; empty when it does.
std::string own_unsupported(const GemmArgs& g) {
  if (g.ab_dtype != DType::bf16) return "A and B must be bf16, got " + dtype_name(g.ab_dtype);
  if (g.c_dtype != DType::f32 && g.c_dtype != DType::bf16)
    return "C must be f32 or bf16, got " + dtype_name(g.c_dtype);
  if (g.M < 1 || g.N < 1 || g.K < 1 || g.batch < 1) return "M, N, K and batch must be >= 1";
  if (((g.M + 127) / 128) * ((g.N + 127) / 128) > INT32_MAX) return "more than 2^31 - 1 output tiles";
  int device = 0, major = 0;
  check(cudaGetDevice(&device), "gemm: cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
        "gemm: cudaDeviceGetAttribute (compute capability)");
  if (major < 8)
    return "needs compute capability 8.0 or later, the device has " + std::to_string(major) + ".x";
  return {};
}

GemmKernel candidate() {
  GemmKernel k = g_candidate.load();
  return k ? k : &gemm_own;
}

// Elements from C's first to its last element over all batches.
int64_t c_span(const GemmArgs& g) {
  return (g.batch - 1) * g.stride_c + (g.M - 1) * g.ldc + g.N;
}

// stats[0] = max |own - ref| (Inf where either is not finite), stats[1] = max |ref|, over the M x N blocks,
// as the bits of non-negative floats (which order like unsigned integers).
template <typename T>
__global__ void gemm_diff_kernel(const T* own, const T* ref, int64_t M, int64_t N, int64_t ldc, int64_t sc,
                                 int64_t batch, unsigned* stats) {
  float d = 0.0f, r = 0.0f;
  const int64_t total = batch * M * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i / (M * N), rem = i % (M * N);
    const int64_t at = p * sc + (rem / N) * ldc + rem % N;
    const float o = static_cast<float>(own[at]), v = static_cast<float>(ref[at]);
    const float e = fabsf(o - v);
    d = e <= FLT_MAX ? fmaxf(d, e) : INFINITY;  // NaN and Inf count as infinitely wrong
    r = fabsf(v) <= FLT_MAX ? fmaxf(r, fabsf(v)) : r;
  }
  atomicMax(&stats[0], __float_as_uint(d));
  atomicMax(&stats[1], __float_as_uint(r));
}

float elapsed_ms(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  check(cudaEventElapsedTime(&ms, a, b), "gemm: cudaEventElapsedTime");
  return ms;
}

// Runs cuBLASLt and the candidate on the real operands into scratch outputs, compares and times them; true
// when the candidate is correct and faster. Leaves g.C untouched.
bool decide(const GemmArgs& g, cudaStream_t stream, GemmKernel own) {
  const size_t elem = g.c_dtype == DType::f32 ? 4 : 2;
  const size_t bytes = static_cast<size_t>(c_span(g)) * elem;
  void *ref = nullptr, *mine = nullptr;
  unsigned* stats = nullptr;
  check(cudaMallocAsync(&ref, bytes, stream), "gemm: cudaMallocAsync (auto dispatch scratch)");
  check(cudaMallocAsync(&mine, bytes, stream), "gemm: cudaMallocAsync (auto dispatch scratch)");
  check(cudaMallocAsync(reinterpret_cast<void**>(&stats), 2 * sizeof(unsigned), stream),
        "gemm: cudaMallocAsync (auto dispatch scratch)");
  cudaEvent_t ev[3] = {nullptr, nullptr, nullptr};
  struct Cleanup {  // frees the scratch on every exit
    void *a, *b, *c;
    cudaEvent_t* e;
    cudaStream_t s;
    ~Cleanup() {
      for (int i = 0; i < 3; ++i)
        if (e[i]) cudaEventDestroy(e[i]);
      cudaFreeAsync(a, s);
      cudaFreeAsync(b, s);
      cudaFreeAsync(c, s);
    }
  } cleanup{ref, mine, stats, ev, stream};
  for (auto& e : ev) check(cudaEventCreate(&e), "gemm: cudaEventCreate");

  const bool acc = g.beta != 0.0f;
  if (acc) {  // both start from C's values; the real C is never written here
    check(cudaMemcpyAsync(ref, g.C, bytes, cudaMemcpyDeviceToDevice, stream),
          "gemm: cudaMemcpyAsync (scratch C)");
    check(cudaMemcpyAsync(mine, g.C, bytes, cudaMemcpyDeviceToDevice, stream),
          "gemm: cudaMemcpyAsync (scratch C)");
  } else {  // NaN: a candidate that skips elements cannot pass
    check(cudaMemsetAsync(mine, 0xFF, bytes, stream), "gemm: cudaMemsetAsync (scratch C)");
  }
  GemmArgs gr = g, gm = g;
  gr.C = ref;
  gm.C = mine;
  const double limit = g.c_dtype == DType::f32 ? 1e-3 : 1e-2;
  double err = INFINITY;
  std::string why;
  float t_lt = NAN, t_own = NAN;
  try {
    gemm_cublaslt(gr, stream);
    own(gm, stream);
    check(cudaMemsetAsync(stats, 0, 2 * sizeof(unsigned), stream), "gemm: cudaMemsetAsync (stats)");
    const int64_t blocks = std::min<int64_t>((g.batch * g.M * g.N + 255) / 256, 1024);
    if (g.c_dtype == DType::f32)
      gemm_diff_kernel<float><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
          static_cast<const float*>(mine), static_cast<const float*>(ref), g.M, g.N, g.ldc, g.stride_c,
          g.batch, stats);
    else
      gemm_diff_kernel<bf16><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
          static_cast<const bf16*>(mine), static_cast<const bf16*>(ref), g.M, g.N, g.ldc, g.stride_c, g.batch,
          stats);
    check_launch("gemm: gemm_diff_kernel");
    unsigned host[2] = {0, 0};
    check(cudaMemcpyAsync(host, stats, sizeof(host), cudaMemcpyDeviceToHost, stream),
          "gemm: cudaMemcpyAsync (stats)");
    check(cudaStreamSynchronize(stream), "gemm: cudaStreamSynchronize (auto dispatch)");
    float d = 0, r = 0;
    std::memcpy(&d, &host[0], sizeof(d));
    std::memcpy(&r, &host[1], sizeof(r));
    err = std::isinf(d) ? INFINITY : static_cast<double>(d) / std::max(static_cast<double>(r), 1e-30);
    if (err < limit) {
      constexpr int kReps = 5;
      std::vector<float> lt(kReps), mn(kReps);
      for (int i = 0; i < kReps; ++i) {  // interleaved, so clocks and L2 state treat both alike
        check(cudaEventRecord(ev[0], stream), "gemm: cudaEventRecord");
        gemm_cublaslt(gr, stream);
        check(cudaEventRecord(ev[1], stream), "gemm: cudaEventRecord");
        own(gm, stream);
        check(cudaEventRecord(ev[2], stream), "gemm: cudaEventRecord");
        check(cudaEventSynchronize(ev[2]), "gemm: cudaEventSynchronize");
        lt[i] = elapsed_ms(ev[0], ev[1]);
        mn[i] = elapsed_ms(ev[1], ev[2]);
      }
      std::sort(lt.begin(), lt.end());
      std::sort(mn.begin(), mn.end());
      t_lt = lt[kReps / 2];
      t_own = mn[kReps / 2];
    }
  } catch (const std::exception& e) {
    why = e.what();
    (void)cudaGetLastError();
  }
  const bool correct = err < limit;
  const bool own_wins = correct && why.empty() && t_own < t_lt;
  char line[256];
  std::snprintf(line, sizeof(line), "own error %.3g (limit %.0e)%s, own %.4f ms vs cuBLASLt %.4f ms -> %s",
                err, limit, correct ? "" : " REJECTED", t_own, t_lt, own_wins ? "polder" : "cublaslt");
  std::fprintf(stderr, "polder gemm auto: %s beta %g: %s%s%s\n", describe(g).c_str(), g.beta, line,
               why.empty() ? "" : ", candidate failed: ", why.c_str());
  return own_wins;
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &st), "gemm: cudaStreamIsCapturing");
  return st != cudaStreamCaptureStatusNone;
}

}  // namespace

bool gemm_own_supported(const GemmArgs& g) {
  check_args(g);
  return own_unsupported(g).empty();
}

void gemm_own(const GemmArgs& g, void* stream) {
  check_args(g);
  const std::string why = own_unsupported(g);
  if (!why.empty()) throw std::invalid_argument("cuda gemm_own: " + why + " (" + describe(g) + ")");
  static const bool want_sm90 = [] {
    const char* v = std::getenv("POLDER_GEMM_SM90");
    return v != nullptr && std::string(v) == "1";
  }();
  // Opt-in (a wrong TMA/mbarrier pipeline hangs, which no check can catch): the TMA kernel where TMA can
  // address the operands, else the simple wgmma kernel, else mma.sync.
  if (want_sm90 && detail::gemm_sm90_tma_supported(g) && detail::gemm_sm90_tma_available())
    detail::gemm_bf16_sm90_tma(g, as_stream(stream));
  else if (want_sm90 && detail::gemm_sm90_available())
    detail::gemm_bf16_sm90(g, as_stream(stream));
  else
    detail::gemm_bf16_sm80(g, as_stream(stream));
}

bool gemm_own_sm90_available() {
  return detail::gemm_sm90_available();
}

void gemm_own_sm90(const GemmArgs& g, void* stream) {
  check_args(g);
  if (!detail::gemm_sm90_available())
    throw std::invalid_argument(
        "cuda gemm_own_sm90: needs a compute capability 9.0 device and the sm_90a image of gemm_sm90.cu (" +
        describe(g) + ")");
  const std::string why = own_unsupported(g);
  if (!why.empty()) throw std::invalid_argument("cuda gemm_own_sm90: " + why + " (" + describe(g) + ")");
  detail::gemm_bf16_sm90(g, as_stream(stream));
}

bool gemm_own_sm90_tma_available() {
  return detail::gemm_sm90_tma_available();
}

void gemm_own_sm90_tma(const GemmArgs& g, void* stream) {
  check_args(g);
  // The argument checks first: they touch no device, so their messages are the same on every machine.
  const std::string why = detail::gemm_sm90_tma_unsupported(g);
  if (!why.empty()) throw std::invalid_argument("cuda gemm_own_sm90_tma: " + why + " (" + describe(g) + ")");
  if (!detail::gemm_sm90_tma_available())
    throw std::invalid_argument(
        "cuda gemm_own_sm90_tma: needs a compute capability 9.0 device and the sm_90a image of "
        "gemm_sm90_tma.cu (" +
        describe(g) + ")");
  detail::gemm_bf16_sm90_tma(g, as_stream(stream));
}

void set_gemm_impl(const std::string& impl) {
  if (impl == "auto")
    g_impl = static_cast<int>(Impl::automatic);
  else if (impl == "polder")
    g_impl = static_cast<int>(Impl::polder);
  else if (impl == "cublaslt")
    g_impl = static_cast<int>(Impl::cublaslt);
  else
    throw std::invalid_argument("cuda gemm: implementation '" + impl +
                                "' is not one of auto, polder, cublaslt");
}

const char* gemm_impl() {
  switch (static_cast<Impl>(g_impl.load())) {
    case Impl::polder:
      return "polder";
    case Impl::cublaslt:
      return "cublaslt";
    default:
      return "auto";
  }
}

void set_gemm_candidate_for_testing(GemmKernel kernel) {
  g_candidate = kernel;
}

void clear_gemm_choices() {
  Choices& c = choices();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.own.clear();
}

const char* gemm_choice(const GemmArgs& g) {
  check_args(g);
  const auto impl = static_cast<Impl>(g_impl.load());
  if (impl == Impl::cublaslt || !own_unsupported(g).empty()) return "cublaslt";
  if (impl == Impl::polder) return "polder";
  int device = 0;
  check(cudaGetDevice(&device), "gemm: cudaGetDevice");
  Choices& c = choices();
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.own.find(choice_key(device, g));
  if (it == c.own.end()) return "undecided";
  return it->second ? "polder" : "cublaslt";
}

void gemm(const GemmArgs& g, void* stream_ptr) {
  check_args(g);
  const auto impl = static_cast<Impl>(g_impl.load());
  if (impl == Impl::cublaslt || !own_unsupported(g).empty()) return gemm_cublaslt(g, stream_ptr);
  if (impl == Impl::polder) return gemm_own(g, stream_ptr);
  const cudaStream_t stream = as_stream(stream_ptr);
  int device = 0;
  check(cudaGetDevice(&device), "gemm: cudaGetDevice");
  const ChoiceKey key = choice_key(device, g);
  const GemmKernel own = candidate();
  Choices& c = choices();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.own.find(key);
    if (it != c.own.end()) return it->second ? own(g, stream_ptr) : gemm_cublaslt(g, stream_ptr);
  }
  if (capturing(stream)) return gemm_cublaslt(g, stream_ptr);  // no synchronisation inside a capture
  // decide() needs two scratch copies of C: above kDecideScratchMax (an LM head of 32k tokens x 128k
  // vocabulary would take 17 GB at the step's peak) the shape stays on cuBLASLt, unmeasured.
  constexpr size_t kDecideScratchMax = size_t{512} << 20;
  const size_t scratch = 2 * static_cast<size_t>(c_span(g)) * (g.c_dtype == DType::f32 ? 4 : 2);
  const bool own_wins =
      agree_choice("gemm " + key_text(key), [&] {
        return std::string(scratch <= kDecideScratchMax && decide(g, stream, own) ? "polder" : "cublaslt");
      }) == "polder";
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    c.own.emplace(key, own_wins);
  }
  gemm_cublaslt(g, stream_ptr);  // the first call's real output is cuBLASLt's
}

void set_choice_agreement(ChoiceAgreement agreement) {
  std::lock_guard<std::mutex> lock(g_agreement_mutex);
  g_agreement = std::move(agreement);
}

std::string agree_choice(const std::string& key, const std::function<std::string()>& measure) {
  ChoiceAgreement agreement;
  {
    std::lock_guard<std::mutex> lock(g_agreement_mutex);
    agreement = g_agreement;
  }
  return agreement ? agreement(key, measure) : measure();
}

std::string kernel_choices() {
  std::vector<std::string> lines;
  {
    Choices& c = choices();
    std::lock_guard<std::mutex> lock(c.mutex);
    for (const auto& [key, own] : c.own)
      lines.push_back("gemm " + key_text(key) + (own ? " polder" : " cublaslt"));
  }
  std::istringstream att(attention_choices_text());
  for (std::string line; std::getline(att, line);) lines.push_back(line);
  std::sort(lines.begin(), lines.end());
  lines.erase(std::unique(lines.begin(), lines.end()), lines.end());
  std::string out;
  for (const std::string& l : lines) out += l + "\n";
  return out;
}

void set_kernel_choices(const std::string& text) {
  int device = 0;
  check(cudaGetDevice(&device), "kernel choices: cudaGetDevice");
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const size_t first = line.find(' '), last = line.rfind(' ');
    if (first == std::string::npos || last == first)
      throw std::invalid_argument("kernel choices: line '" + line + "' is not '<kind> <key> <choice>'");
    const std::string kind = line.substr(0, first), key = line.substr(first + 1, last - first - 1),
                      choice = line.substr(last + 1);
    if (kind == "gemm" && (choice == "polder" || choice == "cublaslt")) {
      Choices& c = choices();
      std::lock_guard<std::mutex> lock(c.mutex);
      c.own[key_from_text(device, key)] = choice == "polder";
    } else if (kind == "attention") {
      load_attention_choice(key, choice);
    } else {
      throw std::invalid_argument("kernel choices: line '" + line + "' has an unknown kind or choice");
    }
  }
}

}  // namespace polder::kernels::cuda
