// The tiny Llama against the PyTorch reference state in tests/fixtures/llama (written by
// scripts/reference/llama_reference.py, itself cross-checked against transformers' LlamaForCausalLM): logits,
// loss, block outputs and every gradient at the initial weights, then 5 clipped AdamW steps under the warmup
// + cosine schedule. Errors are norm-wise, ||a - b|| / ||b||, so one noisy element does not dominate. The
// steps are checked twice: f32 against torch's runs (losses and grad norms no further from torch f64 than
// kF32Factor times torch f32 is, weights loose, see kF32WeightTol) and f64 against torch's f64 run.
#include <cmath>
#include <cstdio>
#include <map>
#include <string>

#include "core/safetensors.h"
#include "models/llama/model.h"
#include "tests/testing.h"
#include "train/optimizer.h"

using namespace polder;
using namespace polder::testing;

namespace {

constexpr double kTol = 1e-5;
// Two correct f32 trainings drift apart: AdamW's first update of an element is about lr * sign(g), so an
// element whose gradient is near zero by cancellation (measured: an embedding row with g = 7.5e-7 against
// typical 1e-2, first touched at step 3, computed as 7.6e-7 by torch f32 and 1.4e-6 by polder f32, both with
// errors of 3e-7 norm-wise at fixed weights) moves by a different amount. Observed after 5 steps:
// embeddings 1.2e-4, every other parameter <= 1.3e-5, while polder f64 vs torch f64 agree to 1e-6. With the
// RMSNorm's row sums in 16 fixed lanes (issue 25) the embedding landed 7.0e-3 from torch f32, and polder from
// initial weights one ulp away lands 7.1e-3 from polder: so the final f32 weights are bounded by the larger
// of kF32WeightTol and kF32Factor times that measured drift, per parameter (the others stay below 3e-5). The
// tight optimizer check is the f64 one.
constexpr double kF32WeightTol = 1e-3;
// The f32 steps' losses and gradient norms: polder's largest distance from torch's f64 run over the 5 steps
// may be kF32Factor times torch f32's (measured at POLDER_CPU_ISA baseline, avx2 and avx512 on an AMD EPYC:
// at most 1.5 for the losses, 0.9 for the norms), plus a floor of two f32 ulps (2^-22) for a torch error
// that is small by chance.
constexpr double kF32Factor = 4;
constexpr double kF32Floor = 2.4e-7;
constexpr int64_t kSteps = 5;
// That bound holds for the first kCleanSteps steps. From the third step on, the drift described at
// kF32WeightTol (an element with a near-zero gradient, moved by about lr * sign(g) on its first update) makes
// the distance a sample of amplified rounding noise: CPU kernels of equal accuracy land far apart. Measured
// on an AMD EPYC (avx512), grad-norm distance from f64 over all 5 steps, torch f32 2.8e-6: polder with libm
// exp and serial row sums in the softmax 2.3e-6; with the vectorized exp and 16-lane sums (issue 25) 1.2e-5;
// the same with libm exp 1.2e-5, with serial sums 2.8e-5; while the cross-entropy kernels of all of them are
// within 6e-7 (max) / 4e-8 (rms) of f64 per element at fixed inputs. So over all steps the scale is the
// larger of torch f32's distance and the drift measured on this machine (polder again from initial weights
// one ulp away), times kF32Factor: a real bug moves these distances by 1e-3 and more (tests/parity.h), and
// the per-step checks against torch f32 (kTol) and the f64 run's stay tight.
constexpr int64_t kCleanSteps = 2;

const std::string kFixture = std::string(POLDER_SOURCE_DIR) + "/tests/fixtures/llama/reference.safetensors";

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 67;
  c.hidden_size = 48;
  c.intermediate_size = 112;
  c.num_layers = 2;
  c.num_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.tie_embeddings = false;
  c.max_seq_len = 32;
  return c;
}

// ||a - b|| / ||b|| in f64.
double norm_error(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  auto av = values(a), bv = values(b);
  double num = 0, den = 0;
  for (size_t i = 0; i < av.size(); ++i) {
    num += (av[i] - bv[i]) * (av[i] - bv[i]);
    den += bv[i] * bv[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

double rel(double a, double b) {
  return std::abs(a - b) / std::max(std::abs(b), 1e-30);
}

// Batch s of the (6, B, T) ids or targets.
Tensor batch(const Tensor& t, int64_t s) {
  return t.narrow(0, s, 1).view({t.size(1), t.size(2)});
}

void load_initial_weights(models::Llama& model, const safetensors::File& ref) {
  NoGradGuard guard;
  for (models::Parameter& prm : model.parameters()) {
    INFO("parameter " << prm.name);
    REQUIRE(ref.contains("init." + prm.name));
    Tensor w = ref.load("init." + prm.name);
    REQUIRE(w.shape() == prm.value.shape());
    model.parameter(prm.name).value.copy_(w);
  }
}

OptimConfig optim_config() {
  OptimConfig o;
  o.lr = 1e-2;
  o.weight_decay = 0.1;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.grad_clip = 1.0;
  return o;
}

ScheduleConfig schedule_config() {
  ScheduleConfig s;
  s.type = "cosine";
  s.warmup_steps = 2;
  s.min_lr_ratio = 0.1;
  return s;
}

struct StepTrace {
  std::vector<double> losses, norms;
};

// The reference's training loop: zero_grad, loss, backward, clip to 1.0, AdamW at lr_at(step); step s on
// batch s.
StepTrace run_steps(models::Llama& model, const Tensor& ids, const Tensor& targets, bool recompute) {
  const OptimConfig oc = optim_config();
  const ScheduleConfig sc = schedule_config();
  train::AdamW opt(model.parameter_set(), oc);
  StepTrace trace;
  for (int64_t s = 0; s < kSteps; ++s) {
    model.zero_grad();
    Tensor loss = model.loss(batch(ids, s), batch(targets, s), recompute);
    loss.backward();
    trace.norms.push_back(opt.clip_grad_norm(oc.grad_clip));
    opt.step(train::lr_at(sc, oc.lr, s, kSteps));
    trace.losses.push_back(loss.item());
  }
  return trace;
}

TEST_CASE("llama reference: logits, loss, block outputs and gradients match PyTorch", "[llama][reference]") {
  const auto ref = safetensors::File::open(kFixture);
  models::Llama model(tiny_config(), DType::f32);
  load_initial_weights(model, ref);
  const Tensor ids = ref.load("input_ids"), targets = ref.load("targets");
  REQUIRE(ids.shape() == Shape{6, 2, 12});

  // Forward, block by block, so a mismatch names the first layer that differs.
  {
    NoGradGuard guard;
    Tensor x = model.embed(batch(ids, 0));
    const double e_embed = norm_error(x, ref.load("hidden.embed"));
    CHECK(e_embed < kTol);
    for (int64_t l = 0; l < 2; ++l) {
      x = model.block(l, x);
      const double e = norm_error(x, ref.load("hidden." + std::to_string(l)));
      std::printf("reference: block %lld output error %.3g\n", static_cast<long long>(l), e);
      INFO("block " << l);
      CHECK(e < kTol);
    }
    const double e_logits = norm_error(model.forward(batch(ids, 0)), ref.load("logits"));
    std::printf("reference: logits error %.3g\n", e_logits);
    CHECK(e_logits < kTol);
  }

  model.zero_grad();
  Tensor loss = model.loss(batch(ids, 0), batch(targets, 0));
  loss.backward();
  const double e_loss = rel(loss.item(), ref.load("loss").item());
  std::printf("reference: loss %.7f, error %.3g\n", loss.item(), e_loss);
  CHECK(e_loss < kTol);

  double worst = 0;
  std::string worst_name;
  for (const models::Parameter& prm : model.parameters()) {
    const double e = norm_error(prm.grad, ref.load("grad." + prm.name));
    if (e > worst) worst = e, worst_name = prm.name;
    INFO("gradient of " << prm.name);
    CHECK(e < kTol);
  }
  std::printf("reference: worst gradient error %.3g (%s)\n", worst, worst_name.c_str());
}

// Runs the 5 steps with the model in `dtype` and compares with the reference entries under `prefix`.
void check_steps(DType dtype, const std::string& prefix, double weight_tol) {
  const auto ref = safetensors::File::open(kFixture);
  models::Llama model(tiny_config(), dtype);
  load_initial_weights(model, ref);
  const Tensor ids = ref.load("input_ids"), targets = ref.load("targets");
  const StepTrace trace = run_steps(model, ids, targets, false);
  const auto ref_losses = values(ref.load(prefix + "step_losses")),
             ref_norms = values(ref.load(prefix + "step_grad_norms"));
  for (int64_t s = 0; s < kSteps; ++s) {
    const size_t i = static_cast<size_t>(s);
    std::printf("reference %s: step %lld loss %.8f (error %.3g) grad norm %.8f (error %.3g)\n",
                dtype_name(dtype), static_cast<long long>(s), trace.losses[i],
                rel(trace.losses[i], ref_losses[i]), trace.norms[i], rel(trace.norms[i], ref_norms[i]));
    if (dtype != DType::f64) continue;
    INFO("step " << s);
    CHECK(rel(trace.losses[i], ref_losses[i]) < kTol);
    CHECK(rel(trace.norms[i], ref_norms[i]) < kTol);
  }
  std::map<std::string, double> weight_drift;  // f32: per parameter, measured below
  if (dtype != DType::f64) {
    // f32: two f32 computations (polder's, torch's) differ by their rounding, which depends on the CPU's
    // instruction set (FMA, vector width, oneDNN kernels); a fixed 1e-5 had a margin of 2 (grad norm 5.2e-6
    // measured). So polder's distance from torch's f64 run is bounded by kF32Factor times torch f32's own.
    const auto f64_losses = values(ref.load("f64.step_losses")),
               f64_norms = values(ref.load("f64.step_grad_norms"));
    // [0]: the steps before any element's first-touch drift (kCleanSteps), [1]: all steps.
    double torch_loss[2] = {}, torch_norm[2] = {}, polder_loss[2] = {}, polder_norm[2] = {};
    for (size_t i = 0; i < static_cast<size_t>(kSteps); ++i)
      for (int k = static_cast<int64_t>(i) < kCleanSteps ? 0 : 1; k < 2; ++k) {
        torch_loss[k] = std::max(torch_loss[k], rel(ref_losses[i], f64_losses[i]));
        torch_norm[k] = std::max(torch_norm[k], rel(ref_norms[i], f64_norms[i]));
        polder_loss[k] = std::max(polder_loss[k], rel(trace.losses[i], f64_losses[i]));
        polder_norm[k] = std::max(polder_norm[k], rel(trace.norms[i], f64_norms[i]));
      }
    for (int k = 0; k < 2; ++k)
      std::printf(
          "reference f32 from torch f64, %s: torch loss %.3g grad norm %.3g, polder loss %.3g grad norm "
          "%.3g\n",
          k == 0 ? "first steps" : "all steps", torch_loss[k], torch_norm[k], polder_loss[k], polder_norm[k]);
    CHECK(polder_loss[0] <= kF32Factor * torch_loss[0] + kF32Floor);
    CHECK(polder_norm[0] <= kF32Factor * torch_norm[0] + kF32Floor);
    // Over all steps the drift's scale on this CPU is measured, not assumed: the same 5 steps from initial
    // weights moved by one ulp (an equally exact f32 start), and how far that run lands from this one.
    models::Llama moved(tiny_config(), dtype);
    load_initial_weights(moved, ref);
    {
      NoGradGuard guard;
      for (models::Parameter& prm : moved.parameters()) prm.value.mul_(1.0 + std::ldexp(1.0, -23));
    }
    const StepTrace alt = run_steps(moved, ids, targets, false);
    double drift_loss = 0, drift_norm = 0;
    for (size_t i = 0; i < static_cast<size_t>(kSteps); ++i) {
      drift_loss = std::max(drift_loss, rel(alt.losses[i], trace.losses[i]));
      drift_norm = std::max(drift_norm, rel(alt.norms[i], trace.norms[i]));
    }
    std::printf("reference f32, one-ulp start: drift loss %.3g grad norm %.3g\n", drift_loss, drift_norm);
    // The same for the final weights: how far this run's weights are from the one-ulp run's.
    const auto moved_params = moved.parameters();
    for (const models::Parameter& mp : moved_params)
      for (const models::Parameter& prm : model.parameters())
        if (prm.name == mp.name) weight_drift[prm.name] = norm_error(mp.value, prm.value);
    CHECK(polder_loss[1] <= kF32Factor * std::max(torch_loss[1], drift_loss) + kF32Floor);
    CHECK(polder_norm[1] <= kF32Factor * std::max(torch_norm[1], drift_norm) + kF32Floor);
  }
  double worst = 0, worst_other = 0;
  std::string worst_name;
  for (const models::Parameter& prm : model.parameters()) {
    const double e = norm_error(prm.value, ref.load(prefix + "final." + prm.name));
    if (e > worst) worst = e, worst_name = prm.name;
    if (prm.name != "model.embed_tokens.weight") worst_other = std::max(worst_other, e);
    INFO("final " << prm.name << ", one-ulp drift " << weight_drift[prm.name]);
    CHECK(e < std::max(weight_tol, kF32Factor * weight_drift[prm.name]));
  }
  std::printf("reference %s: worst final weight error %.3g (%s), worst outside the embedding %.3g\n",
              dtype_name(dtype), worst, worst_name.c_str(), worst_other);
}

}  // namespace

TEST_CASE("llama reference: the schedule gives the reference's learning rates", "[llama][reference]") {
  const auto ref = safetensors::File::open(kFixture);
  const auto ref_lrs = values(ref.load("step_lrs"));
  for (int64_t s = 0; s < kSteps; ++s)
    CHECK(rel(train::lr_at(schedule_config(), 1e-2, s, kSteps), ref_lrs[static_cast<size_t>(s)]) < 1e-6);
}

TEST_CASE("llama reference: 5 clipped AdamW steps under warmup + cosine match PyTorch, f32",
          "[llama][reference]") {
  check_steps(DType::f32, "", kF32WeightTol);
}

TEST_CASE("llama reference: 5 clipped AdamW steps under warmup + cosine match PyTorch, f64",
          "[llama][reference]") {
  check_steps(DType::f64, "f64.", kTol);
}

TEST_CASE("llama reference: recompute gives bit-identical training steps", "[llama][reference]") {
  const auto ref = safetensors::File::open(kFixture);
  const Tensor ids = ref.load("input_ids"), targets = ref.load("targets");
  models::Llama plain(tiny_config(), DType::f32), recomputed(tiny_config(), DType::f32);
  load_initial_weights(plain, ref);
  load_initial_weights(recomputed, ref);
  const StepTrace a = run_steps(plain, ids, targets, false);
  const StepTrace b = run_steps(recomputed, ids, targets, true);
  for (int64_t s = 0; s < kSteps; ++s) {
    INFO("step " << s);
    CHECK(a.losses[static_cast<size_t>(s)] == b.losses[static_cast<size_t>(s)]);
    CHECK(a.norms[static_cast<size_t>(s)] == b.norms[static_cast<size_t>(s)]);
  }
  CHECK(max_abs_diff(plain.flat_params(), recomputed.flat_params()) == 0.0);
}
