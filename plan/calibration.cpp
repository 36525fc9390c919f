// Calibration: defaults per GPU model, then polder's benchmark files.
#include "plan/calibration.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>

#include "core/error.h"

namespace polder::plan {
namespace fs = std::filesystem;

namespace {

// "H100", "A100", "H200", "B200", "GH200" ... from a GPU name; empty when none.
std::string gpu_model(const std::string& name) {
  std::smatch m;
  static const std::regex re("(G?[A-Z]{1,2}[0-9]{2,3})");
  return std::regex_search(name, m, re) ? m.str(1) : "";
}

bool positive_number(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() && j[key].get<double>() > 0;
}

// The .json files of perf_dir in sorted order; none when perf_dir is empty or not a folder.
std::vector<fs::path> json_files(const std::string& perf_dir) {
  std::vector<fs::path> files;
  if (perf_dir.empty() || !fs::is_directory(perf_dir)) return files;
  for (const auto& e : fs::directory_iterator(perf_dir))
    if (e.path().extension() == ".json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

// The parsed file, or nullopt when it is not valid JSON.
std::optional<nlohmann::json> parse_json_file(const fs::path& f) {
  try {
    std::ifstream in(f);
    return nlohmann::json::parse(in);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::string comma_list(const std::vector<std::string>& items) {
  std::string list;
  for (const auto& s : items) list += (list.empty() ? "" : ", ") + s;
  return list;
}

// The sections of one benchmark file that calibration reads, and the device it was measured on.
struct BenchSections {
  nlohmann::json kern, gemm, planner, attn;
  std::string device;
};

BenchSections bench_sections(const nlohmann::json& j) {
  const auto section = [&](const char* key) {
    return j.contains(key) && j[key].is_object() ? j[key] : nlohmann::json::object();
  };
  BenchSections b{section("kernels"), section("gemm"), section("planner"),
                  section("attention").value("polder", nlohmann::json::object()), ""};
  if (b.kern.contains("device") && b.kern["device"].is_object())
    b.device = b.kern["device"].value("name", "");
  for (const nlohmann::json* d : std::initializer_list<const nlohmann::json*>{&b.gemm, &b.attn, &j})
    if (b.device.empty() && d->is_object() && d->contains("device") && (*d)["device"].is_string())
      b.device = (*d)["device"].get<std::string>();
  return b;
}

// Mean TFLOP/s of the successful records that `take` accepts; 0 when there are none.
template <class Take>
double mean_tflops(const nlohmann::json& records, Take&& take) {
  double sum = 0;
  int n = 0;
  if (records.is_array())
    for (const auto& r : records)
      if (r.is_object() && positive_number(r, "tflops") && r.value("status", "ok") == "ok" && take(r))
        sum += r["tflops"].get<double>(), ++n;
  return n ? sum / n : 0.0;
}

const nlohmann::json& records_of(const nlohmann::json& section) {
  static const nlohmann::json no_records = nlohmann::json::array();
  return section.contains("records") ? section["records"] : no_records;
}

// bench_gpu_kernels: the 8192^3 GEMM, the copy, and the baseline attention kernel.
void apply_kernel_bench(const nlohmann::json& kern, Calibration& got, std::vector<std::string>& keys) {
  if (positive_number(kern, "gemm_8192_tflops"))
    got.gemm_tflops = kern["gemm_8192_tflops"], keys.push_back("gemm 8192^3");
  if (positive_number(kern, "copy_gbps")) got.copy_gbps = kern["copy_gbps"], keys.push_back("copy");
  for (const char* dir : {"fwd", "bwd"}) {
    const std::string prefix = std::string("attention ") + dir;
    const double t = mean_tflops(
        records_of(kern), [&](const nlohmann::json& r) { return r.value("name", "").rfind(prefix, 0) == 0; });
    if (t > 0)
      (dir[0] == 'f' ? got.attention_fwd_tflops : got.attention_bwd_tflops) = t, keys.push_back(prefix);
  }
}

// bench_gpu_attention: the dispatcher's choice ("auto", what training runs), causal.
void apply_attention_bench(const nlohmann::json& attn, Calibration& got, std::vector<std::string>& keys) {
  for (const char* dir : {"fwd", "bwd"}) {
    const double t = mean_tflops(records_of(attn), [&](const nlohmann::json& r) {
      return r.value("impl", "") == "auto" && r.value("dir", "") == dir && r.value("causal", false);
    });
    if (t > 0)
      (dir[0] == 'f' ? got.attention_fwd_tflops : got.attention_bwd_tflops) = t,
                                                  keys.push_back(std::string("attention auto ") + dir);
  }
}

// bench_gpu_gemm: the faster of polder's GEMM and cuBLASLt per shape (what the dispatcher picks), over the
// llama layer shapes when there are any: total FLOPs over total time.
void apply_gemm_bench(const nlohmann::json& gemm, Calibration& got, std::vector<std::string>& keys) {
  if (!gemm.contains("records") || !gemm["records"].is_array()) return;
  bool any_llama = false;
  for (const auto& r : gemm["records"])
    any_llama = any_llama || (r.is_object() && r.value("name", "").find("llama") != std::string::npos);
  double flops = 0, seconds = 0;
  for (const auto& r : gemm["records"]) {
    if (!r.is_object() || (any_llama && r.value("name", "").find("llama") == std::string::npos)) continue;
    const bool own = positive_number(r, "own_ms"), lt = positive_number(r, "cublaslt_ms");
    if (!(own || lt) || !positive_number(r, "M") || !positive_number(r, "N") || !positive_number(r, "K"))
      continue;
    const double ms = own && lt ? std::min(r["own_ms"].get<double>(), r["cublaslt_ms"].get<double>())
                                : (own ? r["own_ms"] : r["cublaslt_ms"]).get<double>();
    flops += 2.0 * r["M"].get<double>() * r["N"].get<double>() * r["K"].get<double>();
    seconds += ms * 1e-3;
  }
  if (seconds > 0) got.gemm_tflops = flops / seconds / 1e12, keys.push_back("gemm layer shapes");
}

// The "planner" section overrides any rate or efficiency by name.
void apply_planner_overrides(const nlohmann::json& planner, Calibration& got,
                             std::vector<std::string>& keys) {
  struct Override {
    const char* key;
    double* field;
  };
  for (Override o : {Override{"gemm_tflops", &got.gemm_tflops},
                     {"attention_fwd_tflops", &got.attention_fwd_tflops},
                     {"attention_bwd_tflops", &got.attention_bwd_tflops},
                     {"copy_gbps", &got.copy_gbps},
                     {"memory_efficiency", &got.memory_efficiency},
                     {"comm_efficiency", &got.comm_efficiency}})
    if (positive_number(planner, o.key)) *o.field = planner[o.key].get<double>(), keys.push_back(o.key);
}

// Applies one benchmark file to k when it measured the wanted GPU model; adds a note either way (none when
// the file holds nothing calibration reads). Returns whether the file was used.
bool apply_bench_file(const fs::path& f, const std::string& want, Calibration& k) {
  std::optional<nlohmann::json> parsed = parse_json_file(f);
  if (!parsed) {
    k.notes.push_back(f.filename().string() + ": skipped, not valid JSON");
    return false;
  }
  const nlohmann::json& j = *parsed;
  if (!j.is_object()) return false;
  const BenchSections b = bench_sections(j);
  std::vector<std::string> keys;
  Calibration got = k;
  apply_kernel_bench(b.kern, got, keys);
  apply_attention_bench(b.attn, got, keys);
  apply_gemm_bench(b.gemm, got, keys);
  apply_planner_overrides(b.planner, got, keys);
  if (keys.empty()) return false;
  if (gpu_model(b.device) != want) {
    k.notes.push_back(f.filename().string() + ": skipped, device '" + b.device + "' is not a " + want);
    return false;
  }
  k = got;
  k.notes.push_back(f.filename().string() + ": " + comma_list(keys) + " (" + b.device + ")");
  return true;
}

}  // namespace

Calibration default_calibration(const Cluster& c) {
  Calibration k;
  const bool h100 = gpu_model(c.gpu_name) == "H100";
  k.gemm_tflops = h100 ? 790 : 0.8 * c.peak_tflops;
  k.copy_gbps = h100 ? 3000 : 0.9 * c.hbm_gbs;
  k.attention_fwd_tflops = 0.25 * c.peak_tflops;
  k.attention_bwd_tflops = 0.20 * c.peak_tflops;
  k.source = "defaults for " + c.gpu_name + " (no polder GPU measurement; docs/scale.md)";
  return k;
}

Calibration load_calibration(const Cluster& c, const std::string& perf_dir) {
  Calibration k = default_calibration(c);
  const std::string want = gpu_model(c.gpu_name);
  std::vector<std::string> used;
  for (const fs::path& f : json_files(perf_dir))
    if (apply_bench_file(f, want, k)) used.push_back(f.filename().string());
  if (!used.empty())
    k.source = "measured: " + perf_dir + "/{" + comma_list(used) + "}, defaults for the rest";
  POLDER_CHECK(
      k.gemm_tflops > 0 && k.copy_gbps > 0 && k.attention_fwd_tflops > 0 && k.attention_bwd_tflops > 0,
      "calibration: every rate must be positive (gemm {}, copy {}, attention {} / {})", k.gemm_tflops,
      k.copy_gbps, k.attention_fwd_tflops, k.attention_bwd_tflops);
  return k;
}

std::vector<MeasuredRun> load_measured_runs(const Cluster& c, const std::string& perf_dir) {
  std::vector<MeasuredRun> out;
  for (const fs::path& f : json_files(perf_dir)) {
    std::optional<nlohmann::json> parsed = parse_json_file(f);
    if (!parsed) continue;
    const nlohmann::json& j = *parsed;
    if (!j.is_object() || !j.contains("training") || !j["training"].is_object()) continue;
    const nlohmann::json& t = j["training"];
    if (gpu_model(t.value("device", "")) != gpu_model(c.gpu_name) || !t.contains("runs") ||
        !t["runs"].is_array())
      continue;
    for (const auto& r : t["runs"]) {
      if (!r.is_object() || !r.contains("polder") || !positive_number(r["polder"], "step_time_s")) continue;
      MeasuredRun m;
      m.file = f.filename().string();
      m.model = r.value("model", "");
      m.config = r.value("config", "");
      m.seq_len = r.value("seq_len", int64_t{0});
      m.micro_batch = r.value("micro_batch", int64_t{0});
      m.global_batch = r.value("global_batch", int64_t{0});
      m.step_time_s = r["polder"]["step_time_s"].get<double>();
      if (positive_number(r["polder"], "max_memory_gib"))
        m.peak_memory_gib = r["polder"]["max_memory_gib"].get<double>();
      if (!m.config.empty() && m.seq_len > 0 && m.micro_batch > 0 && m.global_batch > 0) out.push_back(m);
    }
  }
  return out;
}

}  // namespace polder::plan
