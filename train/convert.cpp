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
#include "data/tokenizer.h"
#include "models/llama/hf.h"
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
      const auto l = models::ParallelLayout::of(tp, t, pp, s);
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
        const int64_t length = real_length(p, local);
        if (p.shard_dim >= 0) shape[static_cast<size_t>(p.shard_dim)] = length;
        pieces.push_back({p, length, shape});
        for (const char* prefix : {"", "exp_avg.", "exp_avg_sq."})
          entries.push_back({prefix + p.name, DType::f32, shape});
        add_to_tensor_index(index, p, local, file);
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

// An HF special-token id field: an int, a list of ints (eos_token_id), or null / absent (empty).
std::vector<int64_t> token_ids(const nlohmann::json& j, const char* key, const char* file) {
  if (!j.contains(key) || j[key].is_null() || (j[key].is_array() && j[key].empty())) return {};
  const nlohmann::json& v = j[key];
  std::vector<int64_t> ids;
  if (v.is_number_integer()) ids.push_back(v.get<int64_t>());
  if (v.is_array())
    for (const nlohmann::json& e : v)
      if (e.is_number_integer()) ids.push_back(e.get<int64_t>());
  POLDER_CHECK(!ids.empty() && (v.is_number_integer() || ids.size() == v.size()),
               "convert: {} has {} {}, expected an integer or a list of integers", file, key, v.dump());
  return ids;
}

// tokenizer_config.json's bos_token / eos_token: a string or an AddedToken {"content": ...}; "" if absent.
std::string token_name(const nlohmann::json& j, const char* key) {
  if (!j.contains(key)) return "";
  const nlohmann::json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return "";
}

// Token <-> id in a tokenizer.json read as JSON (not parsed into a Tokenizer, so that a tokenizer polder
// cannot run yet still names its special tokens): added_tokens first, then model.vocab (an object for BPE and
// WordLevel, a list of [piece, score] for Unigram).
std::optional<int64_t> tokenizer_json_id(const nlohmann::json& tok, const std::string& name) {
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array())
    for (const nlohmann::json& a : tok["added_tokens"])
      if (a.value("content", "") == name && a.contains("id")) return a["id"].get<int64_t>();
  if (!tok.contains("model") || !tok["model"].contains("vocab")) return std::nullopt;
  const nlohmann::json& vocab = tok["model"]["vocab"];
  if (vocab.is_object() && vocab.contains(name) && vocab[name].is_number_integer())
    return vocab[name].get<int64_t>();
  if (vocab.is_array())
    for (size_t i = 0; i < vocab.size(); ++i)
      if (vocab[i].is_array() && !vocab[i].empty() && vocab[i][0] == name) return static_cast<int64_t>(i);
  return std::nullopt;
}

std::string tokenizer_json_token(const nlohmann::json& tok, int64_t id) {
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array())
    for (const nlohmann::json& a : tok["added_tokens"])
      if (a.value("id", int64_t{-1}) == id && a.contains("content")) return a["content"].get<std::string>();
  if (!tok.contains("model") || !tok["model"].contains("vocab")) return "";
  const nlohmann::json& vocab = tok["model"]["vocab"];
  if (vocab.is_object())
    for (auto& [piece, v] : vocab.items())
      if (v == id) return piece;
  if (vocab.is_array() && id >= 0 && static_cast<size_t>(id) < vocab.size() && vocab[id].is_array())
    return vocab[id][0].get<std::string>();
  return "";
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

nlohmann::json HfInfo::to_json() const {
  nlohmann::json j = {{"architecture", architecture},
                      {"bos_token_id", bos_token_id ? nlohmann::json(*bos_token_id) : nlohmann::json()},
                      {"eos_token_ids", eos_token_ids},
                      {"bos_from", bos_from},
                      {"eos_from", eos_from}};
  return j;
}

HfInfo HfInfo::from_json(const nlohmann::json& j) {
  HfInfo info;
  if (j.is_null()) return info;
  POLDER_CHECK(j.is_object(), "checkpoint metadata: state.hf is {}, expected an object", j.dump());
  info.architecture = j.value("architecture", "");
  if (j.contains("bos_token_id") && !j["bos_token_id"].is_null())
    info.bos_token_id = j["bos_token_id"].get<int64_t>();
  if (j.contains("eos_token_ids")) info.eos_token_ids = j["eos_token_ids"].get<std::vector<int64_t>>();
  info.bos_from = j.value("bos_from", "");
  info.eos_from = j.value("eos_from", "");
  return info;
}

HfInfo checkpoint_hf_info(const nlohmann::json& meta) {
  if (!meta.contains("state") || !meta["state"].contains("hf")) return {};
  return HfInfo::from_json(meta["state"]["hf"]);
}

HfInfo hf_special_tokens(const std::string& hf_dir, int64_t vocab_size) {
  const fs::path dir(hf_dir);
  HfInfo info;
  for (const char* file : {"generation_config.json", "config.json"}) {
    if (!fs::exists(dir / file)) continue;
    const nlohmann::json j = read_json(dir / file);
    if (!j.is_object()) continue;
    const std::vector<int64_t> bos = token_ids(j, "bos_token_id", file);
    POLDER_CHECK(bos.size() <= 1, "convert: {} has bos_token_id {}, expected one integer", file,
                 j["bos_token_id"].dump());
    if (!info.bos_token_id && !bos.empty()) {
      info.bos_token_id = bos[0];
      info.bos_from = file;
    }
    if (info.eos_token_ids.empty()) {
      info.eos_token_ids = token_ids(j, "eos_token_id", file);
      if (!info.eos_token_ids.empty()) info.eos_from = file;
    }
  }
  // tokenizer_config.json names the tokens; tokenizer.json gives their ids (skipped when there is none).
  const fs::path tc = dir / "tokenizer_config.json", tj = dir / "tokenizer.json";
  if ((!info.bos_token_id || info.eos_token_ids.empty()) && fs::exists(tc) && fs::exists(tj)) {
    const nlohmann::json config = read_json(tc), tok = read_json(tj);
    auto lookup = [&](const char* key) -> std::optional<int64_t> {
      const std::string name = token_name(config, key);
      if (name.empty()) return std::nullopt;
      const std::optional<int64_t> id = tokenizer_json_id(tok, name);
      POLDER_CHECK(id.has_value(), "convert: tokenizer_config.json has {} '{}', which '{}' does not contain",
                   key, name, tj.string());
      return id;
    };
    if (!info.bos_token_id)
      if (auto id = lookup("bos_token")) {
        info.bos_token_id = *id;
        info.bos_from = "tokenizer_config.json (bos_token '" + token_name(config, "bos_token") + "')";
      }
    if (info.eos_token_ids.empty())
      if (auto id = lookup("eos_token")) {
        info.eos_token_ids = {*id};
        info.eos_from = "tokenizer_config.json (eos_token '" + token_name(config, "eos_token") + "')";
      }
  }
  std::vector<int64_t> unique;
  for (int64_t id : info.eos_token_ids) {
    POLDER_CHECK(id >= 0 && id < vocab_size, "convert: {} has eos id {}, outside the vocabulary [0, {})",
                 info.eos_from, id, vocab_size);
    if (std::find(unique.begin(), unique.end(), id) == unique.end()) unique.push_back(id);
  }
  info.eos_token_ids = unique;
  if (info.bos_token_id)
    POLDER_CHECK(*info.bos_token_id >= 0 && *info.bos_token_id < vocab_size,
                 "convert: {} has bos id {}, outside the vocabulary [0, {})", info.bos_from,
                 *info.bos_token_id, vocab_size);
  return info;
}

std::vector<int32_t> generation_stop_ids(const HfInfo& info, const data::Tokenizer& tok, std::string& note) {
  note.clear();
  if (!info.eos_token_ids.empty()) return {info.eos_token_ids.begin(), info.eos_token_ids.end()};
  try {
    const int32_t id = tok.eos_id();
    note = format("no end-of-text token is recorded in the checkpoint; guessed '{}' (id {}) by name",
                  tok.id_to_token(id), id);
    return {id};
  } catch (const Error& e) {
    note = format(
        "no end-of-text token is recorded in the checkpoint, and none found by name ({}): "
        "generating up to the token limit",
        e.message());
    return {};
  }
}

namespace {
// A checkpoint that records no EOS (a polder-trained model): the token its data preparation ended documents
// with (Tokenizer::eos_id) goes into tokens. Returns the line that says what was guessed, or why nothing was.
std::string guess_export_eos(HfInfo& tokens, const ModelConfig& model, const std::string& tokenizer) {
  const std::string none = "generation_config.json has no eos_token_id";
  if (tokenizer.empty())
    return format("no end-of-text token is recorded in the checkpoint and it names no tokenizer: {}", none);
  try {
    const data::Tokenizer t = data::Tokenizer::from_file(tokenizer);
    const int32_t id = t.eos_id();
    if (id >= model.vocab_size)
      return format("the end-of-text token '{}' of '{}' has id {}, outside the model's vocabulary of {}: {}",
                    t.id_to_token(id), tokenizer, id, model.vocab_size, none);
    tokens.eos_token_ids = {id};
    return format(
        "no end-of-text token is recorded in the checkpoint; guessed '{}' (id {}) by name from '{}'",
        t.id_to_token(id), id, tokenizer);
  } catch (const Error& e) {
    return format("no end-of-text token is recorded in the checkpoint nor found in '{}' ({}): {}", tokenizer,
                  e.message(), none);
  }
}
// Checks an HF folder's weights before anything is written: every expected tensor present with its shape
// and a float dtype, nothing unexpected, and a tied head (if saved) equal to the embedding.
void check_hf_weights(const HfWeights& hf, const std::vector<models::HfTensor>& tensors,
                      const ModelConfig& model, const std::string& hf_dir) {
  std::set<std::string> expected;
  for (const models::HfTensor& t : tensors) expected.insert(t.hf_name);
  for (auto& [name, file] : hf.where) {
    if (models::hf_tensor_ignored(model, name)) continue;
    POLDER_CHECK(expected.count(name),
                 "convert: unexpected tensor '{}' in '{}' (not a {}-layer Llama parameter)", name,
                 hf.files[file].path(), model.num_layers);
  }
  for (const models::HfTensor& t : tensors) {
    const std::string& name = t.hf_name;
    POLDER_CHECK(hf.where.count(name), "convert: missing tensor '{}' (expected shape {}) in '{}'", name,
                 t.shape, hf_dir);
    const safetensors::TensorInfo& info = hf.file(name).info(name);
    POLDER_CHECK(info.shape == t.shape, "convert: shape mismatch for '{}': expected {}, got {}", name,
                 t.shape, info.shape);
    POLDER_CHECK(info.dtype == DType::f32 || info.dtype == DType::bf16 || info.dtype == DType::f16,
                 "convert: tensor '{}' has dtype {}; supported: F32, BF16, F16", name,
                 safetensors::dtype_tag(info.dtype));
  }
  if (const auto tie = models::hf_tied_copy(model); tie && hf.where.count(tie->first)) {
    const Tensor head = hf.load_f32(tie->first), emb = hf.load_f32(tie->second);
    POLDER_CHECK(
        head.shape() == emb.shape() && std::memcmp(head.raw_data(), emb.raw_data(), head.nbytes()) == 0,
        "convert: tie_word_embeddings is true but {} differs from {}", tie->first, tie->second);
  }
}
}  // namespace

std::string import_hf(const std::string& hf_dir, const std::string& ckpt_dir, const ImportOptions& options) {
  const fs::path dir(hf_dir);
  POLDER_CHECK(fs::is_directory(dir), "convert: '{}' is not a folder", hf_dir);
  const nlohmann::json hf_config = read_json(dir / "config.json");
  const ModelConfig model = models::hf_config_to_model(hf_config);
  HfInfo info = hf_special_tokens(hf_dir, model.vocab_size);
  info.architecture = models::hf_architecture(hf_config);
  Config run =
      options.config.empty() ? placeholder_run(model) : load_config(options.config, options.overrides);
  run.model = model;
  if (run.data.seq_len > model.max_seq_len) run.data.seq_len = model.max_seq_len;

  // Check everything before writing.
  const HfWeights hf(dir);
  const std::vector<models::HfTensor> tensors = models::hf_tensors(model);
  std::map<std::string, std::string> hf_name;  // polder name -> HF name
  for (const models::HfTensor& t : tensors) hf_name[t.name] = t.hf_name;
  check_hf_weights(hf, tensors, model, hf_dir);

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
                   {"imported_from", fs::absolute(dir).string()},
                   {"hf", info.to_json()}};
  write_checkpoint(
      ckpt_dir, model, 1, 1, [&](const std::string& name) { return hf.load_f32(hf_name.at(name)); }, nullptr,
      meta);
  return ckpt_dir;
}

std::string export_hf(const std::string& checkpoint, const std::string& hf_dir, DType out_dtype) {
  POLDER_CHECK(out_dtype == DType::f32 || out_dtype == DType::bf16,
               "convert: output dtype {} is not supported (f32, bf16)", out_dtype);
  const CheckpointReader ckpt(checkpoint);
  const ModelConfig& model = ckpt.config().model;
  HfInfo tokens = checkpoint_hf_info(ckpt.meta());
  const std::string arch = models::export_architecture(model, tokens.architecture);
  const std::string& tok = ckpt.config().data.tokenizer;
  const bool has_tokenizer = !tok.empty() && fs::exists(tok);
  std::string note;
  if (tokens.eos_token_ids.empty()) note = guess_export_eos(tokens, model, has_tokenizer ? tok : "");
  fs::create_directories(hf_dir);
  const fs::path out(hf_dir);
  std::vector<StreamWriter::Entry> entries;
  const std::vector<models::HfTensor> tensors = models::hf_tensors(model);
  for (const models::HfTensor& t : tensors) entries.push_back({t.hf_name, out_dtype, t.shape});
  StreamWriter w((out / "model.safetensors").string(), entries);
  for (const models::HfTensor& t : tensors) w.add(t.hf_name, ckpt.load("", t.name).to(out_dtype));
  w.finish();
  const nlohmann::json config =
      models::model_to_hf_config(model, {out_dtype, arch, tokens.bos_token_id, tokens.eos_token_ids});
  write_text_file_atomic(out / "config.json", config.dump(2) + "\n");
  nlohmann::ordered_json gen;
  for (const char* key : {"bos_token_id", "eos_token_id"})
    if (config.contains(key)) gen[key] = config[key];
  gen["_from_model_config"] = true;
  write_text_file_atomic(out / "generation_config.json", gen.dump(2) + "\n");
  nlohmann::json tok_config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                               {"model_max_length", model.max_seq_len},
                               {"clean_up_tokenization_spaces", false}};
  if (has_tokenizer) {
    fs::copy_file(tok, out / "tokenizer.json", fs::copy_options::overwrite_existing);
    const nlohmann::json t = read_json(tok);  // names of the special tokens, for tokenizer.bos/eos_token
    if (tokens.bos_token_id)
      if (const std::string name = tokenizer_json_token(t, *tokens.bos_token_id); !name.empty())
        tok_config["bos_token"] = name;
    if (!tokens.eos_token_ids.empty())
      if (const std::string name = tokenizer_json_token(t, tokens.eos_token_ids[0]); !name.empty())
        tok_config["eos_token"] = name;
  }
  write_text_file_atomic(out / "tokenizer_config.json", tok_config.dump(2) + "\n");
  return note;
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
