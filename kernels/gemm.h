// Row-major GEMM: C = alpha * op(A) op(B) + beta * C, op(A) (M, K), op(B) (K, N), batched with strides.
// Transposes are memory layouts (trans_a: A is stored (K, M)), never copies.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "kernels/dtype.h"

namespace polder::kernels {

struct GemmArgs {
  int64_t M = 0, N = 0, K = 0, batch = 1;
  DType ab_dtype = DType::f32;  // A and B: f32, bf16, f16 or f64
  DType c_dtype = DType::f32;   // C: ab_dtype, or f32 (bf16/f16 inputs with f32 output)
  const void* A = nullptr;
  bool trans_a = false;
  int64_t lda = 0, stride_a = 0;  // leading dimension (elements) and batch stride (elements)
  const void* B = nullptr;
  bool trans_b = false;
  int64_t ldb = 0, stride_b = 0;
  void* C = nullptr;
  int64_t ldc = 0, stride_c = 0;
  float alpha = 1.0f, beta = 0.0f;
  // A is f32 while B is bf16/f16 (ab_dtype): the CPU GEMM where bf16/f16 run as f32 anyway (gemm_converts),
  // for operands already in f32 (ops::linear_cross_entropy's f32 logits there). The CUDA GEMM rejects it.
  bool a_f32 = false;
  // Nonzero: B is a weight whose memory this number names (core's Storage::generation()) and which nothing
  // writes while a cpu::WeightScope is open, so the CPU GEMM may keep a converted or packed copy of it for
  // the scope. Ignored outside a scope and by the CUDA GEMM.
  uint64_t b_weight = 0;
};

namespace cpu {
// oneDNN matmul when built with it and the dtype combination is supported (primitives cached per shape);
// the reference GEMM otherwise. Inside a WeightScope, weights (GemmArgs::b_weight) may come from a copy.
void gemm(const GemmArgs& args);

// True where bf16/f16 (`ab`) GEMMs run as f32 GEMMs on converted operands on this CPU (no native oneDNN
// kernels: AVX2-only CPUs, AVX-512 without AVX512-BF16), so callers may keep operands in f32 instead.
bool gemm_converts(DType ab);

// What a WeightScope lets gemm() keep. convert: f32 copies of bf16/f16 weights where those run as f32 (no
// native kernels), made at the first use and shared by both layouts and every micro-batch. pack: also
// oneDNN's packed layout of weights that run natively, where each will be multiplied at least 4 times in one
// layout (a pack costs 5-25% of a call and saved 2-7% of each later one in bench/onednn_matmul.cpp); measured
// in the trainer on Zen 4 (AVX512-BF16) it did not pay (docs/perf/NOTES.md), so it is not the default: it is
// there for AMX CPUs, whose kernels are faster and whose per-call packing therefore weighs more, to be
// measured there.
enum class WeightCacheMode { off, convert, pack };
// POLDER_CPU_WEIGHT_CACHE (off, convert or pack; convert when unset); a bad value throws
// std::invalid_argument naming it.
WeightCacheMode weight_cache_mode_from_env();

// While one is open (the trainer holds one around each run of micro-batches, when parameters are constant),
// gemm() may keep copies of weights (GemmArgs::b_weight), up to budget_bytes in all. uses_per_layout: how
// often each weight will be multiplied in one layout within the scope (the micro-batches). Closing it makes
// every copy stale; the memory is kept for the same weights in the next scope (no fresh pages every step) and
// freed when a scope ends without using it. Scopes do not nest (std::logic_error). Thread-safe.
class WeightScope {
 public:
  explicit WeightScope(int64_t uses_per_layout, WeightCacheMode mode = weight_cache_mode_from_env(),
                       int64_t budget_bytes = int64_t{1} << 30);
  ~WeightScope();
  WeightScope(const WeightScope&) = delete;
  WeightScope& operator=(const WeightScope&) = delete;
};

// Counters since the process started (for tests and the profile): weight copies made (packs or
// conversions), calls that used one, and the bytes the copies hold now.
struct WeightCacheStats {
  int64_t copies = 0, reuses = 0, bytes = 0;
};
WeightCacheStats weight_cache_stats();
// Plain OpenMP GEMM with acc_t accumulation: the spec, and the fallback (f64, builds without oneDNN).
void gemm_reference(const GemmArgs& args);
// Which implementation gemm() would use for these arguments ("onednn" or "reference").
const char* gemm_backend(const GemmArgs& args);
}  // namespace cpu

#ifdef POLDER_HAVE_CUDA
namespace cuda {
// Row-major GEMM on `stream` (a cudaStream_t; nullptr is the legacy default stream), A, B and C device
// pointers: the dispatcher every op calls. f32 computes in fp32 (never TF32), bf16/f16 in fp32 with C in
// their dtype or f32, f64 in fp64 (C f64). beta == 0 never reads C (it may hold NaN); beta == 1 accumulates.
// Throws std::invalid_argument for bad arguments and std::runtime_error naming the failing call and the
// shape. Under the "auto" policy (the default) bf16 A/B with f32 or bf16 C on an sm_80+ device may run
// polder's own kernel (gemm_own): the first call of each (device, M, N, K, batch, layout, dtypes, leading
// dimensions and strides, beta != 0) runs cuBLASLt and the own kernel on the real operands into scratch
// outputs, checks the own result against cuBLASLt's (normalised error max|own - lt| / max|lt| below 1e-2 for
// bf16 C, 1e-3 for f32 C), times both (CUDA events, scratch copies of C when beta != 0), logs one line to
// stderr and caches the faster; that first call's real output is cuBLASLt's. It synchronises the stream once
// per new shape (never while the stream is being captured into a CUDA graph: then cuBLASLt runs, undecided).
// Everything else is cuBLASLt.
void gemm(const GemmArgs& args, void* stream);
// cuBLASLt alone (the baseline; the previous body of gemm).
void gemm_cublaslt(const GemmArgs& args, void* stream);
// polder's own bf16 tensor-core GEMM (mma.sync, kernels/cuda/gemm_sm80.cu; sm_80 and later), every layout,
// batched, any sizes and leading dimensions. gemm_own_supported says whether it takes these arguments on the
// current device; gemm_own throws std::invalid_argument naming the reason where it does not.
bool gemm_own_supported(const GemmArgs& args);
void gemm_own(const GemmArgs& args, void* stream);
// The sm_90a wgmma variant (kernels/cuda/gemm_sm90.cu; not yet verified on a GPU): gemm_own uses it instead
// of the mma.sync kernel only when the environment has POLDER_GEMM_SM90=1, it is available (a compute
// capability 9.0 device running the sm_90a image) and the TMA kernel below does not take the arguments.
// gemm_own_sm90 runs it directly (tests, benchmarks) and
// throws std::invalid_argument where it is not available.
bool gemm_own_sm90_available();
void gemm_own_sm90(const GemmArgs& args, void* stream);
// The sm_90a TMA kernel (kernels/cuda/gemm_sm90_tma.cu; not yet run on a GPU): TMA loads into a 4-stage
// mbarrier ring, a producer and two consumer warpgroups (setmaxnreg), wgmma from 128-byte-swizzled tiles, a
// persistent grid. It takes bf16 A/B with f32 or bf16 C where TMA can address the operands: A and B 16-byte
// aligned, lda and ldb multiples of 8, and with batch > 1 stride_a/stride_b multiples of 8 that keep batches
// apart. Under POLDER_GEMM_SM90=1 gemm_own runs it where it takes the arguments and is available (compute
// capability 9.0, sm_90a image), else the kernels above. gemm_own_sm90_tma runs it directly (tests,
// benchmarks) and throws std::invalid_argument naming the reason where it does not take the arguments
// (checked before any device call) or is not available.
bool gemm_own_sm90_tma_available();
void gemm_own_sm90_tma(const GemmArgs& args, void* stream);
// The dispatch policy: "cublaslt" (always; the default, model.gemm_impl), "auto" (the own kernel where its
// first call measured it correct and faster) or "polder" (the own kernel wherever supported, unchecked;
// cuBLASLt elsewhere). Anything else throws std::invalid_argument. Process-wide.
// Kernel choices made by timing (GEMM and attention "auto") agreed across the ranks that run the same shapes
// (issue 22): a dispatcher that must choose calls agree_choice(key, measure) and uses the answer; `key` names
// the decision alike on every rank ("gemm ..." / "attention ..."). The hook (the trainer's: data-parallel
// rank 0 measures and broadcasts its choice, the other ranks do not measure) decides who runs `measure`;
// without a hook the caller measures itself. Process-wide.
using ChoiceAgreement =
    std::function<std::string(const std::string& key, const std::function<std::string()>& measure)>;
void set_choice_agreement(ChoiceAgreement agreement);
std::string agree_choice(const std::string& key, const std::function<std::string()>& measure);
// Every choice made so far, one "<key> <choice>" line each (sorted), and their import on the current device:
// a checkpoint records them so that a resumed run uses the kernels the uninterrupted one chose.
std::string kernel_choices();
void set_kernel_choices(const std::string& lines);
void set_gemm_impl(const std::string& impl);
const char* gemm_impl();
// What gemm() would run for these arguments now: "polder", "cublaslt", or "undecided" (auto, first call
// pending).
const char* gemm_choice(const GemmArgs& args);
// Test hooks: replace the own kernel as auto's candidate (nullptr restores gemm_own), and forget every cached
// auto decision.
using GemmKernel = void (*)(const GemmArgs& args, void* stream);
void set_gemm_candidate_for_testing(GemmKernel kernel);
void clear_gemm_choices();
}  // namespace cuda
#endif
}  // namespace polder::kernels
