// The backward engine: Kahn's algorithm over the nodes reachable from the roots, so each node runs once,
// after every consumer of its outputs has contributed its gradient.
#include "core/autograd.h"

#include "core/profile.h"

#include <unordered_map>
#include <unordered_set>

namespace polder {
namespace {
thread_local bool g_grad_enabled = true;

// a += b, converting b to a's dtype (gradients of one tensor may arrive in f32 and bf16).
void add_into(Tensor& a, const Tensor& b) {
  POLDER_CHECK(a.numel() == b.numel(), "gradient of shape {} cannot be added to one of shape {}", b.shape(),
               a.shape());
  POLDER_CHECK(a.device() == b.device(), "a gradient on {} cannot be added to one on {}", b.device(),
               a.device());
  a.add_(b);
}
}  // namespace

bool GradMode::enabled() {
  return g_grad_enabled;
}
void GradMode::set_enabled(bool enabled) {
  g_grad_enabled = enabled;
}

std::vector<Tensor> AccumulateGrad::apply(std::vector<Tensor>& grads) {
  auto leaf = leaf_.lock();
  if (!leaf) return {};
  // An undefined gradient here means the op accumulated straight into .grad (see ops::detail::
  // direct_grad_target); the leaf's gradient is still complete for this pass, so the hook runs either way.
  if (grads[0].defined()) {
    Tensor& g = leaf->grad;
    const Tensor& incoming = grads[0];
    POLDER_CHECK(incoming.numel() == shape_numel(leaf->shape), "gradient of shape {} for a leaf of shape {}",
                 incoming.shape(), leaf->shape);
    if (!g.defined()) {
      // First gradient: keep a private copy (the incoming tensor may be a buffer shared with the graph).
      g = incoming.clone().view(leaf->shape);
    } else {
      add_into(g, incoming);
    }
  }
  if (leaf->post_accumulate_hook) leaf->post_accumulate_hook();
  return {};
}

namespace autograd {

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!GradMode::enabled()) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!GradMode::enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  const auto& impl = t.impl();
  if (impl->grad_fn) return {impl->grad_fn, impl->output_nr};
  if (!impl->grad_accumulator) impl->grad_accumulator = std::make_shared<AccumulateGrad>(impl);
  return {impl->grad_accumulator, 0};
}

void connect(const std::shared_ptr<Node>& node, const std::vector<Tensor>& inputs,
             std::vector<Tensor*> outputs) {
  node->next_edges.clear();
  for (const Tensor& t : inputs) node->next_edges.push_back(gradient_edge(t));
  node->num_outputs = static_cast<int>(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    auto& impl = outputs[i]->impl();
    impl->grad_fn = node;
    impl->output_nr = static_cast<int>(i);
    impl->requires_grad = true;
  }
}

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph) {
  POLDER_CHECK(roots.size() == grads.size(), "backward: {} roots but {} gradients", roots.size(),
               grads.size());
  NoGradGuard no_grad;  // gradients themselves are not recorded
  const profile::DirectionGuard direction(profile::DirectionGuard::backward);
  std::unordered_map<Node*, std::vector<Tensor>> pending;
  std::vector<std::shared_ptr<Node>> start;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    POLDER_CHECK(r.defined() && r.requires_grad(),
                 "backward: root {} does not require grad (no input of its computation requires grad)", i);
    Tensor g = grads[i];
    if (!g.defined()) {
      POLDER_CHECK(r.numel() == 1, "backward: root of shape {} is not a scalar; pass its gradient explicitly",
                   r.shape());
      g = Tensor::full(r.shape(), 1.0, r.dtype(), r.device());
    }
    POLDER_CHECK(g.numel() == r.numel(), "backward: gradient of shape {} for a root of shape {}", g.shape(),
                 r.shape());
    Edge e = gradient_edge(r);
    auto& slot = pending[e.node.get()];
    slot.resize(static_cast<size_t>(e.node->num_outputs));
    Tensor& dst = slot[static_cast<size_t>(e.input_nr)];
    if (dst.defined()) {
      add_into(dst, g);
    } else {
      dst = g.clone();
    }
    start.push_back(e.node);
  }

  // Count, for each node, how many edges from reachable nodes point at it.
  std::unordered_map<Node*, int> deps;
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack;
  for (auto& n : start)
    if (seen.insert(n.get()).second) stack.push_back(n.get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->next_edges) {
      if (!e.node) continue;
      deps[e.node.get()]++;
      if (seen.insert(e.node.get()).second) stack.push_back(e.node.get());
    }
  }

  std::vector<std::shared_ptr<Node>> ready;
  std::unordered_set<Node*> queued;
  for (auto& n : start)
    if (deps[n.get()] == 0 && queued.insert(n.get()).second) ready.push_back(n);
  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.back();
    ready.pop_back();
    POLDER_CHECK(
        !node->released,
        "backward through the graph a second time: the saved tensors of {} were freed after the first "
        "backward; pass retain_graph=true to the first backward",
        node->name());
    std::vector<Tensor> in = std::move(pending[node.get()]);
    pending.erase(node.get());
    in.resize(static_cast<size_t>(node->num_outputs));
    std::vector<Tensor> out = node->apply(in);
    if (!retain_graph) {
      node->release_saved();
      if (!dynamic_cast<AccumulateGrad*>(node.get())) node->released = true;
    }
    for (size_t i = 0; i < node->next_edges.size(); ++i) {
      const Edge& e = node->next_edges[i];
      if (!e.node) continue;
      if (i < out.size() && out[i].defined()) {
        auto& slot = pending[e.node.get()];
        slot.resize(static_cast<size_t>(e.node->num_outputs));
        Tensor& dst = slot[static_cast<size_t>(e.input_nr)];
        if (dst.defined()) {
          add_into(dst, out[i]);
        } else {
          dst = out[i];
        }
      }
      if (--deps[e.node.get()] == 0 && queued.insert(e.node.get()).second) ready.push_back(e.node);
    }
  }
}

}  // namespace autograd

namespace {

class RecomputeNode final : public Node {
 public:
  RecomputeNode(BlockFn fn, std::vector<Tensor> inputs) : fn_(std::move(fn)), inputs_(std::move(inputs)) {}
  const char* name() const override { return "Recompute"; }
  void release_saved() override { inputs_.clear(); }

  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    POLDER_CHECK(!inputs_.empty() || next_edges.empty(), "recompute: inputs were already freed");
    std::vector<Tensor> detached;
    for (const Tensor& t : inputs_) {
      Tensor d = t.detach();
      if (t.requires_grad()) d.set_requires_grad(true);
      detached.push_back(d);
    }
    std::vector<Tensor> outputs;
    {
      GradMode::set_enabled(true);  // the engine runs with grad off; the re-run forward must record
      struct Restore {
        ~Restore() { GradMode::set_enabled(false); }
      } restore;
      outputs = fn_(detached);
    }
    std::vector<Tensor> roots, root_grads;
    for (size_t i = 0; i < outputs.size() && i < grads.size(); ++i) {
      if (grads[i].defined() && outputs[i].requires_grad()) {
        roots.push_back(outputs[i]);
        root_grads.push_back(grads[i]);
      }
    }
    if (!roots.empty()) autograd::backward(roots, root_grads, false);
    std::vector<Tensor> result;
    for (Tensor& d : detached) result.push_back(d.requires_grad() ? d.grad() : Tensor());
    return result;
  }

 private:
  BlockFn fn_;
  std::vector<Tensor> inputs_;
};

}  // namespace

std::vector<Tensor> recompute(const BlockFn& fn, const std::vector<Tensor>& inputs) {
  if (!GradMode::enabled()) return fn(inputs);
  std::vector<Tensor> outputs;
  {
    NoGradGuard guard;
    outputs = fn(inputs);
  }
  auto node = std::make_shared<RecomputeNode>(fn, inputs);
  std::vector<Tensor*> outs;
  for (Tensor& o : outputs) outs.push_back(&o);
  // Outputs require grad whenever grad mode is on: parameters used inside fn are not visible from here.
  autograd::connect(node, inputs, outs);
  return outputs;
}

}  // namespace polder
