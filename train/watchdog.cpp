// Watchdog (see watchdog.h). The thread sleeps on a condition variable until the deadline of the last kick; a
// kick only stores a timestamp (no lock, no wake-up), so the hot path costs two relaxed atomic stores.
#include "train/watchdog.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>

#include "core/error.h"
#include "parallel/comm.h"

namespace polder::train {
namespace {
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

Watchdog::Watchdog(double timeout_s, int rank, std::function<void(const std::string&)> on_timeout)
    : timeout_s_(timeout_s), rank_(rank), on_timeout_(std::move(on_timeout)) {
  if (!on_timeout_) {
    on_timeout_ = [](const std::string& message) {
      std::fprintf(stderr, "%s; aborting the job\n", message.c_str());
      std::fflush(stderr);
      parallel::abort_job(kExitCode);
    };
  }
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::start() {
  if (timeout_s_ <= 0 || thread_.joinable()) return;
  last_kick_ns_ = now_ns();
  thread_ = std::thread([this] { loop(); });
}

void Watchdog::add_probe(std::function<std::string()> probe, double interval_s) {
  POLDER_CHECK(!thread_.joinable(), "Watchdog::add_probe after start()");
  probes_.push_back(std::move(probe));
  probe_interval_s_ = probe_interval_s_ > 0 ? std::min(probe_interval_s_, interval_s) : interval_s;
}

void Watchdog::kick(int64_t step) {
  step_.store(step, std::memory_order_relaxed);
  last_kick_ns_.store(now_ns(), std::memory_order_relaxed);
}

std::string Watchdog::message() const {
  return format("polder (rank {}): watchdog: no step completed for {} s; stuck at step {} in {}", rank_,
                timeout_s_, step_.load(), phase());
}

void Watchdog::loop() {
  const auto timeout_ns = static_cast<int64_t>(timeout_s_ * 1e9);
  const auto probe_ns = static_cast<int64_t>(probe_interval_s_ * 1e9);
  int64_t next_probe = now_ns() + probe_ns;
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    if (!probes_.empty() && now_ns() >= next_probe) {
      for (const auto& probe : probes_) {
        const std::string why = probe();
        if (why.empty()) continue;
        lock.unlock();
        on_timeout_(format("polder (rank {}): {} (at step {} in {})", rank_, why, step_.load(), phase()));
        lock.lock();
        break;
      }
      next_probe = now_ns() + probe_ns;
    }
    const int64_t idle = now_ns() - last_kick_ns_.load(std::memory_order_relaxed);
    if (idle >= timeout_ns) {
      const std::string m = message();
      lock.unlock();
      on_timeout_(m);  // by default does not return
      lock.lock();
      last_kick_ns_ = now_ns();  // a callback that returns (tests) is called again only after another timeout
      continue;
    }
    int64_t wait = timeout_ns - idle;
    if (!probes_.empty()) wait = std::min(wait, std::max<int64_t>(0, next_probe - now_ns()));
    cv_.wait_for(lock, std::chrono::nanoseconds(wait));
  }
}

void debug_stall(const DebugConfig& debug, int64_t step, const parallel::Comm& world) {
  if (debug.stall_step == 0 || step != debug.stall_step || world.rank() != world.size() - 1) return;
  std::fprintf(stderr, "polder (rank %d): debug.stall_step: stopping this process at step %lld\n",
               world.rank(), static_cast<long long>(step));
  std::fflush(stderr);
  std::raise(SIGSTOP);
}

}  // namespace polder::train
