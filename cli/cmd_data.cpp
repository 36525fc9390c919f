// polder data: placeholder until the data issue fills it in.
#include <CLI/CLI.hpp>

#include "cli/commands.h"

namespace polder::cli {
void register_data(CLI::App& app) { app.add_subcommand("data", "(not yet available)"); }
}  // namespace polder::cli
