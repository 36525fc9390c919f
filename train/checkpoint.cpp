// Checkpoint save/load. Atomicity: files are written into .tmp-<name>, each fsynced, the directory renamed into
// place and fsynced, then `latest` replaced by rename. A crash at any point leaves the previous checkpoint and
// `latest` intact.
#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/safetensors.h"
#include "core/sha256.h"

namespace polder::train {
namespace fs = std::filesystem;

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

void fsync_path(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void write_text_atomic(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    POLDER_CHECK(out.good(), "cannot write '{}'", tmp.string());
    out << text;
    out.flush();
    POLDER_CHECK(out.good(), "writing '{}' failed (disk full?)", tmp.string());
  }
  fsync_path(tmp);
  fs::rename(tmp, path);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  POLDER_CHECK(in.good(), "cannot read '{}'", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Model weights as fp32 (the optimizer's master copy when the model is bf16), in the model's order.
Tensor master_weights(models::Llama& model, AdamW& opt) {
  return opt.master().defined() ? opt.master() : model.flat_params();
}

}  // namespace

std::string save_checkpoint(const std::string& dir, int64_t step, models::Llama& model, AdamW& opt,
                            const nlohmann::json& extra, int64_t keep_last) {
  NoGradGuard guard;
  const std::string name = step_name(step);
  const fs::path root(dir), final_dir = root / name, tmp = root / (".tmp-" + name);
  std::error_code ec;
  fs::create_directories(root, ec);
  POLDER_CHECK(!ec, "cannot create checkpoint folder '{}': {}", dir, ec.message());
  fs::remove_all(tmp);
  fs::create_directories(tmp);

  Tensor weights = master_weights(model, opt);
  safetensors::NamedTensors model_tensors, opt_tensors;
  nlohmann::json index = nlohmann::json::object();
  for (const models::Parameter& p : model.parameters()) {
    const Shape& shape = p.value.shape();
    const int64_t n = p.value.numel();
    model_tensors.push_back({p.name, weights.narrow(0, p.offset, n).view(shape)});
    opt_tensors.push_back({"exp_avg." + p.name, opt.exp_avg().narrow(0, p.offset, n).view(shape)});
    opt_tensors.push_back({"exp_avg_sq." + p.name, opt.exp_avg_sq().narrow(0, p.offset, n).view(shape)});
    // One shard per tensor for now: the whole tensor. Sharded layouts list one entry per rank file.
    index[p.name] = {{"global_shape", shape},
                     {"shards", {{{"file", "model.safetensors"}, {"dim", 0}, {"start", 0}, {"length", shape[0]}}}}};
  }
  safetensors::save((tmp / "model.safetensors").string(), model_tensors, {{"format", "pt"}});
  safetensors::save((tmp / "optimizer.safetensors").string(), opt_tensors);

  nlohmann::json meta;
  meta["format"] = "polder-checkpoint-1";
  meta["step"] = step;
  meta["optimizer_step"] = opt.steps_taken();
  meta["model_dtype"] = dtype_name(model.dtype());
  meta["tensors"] = index;
  meta["state"] = extra;
  meta["files"] = {{"model.safetensors", sha256_file((tmp / "model.safetensors").string())},
                   {"optimizer.safetensors", sha256_file((tmp / "optimizer.safetensors").string())}};
  write_text_atomic(tmp / "metadata.json", meta.dump(2));
  fsync_path(tmp);

  if (fs::exists(final_dir)) fs::remove_all(final_dir);  // re-saving the same step replaces it
  fs::rename(tmp, final_dir);
  fsync_path(root);
  write_text_atomic(root / "latest", name + "\n");
  fsync_path(root);

  // Keep the newest keep_last step directories.
  if (keep_last > 0) {
    std::vector<std::string> steps;
    for (const auto& e : fs::directory_iterator(root))
      if (e.is_directory() && e.path().filename().string().rfind("step_", 0) == 0)
        steps.push_back(e.path().filename().string());
    std::sort(steps.begin(), steps.end());
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < steps.size(); ++i)
      if (steps[i] != name) fs::remove_all(root / steps[i]);
  }
  return final_dir.string();
}

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  const fs::path latest = fs::path(dir) / "latest";
  if (!fs::exists(latest)) return std::nullopt;
  std::string name = read_text(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const fs::path target = fs::path(dir) / name;
  POLDER_CHECK(fs::is_directory(target), "checkpoint folder '{}': 'latest' names '{}', which does not exist", dir, name);
  return target.string();
}

std::string resolve_checkpoint(const std::string& path) {
  POLDER_CHECK(fs::exists(path), "checkpoint '{}' does not exist", path);
  if (fs::exists(fs::path(path) / "metadata.json")) return path;
  auto latest = latest_checkpoint(path);
  POLDER_CHECK(latest.has_value(), "'{}' is neither a checkpoint (no metadata.json) nor a checkpoint folder (no latest)",
               path);
  return *latest;
}

nlohmann::json read_checkpoint_metadata(const std::string& dir) {
  const fs::path meta_path = fs::path(dir) / "metadata.json";
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(read_text(meta_path));
  } catch (const nlohmann::json::exception& e) {
    POLDER_FAIL("checkpoint metadata '{}' is not valid JSON: {}", meta_path.string(), e.what());
  }
  POLDER_CHECK(meta.value("format", "") == "polder-checkpoint-1",
               "checkpoint metadata '{}' has format '{}', expected 'polder-checkpoint-1'", meta_path.string(),
               meta.value("format", ""));
  for (auto& [file, digest] : meta.at("files").items()) {
    const fs::path p = fs::path(dir) / file;
    POLDER_CHECK(fs::exists(p), "checkpoint file '{}' is missing", p.string());
    const std::string actual = sha256_file(p.string());
    POLDER_CHECK(actual == digest.get<std::string>(),
                 "checkpoint file '{}' is corrupted: SHA-256 {} does not match the recorded {}", p.string(), actual,
                 digest.get<std::string>());
  }
  return meta;
}

nlohmann::json load_checkpoint(const std::string& path, models::Llama& model, AdamW* opt) {
  NoGradGuard guard;
  const std::string dir = resolve_checkpoint(path);
  nlohmann::json meta = read_checkpoint_metadata(dir);
  auto weights = safetensors::File::open((fs::path(dir) / "model.safetensors").string());
  std::optional<safetensors::File> moments;
  if (opt) moments = safetensors::File::open((fs::path(dir) / "optimizer.safetensors").string());
  // Check everything before touching the model.
  for (const models::Parameter& p : model.parameters()) {
    POLDER_CHECK(weights.contains(p.name), "checkpoint '{}' has no tensor '{}' (does the model config match?)", dir,
                 p.name);
    POLDER_CHECK(weights.info(p.name).shape == p.value.shape(),
                 "checkpoint '{}': tensor '{}' is {} but the model expects {}", dir, p.name, weights.info(p.name).shape,
                 p.value.shape());
    if (opt)
      for (const char* prefix : {"exp_avg.", "exp_avg_sq."})
        POLDER_CHECK(moments->contains(prefix + p.name), "checkpoint '{}' has no optimizer tensor '{}{}'", dir, prefix,
                     p.name);
  }
  Tensor master = opt && opt->master().defined() ? opt->master() : Tensor();
  for (const models::Parameter& p : model.parameters()) {
    Tensor w = weights.load(p.name);
    const int64_t n = p.value.numel();
    if (master.defined()) master.narrow(0, p.offset, n).copy_(w.view({n}));
    p.value.detach().copy_(w);
    if (opt) {
      opt->exp_avg().narrow(0, p.offset, n).copy_(moments->load("exp_avg." + p.name).view({n}));
      opt->exp_avg_sq().narrow(0, p.offset, n).copy_(moments->load("exp_avg_sq." + p.name).view({n}));
    }
  }
  if (opt) opt->set_steps_taken(meta.at("optimizer_step").get<int64_t>());
  meta["path"] = dir;
  return meta;
}

}  // namespace polder::train
