// Tests for train/metrics: the step line, metrics.jsonl, and the TensorBoard events file read back by an
// independent TFRecord + protobuf reader written here from the format's spec (its own CRC-32C, checked on a
// known test vector), so the writer's encoder is not its own oracle. scripts/reference/check_tensorboard.py
// checks with real TensorBoard.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/cuda_context.h"
#include "core/error.h"
#include "train/metrics.h"

namespace fs = std::filesystem;
using polder::train::MetricsWriter;
using polder::train::StepMetrics;

namespace {

// Bitwise CRC-32C (no table), straight from the definition: reflected polynomial 0x82F63B78, init and xorout
// ~0.
uint32_t ref_crc32c(const std::string& bytes) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char b : bytes) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}
uint32_t ref_masked(const std::string& bytes) {
  uint32_t c = ref_crc32c(bytes);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

template <typename T>
T load_le(const std::string& s, size_t pos) {
  REQUIRE(pos + sizeof(T) <= s.size());
  T v;
  std::memcpy(&v, s.data() + pos, sizeof(T));
  return v;
}

struct ReadEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  int64_t session_status = -1;  // session_log.status, -1: no session_log
  std::vector<std::pair<std::string, float>> values;
};

// One protobuf field: number, wire type, and its payload (varint value, fixed bytes, or length-delimited
// bytes).
struct Field {
  int number;
  int wire;
  uint64_t varint = 0;
  std::string bytes;
};

std::vector<Field> parse_message(const std::string& msg) {
  std::vector<Field> fields;
  size_t p = 0;
  auto varint = [&] {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      REQUIRE(p < msg.size());
      REQUIRE(shift < 64);
      auto b = uint8_t(msg[p++]);
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
  };
  while (p < msg.size()) {
    uint64_t key = varint();
    Field f{int(key >> 3), int(key & 7), 0, {}};
    switch (f.wire) {
      case 0:
        f.varint = varint();
        break;
      case 1:
        REQUIRE(p + 8 <= msg.size());
        f.bytes = msg.substr(p, 8);
        p += 8;
        break;
      case 5:
        REQUIRE(p + 4 <= msg.size());
        f.bytes = msg.substr(p, 4);
        p += 4;
        break;
      case 2: {
        uint64_t n = varint();
        REQUIRE(p + n <= msg.size());
        f.bytes = msg.substr(p, n);
        p += n;
        break;
      }
      default:
        FAIL("unexpected wire type " << f.wire);
    }
    fields.push_back(f);
  }
  return fields;
}

ReadEvent decode_event(const std::string& data) {
  ReadEvent e;
  for (const Field& f : parse_message(data)) {
    if (f.number == 1 && f.wire == 1)
      e.wall_time = load_le<double>(f.bytes, 0);
    else if (f.number == 2 && f.wire == 0)
      e.step = int64_t(f.varint);
    else if (f.number == 3 && f.wire == 2)
      e.file_version = f.bytes;
    else if (f.number == 7 && f.wire == 2) {
      for (const Field& s : parse_message(f.bytes))
        if (s.number == 1 && s.wire == 0) e.session_status = int64_t(s.varint);
    } else if (f.number == 5 && f.wire == 2) {
      for (const Field& v : parse_message(f.bytes)) {
        REQUIRE(v.number == 1);
        std::string tag;
        float value = NAN;
        for (const Field& x : parse_message(v.bytes)) {
          if (x.number == 1 && x.wire == 2) tag = x.bytes;
          if (x.number == 2 && x.wire == 5) value = load_le<float>(x.bytes, 0);
        }
        e.values.emplace_back(tag, value);
      }
    } else {
      FAIL("unexpected Event field " << f.number << " wire " << f.wire);
    }
  }
  return e;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// TFRecord: uint64 length, uint32 masked crc32c(length bytes), data, uint32 masked crc32c(data).
std::vector<ReadEvent> read_events(const fs::path& path) {
  std::string file = read_file(path);
  std::vector<ReadEvent> events;
  size_t p = 0;
  while (p < file.size()) {
    auto len = load_le<uint64_t>(file, p);
    CHECK(load_le<uint32_t>(file, p + 8) == ref_masked(file.substr(p, 8)));
    REQUIRE(p + 12 + len + 4 <= file.size());
    std::string data = file.substr(p + 12, len);
    CHECK(load_le<uint32_t>(file, p + 12 + len) == ref_masked(data));
    events.push_back(decode_event(data));
    p += 12 + len + 4;
  }
  return events;
}

std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::ifstream in(path);
  REQUIRE(in);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("polder_test_metrics_" + std::to_string(getpid())) / name;
  fs::remove_all(dir);
  return dir;
}

std::vector<fs::path> event_files(const fs::path& run_dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(run_dir / "tb")) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

StepMetrics sample_step(int64_t step) {
  StepMetrics m;
  m.step = step;
  m.total_steps = 3000;
  m.loss = 10.5 - 0.37 * double(step);
  m.lr = 3e-4 * double(step) / 10;
  m.grad_norm = 1.25 + 0.1 * double(step);
  m.tokens_per_s = 12345.5 + double(step);
  m.mfu = step % 2 ? 0.4125 : -1;  // unknown on even steps
  m.step_time_s = 0.534;
  m.eta_s = 1536;
  m.tokens_seen = 4096 * step;
  return m;
}

}  // namespace

TEST_CASE("crc32c matches the Castagnoli test vector", "[metrics]") {
  CHECK(ref_crc32c("123456789") == 0xE3069283u);
  CHECK(polder::train::crc32c("123456789", 9) == 0xE3069283u);
  std::string bytes;
  for (int i = 0; i < 1000; ++i) bytes.push_back(char((i * 131 + 7) & 0xFF));
  CHECK(polder::train::crc32c(bytes.data(), bytes.size()) == ref_crc32c(bytes));
}

TEST_CASE("format_step_line is one fixed-width line", "[metrics]") {
  StepMetrics m;
  m.step = 120;
  m.total_steps = 3000;
  m.loss = 4.12341;
  m.lr = 2.94e-4;
  m.grad_norm = 0.8123;
  m.tokens_per_s = 12345;
  m.mfu = 0.412;
  m.step_time_s = 0.5341;
  m.eta_s = 1536;
  CHECK(polder::train::format_step_line(m) ==
        "step    120/3000 | loss 4.1234 | lr 2.94e-04 | gnorm 0.812 |  12.3k tok/s | MFU 41.2% | 0.534 "
        "s/step | "
        "ETA 25m36s");

  StepMetrics n = m;
  n.step = 7;
  n.mfu = -1;
  n.tokens_per_s = 2.5e6;
  n.eta_s = 3723.4;
  std::string line = polder::train::format_step_line(n);
  CHECK(line ==
        "step      7/3000 | loss 4.1234 | lr 2.94e-04 | gnorm 0.812 |  2.50M tok/s | MFU     - | 0.534 "
        "s/step | "
        "ETA 1h02m03s");
  CHECK(line.find("| ETA") ==
        polder::train::format_step_line(m).find("| ETA"));  // columns line up; ETA is last

  CHECK(polder::train::format_duration(7.4) == "7s");
  CHECK(polder::train::format_duration(60) == "1m00s");
  CHECK(polder::train::format_duration(50 * 3600) == "50h00m00s");
  CHECK(polder::train::format_duration(-1) == "-");
  CHECK(polder::train::format_duration(NAN) == "-");

  StepMetrics big = m;
  big.step = 1234567;
  big.total_steps = 10000000;
  big.loss = NAN;
  CHECK(polder::train::format_step_line(big).rfind("step  1234567/10000000 | loss nan |", 0) == 0);
}

TEST_CASE("MetricsWriter writes JSONL lines holding the values", "[metrics]") {
  fs::path dir = fresh_dir("jsonl");
  {
    MetricsWriter w(dir.string(), true, false);
    CHECK(w.tensorboard_path().empty());
    for (int64_t s = 1; s <= 3; ++s) w.log_step(sample_step(s));
    w.log_scalar("valid/loss", 3.75, 3);
  }
  CHECK(!fs::exists(dir / "tb"));
  auto lines = read_jsonl(dir / "metrics.jsonl");
  REQUIRE(lines.size() == 4);
  for (int64_t s = 1; s <= 3; ++s) {
    const auto& j = lines[size_t(s - 1)];
    StepMetrics m = sample_step(s);
    CHECK(j["kind"] == "train");
    CHECK(j["step"] == s);
    CHECK(j["total_steps"] == 3000);
    CHECK(j["loss"].get<double>() == m.loss);  // exact: JSON doubles round-trip
    CHECK(j["lr"].get<double>() == m.lr);
    CHECK(j["grad_norm"].get<double>() == m.grad_norm);
    CHECK(j["tokens_per_s"].get<double>() == m.tokens_per_s);
    CHECK(j["step_time_s"].get<double>() == m.step_time_s);
    CHECK(j["eta_s"].get<double>() == m.eta_s);
    CHECK(j["tokens_seen"] == m.tokens_seen);
    CHECK(j["time"].get<double>() > 1.6e9);
    if (m.mfu >= 0)
      CHECK(j["mfu"].get<double>() == m.mfu);
    else
      CHECK(j["mfu"].is_null());
  }
  CHECK(lines[3]["kind"] == "scalar");
  CHECK(lines[3]["tag"] == "valid/loss");
  CHECK(lines[3]["value"].get<double>() == 3.75);
  CHECK(lines[3]["step"] == 3);

  // A resumed process appends; a diverged loss becomes null (JSON has no NaN).
  {
    MetricsWriter w(dir.string(), true, false);
    w.log_resume(3);
    StepMetrics m = sample_step(3);
    m.loss = NAN;
    w.log_step(m);
  }
  lines = read_jsonl(dir / "metrics.jsonl");
  REQUIRE(lines.size() == 6);
  CHECK(lines[4]["kind"] == "resume");
  CHECK(lines[4]["step"] == 3);
  CHECK(lines[5]["loss"].is_null());
  CHECK(lines[5]["step"] == 3);
  fs::remove_all(dir);
}

TEST_CASE("MetricsWriter writes TensorBoard events an independent reader decodes", "[metrics]") {
  fs::path dir = fresh_dir("tb");
  const char* tags[] = {"train/loss",         "train/lr",  "train/grad_norm",
                        "train/tokens_per_s", "train/mfu", "train/step_time"};
  {
    MetricsWriter w(dir.string(), false, true);
    CHECK(w.jsonl_path().empty());
    for (int64_t s = 1; s <= 4; ++s) w.log_step(sample_step(s));
    w.log_scalar("valid/loss", 3.75, 4);
    // The data is on disk before the writer closes: a live TensorBoard sees it.
    auto live = read_events(w.tensorboard_path());
    CHECK(live.size() == 6);
  }
  CHECK(!fs::exists(dir / "metrics.jsonl"));
  auto files = event_files(dir);
  REQUIRE(files.size() == 1);
  CHECK(files[0].filename().string().rfind("events.out.tfevents.", 0) == 0);

  auto events = read_events(files[0]);
  REQUIRE(events.size() == 6);
  CHECK(events[0].file_version == "brain.Event:2");
  CHECK(events[0].wall_time > 1.6e9);
  CHECK(events[0].values.empty());
  for (int64_t s = 1; s <= 4; ++s) {
    const ReadEvent& e = events[size_t(s)];
    StepMetrics m = sample_step(s);
    CHECK(e.step == s);
    CHECK(e.wall_time >= events[0].wall_time);
    CHECK(e.file_version.empty());
    std::vector<std::pair<std::string, float>> want = {{tags[0], float(m.loss)},
                                                       {tags[1], float(m.lr)},
                                                       {tags[2], float(m.grad_norm)},
                                                       {tags[3], float(m.tokens_per_s)}};
    if (m.mfu >= 0) want.emplace_back(tags[4], float(m.mfu));
    want.emplace_back(tags[5], float(m.step_time_s));
    CHECK(e.values == want);
  }
  CHECK(events[5].step == 4);
  REQUIRE(events[5].values.size() == 1);
  CHECK(events[5].values[0].first == "valid/loss");
  CHECK(events[5].values[0].second == 3.75f);

  // A resumed process starts a second file (same second, so a ".1" suffix) with its own version event, and
  // marks the resume with SessionLog START at the next step; a negative step survives the varint round trip.
  {
    MetricsWriter w(dir.string(), false, true);
    w.log_resume(3);
    w.log_scalar("debug/neg", -2.5, -5);
  }
  files = event_files(dir);
  REQUIRE(files.size() == 2);
  auto second = read_events(files[1]);
  REQUIRE(second.size() == 3);
  CHECK(second[0].file_version == "brain.Event:2");
  CHECK(second[1].session_status == 1);
  CHECK(second[1].step == 3);
  CHECK(second[2].step == -5);
  CHECK(second[2].values == std::vector<std::pair<std::string, float>>{{"debug/neg", -2.5f}});
  fs::remove_all(dir);
}

TEST_CASE("MetricsWriter reports unusable paths in one line naming them", "[metrics]") {
  fs::path dir = fresh_dir("errors");
  fs::create_directories(dir);
  { std::ofstream(dir / "not_a_dir") << "x"; }
  std::string bad = (dir / "not_a_dir" / "run").string();
  try {
    MetricsWriter w(bad, true, true);
    FAIL("no error for a run dir under a file");
  } catch (const polder::Error& e) {
    CHECK_THAT(e.message(), Catch::Contains("cannot create directory") && Catch::Contains(bad));
    CHECK(e.message().find('\n') == std::string::npos);
  }

  // A disk that fills up: metrics.jsonl is a link to /dev/full, so the flush fails with ENOSPC.
  if (fs::exists("/dev/full")) {
    fs::path run = dir / "full";
    fs::create_directories(run);
    fs::create_symlink("/dev/full", run / "metrics.jsonl");
    MetricsWriter w(run.string(), true, false);
    try {
      w.log_step(sample_step(1));
      FAIL("no error writing to a full disk");
    } catch (const polder::Error& e) {
      CHECK_THAT(e.message(),
                 Catch::Contains("cannot write") && Catch::Contains((run / "metrics.jsonl").string()));
    }
  }

  MetricsWriter off((dir / "off").string(), false, false);  // both off: creates nothing, logs nothing
  off.log_step(sample_step(1));
  CHECK(!fs::exists(dir / "off"));
  fs::remove_all(dir);
}

// Hidden (not run by default or CI): writes a sample run for scripts/reference/check_tensorboard.py, which
// reads it with the real tensorboard package. Two processes' worth: steps 1..5 and valid/loss, then a resume
// at step 4 that logs steps 4..6 again with other values (the stale 4 and 5 must disappear from TensorBoard's
// view).
TEST_CASE("write a sample run for check_tensorboard.py", "[.tb_sample]") {
  const char* out = std::getenv("POLDER_METRICS_SAMPLE_DIR");
  REQUIRE(out != nullptr);
  fs::remove_all(out);
  {
    MetricsWriter w(out, true, true);
    for (int64_t s = 1; s <= 5; ++s) w.log_step(sample_step(s));
    w.log_scalar("valid/loss", 3.75, 5);
  }
  {
    MetricsWriter w(out, true, true);
    w.log_resume(4);
    for (int64_t s = 4; s <= 6; ++s) {
      StepMetrics m = sample_step(s);
      m.loss += 0.5;
      m.mfu = 0.3 + 0.01 * double(s);
      w.log_step(m);
    }
    w.log_scalar("valid/loss", 3.5, 6);
  }
}

TEST_CASE("the bf16 peak of a GPU missing from the name table follows NVIDIA's data sheets",
          "[metrics][mfu]") {
  // Data sheets (dense bf16, no sparsity): H100 SXM 989 TFLOP/s with 132 SMs at 1.83 GHz boost; A100 312 with
  // 108 SMs at 1.41 GHz. The estimate must land within 1% of both (it was 2x too low before issue 21's fix).
  CHECK(polder::cuda::estimated_bf16_peak_tflops(9, 0, 132, 1.83) == Approx(989.0).epsilon(0.01));
  CHECK(polder::cuda::estimated_bf16_peak_tflops(8, 0, 108, 1.41) == Approx(312.0).epsilon(0.01));
  CHECK(polder::cuda::estimated_bf16_peak_tflops(7, 5, 40, 1.59) ==
        0.0);  // Turing: unknown, MFU not reported
}
