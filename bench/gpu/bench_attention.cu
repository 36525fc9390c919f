// Attention benchmark: TFLOP/s of polder's flash kernel, cuDNN SDPA (when available), the baseline kernel and
// the dispatcher's auto choice, forward and backward, d = 64 and 128, seq 512..16k, causal and not. FLOPs: 4
// b s^2 h d forward (halved when causal), backward 2.5x the forward. b s = 16k tokens per case, h d = 2048
// (MHA); the baseline only up to seq 2048 (it is far slower). CUDA events after warm-up, median of repeats,
// random inputs, outputs poisoned with NaN first and checked for non-finite values afterwards. PyTorch SDPA
// on the same shapes is bench/gpu/attention_torch.py (merged by scripts/gpu/check.sh). Prints a table; --json
// PATH writes the records. On an sm_90a device a last pass times the never-run Hopper forward
// (flash_attention_sm90.cu) by name as "polder_sm90" (forward only; its normalised error against polder's
// mma.sync forward on the same inputs in the record), after the JSON of everything else is written, so that a
// trap or hang there keeps the other numbers. Usage: bench_gpu_attention [--json PATH] [--quick]
// [--max-seconds S]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/gpu/device_util.h"
#include "kernels/attention.h"

using namespace polder;
namespace kc = polder::kernels::cuda;

namespace {

struct Options {
  std::string json;
  bool quick = false;
  double max_seconds = 50;
};

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

struct Record {
  std::string impl, dir;
  int64_t d, seq, batch, heads;
  bool causal;
  double ms, tflops;
  double error = NAN;  // polder_sm90: normalised error against polder's forward
};

// max |a - b| / max |b| over n bf16 device values (NaN -> infinity).
double device_nerr(const bf16* a, const bf16* b, int64_t n) {
  std::vector<bf16> ha(static_cast<size_t>(n)), hb(static_cast<size_t>(n));
  check(cudaMemcpy(ha.data(), a, ha.size() * sizeof(bf16), cudaMemcpyDeviceToHost), "copy");
  check(cudaMemcpy(hb.data(), b, hb.size() * sizeof(bf16), cudaMemcpyDeviceToHost), "copy");
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < ha.size(); ++i) {
    const double x = static_cast<float>(ha[i]), y = static_cast<float>(hb[i]);
    if (!std::isfinite(x) || !std::isfinite(y)) return INFINITY;
    num = std::max(num, std::abs(x - y));
    den = std::max(den, std::abs(y));
  }
  return num / den;
}

// Median of `reps` event-timed runs after one warm-up run.
double time_ms(const std::function<void()>& f, int reps) {
  f();
  check(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    check(cudaEventRecord(a), "record");
    f();
    check(cudaEventRecord(b), "record");
    check(cudaEventSynchronize(b), "synchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "elapsed");
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Buffers {
  std::vector<void*> ptrs;
  bf16 *q, *k, *v, *o, *g, *dq, *dk, *dv;
  float* lse;
  int64_t n, nl;
  Buffers(int64_t n_, int64_t nl_) : n(n_), nl(nl_) {
    bf16** all[] = {&q, &k, &v, &o, &g, &dq, &dk, &dv};
    for (bf16** p : all) {
      check(cudaMalloc(reinterpret_cast<void**>(p), static_cast<size_t>(n) * sizeof(bf16)), "cudaMalloc");
      ptrs.push_back(*p);
    }
    check(cudaMalloc(reinterpret_cast<void**>(&lse), static_cast<size_t>(nl) * sizeof(float)), "cudaMalloc");
    ptrs.push_back(lse);
    uint64_t seed = 1;
    for (bf16* p : {q, k, v, g}) bench::gpu::fill_uniform(p, DType::bf16, n, seed++, -1.f, 1.f, nullptr);
  }
  ~Buffers() {
    for (void* p : ptrs) cudaFree(p);
  }
  void poison_outputs() {
    for (bf16* p : {o, dq, dk, dv}) bench::gpu::poison(p, DType::bf16, n, nullptr);
  }
  bool finite() {
    int64_t bad = 0;
    for (bf16* p : {o, dq, dk, dv}) bad += bench::gpu::count_nonfinite(p, DType::bf16, n, nullptr);
    return bad == 0;
  }
};

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--json" && i + 1 < argc)
        opt.json = argv[++i];
      else if (a == "--quick")
        opt.quick = true;
      else if (a == "--max-seconds" && i + 1 < argc)
        opt.max_seconds = std::stod(argv[++i]);
      else
        throw std::invalid_argument(
            "unknown or incomplete argument '" + a +
            "' (usage: bench_gpu_attention [--json PATH] [--quick] [--max-seconds S])");
    }
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
      std::fprintf(stderr, "bench_gpu_attention: no CUDA device\n");
      return 1;
    }
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, 0), "device properties");
    std::string why;
    const bool have_cudnn = kc::cudnn_attention_available(&why);
    std::printf("device: %s; cudnn SDPA: %s\n", prop.name, have_cudnn ? "available" : why.c_str());

    const auto t_start = std::chrono::steady_clock::now();
    auto elapsed = [&] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    };
    const int64_t tokens = 16384, hd = 2048;
    std::vector<int64_t> seqs = {512, 1024, 2048, 4096, 8192, 16384};
    if (opt.quick) seqs = {1024, 4096};
    std::vector<Record> records;
    std::vector<std::string> skipped;
    Buffers buf(tokens * hd, tokens * (hd / 64));  // lse (B, Hq, T): largest at D = 64
    std::printf("%-4s %-6s %-6s %-4s %10s %10s %10s %10s  (TFLOP/s)\n", "d", "seq", "causal", "dir", "polder",
                "cudnn", "baseline", "auto");
    for (int64_t D : {int64_t(64), int64_t(128)})
      for (int64_t seq : seqs)
        for (bool causal : {true, false}) {
          kernels::AttentionShape s;
          s.B = tokens / seq, s.T = seq, s.S = seq, s.Hq = hd / D, s.Hkv = hd / D, s.D = D, s.causal = causal;
          s.scale = 1.0 / std::sqrt(static_cast<double>(D));
          const std::string label =
              "d" + std::to_string(D) + " seq " + std::to_string(seq) + (causal ? " causal" : "");
          if (elapsed() > opt.max_seconds) {
            skipped.push_back(label);
            continue;
          }
          const double fwd_flops = 4.0 * s.B * seq * seq * s.Hq * D * (causal ? 0.5 : 1.0);
          double tf[2][4];  // [fwd, bwd][polder, cudnn, baseline, auto]
          for (auto& r : tf) std::fill(r, r + 4, NAN);
          const char* names[4] = {"polder", "cudnn", "baseline", "auto"};
          for (int impl = 0; impl < 4; ++impl) {
            if (impl == 1 && !have_cudnn) continue;
            if (impl == 2 && seq > 2048) continue;
            kc::set_attention_impl(names[impl]);
            const int reps = seq >= 8192 ? 3 : 5;
            buf.poison_outputs();
            auto fwd = [&] { kc::attention_forward<bf16>(s, buf.q, buf.k, buf.v, buf.o, buf.lse, nullptr); };
            auto bwd = [&] {
              kc::attention_backward<bf16>(s, buf.q, buf.k, buf.v, buf.o, buf.lse, buf.g, buf.dq, buf.dk,
                                           buf.dv, nullptr);
            };
            const double ms_f = time_ms(fwd, reps), ms_b = time_ms(bwd, reps);
            if (!buf.finite()) {
              std::printf("%s %s: non-finite outputs, not reported\n", label.c_str(), names[impl]);
              continue;
            }
            tf[0][impl] = fwd_flops / ms_f * 1e-9;
            tf[1][impl] = 2.5 * fwd_flops / ms_b * 1e-9;
            for (int dir = 0; dir < 2; ++dir)
              records.push_back({names[impl], dir ? "bwd" : "fwd", D, seq, s.B, s.Hq, causal,
                                 dir ? ms_b : ms_f, tf[dir][impl]});
          }
          for (int dir = 0; dir < 2; ++dir)
            std::printf("%-4lld %-6lld %-6s %-4s %10.1f %10.1f %10.1f %10.1f\n", static_cast<long long>(D),
                        static_cast<long long>(seq), causal ? "yes" : "no", dir ? "bwd" : "fwd", tf[dir][0],
                        tf[dir][1], tf[dir][2], tf[dir][3]);
          std::fflush(stdout);
        }
    kc::set_attention_impl("auto");
    for (const std::string& s : skipped)
      std::printf("skipped (past --max-seconds %.0f): %s\n", opt.max_seconds, s.c_str());
    const bool have_sm90 = kc::flash_attention_sm90_available();
    auto write_json = [&] {
      if (opt.json.empty()) return;
      nlohmann::json j;
      j["benchmark"] = "bench_gpu_attention";
      j["device"] = prop.name;
      j["cudnn"] = have_cudnn ? "available" : why;
      j["polder_sm90"] = have_sm90 ? "available" : "unavailable (needs an sm_90a device)";
      j["elapsed_s"] = elapsed();
      j["skipped"] = skipped;
      nlohmann::json recs = nlohmann::json::array();
      for (const Record& r : records) {
        nlohmann::json x = {{"impl", r.impl},     {"dir", r.dir},     {"d", r.d},
                            {"seq", r.seq},       {"batch", r.batch}, {"heads", r.heads},
                            {"causal", r.causal}, {"ms", r.ms},       {"tflops", r.tflops}};
        if (!std::isnan(r.error)) x["error"] = r.error;
        recs.push_back(x);
      }
      j["records"] = recs;
      std::ofstream(opt.json) << j.dump(1) << "\n";
    };
    write_json();

    // The sm_90a forward, by name, after everything else is saved. Reference: polder's forward into buf.dq.
    if (have_sm90) {
      std::printf("\n%-4s %-6s %-6s %10s %10s %10s  (forward TFLOP/s; error vs polder)\n", "d", "seq",
                  "causal", "polder", "sm90", "error");
      for (int64_t D : {int64_t(64), int64_t(128)})
        for (int64_t seq : seqs)
          for (bool causal : {true, false}) {
            kernels::AttentionShape s;
            s.B = tokens / seq, s.T = seq, s.S = seq, s.Hq = hd / D, s.Hkv = hd / D, s.D = D,
            s.causal = causal;
            s.scale = 1.0 / std::sqrt(static_cast<double>(D));
            const std::string label = "d" + std::to_string(D) + " seq " + std::to_string(seq) +
                                      (causal ? " causal" : "") + " (polder_sm90)";
            if (elapsed() > opt.max_seconds) {
              skipped.push_back(label);
              continue;
            }
            const double fwd_flops = 4.0 * s.B * seq * seq * s.Hq * D * (causal ? 0.5 : 1.0);
            const int reps = seq >= 8192 ? 3 : 5;
            auto ref = [&] {
              kc::flash_attention_forward<bf16>(s, buf.q, buf.k, buf.v, buf.dq, buf.lse, nullptr);
            };
            auto sm90 = [&] {
              kc::flash_attention_sm90_forward<bf16>(s, buf.q, buf.k, buf.v, buf.o, buf.lse, nullptr);
            };
            const double ms_ref = time_ms(ref, reps);
            bench::gpu::poison(buf.o, DType::bf16, buf.n, nullptr);
            const double ms = time_ms(sm90, reps);
            const double err = device_nerr(buf.o, buf.dq, buf.n);
            const double tf = fwd_flops / ms * 1e-9, tf_ref = fwd_flops / ms_ref * 1e-9;
            std::printf("%-4lld %-6lld %-6s %10.1f %10.1f %10.2g\n", static_cast<long long>(D),
                        static_cast<long long>(seq), causal ? "yes" : "no", tf_ref, tf, err);
            std::fflush(stdout);
            Record r{"polder_sm90", "fwd", D, seq, s.B, s.Hq, causal, ms, tf};
            r.error = err;
            records.push_back(r);
            write_json();
          }
      for (const std::string& s : skipped)
        if (s.find("polder_sm90") != std::string::npos)
          std::printf("skipped (past --max-seconds %.0f): %s\n", opt.max_seconds, s.c_str());
      write_json();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_attention: %s\n", e.what());
    return 1;
  }
  return 0;
}
