// polder tokenizer: placeholder until the data issue fills it in.
#include <CLI/CLI.hpp>

#include "cli/commands.h"

namespace polder::cli {
void register_tokenizer(CLI::App& app) { app.add_subcommand("tokenizer", "(not yet available)"); }
}  // namespace polder::cli
