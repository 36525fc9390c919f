// Fused causal attention with grouped-query heads. q: (B, T, Hq, D); k, v: (B, S, Hkv, D), Hq a multiple of
// Hkv (query head h reads KV head h / (Hq / Hkv)). o: (B, T, Hq, D); lse: (B, Hq, T) log-sum-exp of the
// scaled scores, saved so the backward recomputes probabilities instead of storing the (T, S) matrix. Causal:
// query t sees keys s <= t + (S - T) (queries aligned to the end of the keys).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace polder::kernels {

struct AttentionShape {
  int64_t B = 0, T = 0, S = 0, Hq = 0, Hkv = 0, D = 0;
  bool causal = true;
  double scale = 0;  // usually 1 / sqrt(D)
};

namespace cpu {
// Online softmax over key blocks: memory O(D) per query row.
template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, acc_t<T>* lse);
// With P = exp(scale * q k^T - lse), Di = sum(dO_i * O_i), dS = P * (dO v^T - Di):
// dq = scale * dS k;  dk = scale * dS^T q;  dv = P^T dO. dk and dv sum over the query heads of a KV group.
template <typename T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                        const acc_t<T>* lse, const T* dout, T* dq, T* dk, T* dv);
}  // namespace cpu
}  // namespace polder::kernels

#ifdef POLDER_HAVE_CUDA
#include <initializer_list>
#include <string>

namespace polder::kernels::cuda {
// The entry point of ops::attention on the GPU: a dispatcher over three implementations, chosen by
// set_attention_impl. "cudnn" (the default until a GPU has passed scripts/gpu/check.sh: polder's own kernels
// have not run on hardware, and auto runs them inside its first-call measurement): cuDNN's SDPA
// (kernels/cuda/attention_cudnn.cpp) where available and it takes the shape, else the baseline. "polder": the
// flash kernel (kernels/cuda/flash_attention.cu) where it applies (bf16/f16, D 64 or 128, 16-byte aligned
// tensors, sm_80+), else the baseline. "baseline": always the baseline. "auto": per shape, dtype and
// direction, the first call runs every applicable implementation once on the real inputs, rejects any whose
// result differs from the baseline's (normalised error >= 2e-2, one line on stderr naming it), times the rest
// with CUDA events and keeps the fastest; the baseline on ties or failures. Synchronises `stream` during that
// first call only.
template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, acc_t<T>* lse,
                       void* stream);
template <typename T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                        const acc_t<T>* lse, const T* dout, T* dq, T* dk, T* dv, void* stream);

// "auto" | "polder" | "cudnn" | "baseline"; anything else throws std::invalid_argument naming the value.
// Process-wide; changing it forgets auto's cached choices.
void set_attention_impl(const std::string& name);
std::string attention_impl();
// auto's cached choice for a shape ("baseline", "polder", "polder_sm90", "cudnn" or "test"), "" before the
// first call.
std::string attention_choice(const AttentionShape& s, DType dtype, bool backward);
// auto's whole cache as "attention <key> <name>" lines, and one entry's import (kernel_choices in gemm.h).
std::string attention_choices_text();
void load_attention_choice(const std::string& key, const std::string& name);

// Test hook: an extra candidate "test" that auto measures beside the others (nullptr removes it). The
// pointers are the dispatcher's own, typed as T of `dtype`.
using AttentionForwardFn = void (*)(const AttentionShape& s, DType dtype, const void* q, const void* k,
                                    const void* v, void* o, float* lse, void* stream);
using AttentionBackwardFn = void (*)(const AttentionShape& s, DType dtype, const void* q, const void* k,
                                     const void* v, const void* o, const float* lse, const void* dout,
                                     void* dq, void* dk, void* dv, void* stream);
void set_attention_test_candidate(AttentionForwardFn forward, AttentionBackwardFn backward);

// The baseline (kernels/cuda/attention.cu): correct-first, no tensor cores. Forward: one warp per (b, h,
// query row), key/value tiles of 32 rows staged in shared memory, online softmax in fp32. Backward in the CPU
// twin's two passes (dq per query row, dk/dv per key row over its group's query heads), deterministic: every
// output row has one owner and a fixed summation order, no atomics. D <= 256.
template <typename T>
void baseline_attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o,
                                acc_t<T>* lse, void* stream);
template <typename T>
void baseline_attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                                 const acc_t<T>* lse, const T* dout, T* dq, T* dk, T* dv, void* stream);

// The flash kernel: mma.sync tensor cores, online softmax, P recomputed tile by tile in the backward (dk/dv
// summed over the GQA group inside a block, no atomics, deterministic). flash_attention_supported says
// whether it applies (false for f32 and other head dims); the others throw std::invalid_argument where it
// does not.
template <typename T>
bool flash_attention_supported(const AttentionShape& s, std::initializer_list<const void*> ptrs);
template <typename T>
void flash_attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, float* lse,
                             void* stream);
template <typename T>
void flash_attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                              const float* lse, const T* dout, T* dq, T* dk, T* dv, void* stream);

// The Hopper forward (kernels/cuda/flash_attention_sm90.cu, sm_90a: TMA, warp-specialised warpgroups, wgmma
// with P from registers); same contract as flash_attention_forward. available(): a compute capability 9.0
// device running the file's sm_90a image. supported(): bf16/f16, D 64 or 128, 16-byte aligned pointers, T and
// S below 2^31 (no device call). forward throws std::invalid_argument naming the reason where unsupported.
// Never run yet: only under POLDER_ATTENTION_SM90=1 does auto measure it (as "polder_sm90") and "polder"
// prefer it.
bool flash_attention_sm90_available();
template <typename T>
bool flash_attention_sm90_supported(const AttentionShape& s, std::initializer_list<const void*> ptrs);
template <typename T>
void flash_attention_sm90_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o,
                                  float* lse, void* stream);

// cuDNN SDPA through the cuDNN frontend's graph API (kernels/cuda/attention_cudnn.cpp; libcudnn.so.9 >= 9.0
// opened at run time). available() gives the reason when not; forward/backward return false (writing nothing)
// when cuDNN is unavailable, polder declines the arguments, or cuDNN rejects the shape (one stderr line,
// once). declined() says why polder does not hand a shape to cuDNN (f32, head dim, causal with S < T), ""
// when it does.
bool cudnn_attention_available(std::string* why = nullptr);
std::string cudnn_attention_declined(const AttentionShape& s, DType dtype);
// Describes the bf16/f16 graph of a shape and runs the frontend's validation only, for a device of compute
// capability sm_version / 10 (host-side: no device, no plan): "" when it passes, else the reason. For tests
// on machines without a GPU.
std::string cudnn_attention_validate(const AttentionShape& s, DType dtype, bool backward,
                                     int sm_version = 90);
template <typename T>
bool cudnn_attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, float* lse,
                             void* stream);
template <typename T>
bool cudnn_attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                              const float* lse, const T* dout, T* dq, T* dk, T* dv, void* stream);
}  // namespace polder::kernels::cuda
#endif
