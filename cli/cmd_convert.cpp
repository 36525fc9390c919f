// polder convert: Hugging Face <-> polder checkpoints and offline resharding. Parses flags and calls
// train/convert.
//   polder convert --from hf <dir> --to polder <ckpt_dir> [--config run.yaml] [--set a.b=c]
//   polder convert --from polder <ckpt> --to hf <dir> [--dtype f32|bf16]
//   polder convert --reshard tp=T,pp=P <ckpt> --out <dir>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "train/checkpoint.h"
#include "train/convert.h"

namespace polder::cli {
namespace {

struct ConvertArgs {
  std::vector<std::string> from, to;  // {kind, path}
  std::string reshard, out, dtype = "f32";
  std::vector<std::string> positional;
  train::ImportOptions import;
};

// "tp=2,pp=1" (dp=D accepted and ignored: checkpoints are dp-independent).
std::pair<int64_t, int64_t> parse_layout(const std::string& spec) {
  int64_t tp = 1, pp = 1;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t eq = item.find('=');
    POLDER_CHECK(eq != std::string::npos, "convert --reshard: '{}' is not key=value (expected tp=T,pp=P)",
                 item);
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    int64_t n = 0;
    try {
      size_t used = 0;
      n = std::stoll(value, &used);
      POLDER_CHECK(used == value.size() && n > 0, "");
    } catch (...) {
      POLDER_FAIL("convert --reshard: {} must be a positive integer, got '{}'", key, value);
    }
    if (key == "tp")
      tp = n;
    else if (key == "pp")
      pp = n;
    else
      POLDER_CHECK(key == "dp", "convert --reshard: unknown key '{}' (tp, pp, dp)", key);
  }
  return {tp, pp};
}

void run_convert(const ConvertArgs& a) {
  if (!a.reshard.empty()) {
    POLDER_CHECK(a.positional.size() == 1 && !a.out.empty(),
                 "convert --reshard needs one checkpoint and --out <dir>");
    auto [tp, pp] = parse_layout(a.reshard);
    train::reshard(a.positional[0], a.out, tp, pp);
    std::printf("resharded %s to tp=%lld, pp=%lld in %s\n", a.positional[0].c_str(),
                static_cast<long long>(tp), static_cast<long long>(pp), a.out.c_str());
    return;
  }
  POLDER_CHECK(
      a.from.size() == 2 && a.to.size() == 2,
      "convert: use --from hf <dir> --to polder <dir>, --from polder <ckpt> --to hf <dir>, or --reshard");
  if (a.from[0] == "hf" && a.to[0] == "polder") {
    train::import_hf(a.from[1], a.to[1], a.import);
    const train::HfInfo info =
        train::checkpoint_hf_info(train::read_checkpoint_metadata(train::resolve_checkpoint(a.to[1])));
    std::printf("imported %s (%s) into checkpoint %s\n", a.from[1].c_str(), info.architecture.c_str(),
                a.to[1].c_str());
    std::printf(
        "special tokens: bos %s, eos %s\n",
        info.bos_token_id ? format("{} (from {})", *info.bos_token_id, info.bos_from).c_str() : "none",
        info.eos_token_ids.empty() ? "none defined (polder generate and export will guess it by name)"
                                   : format("{} (from {})", info.eos_token_ids, info.eos_from).c_str());
  } else if (a.from[0] == "polder" && a.to[0] == "hf") {
    POLDER_CHECK(a.dtype == "f32" || a.dtype == "bf16", "convert: --dtype must be f32 or bf16, got '{}'",
                 a.dtype);
    const std::string note =
        train::export_hf(a.from[1], a.to[1], a.dtype == "bf16" ? DType::bf16 : DType::f32);
    if (!note.empty()) std::fprintf(stderr, "convert: %s\n", note.c_str());
    std::printf("exported %s to %s (%s)\n", a.from[1].c_str(), a.to[1].c_str(), a.dtype.c_str());
  } else {
    POLDER_FAIL("convert: --from {} --to {} is not supported (hf -> polder, polder -> hf)", a.from[0],
                a.to[0]);
  }
}

}  // namespace

void register_convert(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  auto* cmd =
      app.add_subcommand("convert", "convert checkpoints: Hugging Face <-> polder, offline resharding");
  cmd->add_option("--from", args->from, "source: hf <dir> | polder <checkpoint>")->expected(2);
  cmd->add_option("--to", args->to, "destination: polder <dir> | hf <dir>")->expected(2);
  cmd->add_option("--dtype", args->dtype, "HF output dtype: f32 or bf16");
  cmd->add_option("--reshard", args->reshard, "target layout, e.g. tp=2,pp=1");
  cmd->add_option("--out", args->out, "output checkpoint directory of --reshard");
  cmd->add_option("-c,--config", args->import.config,
                  "run YAML for the imported checkpoint's non-model sections");
  cmd->add_option("--set", args->import.overrides, "override a key of --config (repeatable)");
  cmd->add_option("checkpoint", args->positional, "the checkpoint to reshard");
  cmd->callback([args] { run_convert(*args); });
}

}  // namespace polder::cli
