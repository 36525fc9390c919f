// What the step engine (train/) needs from a model, whatever its family: its parameters (a ParameterSet), its
// place in the parallel layout, and its pipeline stages (forward of a chunk, the loss on the last stage). A
// model family implements Model in its own folder and registers in models/registry.cpp; the trainer, the
// optimizer, data-parallel sync and checkpoints then run it unchanged.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/parameter_set.h"
#include "core/tensor.h"
#include "models/config.h"
#include "parallel/comm.h"

namespace polder::parallel {
class Zero3;
}

namespace polder::models {

using polder::Parameter;
using polder::ParameterSet;

// Where this process sits in the tensor- and pipeline-parallel layout, and how its flat buffers are laid out
// for ZeRO. How a family shards its parameters over it is the family's own (models/llama/model.h).
struct ParallelLayout {
  int64_t tp = 1, tp_rank = 0;
  int64_t pp = 1, pp_rank = 0;
  // Interleaved pipeline: the layers are cut into pp * virtual_stages chunks; chunk c of this rank is virtual
  // stage c * pp + pp_rank. The embedding lives with virtual stage 0 (rank 0), the head with the last one.
  int64_t virtual_stages = 1;
  parallel::Comm* tp_comm = nullptr;  // required when tp > 1
  // Context parallelism (parallel/cp_ops.h): this rank holds two of 2 cp chunks of every sequence; attention
  // gathers K and V over cp_comm. Parameters do not depend on it.
  parallel::Comm* cp_comm = nullptr;
  int64_t flat_multiple = 1;       // flat buffers are padded to a multiple of this (ZeRO shards them over dp)
  bool sequence_parallel = false;  // tp > 1: activations between blocks are (B, T/tp, C) sequence shards
  // ZeRO-2: this rank keeps only the gradients of flat range [grad_begin, grad_end) (end -1: all). Parameters
  // then have no gradient view; backward produces per-parameter gradients that the data-parallel layer
  // reduces bucket by bucket into the shard and releases.
  int64_t grad_begin = 0, grad_end = -1;

  // The layout of tensor rank tp_rank of tp on pipeline stage pp_rank of pp (no communicator, no ZeRO): how
  // checkpoints describe the shards of ranks other than their own.
  static ParallelLayout of(int64_t tp, int64_t tp_rank, int64_t pp, int64_t pp_rank,
                           int64_t virtual_stages = 1) {
    ParallelLayout l;
    l.tp = tp;
    l.tp_rank = tp_rank;
    l.pp = pp;
    l.pp_rank = pp_rank;
    l.virtual_stages = virtual_stages;
    return l;
  }
};

class Model {
 public:
  virtual ~Model() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const ParallelLayout& layout() const = 0;
  virtual ParameterSet& parameter_set() = 0;
  const ParameterSet& parameter_set() const { return const_cast<Model*>(this)->parameter_set(); }
  // Deterministic init: a pure function of (seed, parameter name, global element index), so it does not
  // depend on the parallel layout.
  virtual void init(uint64_t seed) = 0;

  // This model's parameters under any layout, in flat-buffer order, with local shapes (no memory allocated):
  // checkpoints use it to describe the shards of every rank, and to read one layout into another.
  virtual std::vector<std::pair<Parameter, Shape>> local_parameters(const ParallelLayout& layout) const = 0;

  // Pipeline: this rank holds num_chunks() chunks (virtual stages chunk * pp + pp_rank). stage_forward takes
  // the ids (B, T) on virtual stage 0, else the previous stage's activation (activation_shape), and returns
  // the chunk's output activation; stage_loss (last virtual stage) the mean loss of it against targets.
  virtual int64_t num_chunks() const = 0;
  virtual Shape activation_shape(int64_t micro_batch, int64_t seq_len) const = 0;
  virtual Tensor stage_forward(const Tensor& input, bool recompute = false, int64_t chunk = 0) = 0;
  virtual Tensor stage_loss(const Tensor& output, const Tensor& targets) = 0;
  // Without a pipeline: the mean loss of ids (B, T) against targets (B, T).
  virtual Tensor loss(const Tensor& ids, const Tensor& targets, bool recompute = false) = 0;

  // Conveniences over parameter_set().
  std::vector<Parameter>& parameters() { return parameter_set().parameters(); }
  const std::vector<Parameter>& parameters() const { return parameter_set().parameters(); }
  Parameter& parameter(const std::string& name) { return parameter_set().parameter(name); }
  Tensor& flat_params() { return parameter_set().flat_params(); }
  Tensor& flat_grads() { return parameter_set().flat_grads(); }
  int64_t grad_offset() const { return parameter_set().grad_offset(); }
  bool grads_sharded() const { return parameter_set().grads_sharded(); }
  DType dtype() const { return parameter_set().dtype(); }
  Device device() const { return parameter_set().device(); }
  void zero_grad() { parameter_set().zero_grad(); }
  bool first_stage() const { return layout().pp_rank == 0; }
  bool last_stage() const { return layout().pp_rank == layout().pp - 1; }

  // ZeRO-3 (parallel/zero3.h): the gatherer stage_forward and stage_loss call around each unit; null without.
  void set_zero3(parallel::Zero3* z) { zero3_ = z; }

 protected:
  parallel::Zero3* zero3_ = nullptr;
};

// The registered model families (models/registry.cpp): the one that implements `config`, built for `layout`
// on `device` with parameters in `dtype`; and the size of its flat buffers for a layout, without building it.
std::unique_ptr<Model> make_model(const ModelConfig& config, DType dtype, const ParallelLayout& layout,
                                  Device device);
int64_t model_flat_size(const ModelConfig& config, const ParallelLayout& layout);
// Parameter names and global shapes of the unsharded model, in canonical order.
std::vector<std::pair<std::string, Shape>> model_parameter_shapes(const ModelConfig& config);
int64_t model_parameter_count(const ModelConfig& config);

}  // namespace polder::models
