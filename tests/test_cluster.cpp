// Running on a cluster, one process: graceful stop on a signal or train.max_duration (checkpoint at the stop
// step, exact resume), a second signal exiting at once, the watchdog's message and abort, non-finite steps
// (skipped without any state change, the first bad gradient named, abort after N in a row), and checkpoint
// writes that fail (file size limit, a file where the folder should be) leaving the previous checkpoint
// intact.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "models/llama/model.h"
#include "tests/synthetic_data.h"
#include "tests/testing.h"
#include "train/checkpoint.h"
#include "train/numerics.h"
#include "train/signals.h"
#include "train/trainer.h"
#include "train/watchdog.h"

using namespace polder;
using namespace polder::testing;
namespace fs = std::filesystem;

namespace {

Config tiny_config(const std::string& dir) {
  testing::write_synthetic_dataset(dir + "/a", 120, 61, 1);
  Config c;
  c.model.vocab_size = 64;
  c.model.hidden_size = 32;
  c.model.intermediate_size = 48;
  c.model.num_layers = 2;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.max_seq_len = 32;
  c.data.datasets = {{"a", dir + "/a", 1.0}};
  c.data.seq_len = 16;
  c.data.valid_fraction = 0;
  c.train.steps = 6;
  c.train.global_batch = 8;
  c.train.micro_batch = 4;
  c.train.run_dir = dir + "/run";
  c.train.resume = "none";
  c.optim.lr = 3e-3;
  c.schedule.warmup_steps = 2;
  c.checkpoint.keep_last = 5;
  c.logging.tensorboard = false;
  c.logging.jsonl = false;
  return c;
}

std::vector<float> floats(const Tensor& t) {
  return t.to(DType::f32).to_vector<float>();
}
std::vector<float> weights_of(models::Model& m) {
  return floats(m.flat_params());
}

// Runs f in a child process; returns its exit status (or 1000 + signal) and what it wrote to stderr.
template <typename F>
std::pair<int, std::string> in_child(F&& f) {
  const std::string err = fs::temp_directory_path() / ("polder_cluster_child_" + std::to_string(::getpid()));
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (!std::freopen(err.c_str(), "w", stderr)) _exit(99);
    f();
    _exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::ifstream in(err);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove(err);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status), text};
}

// A soft limit on the size of files this process writes (EFBIG beyond it): a failing disk write that works as
// root and on any filesystem. SIGXFSZ is ignored while it is in force.
struct FileSizeLimit {
  rlimit saved{};
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit r = saved;
    r.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &r) == 0);
  }
  ~FileSizeLimit() { ::setrlimit(RLIMIT_FSIZE, &saved); }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("durations: train.max_duration accepts 23h30m, 90m, 1.5h and seconds", "[cluster][config]") {
  CHECK(parse_duration("23h30m") == 23 * 3600 + 30 * 60);
  CHECK(parse_duration("90m") == 5400);
  CHECK(parse_duration("1.5h") == 5400);
  CHECK(parse_duration("1d2h") == 86400 + 7200);
  CHECK(parse_duration("45s") == 45);
  CHECK(parse_duration("3600") == 3600);
  CHECK(parse_duration("2.5") == 2.5);
  CHECK(parse_duration("") == 0);
  CHECK(parse_duration("0") == 0);
  for (const char* bad : {"abc", "10x", "h", "-5", "1h-5m", "5h3", "1..5h"})
    require_error([&] { parse_duration(bad); },
                  format("train.max_duration must be a duration such as '23h30m', "
                         "'90m', '1.5h' or a number of seconds; got '{}'",
                         bad));
  const std::string base = R"(model: {vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2,
  num_heads: 4}
data: {datasets: [{name: a, prefix: a}], seq_len: 16}
train: {steps: 4, global_batch: 4, micro_batch: 2}
)";
  Config c = parse_config(base, {"train.max_duration=23h30m", "train.watchdog_s=60", "debug.nan_step=3"});
  CHECK(c.train.max_duration == "23h30m");
  CHECK(c.train.watchdog_s == 60);
  CHECK(c.debug.nan_step == 3);
  CHECK(parse_config(base).train.watchdog_s == 1800);  // on by default
  CHECK(parse_config(config_to_yaml(c)) == c);
  require_error([&] { parse_config(base, {"train.max_duration=soon"}); }, "got 'soon'");
  require_error([&] { parse_config(base, {"train.watchdog_s=-1"}); },
                "train.watchdog_s must not be negative (0: off), got -1");
  require_error([&] { parse_config(base, {"train.max_nonfinite_steps=0"}); },
                "train.max_nonfinite_steps must be positive, got 0");
  require_error([&] { parse_config(base, {"debug.nan_steps=0"}); },
                "debug.nan_steps must be positive, got 0");
  require_error([&] { parse_config(base, {"debug.nan_stp=1"}); }, "did you mean 'debug.nan_step'?");
}

TEST_CASE("a stop request ends the run at the next step with a checkpoint, and the resumed run is exact",
          "[cluster][signal]") {
  const std::string dir = fresh_dir("cluster", "signal");
  Config c = tiny_config(dir);
  std::vector<float> full;
  {
    train::Trainer t(c, true);
    for (int i = 0; i < 6; ++i) t.train_step();
    full = weights_of(t.model());
  }
  Config c2 = c;
  c2.train.run_dir = dir + "/run2";
  c2.train.resume = "auto";
  train::clear_stop();
  train::install_stop_handlers(1);  // rank 1: no line printed by the handler
  {
    train::Trainer t(c2, true);
    t.train_step();  // a signal during step 2: the run finishes that step and stops
    std::raise(SIGUSR1);
    CHECK(train::stop_requested() == SIGUSR1);
    CHECK(t.run() == SIGUSR1);
    CHECK(t.step() == 2);
  }
  train::clear_stop();
  const std::string root = dir + "/run2/checkpoints";
  REQUIRE(train::latest_checkpoint(root).has_value());
  CHECK(fs::path(*train::latest_checkpoint(root)).filename() == "step_00000002");
  CHECK(train::read_checkpoint_metadata(*train::latest_checkpoint(root)).at("step") == 2);
  {
    train::Trainer t(c2, true);  // the same command again: resumes from latest with no flags
    CHECK(t.step() == 2);
    CHECK(t.run() == 0);
    CHECK(t.step() == 6);
    CHECK(weights_of(t.model()) == full);  // bit-identical to the uninterrupted run
  }
  // A request arriving at the last step lets the run complete normally.
  Config c3 = c;
  c3.train.run_dir = dir + "/run3";
  c3.train.steps = 1;
  c3.schedule.warmup_steps = 0;
  train::request_stop(SIGTERM);
  {
    train::Trainer t(c3, true);
    CHECK(t.run() == 0);
    CHECK(t.step() == 1);
  }
  train::clear_stop();
  std::signal(SIGUSR1, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

TEST_CASE("train.max_duration stops the run like a signal", "[cluster][signal]") {
  const std::string dir = fresh_dir("cluster", "duration");
  Config c = tiny_config(dir);
  c.train.max_duration = "1e-6";
  train::clear_stop();
  train::Trainer t(c, true);
  CHECK(t.run() == train::kStopMaxDuration);
  CHECK(t.step() == 1);
  CHECK(fs::exists(dir + "/run/checkpoints/step_00000001/metadata.json"));
  CHECK(std::string(train::stop_reason(train::kStopMaxDuration)) == "train.max_duration");
}

TEST_CASE("a second signal exits at once with 128 + signo", "[cluster][signal]") {
  for (int sig : {SIGUSR1, SIGTERM}) {
    auto [code, err] = in_child([sig] {
      train::install_stop_handlers(0);
      std::raise(sig);  // first: only recorded
      if (train::stop_requested() != sig) _exit(97);
      std::raise(sig);  // second: _exit(128 + sig)
      _exit(98);
    });
    CHECK(code == 128 + sig);
    CHECK(err.find(": stopping after the current step with a checkpoint (again: exit at once)") !=
          std::string::npos);
    CHECK(err.find("polder: second signal: exiting now without a checkpoint") != std::string::npos);
  }
}

TEST_CASE("watchdog: a probe's asynchronous error ends the job long before the timeout",
          "[cluster][watchdog]") {
  std::mutex m;
  std::vector<std::string> fired;
  std::atomic<bool> peer_dead{false};
  const auto t0 = std::chrono::steady_clock::now();
  double when = 0;
  {
    train::Watchdog w(100, 1, [&](const std::string& msg) {
      std::lock_guard<std::mutex> lock(m);
      if (fired.empty()) when = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      fired.push_back(msg);
    });
    w.add_probe(
        [&] { return peer_dead ? std::string("NCCL communicator 'dp': ncclRemoteError") : std::string(); },
        0.05);
    w.kick(4);
    w.enter("gradient all-reduce (data parallel)");
    w.start();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    {
      std::lock_guard<std::mutex> lock(m);
      CHECK(fired.empty());  // a healthy probe never fires
    }
    peer_dead = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  REQUIRE_FALSE(fired.empty());
  CHECK(fired[0] ==
        "polder (rank 1): NCCL communicator 'dp': ncclRemoteError (at step 4 in gradient all-reduce (data "
        "parallel))");
  CHECK(when > 0.3);
  CHECK(when < 0.3 + 1.0);  // a few probe intervals (plus a loaded machine), not the 100 s timeout
}

TEST_CASE("watchdog: names the step and the phase after the timeout, not before", "[cluster][watchdog]") {
  std::mutex m;
  std::vector<std::string> fired;
  std::vector<double> when;
  const auto t0 = std::chrono::steady_clock::now();
  {
    train::Watchdog w(0.3, 2, [&](const std::string& msg) {
      std::lock_guard<std::mutex> lock(m);
      fired.push_back(msg);
      when.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    });
    w.start();
    // Kicked every 50 ms for 0.9 s: never fires.
    for (int i = 0; i < 18; ++i) {
      w.enter("forward/backward");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      w.kick(i + 2);
    }
    {
      std::lock_guard<std::mutex> lock(m);
      CHECK(fired.empty());
    }
    w.enter("gradient all-reduce (data parallel)");
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  REQUIRE(fired.size() == 1);
  CHECK(fired[0] ==
        "polder (rank 2): watchdog: no step completed for 0.3 s; stuck at step 19 in gradient all-reduce "
        "(data parallel)");
  CHECK(when[0] > 0.9 + 0.3 - 0.02);
  CHECK(when[0] < 0.9 + 0.3 + 0.15);
  // Off (0 s): no thread, phases still recorded.
  train::Watchdog off(0);
  off.start();
  off.enter("optimizer step");
  CHECK(std::string(off.phase()) == "optimizer step");
  // The default action prints the message and ends the process with exit code 3.
  auto [code, err] = in_child([] {
    train::Watchdog w(0.2);
    w.kick(7);
    w.enter("pipeline receive of gradients");
    w.start();
    std::this_thread::sleep_for(std::chrono::seconds(5));
  });
  CHECK(code == train::Watchdog::kExitCode);
  CHECK(err.find(
            "polder (rank 0): watchdog: no step completed for 0.2 s; stuck at step 7 in pipeline receive of "
            "gradients; aborting the job") != std::string::npos);
}

TEST_CASE("a step with a non-finite gradient is skipped without changing any state", "[cluster][nonfinite]") {
  const std::string dir = fresh_dir("cluster", "nonfinite");
  Config c = tiny_config(dir);
  c.train.steps = 5;
  Config bad = c;
  bad.debug.nan_step = 3;
  bad.debug.nan_param = "model.layers.1.mlp.down_proj.weight";
  train::Trainer t(bad, true), ref(c, true);
  for (int i = 0; i < 2; ++i) {
    CHECK(t.train_step().loss == ref.train_step().loss);
  }
  const std::vector<float> w = weights_of(t.model()), m = floats(t.optimizer().exp_avg()),
                           v = floats(t.optimizer().exp_avg_sq());
  train::StepResult r = t.train_step();
  CHECK(r.skipped);
  CHECK(std::isfinite(r.loss));
  CHECK(std::isnan(r.grad_norm));
  CHECK(r.lr == train::lr_at(c.schedule, c.optim.lr, 2, c.train.steps));
  CHECK(t.step() == 2);
  CHECK(t.optimizer().steps_taken() == 2);
  CHECK(weights_of(t.model()) == w);
  CHECK(floats(t.optimizer().exp_avg()) == m);
  CHECK(floats(t.optimizer().exp_avg_sq()) == v);
  CHECK(t.nonfinite().total() == 1);
  CHECK(t.nonfinite().in_a_row() == 1);
  // The skipped step consumed its batch; the reference skips the same batch by hand, then both step on
  // together, bit for bit (same data, same learning rate, same optimizer step).
  for (int64_t i = 0; i < ref.accumulation(); ++i) ref.loader().next();
  for (int i = 0; i < 3; ++i) {
    train::StepResult a = t.train_step(), b = ref.train_step();
    CHECK_FALSE(a.skipped);
    CHECK(a.loss == b.loss);
    CHECK(a.lr == b.lr);
  }
  CHECK(t.nonfinite().in_a_row() == 0);
  CHECK(weights_of(t.model()) == weights_of(ref.model()));
  CHECK(t.step() == 5);
}

TEST_CASE("the first non-finite gradient is named in the model's order", "[cluster][nonfinite]") {
  const std::string dir = fresh_dir("cluster", "first");
  Config c = tiny_config(dir);
  train::Trainer t(c, true);
  t.train_step();
  models::Model& model = t.model();
  auto world = parallel::world_comm();
  const int64_t n = model.flat_grads().numel();
  CHECK(train::first_nonfinite_gradient(model, 0, n, *world).empty());
  auto poison = [&](const std::string& name, float value, int64_t element) {
    for (const models::Parameter& p : model.parameters())
      if (p.name == name) model.flat_grads().data<float>()[p.offset + element] = value;
  };
  poison("model.layers.1.mlp.down_proj.weight", std::numeric_limits<float>::quiet_NaN(), 5);
  CHECK(train::first_nonfinite_gradient(model, 0, n, *world) == "model.layers.1.mlp.down_proj.weight");
  poison("model.layers.0.self_attn.k_proj.weight", std::numeric_limits<float>::infinity(), 0);
  CHECK(train::first_nonfinite_gradient(model, 0, n, *world) == "model.layers.0.self_attn.k_proj.weight");
  // Outside the owned range (a ZeRO shard) it does not count.
  int64_t k_end = 0;
  for (const models::Parameter& p : model.parameters())
    if (p.name == "model.layers.0.self_attn.k_proj.weight") k_end = p.offset + p.value.numel();
  CHECK(train::first_nonfinite_gradient(model, k_end, n, *world) == "model.layers.1.mlp.down_proj.weight");
}

TEST_CASE("a non-finite loss is skipped too; N in a row or skip_nonfinite false end the run",
          "[cluster][nonfinite]") {
  const std::string dir = fresh_dir("cluster", "nonfinite_abort");
  Config c = tiny_config(dir);
  c.train.steps = 4;
  {
    Config l = c;
    l.debug.nan_step = 2;
    l.debug.nan_param = "loss";
    train::Trainer t(l, true);
    CHECK(t.run() == 0);  // one skip, then the four updates
    CHECK(t.step() == 4);
    CHECK(t.nonfinite().total() == 1);
    CHECK(train::read_checkpoint_metadata(dir + "/run/checkpoints/step_00000004")
              .at("state")
              .at("nonfinite_skipped") == 1);
  }
  {
    Config l = c;
    l.train.run_dir = dir + "/run_row";
    l.debug.nan_step = 2;
    l.debug.nan_steps = 100;
    l.train.max_nonfinite_steps = 3;
    train::Trainer t(l, true);
    require_error(
        [&] { t.run(); },
        "3 steps in a row had a non-finite loss or gradient norm (train.max_nonfinite_steps = 3); last at "
        "step 2: loss ");
    CHECK(t.step() == 1);
    CHECK(t.nonfinite().in_a_row() == 3);
  }
  {
    Config l = c;
    l.train.run_dir = dir + "/run_strict";
    l.debug.nan_step = 3;
    l.train.skip_nonfinite = false;
    train::Trainer t(l, true);
    try {
      t.run();
      FAIL("expected an error");
    } catch (const Error& e) {
      INFO(e.message());
      CHECK(e.message().find("training diverged at step 3: loss ") == 0);
      CHECK(e.message().find(
                ", gradient norm nan (first non-finite gradient: lm_head.weight); train.skip_nonfinite "
                "is false") != std::string::npos);
    }
  }
}

TEST_CASE("a checkpoint write that fails leaves the previous checkpoint and latest intact",
          "[cluster][disk]") {
  const std::string dir = fresh_dir("cluster", "disk");
  Config c = tiny_config(dir);
  train::Trainer t(c, true);
  t.train_step();
  const std::string first = t.save();
  const fs::path root = t.checkpoint_dir();
  const std::string shard = slurp(fs::path(first) / "shard-pp0-tp0.safetensors");
  const std::vector<float> w1 = weights_of(t.model());
  t.train_step();
  {
    FileSizeLimit limit(4096);  // the shard is ~190 KB; metadata and `latest` would fit
    require_error([&] { t.save(); },
                  "checkpoint step 2 not written: writing '" +
                      (root / ".tmp-step_00000002" / "shard-pp0-tp0.safetensors.tmp").string() +
                      "' failed: File too large; the previous checkpoint (step 1) is intact");
  }
  auto check_intact = [&] {
    CHECK(train::latest_checkpoint(root.string()) == first);
    for (const auto& e : fs::directory_iterator(root)) {
      const std::string f = e.path().filename().string();
      CHECK((f == "latest" || f == "step_00000001"));
    }
    CHECK(slurp(fs::path(first) / "shard-pp0-tp0.safetensors") == shard);
    models::Llama m(c.model, DType::f32);
    train::load_checkpoint(root.string(), m, nullptr);  // checksums verified
    CHECK(weights_of(m) == w1);
  };
  check_intact();
  // Re-saving step 1 moves the old folder aside; a failure puts it back.
  {
    Config c1 = c;
    c1.train.run_dir = dir + "/run";
    c1.train.resume = "auto";
    train::Trainer again(c1, true);
    FileSizeLimit limit(4096);
    require_error([&] { again.save(); }, "checkpoint step 1 not written: ");
  }
  check_intact();
  {
    Config c1 = c;
    c1.train.resume = "auto";
    train::Trainer again(c1, true);
    CHECK(again.save() == first);  // re-saved in place
  }
  check_intact();
  // The disk has room again: the next save works and becomes latest.
  const std::string second = t.save();
  CHECK(train::latest_checkpoint(root.string()) == second);
  // A file where the checkpoint folder should be: nothing is written, and there was no previous checkpoint.
  Config f = c;
  f.train.run_dir = dir + "/run_file";
  f.checkpoint.dir = dir + "/not_a_folder";
  std::ofstream(f.checkpoint.dir) << "x";
  train::Trainer tf(f, true);
  tf.train_step();
  require_error([&] { tf.save(); }, "checkpoint step 1 not written: cannot create checkpoint folder '" +
                                        f.checkpoint.dir + "': ");
  require_error([&] { tf.save(); }, "; there is no previous checkpoint");
}

TEST_CASE("a failing periodic checkpoint lets the run go on; the final one must succeed", "[cluster][disk]") {
  const std::string dir = fresh_dir("cluster", "disk_run");
  Config c = tiny_config(dir);
  c.checkpoint.every = 2;
  c.train.steps = 4;
  train::Trainer t(c, true);
  t.train_step();
  t.train_step();
  t.save();  // step 2
  FileSizeLimit limit(4096);
  // Step 4 is the last: its checkpoint failing ends the run with the message (steps 3 and 4 would be lost).
  require_error([&] { t.run(); }, "checkpoint step 4 not written: ");
  CHECK(t.step() == 4);
  CHECK(fs::path(*train::latest_checkpoint(t.checkpoint_dir())).filename() == "step_00000002");
  Config p = c;
  p.train.run_dir = dir + "/run_periodic";
  p.train.steps = 5;
  train::Trainer tp(p, true);
  // Steps 2 and 4 fail (warnings on stderr when not quiet), and the run goes on to step 5, whose checkpoint
  // fails.
  require_error([&] { tp.run(); }, "checkpoint step 5 not written: ");
  CHECK(tp.step() == 5);
  CHECK_FALSE(train::latest_checkpoint(tp.checkpoint_dir()).has_value());
}
