// Small file helpers shared by checkpoints and conversion: whole-file text reads and atomic text writes
// (write <path>.tmp, fsync, rename), each failure one polder::Error naming the path and the system error.
#pragma once

#include <filesystem>
#include <string>

namespace polder::train {

std::string read_text_file(const std::filesystem::path& path);
void write_text_file_atomic(const std::filesystem::path& path, const std::string& text);
void fsync_path(const std::filesystem::path& path);  // best effort (files and directories)

}  // namespace polder::train
