// Step line, JSONL and native TensorBoard writer. The Event protobufs are hand-encoded from the field numbers
// of tensorflow/core/util/event.proto and framework/summary.proto (cited next to the encoder); a TFRecord is
// uint64 length, masked crc32c(length), data, masked crc32c(data), all little-endian.
#include "train/metrics.h"

#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace polder::train {

static_assert(std::endian::native == std::endian::little,
              "metrics: TFRecord/protobuf encoding assumes little-endian");

namespace {

double unix_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string printf_string(const char* fmt, auto... args) {
  char buf[128];
  int n = std::snprintf(buf, sizeof buf, fmt, args...);
  return std::string(buf, n < 0 ? 0 : std::min<size_t>(size_t(n), sizeof buf - 1));
}

// 950, 12.3k, 4.56M: tokens per second at a glance.
std::string human_rate(double v) {
  if (!std::isfinite(v) || v < 0) return "-";
  if (v < 1e3) return printf_string("%.0f", v);
  if (v < 1e6) return printf_string("%.1fk", v / 1e3);
  if (v < 1e9) return printf_string("%.2fM", v / 1e6);
  return printf_string("%.2fG", v / 1e9);
}

int digits(int64_t v) {
  int d = 1;
  while (v >= 10) v /= 10, ++d;
  return d;
}

// The table of the reflected Castagnoli polynomial, built at compile time.
constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

uint32_t masked_crc32c(const void* data, size_t size) {
  uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

// Protobuf wire format: key = (field << 3) | wire type; 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(v | 0x80));
    v >>= 7;
  }
  out.push_back(char(v));
}
void put_key(std::string& out, int field, int wire) {
  put_varint(out, uint64_t(field) << 3 | uint64_t(wire));
}
template <typename T>
void put_raw(std::string& out, T v) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out.append(bytes, sizeof(T));
}
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}

// event.proto:   Event { double wall_time = 1; int64 step = 2;
//                        oneof what { string file_version = 3; Summary summary = 5;
//                                     SessionLog session_log = 7; } }
//                SessionLog { SessionStatus status = 1; }
//                SessionStatus { STATUS_UNSPECIFIED = 0; START = 1; STOP = 2; CHECKPOINT = 3; }
// summary.proto: Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; }
std::string event_header(double wall_time, int64_t step) {
  std::string e;
  put_key(e, 1, 1);
  put_raw(e, wall_time);
  put_key(e, 2, 0);
  put_varint(e,
             uint64_t(step));  // negative int64 is a 10-byte varint of its two's complement, as protobuf does
  return e;
}

std::string summary_value(const std::string& tag, double value) {
  std::string v;
  put_bytes(v, 1, tag);
  put_key(v, 2, 5);
  put_raw(v, float(value));
  return v;
}

struct Scalar {
  const char* tag;
  double value;
};

std::string scalars_event(double wall_time, int64_t step, std::initializer_list<Scalar> scalars) {
  std::string summary;
  for (const Scalar& s : scalars) put_bytes(summary, 1, summary_value(s.tag, s.value));
  std::string e = event_header(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

std::string tfrecord(const std::string& data) {
  std::string r;
  uint64_t len = data.size();
  put_raw(r, len);
  put_raw(r, masked_crc32c(&len, sizeof len));
  r += data;
  put_raw(r, masked_crc32c(data.data(), data.size()));
  return r;
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

// ordered_json keeps "kind" and "step" first on each line, for people reading the file.
using Json = nlohmann::ordered_json;
Json finite_or_null(double v) {
  return std::isfinite(v) ? Json(v) : Json(nullptr);
}

void create_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  POLDER_CHECK(!ec && std::filesystem::is_directory(dir), "metrics: cannot create directory '{}': {}",
               dir.string(), ec ? ec.message() : std::string("a file of that name exists"));
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) crc = kCrc32cTable[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  auto s = int64_t(std::llround(seconds));
  int64_t h = s / 3600, m = s / 60 % 60, sec = s % 60;
  if (h > 0) return printf_string("%lldh%02lldm%02llds", (long long)h, (long long)m, (long long)sec);
  if (m > 0) return printf_string("%lldm%02llds", (long long)m, (long long)sec);
  return printf_string("%llds", (long long)sec);
}

std::string format_step_line(const StepMetrics& m) {
  std::string line;
  if (m.total_steps > 0) {
    int width = std::max(6, digits(m.total_steps));
    line = printf_string("step %*lld/%lld", width, (long long)m.step, (long long)m.total_steps);
  } else {
    line = printf_string("step %6lld", (long long)m.step);
  }
  line += printf_string(" | loss %.4f | lr %.2e | gnorm %.3f", m.loss, m.lr, m.grad_norm);
  line += printf_string(" | %6s tok/s", human_rate(m.tokens_per_s).c_str());
  line += m.mfu >= 0 ? printf_string(" | MFU %4.1f%%", m.mfu * 100) : std::string(" | MFU     -");
  line += printf_string(" | %.3f s/step | ETA %s", m.step_time_s, format_duration(m.eta_s).c_str());
  if (m.peak_memory_gib >= 0) line += printf_string(" | mem %.1f GiB", m.peak_memory_gib);
  if (m.energy_kwh >= 0) line += printf_string(" | %.1f Wh/step", m.energy_kwh * 1e3);
  return line;
}

MetricsWriter::MetricsWriter(const std::string& run_dir, bool jsonl, bool tensorboard) {
  namespace fs = std::filesystem;
  if (!jsonl && !tensorboard) return;
  create_dir(run_dir);
  if (jsonl) {
    jsonl_path_ = (fs::path(run_dir) / "metrics.jsonl").string();
    jsonl_.reset(std::fopen(jsonl_path_.c_str(), "ab"));
    POLDER_CHECK(jsonl_, "metrics: cannot open '{}' for appending: {}", jsonl_path_, std::strerror(errno));
  }
  if (tensorboard) {
    fs::path tb_dir = fs::path(run_dir) / "tb";
    create_dir(tb_dir);
    // A new file per process; "x" makes the open fail rather than clobber a file another process just made.
    std::string base =
        (tb_dir / ("events.out.tfevents." + std::to_string(int64_t(std::time(nullptr))) + "." + host_name()))
            .string();
    for (int n = 0; !tb_ && n < 1000; ++n) {
      tb_path_ = n == 0 ? base : base + "." + std::to_string(n);
      tb_.reset(std::fopen(tb_path_.c_str(), "wbx"));
      POLDER_CHECK(tb_ || errno == EEXIST, "metrics: cannot create '{}': {}", tb_path_, std::strerror(errno));
    }
    POLDER_CHECK(tb_, "metrics: cannot create an events file '{}[.n]': 1000 names taken", base);
    std::string e = event_header(unix_time(), 0);
    put_bytes(e, 3, "brain.Event:2");
    write_event(e);
  }
  flush();
}

MetricsWriter::~MetricsWriter() {
  // No throwing from a destructor: a failed last flush was already reported by the call that wrote the data.
  if (jsonl_) std::fflush(jsonl_.get());
  if (tb_) std::fflush(tb_.get());
}

void MetricsWriter::write_jsonl(const std::string& line) {
  if (!jsonl_) return;
  std::string l = line + "\n";
  POLDER_CHECK(std::fwrite(l.data(), 1, l.size(), jsonl_.get()) == l.size(), "metrics: cannot write '{}': {}",
               jsonl_path_, std::strerror(errno));
}

void MetricsWriter::write_event(const std::string& event_bytes) {
  if (!tb_) return;
  std::string r = tfrecord(event_bytes);
  POLDER_CHECK(std::fwrite(r.data(), 1, r.size(), tb_.get()) == r.size(), "metrics: cannot write '{}': {}",
               tb_path_, std::strerror(errno));
}

void MetricsWriter::flush() {
  if (jsonl_)
    POLDER_CHECK(std::fflush(jsonl_.get()) == 0, "metrics: cannot write '{}': {}", jsonl_path_,
                 std::strerror(errno));
  if (tb_)
    POLDER_CHECK(std::fflush(tb_.get()) == 0, "metrics: cannot write '{}': {}", tb_path_,
                 std::strerror(errno));
}

void MetricsWriter::log_step(const StepMetrics& m) {
  double now = unix_time();
  if (jsonl_) {
    Json j = {{"kind", "train"},
              {"step", m.step},
              {"total_steps", m.total_steps},
              {"loss", finite_or_null(m.loss)},
              {"lr", finite_or_null(m.lr)},
              {"grad_norm", finite_or_null(m.grad_norm)},
              {"tokens_per_s", finite_or_null(m.tokens_per_s)},
              {"mfu", m.mfu >= 0 ? finite_or_null(m.mfu) : Json(nullptr)},
              {"step_time_s", finite_or_null(m.step_time_s)},
              {"eta_s", m.eta_s >= 0 ? finite_or_null(m.eta_s) : Json(nullptr)},
              {"tokens_seen", m.tokens_seen},
              {"time", now}};
    if (m.peak_memory_gib >= 0) j["peak_memory_gib"] = finite_or_null(m.peak_memory_gib);
    if (m.energy_kwh >= 0) j["energy_kwh"] = finite_or_null(m.energy_kwh);
    if (m.energy_total_kwh >= 0) j["energy_total_kwh"] = finite_or_null(m.energy_total_kwh);
    write_jsonl(j.dump());
  }
  if (tb_) {
    // NaN and inf pass through as floats: TensorBoard shows a diverged loss as such.
    if (m.mfu >= 0) {
      write_event(scalars_event(now, m.step,
                                {{"train/loss", m.loss},
                                 {"train/lr", m.lr},
                                 {"train/grad_norm", m.grad_norm},
                                 {"train/tokens_per_s", m.tokens_per_s},
                                 {"train/mfu", m.mfu},
                                 {"train/step_time", m.step_time_s}}));
    } else {
      write_event(scalars_event(now, m.step,
                                {{"train/loss", m.loss},
                                 {"train/lr", m.lr},
                                 {"train/grad_norm", m.grad_norm},
                                 {"train/tokens_per_s", m.tokens_per_s},
                                 {"train/step_time", m.step_time_s}}));
    }
    if (m.peak_memory_gib >= 0)
      write_event(scalars_event(now, m.step, {{"gpu/peak_memory_gib", m.peak_memory_gib}}));
    if (m.energy_kwh >= 0)
      write_event(scalars_event(
          now, m.step, {{"gpu/energy_kwh", m.energy_kwh}, {"gpu/energy_total_kwh", m.energy_total_kwh}}));
  }
  flush();
}

void MetricsWriter::log_scalar(const std::string& tag, double value, int64_t step) {
  double now = unix_time();
  if (jsonl_) {
    Json j = {
        {"kind", "scalar"}, {"step", step}, {"tag", tag}, {"value", finite_or_null(value)}, {"time", now}};
    write_jsonl(j.dump());
  }
  if (tb_) {
    std::string summary;
    put_bytes(summary, 1, summary_value(tag, value));
    std::string e = event_header(now, step);
    put_bytes(e, 5, summary);
    write_event(e);
  }
  flush();
}

void MetricsWriter::log_resume(int64_t next_step) {
  double now = unix_time();
  if (jsonl_) write_jsonl(Json({{"kind", "resume"}, {"step", next_step}, {"time", now}}).dump());
  if (tb_) {
    std::string session_log;
    put_key(session_log, 1, 0);
    put_varint(session_log, 1);  // START
    std::string e = event_header(now, next_step);
    put_bytes(e, 7, session_log);
    write_event(e);
  }
  flush();
}

}  // namespace polder::train
