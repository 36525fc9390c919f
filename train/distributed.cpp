// The ranks' agreement on a failure and on the config before any other collective (train/distributed.h).
#include "train/distributed.h"

#include <cstring>

#include "core/sha256.h"

namespace polder::train {

std::string agree_on_failure(parallel::Comm& world, const std::string& mine) {
  if (world.size() == 1) return mine;
  const int64_t n = world.size();
  Tensor who = Tensor::from_vector<int64_t>({mine.empty() ? 0 : n - world.rank()}, {1});
  world.all_reduce(who, parallel::ReduceOp::max);
  const int64_t w = who.data<int64_t>()[0];
  if (w == 0) return "";
  return broadcast_string(world, mine, static_cast<int>(n - w));
}

std::string broadcast_string(parallel::Comm& comm, const std::string& text, int root) {
  Tensor len = Tensor::from_vector<int64_t>({static_cast<int64_t>(text.size())}, {1});
  comm.broadcast(len, root);
  Tensor bytes = Tensor::empty({std::max<int64_t>(1, len.data<int64_t>()[0])}, DType::u8);
  if (comm.rank() == root) std::memcpy(bytes.raw_data(), text.data(), text.size());
  comm.broadcast(bytes, root);
  return std::string(static_cast<const char*>(bytes.raw_data()), static_cast<size_t>(len.data<int64_t>()[0]));
}

void agree_on_config(parallel::Comm& world, const std::string& error, const std::string& config_yaml) {
  const std::string failure = agree_on_failure(world, error);
  if (!failure.empty()) throw ConfigError(failure, __FILE__, __LINE__);
  if (world.size() == 1) return;
  // Different configs on different ranks would make shapes disagree and hang a send/recv: compare a hash.
  Sha256 h;
  h.update(config_yaml);
  const std::string d = h.hex();
  const int64_t mine = static_cast<int64_t>(std::stoull(d.substr(0, 15), nullptr, 16));
  Tensor v = Tensor::from_vector<int64_t>({mine, -mine}, {2});
  world.all_reduce(v, parallel::ReduceOp::max);
  if (v.data<int64_t>()[0] != -v.data<int64_t>()[1])
    throw ConfigError(
        "the ranks were started with different configurations (their config hashes differ); every rank must "
        "get the same config and --set overrides",
        __FILE__, __LINE__);
}

}  // namespace polder::train
