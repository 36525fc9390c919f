// ParameterSet: the flat buffers and the parameter table (core/parameter_set.h).
#include "core/parameter_set.h"

#include "core/error.h"

namespace polder {

ParameterSet::ParameterSet(Tensor values, Tensor grads, int64_t grad_offset, std::vector<Parameter> params)
    : flat_params_(std::move(values)),
      flat_grads_(std::move(grads)),
      grad_offset_(grad_offset),
      params_(std::move(params)) {
  const int64_t n = flat_params_.numel(), g = flat_grads_.numel();
  POLDER_CHECK(grad_offset_ >= 0 && grad_offset_ + g <= n,
               "ParameterSet: gradient range [{}, {}) outside the {}-element flat buffer", grad_offset_,
               grad_offset_ + g, n);
  grads_sharded_ = grad_offset_ != 0 || g != n;
  flat_numel_ = n;
}

namespace {
std::string unit_key(const std::string& name) {
  const std::string layers = "model.layers.";
  if (name.rfind(layers, 0) == 0) return name.substr(0, name.find('.', layers.size()) + 1);
  if (name.rfind("model.embed_tokens.", 0) == 0) return "model.embed_tokens.";
  return "head";  // the final norm and the LM head
}
}  // namespace

void ParameterSet::shard_parameters(int64_t begin, int64_t end) {
  POLDER_CHECK(!params_sharded(), "ParameterSet: parameters are already sharded");
  POLDER_CHECK(0 <= begin && begin <= end && end <= flat_numel_,
               "ParameterSet: parameter shard [{}, {}) outside the {}-element flat space", begin, end,
               flat_numel_);
  // Units: maximal runs of consecutive parameters with the same key, in flat order.
  for (Parameter& p : params_) {
    const std::string key = unit_key(p.name);
    if (units_.empty() || units_.back().key != key || units_.back().end != p.offset)
      units_.push_back({key, p.offset, p.offset, Tensor()});
    units_.back().end = p.offset + p.value.numel();
  }
  for (Unit& u : units_) u.buffer = flat_params_.narrow(0, u.begin, u.end - u.begin).clone();
  for (Parameter& p : params_) {
    const Unit& u = units_[static_cast<size_t>(unit_of(p.name))];
    Tensor v = u.buffer.narrow(0, p.offset - u.begin, p.value.numel()).view(p.value.shape()).set_name(p.name);
    v.set_requires_grad(p.value.requires_grad());
    p.value = v;
  }
  flat_params_ = flat_params_.narrow(0, begin, end - begin).clone();
  param_offset_ = begin;
  for (Unit& u : units_) u.buffer.storage()->release();
}

int ParameterSet::unit_of(const std::string& name) const {
  const Parameter* p = find(name);
  if (!p) return -1;
  for (size_t i = 0; i < units_.size(); ++i)
    if (p->offset >= units_[i].begin && p->offset < units_[i].end) return static_cast<int>(i);
  return -1;
}

Parameter& ParameterSet::parameter(const std::string& name) {
  for (Parameter& p : params_)
    if (p.name == name) return p;
  POLDER_FAIL("no parameter named '{}' on this rank", name);
}

const Parameter* ParameterSet::find(const std::string& name) const {
  for (const Parameter& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

bool ParameterSet::has_tied() const {
  for (const Parameter& p : params_)
    if (p.tied) return true;
  return false;
}

void ParameterSet::zero_grad() {
  flat_grads_.zero_();
  for (Parameter& p : params_) p.value.grad() = grads_sharded_ ? Tensor() : p.grad;
}

}  // namespace polder
