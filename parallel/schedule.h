// Pipeline schedules as data: each rank's ordered list of forward and backward events (micro-batch, chunk,
// peers, message tags), built from (pp, pp rank, virtual stages, micro-batches) alone. The trainer executes
// any such list in one loop and plan/memory replays the same list, so a new schedule is one function here
// plus its test.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace polder::parallel {

struct ScheduleEvent {
  enum class Kind : uint8_t { forward, backward };
  Kind kind = Kind::forward;
  int64_t micro_batch = 0;
  int64_t chunk = 0;          // which of this rank's chunks runs (the model's stage_forward chunk)
  int64_t virtual_stage = 0;  // chunk * pp + pp rank: the chunk's place in the whole pipeline
  bool first = false;         // virtual stage 0: the input is the micro-batch's tokens
  bool last = false;          // last virtual stage: forward ends in the loss, backward starts from it
  // Receive before running (forward: activations; backward: their gradient) and send the result afterwards
  // (forward: the output; backward: the input's gradient). Peers are pp ranks, -1 where there is no message.
  int recv_from = -1, recv_tag = -1;
  int send_to = -1, send_tag = -1;
  // Backward only: after this event every gradient of this rank is final, so plain data-parallel sync may
  // start its bucket reductions during it. Set only where one backward completes all of them.
  bool arm_dp_sync = false;
  // Forward only: the backward that follows is one step with it, and its receive is posted together with
  // this forward's (p2p_groups; Megatron's interleaved steady state, where the two are independent).
  bool recv_ahead = false;

  bool forward() const { return kind == Kind::forward; }
};

struct ScheduleSpec {
  int64_t pp = 1;              // pipeline stages
  int64_t pp_rank = 0;         // this rank's stage
  int64_t virtual_stages = 1;  // chunks per rank (interleaving)
  int64_t micro_batches = 1;   // per optimizer step (or evaluation)
};

using Schedule = std::vector<ScheduleEvent>;
using ScheduleFn = Schedule (*)(const ScheduleSpec&);

// No pipeline (pp = 1): forward and backward of each micro-batch in turn (gradient accumulation).
Schedule no_pipeline_schedule(const ScheduleSpec& s);
// 1F1B (v = 1): stage s runs min(pp - s - 1, M) forwards, then alternates one forward and one backward, then
// drains the remaining backwards. Tags 2 m (activations) and 2 m + 1 (gradients).
Schedule one_f_one_b_schedule(const ScheduleSpec& s);
// Megatron's interleaved 1F1B (v > 1, M divisible by pp): forward k runs chunk (k / pp) % v of micro-batch
// (k / (pp v)) pp + k % pp; backward k the chunks in reverse order. Warmup (pp - rank - 1) * 2 + (v - 1) * pp
// forwards (all of them when M = pp). Tag (receiving virtual stage * M + m) * 2 + direction.
Schedule interleaved_schedule(const ScheduleSpec& s);
// GPipe (v = 1): every micro-batch's forward, then every backward in the same order. Simpler than 1F1B, with
// the same bubble but all M micro-batches' activations alive at once (1F1B keeps at most pp of them).
Schedule gpipe_schedule(const ScheduleSpec& s);

// The registry: schedules by name ("none", "1f1b", "interleaved_1f1b", "gpipe"); parallel.schedule picks one
// ("auto": default_schedule).
struct ScheduleEntry {
  std::string_view name;
  ScheduleFn build;
};
const std::vector<ScheduleEntry>& schedules();
// The schedule the trainer runs for a layout: none (pp = 1), 1f1b (v = 1), interleaved_1f1b.
std::string_view default_schedule(const ScheduleSpec& s);
// polder::Error for an unknown name or a layout the schedule cannot run; "auto" is default_schedule(s).
Schedule make_schedule(std::string_view name, const ScheduleSpec& s);
Schedule make_schedule(const ScheduleSpec& s);  // default_schedule(s)
// The forward events only, in order (evaluation: no backward).
Schedule forward_events(const Schedule& events);

// The point-to-point traffic of one rank's events, as the groups the trainer posts (Comm::p2p_group). NCCL
// matches the messages between two ranks in posting order and a send may wait until the peer's receive runs,
// so unmatched or crossing sends deadlock; in a group every transfer progresses together. groups[i] is posted
// just before event i runs: the sends of earlier events not posted yet together with event i's receive (the
// pairs Megatron batches: send_forward_recv_backward and its kin), and with the next event's receive too
// where event i is recv_ahead (send_forward_backward_recv_forward_backward); groups[n] after the last event
// holds the sends left. Every send is thus posted at the next event boundary, before any further compute.
// tests/ test_schedule.cpp runs every registered schedule's groups under rendezvous semantics and checks that
// they complete and that posting order pairs each message with the receive of the same tag.
struct P2PMessage {
  bool send = true;
  int peer = -1, tag = -1;
  size_t event = 0;  // the event whose output is sent, or whose input is received
};
std::vector<std::vector<P2PMessage>> p2p_groups(const Schedule& events);

}  // namespace polder::parallel
