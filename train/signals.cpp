// Signal handlers that only record (see signals.h). Everything in the handler is async-signal-safe: an atomic
// exchange, write(2) and _exit(2).
#include "train/signals.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace polder::train {
namespace {

std::atomic<int> g_stop{0};
std::atomic<int> g_rank{0};

void write_err(const char* text) {
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

void on_signal(int signo) {
  if (g_stop.exchange(signo) != 0) {
    write_err("polder: second signal: exiting now without a checkpoint\n");
    _exit(128 + signo);
  }
  if (g_rank.load() == 0)
    write_err(
        signo == SIGUSR1
            ? "polder: SIGUSR1: stopping after the current step with a checkpoint (again: exit at once)\n"
            : "polder: SIGTERM: stopping after the current step with a checkpoint (again: exit at once)\n");
}

}  // namespace

void install_stop_handlers(int rank) {
  g_rank = rank;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // blocking reads and MPI's system calls resume after the handler
  sigaction(SIGUSR1, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // Beyond a file size limit (ulimit -f), write(2) then fails with EFBIG and the checkpoint write reports it,
  // instead of the signal killing the process.
  std::signal(SIGXFSZ, SIG_IGN);
}

int stop_requested() {
  return g_stop.load();
}
void request_stop(int why) {
  g_stop = why;
}
void clear_stop() {
  g_stop = 0;
}

const char* stop_reason(int why) {
  switch (why) {
    case 0:
      return "no stop";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case kStopMaxDuration:
      return "train.max_duration";
    default:
      return "a stop request";
  }
}

int StopCheck::agree(parallel::Comm& world) const {
  int why = stop_requested();
  if (why == 0 && max_duration_s_ > 0 &&
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() >= max_duration_s_)
    why = kStopMaxDuration;
  if (world.size() == 1) return why;
  Tensor t = Tensor::from_vector<int32_t>({why}, {1});
  world.all_reduce(t, parallel::ReduceOp::max);
  return t.data<int32_t>()[0];
}

}  // namespace polder::train
