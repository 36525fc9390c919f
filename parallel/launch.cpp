// Launcher detection from environment variables (see launch.h for the precedence and why).
#include "parallel/launch.h"

#include <cerrno>
#include <climits>
#include <cstdlib>

#include "core/error.h"

namespace polder::parallel {
namespace {

int parse_int(const char* name, const char* value) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(value, &end, 10);
  POLDER_CHECK(end != value && *end == '\0' && errno == 0 && v >= INT_MIN && v <= INT_MAX,
               "launcher environment: {}='{}' is not an integer", name, value);
  return static_cast<int>(v);
}

// The integer value of `name`, or `fallback` when unset.
int env_int(const EnvLookup& env, const char* name, int fallback) {
  const char* v = env(name);
  return v ? parse_int(name, v) : fallback;
}

void validate(const LaunchInfo& info) {
  POLDER_CHECK(info.world_size >= 1, "{} launch: world size {} must be at least 1", info.launcher,
               info.world_size);
  POLDER_CHECK(info.rank >= 0 && info.rank < info.world_size,
               "{} launch: rank {} is outside a world of size {}", info.launcher, info.rank, info.world_size);
  POLDER_CHECK(info.local_size >= 1 && info.local_size <= info.world_size,
               "{} launch: local size {} must be in [1, world size {}]", info.launcher, info.local_size,
               info.world_size);
  POLDER_CHECK(info.local_rank >= 0 && info.local_rank < info.local_size,
               "{} launch: local rank {} is outside a local size of {}", info.launcher, info.local_rank,
               info.local_size);
}

LaunchInfo from_open_mpi(const EnvLookup& env) {
  LaunchInfo info;
  info.launcher = "mpirun";
  info.rank = parse_int("OMPI_COMM_WORLD_RANK", env("OMPI_COMM_WORLD_RANK"));
  info.world_size = env_int(env, "OMPI_COMM_WORLD_SIZE", 0);
  POLDER_CHECK(info.world_size > 0,
               "mpirun launch: OMPI_COMM_WORLD_RANK is set but OMPI_COMM_WORLD_SIZE is not");
  info.local_rank = env_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0);
  info.local_size = env_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  return info;
}

LaunchInfo from_slurm(const EnvLookup& env) {
  LaunchInfo info;
  info.launcher = "srun";
  info.rank = parse_int("SLURM_PROCID", env("SLURM_PROCID"));
  // Inside a step SLURM_STEP_NUM_TASKS is the step's size; SLURM_NTASKS is the allocation's (usually equal).
  const char* step_tasks = env("SLURM_STEP_NUM_TASKS");
  info.world_size =
      step_tasks ? parse_int("SLURM_STEP_NUM_TASKS", step_tasks) : env_int(env, "SLURM_NTASKS", 0);
  POLDER_CHECK(info.world_size > 0,
               "srun launch: SLURM_PROCID is set but neither SLURM_STEP_NUM_TASKS nor "
               "SLURM_NTASKS is");
  info.local_rank = env_int(env, "SLURM_LOCALID", 0);
  const int node_id = env_int(env, "SLURM_NODEID", 0);
  if (const char* v = env("SLURM_STEP_TASKS_PER_NODE")) {
    info.local_size = slurm_tasks_on_node(v, node_id);
  } else if (const char* w = env("SLURM_TASKS_PER_NODE")) {
    info.local_size = slurm_tasks_on_node(w, node_id);
  } else if (const char* n = env("SLURM_NTASKS_PER_NODE")) {
    info.local_size = parse_int("SLURM_NTASKS_PER_NODE", n);
  } else {
    const int nodes = env_int(env, "SLURM_STEP_NUM_NODES", env_int(env, "SLURM_NNODES", 1));
    info.local_size = nodes > 0 ? (info.world_size + nodes - 1) / nodes : 1;  // even spread, rounded up
  }
  return info;
}

LaunchInfo from_pmi(const EnvLookup& env) {
  LaunchInfo info;
  info.launcher = "mpiexec";
  info.rank = parse_int("PMI_RANK", env("PMI_RANK"));
  info.world_size = env_int(env, "PMI_SIZE", 0);
  POLDER_CHECK(info.world_size > 0, "mpiexec launch: PMI_RANK is set but PMI_SIZE is not");
  info.local_rank = env_int(env, "MPI_LOCALRANKID", 0);
  info.local_size = env_int(env, "MPI_LOCALNRANKS", 1);
  return info;
}

}  // namespace

int slurm_tasks_on_node(const std::string& spec, int node_id) {
  // Entries separated by ',': "N" or "N(xK)" (K nodes with N tasks each).
  int node = 0;
  size_t pos = 0;
  while (pos < spec.size()) {
    size_t comma = spec.find(',', pos);
    std::string entry = spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    int repeat = 1;
    size_t paren = entry.find("(x");
    if (paren != std::string::npos) {
      POLDER_CHECK(entry.back() == ')', "Slurm tasks per node '{}': entry '{}' is malformed", spec, entry);
      repeat =
          parse_int("SLURM_TASKS_PER_NODE repeat", entry.substr(paren + 2, entry.size() - paren - 3).c_str());
      entry = entry.substr(0, paren);
    }
    const int tasks = parse_int("SLURM_TASKS_PER_NODE", entry.c_str());
    if (node_id < node + repeat) return tasks;
    node += repeat;
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  POLDER_FAIL("Slurm tasks per node '{}' lists {} nodes but this is node {}", spec, node, node_id);
}

LaunchInfo detect_launch(const EnvLookup& env) {
  LaunchInfo info;
  if (env("OMPI_COMM_WORLD_RANK")) {
    info = from_open_mpi(env);
  } else if (env("SLURM_PROCID") && (env("SLURM_STEP_ID") || env("SLURM_STEPID"))) {
    info = from_slurm(env);
  } else if (env("PMI_RANK")) {
    info = from_pmi(env);
  } else {
    return info;
  }
  validate(info);
  return info;
}

LaunchInfo detect_launch() {
  return detect_launch([](const char* name) -> const char* { return std::getenv(name); });
}

}  // namespace polder::parallel
