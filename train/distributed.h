// The ranks' agreement before any other collective: on a failure (the lowest failing rank's message) and on
// the config (the same validation verdict and the same resolved config on every rank).
#pragma once

#include <string>

#include "parallel/comm.h"
#include "train/config.h"

namespace polder::train {

// The lowest failing rank's message, known to every rank of `world` afterwards (empty: no rank failed). One
// all-reduce; two broadcasts only on failure. Every rank calls it, failed or not, so it cannot hang.
std::string agree_on_failure(parallel::Comm& world, const std::string& mine);

// `text` of rank `root`, on every rank of `comm` (two broadcasts: the length, then the bytes).
std::string broadcast_string(parallel::Comm& comm, const std::string& text, int root);

// The first collective of a run. Each rank has validated its config against the world size (`error`: the
// message, empty when valid) and passes its resolved YAML. Throws the same ConfigError on every rank when
// some rank's config is invalid (the lowest such rank's message) or the ranks' configs differ, so that every
// rank exits alike and cli/main.cpp prints the one line on rank 0.
void agree_on_config(parallel::Comm& world, const std::string& error, const std::string& config_yaml);

}  // namespace polder::train
