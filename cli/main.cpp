// polder: the command line. Each subcommand lives in its own cmd_*.cpp and registers itself here; cli/ only
// parses and calls into the layers below. User errors (polder::Error) print as one line, exit code 2.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

#ifndef POLDER_VERSION
#define POLDER_VERSION "0.1.0"
#endif

int main(int argc, char** argv) {
  CLI::App app{"polder: pre-training of Llama-style language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("polder ") + POLDER_VERSION);
  polder::cli::register_train(app);
  polder::cli::register_tokenizer(app);
  polder::cli::register_data(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const polder::Error& e) {
    std::fprintf(stderr, "polder: error: %s\n", e.message().c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "polder: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
