// safetensors files (the Hugging Face weight format): an 8-byte little-endian header length, a JSON header
// mapping names to {dtype, shape, data_offsets} (plus optional "__metadata__" strings), then raw bytes.
// Reading maps the file and copies one tensor at a time, so converting a large model needs little memory.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace polder::safetensors {

struct TensorInfo {
  DType dtype = DType::f32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

// A read-only, memory-mapped safetensors file. Every structural problem (truncated file, bad header JSON,
// unknown dtype, offsets outside the file or overlapping, size not matching the shape) is one polder::Error
// naming the file and the tensor.
class File {
 public:
  static File open(const std::string& path);
  File(File&&) noexcept;
  File& operator=(File&&) noexcept;
  ~File();

  const std::string& path() const;
  std::vector<std::string> names() const;  // in file order (by offset)
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const;
  Tensor load(const std::string& name) const;       // a CPU tensor with the file's dtype
  const void* data(const std::string& name) const;  // the mapped bytes

 private:
  struct Impl;
  explicit File(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes tensors (any device; copied to host one at a time) in the given order. Written to path + ".tmp",
// fsynced and renamed, so a crash never leaves a half-written file under `path`.
void save(const std::string& path, const NamedTensors& tensors,
          const std::map<std::string, std::string>& metadata = {});

// "F32", "BF16", "F16", "F64", "I32", "I64", "U8"
const char* dtype_tag(DType dtype);
DType dtype_from_tag(const std::string& tag);

}  // namespace polder::safetensors
