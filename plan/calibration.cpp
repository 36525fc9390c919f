// Calibration: defaults per GPU model, then polder's benchmark files.
#include "plan/calibration.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
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

}  // namespace

Calibration default_calibration(const Cluster& c) {
  Calibration k;
  const bool h100 = gpu_model(c.gpu_name) == "H100";
  k.gemm_tflops = h100 ? 790 : 0.8 * c.peak_tflops;
  k.copy_gbps = h100 ? 3000 : 0.9 * c.hbm_gbs;
  k.attention_fwd_tflops = 0.02 * c.peak_tflops;
  k.attention_bwd_tflops = 0.015 * c.peak_tflops;
  k.source = "defaults for " + c.gpu_name + " (no polder GPU measurement; docs/scale.md)";
  return k;
}

Calibration load_calibration(const Cluster& c, const std::string& perf_dir) {
  Calibration k = default_calibration(c);
  if (perf_dir.empty() || !fs::is_directory(perf_dir)) return k;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(perf_dir))
    if (e.path().extension() == ".json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  const std::string want = gpu_model(c.gpu_name);
  std::vector<std::string> used;
  for (const fs::path& f : files) {
    nlohmann::json j;
    try {
      std::ifstream in(f);
      j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      k.notes.push_back(f.filename().string() + ": skipped, not valid JSON");
      continue;
    }
    if (!j.is_object()) continue;
    const nlohmann::json kern = j.value("kernels", nlohmann::json::object());
    std::string device;
    if (kern.is_object() && kern.contains("device") && kern["device"].is_object())
      device = kern["device"].value("name", "");
    if (device.empty() && j.contains("device") && j["device"].is_string())
      device = j["device"].get<std::string>();
    const nlohmann::json planner = j.value("planner", nlohmann::json::object());
    const bool has_any = positive_number(kern, "gemm_8192_tflops") || positive_number(kern, "copy_gbps") ||
                         (planner.is_object() && !planner.empty());
    if (!has_any) continue;
    if (gpu_model(device) != want) {
      k.notes.push_back(f.filename().string() + ": skipped, device '" + device + "' is not a " + want);
      continue;
    }
    std::vector<std::string> keys;
    if (positive_number(kern, "gemm_8192_tflops"))
      k.gemm_tflops = kern["gemm_8192_tflops"], keys.push_back("gemm");
    if (positive_number(kern, "copy_gbps")) k.copy_gbps = kern["copy_gbps"], keys.push_back("copy");
    double fwd = 0, bwd = 0;
    int nf = 0, nb = 0;
    if (kern.is_object() && kern.contains("records") && kern["records"].is_array()) {
      for (const auto& r : kern["records"]) {
        if (!r.is_object() || !positive_number(r, "tflops") || r.value("status", "ok") != "ok") continue;
        const std::string name = r.value("name", "");
        if (name.rfind("attention fwd", 0) == 0) fwd += r["tflops"].get<double>(), ++nf;
        if (name.rfind("attention bwd", 0) == 0) bwd += r["tflops"].get<double>(), ++nb;
      }
    }
    if (nf) k.attention_fwd_tflops = fwd / nf, keys.push_back("attention fwd");
    if (nb) k.attention_bwd_tflops = bwd / nb, keys.push_back("attention bwd");
    struct Override {
      const char* key;
      double* field;
    };
    for (Override o : {Override{"gemm_tflops", &k.gemm_tflops},
                       {"attention_fwd_tflops", &k.attention_fwd_tflops},
                       {"attention_bwd_tflops", &k.attention_bwd_tflops},
                       {"copy_gbps", &k.copy_gbps},
                       {"memory_efficiency", &k.memory_efficiency},
                       {"comm_efficiency", &k.comm_efficiency}})
      if (positive_number(planner, o.key)) *o.field = planner[o.key].get<double>(), keys.push_back(o.key);
    std::string list;
    for (const auto& s : keys) list += (list.empty() ? "" : ", ") + s;
    k.notes.push_back(f.filename().string() + ": " + list + " (" + device + ")");
    used.push_back(f.filename().string());
  }
  if (!used.empty()) {
    std::string list;
    for (const auto& s : used) list += (list.empty() ? "" : ", ") + s;
    k.source = "measured: " + perf_dir + "/{" + list + "}, defaults for the rest";
  }
  POLDER_CHECK(
      k.gemm_tflops > 0 && k.copy_gbps > 0 && k.attention_fwd_tflops > 0 && k.attention_bwd_tflops > 0,
      "calibration: every rate must be positive (gemm {}, copy {}, attention {} / {})", k.gemm_tflops,
      k.copy_gbps, k.attention_fwd_tflops, k.attention_bwd_tflops);
  return k;
}

std::vector<MeasuredRun> load_measured_runs(const Cluster& c, const std::string& perf_dir) {
  std::vector<MeasuredRun> out;
  if (perf_dir.empty() || !fs::is_directory(perf_dir)) return out;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(perf_dir))
    if (e.path().extension() == ".json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    nlohmann::json j;
    try {
      std::ifstream in(f);
      j = nlohmann::json::parse(in);
    } catch (const std::exception&) {
      continue;
    }
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
