// Training metrics: the one-line step summary for Slurm logs, and MetricsWriter, which appends every step to
// <run_dir>/metrics.jsonl and to a TensorBoard events file. TensorBoard files are written natively (TFRecord
// framing + hand-encoded Event protobufs, ~100 lines) so that polder needs neither TensorFlow nor protobuf.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

namespace polder::train {

struct StepMetrics {
  int64_t step = 0;         // optimizer steps done, counting this one (1-based)
  int64_t total_steps = 0;  // 0: unknown
  double loss = 0;
  double lr = 0;
  double grad_norm = 0;     // global norm before clipping
  double tokens_per_s = 0;  // all ranks together
  double mfu = -1;  // model FLOPs utilisation, 0..1; < 0: unknown (shown as "-", not logged to TensorBoard)
  double step_time_s = 0;
  double eta_s = -1;        // < 0: unknown
  int64_t tokens_seen = 0;  // all ranks together, since step 0 of the run (not of this process)
  // GPU runs (< 0: unknown, not shown or logged): the device pool's peak bytes in use by tensors (GiB), and
  // the device's energy from NVML for this step and since the process started (kWh, this rank's GPU).
  double peak_memory_gib = -1;
  double energy_kwh = -1;
  double energy_total_kwh = -1;
};

// One line per logged step; fields keep their width within a run (the step field is as wide as total_steps):
//   step    120/3000 | loss 4.1234 | lr 2.94e-04 | gnorm 0.812 |  12.3k tok/s | MFU 41.2% | 0.534 s/step |
//   ETA 25m36s   (all on one line)
std::string format_step_line(const StepMetrics& m);
// 25m36s, 1h02m03s, 7s; "-" when negative or not finite. Days are shown as hours (e.g. 50h00m00s).
std::string format_duration(double seconds);

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord framing needs.
// crc32c("123456789") = 0xE3069283.
uint32_t crc32c(const void* data, size_t size);

// Appends metrics to <run_dir>/metrics.jsonl and to a new file per process,
// <run_dir>/tb/events.out.tfevents.<unix_time>.<hostname>[.n].
// metrics.jsonl holds one JSON object per line, told apart by "kind" (each also has "time", unix seconds):
//   {"kind":"train","step":..,"total_steps":..,"loss":..,"lr":..,"grad_norm":..,"tokens_per_s":..,"mfu":..,
//    "step_time_s":..,"eta_s":..,"tokens_seen":..}      (mfu, eta_s: null when unknown; NaN/inf losses: null)
//   {"kind":"scalar","step":..,"tag":"valid/loss","value":..}
//   {"kind":"resume","step":..}   entries of earlier processes at steps >= step are stale (see log_resume)
// The JSONL file is appended to across resumes; TensorBoard gets a new events file per process, which it
// merges. Every call flushes both files, so `tensorboard --logdir <run_dir>` and `tail -f` see each step at
// once. Only one rank (rank 0) should own a MetricsWriter. Not thread-safe.
class MetricsWriter {
 public:
  MetricsWriter(const std::string& run_dir, bool jsonl, bool tensorboard);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // One Event holding train/loss, train/lr, train/grad_norm, train/tokens_per_s, train/mfu (when known) and
  // train/step_time.
  void log_step(const StepMetrics& m);
  // Any other scalar, e.g. ("valid/loss", 3.91, 500).
  void log_scalar(const std::string& tag, double value, int64_t step);
  // Call once after resuming from a checkpoint whose next step is `next_step`: points logged by earlier
  // processes at steps >= next_step belong to a timeline that was thrown away. Writes a SessionLog START
  // event at that step and a "resume" line to metrics.jsonl. TensorBoard's Python loader (EventAccumulator)
  // and plot_run.py then drop the stale points. The Rust data server (tensorboard --load_fast) keeps them,
  // but a re-logged step's newer value replaces the older one on its chart, so only stale points the new
  // process never reaches again (e.g. a valid/loss at a step it does not evaluate) stay visible there.
  void log_resume(int64_t next_step);
  void flush();

  const std::string& jsonl_path() const { return jsonl_path_; }     // empty when off
  const std::string& tensorboard_path() const { return tb_path_; }  // empty when off

 private:
  struct FileCloser {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  using File = std::unique_ptr<std::FILE, FileCloser>;

  void write_jsonl(const std::string& line);
  void write_event(const std::string& event_bytes);

  std::string jsonl_path_, tb_path_;
  File jsonl_, tb_;
};

}  // namespace polder::train
