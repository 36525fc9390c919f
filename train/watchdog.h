// A watchdog for hangs: a thread that the trainer kicks at every completed step and that, when no kick comes
// for timeout seconds, reports "watchdog: no step completed for N s; stuck at step S in <phase>" and ends the
// whole job (parallel::abort_job). The trainer names its current phase (forward/backward, the gradient
// all-reduce, a pipeline receive, the optimizer, a checkpoint write, ...) before each collective, so the
// message says which collective a dead or stuck peer left this rank waiting in.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "parallel/comm.h"
#include "train/config.h"

namespace polder::train {

class Watchdog {
 public:
  // timeout_s <= 0: no thread; phases are still recorded. on_timeout receives the message; the default prints
  // it to stderr and calls parallel::abort_job(kExitCode).
  static constexpr int kExitCode = 3;
  explicit Watchdog(double timeout_s, int rank = 0,
                    std::function<void(const std::string&)> on_timeout = nullptr);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // A health check the watchdog's thread runs every interval_s seconds (before start()): a non-empty result
  // is a fatal error found asynchronously (an NCCL communicator's async error: a peer died while this rank's
  // collective spins on the GPU) and ends the job like a timeout, with that message, instead of waiting out
  // timeout_s. Probes run only while the thread runs (timeout_s > 0).
  void add_probe(std::function<std::string()> probe, double interval_s);
  void start();  // starts the thread (no-op when off or already started); the clock starts now
  // A step completed (or a long operation made progress); `step` is the 1-based step worked on next.
  void kick(int64_t step);
  // `phase` must have static storage (a string literal): only the pointer is stored.
  void enter(const char* phase) { phase_.store(phase, std::memory_order_relaxed); }
  const char* phase() const { return phase_.load(std::memory_order_relaxed); }
  std::string message() const;  // the report it would print now

 private:
  void loop();
  double timeout_s_;
  int rank_;
  std::function<void(const std::string&)> on_timeout_;
  std::vector<std::function<std::string()>> probes_;
  double probe_interval_s_ = 0;
  std::atomic<const char*> phase_{"startup"};
  std::atomic<int64_t> step_{1};
  std::atomic<int64_t> last_kick_ns_{0};
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// Test hook debug.stall_step: the last rank of `world` stops itself (SIGSTOP, every thread, as a hung node
// would) at the start of that step, so the others' watchdogs must end the job.
void debug_stall(const DebugConfig& debug, int64_t step, const parallel::Comm& world);

}  // namespace polder::train
