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
