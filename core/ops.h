// Differentiable ops: the only place that dispatches on device and dtype and records autograd nodes. Fused
// ops (attention, rms_norm, rope, swiglu, cross_entropy, linear) are single nodes. Gradients of weights that
// kernels accumulate over rows (linear, rms_norm, embedding) are produced in f32 (f64 for f64 inputs), the
// dtype of the gradient buffers; activation gradients keep the activation's dtype.
#pragma once

#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/tensor.h"

namespace polder::ops {

// Elementwise with numpy broadcasting; a and b must have the same dtype.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double alpha);

// Reductions (accumulated in f64 / acc_t, returned in x's dtype). sum(x) has shape {}.
Tensor sum(const Tensor& x);
Tensor sum(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, int64_t dim, bool keepdim = false);

// Shape ops. reshape shares storage; transpose, concat and split copy; narrow shares storage when the slice
// is contiguous and copies otherwise.
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
Tensor cast(const Tensor& x, DType dtype);  // differentiable dtype conversion (the gradient is cast back)

// a (..., M, K) @ b (..., K, N), or with trans_a / trans_b the stored (..., K, M) / (..., N, K). Batch dims
// of a and b must be equal, or b 2-D (shared by every batch).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// x (..., in) @ weight (out, in)^T + bias (out): the nn.Linear convention (HF weight layout).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// table (V, C), ids (...) of i32/i64 -> (..., C). Ids outside [0, V) are an error naming the first.
Tensor embedding(const Tensor& table, const Tensor& ids);
// x (..., C) normalised over C, times weight (C).
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);

// cos/sin tables (max_positions, head_dim) of the HF rotate_half convention: inv_freq[i] = theta^(-2i/D),
// angle = pos * inv_freq, table = cat(cos(angle), cos(angle)). dtype f32 (or f64 for f64 activations).
struct RopeTable {
  Tensor cos, sin;
  double theta = 10000.0;
  int64_t head_dim = 0;
};
// Frequency scaling of the inverse frequencies (transformers' _compute_llama3_parameters for "llama3"):
// wavelen = 2 pi / inv_freq; wavelen > orig / low_freq_factor: inv_freq / factor; wavelen < orig /
// high_freq_factor: unchanged; between: (1 - s) inv_freq / factor + s inv_freq with
// s = (orig / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor).
struct RopeScaling {
  std::string type = "none";  // "none" or "llama3"
  double factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_positions = 8192;
};
// The head_dim / 2 inverse frequencies, computed in f32 as transformers does (f64 throughout for f64).
std::vector<double> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling = {},
                                  DType dtype = DType::f32);
RopeTable make_rope_table(int64_t max_positions, int64_t head_dim, double theta, DType dtype = DType::f32,
                          const RopeScaling& scaling = {});
// x (B, T, H, D), token t at position pos0 + t.
Tensor rope(const Tensor& x, const RopeTable& table, int64_t pos0 = 0);

// q (B, T, Hq, D), k and v (B, S, Hkv, D) with Hq a multiple of Hkv -> (B, T, Hq, D). scale 0 means
// 1/sqrt(D).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal = true, double scale = 0.0);

Tensor silu(const Tensor& x);
Tensor swiglu(const Tensor& gate, const Tensor& up);  // silu(gate) * up
Tensor softmax(const Tensor& x);                      // over the last dim
Tensor log_softmax(const Tensor& x);                  // over the last dim

// logits (N, V) or (..., V), targets (N) or (...) of i32/i64: mean over targets != ignore_index of
// -log softmax(logits)[target]. Returns a scalar in f32 (f64 for f64 logits). All targets ignored: 0.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// cross_entropy(linear(x, weight), targets) as one node (an LM head and its loss). On the CPU, when a
// gradient is needed, the forward computes the logits' gradient for an upstream gradient of 1 right away, in
// place of the logits and with each row read once (kernels::cpu::cross_entropy_forward_backward), and the
// backward's GEMMs apply the real upstream gradient as their alpha: the loss has cross_entropy's bits, the
// gradients agree to rounding. Where bf16/f16 GEMMs run as f32 (kernels::cpu::gemm_converts), the logits stay
// f32 (the loss is then the f32 computation's on the same inputs, bit for bit). Elsewhere (CUDA, no gradient)
// it runs linear and cross_entropy.
Tensor linear_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                            int64_t ignore_index = -100);

}  // namespace polder::ops
