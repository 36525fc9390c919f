// Checkpoints: a directory per step (<dir>/step_00000100) holding metadata.json (config, step, loader
// position, optimizer step, tensor index with global shapes and slices, SHA-256 of every file) and
// safetensors files: model.safetensors (fp32 master weights under their HF names, loadable by transformers)
// and optimizer.safetensors (exp_avg.<name>, exp_avg_sq.<name>). Written to a temporary directory, fsynced
// and renamed; <dir>/latest is updated last; only the newest keep_last are kept.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/model.h"
#include "parallel/mesh.h"
#include "train/optimizer.h"

namespace polder::train {

// A checkpoint that could not be written (disk full, permissions, ...): one line, "checkpoint step N not
// written: <what failed>; the previous checkpoint (step M) is intact". Thrown on every rank alike; the
// partial temporary folder is gone and `latest` still names the previous checkpoint.
class CheckpointWriteError : public Error {
 public:
  using Error::Error;
};

// A checkpoint whose metadata.json is unreadable or whose file is missing or fails its SHA-256 (a storage
// fault, not a mismatch with the model): train.resume: auto falls back to an older one on this error.
class CheckpointCorruptError : public Error {
 public:
  using Error::Error;
};

// Returns the path of the new checkpoint directory. With a mesh, this is a collective: every (pp, tp) shard
// is written by its dp-rank-0 process into shard-ppP-tpT.safetensors (ZeRO-sharded optimizer state is
// gathered over dp first); rank 0 writes metadata.json with every file's checksum and each tensor's shards
// (slices of the unsharded HF tensor, vocabulary padding excluded), renames the directory into place and
// updates `latest`. On any failure: CheckpointWriteError on every rank, nothing of the new checkpoint left
// behind.
// The checkpoint format's pieces, shared with train/convert.cpp's writer: the shard file of pipeline stage
// pp, tensor rank tp; a shard's length along its shard_dim without the vocabulary padding rows (0:
// replicated); the metadata.json "tensors" entry of parameter p's slice in `file`.
std::string shard_file(int64_t pp, int64_t tp);
int64_t real_length(const models::Parameter& p, const Shape& local);
void add_to_tensor_index(nlohmann::json& index, const models::Parameter& p, const Shape& local,
                         const std::string& file);

struct SaveOptions {
  std::string dir;  // the checkpoint root (<run_dir>/checkpoints)
  int64_t step = 0;
  nlohmann::json state;   // metadata.json "state": loader position, RNG, counters, the run config, HF info
  int64_t keep_last = 0;  // keep the newest keep_last step folders (0: all)
  parallel::Mesh* mesh = nullptr;  // every rank of the mesh calls save_checkpoint (nullptr: one process)
  // The host ranks a ZeRO shard is spread over (hybrid sharding's group); nullptr: the mesh's replicas.
  parallel::Comm* shard_comm = nullptr;
};
std::string save_checkpoint(models::Model& model, AdamW& optimizer, const SaveOptions& options);

// The checkpoint <dir>/latest points to, if any (polder::Error when `latest` names a missing directory).
std::optional<std::string> latest_checkpoint(const std::string& dir);
// What train.resume: auto may load, newest first: the checkpoint `latest` names, then the older step_*
// folders beside it (the fallbacks when it is corrupt). Empty when there is no `latest`.
std::vector<std::string> resume_candidates(const std::string& dir);

// `path` is a checkpoint directory, or a checkpoints folder (then its latest). Verifies the checksum of every
// file it reads and every tensor's global shape against the model before changing anything; loads this rank's
// slices of the weights (and, when optimizer is not null, of its moments, and its step) whatever layout wrote
// the checkpoint. Returns metadata.json.
nlohmann::json load_checkpoint(const std::string& path, models::Model& model, AdamW* optimizer);

// Resolves a checkpoint folder to a step directory (its latest) and reads + verifies metadata.json only.
std::string resolve_checkpoint(const std::string& path);
nlohmann::json read_checkpoint_metadata(const std::string& checkpoint_dir);

}  // namespace polder::train
