// Helpers shared by the op implementations (not a public header): argument checks with messages that name
// the op and both shapes, and record(), which attaches a backward closure to an op's outputs. Kernels are
// called through core/dispatch.h (POLDER_KERNEL), which this header brings in.
#pragma once

#include <functional>
#include <string>

#include "core/autograd.h"
#include "core/dispatch.h"
#include "core/tensor.h"

namespace polder::ops::detail {

using BackwardFn = std::function<std::vector<Tensor>(std::vector<Tensor>& grads)>;

// A node whose backward is a closure; the closure owns the saved tensors, so releasing it frees them.
class FunctionNode final : public Node {
 public:
  FunctionNode(const char* name, BackwardFn fn) : name_(name), fn_(std::move(fn)) {}
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override { return fn_(grads); }
  const char* name() const override { return name_; }
  void release_saved() override { fn_ = nullptr; }

 private:
  const char* name_;
  BackwardFn fn_;
};

// Records a node for `outputs` when grad mode is on and an input requires grad. The backward closure is only
// built (and tensors only saved) in that case, so make_backward is called lazily.
template <typename MakeBackward>
void record(const char* name, const std::vector<Tensor>& inputs, std::vector<Tensor*> outputs,
            MakeBackward&& make_backward) {
  if (!autograd::needs_grad(inputs)) return;
  auto node = std::make_shared<FunctionNode>(name, make_backward());
  autograd::connect(node, inputs, std::move(outputs));
}

// c (M, N) = alpha op(a) op(b) (+ c when beta is 1) through the GEMM kernels, for fused ops that write their
// own GEMMs (core/ops_linear.cpp); op() transposes where trans_* is set. Stored row lengths follow the
// shapes. b_weight: weight_id(b) where b is a weight (kernels::GemmArgs::b_weight).
void gemm_2d(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, int64_t M, int64_t N,
             int64_t K, float beta = 0.0f, uint64_t b_weight = 0, float alpha = 1.0f);

inline void check_defined(const char* op, const Tensor& t, const char* what) {
  POLDER_CHECK(t.defined(), "{}: {} is an undefined tensor", op, what);
}

// Every defined tensor of an op on one device: "add: a is on cuda:0 but b is on cpu".
inline void check_same_device(const char* op,
                              std::initializer_list<std::pair<const Tensor*, const char*>> ts) {
  const Tensor* first = nullptr;
  const char* first_name = nullptr;
  for (auto [t, name] : ts) {
    if (!t || !t->defined()) continue;
    if (!first) {
      first = t;
      first_name = name;
      continue;
    }
    POLDER_CHECK(t->device() == first->device(), "{}: {} is on {} but {} is on {}; move one with .to(device)",
                 op, first_name, first->device(), name, t->device());
  }
}

inline void check_same_dtype(const char* op, const Tensor& a, const char* an, const Tensor& b,
                             const char* bn) {
  POLDER_CHECK(a.dtype() == b.dtype(), "{}: {} is {} but {} is {}; convert one with cast()", op, an,
               a.dtype(), bn, b.dtype());
}

inline void check_float(const char* op, const Tensor& t, const char* what) {
  POLDER_CHECK(is_floating(t.dtype()), "{}: {} is {}, expected a floating dtype (f32, bf16, f16, f64)", op,
               what, t.dtype());
}

inline void check_index(const char* op, const Tensor& t, const char* what) {
  POLDER_CHECK(t.dtype() == DType::i32 || t.dtype() == DType::i64, "{}: {} is {}, expected i32 or i64", op,
               what, t.dtype());
}

inline int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim) {
  int64_t d = dim < 0 ? dim + ndim : dim;
  POLDER_CHECK(d >= 0 && d < ndim, "{}: dim {} out of range for a {}-d tensor", op, dim, ndim);
  return d;
}

// dtype of gradients accumulated over rows (weights): f64 for f64, f32 otherwise.
inline DType acc_dtype(DType d) {
  return d == DType::f64 ? DType::f64 : DType::f32;
}

// When a backward can add its gradient for `t` straight into t's accumulated .grad (t is a leaf that requires
// grad and already has a gradient buffer of `dtype` and t's size, e.g. a parameter's view into the flat f32
// buffer), returns that buffer; the op then returns an undefined gradient for t. Saves a temporary and a pass
// over every weight per micro-batch. nullptr otherwise.
inline Tensor* direct_grad_target(const Tensor& t, DType dtype) {
  if (!t.defined() || !t.requires_grad() || !t.is_leaf()) return nullptr;
  Tensor& g = t.grad();
  if (!g.defined() || g.dtype() != dtype || g.numel() != t.numel() || g.device() != t.device())
    return nullptr;
  return &g;
}

// A GEMM operand's name for the CPU GEMM's weight copies (kernels::GemmArgs::b_weight): its memory's
// generation where it is a parameter (a leaf that requires grad; the trainer keeps those constant while a
// kernels::cpu::WeightScope is open), 0 (no copies) for anything else.
inline uint64_t weight_id(const Tensor& w) {
  if (!w.defined() || !w.requires_grad() || !w.is_leaf() || !w.device().is_cpu()) return 0;
  return w.storage()->generation();
}

// Gradient or zeros when no gradient reached this output.
inline Tensor grad_or_zeros(const Tensor& g, const Shape& shape, DType dtype, Device device) {
  return g.defined() ? g : Tensor::zeros(shape, dtype, device);
}

}  // namespace polder::ops::detail
