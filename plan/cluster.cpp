// Cluster files: a flat walk over the YAML map with a table of known keys, so every mistake is one line.
#include "plan/cluster.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"

namespace polder::plan {
namespace {

struct Key {
  bool required;
  std::function<void(const YAML::Node& value, const std::string& where, const std::string& key)> read;
};

double number(const YAML::Node& n, const std::string& where, const std::string& key, bool positive) {
  double v = 0;
  try {
    v = n.as<double>();
  } catch (const YAML::Exception&) {
    POLDER_FAIL("{}: {} must be a number, got '{}'", where, key, n.IsScalar() ? n.Scalar() : "a map or list");
  }
  POLDER_CHECK(positive ? v > 0 : v >= 0, "{}: {} must be {}, got {}", where, key,
               positive ? "positive" : "non-negative", v);
  return v;
}

}  // namespace

Cluster parse_cluster(const std::string& text, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    POLDER_FAIL("{}: not valid YAML: {}", origin, e.what());
  }
  POLDER_CHECK(root.IsMap(),
               "{}: expected a map of cluster keys (name, gpus_per_node, gpu, intra_node, inter_node)",
               origin);
  Cluster c;
  auto num = [](double* out, bool positive = true) {
    return [out, positive](const YAML::Node& n, const std::string& where, const std::string& key) {
      *out = number(n, where, key, positive);
    };
  };
  auto str = [](std::string* out) {
    return [out](const YAML::Node& n, const std::string& where, const std::string& key) {
      POLDER_CHECK(n.IsScalar(), "{}: {} must be a string", where, key);
      *out = n.Scalar();
    };
  };
  double gpn = 0;
  const std::map<std::string, Key> keys = {
      {"name", {true, str(&c.name)}},
      {"gpus_per_node", {true, num(&gpn)}},
      {"gpu.name", {true, str(&c.gpu_name)}},
      {"gpu.bf16_peak_tflops", {true, num(&c.peak_tflops)}},
      {"gpu.hbm_gib", {true, num(&c.hbm_gib)}},
      {"gpu.hbm_bandwidth_gbs", {true, num(&c.hbm_gbs)}},
      {"gpu.tdp_w", {true, num(&c.tdp_w)}},
      {"gpu.average_power_w", {true, num(&c.gpu_power_w)}},
      {"gpu.context_gib", {false, num(&c.context_gib, false)}},
      {"gpu.cublas_workspace_mib", {false, num(&c.cublas_workspace_mib, false)}},
      {"gpu.nccl_mib_per_comm", {false, num(&c.nccl_mib_per_comm, false)}},
      {"gpu.allocator_slack", {false, num(&c.allocator_slack, false)}},
      {"intra_node.bandwidth_gbs", {true, num(&c.intra.bandwidth_gbs)}},
      {"intra_node.latency_us", {true, num(&c.intra.latency_us, false)}},
      {"inter_node.bandwidth_gbs", {true, num(&c.inter.bandwidth_gbs)}},
      {"inter_node.latency_us", {true, num(&c.inter.latency_us, false)}},
      {"node_power_w", {true, num(&c.node_power_w, false)}},
      {"pue", {false, num(&c.pue)}},
  };
  std::set<std::string> seen;
  std::function<void(const YAML::Node&, const std::string&)> walk = [&](const YAML::Node& node,
                                                                        const std::string& prefix) {
    for (const auto& kv : node) {
      const std::string key = prefix + kv.first.as<std::string>();
      const std::string where = format("{}:{}", origin, kv.first.Mark().line + 1);
      if (kv.second.IsMap()) {
        walk(kv.second, key + ".");
        continue;
      }
      auto it = keys.find(key);
      if (it == keys.end()) {
        std::string known;
        for (auto& [k, v] : keys) known += (known.empty() ? "" : ", ") + k;
        POLDER_FAIL("{}: unknown key '{}' (known: {})", where, key, known);
      }
      it->second.read(kv.second, where, key);
      seen.insert(key);
    }
  };
  walk(root, "");
  for (auto& [k, v] : keys)
    POLDER_CHECK(!v.required || seen.count(k), "{}: missing required key '{}'", origin, k);
  POLDER_CHECK(gpn == static_cast<double>(static_cast<int64_t>(gpn)),
               "{}: gpus_per_node must be a whole number, got {}", origin, gpn);
  c.gpus_per_node = static_cast<int64_t>(gpn);
  POLDER_CHECK(c.gpu_power_w <= c.tdp_w, "{}: gpu.average_power_w {} exceeds gpu.tdp_w {}", origin,
               c.gpu_power_w, c.tdp_w);
  return c;
}

Cluster load_cluster(const std::string& path) {
  std::ifstream in(path);
  POLDER_CHECK(in.good(), "cannot open cluster file '{}': {}", path, std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_cluster(ss.str(), path);
}

}  // namespace polder::plan
