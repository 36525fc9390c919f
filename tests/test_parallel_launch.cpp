// Launcher detection from fake environments (Open MPI, Slurm, MPICH's PMI, none, malformed values), Slurm's
// compressed tasks-per-node lists, and world_comm() in a plain process: a SingleComm, MPI never initialised.
#include <cstdlib>
#include <map>

#include "parallel/comm.h"
#include "parallel/launch.h"
#include "tests/testing.h"

using namespace polder;
using namespace polder::parallel;
using polder::testing::require_error;

namespace {

const char* const kLauncherVars[] = {"OMPI_COMM_WORLD_RANK",
                                     "OMPI_COMM_WORLD_SIZE",
                                     "OMPI_COMM_WORLD_LOCAL_RANK",
                                     "OMPI_COMM_WORLD_LOCAL_SIZE",
                                     "SLURM_PROCID",
                                     "SLURM_NTASKS",
                                     "SLURM_STEP_NUM_TASKS",
                                     "SLURM_LOCALID",
                                     "SLURM_NODEID",
                                     "SLURM_STEP_ID",
                                     "SLURM_STEPID",
                                     "SLURM_STEP_TASKS_PER_NODE",
                                     "SLURM_TASKS_PER_NODE",
                                     "SLURM_NTASKS_PER_NODE",
                                     "SLURM_NNODES",
                                     "SLURM_STEP_NUM_NODES",
                                     "PMI_RANK",
                                     "PMI_SIZE",
                                     "MPI_LOCALRANKID",
                                     "MPI_LOCALNRANKS"};

// Replaces every launcher variable of the process environment by `vars` for its lifetime, then restores them.
class FakeEnv {
 public:
  explicit FakeEnv(const std::map<std::string, std::string>& vars) {
    for (const char* name : kLauncherVars) {
      if (const char* v = std::getenv(name)) saved_[name] = v;
      unsetenv(name);
    }
    for (const auto& [k, v] : vars) setenv(k.c_str(), v.c_str(), 1);
  }
  ~FakeEnv() {
    for (const char* name : kLauncherVars) unsetenv(name);
    for (const auto& [k, v] : saved_) setenv(k.c_str(), v.c_str(), 1);
  }

 private:
  std::map<std::string, std::string> saved_;
};

void check_info(const LaunchInfo& i, const char* launcher, int rank, int size, int local_rank,
                int local_size) {
  CHECK(i.launcher == launcher);
  CHECK(i.rank == rank);
  CHECK(i.world_size == size);
  CHECK(i.local_rank == local_rank);
  CHECK(i.local_size == local_size);
}

}  // namespace

TEST_CASE("no launcher: rank 0 of 1", "[launch]") {
  FakeEnv env({});
  LaunchInfo i = detect_launch();
  check_info(i, "none", 0, 1, 0, 1);
  CHECK(!i.launched());
}

TEST_CASE("Open MPI's mpirun", "[launch]") {
  FakeEnv env({{"OMPI_COMM_WORLD_RANK", "5"},
               {"OMPI_COMM_WORLD_SIZE", "8"},
               {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
               {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  check_info(detect_launch(), "mpirun", 5, 8, 1, 4);
}

TEST_CASE("mpirun inside a Slurm allocation is mpirun", "[launch]") {
  FakeEnv env({{"OMPI_COMM_WORLD_RANK", "3"},
               {"OMPI_COMM_WORLD_SIZE", "4"},
               {"OMPI_COMM_WORLD_LOCAL_RANK", "3"},
               {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
               {"SLURM_PROCID", "0"},
               {"SLURM_NTASKS", "16"},
               {"SLURM_STEP_ID", "0"}});
  check_info(detect_launch(), "mpirun", 3, 4, 3, 4);
}

TEST_CASE("Slurm's srun: sizes from the step, local size from the compressed per-node list", "[launch]") {
  SECTION("uniform nodes") {
    FakeEnv env({{"SLURM_PROCID", "9"},
                 {"SLURM_NTASKS", "16"},
                 {"SLURM_STEP_NUM_TASKS", "16"},
                 {"SLURM_LOCALID", "1"},
                 {"SLURM_NODEID", "2"},
                 {"SLURM_STEP_ID", "0"},
                 {"SLURM_STEP_TASKS_PER_NODE", "4(x4)"}});
    check_info(detect_launch(), "srun", 9, 16, 1, 4);
  }
  SECTION("uneven nodes") {
    FakeEnv env({{"SLURM_PROCID", "6"},
                 {"SLURM_NTASKS", "7"},
                 {"SLURM_LOCALID", "0"},
                 {"SLURM_NODEID", "3"},
                 {"SLURM_STEPID", "1"},
                 {"SLURM_TASKS_PER_NODE", "2(x3),1"}});
    check_info(detect_launch(), "srun", 6, 7, 0, 1);
  }
  SECTION("only SLURM_NTASKS_PER_NODE") {
    FakeEnv env({{"SLURM_PROCID", "2"},
                 {"SLURM_NTASKS", "4"},
                 {"SLURM_LOCALID", "0"},
                 {"SLURM_STEP_ID", "3"},
                 {"SLURM_NTASKS_PER_NODE", "2"}});
    check_info(detect_launch(), "srun", 2, 4, 0, 2);
  }
  SECTION("no per-node count: spread over the nodes") {
    FakeEnv env({{"SLURM_PROCID", "2"},
                 {"SLURM_NTASKS", "8"},
                 {"SLURM_LOCALID", "2"},
                 {"SLURM_STEP_ID", "3"},
                 {"SLURM_NNODES", "2"}});
    check_info(detect_launch(), "srun", 2, 8, 2, 4);
  }
  SECTION("an sbatch script outside any step is one process") {
    FakeEnv env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "0"}});
    check_info(detect_launch(), "none", 0, 1, 0, 1);
  }
}

TEST_CASE("MPICH/Intel MPI mpiexec (PMI)", "[launch]") {
  FakeEnv env({{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}, {"MPI_LOCALRANKID", "1"}, {"MPI_LOCALNRANKS", "2"}});
  check_info(detect_launch(), "mpiexec", 1, 2, 1, 2);
}

TEST_CASE("malformed launcher variables are errors naming the variable and value", "[launch]") {
  {
    FakeEnv env({{"OMPI_COMM_WORLD_RANK", "two"}, {"OMPI_COMM_WORLD_SIZE", "4"}});
    require_error([] { detect_launch(); }, "OMPI_COMM_WORLD_RANK='two' is not an integer");
  }
  {
    FakeEnv env({{"OMPI_COMM_WORLD_RANK", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}});
    require_error([] { detect_launch(); }, "mpirun launch: rank 4 is outside a world of size 4");
  }
  {
    FakeEnv env(std::map<std::string, std::string>{{"OMPI_COMM_WORLD_RANK", "0"}});
    require_error([] { detect_launch(); }, "OMPI_COMM_WORLD_SIZE is not");
  }
  {
    FakeEnv env({{"SLURM_PROCID", "1"},
                 {"SLURM_NTASKS", "2"},
                 {"SLURM_STEP_ID", "0"},
                 {"SLURM_LOCALID", "3"},
                 {"SLURM_TASKS_PER_NODE", "2"}});
    require_error([] { detect_launch(); }, "srun launch: local rank 3 is outside a local size of 2");
  }
}

TEST_CASE("Slurm tasks-per-node lists", "[launch]") {
  CHECK(slurm_tasks_on_node("8", 0) == 8);
  CHECK(slurm_tasks_on_node("4(x2),2", 1) == 4);
  CHECK(slurm_tasks_on_node("4(x2),2", 2) == 2);
  CHECK(slurm_tasks_on_node("1,3(x2),5", 3) == 5);
  require_error([] { slurm_tasks_on_node("4(x2)", 2); }, "lists 2 nodes but this is node 2");
  require_error([] { slurm_tasks_on_node("4(x2", 0); }, "is malformed");
}

TEST_CASE("a plain process gets a SingleComm and no MPI", "[launch]") {
  // Under ctest no launcher variables are set; a run under mpirun would be a different test.
  if (detect_launch().launched()) return;
  auto w = world_comm();
  CHECK(w->backend() == "single");
  CHECK(w->size() == 1);
  CHECK(w.get() == world_comm().get());
  finalize();  // a no-op without MPI
}
