// Pipeline schedules (parallel/schedule.h) against oracles that do not share their formulas: a simulation of
// every rank of a layout (asynchronous sends, blocking receives) that must run to the end with each message
// received by the event that expects it; one forward and one backward per (chunk, micro-batch), backward
// after forward; per chunk, micro-batches in increasing order (Megatron's queues); warmup counts as Megatron
// defines them; and hand-written lists for small layouts.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>

#include "core/error.h"
#include "parallel/schedule.h"

using polder::parallel::make_schedule;
using polder::parallel::Schedule;
using polder::parallel::ScheduleEvent;
using polder::parallel::ScheduleSpec;

namespace {

struct Layout {
  int64_t pp, v, M;
};

std::vector<Schedule> all_ranks(const Layout& l, std::string_view name = "auto") {
  std::vector<Schedule> out;
  for (int64_t r = 0; r < l.pp; ++r) out.push_back(make_schedule(name, ScheduleSpec{l.pp, r, l.v, l.M}));
  return out;
}

// What a message carries: the producing event's direction, virtual stage and micro-batch.
struct Payload {
  bool forward;
  int64_t vstage, micro;
  auto operator<=>(const Payload&) const = default;
};

// Runs every rank's list: a rank advances while its next event's receive has arrived (sends never block).
// Fails on a deadlock, on a message that does not carry what the receiving event needs, on two messages in
// flight under the same (from, to, tag), and on messages never received.
void simulate(const Layout& l, const std::vector<Schedule>& ranks) {
  const int64_t VS = l.pp * l.v;
  std::map<std::tuple<int64_t, int64_t, int>, Payload> in_flight;  // (from, to, tag)
  std::vector<size_t> next(ranks.size(), 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int64_t r = 0; r < l.pp; ++r) {
      for (; next[r] < ranks[r].size(); ++next[r]) {
        const ScheduleEvent& e = ranks[r][next[r]];
        const int64_t vs = e.virtual_stage;
        if (e.recv_from >= 0) {
          auto it = in_flight.find({e.recv_from, r, e.recv_tag});
          if (it == in_flight.end()) break;  // blocks
          const Payload want =
              e.forward() ? Payload{true, vs - 1, e.micro_batch} : Payload{false, vs + 1, e.micro_batch};
          CHECK(it->second == want);
          in_flight.erase(it);
        } else {
          CHECK((e.forward() ? vs == 0 : vs == VS - 1));  // only the ends of the pipeline receive nothing
        }
        if (e.send_to >= 0) {
          const auto key = std::make_tuple(r, int64_t{e.send_to}, e.send_tag);
          CHECK(in_flight.count(key) == 0);
          in_flight[key] = Payload{e.forward(), vs, e.micro_batch};
        } else {
          CHECK((e.forward() ? vs == VS - 1 : vs == 0));
        }
        progress = true;
      }
    }
  }
  for (int64_t r = 0; r < l.pp; ++r) {
    INFO("rank " << r << " stopped at event " << next[r] << " of " << ranks[r].size());
    CHECK(next[r] == ranks[r].size());
  }
  CHECK(in_flight.empty());
}

// Megatron's number of warmup forwards (schedules.py): non-interleaved min(pp - rank - 1, M); interleaved
// all of them when M = pp, else min((pp - rank - 1) * 2 + (v - 1) * pp, M v).
int64_t megatron_warmup(const Layout& l, int64_t rank) {
  if (l.v == 1) return std::min(l.pp - rank - 1, l.M);
  if (l.M == l.pp) return l.M * l.v;
  return std::min((l.pp - rank - 1) * 2 + (l.v - 1) * l.pp, l.M * l.v);
}

void check_rank(const Layout& l, int64_t rank, const Schedule& events) {
  INFO("pp " << l.pp << " v " << l.v << " M " << l.M << " rank " << rank);
  REQUIRE(events.size() == static_cast<size_t>(2 * l.M * l.v));
  std::set<std::pair<int64_t, int64_t>> forwarded, backwarded;
  std::vector<int64_t> next_fwd(static_cast<size_t>(l.v), 0), next_bwd(static_cast<size_t>(l.v), 0);
  int64_t armed = 0;
  for (const ScheduleEvent& e : events) {
    REQUIRE(e.chunk >= 0);
    REQUIRE(e.chunk < l.v);
    CHECK(e.virtual_stage == e.chunk * l.pp + rank);
    CHECK(e.first == (e.virtual_stage == 0));
    CHECK(e.last == (e.virtual_stage == l.pp * l.v - 1));
    const auto key = std::make_pair(e.chunk, e.micro_batch);
    // Megatron: each chunk takes its micro-batches in order, forward and backward.
    auto& expected = e.forward() ? next_fwd : next_bwd;
    CHECK(e.micro_batch == expected[static_cast<size_t>(e.chunk)]++);
    if (e.forward()) {
      CHECK(forwarded.insert(key).second);
      CHECK_FALSE(e.arm_dp_sync);
    } else {
      CHECK(forwarded.count(key) == 1);
      CHECK(backwarded.insert(key).second);
      armed += e.arm_dp_sync;
    }
  }
  CHECK(forwarded.size() == static_cast<size_t>(l.M * l.v));
  CHECK(backwarded.size() == static_cast<size_t>(l.M * l.v));
  // One chunk: the last backward, which completes every gradient, arms data-parallel sync; interleaved: none.
  CHECK(armed == (l.v == 1 ? 1 : 0));
  if (l.v == 1) CHECK(events.back().arm_dp_sync);
  // Warmup forwards, then forward and backward alternately, then the remaining backwards.
  const int64_t warmup = megatron_warmup(l, rank), total = l.M * l.v;
  for (int64_t i = 0; i < static_cast<int64_t>(events.size()); ++i) {
    const int64_t steady = i - warmup;
    const bool forward = i < warmup || (steady < 2 * (total - warmup) && steady % 2 == 0);
    CHECK(events[static_cast<size_t>(i)].forward() == forward);
  }
}

std::string describe(const Schedule& events) {
  std::ostringstream os;
  for (const ScheduleEvent& e : events) {
    os << (&e == &events.front() ? "" : " ") << (e.forward() ? "F" : "B") << e.chunk << "." << e.micro_batch
       << "(" << e.recv_from << ":" << e.recv_tag << ">" << e.send_to << ":" << e.send_tag
       << (e.arm_dp_sync ? "*" : "") << ")";
  }
  return os.str();
}

}  // namespace

TEST_CASE("schedules: every rank's list runs without deadlock and matches Megatron's order") {
  const std::vector<Layout> layouts = {
      {1, 1, 1}, {1, 1, 5}, {2, 1, 2}, {2, 1, 3}, {2, 1, 8}, {3, 1, 3}, {4, 1, 4},  {4, 1, 7}, {8, 1, 16},
      {2, 2, 2}, {2, 2, 4}, {2, 2, 6}, {2, 3, 4}, {4, 2, 4}, {4, 2, 8}, {4, 3, 12}, {3, 2, 9}, {8, 2, 16},
  };
  for (const Layout& l : layouts) {
    INFO("pp " << l.pp << " v " << l.v << " M " << l.M);
    const std::vector<Schedule> ranks = all_ranks(l);
    for (int64_t r = 0; r < l.pp; ++r) check_rank(l, r, ranks[static_cast<size_t>(r)]);
    simulate(l, ranks);
  }
}

TEST_CASE("schedules: hand-written lists (chunk.micro(recv peer:tag > send peer:tag), * arms DP sync)") {
  // No pipeline: gradient accumulation, forward and backward of each micro-batch in turn.
  CHECK(describe(make_schedule(ScheduleSpec{1, 0, 1, 3})) ==
        "F0.0(-1:-1>-1:-1) B0.0(-1:-1>-1:-1) F0.1(-1:-1>-1:-1) B0.1(-1:-1>-1:-1) F0.2(-1:-1>-1:-1) "
        "B0.2(-1:-1>-1:-1*)");
  // 1F1B, pp 2, M 3: stage 0 runs one warmup forward; tags 2m for activations, 2m + 1 for gradients.
  CHECK(describe(make_schedule(ScheduleSpec{2, 0, 1, 3})) ==
        "F0.0(-1:-1>1:0) F0.1(-1:-1>1:2) B0.0(1:1>-1:-1) F0.2(-1:-1>1:4) B0.1(1:3>-1:-1) B0.2(1:5>-1:-1*)");
  CHECK(describe(make_schedule(ScheduleSpec{2, 1, 1, 3})) ==
        "F0.0(0:0>-1:-1) B0.0(-1:-1>0:1) F0.1(0:2>-1:-1) B0.1(-1:-1>0:3) F0.2(0:4>-1:-1) B0.2(-1:-1>0:5*)");
  // Interleaved, pp 2, v 2, M 2 (M = pp: every forward first). Tag (receiving virtual stage * M + m) * 2 +
  // dir: rank 0's chunk 1 (virtual stage 2) receives gradient tag (2 * 2 + m) * 2 + 1 and sends (1 * 2 + m) *
  // 2 + 1.
  CHECK(describe(make_schedule(ScheduleSpec{2, 0, 2, 2})) ==
        "F0.0(-1:-1>1:4) F0.1(-1:-1>1:6) F1.0(1:8>1:12) F1.1(1:10>1:14) "
        "B1.0(1:9>1:5) B1.1(1:11>1:7) B0.0(1:1>-1:-1) B0.1(1:3>-1:-1)");
  CHECK(describe(make_schedule(ScheduleSpec{2, 1, 2, 2})) ==
        "F0.0(0:4>0:8) F0.1(0:6>0:10) F1.0(0:12>-1:-1) F1.1(0:14>-1:-1) "
        "B1.0(-1:-1>0:9) B1.1(-1:-1>0:11) B0.0(0:5>0:1) B0.1(0:7>0:3)");
  // Interleaved, pp 2, v 2, M 4: warmup (2 - 1 - 0) * 2 + 2 = 4 forwards on rank 0, 2 on rank 1.
  CHECK(describe(make_schedule(ScheduleSpec{2, 0, 2, 4})) ==
        "F0.0(-1:-1>1:8) F0.1(-1:-1>1:10) F1.0(1:16>1:24) F1.1(1:18>1:26) F0.2(-1:-1>1:12) B1.0(1:17>1:9) "
        "F0.3(-1:-1>1:14) B1.1(1:19>1:11) F1.2(1:20>1:28) B0.0(1:1>-1:-1) F1.3(1:22>1:30) B0.1(1:3>-1:-1) "
        "B1.2(1:21>1:13) B1.3(1:23>1:15) B0.2(1:5>-1:-1) B0.3(1:7>-1:-1)");
}

TEST_CASE("schedules: registry, defaults, evaluation and errors") {
  using polder::parallel::default_schedule;
  CHECK(default_schedule(ScheduleSpec{1, 0, 1, 4}) == "none");
  CHECK(default_schedule(ScheduleSpec{4, 2, 1, 4}) == "1f1b");
  CHECK(default_schedule(ScheduleSpec{4, 2, 2, 4}) == "interleaved_1f1b");
  // 1F1B on one stage is plain accumulation.
  CHECK(describe(make_schedule("1f1b", ScheduleSpec{1, 0, 1, 4})) ==
        describe(make_schedule("none", ScheduleSpec{1, 0, 1, 4})));
  // Evaluation: the forward events in their order.
  const Schedule all = make_schedule(ScheduleSpec{4, 1, 2, 8});
  const Schedule fwd = polder::parallel::forward_events(all);
  REQUIRE(fwd.size() == 16);
  for (size_t i = 0, j = 0; i < all.size(); ++i)
    if (all[i].forward()) CHECK(describe({all[i]}) == describe({fwd[j++]}));
  CHECK_THROWS_AS(make_schedule("zero_bubble", ScheduleSpec{2, 0, 1, 4}), polder::Error);
  CHECK_THROWS_AS(make_schedule("none", ScheduleSpec{2, 0, 1, 4}), polder::Error);
  CHECK_THROWS_AS(make_schedule("1f1b", ScheduleSpec{2, 0, 2, 4}), polder::Error);
  CHECK_THROWS_AS(make_schedule(ScheduleSpec{2, 0, 2, 3}), polder::Error);  // interleaved: M % pp
  CHECK_THROWS_AS(make_schedule(ScheduleSpec{2, 2, 1, 4}), polder::Error);  // rank out of range
}

TEST_CASE("schedules: gpipe runs every forward, then every backward, on every rank") {
  for (const Layout& l : std::vector<Layout>{{1, 1, 3}, {2, 1, 3}, {3, 1, 5}, {4, 1, 4}, {4, 1, 9}}) {
    INFO("pp " << l.pp << " M " << l.M);
    const std::vector<Schedule> ranks = all_ranks(l, "gpipe");
    simulate(l, ranks);  // deadlock-free, every message received by the event that needs it
    for (const Schedule& events : ranks) {
      REQUIRE(events.size() == static_cast<size_t>(2 * l.M));
      for (int64_t i = 0; i < 2 * l.M; ++i) {
        const ScheduleEvent& e = events[static_cast<size_t>(i)];
        CHECK(e.forward() == (i < l.M));
        CHECK(e.micro_batch == i % l.M);
        CHECK(e.arm_dp_sync == (i == 2 * l.M - 1));  // the last backward completes every gradient
      }
    }
  }
  // pp 2, M 3: the same tags as 1F1B (2m activations, 2m + 1 gradients), all forwards first.
  CHECK(describe(make_schedule("gpipe", ScheduleSpec{2, 0, 1, 3})) ==
        "F0.0(-1:-1>1:0) F0.1(-1:-1>1:2) F0.2(-1:-1>1:4) B0.0(1:1>-1:-1) B0.1(1:3>-1:-1) B0.2(1:5>-1:-1*)");
  CHECK(describe(make_schedule("gpipe", ScheduleSpec{2, 1, 1, 3})) ==
        "F0.0(0:0>-1:-1) F0.1(0:2>-1:-1) F0.2(0:4>-1:-1) B0.0(-1:-1>0:1) B0.1(-1:-1>0:3) B0.2(-1:-1>0:5*)");
  CHECK_THROWS_AS(make_schedule("gpipe", ScheduleSpec{2, 0, 2, 4}), polder::Error);  // one chunk per rank
  CHECK(describe(make_schedule("auto", ScheduleSpec{2, 0, 1, 3})) ==
        describe(make_schedule("1f1b", ScheduleSpec{2, 0, 1, 3})));
}

namespace {

// Runs every rank's p2p_groups under NCCL's rules, independently of the grouping code: a rank's groups
// complete in order; the k-th send from a to b pairs with the k-th receive at b from a (posting order, no
// tags), and a pair completes only while both of its groups are posted and not complete (rendezvous: a send
// waits for its receive). Fails when the groups stop with work left (a deadlock), when a pair's tags differ
// (posting order would deliver the wrong tensor), or when a message does not carry what its receiving event
// needs.
using polder::parallel::P2PMessage;
using Groups = std::vector<std::vector<P2PMessage>>;

// Returns whether every group completed.
bool run_groups(const Layout& l, const std::vector<Schedule>& ranks, const std::vector<Groups>& groups) {
  const size_t P = ranks.size();
  // Sequence number of each message within (peer, direction) on its rank, in posting order.
  std::vector<std::vector<std::vector<int64_t>>> seq(P);
  for (size_t r = 0; r < P; ++r) {
    std::map<std::pair<int, bool>, int64_t> counter;
    for (const auto& g : groups[r]) {
      seq[r].emplace_back();
      for (const P2PMessage& m : g) seq[r].back().push_back(counter[{m.peer, m.send}]++);
    }
  }
  std::vector<size_t> at(P, 0);  // current group
  std::vector<std::vector<bool>> done(P);
  auto reset = [&](size_t r) {
    done[r].assign(at[r] < groups[r].size() ? groups[r][at[r]].size() : 0, false);
  };
  for (size_t r = 0; r < P; ++r) reset(r);
  int64_t pairs = 0;
  for (bool progress = true; progress;) {
    progress = false;
    for (size_t r = 0; r < P; ++r) {
      if (at[r] >= groups[r].size()) continue;
      const auto& g = groups[r][at[r]];
      for (size_t i = 0; i < g.size(); ++i) {
        if (done[r][i] || !g[i].send) continue;
        const size_t p = static_cast<size_t>(g[i].peer);
        if (at[p] >= groups[p].size()) continue;
        const auto& h = groups[p][at[p]];
        for (size_t j = 0; j < h.size(); ++j) {
          if (done[p][j] || h[j].send || h[j].peer != static_cast<int>(r) ||
              seq[p][at[p]][j] != seq[r][at[r]][i])
            continue;
          INFO("rank " << r << " event " << g[i].event << " -> rank " << p << " event " << h[j].event);
          CHECK(g[i].tag == h[j].tag);
          const ScheduleEvent& se = ranks[r][g[i].event];
          const ScheduleEvent& re = ranks[p][h[j].event];
          CHECK(se.forward() == re.forward());
          CHECK(se.micro_batch == re.micro_batch);
          CHECK(re.virtual_stage == se.virtual_stage + (se.forward() ? 1 : -1));
          done[r][i] = done[p][j] = true;
          ++pairs;
          progress = true;
        }
      }
    }
    for (size_t r = 0; r < P; ++r) {
      while (at[r] < groups[r].size() &&
             std::all_of(done[r].begin(), done[r].end(), [](bool d) { return d; })) {
        ++at[r];
        reset(r);
        progress = true;
      }
    }
  }
  int64_t messages = 0;
  bool complete = true;
  for (size_t r = 0; r < P; ++r) {
    if (at[r] != groups[r].size()) {
      UNSCOPED_INFO("pp " << l.pp << " v " << l.v << " M " << l.M << ": rank " << r << " stopped at group "
                          << at[r] << " of " << groups[r].size());
      complete = false;
    }
    for (const auto& g : groups[r]) messages += static_cast<int64_t>(g.size());
  }
  return complete && 2 * pairs == messages;
}

void simulate_groups(const Layout& l, const std::vector<Schedule>& ranks) {
  std::vector<Groups> groups;
  for (const Schedule& s : ranks) groups.push_back(polder::parallel::p2p_groups(s));
  CHECK(run_groups(l, ranks, groups));
}

// What one stream per communicator did before grouping: each message its own group, a receive just before
// its event, a send just after.
Groups ungrouped(const Schedule& events) {
  Groups out;
  for (size_t i = 0; i < events.size(); ++i) {
    const ScheduleEvent& e = events[i];
    if (e.recv_from >= 0) out.push_back({{false, e.recv_from, e.recv_tag, i}});
    if (e.send_to >= 0) out.push_back({{true, e.send_to, e.send_tag, i}});
  }
  return out;
}

}  // namespace

TEST_CASE("schedules: grouped sends and receives complete under NCCL's rendezvous rules") {
  const std::vector<Layout> layouts = {
      {1, 1, 3}, {2, 1, 1}, {2, 1, 2},  {2, 1, 3}, {2, 1, 8},  {3, 1, 3},  {3, 1, 7},
      {4, 1, 4}, {4, 1, 7}, {8, 1, 16}, {2, 2, 2}, {2, 2, 4},  {2, 2, 6},  {2, 3, 4},
      {4, 2, 4}, {4, 2, 8}, {4, 3, 12}, {3, 2, 9}, {8, 2, 16}, {8, 4, 32},
  };
  for (const Layout& l : layouts) {
    std::vector<std::string_view> names = {"auto"};
    if (l.v == 1) names.push_back("gpipe");
    for (std::string_view name : names) {
      INFO("schedule " << name << " pp " << l.pp << " v " << l.v << " M " << l.M);
      const std::vector<Schedule> ranks = all_ranks(l, name);
      simulate_groups(l, ranks);
      std::vector<Schedule> evaluation;
      for (const Schedule& s : ranks) evaluation.push_back(polder::parallel::forward_events(s));
      simulate_groups(l, evaluation);
    }
  }
  // The oracle can fail: ungrouped messages deadlock on 1F1B's crossing sends (rank 0 sends F0.1's
  // activations while rank 1 sends B0.0's gradient) and on the interleaved steady state.
  for (const Layout& l : std::vector<Layout>{{2, 1, 2}, {4, 1, 8}, {2, 2, 4}}) {
    const std::vector<Schedule> r = all_ranks(l);
    std::vector<Groups> g;
    for (const Schedule& s : r) g.push_back(ungrouped(s));
    CHECK_FALSE(run_groups(l, r, g));
  }
  // Without the receive posted ahead, the interleaved steady state deadlocks too.
  {
    const Layout l{2, 2, 4};
    std::vector<Schedule> r = all_ranks(l);
    for (Schedule& s : r)
      for (ScheduleEvent& e : s) e.recv_ahead = false;
    std::vector<Groups> g;
    for (const Schedule& s : r) g.push_back(polder::parallel::p2p_groups(s));
    CHECK_FALSE(run_groups(l, r, g));
  }
  const std::vector<Schedule> ranks = all_ranks({2, 1, 2});
  const auto g0 = polder::parallel::p2p_groups(ranks[0]);
  const auto g1 = polder::parallel::p2p_groups(ranks[1]);
  // Rank 0: [send F0.0] [] [send F0.1, recv B0.0] ... rank 1: [recv F0.0] [] [send B0.0, recv F0.1]: the
  // crossing pair shares one group on both sides.
  REQUIRE(g0.size() == 5);
  REQUIRE(g1.size() == 5);
  CHECK(g0[2].size() == 2);
  CHECK(g1[2].size() == 2);
}
