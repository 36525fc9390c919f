// Graceful stop for cluster jobs. SIGUSR1 or SIGTERM (Slurm's warning before the wall-time limit, scancel,
// mpirun's forwarding) only sets a flag; the trainer polls it at every step boundary, and the ranks agree on
// it with one all-reduce(max) of a single int, so every rank finishes the same step, saves the same
// checkpoint and exits 0. A second signal exits at once with 128 + signo. train.max_duration raises the same
// flag from inside.
#pragma once

#include <chrono>

#include "parallel/comm.h"

namespace polder::train {

// Why a run stops early: 0 = it does not, otherwise the signal number or kStopMaxDuration.
constexpr int kStopMaxDuration = 1000;

// Installs the SIGUSR1 and SIGTERM handlers (idempotent) and ignores SIGXFSZ (a file size limit makes a write
// fail with EFBIG, reported like a full disk). `rank` 0 prints one line when the first signal arrives
// (async-signal-safe write), the others stay quiet.
void install_stop_handlers(int rank);
// The pending request of this process (0: none). request_stop() sets it as a signal would (tests);
// clear_stop() forgets it (tests).
int stop_requested();
void request_stop(int why);
void clear_stop();
// "SIGUSR1", "SIGTERM", "train.max_duration", ...
const char* stop_reason(int why);

// Polled once per step: this process's request, or max_duration passed since `start`, agreed over `world`
// (all-reduce max, so a signal that reached only one rank stops them all at the same step).
class StopCheck {
 public:
  StopCheck(double max_duration_s, std::chrono::steady_clock::time_point start)
      : max_duration_s_(max_duration_s), start_(start) {}
  int agree(parallel::Comm& world) const;

 private:
  double max_duration_s_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace polder::train
