// Checkpoint save/load. Atomicity: files are written into .tmp-<name>, each fsynced, the directory renamed
// into place and fsynced, then `latest` replaced by rename. A crash at any point leaves the previous
// checkpoint and `latest` intact; a failed write (disk full, permissions) removes .tmp-<name> and says so on
// every rank.
#include "train/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/autograd.h"
#include "core/safetensors.h"
#include "core/sha256.h"
#include "train/distributed.h"
#include "train/files.h"

namespace polder::train {
namespace fs = std::filesystem;

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

// The full local state as f32/f64 flat host tensors: master weights, exp_avg, exp_avg_sq. Under ZeRO-1 the
// optimizer owns a chunk; the chunks are all-gathered over dp (a collective, on the state's device). A model
// on a GPU is copied to the host here, once per checkpoint.
struct LocalState {
  Tensor weights, m, v;
};

LocalState gather_local_state(models::Model& model, AdamW& opt, parallel::Mesh* mesh, parallel::Comm* shard) {
  const int64_t n = model.parameter_set().flat_numel();
  const DType sd = opt.exp_avg().dtype();
  LocalState s;
  if (opt.begin() == 0 && opt.end() == n) {
    s.weights = (opt.master().defined() ? opt.master() : model.flat_params()).to(Device::cpu());
    s.m = opt.exp_avg().to(Device::cpu());
    s.v = opt.exp_avg_sq().to(Device::cpu());
    return s;
  }
  POLDER_CHECK(mesh != nullptr, "checkpoint: a sharded optimizer needs the mesh to gather its state");
  s.weights = Tensor::empty({n}, sd);
  s.m = Tensor::empty({n}, sd);
  s.v = Tensor::empty({n}, sd);
  Tensor w_mine = opt.master().defined()
                      ? opt.master()
                      : model.flat_params().narrow(0, opt.begin() - model.parameter_set().param_offset(),
                                                   opt.end() - opt.begin());
  // The host mesh gathers host copies (a GPU's chunks are copied down first).
  parallel::Comm& group = shard ? *shard : mesh->replicas();
  group.all_gather(w_mine.to(sd).to(Device::cpu()), s.weights);
  group.all_gather(opt.exp_avg().to(Device::cpu()), s.m);
  group.all_gather(opt.exp_avg_sq().to(Device::cpu()), s.v);
  return s;
}

// Copies the block [a, b) along dim d from src (whose dim-d range starts at src_start) into dst (starting at
// dst_start). Both are contiguous row-major tensors of equal dtype and equal sizes on the other dims.
void copy_range(const Tensor& src, int64_t src_start, Tensor& dst, int64_t dst_start, int d, int64_t a,
                int64_t b) {
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= src.size(i);
  for (int64_t i = d + 1; i < src.dim(); ++i) inner *= src.size(i);
  const size_t es = dtype_size(src.dtype());
  const int64_t sl = src.size(d), dl = dst.size(d);
  const char* sp = static_cast<const char*>(src.raw_data());
  char* dp = static_cast<char*>(dst.raw_data());
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(dp + ((o * dl + (a - dst_start)) * inner) * es,
                sp + ((o * sl + (a - src_start)) * inner) * es, static_cast<size_t>((b - a) * inner) * es);
}

}  // namespace

int64_t real_length(const models::Parameter& p, const Shape& local) {
  if (p.shard_dim < 0) return 0;
  const size_t d = static_cast<size_t>(p.shard_dim);
  return std::max<int64_t>(0, std::min(local[d], p.global_shape[d] - p.shard_start));
}

std::string shard_file(int64_t pp, int64_t tp) {
  return "shard-pp" + std::to_string(pp) + "-tp" + std::to_string(tp) + ".safetensors";
}

void add_to_tensor_index(nlohmann::json& index, const models::Parameter& p, const Shape& local,
                         const std::string& file) {
  auto& entry = index[p.name];
  entry["global_shape"] = p.global_shape;
  nlohmann::json shard = {{"file", file}, {"dim", p.shard_dim}};
  if (p.shard_dim >= 0) {
    shard["start"] = p.shard_start;
    shard["length"] = real_length(p, local);
  }
  entry["shards"].push_back(shard);
}

namespace {

// What a step of the save raised, as one line (empty: it worked).
template <typename Fn>
void attempt(std::string& failure, Fn&& fn) {
  if (!failure.empty()) return;
  try {
    fn();
  } catch (const Error& e) {
    failure = e.message();
  } catch (const std::exception& e) {
    failure = e.what();
  }
}

// The ranks agree on whether a phase of the save failed: the lowest failing rank's message, known to every
// rank afterwards (empty: no rank failed).
std::string agree_failure(parallel::Mesh* mesh, const std::string& mine) {
  return mesh ? agree_on_failure(mesh->world(), mine) : mine;
}

std::string previous_checkpoint_note(const fs::path& root) {
  try {
    if (auto latest = latest_checkpoint(root.string())) {
      const std::string name = fs::path(*latest).filename().string();
      return format("the previous checkpoint (step {}) is intact", std::stoll(name.substr(5)));
    }
  } catch (const std::exception&) {
  }
  return "there is no previous checkpoint";
}

}  // namespace

namespace {

// Rank 0 makes <root> and an empty <tmp> in it; a failure message, or "".
void make_temporary_folder(const fs::path& root, const fs::path& tmp, std::string& failure) {
  attempt(failure, [&] {
    std::error_code ec;
    fs::create_directories(root, ec);
    POLDER_CHECK(!ec && fs::is_directory(root), "cannot create checkpoint folder '{}': {}", root.string(),
                 ec ? ec.message() : "it exists and is not a folder");
    fs::remove_all(tmp, ec);
    POLDER_CHECK(!ec, "cannot remove '{}': {}", tmp.string(), ec.message());
    fs::create_directory(tmp, ec);
    POLDER_CHECK(!ec, "cannot create '{}': {}", tmp.string(), ec.message());
  });
}

// This rank's shard file: weights and both moments of every parameter it holds (tied copies excluded, the
// vocabulary padding cut off), under HF names. Returns its SHA-256.
std::string write_shard(const fs::path& path, models::Model& model, const LocalState& state) {
  safetensors::NamedTensors tensors;
  for (const models::Parameter& p : model.parameters()) {
    if (p.tied_copy) continue;
    const Shape& shape = p.value.shape();
    const int64_t n = p.value.numel();
    auto slice = [&](const Tensor& flat) {
      Tensor t = flat.narrow(0, p.offset, n).view(shape);
      if (p.shard_dim == 0) t = t.narrow(0, 0, real_length(p, shape));
      return t;
    };
    tensors.push_back({p.name, slice(state.weights)});
    tensors.push_back({"exp_avg." + p.name, slice(state.m)});
    tensors.push_back({"exp_avg_sq." + p.name, slice(state.v)});
  }
  safetensors::save(path.string(), tensors, {{"format", "pt"}});
  return sha256_file(path.string());
}

// Every rank's digest, in world-rank order (64 hex characters each; non-writers send zeros).
std::vector<std::string> all_digests(const std::string& digest, parallel::Mesh* mesh) {
  if (!mesh) return {digest};
  Tensor mine = Tensor::empty({64}, DType::u8), all = Tensor::empty({64 * mesh->world_size()}, DType::u8);
  std::memcpy(mine.raw_data(), digest.data(), 64);
  mesh->world().all_gather(mine, all);
  std::vector<std::string> out;
  for (int r = 0; r < mesh->world_size(); ++r)
    out.emplace_back(static_cast<const char*>(all.raw_data()) + 64 * r, 64);
  return out;
}

// metadata.json: the tensor index (each parameter's global shape and every shard file's slice of it, for
// every (pp, tp) rank of this layout), the files' digests, the step, the layout and the caller's state.
nlohmann::json checkpoint_metadata(models::Model& model, const AdamW& opt, const SaveOptions& o,
                                   const std::vector<std::string>& digests) {
  parallel::Mesh* mesh = o.mesh;
  const int64_t tp = mesh ? mesh->tp_size() : 1, pp = mesh ? mesh->pp_size() : 1;
  nlohmann::json index = nlohmann::json::object(), files = nlohmann::json::object();
  for (int64_t s = 0; s < pp; ++s)
    for (int64_t t = 0; t < tp; ++t) {
      const auto l = models::ParallelLayout::of(tp, t, pp, s, model.layout().virtual_stages);
      const std::string f = shard_file(s, t);
      const int r = mesh ? mesh->global_rank(static_cast<int>(t), static_cast<int>(s), 0) : 0;
      files[f] = digests[static_cast<size_t>(r)];
      for (auto& [p, local] : model.local_parameters(l))
        if (!p.tied_copy) add_to_tensor_index(index, p, local, f);
    }
  nlohmann::json meta;
  meta["format"] = "polder-checkpoint-1";
  meta["step"] = o.step;
  meta["optimizer_step"] = opt.steps_taken();
  meta["model_dtype"] = dtype_name(model.dtype());
  meta["layout"] = {
      {"tp", tp}, {"pp", pp}, {"dp", mesh ? mesh->dp_size() : 1}, {"cp", mesh ? mesh->cp_size() : 1}};
  meta["tensors"] = index;
  meta["state"] = o.state;
  meta["files"] = files;
  return meta;
}

// Rank 0: metadata.json into <tmp>, then <tmp> becomes <root>/<name> and `latest` names it, each step synced.
// On failure whatever part of the switch happened is undone, so `latest` still names the previous checkpoint.
void publish(const fs::path& root, const fs::path& tmp, const std::string& name, const nlohmann::json& meta,
             std::string& failure) {
  const fs::path final_dir = root / name, old = root / (".old-" + name);
  bool moved_old = false, renamed = false;
  attempt(failure, [&] {
    write_text_file_atomic(tmp / "metadata.json", meta.dump(2));
    fsync_path(tmp);
    // Re-saving a step: the old folder moves aside until `latest` names the new one (rename(2) cannot replace
    // a non-empty folder).
    std::error_code ec;
    fs::remove_all(old, ec);
    if (fs::exists(final_dir)) {
      fs::rename(final_dir, old);
      moved_old = true;
    }
    fs::rename(tmp, final_dir);
    renamed = true;
    fsync_path(root);
    write_text_file_atomic(root / "latest", name + "\n");
    fsync_path(root);
  });
  std::error_code ec;
  if (failure.empty()) {
    fs::remove_all(old, ec);
    return;
  }
  if (renamed) fs::remove_all(final_dir, ec);
  if (moved_old) fs::rename(old, final_dir, ec);
}

// Keeps the newest keep_last step folders (and `name`); removes temporary folders of interrupted saves.
void prune(const fs::path& root, const std::string& name, int64_t keep_last) {
  std::error_code ec;
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string f = e.path().filename().string();
    if (e.is_directory() && f.rfind("step_", 0) == 0) steps.push_back(f);
    if (e.is_directory() && (f.rfind(".tmp-step_", 0) == 0 || f.rfind(".old-step_", 0) == 0))
      fs::remove_all(e.path(), ec);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; keep_last > 0 && i + static_cast<size_t>(keep_last) < steps.size(); ++i)
    if (steps[i] != name) fs::remove_all(root / steps[i], ec);
}

}  // namespace

std::string save_checkpoint(models::Model& model, AdamW& opt, const SaveOptions& o) {
  NoGradGuard guard;
  const std::string name = step_name(o.step);
  const fs::path root(o.dir), tmp = root / (".tmp-" + name);
  const bool rank0 = !o.mesh || o.mesh->rank() == 0;
  const bool writer = !o.mesh || o.mesh->replica_rank() == 0;
  // Each phase can fail on some rank (disk full, permissions, a file where a folder should be); the ranks
  // agree after each, and on failure every rank throws the same CheckpointWriteError once the partial
  // temporary folder is removed, so the previous checkpoint and `latest` are never touched.
  auto fail_if_any = [&](const std::string& mine) {
    const std::string failure = agree_failure(o.mesh, mine);
    if (failure.empty()) return;
    if (rank0) {
      std::error_code ec;
      fs::remove_all(tmp, ec);
    }
    throw CheckpointWriteError(
        format("checkpoint step {} not written: {}; {}", o.step, failure, previous_checkpoint_note(root)),
        __FILE__, __LINE__);
  };
  std::string failure;
  if (rank0) make_temporary_folder(root, tmp, failure);
  fail_if_any(failure);

  const LocalState state = gather_local_state(model, opt, o.mesh, o.shard_comm);
  const models::ParallelLayout& layout = model.layout();
  std::string digest(64, '0');
  if (writer)
    attempt(failure,
            [&] { digest = write_shard(tmp / shard_file(layout.pp_rank, layout.tp_rank), model, state); });
  fail_if_any(failure);
  const std::vector<std::string> digests = all_digests(digest, o.mesh);
  if (rank0) {
    publish(root, tmp, name, checkpoint_metadata(model, opt, o, digests), failure);
    if (failure.empty()) prune(root, name, o.keep_last);
  }
  fail_if_any(failure);
  return (root / name).string();
}

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  const fs::path latest = fs::path(dir) / "latest";
  if (!fs::exists(latest)) return std::nullopt;
  std::string name = read_text_file(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const fs::path target = fs::path(dir) / name;
  POLDER_CHECK(fs::is_directory(target), "checkpoint folder '{}': 'latest' names '{}', which does not exist",
               dir, name);
  return target.string();
}

std::string resolve_checkpoint(const std::string& path) {
  POLDER_CHECK(fs::exists(path), "checkpoint '{}' does not exist", path);
  if (fs::exists(fs::path(path) / "metadata.json")) return path;
  auto latest = latest_checkpoint(path);
  POLDER_CHECK(latest.has_value(),
               "'{}' is neither a checkpoint (no metadata.json) nor a checkpoint folder (no latest)", path);
  return *latest;
}

nlohmann::json read_checkpoint_metadata(const std::string& dir) {
  const fs::path meta_path = fs::path(dir) / "metadata.json";
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(read_text_file(meta_path));
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointCorruptError(
        format("checkpoint metadata '{}' is not valid JSON: {}", meta_path.string(), e.what()), __FILE__,
        __LINE__);
  } catch (const Error& e) {
    throw CheckpointCorruptError(format("checkpoint metadata: {}", e.message()), __FILE__, __LINE__);
  }
  if (meta.value("format", "") != "polder-checkpoint-1")
    throw CheckpointCorruptError(
        format("checkpoint metadata '{}' has format '{}', expected 'polder-checkpoint-1'", meta_path.string(),
               meta.value("format", "")),
        __FILE__, __LINE__);
  return meta;
}

std::vector<std::string> resume_candidates(const std::string& dir) {
  // Not latest_checkpoint(): a `latest` that names a folder lost to a storage fault is a candidate to skip.
  const fs::path latest = fs::path(dir) / "latest";
  if (!fs::exists(latest)) return {};
  std::string newest = read_text_file(latest);
  while (!newest.empty() && (newest.back() == '\n' || newest.back() == ' ')) newest.pop_back();
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (e.is_directory() && f.rfind("step_", 0) == 0 && f < newest) names.push_back(f);
  }
  std::sort(names.rbegin(), names.rend());
  std::vector<std::string> out{(fs::path(dir) / newest).string()};
  for (const std::string& n : names) out.push_back((fs::path(dir) / n).string());
  return out;
}

namespace {
void verify_file(const std::string& dir, const nlohmann::json& meta, const std::string& file) {
  const fs::path p = fs::path(dir) / file;
  auto corrupt = [](std::string message) {
    throw CheckpointCorruptError(std::move(message), __FILE__, __LINE__);
  };
  if (!meta.at("files").contains(file))
    corrupt(format("checkpoint '{}': metadata lists no file '{}'", dir, file));
  if (!fs::exists(p)) corrupt(format("checkpoint file '{}' is missing", p.string()));
  const std::string want = meta.at("files").at(file).get<std::string>();
  const std::string actual = sha256_file(p.string());
  if (actual != want)
    corrupt(format("checkpoint file '{}' is corrupted: SHA-256 {} does not match the recorded {}", p.string(),
                   actual, want));
}
}  // namespace

nlohmann::json load_checkpoint(const std::string& path, models::Model& model, AdamW* opt) {
  NoGradGuard guard;
  const std::string dir = resolve_checkpoint(path);
  nlohmann::json meta = read_checkpoint_metadata(dir);
  const nlohmann::json& index = meta.at("tensors");
  // Check names and global shapes, and the checksum of every file this rank reads, before changing anything.
  // A tensor the model lacks (say q_proj.bias of a Qwen2 import under a config without model.qkv_bias) would
  // otherwise be dropped without a word.
  std::set<std::string> known;
  for (auto& [name, shape] : models::model_parameter_shapes(model.config())) known.insert(name);
  for (auto& [name, entry] : index.items())
    POLDER_CHECK(known.count(name),
                 "checkpoint '{}' has tensor '{}', which the model config does not have "
                 "(model.qkv_bias, o_proj_bias, tie_embeddings or num_layers differ?)",
                 dir, name);
  std::map<std::string, safetensors::File> files;
  for (const models::Parameter& p : model.parameters()) {
    POLDER_CHECK(index.contains(p.name), "checkpoint '{}' has no tensor '{}' (does the model config match?)",
                 dir, p.name);
    const Shape global = index.at(p.name).at("global_shape").get<Shape>();
    POLDER_CHECK(global == p.global_shape, "checkpoint '{}': tensor '{}' is {} but the model expects {}", dir,
                 p.name, global, p.global_shape);
    for (const auto& shard : index.at(p.name).at("shards")) {
      const std::string f = shard.at("file").get<std::string>();
      if (files.count(f)) continue;
      verify_file(dir, meta, f);
      files.emplace(f, safetensors::File::open((fs::path(dir) / f).string()));
    }
  }
  // Assemble this rank's flat state (f32/f64) from the shards that overlap each local slice.
  const int64_t n = model.parameter_set().flat_numel();
  const DType sd = model.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor w = Tensor::zeros({n}, sd), m = Tensor::zeros({n}, sd), v = Tensor::zeros({n}, sd);
  for (const models::Parameter& p : model.parameters()) {
    const Shape local = p.value.shape();
    const int64_t cnt = p.value.numel();
    for (const auto& shard : index.at(p.name).at("shards")) {
      const safetensors::File& f = files.at(shard.at("file").get<std::string>());
      const int ds = shard.at("dim").get<int>();
      const int d = ds >= 0 ? ds : p.shard_dim;
      for (auto [prefix, flat] :
           {std::pair<std::string, Tensor*>{"", &w}, {"exp_avg.", &m}, {"exp_avg_sq.", &v}}) {
        if (!opt && !prefix.empty()) continue;
        POLDER_CHECK(f.contains(prefix + p.name), "checkpoint file '{}' has no tensor '{}{}'", f.path(),
                     prefix, p.name);
        Tensor src = f.load(prefix + p.name).to(sd);
        Tensor dst =
            flat->narrow(0, p.offset, cnt).view(local);  // p.value's data may not be resident (ZeRO-3)
        if (d < 0) {
          POLDER_CHECK(src.shape() == local, "checkpoint '{}': '{}' is {} but {} was expected", dir, p.name,
                       src.shape(), local);
          dst.copy_(src);
          continue;
        }
        const size_t du = static_cast<size_t>(d);
        const int64_t s0 = ds >= 0 ? shard.at("start").get<int64_t>() : 0, s1 = s0 + src.size(d);
        const int64_t l0 = p.shard_dim >= 0 ? p.shard_start : 0;
        const int64_t l1 = std::min(l0 + local[du], p.global_shape[du]);
        const int64_t a = std::max(s0, l0), b = std::min(s1, l1);
        if (a < b) copy_range(src, s0, dst, l0, d, a, b);
      }
    }
  }
  if (opt) {
    const int64_t lo = opt->begin(), len = opt->end() - opt->begin();
    if (opt->master().defined()) opt->master().copy_(w.narrow(0, lo, len));
    opt->exp_avg().copy_(m.narrow(0, lo, len));
    opt->exp_avg_sq().copy_(v.narrow(0, lo, len));
    opt->set_steps_taken(meta.at("optimizer_step").get<int64_t>());
  }
  // ZeRO-3: this rank keeps its shard of the flat space only.
  const ParameterSet& ps = model.parameter_set();
  model.flat_params().copy_(w.narrow(0, ps.param_offset(), model.flat_params().numel()));
  meta["path"] = dir;
  return meta;
}

}  // namespace polder::train
