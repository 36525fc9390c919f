// SHA-256 (FIPS 180-4), used for checkpoint and data-manifest checksums. Streaming: update() any number of
// times, then hex().
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace polder {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  std::string hex();  // finalises; the object must not be updated afterwards

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

// Hex digest of a whole file (read in 1 MiB chunks); polder::Error naming the file if it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace polder
