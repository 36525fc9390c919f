// The parameters of a model (this rank's part of it) as the step engine sees them: one flat buffer of values
// (the model's dtype), one flat gradient buffer (f32, f64 for f64 models: the whole flat space, or only a
// ZeRO-2 shard of it) and the table of parameters (HF name, offset, decay, shard slice, flags). Models build
// and own it; the optimizer, data-parallel sync, ZeRO, clipping, the non-finite guard and checkpoints take
// it, so they know no model. Every collective and update becomes a range operation on the flat buffers.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace polder {

struct Parameter {
  std::string name;    // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  Tensor value;        // view into the flat parameter buffer (this rank's shard)
  Tensor grad;         // view into the flat gradient buffer (also installed as value.grad())
  int64_t offset = 0;  // element offset into the flat buffers
  bool decay = true;   // weight decay applies (false for norms, biases and, by default, embeddings)
  Shape global_shape;  // the unsharded HF shape (vocabulary unpadded)
  int shard_dim = -1;  // -1: replicated; else the shard is [shard_start, shard_start + local) along it
  int64_t shard_start = 0;
  // Position in the unsharded model's canonical parameter order (the same on every rank and layout).
  int64_t index = 0;
  // A copy of a tensor another pipeline stage also holds (the last stage's tied embedding): its gradient is
  // summed with the original's (`tied`), and it is neither saved nor counted twice in global norms.
  bool tied_copy = false;
  bool tied = false;  // shared across pipeline stages (the tied embedding and its copy)
  // Counted in global reductions (norms) by this rank: false for a tensor-parallel replica on tp rank > 0 and
  // for a tied copy, so that every parameter of the unsharded model counts once.
  bool counts_once = true;
  // Replicated over the tensor-parallel ranks but its gradient is a partial sum over them (sequence parallel:
  // each rank saw only its tokens): summed over tp after the data-parallel reduction.
  bool tp_partial_grad = false;
};

class ParameterSet {
 public:
  ParameterSet() = default;
  // values: the flat parameter buffer; grads: the flat gradient buffer covering [grad_offset, grad_offset +
  // grads.numel()) of the flat space (sharded when that is not all of it: parameters then get no gradient
  // views). `params` in flat order, their `value` views already cut from `values`.
  ParameterSet(Tensor values, Tensor grads, int64_t grad_offset, std::vector<Parameter> params);

  std::vector<Parameter>& parameters() { return params_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  Parameter& parameter(const std::string& name);         // polder::Error naming the unknown name
  const Parameter* find(const std::string& name) const;  // nullptr when this rank does not hold it
  Tensor& flat_params() { return flat_params_; }
  const Tensor& flat_params() const { return flat_params_; }
  Tensor& flat_grads() {
    return flat_grads_;
  }  // the range [grad_offset(), grad_offset() + numel) of the flat space
  const Tensor& flat_grads() const { return flat_grads_; }
  int64_t grad_offset() const { return grad_offset_; }
  bool grads_sharded() const { return grads_sharded_; }
  DType dtype() const { return flat_params_.dtype(); }
  Device device() const { return flat_params_.device(); }
  bool has_tied() const;  // some parameter is shared with another pipeline stage

  // ZeRO-3: the flat space is cut into units (the embedding, each layer, the final norm with the LM head),
  // contiguous runs of parameters whose values are views into the unit's own buffer. A unit's buffer holds
  // values only while gathered (parallel/zero3.h); flat_params() then holds only this rank's shard
  // [param_offset(), param_offset() + flat_params().numel()) of the flat space.
  struct Unit {
    std::string key;  // "model.embed_tokens.", "model.layers.<l>.", "head"
    int64_t begin = 0, end = 0;
    Tensor buffer;  // (end - begin) elements; its Storage released while not gathered
  };
  // Converts to sharded parameters (after the values were initialised or loaded): each unit gets its buffer
  // (the parameters are re-pointed into it, keeping their names and requires_grad), flat_params() keeps
  // [begin, end) only, and every unit buffer is released. Call before anything holds the parameter tensors
  // (gradient hooks). polder::Error for a range outside the flat space.
  void shard_parameters(int64_t begin, int64_t end);
  bool params_sharded() const { return !units_.empty(); }
  int64_t param_offset() const { return param_offset_; }
  int64_t flat_numel() const { return flat_numel_; }  // the whole flat space, sharded or not
  std::vector<Unit>& units() { return units_; }
  // The unit holding parameter `name` (an index into units()); -1 when unsharded or unknown.
  int unit_of(const std::string& name) const;
  // Zeroes the gradient buffer and re-installs the gradient views (ops may have replaced them); with sharded
  // gradients, per-parameter gradients start undefined.
  void zero_grad();

 private:
  Tensor flat_params_, flat_grads_;
  int64_t grad_offset_ = 0;
  int64_t param_offset_ = 0, flat_numel_ = 0;
  std::vector<Unit> units_;
  bool grads_sharded_ = false;
  std::vector<Parameter> params_;
};

}  // namespace polder
