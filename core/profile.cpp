// The step profile (core/profile.h).
#include "core/profile.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>

#include <nlohmann/json.hpp>

#include <cstdio>

namespace polder::profile {
namespace {

std::atomic<bool> g_enabled{false};
std::mutex g_mutex;
std::map<std::pair<std::string, int>, Row> g_rows;
double g_step_seconds = 0;

struct Frame {
  const char* kind;
  std::chrono::steady_clock::time_point start;
  double children = 0, flops = 0;
};
thread_local std::vector<Frame> t_stack;
thread_local double t_next_flops = 0;
thread_local int t_direction = DirectionGuard::forward;

const char* direction_name(int d) {
  if (d == DirectionGuard::backward) return "backward";
  if (d == DirectionGuard::evaluation) return "evaluation";
  if (d == DirectionGuard::step) return "step";
  return "forward";
}

}  // namespace

bool enabled() {
  return g_enabled.load(std::memory_order_relaxed);
}
void set_enabled(bool on) {
  g_enabled = on;
}
void reset() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_rows.clear();
  g_step_seconds = 0;
}

Scope::Scope(const char* kind) : on_(enabled()) {
  if (!on_) return;
  t_stack.push_back({kind, std::chrono::steady_clock::now(), 0, t_next_flops});
  t_next_flops = 0;
}

Scope::~Scope() {
  if (!on_ || t_stack.empty()) return;
  const Frame f = t_stack.back();
  t_stack.pop_back();
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - f.start).count();
  if (!t_stack.empty()) t_stack.back().children += total;
  std::lock_guard<std::mutex> lock(g_mutex);
  Row& r = g_rows[{f.kind, t_direction}];
  r.kind = f.kind;
  r.direction = direction_name(t_direction);
  r.seconds += total - f.children;
  r.calls += 1;
  r.flops += f.flops;
}

void next_flops(double flops) {
  if (enabled()) t_next_flops = flops;
}

DirectionGuard::DirectionGuard(Direction d) : prev_(t_direction) {
  t_direction = d;
}
DirectionGuard::~DirectionGuard() {
  t_direction = prev_;
}

const char* kind_of_kernel(const char* k) {
  auto has = [k](const char* s) { return std::strstr(k, s) != nullptr; };
  if (has("gemm")) return "GEMM";
  if (has("attention")) return "attention";
  if (has("rms_norm")) return "norm";
  if (has("softmax") || has("cross_entropy") || has("vocab_ce")) return "softmax / cross-entropy";
  if (has("embedding")) return "embedding";
  if (has("rope")) return "RoPE";
  if (has("adamw") || has("AdamW") || has("optim") || has("norm_sq") || has("clip")) return "optimizer";
  return "elementwise";
}

std::vector<Row> rows() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<Row> out;
  for (const auto& [key, r] : g_rows) out.push_back(r);
  std::sort(out.begin(), out.end(), [](const Row& a, const Row& b) { return a.seconds > b.seconds; });
  return out;
}

void add_step_seconds(double s) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_step_seconds += s;
}
double step_seconds() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_step_seconds;
}

std::string report(int64_t steps) {
  const std::vector<Row> rs = rows();
  const double total = step_seconds();
  const double n = static_cast<double>(std::max<int64_t>(steps, 1));
  char line[256];
  std::snprintf(
      line, sizeof line,
      "profile: %lld steps, %.3f s per step (host wall time of the run loop; the first step is left out "
      "when there are more)\n",
      static_cast<long long>(steps), total / n);
  std::string out = line;
  std::snprintf(line, sizeof line, "  %-26s %-11s %10s %7s %9s %10s\n", "kind", "direction", "s/step",
                "share", "calls", "GFLOP/s");
  out += line;
  double accounted = 0;
  for (const Row& r : rs) {
    accounted += r.seconds;
    char rate[32] = "-";
    if (r.flops > 0 && r.seconds > 0) std::snprintf(rate, sizeof rate, "%.1f", r.flops / r.seconds / 1e9);
    std::snprintf(line, sizeof line, "  %-26s %-11s %10.4f %6.1f%% %9.0f %10s\n", r.kind.c_str(),
                  r.direction.c_str(), r.seconds / n, total > 0 ? 100.0 * r.seconds / total : 0.0,
                  static_cast<double>(r.calls) / n, rate);
    out += line;
  }
  const double other = std::max(0.0, total - accounted);
  std::snprintf(line, sizeof line, "  %-26s %-11s %10.4f %6.1f%%\n", "other (framework, waits)", "",
                other / n, total > 0 ? 100.0 * other / total : 0.0);
  out += line;
  return out;
}

std::string report_json(int64_t steps) {
  nlohmann::json j;
  const double n = static_cast<double>(std::max<int64_t>(steps, 1));
  j["steps"] = steps;
  j["seconds_per_step"] = step_seconds() / n;
  j["rows"] = nlohmann::json::array();
  for (const Row& r : rows())
    j["rows"].push_back({{"kind", r.kind},
                         {"direction", r.direction},
                         {"seconds_per_step", r.seconds / n},
                         {"calls_per_step", static_cast<double>(r.calls) / n},
                         {"gflops", r.flops > 0 && r.seconds > 0 ? r.flops / r.seconds / 1e9 : 0.0}});
  return j.dump(2);
}

}  // namespace polder::profile
