// A fresh temporary directory per test case, removed at the end (for the data-layer tests, which link only
// polder_data and so do not use tests/testing.h).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

namespace polder::testing {

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("polder_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string prefix(const std::string& name) const { return (path / name).string(); }
};

}  // namespace polder::testing
