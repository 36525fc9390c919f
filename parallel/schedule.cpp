// The schedules of parallel/schedule.h. Each is a warmup count and two orders (which chunk of which
// micro-batch the k-th forward and the k-th backward run); the peers and tags of an event follow from its
// virtual stage.
#include "parallel/schedule.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace polder::parallel {
namespace {

void check_spec(const ScheduleSpec& s, std::string_view name) {
  POLDER_CHECK(
      s.pp >= 1 && s.pp_rank >= 0 && s.pp_rank < s.pp && s.virtual_stages >= 1 && s.micro_batches >= 1,
      "schedule {}: pp {}, pp rank {}, {} virtual stages and {} micro-batches are not a layout", name, s.pp,
      s.pp_rank, s.virtual_stages, s.micro_batches);
}

// The event of `chunk` on micro-batch `micro`; tag(receiving virtual stage, micro-batch, direction 0 forward
// or 1 backward) names each message. Activations flow to the next virtual stage, which lives on the next rank
// (wrapping from the last rank to the first between chunks), gradients back.
template <class Tag>
ScheduleEvent event_of(const ScheduleSpec& s, ScheduleEvent::Kind kind, int64_t chunk, int64_t micro,
                       Tag tag) {
  const int64_t vs = chunk * s.pp + s.pp_rank, last = s.pp * s.virtual_stages - 1;
  const int prev = static_cast<int>((s.pp_rank + s.pp - 1) % s.pp),
            next = static_cast<int>((s.pp_rank + 1) % s.pp);
  ScheduleEvent e;
  e.kind = kind;
  e.micro_batch = micro;
  e.chunk = chunk;
  e.virtual_stage = vs;
  e.first = vs == 0;
  e.last = vs == last;
  if (e.forward()) {
    if (!e.first) e.recv_from = prev, e.recv_tag = tag(vs, micro, 0);
    if (!e.last) e.send_to = next, e.send_tag = tag(vs + 1, micro, 0);
  } else {
    if (!e.last) e.recv_from = next, e.recv_tag = tag(vs, micro, 1);
    if (!e.first) e.send_to = prev, e.send_tag = tag(vs - 1, micro, 1);
  }
  return e;
}

// `warmup` forwards, then one forward and one backward alternately, then the remaining backwards. With
// `recv_ahead` the steady state's forwards post the next backward's receive with their own.
template <class Fwd, class Bwd>
Schedule one_then_one(int64_t total, int64_t warmup, Fwd fwd, Bwd bwd, bool recv_ahead = false) {
  Schedule out;
  out.reserve(static_cast<size_t>(2 * total));
  for (int64_t k = 0; k < warmup; ++k) out.push_back(fwd(k));
  for (int64_t j = 0; j < total - warmup; ++j) {
    out.push_back(fwd(warmup + j));
    out.back().recv_ahead = recv_ahead;
    out.push_back(bwd(j));
  }
  for (int64_t j = total - warmup; j < total; ++j) out.push_back(bwd(j));
  return out;
}

// One chunk per rank: the k-th forward and backward run micro-batch k; the last backward completes every
// gradient, so it arms data-parallel sync.
Schedule single_chunk(const ScheduleSpec& s, int64_t warmup) {
  const int64_t M = s.micro_batches;
  auto tag = [](int64_t, int64_t micro, int dir) { return static_cast<int>(2 * micro + dir); };
  auto fwd = [&](int64_t k) { return event_of(s, ScheduleEvent::Kind::forward, 0, k, tag); };
  auto bwd = [&](int64_t k) {
    ScheduleEvent e = event_of(s, ScheduleEvent::Kind::backward, 0, k, tag);
    e.arm_dp_sync = k == M - 1;
    return e;
  };
  return one_then_one(M, warmup, fwd, bwd);
}

}  // namespace

Schedule no_pipeline_schedule(const ScheduleSpec& s) {
  check_spec(s, "none");
  POLDER_CHECK(s.pp == 1 && s.virtual_stages == 1,
               "schedule none: needs pp = 1 and one virtual stage, got pp {} "
               "and {} virtual stages",
               s.pp, s.virtual_stages);
  return single_chunk(s, 0);
}

Schedule one_f_one_b_schedule(const ScheduleSpec& s) {
  check_spec(s, "1f1b");
  POLDER_CHECK(s.virtual_stages == 1,
               "schedule 1f1b: one virtual stage per rank, got {} (interleaved_1f1b "
               "runs several)",
               s.virtual_stages);
  return single_chunk(s, std::min(s.pp - s.pp_rank - 1, s.micro_batches));
}

Schedule interleaved_schedule(const ScheduleSpec& s) {
  check_spec(s, "interleaved_1f1b");
  const int64_t M = s.micro_batches, P = s.pp, V = s.virtual_stages, total = M * V;
  POLDER_CHECK(M % P == 0, "schedule interleaved_1f1b: {} micro-batches are not divisible by pp {}", M, P);
  auto tag = [M](int64_t vstage, int64_t micro, int dir) {
    return static_cast<int>((vstage * M + micro) * 2 + dir);
  };
  auto micro_of = [&](int64_t k) { return (k / (P * V)) * P + k % P; };
  auto fwd = [&](int64_t k) {
    return event_of(s, ScheduleEvent::Kind::forward, (k / P) % V, micro_of(k), tag);
  };
  // No single backward completes every chunk's gradients: data-parallel sync reduces after the schedule.
  auto bwd = [&](int64_t k) {
    return event_of(s, ScheduleEvent::Kind::backward, V - 1 - (k / P) % V, micro_of(k), tag);
  };
  const int64_t warmup = M == P ? total : std::min(total, (P - s.pp_rank - 1) * 2 + (V - 1) * P);
  return one_then_one(total, warmup, fwd, bwd, true);
}

Schedule gpipe_schedule(const ScheduleSpec& s) {
  check_spec(s, "gpipe");
  POLDER_CHECK(s.virtual_stages == 1, "schedule gpipe: one virtual stage per rank, got {}", s.virtual_stages);
  return single_chunk(s, s.micro_batches);  // warmup = every forward: no alternation
}

const std::vector<ScheduleEntry>& schedules() {
  static const std::vector<ScheduleEntry> all = {
      {"none", no_pipeline_schedule},
      {"1f1b", one_f_one_b_schedule},
      {"interleaved_1f1b", interleaved_schedule},
      {"gpipe", gpipe_schedule},
  };
  return all;
}

std::string_view default_schedule(const ScheduleSpec& s) {
  if (s.pp == 1 && s.virtual_stages == 1) return "none";
  return s.virtual_stages == 1 ? "1f1b" : "interleaved_1f1b";
}

Schedule make_schedule(std::string_view name, const ScheduleSpec& s) {
  if (name == "auto") name = default_schedule(s);
  std::string known = "auto";
  for (const ScheduleEntry& e : schedules()) {
    if (e.name == name) return e.build(s);
    known += ", " + std::string(e.name);
  }
  POLDER_FAIL("unknown pipeline schedule '{}' (known: {})", name, known);
}

Schedule make_schedule(const ScheduleSpec& s) {
  return make_schedule(default_schedule(s), s);
}

std::vector<std::vector<P2PMessage>> p2p_groups(const Schedule& events) {
  std::vector<std::vector<P2PMessage>> groups(events.size() + 1);
  std::vector<P2PMessage> pending;
  auto paired = [&](size_t i) {
    return events[i].recv_ahead && i + 1 < events.size() && !events[i + 1].forward();
  };
  auto recv = [&](size_t i, std::vector<P2PMessage>& g) {
    if (events[i].recv_from >= 0) g.push_back({false, events[i].recv_from, events[i].recv_tag, i});
  };
  for (size_t i = 0; i < events.size(); ++i) {
    const ScheduleEvent& e = events[i];
    const bool pair = paired(i);
    const bool second = i > 0 && paired(i - 1);
    if (!second) {
      groups[i] = std::move(pending);
      pending.clear();
      recv(i, groups[i]);
      if (pair) recv(i + 1, groups[i]);
    }
    if (e.send_to >= 0) pending.push_back({true, e.send_to, e.send_tag, i});
  }
  groups[events.size()] = std::move(pending);
  return groups;
}

Schedule forward_events(const Schedule& events) {
  Schedule out;
  for (const ScheduleEvent& e : events)
    if (e.forward()) out.push_back(e);
  return out;
}

}  // namespace polder::parallel
