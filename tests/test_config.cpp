// Tests of train/config: YAML -> Config for every key, the one-line errors (unknown keys with the nearest
// suggestion, wrong types, inconsistent values, missing keys, bad overrides), `a.b=c` overrides, the parallel
// layout against a world size, the committed presets, and the round trip through config_to_yaml.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/isa.h"
#include "train/config.h"

using namespace polder;
using Catch::Matchers::Contains;

namespace {

// A small valid config; tests break it with overrides or by appending text.
const std::string kBase = R"(model:
  vocab_size: 512
  hidden_size: 64
  intermediate_size: 176
  num_layers: 2
  num_heads: 4
  num_kv_heads: 2
  max_seq_len: 128
data:
  seq_len: 64
  datasets:
    - {name: nl, prefix: data/nl, weight: 0.6}
    - {name: en, prefix: data/en, weight: 0.4}
train:
  steps: 10
  global_batch: 8
  micro_batch: 2
)";

// The message of the polder::Error that parsing throws; fails the test when nothing is thrown. Every message
// must be one line.
std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config(yaml, overrides, "test.yaml");
  } catch (const Error& e) {
    INFO(e.message());
    CHECK(e.message().find('\n') == std::string::npos);
    return e.message();
  }
  FAIL("parse_config accepted a config it should reject");
  return "";
}

std::string error_of_override(const std::string& override_text) {
  return error_of(kBase, {override_text});
}

std::string validate_error(const Config& c, int64_t world_size) {
  try {
    validate_config(c, world_size);
  } catch (const Error& e) {
    return e.message();
  }
  FAIL("validate_config accepted a layout it should reject");
  return "";
}

std::string source_path(const std::string& relative) {
  return std::string(POLDER_SOURCE_DIR) + "/" + relative;
}

}  // namespace

TEST_CASE("config: a minimal file parses and the rest keeps the defaults of config.h") {
  Config c = parse_config(kBase);
  CHECK(c.model.vocab_size == 512);
  CHECK(c.model.hidden_size == 64);
  CHECK(c.model.num_kv_heads == 2);
  CHECK(c.resolved_head_dim() == 16);
  CHECK(c.resolved_kv_heads() == 2);
  REQUIRE(c.data.datasets.size() == 2);
  CHECK(c.data.datasets[0] == DatasetEntry{"nl", "data/nl", 0.6});
  CHECK(c.data.datasets[1] == DatasetEntry{"en", "data/en", 0.4});
  CHECK(c.train.steps == 10);
  Config defaults;
  CHECK(c.optim == defaults.optim);
  CHECK(c.schedule == defaults.schedule);
  CHECK(c.parallel == defaults.parallel);
  CHECK(c.train.precision == "f32");
  CHECK(c.model.rope_theta == 10000.0);
}

TEST_CASE("config: every key of every section is read, and config_to_yaml reproduces it") {
  const std::string full = R"(model:
  vocab_size: 1024
  hidden_size: 96
  intermediate_size: 264
  num_layers: 4
  num_heads: 6
  num_kv_heads: 3
  head_dim: 20
  max_seq_len: 512
  rope_theta: 500000
  rms_norm_eps: 1.0e-6
  tie_embeddings: true
  init_std: 0.01
data:
  datasets: [{name: nl, prefix: "data/nl 2", weight: 0.7}, {name: "de", prefix: data/de}]
  tokenizer: tok.json
  seq_len: 256
  valid_fraction: 0.05
  split_seed: 18446744073709551615
train:
  steps: 1e3
  global_batch: 32
  micro_batch: 4
  precision: bf16
  recompute: true
  seed: 7
  eval_every: 25
  eval_batches: 3
  resume: none
  run_dir: runs/x
  device: cuda
  threads: 2
  peak_tflops: 989.5
optim:
  lr: 3.0e-4
  weight_decay: 0.0
  beta1: 0.8
  beta2: 0.99
  eps: 1e-6
  grad_clip: 0.5
  decay_norms_and_embeddings: true
schedule:
  type: wsd
  warmup_steps: 100
  min_lr_ratio: 0.0
  decay_fraction: 0.1
checkpoint:
  dir: ckpt
  every: 50
  keep_last: 5
logging:
  every: 5
  jsonl: false
  tensorboard: false
parallel:
  dp: 2
  tp: 3
  pp: 2
  virtual_stages: 2
  zero: 2
  bucket_mb: 50
)";
  Config c = parse_config(full);
  CHECK(c.model.vocab_size == 1024);
  CHECK(c.model.hidden_size == 96);
  CHECK(c.model.intermediate_size == 264);
  CHECK(c.model.num_layers == 4);
  CHECK(c.model.num_heads == 6);
  CHECK(c.model.num_kv_heads == 3);
  CHECK(c.model.head_dim == 20);  // set explicitly: hidden 96 != 6 * 20 is allowed
  CHECK(c.resolved_head_dim() == 20);
  CHECK(c.model.max_seq_len == 512);
  CHECK(c.model.rope_theta == 500000.0);
  CHECK(c.model.rms_norm_eps == 1e-6);
  CHECK(c.model.tie_embeddings);
  CHECK(c.model.init_std == 0.01);
  REQUIRE(c.data.datasets.size() == 2);
  CHECK(c.data.datasets[0] == DatasetEntry{"nl", "data/nl 2", 0.7});
  CHECK(c.data.datasets[1] == DatasetEntry{"de", "data/de", 1.0});  // weight defaults to 1
  CHECK(c.data.tokenizer == "tok.json");
  CHECK(c.data.seq_len == 256);
  CHECK(c.data.valid_fraction == 0.05);
  CHECK(c.data.split_seed == 18446744073709551615ull);
  CHECK(c.train.steps == 1000);  // integral float notation is an integer
  CHECK(c.train.global_batch == 32);
  CHECK(c.train.micro_batch == 4);
  CHECK(c.train.precision == "bf16");
  CHECK(c.train.recompute);
  CHECK(c.train.seed == 7);
  CHECK(c.train.eval_every == 25);
  CHECK(c.train.eval_batches == 3);
  CHECK(c.train.resume == "none");
  CHECK(c.train.run_dir == "runs/x");
  CHECK(c.train.device == "cuda");
  CHECK(c.train.threads == 2);
  CHECK(c.train.peak_tflops == 989.5);
  CHECK(c.optim.lr == 3e-4);
  CHECK(c.optim.weight_decay == 0.0);
  CHECK(c.optim.beta1 == 0.8);
  CHECK(c.optim.beta2 == 0.99);
  CHECK(c.optim.eps == 1e-6);
  CHECK(c.optim.grad_clip == 0.5);
  CHECK(c.optim.decay_norms_and_embeddings);
  CHECK(c.schedule.type == "wsd");
  CHECK(c.schedule.warmup_steps == 100);
  CHECK(c.schedule.min_lr_ratio == 0.0);
  CHECK(c.schedule.decay_fraction == 0.1);
  CHECK(c.checkpoint.dir == "ckpt");
  CHECK(c.checkpoint.every == 50);
  CHECK(c.checkpoint.keep_last == 5);
  CHECK(c.logging.every == 5);
  CHECK(!c.logging.jsonl);
  CHECK(!c.logging.tensorboard);
  CHECK(c.parallel.dp == 2);
  CHECK(c.parallel.tp == 3);
  CHECK(c.parallel.pp == 2);
  CHECK(c.parallel.virtual_stages == 2);
  CHECK(c.parallel.zero == "2");
  CHECK(c.parallel.bucket_mb == 50);

  std::string yaml = config_to_yaml(c);
  INFO(yaml);
  Config back = parse_config(yaml, {}, "<emitted>");
  CHECK(back == c);
  CHECK(config_to_yaml(back) == yaml);
  // Values that YAML would read as other types or that need quoting survive as strings.
  c.train.run_dir = "true";
  c.checkpoint.dir = "";
  c.data.tokenizer = "a: b # c";
  c.optim.lr = 0.1 + 0.2;  // not a short decimal: the emitter must keep every bit
  CHECK(parse_config(config_to_yaml(c)) == c);
}

TEST_CASE("config: datasets also accept a map keyed by name") {
  Config c =
      parse_config(kBase, {"data.datasets={nl: {prefix: data/nl, weight: 0.4}, en: {prefix: data/en}}"});
  REQUIRE(c.data.datasets.size() == 2);
  CHECK(c.data.datasets[0] == DatasetEntry{"nl", "data/nl", 0.4});
  CHECK(c.data.datasets[1] == DatasetEntry{"en", "data/en", 1.0});
  CHECK_THAT(error_of_override("data.datasets={nl: {prefix: a, wieght: 2}}"),
             Contains("unknown key 'data.datasets.nl.wieght'; did you mean 'data.datasets.nl.weight'?"));
  CHECK_THAT(error_of_override("data.datasets={nl: {name: nl, prefix: a}}"),
             Contains("unknown key 'data.datasets.nl.name'"));
}

TEST_CASE("config: unknown sections and keys name the origin and the nearest valid key") {
  CHECK(error_of(kBase + "  stpes: 5\n") ==
        "test.yaml:18: unknown key 'train.stpes'; did you mean 'train.steps'?");
  CHECK_THAT(error_of(kBase + "trian:\n  seed: 1\n"),
             Contains("test.yaml:18: unknown section 'trian'; did you mean 'train'?"));
  CHECK_THAT(error_of(kBase + "  global_bacth: 5\n"), Contains("did you mean 'train.global_batch'?"));
  CHECK_THAT(error_of(kBase + "optim:\n  learning_rate: 0.1\n"),
             Contains("unknown key 'optim.learning_rate'; valid keys are: lr, weight_decay"));
  CHECK_THAT(error_of(kBase + "  steps: 20\n"), Contains("test.yaml:18: duplicate key 'train.steps'"));
  std::string bad_dataset = kBase;
  bad_dataset.replace(bad_dataset.find("prefix: data/en"), 15, "prefx: data/en");
  CHECK_THAT(error_of(bad_dataset),
             Contains("unknown key 'data.datasets[1].prefx'; did you mean 'data.datasets[1].prefix'?"));
}

TEST_CASE("config: a wrong type names the key, the expected type and the given value") {
  CHECK(error_of(kBase, {"train.steps=ten"}) ==
        "override 'train.steps=ten': train.steps: expected an integer, got 'ten'");
  std::string in_file = kBase;
  in_file.replace(in_file.find("steps: 10"), 9, "steps: ten");
  CHECK(error_of(in_file) == "test.yaml:15: train.steps: expected an integer, got 'ten'");
  CHECK_THAT(error_of_override("train.steps=10.5"), Contains("train.steps: expected an integer, got '10.5'"));
  CHECK_THAT(error_of_override("train.steps="),
             Contains("train.steps: expected an integer, got nothing (null)"));
  CHECK_THAT(error_of_override("train.steps=[1, 2]"),
             Contains("train.steps: expected an integer, got a list"));
  CHECK_THAT(error_of_override("model.tie_embeddings=yes"),
             Contains("model.tie_embeddings: expected true or false, got 'yes'"));
  CHECK_THAT(error_of_override("model.tie_embeddings=1"),
             Contains("model.tie_embeddings: expected true or false, got '1'"));
  CHECK_THAT(error_of_override("optim.lr=fast"), Contains("optim.lr: expected a number, got 'fast'"));
  CHECK_THAT(error_of_override("optim.lr=.inf"), Contains("optim.lr: expected a number, got '.inf'"));
  CHECK_THAT(error_of_override("train.seed=-1"),
             Contains("train.seed: expected a non-negative integer, got '-1'"));
  CHECK_THAT(error_of_override("train.run_dir={a: 1}"),
             Contains("train.run_dir: expected a string, got a map"));
  CHECK_THAT(error_of_override("data.datasets=data/nl"), Contains("data.datasets: expected a list"));
  CHECK_THAT(error_of_override("data.datasets.en.weight=heavy"),
             Contains("data.datasets[1].weight: expected a number, got 'heavy'"));
  CHECK_THAT(error_of(kBase + "logging: 5\n"),
             Contains("test.yaml:18: logging: expected a map of keys, got '5'"));
  CHECK_THAT(error_of("- a\n- b\n"), Contains("expected a map of sections"));
  CHECK_THAT(error_of(kBase + "optim: {lr: [}\n"), Contains("test.yaml:18:"));
  CHECK_THAT(error_of(kBase + "optim: {lr: [}\n"), Contains("YAML syntax error"));
}

TEST_CASE("config: negative values where a count or size is needed are range errors") {
  CHECK(error_of_override("train.steps=-5") ==
        "test.yaml (with overrides): train.steps must be positive, got -5");
  CHECK_THAT(error_of_override("model.num_kv_heads=-2"),
             Contains("model.num_kv_heads must not be negative, got -2"));
  CHECK_THAT(error_of_override("train.eval_every=-1"),
             Contains("train.eval_every must not be negative, got -1"));
  CHECK_THAT(error_of_override("parallel.dp=-1"), Contains("parallel.dp must not be negative, got -1"));
  CHECK_THAT(error_of_override("optim.lr=-0.1"), Contains("optim.lr must be positive, got -0.1"));
  CHECK_THAT(error_of_override("optim.beta2=1"), Contains("optim.beta2 must be in [0, 1), got 1"));
  CHECK_THAT(error_of_override("schedule.warmup_steps=-3"),
             Contains("schedule.warmup_steps must not be negative"));
  CHECK_THAT(error_of_override("train.peak_tflops=-1"), Contains("train.peak_tflops must not be negative"));
  CHECK_THAT(error_of_override("checkpoint.keep_last=0"),
             Contains("checkpoint.keep_last must be positive, got 0"));
}

TEST_CASE("config: inconsistent values are named with both numbers") {
  CHECK(error_of_override("model.num_kv_heads=3") ==
        "test.yaml (with overrides): model.num_heads (4) is not divisible by model.num_kv_heads (3)");
  CHECK_THAT(error_of(kBase, {"model.hidden_size=66"}),
             Contains("model.hidden_size (66) is not divisible by model.num_heads (4); set model.head_dim"));
  CHECK_NOTHROW(parse_config(kBase, {"model.hidden_size=66", "model.head_dim=16"}));
  CHECK_THAT(error_of_override("model.head_dim=15"), Contains("head dimension (15) must be even"));
  CHECK_THAT(error_of_override("train.global_batch=7"),
             Contains("train.global_batch (7) is not divisible by train.micro_batch (2)"));
  CHECK_THAT(error_of_override("data.seq_len=256"),
             Contains("data.seq_len (256) is larger than model.max_seq_len (128)"));
  CHECK_THAT(
      error_of_override("schedule.type=cosin"),
      Contains(
          "schedule.type must be one of constant, cosine, linear, wsd; got 'cosin'; did you mean 'cosine'?"));
  CHECK_THAT(error_of_override("schedule.warmup_steps=11"),
             Contains("schedule.warmup_steps (11) is larger than train.steps (10)"));
  CHECK_THAT(error_of_override("train.precision=fp16"),
             Contains("train.precision must be one of f32, bf16, f64, auto; got 'fp16'"));
  CHECK_THAT(error_of_override("train.device=gpu"),
             Contains("train.device must be one of cpu, cuda; got 'gpu'"));
  CHECK_THAT(error_of_override("parallel.zero=4"),
             Contains("parallel.zero must be one of none, 1, 2, 3; got '4'"));
  CHECK_THAT(error_of_override("parallel.tp=4"),
             Contains("parallel.tp (4) does not divide model.num_kv_heads (2)"));
  CHECK_THAT(error_of(kBase, {"model.num_kv_heads=4", "parallel.tp=3"}),
             Contains("parallel.tp (3) does not divide model.num_heads (4)"));
  CHECK_THAT(error_of_override("parallel.pp=3"),
             Contains("parallel.pp (3) is larger than model.num_layers (2)"));
  CHECK_THAT(error_of_override("data.datasets.nl.weight=-0.5"),
             Contains("dataset 'nl' has weight -0.5; weights must not be negative"));
  CHECK_THAT(error_of(kBase, {"data.datasets.nl.weight=0", "data.datasets.en.weight=0"}),
             Contains("data.datasets: the weights sum to 0"));
  CHECK_THAT(error_of_override("data.datasets.1.name=nl"), Contains("duplicate dataset name 'nl'"));
  CHECK_THAT(error_of_override("data.datasets=[]"), Contains("data.datasets is empty"));
}

TEST_CASE("config: missing required keys are named") {
  auto without = [](const std::string& line) {
    std::string text = kBase;
    size_t pos = text.find(line);
    REQUIRE(pos != std::string::npos);
    return text.erase(pos, line.size() + 1);
  };
  CHECK(error_of(without("  hidden_size: 64")) == "test.yaml: missing required key 'model.hidden_size'");
  std::string bad_batch = kBase;
  bad_batch.replace(bad_batch.find("global_batch: 8"), 15, "global_batch: 7");
  CHECK(error_of(bad_batch) == "test.yaml: train.global_batch (7) is not divisible by train.micro_batch (2)");
  CHECK_THAT(error_of(without("  steps: 10")), Contains("missing required key 'train.steps'"));
  CHECK_THAT(error_of(without("  micro_batch: 2")), Contains("missing required key 'train.micro_batch'"));
  CHECK_THAT(error_of(without("  seq_len: 64")), Contains("missing required key 'data.seq_len'"));
  CHECK_THAT(error_of(""), Contains("missing required key 'model.vocab_size'"));
  std::string no_datasets = kBase;
  no_datasets.erase(no_datasets.find("  datasets:"),
                    no_datasets.find("train:") - no_datasets.find("  datasets:"));
  CHECK_THAT(error_of(no_datasets), Contains("missing required key 'data.datasets'"));
  CHECK_THAT(error_of_override("data.datasets=[{name: x}]"),
             Contains("missing required key 'data.datasets[0].prefix'"));
  CHECK_THAT(error_of_override("data.datasets=[{prefix: x}]"),
             Contains("missing required key 'data.datasets[0].name'"));
}

TEST_CASE("config: overrides set numbers, booleans, strings and dataset fields, in order") {
  Config c = parse_config(
      kBase, {"train.steps=100", "model.tie_embeddings=true", "optim.lr=1e-3", "train.run_dir=runs/my run",
              "train.precision=bf16", "parallel.zero=1", "data.datasets.en.weight=0.25",
              "data.datasets.0.prefix=/d/nl", "logging.every=3", " train.steps = 200 "});
  CHECK(c.train.steps == 200);  // the last override wins; spaces around key and value are ignored
  CHECK(c.model.tie_embeddings);
  CHECK(c.optim.lr == 1e-3);
  CHECK(c.train.run_dir == "runs/my run");
  CHECK(c.train.precision == "bf16");
  CHECK(c.parallel.zero == "1");
  CHECK(c.data.datasets[1].weight == 0.25);
  CHECK(c.data.datasets[0].prefix == "/d/nl");
  CHECK(c.logging.every == 3);  // a section absent from the file is created
  CHECK(parse_config(kBase, {"checkpoint.dir=\"001\""}).checkpoint.dir == "001");
  CHECK(parse_config(kBase, {"data.tokenizer=a=b.json"}).data.tokenizer == "a=b.json");
}

TEST_CASE("config: bad overrides are one clear line") {
  CHECK(error_of_override("train.stpes=10") ==
        "override 'train.stpes=10': unknown key 'train.stpes'; did you mean 'train.steps'?");
  CHECK_THAT(error_of_override("trian.steps=10"), Contains("unknown section 'trian'; did you mean 'train'?"));
  CHECK_THAT(error_of_override("train.steps"),
             Contains("override 'train.steps': expected section.key=value"));
  CHECK_THAT(error_of_override("=5"), Contains("expected section.key=value"));
  CHECK_THAT(error_of_override("train=5"), Contains("'train' is a section"));
  CHECK_THAT(error_of_override("train..steps=5"), Contains("empty key"));
  CHECK_THAT(error_of_override("train.steps.x=5"), Contains("'train.steps' is a single value"));
  CHECK_THAT(error_of_override("data.datasets.es.weight=1"),
             Contains("no dataset named 'es' in data.datasets (have: nl, en)"));
  CHECK_THAT(error_of_override("data.datasets.nl.wieght=1"),
             Contains("unknown key 'data.datasets.nl.wieght'; did you mean 'data.datasets.nl.weight'?"));
  CHECK_THAT(error_of_override("optim.lr=[1"),
             Contains("override 'optim.lr=[1': the value is not valid YAML"));
}

TEST_CASE("config: the parallel layout is checked against the world size") {
  Config c = parse_config(kBase);  // global 8, micro 2, heads 4, kv 2
  CHECK_NOTHROW(validate_config(c, 1));
  CHECK_NOTHROW(validate_config(c, 4));  // dp 4: one micro-batch per rank
  CHECK(validate_error(c, 3) ==
        "train.global_batch (8) is not divisible by train.micro_batch * dp (2 * 3 = 6)");
  c.parallel.tp = 2;
  CHECK_NOTHROW(validate_config(c, 2));
  CHECK_THAT(validate_error(c, 3),
             Contains("the world size (3) is not divisible by parallel.tp * parallel.pp (2 * 1 = 2)"));
  c.parallel.dp = 2;
  CHECK_NOTHROW(validate_config(c, 4));
  CHECK_THAT(
      validate_error(c, 8),
      Contains("parallel.dp * parallel.tp * parallel.pp (2 * 2 * 1 = 4) differs from the world size (8)"));
  c.parallel.dp = 8;
  CHECK_THAT(validate_error(c, 16),
             Contains("train.global_batch (8) is not divisible by train.micro_batch * dp (2 * 8 = 16)"));
}

TEST_CASE("config: interleaved stages need validation micro-batches divisible by pp") {
  Config c = parse_config(kBase);  // global 8, micro 2: 4 micro-batches per step
  c.model.num_layers = 4;
  c.parallel.pp = 2;
  c.parallel.virtual_stages = 2;
  c.train.eval_every = 10;
  c.train.eval_batches = 4;
  CHECK_NOTHROW(validate_config(c, 2));
  c.train.eval_batches = 3;
  CHECK_THAT(validate_error(c, 2), Contains("needs train.eval_batches divisible by pp = 2, got 3"));
  c.train.eval_every = 0;  // no validation: no constraint
  CHECK_NOTHROW(validate_config(c, 2));
}

TEST_CASE("config: parallel.schedule names a schedule that can run the layout") {
  Config c = parse_config(kBase);  // global 8, micro 2: 4 micro-batches per step
  c.model.num_layers = 4;
  c.parallel.pp = 2;
  for (const char* ok : {"auto", "1f1b", "gpipe"}) {
    c.parallel.schedule = ok;
    CHECK_NOTHROW(validate_config(c, 2));
  }
  c.parallel.schedule = "zero_bubble";
  CHECK_THAT(validate_error(c, 2),
             Contains("parallel.schedule 'zero_bubble': unknown pipeline schedule "
                      "'zero_bubble' (known: auto, none, 1f1b, interleaved_1f1b, gpipe)"));
  c.parallel.schedule = "gpipe";
  c.parallel.virtual_stages = 2;
  CHECK_THAT(validate_error(c, 2),
             Contains("parallel.schedule 'gpipe': schedule gpipe: one virtual stage per "
                      "rank, got 2"));
  c.parallel.schedule = "none";
  c.parallel.virtual_stages = 1;
  CHECK_THAT(validate_error(c, 2), Contains("parallel.schedule 'none': schedule none: needs pp = 1"));
}

TEST_CASE("config: file errors") {
  CHECK_THROWS_WITH(load_config("/nonexistent/polder.yaml"),
                    Contains("cannot open config file '/nonexistent/polder.yaml'"));
  try {
    load_config(source_path("configs/tiny-nl.yaml"), {"train.stpes=1"});
    FAIL("accepted an unknown override");
  } catch (const Error& e) {
    CHECK_THAT(e.message(), Contains("did you mean 'train.steps'?"));
  }
}

TEST_CASE(
    "config: train.precision auto: bf16 on GPUs, on the CPU bf16 exactly with native bf16 dot products") {
  Config c = parse_config(kBase, {"train.precision=auto", "train.device=cuda"});
  CHECK(c.train.precision == "auto");  // kept as written until a trainer resolves it
  CHECK(resolve_auto_precision(c.train) == "train.precision auto: bf16 (GPU)");
  CHECK(c.train.precision == "bf16");
  Config cpu = parse_config(kBase, {"train.precision=auto"});
  const std::string why = resolve_auto_precision(cpu.train);
  CHECK(cpu.train.precision == (polder::kernels::cpu::cpu_native_bf16() ? "bf16" : "f32"));
  CHECK_THAT(why, Contains("train.precision auto: " + cpu.train.precision));
  Config f = parse_config(kBase, {"train.precision=f32"});
  CHECK(resolve_auto_precision(f.train).empty());
  CHECK(f.train.precision == "f32");
}

TEST_CASE("config: the presets parse, validate, and round-trip") {
  for (const char* name : {"tiny-nl", "llama-125m", "llama-1b", "llama-8b"}) {
    INFO(name);
    Config c = load_config(source_path(std::string("configs/") + name + ".yaml"));
    CHECK(parse_config(config_to_yaml(c)) == c);
  }
  Config tiny = load_config(source_path("configs/tiny-nl.yaml"));
  CHECK(tiny.train.device == "cpu");
  CHECK(tiny.train.precision == "auto");  // the quickstart takes bf16 where the CPU has native bf16
  CHECK_NOTHROW(validate_config(tiny, 1));
  CHECK_NOTHROW(validate_config(tiny, 2));
  REQUIRE(tiny.data.datasets.size() == 4);
  CHECK(tiny.data.datasets[0] == DatasetEntry{"nl", "data_work/datasets/nl", 0.55});
  // The vocabulary covers the committed tokenizer it names.
  std::ifstream in(source_path(tiny.data.tokenizer));
  REQUIRE(in.good());
  nlohmann::json tok = nlohmann::json::parse(in);
  int64_t tokenizer_vocab = static_cast<int64_t>(tok["model"]["vocab"].size() + tok["added_tokens"].size());
  CHECK(tiny.model.vocab_size >= tokenizer_vocab);
  CHECK(tiny.model.vocab_size % 64 == 0);

  Config c1b = load_config(source_path("configs/llama-1b.yaml"));
  CHECK(c1b.model.hidden_size == 2048);
  CHECK(c1b.model.num_kv_heads == 8);
  CHECK(c1b.model.tie_embeddings);
  CHECK_NOTHROW(validate_config(c1b, 8));

  Config c8b = load_config(source_path("configs/llama-8b.yaml"));
  CHECK(c8b.model.intermediate_size == 14336);
  CHECK(!c8b.model.tie_embeddings);
  CHECK(c8b.parallel.tp == 8);
  CHECK_NOTHROW(validate_config(c8b, 512));   // dp 64
  CHECK_NOTHROW(validate_config(c8b, 2048));  // dp 256
  CHECK_THROWS(validate_config(c8b, 12));     // not a multiple of tp * pp

  Config c32k = load_config(source_path("configs/llama-8b-32k.yaml"));
  CHECK(c32k.data.seq_len == 32768);
  CHECK(c32k.parallel.cp == 4);
  CHECK(c32k.model.rope_scaling_type == "llama3");
  CHECK_NOTHROW(validate_config(c32k, 128));  // tp 8 x cp 4 x dp 4
  CHECK_THROWS(validate_config(c32k, 48));    // not a multiple of tp * cp = 32
}

TEST_CASE("parallel.cp: one line for a world or sequence that does not split", "[config]") {
  Config c;
  c.model.vocab_size = 64;
  c.model.hidden_size = 32;
  c.model.intermediate_size = 48;
  c.model.num_layers = 2;
  c.model.num_heads = 4;
  c.model.max_seq_len = 20;
  c.data.seq_len = 20;
  c.data.datasets = {{"a", "x", 1.0}};
  c.train.steps = 10;
  c.train.global_batch = 8;
  c.train.micro_batch = 2;
  c.parallel.cp = 4;  // 2 cp = 8 chunks: 20 is not divisible
  CHECK_THROWS_WITH(validate_config(c, 4),
                    Catch::Contains("parallel.cp = 4: data.seq_len (20) must be divisible by 2 * cp = 8"));
  c.parallel.cp = 2;
  CHECK_NOTHROW(validate_config(c, 4));  // dp 2
  CHECK_THROWS_WITH(
      validate_config(c, 3),
      Catch::Contains("not divisible by parallel.tp * parallel.pp * parallel.cp (1 * 1 * 2 = 2)"));
  c.parallel.dp = 3;
  CHECK_THROWS_WITH(validate_config(c, 4),
                    Catch::Contains("parallel.dp * parallel.tp * parallel.pp * parallel.cp "
                                    "(3 * 1 * 1 * 2 = 6) differs from the world size (4)"));
  c.parallel.dp = 0;
  c.parallel.cp = 0;
  CHECK_THROWS_WITH(validate_config(c, 4), Catch::Contains("parallel.cp"));
}
