// polder train | eval | generate | info: parse flags, load the config, call into train/ and models/.
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "data/tokenizer.h"
#include "models/llama/generate.h"
#include "models/llama/model.h"
#include "models/llama/sampling.h"
#include "parallel/launch.h"
#include "plan/memory.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/convert.h"
#include "train/signals.h"
#include "train/trainer.h"

namespace polder::cli {
namespace {

struct ConfigArgs {
  std::string config;
  std::vector<std::string> overrides;
};

void add_config_flags(CLI::App* cmd, ConfigArgs& a, bool required) {
  auto* opt = cmd->add_option("-c,--config", a.config, "YAML run configuration (configs/*.yaml)");
  if (required) opt->required();
  cmd->add_option("--set", a.overrides, "override a config key, e.g. --set train.steps=100 (repeatable)");
}

// The config of a checkpoint (recorded at save time), unless --config is given; overrides apply on top.
Config config_for_checkpoint(const ConfigArgs& a, const std::string& checkpoint) {
  if (!a.config.empty()) return load_config(a.config, a.overrides);
  const std::string dir = train::resolve_checkpoint(checkpoint);
  nlohmann::json meta = train::read_checkpoint_metadata(dir);
  return parse_config(meta.at("state").at("config_yaml").get<std::string>(), a.overrides,
                      dir + "/metadata.json");
}

// load_config for a command that every rank of a job runs: an unreadable or invalid config becomes the same
// ConfigError on every rank (printed once by cli/main.cpp) instead of one message per rank.
Config load_config_agreed(const ConfigArgs& a) {
  std::string error;
  try {
    return load_config(a.config, a.overrides);
  } catch (const Error& e) {
    error = e.message();
  }
  train::agree_on_config(*parallel::world_comm(), error, "");
  POLDER_FAIL("unreachable: agree_on_config returned for an invalid config");
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", b, units[u]);
  return buf;
}

void run_info(const ConfigArgs& a) {
  Config c = load_config(a.config, a.overrides);
  if (const std::string choice = resolve_auto_precision(c.train); !choice.empty())
    std::printf("%s\n", choice.c_str());
  const int64_t n = models::llama_parameter_count(c.model);
  const double fpt = train::flops_per_token(c.model, c.data.seq_len);
  // The planner's memory model (plan/memory): what the trainer allocates, checked against the allocator in
  // tests.
  Config planned = c;
  planned.parallel.dp = std::max<int64_t>(1, planned.parallel.dp);
  const plan::MemoryBreakdown mem = plan::predict_memory_max(planned);
  std::printf(
      "model        %lld layers, hidden %lld, %lld heads (%lld KV), head dim %lld, MLP %lld, vocab %lld%s\n",
      static_cast<long long>(c.model.num_layers), static_cast<long long>(c.model.hidden_size),
      static_cast<long long>(c.model.num_heads), static_cast<long long>(c.resolved_kv_heads()),
      static_cast<long long>(c.resolved_head_dim()), static_cast<long long>(c.model.intermediate_size),
      static_cast<long long>(c.model.vocab_size), c.model.tie_embeddings ? ", tied embeddings" : "");
  std::printf("parameters   %lld (%.1fM)\n", static_cast<long long>(n), n / 1e6);
  std::printf("FLOPs/token  %.4g (6N + 12 L H D T at T = %lld; fwd + bwd)\n", fpt,
              static_cast<long long>(c.data.seq_len));
  std::printf("batch        %lld sequences x %lld tokens = %lld tokens/step (micro-batch %lld)\n",
              static_cast<long long>(c.train.global_batch), static_cast<long long>(c.data.seq_len),
              static_cast<long long>(c.train.global_batch * c.data.seq_len),
              static_cast<long long>(c.train.micro_batch));
  std::printf("FLOPs/step   %.4g\n", fpt * static_cast<double>(c.train.global_batch * c.data.seq_len));
  std::printf(
      "memory per process (%s%s, tp %lld, pp %lld, dp %lld, zero %s; largest stage, allocator peak on "
      "the CPU; `polder plan` adds GPU overheads):\n",
      c.train.precision.c_str(), c.train.recompute ? ", recompute" : "",
      static_cast<long long>(c.parallel.tp), static_cast<long long>(c.parallel.pp),
      static_cast<long long>(planned.parallel.dp), c.parallel.zero.c_str());
  std::printf(
      "  weights      %s\n  gradients    %s\n  optimizer    %s\n  activations  %s (micro-batch %lld)\n"
      "  total        %s\n",
      human_bytes(mem.weights).c_str(), human_bytes(mem.gradients).c_str(),
      human_bytes(mem.optimizer).c_str(), human_bytes(mem.activations + mem.other).c_str(),
      static_cast<long long>(c.train.micro_batch), human_bytes(mem.allocated_peak()).c_str());
}

struct GenerateArgs {
  std::string checkpoint, prompt, tokenizer;
  int64_t max_new_tokens = 64;
  models::SamplingOptions sampling;
};

void run_generate(const ConfigArgs& a, const GenerateArgs& g) {
  Config c = config_for_checkpoint(a, g.checkpoint);
  const std::string tok_path = g.tokenizer.empty() ? c.data.tokenizer : g.tokenizer;
  POLDER_CHECK(!tok_path.empty(), "generate: no tokenizer (pass --tokenizer or set data.tokenizer)");
  data::Tokenizer tok = data::Tokenizer::from_file(tok_path);
  models::Llama model(c.model, DType::f32);
  const nlohmann::json meta = train::load_checkpoint(g.checkpoint, model, nullptr);
  // Stop at the EOS ids the imported model's files define (kept in the checkpoint), else at one guessed by
  // name.
  models::GenerateOptions options;
  options.max_new_tokens = g.max_new_tokens;
  options.sampling = g.sampling;
  std::string note;
  options.stop_ids = train::generation_stop_ids(train::checkpoint_hf_info(meta), tok, note);
  if (!note.empty()) std::fprintf(stderr, "generate: %s\n", note.c_str());
  // No BOS: polder datasets separate documents with the end-of-text token only, so that is what a prompt
  // follows.
  const std::vector<int32_t> ids = tok.encode(g.prompt, false);
  POLDER_CHECK(!ids.empty(), "generate: the prompt encodes to no tokens");
  std::printf("%s", g.prompt.c_str());
  std::fflush(stdout);
  std::string printed;
  auto print_new = [&](const std::vector<int32_t>& generated) {
    // Print the newly decoded text, holding back an incomplete UTF-8 character (decoded as U+FFFD).
    const std::string text = tok.decode(generated, true);
    if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return;
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::printf("%s", text.c_str() + printed.size());
      std::fflush(stdout);
      printed = text;
    }
  };
  const models::Generated out = models::generate(model, ids, options, print_new);
  const std::string text = tok.decode(out.ids, true);
  if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0)
    std::printf("%s", text.c_str() + printed.size());
  std::printf("\n");
}

}  // namespace

void register_train(CLI::App& app) {
  auto args = std::make_shared<ConfigArgs>();
  auto* train = app.add_subcommand("train", "train a model from a YAML config");
  add_config_flags(train, *args, true);
  train->callback([args] {
    // SIGUSR1/SIGTERM: every rank finishes the step, saves a checkpoint and exits 0; the same command
    // resumes.
    train::install_stop_handlers(parallel::detect_launch().rank);
    train::Trainer trainer(load_config_agreed(*args));
    trainer.run();
  });

  auto eargs = std::make_shared<ConfigArgs>();
  auto checkpoint = std::make_shared<std::string>();
  auto* eval = app.add_subcommand("eval", "validation loss and perplexity of a checkpoint");
  add_config_flags(eval, *eargs, false);
  eval->add_option("--checkpoint", *checkpoint, "checkpoint directory, or a checkpoints folder (its latest)")
      ->required();
  eval->callback([eargs, checkpoint] {
    Config c = config_for_checkpoint(*eargs, *checkpoint);
    c.train.resume = *checkpoint;
    if (c.train.eval_every <= 0) c.train.eval_every = 1;
    train::Trainer trainer(c, true);
    const double loss = trainer.evaluate();
    std::printf(
        "checkpoint %s step %lld | validation loss %.4f | perplexity %.2f (%lld batches of %lld x %lld)\n",
        checkpoint->c_str(), static_cast<long long>(trainer.step()), loss, std::exp(loss),
        static_cast<long long>(c.train.eval_batches), static_cast<long long>(c.train.micro_batch),
        static_cast<long long>(c.data.seq_len));
  });

  auto gargs = std::make_shared<ConfigArgs>();
  auto gen = std::make_shared<GenerateArgs>();
  auto* generate = app.add_subcommand("generate", "generate text from a checkpoint (KV cache, streaming)");
  add_config_flags(generate, *gargs, false);
  generate->add_option("--checkpoint", gen->checkpoint, "checkpoint directory or folder")->required();
  generate->add_option("--prompt", gen->prompt, "the prompt text")->required();
  generate->add_option("--tokenizer", gen->tokenizer,
                       "tokenizer.json (default: the config's data.tokenizer)");
  generate->add_option("-n,--max-new-tokens", gen->max_new_tokens, "tokens to generate")
      ->check(CLI::PositiveNumber);
  generate->add_option("--temperature", gen->sampling.temperature, "0 = greedy")
      ->check(CLI::NonNegativeNumber);
  generate->add_option("--top-k", gen->sampling.top_k, "keep the k most likely tokens (0 = off)");
  generate->add_option("--top-p", gen->sampling.top_p, "nucleus sampling mass (1 = off)")
      ->check(CLI::Range(0.0, 1.0));
  generate->add_option("--seed", gen->sampling.seed, "sampling seed");
  generate->callback([gargs, gen] { run_generate(*gargs, *gen); });

  auto iargs = std::make_shared<ConfigArgs>();
  auto* info = app.add_subcommand("info", "parameters, FLOPs per token and memory of a config");
  add_config_flags(info, *iargs, true);
  info->callback([iargs] { run_info(*iargs); });
}

}  // namespace polder::cli
