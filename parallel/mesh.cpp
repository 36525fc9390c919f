// Mesh construction: validate the layout against the world, place this rank, split one communicator per axis;
// the device twin of a mesh.
#include "parallel/mesh.h"

#include "parallel/comm_nccl.h"

namespace polder::parallel {

Mesh::Mesh(std::shared_ptr<Comm> world, int tp, int pp, int dp, int cp)
    : world_(std::move(world)), tp_(tp), pp_(pp), dp_(dp), cp_(cp) {
  POLDER_CHECK(world_ != nullptr, "Mesh: the world communicator is null");
  const int n = world_->size();
  POLDER_CHECK(tp >= 1 && pp >= 1 && cp >= 1 && dp >= 0,
               "parallel layout tp={} pp={} cp={} dp={}: tp, pp and cp must be at least 1 and dp "
               "at least 0 (0: derive from the world size {})",
               tp, pp, cp, dp, n);
  if (dp_ == 0) {
    POLDER_CHECK(n % (tp * pp * cp) == 0,
                 "parallel layout tp={} pp={} cp={} dp=0 (derive): the world size {} is not a multiple of "
                 "tp * pp * cp = {}",
                 tp, pp, cp, n, tp * pp * cp);
    dp_ = n / (tp * pp * cp);
  }
  POLDER_CHECK(static_cast<int64_t>(tp) * pp * dp_ * cp == n,
               "parallel layout tp={} pp={} cp={} dp={}: tp * pp * cp * dp = {} but the "
               "world size is {}",
               tp, pp, cp, dp_, static_cast<int64_t>(tp) * pp * dp_ * cp, n);
  const int r = world_->rank();
  tp_rank_ = r % tp_;
  cp_rank_ = (r / tp_) % cp_;
  dp_rank_ = (r / (tp_ * cp_)) % dp_;
  pp_rank_ = r / (tp_ * cp_ * dp_);
  // Every rank calls every split, in the same order (splits are collective over the world).
  tp_comm_ = world_->split((pp_rank_ * dp_ + dp_rank_) * cp_ + cp_rank_, tp_rank_, "tp");
  dp_comm_ = world_->split((pp_rank_ * cp_ + cp_rank_) * tp_ + tp_rank_, dp_rank_, "dp");
  pp_comm_ = world_->split((dp_rank_ * cp_ + cp_rank_) * tp_ + tp_rank_, pp_rank_, "pp");
  if (cp_ > 1) {
    cp_comm_ = world_->split((pp_rank_ * dp_ + dp_rank_) * tp_ + tp_rank_, cp_rank_, "cp");
    replica_comm_ = world_->split(pp_rank_ * tp_ + tp_rank_, replica_rank(), "replicas");
  } else {
    cp_comm_ = std::make_shared<SingleComm>("cp");
    replica_comm_ = dp_comm_;  // without cp the replicas are the dp group
  }
}

Mesh Mesh::on_device(Device device) const {
  if (device.is_cpu()) return *this;
  return Mesh(make_nccl_comm(world_, device.index, world_->name()), tp_, pp_, dp_, cp_);
}

CommStats Mesh::stats() const {
  CommStats s = world_->stats();
  s += tp_comm_->stats();
  s += dp_comm_->stats();
  s += pp_comm_->stats();
  if (cp_ > 1) {
    s += cp_comm_->stats();
    s += replica_comm_->stats();
  }
  for (const auto& g : extra_) s += g->stats();
  return s;
}

void Mesh::add_group(std::shared_ptr<Comm> group) {
  if (group) extra_.push_back(std::move(group));
}

void Mesh::reset_stats() {
  for (Comm* c : {world_.get(), tp_comm_.get(), dp_comm_.get(), pp_comm_.get(), cp_comm_.get()})
    c->reset_stats();
  if (cp_ > 1) replica_comm_->reset_stats();
  for (const auto& g : extra_) g->reset_stats();
}

std::string Mesh::describe() const {
  if (cp_ > 1)
    return format("tp={} pp={} cp={} dp={}: rank {} = (pp {}, dp {}, cp {}, tp {})", tp_, pp_, cp_, dp_,
                  rank(), pp_rank_, dp_rank_, cp_rank_, tp_rank_);
  return format("tp={} pp={} dp={}: rank {} = (pp {}, dp {}, tp {})", tp_, pp_, dp_, rank(), pp_rank_,
                dp_rank_, tp_rank_);
}

}  // namespace polder::parallel
