// Rank, world size and node-local rank as the launcher put them in the environment: Open MPI's mpirun
// (OMPI_COMM_WORLD_*), Slurm's srun (SLURM_PROCID...), MPICH/Intel MPI's mpiexec (PMI_RANK, PMI_SIZE), or
// none (a plain process: rank 0 of 1). Reading the environment never initialises MPI; world_comm() (comm.h)
// does, and only when a launcher was found, so a single-GPU machine without MPI runs the same binary.
#pragma once

#include <functional>
#include <string>

namespace polder::parallel {

struct LaunchInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // rank among the processes on this node (picks the GPU)
  int local_size = 1;
  std::string launcher = "none";  // "mpirun", "srun", "mpiexec" or "none"
  bool launched() const { return launcher != "none"; }
};

// Looks a variable up; nullptr when unset. The default reads the process environment (getenv).
using EnvLookup = std::function<const char*(const char*)>;

// Precedence: Open MPI, then Slurm, then PMI (MPICH hydra), else none. Open MPI first because mpirun inside a
// Slurm allocation inherits the allocation's SLURM_* variables. Slurm counts only inside a job step (srun
// sets SLURM_STEP_ID; an sbatch script run directly is one process even though SLURM_NTASKS says otherwise).
// polder::Error naming the variable and its value when a value is not an integer or out of range.
LaunchInfo detect_launch(const EnvLookup& env);
LaunchInfo detect_launch();  // from the process environment

// Slurm's compressed per-node task counts ("2(x3),1" = 2,2,2,1): the count on node `node_id`.
int slurm_tasks_on_node(const std::string& tasks_per_node, int node_id);

}  // namespace polder::parallel
