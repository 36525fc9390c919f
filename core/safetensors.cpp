// safetensors reader (mmap) and writer (tmp + fsync + rename).
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace polder::safetensors {

const char* dtype_tag(DType d) {
  switch (d) {
    case DType::f32:
      return "F32";
    case DType::bf16:
      return "BF16";
    case DType::f16:
      return "F16";
    case DType::f64:
      return "F64";
    case DType::i32:
      return "I32";
    case DType::i64:
      return "I64";
    case DType::u8:
      return "U8";
  }
  return "?";
}

DType dtype_from_tag(const std::string& tag) {
  for (DType d : {DType::f32, DType::bf16, DType::f16, DType::f64, DType::i32, DType::i64, DType::u8})
    if (tag == dtype_tag(d)) return d;
  POLDER_FAIL("safetensors dtype '{}' is not supported (expected F32, BF16, F16, F64, I32, I64 or U8)", tag);
}

struct File::Impl {
  std::string path;
  void* map = nullptr;
  size_t size = 0;
  const char* data = nullptr;  // start of the data section
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  ~Impl() {
    if (map) munmap(map, size);
  }
};

File::File(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

File File::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  int fd = ::open(path.c_str(), O_RDONLY);
  POLDER_CHECK(fd >= 0, "cannot open safetensors file '{}': {}", path, std::strerror(errno));
  struct stat st;
  fstat(fd, &st);
  impl->size = static_cast<size_t>(st.st_size);
  if (impl->size > 0) impl->map = mmap(nullptr, impl->size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  POLDER_CHECK(impl->size >= 8, "safetensors file '{}' is {} bytes, too short for its 8-byte header length",
               path, impl->size);
  POLDER_CHECK(impl->map != MAP_FAILED, "cannot map safetensors file '{}': {}", path, std::strerror(errno));
  uint64_t header_len = 0;
  std::memcpy(&header_len, impl->map, 8);
  POLDER_CHECK(header_len <= impl->size - 8,
               "safetensors file '{}' is truncated: header of {} bytes but the file has {}", path, header_len,
               impl->size);
  const char* base = static_cast<const char*>(impl->map);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(base + 8, base + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    POLDER_FAIL("safetensors file '{}' has an invalid JSON header: {}", path, e.what());
  }
  POLDER_CHECK(header.is_object(), "safetensors file '{}': header is not a JSON object", path);
  impl->data = base + 8 + header_len;
  const uint64_t data_size = impl->size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      for (auto& [k, v] : entry.items()) impl->metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
      continue;
    }
    try {
      TensorInfo info;
      info.dtype = dtype_from_tag(entry.at("dtype").get<std::string>());
      info.shape = entry.at("shape").get<Shape>();
      auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      POLDER_CHECK(offsets.size() == 2, "data_offsets has {} values, expected 2", offsets.size());
      info.begin = offsets[0];
      info.end = offsets[1];
      POLDER_CHECK(info.begin <= info.end && info.end <= data_size,
                   "bytes [{}, {}) lie outside the {}-byte data section (truncated file?)", info.begin,
                   info.end, data_size);
      const uint64_t want = static_cast<uint64_t>(shape_numel(info.shape)) * dtype_size(info.dtype);
      POLDER_CHECK(info.end - info.begin == want, "{} bytes stored but shape {} of {} needs {}",
                   info.end - info.begin, info.shape, dtype_name(info.dtype), want);
      ranges.emplace_back(info.begin, info.end);
      impl->tensors[name] = info;
    } catch (const Error& e) {
      POLDER_FAIL("safetensors file '{}', tensor '{}': {}", path, name, e.message());
    } catch (const nlohmann::json::exception& e) {
      POLDER_FAIL("safetensors file '{}', tensor '{}': malformed entry: {}", path, name, e.what());
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    POLDER_CHECK(ranges[i].first >= ranges[i - 1].second, "safetensors file '{}': tensors overlap at byte {}",
                 path, ranges[i].first);
  return File(std::move(impl));
}

const std::string& File::path() const {
  return impl_->path;
}

std::vector<std::string> File::names() const {
  std::vector<std::string> n;
  for (auto& [name, info] : impl_->tensors) n.push_back(name);
  std::sort(n.begin(), n.end(), [&](const std::string& a, const std::string& b) {
    return impl_->tensors.at(a).begin < impl_->tensors.at(b).begin;
  });
  return n;
}

bool File::contains(const std::string& name) const {
  return impl_->tensors.count(name) > 0;
}

const TensorInfo& File::info(const std::string& name) const {
  auto it = impl_->tensors.find(name);
  POLDER_CHECK(it != impl_->tensors.end(), "safetensors file '{}' has no tensor '{}'", impl_->path, name);
  return it->second;
}

const std::map<std::string, std::string>& File::metadata() const {
  return impl_->metadata;
}

const void* File::data(const std::string& name) const {
  return impl_->data + info(name).begin;
}

Tensor File::load(const std::string& name) const {
  const TensorInfo& i = info(name);
  Tensor t = Tensor::empty(i.shape, i.dtype);
  std::memcpy(t.raw_data(), impl_->data + i.begin, i.end - i.begin);
  // Drop the mapped pages just read, so streaming a model tensor by tensor keeps the resident memory near the
  // largest tensor instead of growing to the file size (they are re-read from the page cache if touched
  // again).
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(impl_->data + i.begin) + page - 1) / page * page;
  const uintptr_t hi = reinterpret_cast<uintptr_t>(impl_->data + i.end) / page * page;
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
  return t;
}

namespace {
void write_all(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    POLDER_CHECK(w > 0, "writing '{}' failed: {}", path, std::strerror(errno));
    c += w;
    n -= static_cast<size_t>(w);
  }
}
}  // namespace

void save(const std::string& path, const NamedTensors& tensors,
          const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    POLDER_CHECK(!header.contains(name), "safetensors save '{}': tensor name '{}' appears twice", path, name);
    header[name] = {{"dtype", dtype_tag(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // align the data section to 8 bytes, as HF's writer does
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  POLDER_CHECK(fd >= 0, "cannot create '{}': {}", tmp, std::strerror(errno));
  try {
    uint64_t len = text.size();
    write_all(fd, &len, 8, tmp);
    write_all(fd, text.data(), text.size(), tmp);
    for (const auto& [name, t] : tensors) {
      Tensor h = t.to(Device::cpu());
      write_all(fd, h.raw_data(), h.nbytes(), tmp);
    }
    POLDER_CHECK(::fsync(fd) == 0, "fsync of '{}' failed: {}", tmp, std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  POLDER_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '{}' to '{}': {}", tmp, path,
               std::strerror(errno));
}

}  // namespace polder::safetensors
