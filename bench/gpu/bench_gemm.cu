// GEMM benchmark: polder's own bf16 kernel (kernels::cuda::gemm_own) against cuBLASLt (gemm_cublaslt) in the
// same run, in TFLOP/s (2 M N K per GEMM): square 4096 / 6144 / 8192 (NT, bf16 C), and the projections of a
// llama-1b and a llama-8b layer at M = 8192 tokens: forward y = x W^T (NT, bf16 C), dX = dY W (NN, bf16 C)
// and dW = dY^T X (TN, f32 C, beta 1: gradient accumulation). Random inputs on the device (never zeros),
// outputs poisoned first; each shape is first run once by both from the same C and compared (normalised error
// max|own - lt| / max|lt|), then timed with CUDA events, the two interleaved after warm-up, median of
// repeats. Also records what the "auto" dispatcher (kernels::cuda::gemm) chose for the shape after its own
// measurement; then, where the device runs them, the sm_90a wgmma variant (gemm_own_sm90) in a second pass
// and the sm_90a TMA kernel (gemm_own_sm90_tma: TMA ring, warp-specialised, persistent) in a third, timed
// interleaved with cuBLASLt again so that its ratio compares numbers of the same pass. Prints a table;
// --json PATH writes one record per shape (also before the TMA pass, so that a hang there keeps the rest).
// Usage (the target is bench_gpu_gemm): bench_gpu_gemm [--json PATH] [--quick] [--reps N] [--filter SUBSTR]
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/gpu/device_util.h"
#include "kernels/gemm.h"

using namespace polder;
namespace kc = polder::kernels::cuda;
namespace dev = polder::bench::gpu;
using Json = nlohmann::ordered_json;

namespace {

struct Options {
  std::string json, filter;
  bool quick = false;
  int reps = 10;
};

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--json") {
      o.json = value();
    } else if (a == "--filter") {
      o.filter = value();
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--reps") {
      const std::string v = value();
      o.reps = std::atoi(v.c_str());
      if (o.reps < 1 || o.reps > 1000) throw std::invalid_argument("--reps must be 1..1000, got '" + v + "'");
    } else {
      throw std::invalid_argument("unknown argument '" + a +
                                  "' (expected --json PATH, --quick, --reps N, --filter SUBSTR)");
    }
  }
  return o;
}

struct Shape {
  std::string name;  // "llama-1b q fwd"
  bool llm = false;  // counted in the LLM-shape summary
  bool ta = false, tb = false;
  int64_t M = 0, N = 0, K = 0;
  DType c_dtype = DType::bf16;
  float beta = 0.0f;
};

std::vector<Shape> shapes(bool quick) {
  std::vector<Shape> s;
  for (int64_t n : {4096, 6144, 8192}) {
    if (quick && n > 4096) continue;
    s.push_back({"square " + std::to_string(n), false, false, true, n, n, n, DType::bf16, 0.0f});
  }
  struct Proj {
    const char* name;
    int64_t in, out;
  };
  struct Model {
    const char* name;
    std::vector<Proj> proj;
  };
  // Per layer: q (and o, the same shape), k (and v), gate (and up), down.
  const Model models[] = {
      {"llama-1b", {{"q", 2048, 2048}, {"k", 2048, 512}, {"gate", 2048, 8192}, {"down", 8192, 2048}}},
      {"llama-8b", {{"q", 4096, 4096}, {"k", 4096, 1024}, {"gate", 4096, 14336}, {"down", 14336, 4096}}},
  };
  const int64_t tokens = 8192;
  for (const Model& m : models) {
    if (quick && std::string(m.name) == "llama-8b") continue;
    for (const Proj& p : m.proj) {
      const std::string base = std::string(m.name) + " " + p.name;
      s.push_back({base + " fwd", true, false, true, tokens, p.out, p.in, DType::bf16, 0.0f});  // x W^T
      s.push_back({base + " dX", true, false, false, tokens, p.in, p.out, DType::bf16, 0.0f});  // dY W
      s.push_back({base + " dW", true, true, false, p.out, p.in, tokens, DType::f32, 1.0f});    // dY^T X
    }
  }
  return s;
}

// stats[0] = max |a - b| (Inf where not finite), stats[1] = max |b|, as bits of non-negative floats.
template <typename T>
__global__ void diff_kernel(const T* a, const T* b, int64_t n, unsigned* stats) {
  float d = 0.0f, r = 0.0f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]);
    const float e = fabsf(x - y);
    d = e <= FLT_MAX ? fmaxf(d, e) : INFINITY;
    r = fabsf(y) <= FLT_MAX ? fmaxf(r, fabsf(y)) : r;
  }
  atomicMax(&stats[0], __float_as_uint(d));
  atomicMax(&stats[1], __float_as_uint(r));
}

double normalised_diff(const void* a, const void* b, DType dt, int64_t n) {
  unsigned* stats = nullptr;
  CUDA_CHECK(cudaMalloc(&stats, 2 * sizeof(unsigned)));
  CUDA_CHECK(cudaMemset(stats, 0, 2 * sizeof(unsigned)));
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 2048));
  if (dt == DType::f32)
    diff_kernel<float><<<blocks, 256>>>(static_cast<const float*>(a), static_cast<const float*>(b), n, stats);
  else
    diff_kernel<bf16><<<blocks, 256>>>(static_cast<const bf16*>(a), static_cast<const bf16*>(b), n, stats);
  CUDA_CHECK(cudaGetLastError());
  unsigned h[2];
  CUDA_CHECK(cudaMemcpy(h, stats, sizeof(h), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(stats));
  float d, r;
  std::memcpy(&d, &h[0], 4);
  std::memcpy(&r, &h[1], 4);
  return std::isinf(d) ? INFINITY : d / std::max(static_cast<double>(r), 1e-30);
}

struct Record {
  Shape s;
  double own_ms = NAN, lt_ms = NAN, err = NAN;
  double wgmma_ms = NAN, wgmma_err = NAN;  // the sm_90a variant, where the device runs it
  std::string wgmma_status;
  double tma_ms = NAN, tma_lt_ms = NAN, tma_err = NAN;  // the TMA kernel and cuBLASLt in the same pass
  std::string tma_status;
  std::string dispatch, status = "ok";
};

const char* layout(const Shape& s) {
  return s.ta ? (s.tb ? "TT" : "TN") : (s.tb ? "NT" : "NN");
}

double tflops(const Shape& s, double ms) {
  return 2.0 * static_cast<double>(s.M) * static_cast<double>(s.N) * static_cast<double>(s.K) / (ms * 1e-3) /
         1e12;
}

// Pass::own: gemm_own vs cuBLASLt and the dispatcher's choice; Pass::wgmma: the sm_90a variant alone;
// Pass::tma: the TMA kernel vs cuBLASLt. The sm_90a kernels run in later passes over the shapes, so that a
// fault of theirs (written without a GPU) cannot spoil the other numbers.
enum class Pass { own, wgmma, tma };

Record run(const Shape& s, int reps, Pass pass) {
  const bool wgmma = pass == Pass::wgmma, tma = pass == Pass::tma;
  Record r;
  r.s = s;
  kernels::GemmArgs g;
  g.M = s.M;
  g.N = s.N;
  g.K = s.K;
  g.ab_dtype = DType::bf16;
  g.c_dtype = s.c_dtype;
  g.trans_a = s.ta;
  g.trans_b = s.tb;
  g.lda = s.ta ? s.M : s.K;
  g.ldb = s.tb ? s.K : s.N;
  g.ldc = s.N;
  g.beta = s.beta;
  const int64_t na = s.M * s.K, nb = s.K * s.N, nc = s.M * s.N;
  const size_t celem = s.c_dtype == DType::f32 ? 4 : 2;
  void *a = nullptr, *b = nullptr, *c_own = nullptr, *c_lt = nullptr;
  auto reset_c = [&]() {
    if (s.beta != 0.0f) {  // the same accumulator for both
      dev::fill_uniform(c_own, s.c_dtype, nc, 3, -1.0f, 1.0f, nullptr);
      dev::fill_uniform(c_lt, s.c_dtype, nc, 3, -1.0f, 1.0f, nullptr);
    } else {
      dev::poison(c_own, s.c_dtype, nc, nullptr);
      dev::poison(c_lt, s.c_dtype, nc, nullptr);
    }
  };
  cudaEvent_t ev[3] = {nullptr, nullptr, nullptr};
  auto median = [](std::vector<float> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  };
  try {  // every failure, allocation included, lands in this shape's record: the others and the JSON go on
    CUDA_CHECK(cudaMalloc(&a, na * 2));
    CUDA_CHECK(cudaMalloc(&b, nb * 2));
    CUDA_CHECK(cudaMalloc(&c_own, nc * celem));
    CUDA_CHECK(cudaMalloc(&c_lt, nc * celem));
    dev::fill_uniform(a, DType::bf16, na, 1, -1.0f, 1.0f, nullptr);
    dev::fill_uniform(b, DType::bf16, nb, 2, -1.0f, 1.0f, nullptr);
    g.A = a;
    g.B = b;
    for (auto& e : ev) CUDA_CHECK(cudaEventCreate(&e));
    reset_c();
    g.C = c_lt;
    kc::gemm_cublaslt(g, nullptr);
    g.C = c_own;
    const kc::GemmKernel own = wgmma ? &kc::gemm_own_sm90 : tma ? &kc::gemm_own_sm90_tma : &kc::gemm_own;
    own(g, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const bool finite = dev::count_nonfinite(c_own, s.c_dtype, nc, nullptr) == 0;
    (wgmma ? r.wgmma_err : tma ? r.tma_err : r.err) = normalised_diff(c_own, c_lt, s.c_dtype, nc);
    if (wgmma) {
      r.wgmma_status = finite ? "ok" : "output not finite";
      std::vector<float> w;
      for (int i = 0; i < reps + 2; ++i) {  // two warm-up rounds
        CUDA_CHECK(cudaEventRecord(ev[0]));
        kc::gemm_own_sm90(g, nullptr);
        CUDA_CHECK(cudaEventRecord(ev[1]));
        CUDA_CHECK(cudaEventSynchronize(ev[1]));
        float t = 0;
        CUDA_CHECK(cudaEventElapsedTime(&t, ev[0], ev[1]));
        if (i >= 2) w.push_back(t);
      }
      r.wgmma_ms = median(w);
    } else {
      if (!finite) (tma ? r.tma_status : r.status) = "own output not finite";
      if (tma && finite) r.tma_status = "ok";
      std::vector<float> lt, mine;
      for (int i = 0; i < reps + 2; ++i) {  // two warm-up rounds, interleaved
        g.C = c_lt;
        CUDA_CHECK(cudaEventRecord(ev[0]));
        kc::gemm_cublaslt(g, nullptr);
        CUDA_CHECK(cudaEventRecord(ev[1]));
        g.C = c_own;
        own(g, nullptr);
        CUDA_CHECK(cudaEventRecord(ev[2]));
        CUDA_CHECK(cudaEventSynchronize(ev[2]));
        float t0 = 0, t1 = 0;
        CUDA_CHECK(cudaEventElapsedTime(&t0, ev[0], ev[1]));
        CUDA_CHECK(cudaEventElapsedTime(&t1, ev[1], ev[2]));
        if (i >= 2) {
          lt.push_back(t0);
          mine.push_back(t1);
        }
      }
      if (tma) {
        r.tma_lt_ms = median(lt);
        r.tma_ms = median(mine);
      } else {
        r.lt_ms = median(lt);
        r.own_ms = median(mine);
        // The auto dispatcher's own decision for this shape (it measures again, on scratch outputs).
        g.C = c_lt;
        kc::gemm(g, nullptr);
        CUDA_CHECK(cudaDeviceSynchronize());
        r.dispatch = kc::gemm_choice(g);
      }
    }
  } catch (const std::exception& e) {
    (wgmma ? r.wgmma_status : tma ? r.tma_status : r.status) = std::string("error: ") + e.what();
    (void)cudaGetLastError();
  }
  for (auto& e : ev)
    if (e) cudaEventDestroy(e);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c_own);
  cudaFree(c_lt);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    for (int i = 1; i < argc; ++i)
      if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
        std::printf("usage: bench_gpu_gemm [--json PATH] [--quick] [--reps N] [--filter SUBSTR]\n");
        return 0;
      }
    const Options opt = parse_args(argc, argv);
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    std::printf("bench_gpu_gemm on %s (sm_%d%d, %d SMs): own = kernels::cuda::gemm_own, lt = cuBLASLt\n",
                prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    std::printf("%-24s %-6s %6s %6s %6s %-5s %9s %9s %7s %9s %-9s %s\n", "shape", "layout", "M", "N", "K",
                "C", "own TF/s", "lt TF/s", "own/lt", "err", "auto", "status");
    std::vector<Record> recs;
    for (const Shape& s : shapes(opt.quick)) {
      if (!opt.filter.empty() && s.name.find(opt.filter) == std::string::npos) continue;
      Record r = run(s, opt.quick ? std::min(opt.reps, 3) : opt.reps, Pass::own);
      std::printf("%-24s %-6s %6lld %6lld %6lld %-5s %9.1f %9.1f %7.3f %9.2e %-9s %s\n", s.name.c_str(),
                  layout(s), static_cast<long long>(s.M), static_cast<long long>(s.N),
                  static_cast<long long>(s.K), s.c_dtype == DType::f32 ? "f32+" : "bf16", tflops(s, r.own_ms),
                  tflops(s, r.lt_ms), r.lt_ms / r.own_ms, r.err, r.dispatch.c_str(), r.status.c_str());
      std::fflush(stdout);
      recs.push_back(r);
    }
    if (kc::gemm_own_sm90_available()) {
      std::printf("sm_90a wgmma variant (gemm_own_sm90), same shapes:\n");
      for (Record& r : recs) {
        const Record w = run(r.s, opt.quick ? std::min(opt.reps, 3) : opt.reps, Pass::wgmma);
        r.wgmma_ms = w.wgmma_ms;
        r.wgmma_err = w.wgmma_err;
        r.wgmma_status = w.wgmma_status;
        std::printf("%-24s %-6s wgmma %9.1f TF/s, vs cuBLASLt %.3f, err %.2e %s\n", r.s.name.c_str(),
                    layout(r.s), tflops(r.s, r.wgmma_ms), r.lt_ms / r.wgmma_ms, r.wgmma_err,
                    r.wgmma_status.c_str());
        std::fflush(stdout);
      }
    }
    // Geometric mean and minimum of cuBLASLt time / own time over the LLM shapes.
    auto summary = [&](double Record::*own_ms, double Record::*lt_ms, double& min_ratio) {
      double log_sum = 0;
      int n = 0;
      min_ratio = INFINITY;
      for (const Record& r : recs)
        if (r.s.llm && std::isfinite(r.*own_ms) && std::isfinite(r.*lt_ms)) {
          const double ratio = r.*lt_ms / r.*own_ms;
          min_ratio = std::min(min_ratio, ratio);
          log_sum += std::log(ratio);
          ++n;
        }
      if (n == 0) min_ratio = NAN;
      return n ? std::exp(log_sum / n) : NAN;
    };
    auto write_json = [&]() {
      if (opt.json.empty()) return;
      double min_ratio = NAN, tma_min = NAN;
      const double geo = summary(&Record::own_ms, &Record::lt_ms, min_ratio);
      const double tma_geo = summary(&Record::tma_ms, &Record::tma_lt_ms, tma_min);
      auto num = [](double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); };
      Json j;
      j["benchmark"] = "bench_gpu_gemm";
      j["device"] = prop.name;
      j["quick"] = opt.quick;
      j["llm_ratio_geomean"] = num(geo);
      j["llm_ratio_min"] = num(min_ratio);
      j["llm_tma_ratio_geomean"] = num(tma_geo);
      j["llm_tma_ratio_min"] = num(tma_min);
      Json arr = Json::array();
      for (const Record& r : recs) {
        Json x;
        x["name"] = r.s.name;
        x["layout"] = layout(r.s);
        x["M"] = r.s.M;
        x["N"] = r.s.N;
        x["K"] = r.s.K;
        x["c_dtype"] = r.s.c_dtype == DType::f32 ? "f32" : "bf16";
        x["beta"] = r.s.beta;
        x["own_ms"] = num(r.own_ms);
        x["cublaslt_ms"] = num(r.lt_ms);
        x["own_tflops"] = num(tflops(r.s, r.own_ms));
        x["cublaslt_tflops"] = num(tflops(r.s, r.lt_ms));
        x["ratio"] = num(r.lt_ms / r.own_ms);
        x["err"] = num(r.err);
        x["wgmma_ms"] = num(r.wgmma_ms);
        x["wgmma_tflops"] = num(tflops(r.s, r.wgmma_ms));
        x["wgmma_err"] = num(r.wgmma_err);
        x["wgmma_status"] = r.wgmma_status;
        x["tma_ms"] = num(r.tma_ms);
        x["tma_tflops"] = num(tflops(r.s, r.tma_ms));
        x["tma_cublaslt_ms"] = num(r.tma_lt_ms);
        x["tma_ratio"] = num(r.tma_lt_ms / r.tma_ms);
        x["tma_err"] = num(r.tma_err);
        x["tma_status"] = r.tma_status;
        x["dispatch"] = r.dispatch;
        x["status"] = r.status;
        arr.push_back(x);
      }
      j["records"] = arr;
      std::ofstream f(opt.json);
      f << j.dump(1) << "\n";
      if (!f) throw std::runtime_error("cannot write '" + opt.json + "'");
    };
    // Written before the TMA pass too: if that kernel (written without a GPU) hangs and the step is killed,
    // the numbers above are kept.
    write_json();
    const bool have_tma = kc::gemm_own_sm90_tma_available();
    if (have_tma) {
      std::printf("sm_90a TMA kernel (gemm_own_sm90_tma) vs cuBLASLt, interleaved in this pass:\n");
      std::printf("%-24s %-6s %9s %9s %7s %9s %s\n", "shape", "layout", "tma TF/s", "lt TF/s", "tma/lt",
                  "err", "status");
      for (Record& r : recs) {
        const Record w = run(r.s, opt.quick ? std::min(opt.reps, 3) : opt.reps, Pass::tma);
        r.tma_ms = w.tma_ms;
        r.tma_lt_ms = w.tma_lt_ms;
        r.tma_err = w.tma_err;
        r.tma_status = w.tma_status;
        std::printf("%-24s %-6s %9.1f %9.1f %7.3f %9.2e %s\n", r.s.name.c_str(), layout(r.s),
                    tflops(r.s, r.tma_ms), tflops(r.s, r.tma_lt_ms), r.tma_lt_ms / r.tma_ms, r.tma_err,
                    r.tma_status.c_str());
        std::fflush(stdout);
      }
    }
    double min_ratio = NAN, tma_min = NAN;
    const double geo = summary(&Record::own_ms, &Record::lt_ms, min_ratio);
    const double tma_geo = summary(&Record::tma_ms, &Record::tma_lt_ms, tma_min);
    std::printf("LLM shapes: own / cuBLASLt throughput geometric mean %.3f, minimum %.3f (goal >= 0.9)\n",
                geo, min_ratio);
    if (have_tma)
      std::printf(
          "LLM shapes: TMA kernel / cuBLASLt throughput geometric mean %.3f, minimum %.3f (goal >= 0.9)\n",
          tma_geo, tma_min);
    write_json();
    for (const Record& r : recs)
      if (r.status != "ok") return 1;
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_gemm: %s\n", e.what());
    return 2;
  }
}
