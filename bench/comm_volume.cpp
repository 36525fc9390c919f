// Communication volume per training step: for every layout that fits the world size, the bytes each rank
// sends in one train_step() (the Comm byte counters, ring accounting) against the volume derived here from
// the model sizes and the algorithm. Exits 1 when any op kind on any rank differs by more than 1% (2: no
// layout fits). Usage: mpirun -np N bench_comm_volume [--per-rank]
//
// The world is wrapped in a CountingComm whose sub-communicators are wrapped too: each wrapper mirrors the
// backend's own counter deltas, so mesh().stats() still reads the backend's counters, and communicators that
// the Mesh does not own (GradSync's tied-embedding group) are seen as well.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "kernels/philox.h"
#include "models/llama/model.h"
#include "parallel/comm.h"
#include "tests/synthetic_data.h"
#include "train/trainer.h"

using namespace polder;
namespace fs = std::filesystem;

namespace {

constexpr int kKinds = 5;  // all_reduce, reduce_scatter, all_gather, broadcast, p2p
const char* const kKindNames[kKinds] = {"all_reduce", "reduce_scatter", "all_gather", "broadcast",
                                        "p2p send"};

std::vector<parallel::OpStats*> ops_of(parallel::CommStats& s) {
  return {&s.all_reduce, &s.reduce_scatter, &s.all_gather, &s.broadcast, &s.p2p};
}

// Forwards every call to the real communicator and adds the change of its counters to this wrapper's.
class CountingComm : public parallel::Comm {
 public:
  explicit CountingComm(std::shared_ptr<parallel::Comm> inner,
                        std::vector<std::weak_ptr<CountingComm>>* registry)
      : Comm(inner->name()), inner_(std::move(inner)), registry_(registry) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  void all_reduce(Tensor& t, parallel::ReduceOp op) override {
    mirror([&] { inner_->all_reduce(t, op); });
  }
  void reduce_scatter(const Tensor& in, Tensor& out, parallel::ReduceOp op) override {
    mirror([&] { inner_->reduce_scatter(in, out, op); });
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    mirror([&] { inner_->all_gather(in, out); });
  }
  void broadcast(Tensor& t, int root) override {
    mirror([&] { inner_->broadcast(t, root); });
  }
  void send(const Tensor& t, int dst, int tag) override {
    mirror([&] { inner_->send(t, dst, tag); });
  }
  void recv(Tensor& t, int src, int tag) override {
    mirror([&] { inner_->recv(t, src, tag); });
  }
  void barrier() override { inner_->barrier(); }
  std::unique_ptr<parallel::Work> all_reduce_async(Tensor& t, parallel::ReduceOp op) override {
    return mirror_work([&] { return inner_->all_reduce_async(t, op); });
  }
  std::unique_ptr<parallel::Work> reduce_scatter_async(const Tensor& in, Tensor& out,
                                                       parallel::ReduceOp op) override {
    return mirror_work([&] { return inner_->reduce_scatter_async(in, out, op); });
  }
  std::unique_ptr<parallel::Work> all_gather_async(const Tensor& in, Tensor& out) override {
    return mirror_work([&] { return inner_->all_gather_async(in, out); });
  }
  std::unique_ptr<parallel::Work> send_async(const Tensor& t, int dst, int tag) override {
    return mirror_work([&] { return inner_->send_async(t, dst, tag); });
  }
  std::unique_ptr<parallel::Work> recv_async(Tensor& t, int src, int tag) override {
    return mirror_work([&] { return inner_->recv_async(t, src, tag); });
  }
  std::shared_ptr<parallel::Comm> split(int color, int key, const std::string& name) override {
    auto sub = inner_->split(color, key, name);
    // (reduce_scatter_v counts on this wrapper through Comm::reduce_scatter_v; see reduce_scatter_v_impl.)
    if (!sub) return nullptr;
    auto wrapped = std::make_shared<CountingComm>(std::move(sub), registry_);
    registry_->push_back(wrapped);
    return wrapped;
  }

 protected:
  void reduce_scatter_v_impl(const Tensor& in, Tensor& out, const std::vector<int64_t>& counts,
                             parallel::ReduceOp op) override {
    inner_->reduce_scatter_v(in, out, counts, op);
  }
  std::unique_ptr<parallel::Work> all_gather_v_impl(const Tensor& in, Tensor& out,
                                                    const std::vector<int64_t>& counts) override {
    return inner_->all_gather_v_async(in, out, counts);
  }

 private:
  template <typename F>
  void mirror(F&& f) {
    parallel::CommStats before = inner_->stats();
    f();
    parallel::CommStats after = inner_->stats();
    auto mine = ops_of(stats_), b = ops_of(before), a = ops_of(after);
    for (int k = 0; k < kKinds; ++k) {
      mine[k]->calls += a[k]->calls - b[k]->calls;
      mine[k]->bytes += a[k]->bytes - b[k]->bytes;
    }
  }
  template <typename F>
  std::unique_ptr<parallel::Work> mirror_work(F&& f) {
    std::unique_ptr<parallel::Work> w;
    mirror([&] { w = f(); });
    return w;
  }

  std::shared_ptr<parallel::Comm> inner_;
  std::vector<std::weak_ptr<CountingComm>>* registry_;
};

struct Layout {
  const char* name;
  int64_t dp, tp, pp;
  std::string zero = "none";
  bool tied = false;
  bool recompute = false;
  int64_t layers = 4;
  int64_t vocab = 64;
  int64_t virtual_stages = 1;
  int64_t cp = 1;
  int64_t zero_group = 0;  // hybrid sharding
};

Config make_config(const std::string& dir, const Layout& l) {
  Config c;
  c.model.vocab_size = l.vocab;
  c.model.hidden_size = 32;
  c.model.intermediate_size = 48;
  c.model.num_layers = l.layers;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.max_seq_len = 16;
  c.model.tie_embeddings = l.tied;
  c.data.datasets = {{"a", dir + "/a", 0.7}, {"b", dir + "/b", 0.3}};
  c.data.seq_len = 16;
  c.data.valid_fraction = 0.1;
  c.train.steps = 4;
  c.train.global_batch = 16;
  c.train.micro_batch = 2;
  c.train.recompute = l.recompute;
  c.train.threads = 1;
  c.train.resume = "none";
  c.optim.lr = 3e-3;
  c.schedule.warmup_steps = 1;
  c.logging.tensorboard = false;
  c.logging.jsonl = false;
  c.parallel.dp = l.dp;
  c.parallel.tp = l.tp;
  c.parallel.pp = l.pp;
  c.parallel.zero = l.zero;
  c.parallel.virtual_stages = l.virtual_stages;
  c.parallel.cp = l.cp;
  c.parallel.zero_group = l.zero_group;
  return c;
}

// Per rank, per op kind: bytes and calls, plus the terms the analytic total is made of.
struct Volume {
  double bytes[kKinds] = {0, 0, 0, 0, 0};
  double calls[kKinds] = {0, 0, 0, 0, 0};
};

struct Analytic {
  Volume v;
  int64_t local_numel = 0;
  // Terms (bytes): dp gradient sync, tp activations (embedding, blocks, head), vocab-parallel CE rows,
  // pipeline activations + gradients, tied-embedding sum, scalar reductions (loss, grad norm).
  double dp_grads = 0, tp_act = 0, tp_ce = 0, pp_act = 0, tied = 0, scalars = 0, cp_kv = 0;
};

// Ring accounting of comm.h: all_reduce 2(p-1)/p n, reduce_scatter / all_gather (p-1)/p n, send n.
double ring_ar(int64_t p) {
  return p > 1 ? 2.0 * static_cast<double>(p - 1) / static_cast<double>(p) : 0.0;
}
double ring_half(int64_t p) {
  return p > 1 ? static_cast<double>(p - 1) / static_cast<double>(p) : 0.0;
}

// What one train_step() must send from a rank at pipeline stage `stage`, derived from the sizes alone.
Analytic analytic_volume(const Config& c, int64_t stage) {
  const ModelConfig& m = c.model;
  // d: the replicas gradients are averaged over (dp x cp); micro-batches come from dp alone.
  const int64_t t = c.parallel.tp, P = c.parallel.pp, cp = c.parallel.cp, d = c.parallel.dp * cp;
  const int64_t h = m.hidden_size, I = m.intermediate_size, H = m.num_heads, KV = m.num_kv_heads;
  const int64_t D = h / H;
  const int64_t vocab_local = (m.vocab_size + t - 1) / t;          // padded vocabulary / tp
  const int64_t b = c.train.micro_batch, s = c.data.seq_len / cp;  // this rank's tokens per sequence
  const int64_t M = c.train.global_batch / (b * c.parallel.dp);    // micro-batches per step
  const bool first = stage == 0, last = stage == P - 1;
  const bool zero1 = c.parallel.zero == "1" && d > 1;
  const bool zero3 = c.parallel.zero == "3" && d > 1;
  const bool zero2 = (c.parallel.zero == "2" || zero3) && d > 1;  // ZeRO-3's gradients take ZeRO-2's path
  // The shard group (all replicas, or hybrid groups of zero_group) and the groups holding the same shard.
  const int64_t g = c.parallel.zero_group > 0 && c.parallel.zero_group < d ? c.parallel.zero_group : d;
  const int64_t cross = d / g;
  // Layers of this rank: its chunks c * P + stage of P * v virtual stages, the first L % (P v) one layer
  // more.
  const int64_t V = c.parallel.virtual_stages, VS = P * V;
  int64_t layers_here = 0;
  for (int64_t ch = 0; ch < V; ++ch)
    layers_here += m.num_layers / VS + (ch * P + stage < m.num_layers % VS ? 1 : 0);

  Analytic a;
  // Local parameters: norms replicated, q/k/v/gate/up column-split, o/down row-split, vocabulary rows split.
  const int64_t per_layer = 2 * h + (H * D + 2 * KV * D) * h / t + H * D * h / t + 3 * I * h / t;
  int64_t n = layers_here * per_layer;
  if (first || (m.tie_embeddings && last)) n += vocab_local * h;
  if (last) n += h + (m.tie_embeddings ? 0 : vocab_local * h);
  if (zero1 || zero2) n = (n + d - 1) / d * d;  // flat buffer padded to a multiple of dp
  a.local_numel = n;
  const double grad_bytes = 4.0 * static_cast<double>(n);   // f32 gradient buffer
  const double act = 4.0 * static_cast<double>(b * s * h);  // one (b, s, h) f32 tensor
  Volume& v = a.v;
  auto add = [&](int kind, double bytes, double calls) {
    v.bytes[kind] += bytes;
    v.calls[kind] += calls;
  };

  // Tensor parallel, per micro-batch: the embedding's all-reduce (first stage); per layer reduce_from_tp
  // after o_proj and down_proj (forward; run again by recompute) and copy_to_tp before q/k/v and gate/up
  // (backward); the head's copy_to_tp (backward); the CE's two all-reduces of f32 values: b*s maxima, then
  // 2 b*s sums of exponentials and target logits.
  if (t > 1) {
    const int64_t per_layer_ars = c.train.recompute ? 6 : 4;
    const double n_act = (first ? 1 : 0) + per_layer_ars * layers_here + (last ? 1 : 0);
    a.tp_act = static_cast<double>(M) * n_act * act * ring_ar(t);
    add(0, a.tp_act, static_cast<double>(M) * n_act);
    if (last) {
      a.tp_ce = static_cast<double>(M) * 3.0 * 4.0 * static_cast<double>(b * s) * ring_ar(t);
      add(0, a.tp_ce, static_cast<double>(M) * 2);
    }
  }
  // Pipeline: every micro-batch's (b, s, h) activation to the next (virtual) stage and its gradient to the
  // previous one; per chunk, except the output of the last virtual stage and the input of the first.
  if (P > 1) {
    const double sends =
        static_cast<double>(M) * (2.0 * static_cast<double>(V) - (last ? 1 : 0) - (first ? 1 : 0));
    a.pp_act = sends * act;
    add(4, a.pp_act, sends);
  }
  // Tied embedding: first and last stage sum the (vocab_local, h) gradient over a group of two.
  if (m.tie_embeddings && P > 1 && (first || last)) {
    a.tied = ring_ar(2) * 4.0 * static_cast<double>(vocab_local * h);
    add(0, a.tied, 1);
  }
  // Data parallel: the whole flat buffer, all-reduced (in buckets: this model fits one) or reduce-scattered
  // and the updated parameters all-gathered (ZeRO-1).
  if (d > 1) {
    const double shard = grad_bytes / static_cast<double>(g);
    if (cross > 1) {  // hybrid: the reduced shard is summed over the groups
      add(0, ring_ar(cross) * shard, 1);
      a.dp_grads += ring_ar(cross) * shard;
    }
    if (zero2) {
      // Every micro-batch, each bucket is reduce-scattered in the shard group (uneven counts; this model fits
      // one bucket); ZeRO-2 then all-gathers the updated parameters once, ZeRO-3 gathers units as they run.
      // An embedding tied across stages is a bucket of its own, reduce-scattered once after the step.
      const double tied_bytes =
          m.tie_embeddings && P > 1 && (first || last) ? 4.0 * static_cast<double>(vocab_local * h) : 0.0;
      add(1, static_cast<double>(M) * ring_half(g) * (grad_bytes - tied_bytes), static_cast<double>(M));
      if (tied_bytes > 0) add(1, ring_half(g) * tied_bytes, 1);
      if (!zero3) add(2, ring_half(g) * grad_bytes, 1);
      a.dp_grads += static_cast<double>(M) * ring_half(g) * (grad_bytes - tied_bytes) +
                    ring_half(g) * tied_bytes + (zero3 ? 0.0 : ring_half(g) * grad_bytes);
    } else if (zero1) {
      add(1, ring_half(g) * grad_bytes, 1);
      add(2, ring_half(g) * grad_bytes, 1);
      a.dp_grads += 2 * ring_half(g) * grad_bytes;
    } else {
      a.dp_grads = ring_ar(d) * grad_bytes;
      add(0, a.dp_grads, 1);
    }
  }
  // ZeRO-3: every unit (the embedding, each layer, the final norm with the head) gathered before its forward
  // and its backward, every micro-batch; the embedding twice more when it is also the head (tied, no
  // pipeline).
  if (zero3) {
    std::vector<std::pair<double, double>> units;  // (elements, gathers per micro-batch)
    if (first)
      units.push_back({static_cast<double>(vocab_local * h), m.tie_embeddings && P == 1 ? 4.0 : 2.0});
    if (last && m.tie_embeddings && P > 1) units.push_back({static_cast<double>(vocab_local * h), 2.0});
    for (int64_t l = 0; l < layers_here; ++l) units.push_back({static_cast<double>(per_layer), 2.0});
    if (last) units.push_back({static_cast<double>(h + (m.tie_embeddings ? 0 : vocab_local * h)), 2.0});
    for (auto [numel, per_mb] : units) {
      const double calls = static_cast<double>(M) * per_mb;
      add(2, calls * ring_half(g) * 4.0 * numel, calls);
      a.dp_grads += calls * ring_half(g) * 4.0 * numel;
    }
  }
  // Context parallel: every layer all-gathers K and V (the whole sequence, this rank's KV heads) in forward
  // (and again under recompute) and reduce-scatters their gradients in backward.
  if (cp > 1) {
    const double kv = 4.0 * static_cast<double>(b * c.data.seq_len * KV / t * D);
    const double gathers = static_cast<double>(M * layers_here) * (c.train.recompute ? 6 : 4);
    const double scatters = static_cast<double>(M * layers_here) * 2;
    add(2, gathers * ring_half(cp) * kv, gathers);
    add(1, scatters * ring_half(cp) * kv, scatters);
    a.cp_kv = (gathers + scatters) * ring_half(cp) * kv;
  }
  // Scalars (f64): the mean loss (sum over pp, average over dp) and the squared grad norm (sum over tp, pp,
  // and dp under ZeRO).
  auto scalar = [&](int64_t p) {
    if (p < 2) return;
    a.scalars += ring_ar(p) * 8.0;
    add(0, ring_ar(p) * 8.0, 1);
  };
  scalar(P);
  scalar(d);
  scalar(t);
  scalar(P);
  if (zero1 || zero2) scalar(d);  // the norm over every replica (hybrid: each shard counted per group)
  return a;
}

struct Measured {
  Volume mesh, other;  // mesh().stats(); traffic outside it (none since Mesh::add_group)
  int64_t flat_numel = 0;
};

Measured measure(const Config& c, std::shared_ptr<parallel::Comm> real_world, int warmup, int64_t* stage) {
  std::vector<std::weak_ptr<CountingComm>> registry;
  auto world = std::make_shared<CountingComm>(real_world, &registry);
  train::Trainer trainer(c, true, world);
  for (int i = 0; i < warmup; ++i) trainer.train_step();
  parallel::Mesh& mesh = trainer.mesh();
  *stage = mesh.pp_rank();
  mesh.reset_stats();
  for (auto& w : registry)
    if (auto p = w.lock()) p->reset_stats();
  Measured r;
  trainer.train_step();
  r.flat_numel =
      trainer.model().parameter_set().flat_numel();  // the gradient buffer is a 1/dp shard under ZeRO-2
  // mesh().stats() includes the groups registered with Mesh::add_group (the tied-embedding group), so nothing
  // is left outside it; `other` stays zero and the report checks that.
  parallel::CommStats ms = mesh.stats(), os;
  auto mo = ops_of(ms), oo = ops_of(os);
  for (int k = 0; k < kKinds; ++k) {
    r.mesh.bytes[k] = mo[k]->bytes;
    r.mesh.calls[k] = mo[k]->calls;
    r.other.bytes[k] = oo[k]->bytes;
    r.other.calls[k] = oo[k]->calls;
  }
  return r;
}

std::string human(double bytes) {
  char buf[32];
  if (bytes >= 1 << 20)
    std::snprintf(buf, sizeof buf, "%.3f MiB", bytes / (1 << 20));
  else if (bytes >= 1 << 10)
    std::snprintf(buf, sizeof buf, "%.2f KiB", bytes / (1 << 10));
  else
    std::snprintf(buf, sizeof buf, "%.0f B", bytes);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  bool per_rank = false;
  for (int i = 1; i < argc; ++i) per_rank = per_rank || std::strcmp(argv[i], "--per-rank") == 0;
  auto world = parallel::world_comm();
  const int P = world->size(), me = world->rank();
  const std::string dir =
      (fs::temp_directory_path() / "polder_comm_volume" / ("np" + std::to_string(P))).string();
  if (me == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    testing::write_synthetic_dataset(dir + "/a", 120, 61, 1);
    testing::write_synthetic_dataset(dir + "/b", 80, 61, 2);
  }
  world->barrier();

  const std::vector<Layout> layouts = {
      {"dp2", 2, 1, 1},
      {"dp2 zero1", 2, 1, 1, "1"},
      {"dp2 zero2", 2, 1, 1, "2"},
      {"pp2 interleaved v2", 1, 1, 2, "none", false, false, 4, 64, 2},
      {"tp2", 1, 2, 1},
      {"tp2 vocab63", 1, 2, 1, "none", false, false, 4, 63},
      {"tp2 recompute", 1, 2, 1, "none", false, true},
      {"pp2", 1, 1, 2},
      {"pp2 tied", 1, 1, 2, "none", true},
      {"dp4", 4, 1, 1},
      {"dp4 zero1", 4, 1, 1, "1"},
      {"pp4", 1, 1, 4},
      {"tp2xpp2", 1, 2, 2},
      {"tp2xpp2 tied", 1, 2, 2, "none", true},
      {"dp2xtp2", 2, 2, 1},
      {"dp2xpp2", 2, 1, 2},
      {"dp2xpp2 zero1 tied", 2, 1, 2, "1", true},
      {"dp2xpp2 zero2", 2, 1, 2, "2"},
      {"tp2xpp2 interleaved v2", 1, 2, 2, "none", false, false, 4, 64, 2},
      {"pp4 interleaved v2 (8 layers)", 1, 1, 4, "none", false, false, 8, 64, 2},
      {"dp8", 8, 1, 1},
      {"dp8 zero1", 8, 1, 1, "1"},
      {"pp8 (8 layers)", 1, 1, 8, "none", false, false, 8},
      {"dp2xtp2xpp2", 2, 2, 2},
      {"dp2xtp2xpp2 zero1 tied", 2, 2, 2, "1", true},
      {"dp2xtp2xpp2 zero2", 2, 2, 2, "2"},
      {"dp4xtp2", 4, 2, 1},
      {"tp2xpp4", 1, 2, 4},
      {"dp2xpp4 tied", 2, 1, 4, "none", true},
      {"cp2", 1, 1, 1, "none", false, false, 4, 64, 1, 2},
      {"cp4", 1, 1, 1, "none", false, false, 4, 64, 1, 4},
      {"cp2 recompute", 1, 1, 1, "none", false, true, 4, 64, 1, 2},
      {"dp2xcp2 zero1", 2, 1, 1, "1", false, false, 4, 64, 1, 2},
      {"cp2xtp2", 1, 2, 1, "none", false, false, 4, 64, 1, 2},
      {"cp2xpp2", 1, 1, 2, "none", false, false, 4, 64, 1, 2},
      {"dp2xcp2xtp2", 2, 2, 1, "none", false, false, 4, 64, 1, 2},
      {"dp2 zero3", 2, 1, 1, "3"},
      {"dp2 zero3 tied", 2, 1, 1, "3", true},
      {"dp4 zero3", 4, 1, 1, "3"},
      {"dp2xtp2 zero3", 2, 2, 1, "3"},
      {"dp2xpp2 zero3 tied", 2, 1, 2, "3", true},
      {"dp4 zero3 groups of 2", 4, 1, 1, "3", false, false, 4, 64, 1, 1, 2},
      {"dp4 zero1 groups of 2", 4, 1, 1, "1", false, false, 4, 64, 1, 1, 2},
      {"dp8 zero2 groups of 4", 8, 1, 1, "2", false, false, 4, 64, 1, 1, 4},
  };

  if (me == 0) {
    std::printf(
        "communication volume per train_step, %d ranks (%s backend): bytes sent per rank, ring accounting\n",
        P, world->backend().c_str());
    std::printf(
        "model: vocab 64, hidden 32, inter 48, heads 4 (kv 2), seq 16, micro_batch 2, global_batch 16, "
        "f32\n\n");
    std::printf("%-24s %-14s %9s %14s %14s %14s %14s %9s %9s\n", "layout", "op", "calls m/a", "measured max",
                "analytic max", "measured mean", "analytic mean", "min ratio", "max ratio");
  }
  bool ok = true;
  int ran = 0;
  for (const Layout& l : layouts) {
    if (l.dp * l.tp * l.pp * l.cp != P) continue;
    ++ran;
    Config c = make_config(dir, l);
    c.train.run_dir = dir + "/run-" + std::to_string(ran);
    int64_t stage = 0;
    Measured m = measure(c, world, 2, &stage);
    Analytic a = analytic_volume(c, stage);
    // Gather per rank: measured (mesh + other), measured other, analytic bytes, calls, flat numel check.
    constexpr int kFields = 5 * kKinds + 8;
    std::vector<double> mine(kFields, 0.0);
    for (int k = 0; k < kKinds; ++k) {
      mine[static_cast<size_t>(k)] = m.mesh.bytes[k] + m.other.bytes[k];
      mine[static_cast<size_t>(kKinds + k)] = m.other.bytes[k];
      mine[static_cast<size_t>(2 * kKinds + k)] = a.v.bytes[k];
      mine[static_cast<size_t>(3 * kKinds + k)] = m.mesh.calls[k] + m.other.calls[k];
      mine[static_cast<size_t>(4 * kKinds + k)] = a.v.calls[k];
    }
    double* extra = mine.data() + 5 * kKinds;
    extra[0] = static_cast<double>(m.flat_numel);
    extra[1] = static_cast<double>(a.local_numel);
    extra[2] = a.dp_grads, extra[3] = a.tp_act, extra[4] = a.tp_ce, extra[5] = a.pp_act, extra[6] = a.tied;
    extra[7] = a.scalars;
    Tensor in = Tensor::from_vector(mine, {kFields});
    Tensor all = Tensor::empty({static_cast<int64_t>(P) * kFields}, DType::f64);
    world->all_gather(in, all);
    std::vector<double> g = all.to_vector<double>();
    auto at = [&](int r, int f) { return g[static_cast<size_t>(r * kFields + f)]; };

    // Agreement: every rank, every op kind, within 1%; and the flat buffer has the derived size.
    for (int r = 0; r < P; ++r) {
      if (at(r, 5 * kKinds) != at(r, 5 * kKinds + 1)) {
        ok = false;
        if (me == 0)
          std::printf("!! %s rank %d: flat buffer holds %.0f elements, derived %.0f\n", l.name, r,
                      at(r, 5 * kKinds), at(r, 5 * kKinds + 1));
      }
    }
    if (me == 0) {
      for (int k = 0; k < kKinds; ++k) {
        double mmax = 0, amax = 0, msum = 0, asum = 0, rmin = 1e300, rmax = 0, calls = 0, acalls = 0;
        bool any = false, calls_differ = false;
        for (int r = 0; r < P; ++r) {
          const double mb = at(r, k), ab = at(r, 2 * kKinds + k);
          mmax = std::max(mmax, mb), amax = std::max(amax, ab), msum += mb, asum += ab;
          calls = std::max(calls, at(r, 3 * kKinds + k));
          acalls = std::max(acalls, at(r, 4 * kKinds + k));
          calls_differ = calls_differ || at(r, 3 * kKinds + k) != at(r, 4 * kKinds + k);
          if (mb == 0 && ab == 0) continue;
          any = true;
          const double ratio = ab > 0 ? mb / ab : 1e300;
          rmin = std::min(rmin, ratio), rmax = std::max(rmax, ratio);
          if (std::abs(ratio - 1.0) > 0.01) ok = false;
        }
        if (!any) continue;
        const bool bad = std::abs(rmax - 1) > 0.01 || std::abs(rmin - 1) > 0.01;
        std::printf("%-24s %-14s %4.0f/%-4.0f %14.0f %14.0f %14.1f %14.1f %9.6f %9.6f%s%s\n", l.name,
                    kKindNames[k], calls, acalls, mmax, amax, msum / P, asum / P, rmin, rmax,
                    bad ? "  <-- MISMATCH" : "", calls_differ ? "  (call counts differ)" : "");
      }
      // The analytic terms of the busiest rank, and what mesh().stats() does not see.
      int busiest = 0;
      double best = -1, other = 0;
      for (int r = 0; r < P; ++r) {
        double tot = 0;
        for (int k = 0; k < kKinds; ++k)
          tot += at(r, 2 * kKinds + k), other = std::max(other, at(r, kKinds + k));
        if (tot > best) best = tot, busiest = r;
      }
      const double* e = &g[static_cast<size_t>(busiest * kFields + 5 * kKinds)];
      std::printf(
          "%-24s   terms (rank %d, %.0f params local): dp grads %s, tp activations %s, tp CE %s, pp %s, "
          "tied embedding %s, scalars %s%s\n",
          "", busiest, e[0], human(e[2]).c_str(), human(e[3]).c_str(), human(e[4]).c_str(),
          human(e[5]).c_str(), human(e[6]).c_str(), human(e[7]).c_str(),
          other > 0 ? ("; not in mesh().stats(): " + human(other) + " (tied-embedding group)").c_str() : "");
      if (per_rank) {
        for (int r = 0; r < P; ++r) {
          std::printf("%-24s   rank %d:", "", r);
          for (int k = 0; k < kKinds; ++k)
            if (at(r, k) > 0 || at(r, 2 * kKinds + k) > 0)
              std::printf(" %s %.0f/%.0f", kKindNames[k], at(r, k), at(r, 2 * kKinds + k));
          std::printf("\n");
        }
      }
      std::fflush(stdout);
    }
    world->barrier();
  }
  if (me == 0) {
    if (ran == 0)
      std::printf("no layout fits %d ranks (run with 2, 4 or 8)\n", P);
    else
      std::printf("\n%s\n", ok ? "all measured volumes within 1% of the analytic ones"
                               : "MISMATCH: some measured volume differs from the analytic one by > 1%");
  }
  Tensor flag = Tensor::from_vector<double>({ok && ran > 0 ? 0.0 : 1.0}, {1});
  world->all_reduce(flag, parallel::ReduceOp::max);
  const int code = ran == 0 ? 2 : flag.to_vector<double>()[0] > 0 ? 1 : 0;
  parallel::finalize();
  return code;
}
