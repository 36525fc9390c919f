// polder: the command line. Each subcommand lives in its own cmd_*.cpp and registers itself here; cli/ only
// parses and calls into the layers below. User errors (polder::Error) print as one line, exit code 2; a
// configuration error, which every rank of a job raises alike, prints once (rank 0).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"
#include "kernels/cpu/isa.h"
#include "parallel/comm.h"
#include "parallel/launch.h"
#include "train/config.h"

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
  polder::cli::register_convert(app);
  polder::cli::register_plan(app);
  // Under a launcher with several ranks, a failing rank ends the whole job at once (the others may be
  // waiting for it in a collective); alone, it returns exit code 2.
  const polder::parallel::LaunchInfo launch = polder::parallel::detect_launch();
  auto fail = [&](const char* message) {
    if (launch.world_size > 1) {
      std::fprintf(stderr, "polder: error (rank %d): %s\n", launch.rank, message);
      std::fflush(stderr);
      polder::parallel::abort_job(2);
    }
    std::fprintf(stderr, "polder: error: %s\n", message);
    return 2;
  };
  try {
    polder::kernels::cpu::cpu_isa();  // a bad POLDER_CPU_ISA: one line (rank 0) before any work, on every
                                      // rank
  } catch (const std::exception& e) {
    if (launch.rank == 0) std::fprintf(stderr, "polder: error: %s\n", e.what());
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const polder::ConfigError& e) {
    // Every rank holds the same verdict (train::agree_on_config) and nothing else is in flight: rank 0 says
    // it, every rank leaves with code 2 through a normal MPI_Finalize.
    if (launch.rank == 0) std::fprintf(stderr, "polder: error: %s\n", e.message().c_str());
    polder::parallel::finalize();
    return 2;
  } catch (const polder::Error& e) {
    return fail(e.message().c_str());
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  polder::parallel::finalize();
  return 0;
}
