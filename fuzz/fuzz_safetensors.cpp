// libFuzzer target: the safetensors reader (header length, JSON header, dtypes, shapes, offsets). Any input
// either opens or throws one polder::Error; an opened file then loads every tensor, which must stay inside
// the mapping (AddressSanitizer checks every byte).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An in-memory file, opened by path like any other.
  const int fd = memfd_create("polder_fuzz", 0);
  if (fd < 0) return 0;
  for (size_t done = 0; done < size;) {
    const ssize_t w = ::write(fd, data + done, size - done);
    if (w <= 0) break;
    done += static_cast<size_t>(w);
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    polder::safetensors::File f = polder::safetensors::File::open(path);
    for (const std::string& name : f.names()) {
      f.info(name);
      f.load(name);
    }
    f.metadata();
  } catch (const polder::Error&) {
  }
  ::close(fd);
  return 0;
}
