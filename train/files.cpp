// File helpers (see files.h).
#include "train/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace polder::train {
namespace fs = std::filesystem;

void fsync_path(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void write_text_file_atomic(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    POLDER_CHECK(out.good(), "cannot write '{}'", tmp.string());
    out << text;
    out.flush();
    POLDER_CHECK(out.good(), "writing '{}' failed (disk full?)", tmp.string());
  }
  fsync_path(tmp);
  fs::rename(tmp, path);
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  POLDER_CHECK(in.good(), "cannot read '{}'", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace polder::train
