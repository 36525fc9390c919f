// Data-parallel gradient synchronisation over the flat gradient buffer: bucketed all-reduces started from the
// parameters' post-accumulate hooks on the last micro-batch (overlapping the rest of backward), or one
// reduce-scatter for ZeRO-1; plus the sum of a tied embedding's gradient between the first and last pipeline
// stage, and the global gradient-norm reduction.
#pragma once

#include <memory>
#include <vector>

#include "models/llama/model.h"
#include "parallel/mesh.h"
#include "train/config.h"

namespace polder::train {

class GradSync {
 public:
  // zero1: gradients are reduce-scattered so that rank r holds the averaged chunk r of the flat buffer.
  GradSync(models::Llama& model, parallel::Mesh& mesh, bool zero1, int64_t bucket_mb);
  ~GradSync();
  // Hooks act only when armed: arm before the last micro-batch's backward.
  void arm(bool on) { armed_ = on; }
  // Waits for the bucket all-reduces (or runs the reduce-scatter); afterwards the owned gradient range holds
  // the average over data-parallel ranks of the summed micro-batch gradients.
  void finish();
  // Sums a local value over the ranks that hold different parts of the model (tp, pp, and dp under ZeRO).
  double reduce_norm_sq(double local);
  // ZeRO-1: the flat range [begin, end) this rank owns; all_gather_params() assembles the updated parameters.
  int64_t owned_begin() const { return owned_begin_; }
  int64_t owned_end() const { return owned_end_; }
  void all_gather_params();

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;  // flat range
    int expected = 0, ready = 0;
    std::unique_ptr<parallel::Work> work;
  };
  void launch(Bucket& b);
  void sum_tied_embedding();
  void reduce_data_parallel();

  models::Llama& model_;
  parallel::Mesh& mesh_;
  bool zero1_;
  bool armed_ = false;
  bool overlap_ = true;
  std::vector<Bucket> buckets_;
  std::shared_ptr<parallel::Comm> embed_group_;  // first and last stage of this (dp, tp) column, when tied
  int64_t owned_begin_ = 0, owned_end_ = 0;
};

}  // namespace polder::train
