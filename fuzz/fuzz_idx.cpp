// libFuzzer target: the Megatron .idx reader. Input: 4 bytes (little-endian) giving the .bin size (mod 64
// KiB), then the .idx bytes; the .bin is filled with a fixed byte pattern. Any input either opens or throws
// one polder::Error; an opened dataset then reads its first documents, which must stay inside the mapping.
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/indexed_dataset.h"

namespace {
std::string prefix() {
  // tmpfs when there is one: two small files are rewritten for every input.
  static const std::string p = std::string(::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") +
                               "/polder_fuzz_idx_" + std::to_string(::getpid());
  return p;
}
void write(const std::string& path, const char* bytes, size_t n) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes, static_cast<std::streamsize>(n));
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  uint32_t bin_size = 0;
  std::memcpy(&bin_size, data, 4);
  bin_size %= 1u << 16;
  std::vector<char> bin(bin_size);
  for (size_t i = 0; i < bin.size(); ++i) bin[i] = static_cast<char>(i * 31 % 251);
  write(prefix() + ".bin", bin.data(), bin.size());
  write(prefix() + ".idx", reinterpret_cast<const char*>(data) + 4, size - 4);
  try {
    polder::data::IndexedDataset ds(prefix());
    for (int64_t d = 0; d < std::min<int64_t>(ds.num_documents(), 8); ++d) ds.document(d);
    for (int64_t s = 0; s < std::min<int64_t>(ds.num_sequences(), 8); ++s) ds.sequence(s);
    ds.check_vocab(1 << 20);
  } catch (const polder::Error&) {
  }
  return 0;
}
