// HF <-> polder conversion and resharding. Every input is checked before anything is written (names, shapes,
// dtypes, tie consistency); outputs are written through StreamWriter (header first, then one tensor at a
// time, into <file>.tmp, fsynced and renamed) and metadata.json last, so a failed conversion leaves no
// checkpoint.
#include "train/convert.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/sha256.h"
#include "models/llama/model.h"
#include "train/checkpoint.h"
#include "train/files.h"

namespace polder::train {
namespace fs = std::filesystem;

namespace {

nlohmann::json read_json(const fs::path& path) {
  try {
    return nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    POLDER_FAIL("convert: '{}' is not valid JSON: {}", path.string(), e.what());
  }
}

// A safetensors file written one tensor at a time: the header (all names, dtypes, shapes) first, then add()
// in the same order. Written to path.tmp; finish() fsyncs and renames.
class StreamWriter {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
  };
  StreamWriter(std::string path, const std::vector<Entry>& entries)
      : path_(std::move(path)), entries_(entries) {
    nlohmann::ordered_json header;
    header["__metadata__"] = {{"format", "pt"}};
    uint64_t offset = 0;
    for (const Entry& e : entries_) {
      POLDER_CHECK(!header.contains(e.name), "convert: tensor '{}' appears twice in '{}'", e.name, path_);
      const uint64_t n = static_cast<uint64_t>(shape_numel(e.shape)) * dtype_size(e.dtype);
      header[e.name] = {{"dtype", safetensors::dtype_tag(e.dtype)},
                        {"shape", e.shape},
                        {"data_offsets", {offset, offset + n}}};
      offset += n;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    tmp_ = path_ + ".tmp";
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    POLDER_CHECK(fd_ >= 0, "convert: cannot create '{}': {}", tmp_, std::strerror(errno));
    const uint64_t len = text.size();
    write(&len, 8);
    write(text.data(), text.size());
  }
  ~StreamWriter() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  void add(const std::string& name, const Tensor& t) {
    POLDER_CHECK(next_ < entries_.size() && entries_[next_].name == name &&
                     entries_[next_].shape == t.shape() && entries_[next_].dtype == t.dtype(),
                 "convert: internal: tensor '{}' {} written out of order", name, t.shape());
    ++next_;
    write(t.raw_data(), t.nbytes());
  }
  void add_zeros(const std::string& name) {
    const Entry& e = entries_.at(next_);
    POLDER_CHECK(e.name == name, "convert: internal: tensor '{}' written out of order", name);
    ++next_;
    std::vector<char> zeros(1 << 20, 0);
    size_t n = static_cast<size_t>(shape_numel(e.shape)) * dtype_size(e.dtype);
    while (n > 0) {
      const size_t c = std::min(n, zeros.size());
      write(zeros.data(), c);
      n -= c;
    }
  }
  void finish() {
    POLDER_CHECK(next_ == entries_.size(), "convert: internal: '{}' got {} of {} tensors", path_, next_,
                 entries_.size());
    POLDER_CHECK(::fsync(fd_) == 0, "convert: fsync of '{}' failed: {}", tmp_, std::strerror(errno));
    ::close(fd_);
    fd_ = -1;
    POLDER_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0, "convert: cannot rename '{}': {}", tmp_,
                 std::strerror(errno));
  }

 private:
  void write(const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd_, c, n);
      if (w < 0 && errno == EINTR) continue;
      POLDER_CHECK(w > 0, "convert: writing '{}' failed: {}", tmp_, std::strerror(errno));
      c += w;
      n -= static_cast<size_t>(w);
    }
  }
  std::string path_, tmp_;
  std::vector<Entry> entries_;
  size_t next_ = 0;
  int fd_ = -1;
};

// Rows [start, start + len) along dim d of a contiguous tensor, as a new tensor.
Tensor slice_dim(const Tensor& src, int d, int64_t start, int64_t len) {
  Shape shape = src.shape();
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= shape[static_cast<size_t>(i)];
  for (size_t i = static_cast<size_t>(d) + 1; i < shape.size(); ++i) inner *= shape[i];
  const int64_t sl = shape[static_cast<size_t>(d)];
  shape[static_cast<size_t>(d)] = len;
  Tensor out = Tensor::empty(shape, src.dtype());
  const size_t es = dtype_size(src.dtype());
  const char* sp = static_cast<const char*>(src.raw_data());
  char* dp = static_cast<char*>(out.raw_data());
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(dp + static_cast<size_t>(o * len * inner) * es,
                sp + static_cast<size_t>((o * sl + start) * inner) * es,
                static_cast<size_t>(len * inner) * es);
  return out;
}

// The inverse: src into dst's rows [start, start + src.size(d)) along d.
void place_dim(const Tensor& src, Tensor& dst, int d, int64_t start) {
  const Shape& shape = dst.shape();
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= shape[static_cast<size_t>(i)];
  for (size_t i = static_cast<size_t>(d) + 1; i < shape.size(); ++i) inner *= shape[i];
  const int64_t dl = shape[static_cast<size_t>(d)], len = src.size(d);
  POLDER_CHECK(start >= 0 && start + len <= dl, "convert: shard rows [{}, {}) exceed the tensor's {}", start,
               start + len, dl);
  const size_t es = dtype_size(src.dtype());
  const char* sp = static_cast<const char*>(src.raw_data());
  char* dp = static_cast<char*>(dst.raw_data());
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(dp + static_cast<size_t>((o * dl + start) * inner) * es,
                sp + static_cast<size_t>(o * len * inner) * es, static_cast<size_t>(len * inner) * es);
}

std::string shard_file(int64_t pp, int64_t tp) {
  return "shard-pp" + std::to_string(pp) + "-tp" + std::to_string(tp) + ".safetensors";
}

// Full (unsharded) f32 tensors by name, "<name>", "exp_avg.<name>" or "exp_avg_sq.<name>"; null when the
// source has no optimizer state (then moments are written as zeros).
using Source = std::function<Tensor(const std::string& name)>;

// Writes checkpoint directory `out` in layout (tp, pp) from `source`: shard files, then metadata.json
// (the format of save_checkpoint: each tensor's slices of the unsharded tensor, vocabulary padding excluded).
void write_checkpoint(const std::string& out, const ModelConfig& model, int64_t tp, int64_t pp,
                      const Source& weights, const Source& moments, nlohmann::json meta) {
  fs::create_directories(out);
  nlohmann::json index = nlohmann::json::object(), files = nlohmann::json::object();
  for (int64_t s = 0; s < pp; ++s)
    for (int64_t t = 0; t < tp; ++t) {
      models::ParallelLayout l;
      l.tp = tp;
      l.tp_rank = t;
      l.pp = pp;
      l.pp_rank = s;
      const std::string file = shard_file(s, t);
      struct Piece {
        models::Parameter p;
        int64_t length;  // along shard_dim (0: whole)
        Shape shape;
      };
      std::vector<Piece> pieces;
      std::vector<StreamWriter::Entry> entries;
      for (auto& [p, local] : models::llama_local_parameters(model, l)) {
        if (p.tied_copy) continue;
        Shape shape = local;
        int64_t length = 0;
        if (p.shard_dim >= 0) {
          const size_t d = static_cast<size_t>(p.shard_dim);
          length = std::max<int64_t>(0, std::min(local[d], p.global_shape[d] - p.shard_start));
          shape[d] = length;
        }
        pieces.push_back({p, length, shape});
        for (const char* prefix : {"", "exp_avg.", "exp_avg_sq."})
          entries.push_back({prefix + p.name, DType::f32, shape});
        auto& entry = index[p.name];
        entry["global_shape"] = p.global_shape;
        nlohmann::json shard = {{"file", file}, {"dim", p.shard_dim}};
        if (p.shard_dim >= 0) {
          shard["start"] = p.shard_start;
          shard["length"] = length;
        }
        entry["shards"].push_back(shard);
      }
      StreamWriter w((fs::path(out) / file).string(), entries);
      for (const Piece& pc : pieces) {
        auto local = [&](const Tensor& full) {
          return pc.p.shard_dim >= 0 ? slice_dim(full, pc.p.shard_dim, pc.p.shard_start, pc.length) : full;
        };
        w.add(pc.p.name, local(weights(pc.p.name)));
        for (const char* prefix : {"exp_avg.", "exp_avg_sq."}) {
          if (moments)
            w.add(prefix + pc.p.name, local(moments(prefix + pc.p.name)));
          else
            w.add_zeros(prefix + pc.p.name);
        }
      }
      w.finish();
      files[file] = sha256_file((fs::path(out) / file).string());
    }
  meta["format"] = "polder-checkpoint-1";
  meta["model_dtype"] = "f32";
  meta["layout"]["tp"] = tp;
  meta["layout"]["pp"] = pp;
  if (!meta["layout"].contains("dp")) meta["layout"]["dp"] = 1;
  meta["tensors"] = index;
  meta["files"] = files;
  write_text_file_atomic(fs::path(out) / "metadata.json", meta.dump(2));
}

// A polder checkpoint read tensor by tensor: each tensor assembled from its shards, checksums verified once.
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path) {
    dir_ = resolve_checkpoint(path);
    meta_ = read_checkpoint_metadata(dir_);
    for (auto& [file, digest] : meta_.at("files").items()) {
      const fs::path p = fs::path(dir_) / file;
      POLDER_CHECK(fs::exists(p), "checkpoint file '{}' is missing", p.string());
      const std::string actual = sha256_file(p.string());
      POLDER_CHECK(actual == digest.get<std::string>(),
                   "checkpoint file '{}' is corrupted: SHA-256 {} does not match the recorded {}", p.string(),
                   actual, digest.get<std::string>());
      files_.emplace(file, safetensors::File::open(p.string()));
    }
    config_ =
        parse_config(meta_.at("state").at("config_yaml").get<std::string>(), {}, dir_ + "/metadata.json");
  }
  const nlohmann::json& meta() const { return meta_; }
  const Config& config() const { return config_; }
  bool has_moments() const {
    const auto& shards = meta_.at("tensors").begin().value().at("shards");
    return files_.at(shards.at(0).at("file").get<std::string>())
        .contains("exp_avg." + meta_.at("tensors").begin().key());
  }
  // prefix "" (weights), "exp_avg." or "exp_avg_sq.": the full tensor in f32.
  Tensor load(const std::string& prefix, const std::string& name) const {
    const auto& index = meta_.at("tensors");
    POLDER_CHECK(index.contains(name), "checkpoint '{}' has no tensor '{}'", dir_, name);
    const Shape global = index.at(name).at("global_shape").get<Shape>();
    Tensor out = Tensor::zeros(global, DType::f32);
    for (const auto& shard : index.at(name).at("shards")) {
      const safetensors::File& f = files_.at(shard.at("file").get<std::string>());
      POLDER_CHECK(f.contains(prefix + name), "checkpoint file '{}' has no tensor '{}{}'", f.path(), prefix,
                   name);
      Tensor src = f.load(prefix + name).to(DType::f32);
      const int d = shard.at("dim").get<int>();
      if (d < 0) {
        POLDER_CHECK(src.shape() == global, "checkpoint '{}': '{}{}' is {} but {} was expected", dir_, prefix,
                     name, src.shape(), global);
        return src;
      }
      place_dim(src, out, d, shard.at("start").get<int64_t>());
    }
    return out;
  }

 private:
  std::string dir_;
  nlohmann::json meta_;
  std::map<std::string, safetensors::File> files_;
  Config config_;
};

int64_t get_int(const nlohmann::json& hf, const char* key) {
  POLDER_CHECK(hf.contains(key) && hf[key].is_number_integer(), "convert: config.json has no integer '{}'",
               key);
  return hf[key].get<int64_t>();
}

template <typename T>
T get_or(const nlohmann::json& hf, const char* key, T fallback) {
  return hf.contains(key) && !hf[key].is_null() ? hf[key].get<T>() : fallback;
}

// The HF weights of a folder: model.safetensors, or the shards named by model.safetensors.index.json.
struct HfWeights {
  std::vector<safetensors::File> files;
  std::map<std::string, size_t> where;  // tensor name -> file

  explicit HfWeights(const fs::path& dir) {
    const fs::path index = dir / "model.safetensors.index.json", single = dir / "model.safetensors";
    std::vector<std::string> names;
    if (fs::exists(index)) {
      const nlohmann::json j = read_json(index);
      POLDER_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), "convert: '{}' has no weight_map",
                   index.string());
      for (auto& [tensor, file] : j["weight_map"].items())
        if (std::find(names.begin(), names.end(), file.get<std::string>()) == names.end())
          names.push_back(file.get<std::string>());
    } else {
      POLDER_CHECK(fs::exists(single),
                   "convert: '{}' has neither model.safetensors nor model.safetensors.index.json",
                   dir.string());
      names.push_back("model.safetensors");
    }
    for (const std::string& n : names) {
      POLDER_CHECK(fs::exists(dir / n), "convert: weight file '{}' (named by the index) is missing",
                   (dir / n).string());
      files.push_back(safetensors::File::open((dir / n).string()));
      for (const std::string& t : files.back().names()) {
        POLDER_CHECK(!where.count(t), "convert: tensor '{}' appears in both '{}' and '{}'", t,
                     files[where[t]].path(), files.back().path());
        where[t] = files.size() - 1;
      }
    }
  }
  const safetensors::File& file(const std::string& name) const { return files[where.at(name)]; }
  Tensor load_f32(const std::string& name) const { return file(name).load(name).to(DType::f32); }
};

bool ignorable(const std::string& name) {  // buffers older transformers versions saved
  return name.find("rotary_emb.inv_freq") != std::string::npos;
}

Config placeholder_run(const ModelConfig& model) {
  Config c;
  c.model = model;
  c.data.datasets = {{"data", "data/train", 1.0}};
  c.data.seq_len = std::min<int64_t>(model.max_seq_len, 2048);
  c.train.steps = 1;
  c.train.global_batch = 1;
  c.train.micro_batch = 1;
  c.train.resume = "none";
  return c;
}

}  // namespace

ModelConfig hf_config_to_model(const nlohmann::json& hf) {
  POLDER_CHECK(hf.is_object(), "convert: config.json is not a JSON object");
  std::string arch;
  if (hf.contains("architectures") && hf["architectures"].is_array() && !hf["architectures"].empty())
    arch = hf["architectures"][0].get<std::string>();
  else if (hf.value("model_type", "") == "llama")
    arch = "LlamaForCausalLM";
  else if (hf.value("model_type", "") == "mistral")
    arch = "MistralForCausalLM";
  else
    arch = hf.value("model_type", "(none)");
  POLDER_CHECK(arch == "LlamaForCausalLM" || arch == "MistralForCausalLM",
               "convert: architecture '{}' is not supported (LlamaForCausalLM, MistralForCausalLM)", arch);
  if (arch == "MistralForCausalLM")
    POLDER_CHECK(
        !hf.contains("sliding_window") || hf["sliding_window"].is_null(),
        "convert: MistralForCausalLM with sliding_window {} is not supported (only null: full attention)",
        hf["sliding_window"].dump());
  const std::string act = get_or<std::string>(hf, "hidden_act", "silu");
  POLDER_CHECK(act == "silu", "convert: hidden_act '{}' is not supported (silu)", act);
  for (const char* key : {"attention_bias", "mlp_bias"})
    POLDER_CHECK(!get_or<bool>(hf, key, false),
                 "convert: {} true is not supported (polder's Llama has no biases)", key);

  ModelConfig m;
  m.vocab_size = get_int(hf, "vocab_size");
  m.hidden_size = get_int(hf, "hidden_size");
  m.intermediate_size = get_int(hf, "intermediate_size");
  m.num_layers = get_int(hf, "num_hidden_layers");
  m.num_heads = get_int(hf, "num_attention_heads");
  m.num_kv_heads = get_or<int64_t>(hf, "num_key_value_heads", m.num_heads);
  const int64_t head_dim = get_or<int64_t>(hf, "head_dim", 0);
  m.head_dim = head_dim != 0 && m.num_heads > 0 && head_dim * m.num_heads != m.hidden_size ? head_dim : 0;
  m.max_seq_len = get_or<int64_t>(hf, "max_position_embeddings", 2048);
  m.rms_norm_eps = get_or<double>(hf, "rms_norm_eps", 1e-6);
  m.tie_embeddings = get_or<bool>(hf, "tie_word_embeddings", false);
  m.init_std = get_or<double>(hf, "initializer_range", 0.02);

  // transformers 5: rope_parameters {rope_theta, rope_type, ...}; 4: rope_theta and rope_scaling
  // {type|rope_type}.
  nlohmann::json rope = nlohmann::json::object();
  if (hf.contains("rope_parameters") && hf["rope_parameters"].is_object()) {
    rope = hf["rope_parameters"];
    m.rope_theta = get_or<double>(rope, "rope_theta", get_or<double>(hf, "rope_theta", 10000.0));
  } else {
    m.rope_theta = get_or<double>(hf, "rope_theta", 10000.0);
    if (hf.contains("rope_scaling") && hf["rope_scaling"].is_object()) rope = hf["rope_scaling"];
  }
  const std::string type =
      get_or<std::string>(rope, "rope_type", get_or<std::string>(rope, "type", "default"));
  POLDER_CHECK(type == "default" || type == "llama3",
               "convert: rope type '{}' is not supported (default, llama3)", type);
  if (type == "llama3") {
    for (const char* key :
         {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
      POLDER_CHECK(rope.contains(key) && rope[key].is_number(),
                   "convert: llama3 rope scaling has no number '{}'", key);
    m.rope_scaling_type = "llama3";
    m.rope_scaling_factor = rope["factor"].get<double>();
    m.rope_low_freq_factor = rope["low_freq_factor"].get<double>();
    m.rope_high_freq_factor = rope["high_freq_factor"].get<double>();
    m.rope_original_max_position = rope["original_max_position_embeddings"].get<int64_t>();
  }
  return m;
}

nlohmann::json model_to_hf_config(const ModelConfig& m, DType dtype) {
  POLDER_CHECK(dtype == DType::f32 || dtype == DType::bf16,
               "convert: output dtype {} is not supported (f32, bf16)", dtype);
  const int64_t head_dim = m.head_dim ? m.head_dim : m.hidden_size / m.num_heads;
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.hidden_size;
  j["intermediate_size"] = m.intermediate_size;
  j["num_hidden_layers"] = m.num_layers;
  j["num_attention_heads"] = m.num_heads;
  j["num_key_value_heads"] = m.num_kv_heads ? m.num_kv_heads : m.num_heads;
  j["head_dim"] = head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = m.max_seq_len;
  j["initializer_range"] = m.init_std;
  j["rms_norm_eps"] = m.rms_norm_eps;
  j["rope_theta"] = m.rope_theta;
  if (m.rope_scaling_type == "llama3")
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", m.rope_scaling_factor},
                         {"low_freq_factor", m.rope_low_freq_factor},
                         {"high_freq_factor", m.rope_high_freq_factor},
                         {"original_max_position_embeddings", m.rope_original_max_position}};
  else
    j["rope_scaling"] = nullptr;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["pretraining_tp"] = 1;
  j["tie_word_embeddings"] = m.tie_embeddings;
  j["torch_dtype"] = dtype == DType::bf16 ? "bfloat16" : "float32";
  j["use_cache"] = true;
  return nlohmann::json(j);
}

std::string import_hf(const std::string& hf_dir, const std::string& ckpt_dir, const ImportOptions& options) {
  const fs::path dir(hf_dir);
  POLDER_CHECK(fs::is_directory(dir), "convert: '{}' is not a folder", hf_dir);
  const ModelConfig model = hf_config_to_model(read_json(dir / "config.json"));
  Config run =
      options.config.empty() ? placeholder_run(model) : load_config(options.config, options.overrides);
  run.model = model;
  if (run.data.seq_len > model.max_seq_len) run.data.seq_len = model.max_seq_len;

  // Check everything before writing: every expected tensor present with its shape and a float dtype, nothing
  // unexpected, and a tied lm_head (if saved) equal to the embedding.
  const HfWeights hf(dir);
  std::map<std::string, Shape> expected;
  for (auto& [name, shape] : models::llama_parameter_shapes(model)) expected[name] = shape;
  for (auto& [name, file] : hf.where) {
    if (ignorable(name) || (model.tie_embeddings && name == "lm_head.weight")) continue;
    POLDER_CHECK(expected.count(name),
                 "convert: unexpected tensor '{}' in '{}' (not a {}-layer Llama parameter)", name,
                 hf.files[file].path(), model.num_layers);
  }
  for (auto& [name, shape] : models::llama_parameter_shapes(model)) {
    POLDER_CHECK(hf.where.count(name), "convert: missing tensor '{}' (expected shape {}) in '{}'", name,
                 shape, hf_dir);
    const safetensors::TensorInfo& info = hf.file(name).info(name);
    POLDER_CHECK(info.shape == shape, "convert: shape mismatch for '{}': expected {}, got {}", name, shape,
                 info.shape);
    POLDER_CHECK(info.dtype == DType::f32 || info.dtype == DType::bf16 || info.dtype == DType::f16,
                 "convert: tensor '{}' has dtype {}; supported: F32, BF16, F16", name,
                 safetensors::dtype_tag(info.dtype));
  }
  if (model.tie_embeddings && hf.where.count("lm_head.weight")) {
    const Tensor head = hf.load_f32("lm_head.weight"), emb = hf.load_f32("model.embed_tokens.weight");
    POLDER_CHECK(
        head.shape() == emb.shape() && std::memcmp(head.raw_data(), emb.raw_data(), head.nbytes()) == 0,
        "convert: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight");
  }

  fs::create_directories(ckpt_dir);
  const fs::path tok = dir / "tokenizer.json";
  if (fs::exists(tok)) {
    fs::copy_file(tok, fs::path(ckpt_dir) / "tokenizer.json", fs::copy_options::overwrite_existing);
    if (run.data.tokenizer.empty())
      run.data.tokenizer = fs::absolute(fs::path(ckpt_dir) / "tokenizer.json").string();
  }
  validate_config(run);
  nlohmann::json meta;
  meta["step"] = 0;
  meta["optimizer_step"] = 0;
  meta["layout"] = {{"tp", 1}, {"pp", 1}, {"dp", 1}};
  meta["state"] = {{"config_yaml", config_to_yaml(run)},
                   {"tokens_seen", 0},
                   {"seed", run.train.seed},
                   {"imported_from", fs::absolute(dir).string()}};
  write_checkpoint(
      ckpt_dir, model, 1, 1, [&](const std::string& name) { return hf.load_f32(name); }, nullptr, meta);
  return ckpt_dir;
}

void export_hf(const std::string& checkpoint, const std::string& hf_dir, DType out_dtype) {
  POLDER_CHECK(out_dtype == DType::f32 || out_dtype == DType::bf16,
               "convert: output dtype {} is not supported (f32, bf16)", out_dtype);
  const CheckpointReader ckpt(checkpoint);
  const ModelConfig& model = ckpt.config().model;
  fs::create_directories(hf_dir);
  const fs::path out(hf_dir);
  std::vector<StreamWriter::Entry> entries;
  const auto shapes = models::llama_parameter_shapes(model);
  for (auto& [name, shape] : shapes) entries.push_back({name, out_dtype, shape});
  StreamWriter w((out / "model.safetensors").string(), entries);
  for (auto& [name, shape] : shapes) w.add(name, ckpt.load("", name).to(out_dtype));
  w.finish();
  write_text_file_atomic(out / "config.json", model_to_hf_config(model, out_dtype).dump(2) + "\n");
  write_text_file_atomic(out / "generation_config.json", nlohmann::json{{"_from_model_config", true}}.dump(2) + "\n");
  const std::string& tok = ckpt.config().data.tokenizer;
  if (!tok.empty() && fs::exists(tok))
    fs::copy_file(tok, out / "tokenizer.json", fs::copy_options::overwrite_existing);
  nlohmann::json tok_config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                               {"model_max_length", model.max_seq_len},
                               {"clean_up_tokenization_spaces", false}};
  write_text_file_atomic(out / "tokenizer_config.json", tok_config.dump(2) + "\n");
}

std::string reshard(const std::string& checkpoint, const std::string& out, int64_t tp, int64_t pp) {
  const CheckpointReader ckpt(checkpoint);
  Config c = ckpt.config();
  c.parallel.tp = tp;
  c.parallel.pp = pp;
  c.parallel.virtual_stages = 1;
  c.parallel.dp = 0;
  validate_config(c);  // tp divides heads, kv heads, intermediate; pp <= layers
  nlohmann::json meta = ckpt.meta();
  for (const char* key : {"tensors", "files", "path"}) meta.erase(key);
  meta["layout"] = {{"tp", tp}, {"pp", pp}, {"dp", ckpt.meta().at("layout").value("dp", 1)}};
  const bool moments = ckpt.has_moments();
  Source weights = [&](const std::string& name) { return ckpt.load("", name); };
  Source m = [&](const std::string& name) {
    const size_t dot = name.find('.');
    return ckpt.load(name.substr(0, dot + 1), name.substr(dot + 1));
  };
  write_checkpoint(out, c.model, tp, pp, weights, moments ? m : Source(), meta);
  return out;
}

}  // namespace polder::train
