// The run configuration: YAML (yaml-cpp) -> Config, `a.b=c` overrides, validation, and Config -> YAML.
// One table (schema_table()) lists every key of every section with a pointer to its field, so parsing, the
// nearest-key suggestions, the missing-key checks and config_to_yaml can never disagree about the keys.
// Scalars are converted here, not by yaml-cpp's as<T>(), so that "10.5" is no integer and "yes" no boolean.
#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>
#include <type_traits>
#include <variant>

#include "core/error.h"
#include "parallel/schedule.h"

namespace polder {
namespace {

// ---- the schema: one row per key, field name = YAML key ----

using FieldRef = std::variant<int64_t*, uint64_t*, double*, bool*, std::string*, std::vector<DatasetEntry>*>;

struct Field {
  std::string_view key;
  FieldRef (*ref)(Config&);
  bool required = false;
};

struct Section {
  std::string_view name;
  std::vector<Field> fields;
};

#define POLDER_FIELD(section, key, ...)                                                    \
  Field {                                                                                  \
#key, [](Config & c) -> FieldRef { return &c.section.key; } __VA_OPT__(, ) __VA_ARGS__ \
  }

const std::vector<Section>& schema_table() {
  static const std::vector<Section> sections = {
      {"model",
       {POLDER_FIELD(model, vocab_size, true),
        POLDER_FIELD(model, hidden_size, true),
        POLDER_FIELD(model, intermediate_size, true),
        POLDER_FIELD(model, num_layers, true),
        POLDER_FIELD(model, num_heads, true),
        POLDER_FIELD(model, num_kv_heads),
        POLDER_FIELD(model, head_dim),
        POLDER_FIELD(model, max_seq_len),
        POLDER_FIELD(model, rope_theta),
        POLDER_FIELD(model, rms_norm_eps),
        POLDER_FIELD(model, tie_embeddings),
        POLDER_FIELD(model, qkv_bias),
        POLDER_FIELD(model, o_proj_bias),
        POLDER_FIELD(model, init_std),
        POLDER_FIELD(model, rope_scaling_type),
        POLDER_FIELD(model, rope_scaling_factor),
        POLDER_FIELD(model, rope_low_freq_factor),
        POLDER_FIELD(model, rope_high_freq_factor),
        POLDER_FIELD(model, rope_original_max_position),
        POLDER_FIELD(model, attention_impl),
        POLDER_FIELD(model, gemm_impl)}},
      {"data",
       {POLDER_FIELD(data, datasets, true), POLDER_FIELD(data, tokenizer), POLDER_FIELD(data, seq_len, true),
        POLDER_FIELD(data, valid_fraction), POLDER_FIELD(data, split_seed)}},
      {"train",
       {POLDER_FIELD(train, steps, true), POLDER_FIELD(train, global_batch, true),
        POLDER_FIELD(train, micro_batch, true), POLDER_FIELD(train, precision),
        POLDER_FIELD(train, recompute), POLDER_FIELD(train, profile), POLDER_FIELD(train, seed),
        POLDER_FIELD(train, eval_every), POLDER_FIELD(train, eval_batches), POLDER_FIELD(train, resume),
        POLDER_FIELD(train, run_dir), POLDER_FIELD(train, device), POLDER_FIELD(train, threads),
        POLDER_FIELD(train, peak_tflops), POLDER_FIELD(train, max_duration), POLDER_FIELD(train, watchdog_s),
        POLDER_FIELD(train, skip_nonfinite), POLDER_FIELD(train, max_nonfinite_steps)}},
      {"optim",
       {POLDER_FIELD(optim, lr), POLDER_FIELD(optim, weight_decay), POLDER_FIELD(optim, beta1),
        POLDER_FIELD(optim, beta2), POLDER_FIELD(optim, eps), POLDER_FIELD(optim, grad_clip),
        POLDER_FIELD(optim, decay_norms_and_embeddings)}},
      {"schedule",
       {POLDER_FIELD(schedule, type), POLDER_FIELD(schedule, warmup_steps),
        POLDER_FIELD(schedule, min_lr_ratio), POLDER_FIELD(schedule, decay_fraction)}},
      {"checkpoint",
       {POLDER_FIELD(checkpoint, dir), POLDER_FIELD(checkpoint, every), POLDER_FIELD(checkpoint, keep_last)}},
      {"logging",
       {POLDER_FIELD(logging, every), POLDER_FIELD(logging, jsonl), POLDER_FIELD(logging, tensorboard)}},
      {"parallel",
       {POLDER_FIELD(parallel, dp), POLDER_FIELD(parallel, tp), POLDER_FIELD(parallel, pp),
        POLDER_FIELD(parallel, cp), POLDER_FIELD(parallel, virtual_stages), POLDER_FIELD(parallel, schedule),
        POLDER_FIELD(parallel, zero), POLDER_FIELD(parallel, zero_group), POLDER_FIELD(parallel, bucket_mb),
        POLDER_FIELD(parallel, sequence_parallel)}},
      {"debug",
       {POLDER_FIELD(debug, nan_step), POLDER_FIELD(debug, nan_steps), POLDER_FIELD(debug, nan_param),
        POLDER_FIELD(debug, stall_step)}},
  };
  return sections;
}

#undef POLDER_FIELD

// The number of members of an aggregate: the most initialisers T{...} accepts. It lets schema()
// notice a field added to config.h but not to the schema, which could otherwise never be set from YAML.
struct AnyMember {
  template <typename T>
  operator T() const;  // only used unevaluated
};

template <typename T, typename... Members>
consteval size_t member_count() {
  if constexpr (requires { T{Members{}..., AnyMember{}}; }) {
    return member_count<T, Members..., AnyMember>();
  } else {
    return sizeof...(Members);
  }
}

const std::vector<Section>& schema() {
  static const bool checked = [] {
    const size_t counts[] = {
        member_count<ModelConfig>(),   member_count<DataConfig>(),     member_count<TrainConfig>(),
        member_count<OptimConfig>(),   member_count<ScheduleConfig>(), member_count<CheckpointConfig>(),
        member_count<LoggingConfig>(), member_count<ParallelConfig>(), member_count<DebugConfig>()};
    static_assert(member_count<Config>() == 9, "a section was added to Config: add it to schema()");
    for (size_t i = 0; i < schema_table().size(); ++i) {
      const Section& s = schema_table()[i];
      POLDER_CHECK(
          s.fields.size() == counts[i],
          "internal: train/config.h has {} fields in section '{}' but the schema in train/config.cpp "
          "lists {}; add the new field to schema()",
          counts[i], s.name, s.fields.size());
    }
    return true;
  }();
  (void)checked;
  return schema_table();
}

const std::vector<std::string_view> kDatasetKeys = {"name", "prefix", "weight"};

const Section* find_section(std::string_view name) {
  for (const Section& s : schema())
    if (s.name == name) return &s;
  return nullptr;
}

const Field* find_field(const Section& section, std::string_view key) {
  for (const Field& f : section.fields)
    if (f.key == key) return &f;
  return nullptr;
}

// ---- nearest-key suggestions ----

size_t levenshtein(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// "; did you mean 'train.steps'?" when a key is close, else the list of valid keys (a far-fetched
// suggestion misleads more than it helps).
std::string suggestion(std::string_view given, const std::vector<std::string_view>& candidates,
                       const std::string& prefix) {
  std::string_view best;
  size_t best_distance = SIZE_MAX;
  for (std::string_view c : candidates) {
    size_t d = levenshtein(given, c);
    if (d < best_distance) best_distance = d, best = c;
  }
  if (!best.empty() && best_distance <= std::max<size_t>(2, given.size() / 3))
    return format("; did you mean '{}{}'?", prefix, best);
  std::string list;
  for (std::string_view c : candidates) list += (list.empty() ? "" : ", ") + std::string(c);
  return format("; valid keys are: {}", list);
}

std::vector<std::string_view> section_names() {
  std::vector<std::string_view> names;
  for (const Section& s : schema()) names.push_back(s.name);
  return names;
}

std::vector<std::string_view> field_keys(const Section& section) {
  std::vector<std::string_view> keys;
  for (const Field& f : section.fields) keys.push_back(f.key);
  return keys;
}

// ---- where a node came from: "configs/x.yaml:12", or the override that set it ----

struct Source {
  std::string origin;
  std::vector<std::pair<std::string, std::string>> overrides;  // (dotted path, "override 'a.b=c'")
};

std::string where(const Source& src, const std::string& path, const YAML::Node& node) {
  for (auto it = src.overrides.rbegin(); it != src.overrides.rend(); ++it) {
    const std::string& p = it->first;
    if (path == p || (path.size() > p.size() && path.compare(0, p.size(), p) == 0 &&
                      (path[p.size()] == '.' || path[p.size()] == '[')))
      return it->second;
  }
  if (node.IsDefined() && !node.Mark().is_null()) return format("{}:{}", src.origin, node.Mark().line + 1);
  return src.origin;
}

// ---- scalars ----

std::string describe(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "nothing (null)";
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsSequence()) return "a list";
  return "a map";
}

bool parse_double(const std::string& text, double& out) {
  std::string_view s = text;
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size() && std::isfinite(out);
}

// Plain integers, and integral values in float notation ("1e6", "300.0"); never "10.5".
bool parse_int(const std::string& text, int64_t& out) {
  std::string_view s = text;
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec == std::errc() && end == s.data() + s.size()) return true;
  double d = 0;
  if (!parse_double(text, d) || d != std::floor(d) || std::abs(d) > 9007199254740992.0) return false;
  out = static_cast<int64_t>(d);
  return true;
}

// YAML text is Unicode: a string with invalid UTF-8 would not come back from config_to_yaml unchanged (the
// emitter escapes each bad byte as a code point), so it is rejected where it is read. Returns the offset of
// the first bad byte, or npos.
size_t invalid_utf8_at(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return i;
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 0x2) return i;
      cp = (cp << 6) | (d & 0x3F);
    }
    const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += n;
  }
  return std::string_view::npos;
}

struct Reader {
  const Source& src;

  void check_utf8(const std::string& path, const YAML::Node& node, const std::string& value) const {
    const size_t bad = invalid_utf8_at(value);
    POLDER_CHECK(bad == std::string_view::npos, "{}: {}: the text is not valid UTF-8 (byte {} of {} bytes)",
                 where(src, path, node), path, bad, value.size());
  }

  [[noreturn]] void type_error(const std::string& path, const YAML::Node& node, const char* expected) const {
    POLDER_FAIL("{}: {}: expected {}, got {}", where(src, path, node), path, expected, describe(node));
  }

  void read(const std::string& path, const YAML::Node& node, int64_t* out) const {
    if (!node.IsScalar() || !parse_int(node.Scalar(), *out)) type_error(path, node, "an integer");
  }
  void read(const std::string& path, const YAML::Node& node, uint64_t* out) const {
    int64_t v = 0;
    bool ok = false;
    if (node.IsScalar()) {
      std::string_view s = node.Scalar();
      if (!s.empty() && s[0] == '+') s.remove_prefix(1);
      auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
      ok = !s.empty() && ec == std::errc() && end == s.data() + s.size();
      if (!ok && parse_int(node.Scalar(), v) && v >= 0) *out = static_cast<uint64_t>(v), ok = true;
    }
    if (!ok) type_error(path, node, "a non-negative integer");
  }
  void read(const std::string& path, const YAML::Node& node, double* out) const {
    if (!node.IsScalar() || !parse_double(node.Scalar(), *out)) type_error(path, node, "a number");
  }
  void read(const std::string& path, const YAML::Node& node, bool* out) const {
    if (node.IsScalar() && node.Scalar() == "true") {
      *out = true;
    } else if (node.IsScalar() && node.Scalar() == "false") {
      *out = false;
    } else {
      type_error(path, node, "true or false");
    }
  }
  // A null value (`dir:` with nothing after it) is the empty string.
  void read(const std::string& path, const YAML::Node& node, std::string* out) const {
    if (node.IsNull()) {
      out->clear();
    } else if (node.IsScalar()) {
      check_utf8(path, node, node.Scalar());
      *out = node.Scalar();
    } else {
      type_error(path, node, "a string");
    }
  }

  // Two forms: a list of {name, prefix, weight}, or a map keyed by name: {nl: {prefix: ..., weight: ...}}.
  void read(const std::string& path, const YAML::Node& node, std::vector<DatasetEntry>* out) const {
    out->clear();
    if (node.IsNull()) return;
    if (node.IsSequence()) {
      size_t i = 0;
      for (const YAML::Node& item : node) {
        out->push_back(read_dataset(format("{}[{}]", path, i++), item, nullptr));
      }
    } else if (node.IsMap()) {
      for (const auto& kv : node) {
        std::string name = key_of(path, kv.first);
        check_utf8(path, kv.first, name);
        out->push_back(read_dataset(path + "." + name, kv.second, &name));
      }
    } else {
      type_error(path, node, "a list of {name, prefix, weight} (or a map name: {prefix, weight})");
    }
  }

  DatasetEntry read_dataset(const std::string& path, const YAML::Node& node, const std::string* name) const {
    if (!node.IsMap()) type_error(path, node, "a map with keys name, prefix, weight");
    DatasetEntry entry;
    std::set<std::string> seen;
    for (const auto& kv : node) {
      std::string key = key_of(path, kv.first);
      std::string key_path = path + "." + key;
      bool known = std::find(kDatasetKeys.begin(), kDatasetKeys.end(), key) != kDatasetKeys.end();
      if (!known || (name && key == "name")) {
        std::vector<std::string_view> keys = kDatasetKeys;
        if (name) keys.erase(keys.begin());  // in the map form the name is the key
        POLDER_FAIL("{}: unknown key '{}'{}", where(src, key_path, kv.first), key_path,
                    suggestion(key, keys, path + "."));
      }
      POLDER_CHECK(seen.insert(key).second, "{}: duplicate key '{}'", where(src, key_path, kv.first),
                   key_path);
      if (key == "name") read(key_path, kv.second, &entry.name);
      if (key == "prefix") read(key_path, kv.second, &entry.prefix);
      if (key == "weight") read(key_path, kv.second, &entry.weight);
    }
    if (name) entry.name = *name;
    POLDER_CHECK(seen.count("name") || name, "{}: missing required key '{}.name'", where(src, path, node),
                 path);
    POLDER_CHECK(seen.count("prefix"), "{}: missing required key '{}.prefix'", where(src, path, node), path);
    return entry;
  }

  std::string key_of(const std::string& parent, const YAML::Node& key) const {
    if (!key.IsScalar()) type_error(parent, key, "string keys");
    return key.Scalar();
  }
};

// ---- YAML tree -> Config ----

Config convert(const YAML::Node& root, const Source& src) {
  Reader reader{src};
  Config config;
  std::set<std::string> present;
  if (root.IsDefined() && !root.IsNull()) {
    POLDER_CHECK(root.IsMap(),
                 "{}: expected a map of sections (model, data, train, ...) at the top level, got {}",
                 where(src, "", root), describe(root));
    for (const auto& section_kv : root) {
      std::string name = reader.key_of("<top level>", section_kv.first);
      const Section* section = find_section(name);
      if (!section)
        POLDER_FAIL("{}: unknown section '{}'{}", where(src, name, section_kv.first), name,
                    suggestion(name, section_names(), ""));
      POLDER_CHECK(present.insert(name).second, "{}: duplicate section '{}'",
                   where(src, name, section_kv.first), name);
      const YAML::Node& body = section_kv.second;
      if (body.IsNull()) continue;
      if (!body.IsMap()) reader.type_error(name, body, "a map of keys");
      for (const auto& kv : body) {
        std::string key = reader.key_of(name, kv.first);
        std::string path = name + "." + key;
        const Field* field = find_field(*section, key);
        if (!field)
          POLDER_FAIL("{}: unknown key '{}'{}", where(src, path, kv.first), path,
                      suggestion(key, field_keys(*section), name + "."));
        POLDER_CHECK(present.insert(path).second, "{}: duplicate key '{}'", where(src, path, kv.first), path);
        std::visit([&](auto* out) { reader.read(path, kv.second, out); }, field->ref(config));
      }
    }
  }
  for (const Section& section : schema()) {
    for (const Field& field : section.fields) {
      std::string path = format("{}.{}", section.name, field.key);
      POLDER_CHECK(!field.required || present.count(path), "{}: missing required key '{}'", src.origin, path);
    }
  }
  return config;
}

// ---- overrides: "a.b=c" applied to the YAML tree before conversion ----

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(path);
  while (std::getline(in, part, '.')) parts.push_back(part);
  if (!path.empty() && path.back() == '.') parts.push_back("");
  return parts;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// Checks the path against the schema, so a typo is reported as such instead of silently adding a key.
// Returns the path under which the value is recorded (a dataset inside the list: "data.datasets").
std::string check_override_path(const std::vector<std::string>& parts, const std::string& what) {
  for (const std::string& p : parts) POLDER_CHECK(!p.empty(), "{}: empty key in the path", what);
  const Section* section = find_section(parts[0]);
  if (!section)
    POLDER_FAIL("{}: unknown section '{}'{}", what, parts[0], suggestion(parts[0], section_names(), ""));
  POLDER_CHECK(parts.size() >= 2, "{}: '{}' is a section; override one of its keys ({}.<key>=value)", what,
               parts[0], parts[0]);
  std::string path = parts[0] + "." + parts[1];
  const Field* field = find_field(*section, parts[1]);
  if (!field)
    POLDER_FAIL("{}: unknown key '{}'{}", what, path,
                suggestion(parts[1], field_keys(*section), parts[0] + "."));
  if (parts.size() == 2) return path;
  Config probe;
  bool is_datasets = std::holds_alternative<std::vector<DatasetEntry>*>(field->ref(probe));
  POLDER_CHECK(is_datasets, "{}: '{}' is a single value and has no key '{}'", what, path, parts[2]);
  POLDER_CHECK(parts.size() == 4, "{}: a dataset is overridden as data.datasets.<name or index>.<key>=value",
               what);
  if (std::find(kDatasetKeys.begin(), kDatasetKeys.end(), parts[3]) == kDatasetKeys.end())
    POLDER_FAIL("{}: unknown key '{}.{}.{}'{}", what, path, parts[2], parts[3],
                suggestion(parts[3], kDatasetKeys, path + "." + parts[2] + "."));
  return path;
}

// Nodes are passed by value into each level: reassigning a YAML::Node variable would assign through it.
void set_path(YAML::Node node, const std::vector<std::string>& parts, size_t i, const YAML::Node& value,
              const std::string& what) {
  const std::string& part = parts[i];
  bool last = i + 1 == parts.size();
  if (node.IsSequence()) {  // data.datasets as a list: select by index or by name
    int64_t index = -1;
    size_t n = 0;
    std::string names;
    for (const YAML::Node& item : node) {
      std::string name = item.IsMap() && item["name"] && item["name"].IsScalar() ? item["name"].Scalar() : "";
      names += (names.empty() ? "" : ", ") + name;
      if (name == part || std::to_string(n) == part) index = static_cast<int64_t>(n);
      ++n;
    }
    POLDER_CHECK(index >= 0, "{}: no dataset named '{}' in {} (have: {})", what, part,
                 parts[0] + "." + parts[1], names);
    size_t k = 0;
    for (YAML::Node item : node) {
      if (k++ != static_cast<size_t>(index)) continue;
      POLDER_CHECK(item.IsMap(), "{}: dataset {} is not a map", what, part);
      set_path(item, parts, i + 1, value, what);
    }
    return;
  }
  POLDER_CHECK(node.IsMap() || node.IsNull(), "{}: cannot set '{}' inside a value that is {}", what, part,
               describe(node));
  if (last) {
    node[part] = value;
    return;
  }
  YAML::Node child = node[part];
  if (!child.IsDefined() || child.IsNull()) node[part] = YAML::Node(YAML::NodeType::Map);
  set_path(node[part], parts, i + 1, value, what);
}

void apply_override(YAML::Node& root, const std::string& text, Source& src) {
  std::string what = format("override '{}'", text);
  size_t eq = text.find('=');
  POLDER_CHECK(eq != std::string::npos, "{}: expected section.key=value (e.g. train.steps=100)", what);
  std::string key = trim(text.substr(0, eq));
  POLDER_CHECK(!key.empty(), "{}: expected section.key=value (e.g. train.steps=100)", what);
  std::vector<std::string> parts = split_path(key);
  std::string recorded = check_override_path(parts, what);
  YAML::Node value;
  try {
    value = YAML::Load(text.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    POLDER_FAIL("{}: the value is not valid YAML: {}", what, e.msg);
  }
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  POLDER_CHECK(root.IsMap(), "{}: expected a map of sections at the top level", src.origin);
  set_path(root, parts, 0, value, what);
  src.overrides.emplace_back(parts.size() > 2 ? recorded : key, what);
}

// Shortest text that reads back as the same double ("0.0003", "1e-05", "500000").
std::string double_text(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

void check_positive(int64_t v, const char* key) {
  POLDER_CHECK(v > 0, "{} must be positive, got {}", key, v);
}
void check_non_negative(int64_t v, const char* key) {
  POLDER_CHECK(v >= 0, "{} must not be negative, got {}", key, v);
}

void check_one_of(const std::string& v, const std::vector<std::string_view>& allowed, const char* key) {
  if (std::find(allowed.begin(), allowed.end(), v) != allowed.end()) return;
  std::string list;
  for (std::string_view a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
  std::string hint;
  for (std::string_view a : allowed)
    if (levenshtein(v, a) <= 2) hint = format("; did you mean '{}'?", a);
  POLDER_FAIL("{} must be one of {}; got '{}'{}", key, list, v, hint);
}

void validate_model(const ModelConfig& m) {
  check_positive(m.vocab_size, "model.vocab_size");
  check_positive(m.hidden_size, "model.hidden_size");
  check_positive(m.intermediate_size, "model.intermediate_size");
  check_positive(m.num_layers, "model.num_layers");
  check_positive(m.num_heads, "model.num_heads");
  check_non_negative(m.num_kv_heads, "model.num_kv_heads");
  check_non_negative(m.head_dim, "model.head_dim");
  check_positive(m.max_seq_len, "model.max_seq_len");
  POLDER_CHECK(m.rope_theta > 0, "model.rope_theta must be positive, got {}", m.rope_theta);
  POLDER_CHECK(m.rms_norm_eps > 0, "model.rms_norm_eps must be positive, got {}", m.rms_norm_eps);
  POLDER_CHECK(m.init_std > 0, "model.init_std must be positive, got {}", m.init_std);
  check_one_of(m.rope_scaling_type, {"none", "llama3"}, "model.rope_scaling_type");
  check_one_of(m.attention_impl, {"auto", "polder", "cudnn", "baseline"}, "model.attention_impl");
  check_one_of(m.gemm_impl, {"auto", "polder", "cublaslt"}, "model.gemm_impl");
  if (m.rope_scaling_type == "llama3") {
    POLDER_CHECK(m.rope_scaling_factor > 0, "model.rope_scaling_factor must be positive, got {}",
                 m.rope_scaling_factor);
    POLDER_CHECK(m.rope_low_freq_factor > 0 && m.rope_high_freq_factor > m.rope_low_freq_factor,
                 "model.rope_high_freq_factor ({}) must be larger than model.rope_low_freq_factor ({}) > 0",
                 m.rope_high_freq_factor, m.rope_low_freq_factor);
    check_positive(m.rope_original_max_position, "model.rope_original_max_position");
  }
  int64_t kv = m.num_kv_heads ? m.num_kv_heads : m.num_heads;
  POLDER_CHECK(m.num_heads % kv == 0, "model.num_heads ({}) is not divisible by model.num_kv_heads ({})",
               m.num_heads, kv);
  POLDER_CHECK(
      m.head_dim > 0 || m.hidden_size % m.num_heads == 0,
      "model.hidden_size ({}) is not divisible by model.num_heads ({}); set model.head_dim explicitly",
      m.hidden_size, m.num_heads);
  int64_t head_dim = m.head_dim ? m.head_dim : m.hidden_size / m.num_heads;
  POLDER_CHECK(head_dim % 2 == 0, "the head dimension ({}) must be even for rotary embeddings", head_dim);
}

void validate_data(const DataConfig& d, const ModelConfig& m) {
  check_positive(d.seq_len, "data.seq_len");
  POLDER_CHECK(d.seq_len <= m.max_seq_len, "data.seq_len ({}) is larger than model.max_seq_len ({})",
               d.seq_len, m.max_seq_len);
  POLDER_CHECK(d.valid_fraction >= 0 && d.valid_fraction < 1, "data.valid_fraction must be in [0, 1), got {}",
               d.valid_fraction);
  POLDER_CHECK(!d.datasets.empty(), "data.datasets is empty: list at least one {name, prefix, weight}");
  std::set<std::string> names;
  double total = 0;
  for (const DatasetEntry& e : d.datasets) {
    POLDER_CHECK(!e.name.empty(), "data.datasets: a dataset has an empty name (prefix '{}')", e.prefix);
    POLDER_CHECK(names.insert(e.name).second, "data.datasets: duplicate dataset name '{}'", e.name);
    POLDER_CHECK(!e.prefix.empty(), "data.datasets: dataset '{}' has an empty prefix", e.name);
    POLDER_CHECK(e.weight >= 0 && std::isfinite(e.weight),
                 "data.datasets: dataset '{}' has weight {}; weights "
                 "must not be negative",
                 e.name, e.weight);
    total += e.weight;
  }
  POLDER_CHECK(total > 0, "data.datasets: the weights sum to {}; at least one must be positive", total);
}

void validate_train(const TrainConfig& t) {
  check_positive(t.steps, "train.steps");
  check_positive(t.global_batch, "train.global_batch");
  check_positive(t.micro_batch, "train.micro_batch");
  POLDER_CHECK(t.global_batch % t.micro_batch == 0,
               "train.global_batch ({}) is not divisible by train.micro_batch ({})", t.global_batch,
               t.micro_batch);
  check_one_of(t.precision, {"f32", "bf16", "f64", "auto"}, "train.precision");
  check_one_of(t.device, {"cpu", "cuda"}, "train.device");
  POLDER_CHECK(
      !(t.precision == "f64" && t.device == "cuda"),
      "train.precision f64 runs on the CPU only (it is the reference precision of the parity tests), "
      "got train.device cuda; expected f32 or bf16 there");
  check_non_negative(t.eval_every, "train.eval_every");
  check_positive(t.eval_batches, "train.eval_batches");
  check_non_negative(t.threads, "train.threads");
  POLDER_CHECK(t.peak_tflops >= 0, "train.peak_tflops must not be negative (0: MFU unknown), got {}",
               t.peak_tflops);
  POLDER_CHECK(!t.resume.empty(), "train.resume must be 'auto', 'none' or a checkpoint path, got ''");
  parse_duration(t.max_duration);
  POLDER_CHECK(t.watchdog_s >= 0, "train.watchdog_s must not be negative (0: off), got {}", t.watchdog_s);
  check_positive(t.max_nonfinite_steps, "train.max_nonfinite_steps");
  POLDER_CHECK(!t.run_dir.empty(), "train.run_dir must not be empty");
}

void validate_optim(const OptimConfig& o) {
  POLDER_CHECK(o.lr > 0, "optim.lr must be positive, got {}", o.lr);
  POLDER_CHECK(o.weight_decay >= 0, "optim.weight_decay must not be negative, got {}", o.weight_decay);
  POLDER_CHECK(o.beta1 >= 0 && o.beta1 < 1, "optim.beta1 must be in [0, 1), got {}", o.beta1);
  POLDER_CHECK(o.beta2 >= 0 && o.beta2 < 1, "optim.beta2 must be in [0, 1), got {}", o.beta2);
  POLDER_CHECK(o.eps > 0, "optim.eps must be positive, got {}", o.eps);
  POLDER_CHECK(o.grad_clip >= 0, "optim.grad_clip must not be negative (0: off), got {}", o.grad_clip);
}

void validate_schedule(const ScheduleConfig& s, const TrainConfig& t) {
  check_one_of(s.type, {"constant", "cosine", "linear", "wsd"}, "schedule.type");
  check_non_negative(s.warmup_steps, "schedule.warmup_steps");
  POLDER_CHECK(s.warmup_steps <= t.steps, "schedule.warmup_steps ({}) is larger than train.steps ({})",
               s.warmup_steps, t.steps);
  POLDER_CHECK(s.min_lr_ratio >= 0 && s.min_lr_ratio <= 1, "schedule.min_lr_ratio must be in [0, 1], got {}",
               s.min_lr_ratio);
  POLDER_CHECK(s.decay_fraction >= 0 && s.decay_fraction <= 1,
               "schedule.decay_fraction must be in [0, 1], got {}", s.decay_fraction);
}

void validate_parallel(const ParallelConfig& p, const ModelConfig& m) {
  check_non_negative(p.dp, "parallel.dp");
  check_positive(p.tp, "parallel.tp");
  check_positive(p.pp, "parallel.pp");
  check_positive(p.cp, "parallel.cp");
  check_positive(p.virtual_stages, "parallel.virtual_stages");
  check_positive(p.bucket_mb, "parallel.bucket_mb");
  check_one_of(p.zero, {"none", "1", "2", "3"}, "parallel.zero");
  check_non_negative(p.zero_group, "parallel.zero_group");
  int64_t kv = m.num_kv_heads ? m.num_kv_heads : m.num_heads;
  POLDER_CHECK(m.num_heads % p.tp == 0, "parallel.tp ({}) does not divide model.num_heads ({})", p.tp,
               m.num_heads);
  POLDER_CHECK(kv % p.tp == 0, "parallel.tp ({}) does not divide model.num_kv_heads ({})", p.tp, kv);
  POLDER_CHECK(m.intermediate_size % p.tp == 0,
               "parallel.tp ({}) does not divide model.intermediate_size ({})", p.tp, m.intermediate_size);
  POLDER_CHECK(p.pp <= m.num_layers, "parallel.pp ({}) is larger than model.num_layers ({})", p.pp,
               m.num_layers);
  POLDER_CHECK(p.pp * p.virtual_stages <= m.num_layers,
               "parallel.pp * parallel.virtual_stages ({} * {} = {}) is larger than model.num_layers ({})",
               p.pp, p.virtual_stages, p.pp * p.virtual_stages, m.num_layers);
}

void validate_sequence_parallel(const Config& c) {
  const int64_t cp = c.parallel.cp;
  // Context parallelism: 2 cp chunks of equal length per sequence (no padding).
  POLDER_CHECK(cp == 1 || c.data.seq_len % (2 * cp) == 0,
               "parallel.cp = {}: data.seq_len ({}) must be divisible by 2 * cp = {} (each rank holds two of "
               "2 cp equal chunks of every sequence)",
               cp, c.data.seq_len, 2 * cp);
  if (!c.parallel.sequence_parallel) return;
  POLDER_CHECK(c.data.seq_len / cp % c.parallel.tp == 0,
               "parallel.sequence_parallel: data.seq_len ({}){} must be divisible by parallel.tp ({})",
               c.data.seq_len, cp > 1 ? format(" / parallel.cp ({})", cp) : std::string(), c.parallel.tp);
}

void validate_world(const Config& c, int64_t world_size) {
  const ParallelConfig& p = c.parallel;
  int64_t model_parallel = p.tp * p.pp * p.cp;
  int64_t dp = p.dp;
  const std::string with_cp = p.cp > 1 ? " * parallel.cp" : "";
  const std::string cp_value = p.cp > 1 ? format(" * {}", p.cp) : "";
  if (dp == 0) {
    POLDER_CHECK(world_size % model_parallel == 0,
                 "the world size ({}) is not divisible by parallel.tp * parallel.pp{} ({} * {}{} = {})",
                 world_size, with_cp, p.tp, p.pp, cp_value, model_parallel);
    dp = world_size / model_parallel;
  } else {
    POLDER_CHECK(
        dp * model_parallel == world_size,
        "parallel.dp * parallel.tp * parallel.pp{} ({} * {} * {}{} = {}) differs from the world size ({})",
        with_cp, dp, p.tp, p.pp, cp_value, dp * model_parallel, world_size);
  }
  const int64_t replicas = dp * p.cp;
  POLDER_CHECK(p.zero_group == 0 || replicas % p.zero_group == 0,
               "parallel.zero_group = {} does not divide the {} replicas (dp {} x cp {}) it groups",
               p.zero_group, replicas, dp, p.cp);
  POLDER_CHECK(c.train.global_batch % (c.train.micro_batch * dp) == 0,
               "train.global_batch ({}) is not divisible by train.micro_batch * dp ({} * {} = {})",
               c.train.global_batch, c.train.micro_batch, dp, c.train.micro_batch * dp);
  // The trainer's own rules, here so that every rank refuses a layout before the first collective.
  const int64_t micro_batches = c.train.global_batch / (c.train.micro_batch * dp);
  POLDER_CHECK(p.virtual_stages == 1 || (p.pp > 1 && micro_batches % p.pp == 0),
               "parallel.virtual_stages = {} (interleaved pipeline) needs pp > 1 and micro-batches per step "
               "divisible by pp, but pp = {} and global_batch {} / (micro_batch {} x dp {}) = {}",
               p.virtual_stages, p.pp, c.train.global_batch, c.train.micro_batch, dp, micro_batches);
  POLDER_CHECK(p.pp == 1 || micro_batches >= p.pp,
               "parallel.pp = {} needs at least as many micro-batches per step, but global_batch {} / "
               "(micro_batch {} x dp {}) = {}",
               p.pp, c.train.global_batch, c.train.micro_batch, dp, micro_batches);
  // The schedule can run this layout (the checks are the same on every pp rank, so rank 0's spec stands in).
  try {
    parallel::make_schedule(p.schedule, {p.pp, 0, p.virtual_stages, micro_batches});
  } catch (const Error& e) {
    POLDER_FAIL("parallel.schedule '{}': {}", p.schedule, e.message());
  }
  // Validation runs the same schedule's forward events over train.eval_batches micro-batches.
  POLDER_CHECK(
      p.virtual_stages == 1 || c.train.eval_every == 0 || c.train.eval_batches % p.pp == 0,
      "parallel.virtual_stages = {} (interleaved pipeline) needs train.eval_batches divisible by pp = {}, "
      "got {}",
      p.virtual_stages, p.pp, c.train.eval_batches);
}

}  // namespace

void validate_config(const Config& config, int64_t world_size) {
  validate_model(config.model);
  validate_data(config.data, config.model);
  validate_train(config.train);
  validate_optim(config.optim);
  validate_schedule(config.schedule, config.train);
  POLDER_CHECK(config.checkpoint.every >= 0,
               "checkpoint.every must not be negative (0: only at the end), got {}", config.checkpoint.every);
  check_positive(config.checkpoint.keep_last, "checkpoint.keep_last");
  check_positive(config.logging.every, "logging.every");
  validate_parallel(config.parallel, config.model);
  validate_sequence_parallel(config);
  check_non_negative(config.debug.nan_step, "debug.nan_step");
  check_positive(config.debug.nan_steps, "debug.nan_steps");
  check_non_negative(config.debug.stall_step, "debug.stall_step");
  if (world_size > 0) validate_world(config, world_size);
}

double parse_duration(const std::string& text) {
  const std::string t = trim(text);
  auto bad = [&] {
    POLDER_FAIL(
        "train.max_duration must be a duration such as '23h30m', '90m', '1.5h' or a number of seconds; "
        "got '{}'",
        text);
  };
  if (t.empty()) return 0;
  double plain = 0;
  if (parse_double(t, plain)) {
    if (plain < 0) bad();
    return plain;
  }
  double total = 0;
  size_t i = 0;
  while (i < t.size()) {
    size_t j = i;
    while (j < t.size() && (std::isdigit(static_cast<unsigned char>(t[j])) || t[j] == '.')) ++j;
    if (j == i || j == t.size()) bad();
    double v = 0;
    if (!parse_double(t.substr(i, j - i), v)) bad();
    const char unit = t[j];
    const double scale = unit == 'd' ? 86400 : unit == 'h' ? 3600 : unit == 'm' ? 60 : unit == 's' ? 1 : -1;
    if (scale < 0) bad();
    total += v * scale;
    i = j + 1;
  }
  return total;
}

Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides,
                    const std::string& origin) {
  Source src{origin, {}};
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    POLDER_FAIL("{}:{}:{}: YAML syntax error: {}", origin, e.mark.line + 1, e.mark.column + 1, e.msg);
  }
  for (const std::string& o : overrides) apply_override(root, o, src);
  Config config = convert(root, src);
  try {
    validate_config(config, 0);
  } catch (const Error& e) {
    // A value from an override can be the cause as well as the file.
    std::string source = overrides.empty() ? origin : origin + " (with overrides)";
    throw Error(format("{}: {}", source, e.message()), e.file(), e.line());
  }
  return config;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  POLDER_CHECK(in.good(), "cannot open config file '{}': {}", path, std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), overrides, path);
}

std::string config_to_yaml(const Config& config) {
  Config copy = config;  // the schema hands out mutable pointers
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (const Section& section : schema()) {
    out << YAML::Key << std::string(section.name) << YAML::Value << YAML::BeginMap;
    for (const Field& field : section.fields) {
      out << YAML::Key << std::string(field.key) << YAML::Value;
      std::visit(
          [&](auto* v) {
            using T = std::remove_pointer_t<decltype(v)>;
            if constexpr (std::is_same_v<T, double>) {
              out << double_text(*v);
            } else if constexpr (std::is_same_v<T, std::string>) {
              out << YAML::DoubleQuoted << *v;
            } else if constexpr (std::is_same_v<T, std::vector<DatasetEntry>>) {
              out << YAML::BeginSeq;
              for (const DatasetEntry& e : *v) {
                out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << YAML::DoubleQuoted << e.name
                    << YAML::Key << "prefix" << YAML::Value << YAML::DoubleQuoted << e.prefix << YAML::Key
                    << "weight" << YAML::Value << double_text(e.weight) << YAML::EndMap;
              }
              out << YAML::EndSeq;
            } else {
              out << *v;
            }
          },
          field.ref(copy));
    }
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace polder
