// Define-by-run autograd. Each differentiable op records a Node holding what its backward needs; backward()
// runs the graph in reverse topological order and frees each node's saved tensors once it has run.
// Parameter (leaf) gradients are accumulated (+=) into .grad, converting dtype (bf16 grads into f32 buffers).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace polder {

struct Edge {
  std::shared_ptr<Node> node;  // null: the input needs no gradient
  int input_nr = 0;            // which output of `node` this edge feeds
};

class Node {
 public:
  virtual ~Node() = default;
  // grads[i] is the gradient of output i (undefined when that output got none: treat as zero).
  // Returns one gradient per next edge (undefined where there is none).
  virtual std::vector<Tensor> apply(std::vector<Tensor>& grads) = 0;
  virtual const char* name() const = 0;
  // Frees the tensors saved for backward; called after apply() unless the graph is retained.
  virtual void release_saved() {}

  std::vector<Edge> next_edges;
  int num_outputs = 1;
  bool released = false;
};

// Accumulates into a leaf's .grad; holds the leaf weakly so the graph does not keep parameters alive.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(const std::shared_ptr<TensorImpl>& leaf) : leaf_(leaf) {}
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override;
  const char* name() const override { return "AccumulateGrad"; }

 private:
  std::weak_ptr<TensorImpl> leaf_;
};

// Gradient recording on/off for the current thread.
class GradMode {
 public:
  static bool enabled();
  static void set_enabled(bool enabled);
};

class NoGradGuard {
 public:
  NoGradGuard() : prev_(GradMode::enabled()) { GradMode::set_enabled(false); }
  ~NoGradGuard() { GradMode::set_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

namespace autograd {

// True when grad mode is on and any input requires grad: the op must record a node.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);
// The edge that gradients for `t` flow into (its grad_fn, or its leaf accumulator, or none).
Edge gradient_edge(const Tensor& t);
// Connects `node` to its inputs and makes `outputs` its outputs (output i gets output_nr i).
void connect(const std::shared_ptr<Node>& node, const std::vector<Tensor>& inputs,
             std::vector<Tensor*> outputs);

// Runs backward from several roots at once; grads[i] is the gradient of roots[i] (undefined: ones for a
// one-element root). Throws when a node is reached a second time after its saved tensors were freed.
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph = false);

}  // namespace autograd

// Activation checkpointing: runs fn(inputs) without recording, keeps only the inputs, and re-runs fn with
// recording during backward. fn must be deterministic (same outputs when re-run). Parameters used inside
// fn receive their gradients as usual.
using BlockFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;
std::vector<Tensor> recompute(const BlockFn& fn, const std::vector<Tensor>& inputs);

}  // namespace polder
