// The Catch2 main of the multi-rank tests (test_mpi_*.cpp, run under mpirun): initialises MPI through
// world_comm() before any test and finalises it after the last. Every rank runs every test; the exit code is
// non-zero on every rank when any rank failed. `--die=kill|abort|throw|exit` instead runs the dead-rank drill
// for tests/mpi_dead_rank.sh: the last rank dies mid-way through a stream of all-reduces that the others keep
// waiting on, and the job must end with an error rather than hang; `--all-exit-5` returns 5 from every rank
// without finalize(), which must finalise at exit and keep the code.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <unistd.h>
#include <csignal>
#include <cstdio>
#include <string>

#include "parallel/comm.h"

using namespace polder;
using namespace polder::parallel;

static int die_drill(const std::string& how) {
  auto world = world_comm();
  POLDER_CHECK(world->size() >= 2, "--die needs at least 2 ranks, got {}", world->size());
  const bool victim = world->rank() == world->size() - 1;
  Tensor t = Tensor::full({1 << 12}, 1.0);
  for (int i = 0;; ++i) {
    if (victim && i == 20) {
      std::fprintf(stderr, "rank %d dies now (%s)\n", world->rank(), how.c_str());
      if (how == "kill") raise(SIGKILL);
      if (how == "abort") std::abort();
      if (how == "throw") throw Error("deliberate failure on one rank", __FILE__, __LINE__);
      if (how == "exit")
        std::exit(3);  // a clean exit without finalize(), the others waiting in the collective
      POLDER_FAIL("--die={}: expected kill, abort, throw or exit", how);
    }
    world->all_reduce(t, ReduceOp::max);
    if (i == 0 && world->rank() == 0) std::fprintf(stderr, "drill: %d ranks all-reducing\n", world->size());
  }
}

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]).rfind("--die=", 0) == 0)
    return die_drill(std::string(argv[1]).substr(6));
  if (argc == 2 && std::string(argv[1]) == "--all-exit-5") {  // every rank returns 5 without finalize()
    world_comm()->barrier();
    return 5;
  }
  auto world = world_comm();
  Catch::Session session;
  int failed = session.run(argc, argv) != 0 ? 1 : 0;
  Tensor f = Tensor::from_vector<int32_t>({failed}, {1});
  world->all_reduce(f, ReduceOp::max);
  const int any_failed = f.data<int32_t>()[0];
  if (world->rank() == 0 && world->size() > 1)
    std::printf("%s on %d ranks\n", any_failed ? "FAILED on at least one rank" : "passed", world->size());
  finalize();
  return any_failed;
}
