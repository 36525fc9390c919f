// polder convert: HF fixtures (tests/fixtures/hf, made by transformers) imported and run against
// transformers' logits and inv_freq; export -> re-import bit-identical, architecture and BOS/EOS kept;
// BOS/EOS taken from the file that defines them and generation stopping where transformers' generate stops;
// Qwen2 q/k/v biases through training, tp = 2 resharding and export; a polder-trained checkpoint through HF
// and back; offline resharding checked against llama_local_parameters; one clear message per kind of bad
// input.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/safetensors.h"
#include "data/tokenizer.h"
#include "models/llama/generate.h"
#include "models/llama/model.h"
#include "tests/synthetic_data.h"
#include "tests/testing.h"
#include "train/checkpoint.h"
#include "train/convert.h"
#include "train/trainer.h"

using namespace polder;
namespace fs = std::filesystem;

namespace {

const std::string kFixtures = std::string(POLDER_SOURCE_DIR) + "/tests/fixtures/hf/";

std::string work_dir(const std::string& name) {
  return testing::fresh_dir("convert_work", name);
}

Config checkpoint_config(const std::string& ckpt) {
  const std::string dir = train::resolve_checkpoint(ckpt);
  return parse_config(train::read_checkpoint_metadata(dir).at("state").at("config_yaml").get<std::string>());
}

// ||a - b|| / ||b|| over all elements.
double norm_rel(const Tensor& a, const Tensor& b) {
  auto av = testing::values(a), bv = testing::values(b);
  REQUIRE(av.size() == bv.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < av.size(); ++i) {
    num += (av[i] - bv[i]) * (av[i] - bv[i]);
    den += bv[i] * bv[i];
  }
  return std::sqrt(num / den);
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// Every tensor of every shard file of two checkpoints, compared byte for byte (same layout).
void require_same_checkpoint(const std::string& a, const std::string& b) {
  const nlohmann::json ma = train::read_checkpoint_metadata(a), mb = train::read_checkpoint_metadata(b);
  REQUIRE(ma.at("tensors") == mb.at("tensors"));
  int64_t compared = 0;
  for (auto& [file, digest] : ma.at("files").items()) {
    auto fa = safetensors::File::open(a + "/" + file), fb = safetensors::File::open(b + "/" + file);
    REQUIRE(fa.names() == fb.names());
    for (const std::string& n : fa.names()) {
      INFO(file << " " << n);
      CHECK(same_bytes(fa.load(n), fb.load(n)));
      ++compared;
    }
  }
  CHECK(compared > 0);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  return "(no error)";
}

// A copy of the llama_gqa fixture with model.safetensors rewritten by `edit`.
std::string broken_copy(const std::string& name,
                        const std::function<void(safetensors::NamedTensors&)>& edit) {
  const std::string dir = work_dir("broken_" + name);
  for (const char* f : {"config.json", "generation_config.json"})
    fs::copy_file(kFixtures + "llama_gqa/" + f, dir + "/" + f);
  auto src = safetensors::File::open(kFixtures + "llama_gqa/model.safetensors");
  safetensors::NamedTensors tensors;
  for (const std::string& n : src.names()) tensors.push_back({n, src.load(n)});
  edit(tensors);
  safetensors::save(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  return dir;
}

nlohmann::json read_json_file(const std::string& path) {
  return nlohmann::json::parse(std::ifstream(path));
}

void edit_json(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = read_json_file(path);
  edit(j);
  std::ofstream(path) << j.dump(2);
}

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  edit_json(dir + "/config.json", edit);
}

// A copy of a whole fixture folder.
std::string fixture_copy(const std::string& fixture, const std::string& name) {
  const std::string dir = work_dir("copy_" + name);
  fs::copy(kFixtures + fixture, dir, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  return dir;
}

// An HF eos_token_id (an int or a list) as a list.
std::vector<int64_t> id_list(const nlohmann::json& j) {
  return j.is_array() ? j.get<std::vector<int64_t>>() : std::vector<int64_t>{j.get<int64_t>()};
}

// The qwen2 fixture's tokenizer (one token per character, <|im_end|> 2, <|endoftext|> 66), which polder runs.
data::Tokenizer qwen2_tokenizer() {
  return data::Tokenizer::from_file(kFixtures + "qwen2/tokenizer.json");
}

}  // namespace

TEST_CASE("HF fixtures import, match transformers' logits and inv_freq, and round-trip bit for bit",
          "[convert]") {
  for (std::string name :
       {"llama_gqa", "llama_tied", "llama3_scaled_sharded", "mistral", "llama_bias", "qwen2"}) {
    INFO("fixture " << name);
    REQUIRE(fs::exists(kFixtures + name));
    const std::string dir = work_dir(name);
    train::import_hf(kFixtures + name, dir + "/ckpt");
    const Config c = checkpoint_config(dir + "/ckpt");
    CHECK(c.model.vocab_size == 67);
    CHECK(c.model.tie_embeddings == (name == "llama_tied" || name == "qwen2"));
    CHECK(c.model.qkv_bias == (name == "llama_bias" || name == "qwen2"));
    CHECK(c.model.o_proj_bias == (name == "llama_bias"));
    CHECK(c.model.rope_scaling_type == (name == "llama3_scaled_sharded" ? "llama3" : "none"));

    models::Llama model(c.model, DType::f32);
    train::load_checkpoint(dir + "/ckpt", model, nullptr);
    auto ref = safetensors::File::open(kFixtures + name + "/reference.safetensors");
    const Tensor logits = model.forward(ref.load("input_ids"));
    const double err = norm_rel(logits, ref.load("logits"));
    INFO("logits relative error " << err);
    CHECK(err < 1e-4);

    ops::RopeScaling sc{c.model.rope_scaling_type, c.model.rope_scaling_factor, c.model.rope_low_freq_factor,
                        c.model.rope_high_freq_factor, c.model.rope_original_max_position};
    const std::vector<double> inv = ops::rope_inv_freq(c.resolved_head_dim(), c.model.rope_theta, sc);
    const std::vector<float> want = ref.load("inv_freq").to_vector<float>();
    REQUIRE(inv.size() == want.size());
    for (size_t i = 0; i < inv.size(); ++i) CHECK(static_cast<float>(inv[i]) == want[i]);

    // Export (f32) keeps every HF tensor bit for bit; re-import gives the same checkpoint.
    train::export_hf(dir + "/ckpt", dir + "/hf");
    auto exported = safetensors::File::open(dir + "/hf/model.safetensors");
    if (fs::exists(kFixtures + name + "/model.safetensors")) {
      auto orig = safetensors::File::open(kFixtures + name + "/model.safetensors");
      CHECK(orig.names().size() == exported.names().size());
      for (const std::string& n : orig.names()) CHECK(same_bytes(orig.load(n), exported.load(n)));
    }
    CHECK(exported.contains("lm_head.weight") == !c.model.tie_embeddings);
    CHECK(train::hf_config_to_model(nlohmann::json::parse(std::ifstream(dir + "/hf/config.json"))) ==
          c.model);
    // The architecture and the special tokens the fixture's files define come back out.
    const nlohmann::json orig_config = read_json_file(kFixtures + name + "/config.json");
    const nlohmann::json out_config = read_json_file(dir + "/hf/config.json");
    CHECK(out_config.at("architectures") == orig_config.at("architectures"));
    CHECK(out_config.at("model_type") == orig_config.at("model_type"));
    const nlohmann::json orig_gen = read_json_file(kFixtures + name + "/generation_config.json");
    const nlohmann::json out_gen = read_json_file(dir + "/hf/generation_config.json");
    CHECK(id_list(out_gen.at("eos_token_id")) == id_list(orig_gen.at("eos_token_id")));
    CHECK(out_gen.at("bos_token_id") == orig_gen.at("bos_token_id"));
    CHECK(id_list(out_config.at("eos_token_id")) == id_list(orig_gen.at("eos_token_id")));
    train::import_hf(dir + "/hf", dir + "/ckpt2");
    require_same_checkpoint(dir + "/ckpt", dir + "/ckpt2");

    // bf16 export: every value is the bf16 rounding of the f32 weight.
    train::export_hf(dir + "/ckpt", dir + "/hf_bf16", DType::bf16);
    auto bf = safetensors::File::open(dir + "/hf_bf16/model.safetensors");
    for (const std::string& n : exported.names()) {
      INFO(n);
      CHECK(bf.info(n).dtype == DType::bf16);
      CHECK(same_bytes(bf.load(n), exported.load(n).to(DType::bf16)));
    }
  }
}

TEST_CASE("bad HF input is one clear line per kind", "[convert][errors]") {
  const std::string out = work_dir("errors_out");
  auto import = [&](const std::string& dir) {
    return error_of([&] { train::import_hf(dir, out + "/ckpt"); });
  };

  std::string dir = broken_copy("missing", [](safetensors::NamedTensors& t) {
    std::erase_if(t, [](auto& p) { return p.first == "model.layers.1.mlp.up_proj.weight"; });
  });
  CHECK(import(dir) ==
        "convert: missing tensor 'model.layers.1.mlp.up_proj.weight' (expected shape (64, 32)) in '" + dir +
            "'");

  dir = broken_copy("unexpected", [](safetensors::NamedTensors& t) {
    t.push_back({"model.layers.2.mlp.up_proj.weight", testing::randn({64, 32}, 1, DType::f32)});
  });
  CHECK(import(dir).find("convert: unexpected tensor 'model.layers.2.mlp.up_proj.weight'") == 0);

  dir = broken_copy("shape", [](safetensors::NamedTensors& t) {
    for (auto& p : t)
      if (p.first == "model.layers.0.self_attn.k_proj.weight")
        p.second = testing::randn({8, 32}, 2, DType::f32);
  });
  CHECK(
      import(dir) ==
      "convert: shape mismatch for 'model.layers.0.self_attn.k_proj.weight': expected (16, 32), got (8, 32)");

  dir = broken_copy("dtype", [](safetensors::NamedTensors& t) { t[0].second = t[0].second.to(DType::f64); });
  CHECK(import(dir).find("has dtype F64; supported: F32, BF16, F16") != std::string::npos);

  dir = broken_copy("arch", [](safetensors::NamedTensors&) {});
  edit_config(dir, [](nlohmann::json& j) { j["architectures"] = {"GPT2LMHeadModel"}; });
  CHECK(import(dir) ==
        "convert: architecture 'GPT2LMHeadModel' is not supported (LlamaForCausalLM, MistralForCausalLM, "
        "Qwen2ForCausalLM)");

  dir = broken_copy("rope", [](safetensors::NamedTensors&) {});
  edit_config(dir, [](nlohmann::json& j) {
    j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0}};
  });
  CHECK(import(dir) == "convert: rope type 'yarn' is not supported (default, llama3)");

  dir = broken_copy("sliding", [](safetensors::NamedTensors&) {});
  edit_config(dir, [](nlohmann::json& j) {
    j["architectures"] = {"MistralForCausalLM"};
    j["sliding_window"] = 4096;
  });
  CHECK(import(dir).find("sliding_window 4096 is not supported") != std::string::npos);

  dir = broken_copy("truncated", [](safetensors::NamedTensors&) {});
  fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") / 2);
  const std::string truncated = import(dir);
  INFO(truncated);
  CHECK(truncated.find("model.safetensors") != std::string::npos);
  CHECK(truncated != "(no error)");
  CHECK_FALSE(fs::exists(out + "/ckpt/metadata.json"));  // nothing was written by any failed import
}

TEST_CASE("a polder-trained checkpoint exports to HF, re-imports identically and reshards",
          "[convert][train]") {
  const std::string dir = work_dir("trained");
  testing::write_synthetic_dataset(dir + "/a", 120, 61, 1);
  Config c;
  c.model.vocab_size = 61;  // odd: tp = 2 pads the vocabulary
  c.model.hidden_size = 32;
  c.model.intermediate_size = 48;
  c.model.num_layers = 2;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.max_seq_len = 32;
  c.data.datasets = {{"a", dir + "/a", 1.0}};
  c.data.seq_len = 16;
  c.train.steps = 3;
  c.train.global_batch = 4;
  c.train.micro_batch = 4;
  c.train.run_dir = dir + "/run";
  c.train.resume = "none";
  c.optim.lr = 3e-3;
  c.logging.tensorboard = false;
  std::string ckpt;
  std::vector<float> weights, m, v;
  {
    train::Trainer t(c, true);
    for (int i = 0; i < 3; ++i) t.train_step();
    ckpt = t.save();
    weights = t.model().flat_params().to_vector<float>();
    m = t.optimizer().exp_avg().to_vector<float>();
    v = t.optimizer().exp_avg_sq().to_vector<float>();
  }
  CHECK(train::export_hf(ckpt, dir + "/hf") ==
        "no end-of-text token is recorded in the checkpoint and it names no tokenizer: "
        "generation_config.json has "
        "no eos_token_id");
  CHECK(read_json_file(dir + "/hf/config.json").at("architectures") == nlohmann::json{"LlamaForCausalLM"});
  CHECK_FALSE(read_json_file(dir + "/hf/generation_config.json").contains("eos_token_id"));
  train::import_hf(dir + "/hf", dir + "/back");
  CHECK(checkpoint_config(dir + "/back").model == c.model);
  {
    models::Llama model(c.model);
    train::load_checkpoint(dir + "/back", model, nullptr);
    CHECK(model.flat_params().to_vector<float>() == weights);
  }

  // Offline resharding to tp = 2 (and tp = 2, pp = 2, and back to 1 x 1): the files hold exactly the slices
  // llama_local_parameters describes for each rank, and loading restores weights and moments bit for bit.
  for (auto [tp, pp] : {std::pair<int64_t, int64_t>{2, 1}, {2, 2}}) {
    INFO("tp " << tp << " pp " << pp);
    const std::string out = dir + "/tp" + std::to_string(tp) + "pp" + std::to_string(pp);
    train::reshard(ckpt, out, tp, pp);
    for (int64_t s = 0; s < pp; ++s)
      for (int64_t r = 0; r < tp; ++r) {
        models::ParallelLayout l;
        l.tp = tp;
        l.tp_rank = r;
        l.pp = pp;
        l.pp_rank = s;
        auto f = safetensors::File::open(out + "/shard-pp" + std::to_string(s) + "-tp" + std::to_string(r) +
                                         ".safetensors");
        int64_t n = 0;
        for (auto& [p, local] : models::llama_local_parameters(c.model, l)) {
          if (p.tied_copy) continue;
          Shape want = local;
          if (p.shard_dim == 0)
            want[0] = std::min(local[0], p.global_shape[0] - p.shard_start);  // padding dropped
          INFO(p.name);
          CHECK(f.info(p.name).shape == want);
          CHECK(f.info("exp_avg_sq." + p.name).shape == want);
          n += 3;
        }
        CHECK(static_cast<int64_t>(f.names().size()) == n);
      }
    train::reshard(out, out + "_back", 1, 1);
    models::Llama model(c.model);
    train::AdamW opt(model.parameter_set(), c.optim);
    const nlohmann::json meta = train::load_checkpoint(out + "_back", model, &opt);
    CHECK(meta.at("step").get<int64_t>() == 3);
    CHECK(opt.steps_taken() == 3);
    CHECK(model.flat_params().to_vector<float>() == weights);
    CHECK(opt.exp_avg().to_vector<float>() == m);
    CHECK(opt.exp_avg_sq().to_vector<float>() == v);
  }
  CHECK_THROWS_WITH(train::reshard(ckpt, dir + "/bad", 3, 1),
                    Catch::Contains("parallel.tp (3) does not divide"));
}

TEST_CASE("BOS and EOS come from the file that defines them, several EOS ids allowed", "[convert][tokens]") {
  const std::string out = work_dir("tokens_out");
  auto info_of = [&](const std::string& dir) {
    fs::remove_all(out + "/ckpt");
    train::import_hf(dir, out + "/ckpt");
    return train::checkpoint_hf_info(train::read_checkpoint_metadata(out + "/ckpt"));
  };
  // qwen2 (Qwen2-Instruct style): generation_config.json eos [<|im_end|> 2, <|endoftext|> 66], bos 66;
  // config.json eos 2; tokenizer_config.json eos_token <|im_end|>, bos_token null.
  train::HfInfo info = info_of(kFixtures + "qwen2");
  CHECK(info.architecture == "Qwen2ForCausalLM");
  CHECK(info.eos_token_ids == std::vector<int64_t>{2, 66});
  CHECK(info.eos_from == "generation_config.json");
  CHECK(info.bos_token_id == 66);
  CHECK(info.bos_from == "generation_config.json");
  CHECK(info_of(kFixtures + "mistral").architecture == "MistralForCausalLM");

  std::string dir = fixture_copy("qwen2", "no_generation_config");
  fs::remove(dir + "/generation_config.json");
  info = info_of(dir);
  CHECK(info.eos_token_ids == std::vector<int64_t>{2});
  CHECK(info.eos_from == "config.json");
  CHECK(info.bos_token_id == 66);

  edit_config(dir, [](nlohmann::json& j) {
    j.erase("eos_token_id");
    j["bos_token_id"] = nullptr;
  });
  info = info_of(dir);
  CHECK(info.eos_token_ids == std::vector<int64_t>{2});
  CHECK(info.eos_from == "tokenizer_config.json (eos_token '<|im_end|>')");
  CHECK_FALSE(info.bos_token_id.has_value());  // bos_token null, as in Qwen2's tokenizer_config.json

  edit_json(dir + "/tokenizer_config.json", [](nlohmann::json& j) {  // the AddedToken form
    j["eos_token"] = {{"content", "<|endoftext|>"}, {"special", true}};
  });
  CHECK(info_of(dir).eos_token_ids == std::vector<int64_t>{66});

  // Nothing defines the EOS: the checkpoint records none, and generate guesses by name, saying so.
  fs::remove(dir + "/tokenizer_config.json");
  info = info_of(dir);
  CHECK(info.eos_token_ids.empty());
  const data::Tokenizer tok = qwen2_tokenizer();
  std::string note;
  CHECK(train::generation_stop_ids(info, tok, note) == std::vector<int32_t>{66});  // not <|im_end|>
  CHECK(note ==
        "no end-of-text token is recorded in the checkpoint; guessed '<|endoftext|>' (id 66) by name");
  CHECK(train::generation_stop_ids(train::checkpoint_hf_info(train::read_checkpoint_metadata(
                                       train::import_hf(kFixtures + "qwen2", out + "/recorded"))),
                                   tok, note) == std::vector<int32_t>{2, 66});
  CHECK(note.empty());  // recorded: no guess, no line
  std::string json = tok.to_json();
  for (size_t at = json.find("<|endoftext|>"); at != std::string::npos; at = json.find("<|endoftext|>"))
    json.replace(at, 13, "<|stop|>");
  CHECK(train::generation_stop_ids(info, data::Tokenizer::from_json(json), note).empty());
  CHECK(note.find("none found by name (tokenizer: no end-of-text token") != std::string::npos);

  // Bad definitions are one line naming the file and the value.
  dir = fixture_copy("qwen2", "bad_tokens");
  edit_json(dir + "/generation_config.json", [](nlohmann::json& j) { j["eos_token_id"] = {2, 99}; });
  CHECK(error_of([&] { info_of(dir); }) ==
        "convert: generation_config.json has eos id 99, outside the vocabulary [0, 67)");
  edit_json(dir + "/generation_config.json", [](nlohmann::json& j) { j["eos_token_id"] = "<|im_end|>"; });
  CHECK(error_of([&] { info_of(dir); }) ==
        "convert: generation_config.json has eos_token_id \"<|im_end|>\", "
        "expected an integer or a list of integers");
  fs::remove(dir + "/generation_config.json");
  edit_config(dir, [](nlohmann::json& j) { j.erase("eos_token_id"); });
  edit_json(dir + "/tokenizer_config.json", [](nlohmann::json& j) { j["eos_token"] = "<eos>"; });
  CHECK(error_of([&] { info_of(dir); }) == "convert: tokenizer_config.json has eos_token '<eos>', which '" +
                                               dir + "/tokenizer.json' does not contain");
}

TEST_CASE("generation stops at any recorded end-of-text id, where transformers' generate stops",
          "[convert][tokens][generate]") {
  const std::string dir = work_dir("generate");
  train::import_hf(kFixtures + "qwen2", dir + "/ckpt");
  const Config c = checkpoint_config(dir + "/ckpt");
  models::Llama model(c.model, DType::f32);
  const nlohmann::json meta = train::load_checkpoint(dir + "/ckpt", model, nullptr);
  auto ref = safetensors::File::open(kFixtures + "qwen2/reference.safetensors");
  const std::vector<int32_t> prompt = ref.load("generate_prompt").to_vector<int32_t>();
  const std::vector<int32_t> want = ref.load("generate_ids").to_vector<int32_t>();  // ends with the eos id
  REQUIRE(want.size() == 4);
  const data::Tokenizer tok = qwen2_tokenizer();  // what polder generate encodes the prompt text with
  CHECK(tok.encode(ref.metadata().at("generate_prompt_text"), false) == prompt);

  models::GenerateOptions o;
  o.max_new_tokens = 8;
  o.sampling.temperature = 0;  // greedy, as the fixture's generation_config
  std::string note;
  o.stop_ids = train::generation_stop_ids(train::checkpoint_hf_info(meta), tok, note);
  CHECK(o.stop_ids == std::vector<int32_t>{2, 66});  // <|im_end|>, <|endoftext|>: as recorded, no guess
  CHECK(note.empty());
  int64_t streamed = 0;
  const models::Generated got =
      models::generate(model, prompt, o, [&](const auto& ids) { streamed = ids.size(); });
  CHECK(got.ids == std::vector<int32_t>(want.begin(), want.end() - 1));
  CHECK(got.stopped_at == want.back());
  CHECK(streamed == 3);

  // With only the id a name guess finds (<|endoftext|>), the same greedy tokens run past <|im_end|>.
  o.stop_ids = {66};
  const models::Generated all = models::generate(model, prompt, o);
  CHECK(all.stopped_at == -1);
  REQUIRE(all.ids.size() == 8);
  CHECK(std::vector<int32_t>(all.ids.begin(), all.ids.begin() + 4) == want);
}

TEST_CASE(
    "a Qwen2 import trains (zero-decay biases), keeps its architecture and tokens, and reshards to tp 2",
    "[convert][train][qwen2]") {
  const std::string dir = work_dir("qwen2_train");
  train::import_hf(kFixtures + "qwen2", dir + "/ckpt");
  const train::HfInfo imported = train::checkpoint_hf_info(train::read_checkpoint_metadata(dir + "/ckpt"));
  Config c = checkpoint_config(dir + "/ckpt");
  testing::write_synthetic_dataset(dir + "/a", 120, c.model.vocab_size, 1);
  c.data.datasets = {{"a", dir + "/a", 1.0}};
  c.data.seq_len = 16;
  c.train.steps = 2;
  c.train.global_batch = 2;
  c.train.micro_batch = 2;
  c.train.run_dir = dir + "/run";
  c.train.resume = dir + "/ckpt";
  c.optim.lr = 1e-2;
  c.optim.weight_decay = 0.5;
  c.logging.tensorboard = false;
  std::string ckpt;
  {
    train::Trainer t(c, true);
    const std::string bias = "model.layers.1.self_attn.k_proj.bias";
    const std::vector<float> before = t.model().parameter(bias).value.to_vector<float>();
    for (const models::Parameter& p : t.model().parameters()) {
      INFO(p.name);
      if (p.name.ends_with(".bias")) CHECK_FALSE(p.decay);
    }
    t.train_step();
    t.train_step();
    CHECK(t.model().parameter(bias).value.to_vector<float>() != before);  // the biases train
    ckpt = t.save();
  }
  const train::HfInfo kept = train::checkpoint_hf_info(train::read_checkpoint_metadata(ckpt));
  CHECK(kept == imported);
  CHECK(train::export_hf(ckpt, dir + "/hf").empty());  // nothing guessed
  CHECK(read_json_file(dir + "/hf/config.json").at("architectures") == nlohmann::json{"Qwen2ForCausalLM"});
  CHECK(id_list(read_json_file(dir + "/hf/generation_config.json").at("eos_token_id")) ==
        std::vector<int64_t>{2, 66});
  CHECK(read_json_file(dir + "/hf/tokenizer_config.json").at("eos_token") == "<|im_end|>");

  // A checkpoint that records nothing (as one trained from scratch): export derives Qwen2 from the q/k/v-only
  // biases and guesses the EOS by name from the run's tokenizer, saying so.
  const std::string bare = dir + "/bare";
  fs::copy(ckpt, bare);
  edit_json(bare + "/metadata.json", [](nlohmann::json& j) { j["state"].erase("hf"); });
  CHECK(train::export_hf(bare, dir + "/hf_bare") ==
        "no end-of-text token is recorded in the checkpoint; guessed '<|endoftext|>' (id 66) by name from '" +
            c.data.tokenizer + "'");
  CHECK(read_json_file(dir + "/hf_bare/config.json").at("architectures") ==
        nlohmann::json{"Qwen2ForCausalLM"});
  const nlohmann::json bare_gen = read_json_file(dir + "/hf_bare/generation_config.json");
  CHECK(bare_gen.at("eos_token_id") == 66);
  CHECK_FALSE(bare_gen.contains("bos_token_id"));

  // A config without model.qkv_bias does not silently drop the biases.
  Config wrong = c;
  wrong.model.qkv_bias = false;
  models::Llama plain(wrong.model);
  CHECK(error_of([&] { train::load_checkpoint(ckpt, plain, nullptr); }) ==
        "checkpoint '" + ckpt +
            "' has tensor 'model.layers.0.self_attn.k_proj.bias', which the model config does "
            "not have (model.qkv_bias, o_proj_bias, tie_embeddings or num_layers differ?)");

  // tp = 2: each rank's file holds its rows of q/k/v and of their biases; loading back gives the same logits.
  models::Llama full(c.model);
  train::load_checkpoint(ckpt, full, nullptr);
  auto ref = safetensors::File::open(kFixtures + "qwen2/reference.safetensors");
  const Tensor ids = ref.load("input_ids");
  const Tensor logits = full.forward(ids);
  train::reshard(ckpt, dir + "/tp2", 2, 1);
  for (int64_t r = 0; r < 2; ++r) {
    auto f = safetensors::File::open(dir + "/tp2/shard-pp0-tp" + std::to_string(r) + ".safetensors");
    for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
      const std::string w = std::string("model.layers.0.self_attn.") + proj;
      INFO(w << " rank " << r);
      const Tensor whole = full.parameter(w + ".bias").value, part = f.load(w + ".bias");
      const int64_t rows = whole.size(0) / 2;
      CHECK(part.shape() == Shape{rows});
      CHECK(f.info(w + ".weight").shape == Shape{rows, 16});
      CHECK(same_bytes(part, whole.narrow(0, r * rows, rows).contiguous()));
    }
  }
  models::Llama back(c.model);
  train::load_checkpoint(dir + "/tp2", back, nullptr);
  CHECK(same_bytes(back.forward(ids), logits));
  CHECK(back.flat_params().to_vector<float>() == full.flat_params().to_vector<float>());
}

TEST_CASE("attention biases: zero init, tensor-parallel slices, architectures that can hold them",
          "[convert][model]") {
  ModelConfig m;
  m.vocab_size = 61;
  m.hidden_size = 32;
  m.intermediate_size = 48;
  m.num_layers = 2;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  m.qkv_bias = true;
  m.o_proj_bias = true;
  models::Llama model(m);
  model.init(7);
  for (const models::Parameter& p : model.parameters())
    if (p.name.ends_with(".bias")) {
      INFO(p.name);
      CHECK(testing::values(p.value) == std::vector<double>(static_cast<size_t>(p.value.numel()), 0.0));
    }
  CHECK(models::llama_parameter_count(m) == models::llama_parameter_count(ModelConfig{[&] {
                                              ModelConfig n = m;
                                              n.qkv_bias = n.o_proj_bias = false;
                                              return n;
                                            }()}) +
                                                2 * (32 + 16 + 16 + 32));
  models::ParallelLayout l;
  l.tp = 2;
  l.tp_rank = 1;
  for (auto& [p, local] : models::llama_local_parameters(m, l)) {
    INFO(p.name);
    if (p.name == "model.layers.0.self_attn.k_proj.bias") {
      CHECK(p.shard_dim == 0);
      CHECK(p.shard_start == 8);
      CHECK(local == Shape{8});
    }
    if (p.name == "model.layers.0.self_attn.o_proj.bias") {
      CHECK(p.shard_dim == -1);  // added after the reduction: every rank holds all of it
      CHECK(local == Shape{32});
    }
  }

  CHECK(train::export_architecture(m, "") == "LlamaForCausalLM");
  m.o_proj_bias = false;
  CHECK(train::export_architecture(m, "") == "Qwen2ForCausalLM");  // Llama cannot hold q/k/v-only biases
  CHECK(error_of([&] { train::export_architecture(m, "LlamaForCausalLM"); }) ==
        "convert: LlamaForCausalLM has biases on q, k, v and o_proj or on none, but the model has qkv_bias "
        "true, "
        "o_proj_bias false");
  CHECK(error_of([&] { train::export_architecture(m, "MistralForCausalLM"); }) ==
        "convert: MistralForCausalLM has no biases, but the model has qkv_bias true, o_proj_bias false");
  m.qkv_bias = false;
  CHECK(train::export_architecture(m, "") == "LlamaForCausalLM");
  CHECK(error_of([&] { train::export_architecture(m, "Qwen2ForCausalLM"); }) ==
        "convert: Qwen2ForCausalLM has biases on q, k, v only, but the model has qkv_bias false, o_proj_bias "
        "false");
}

TEST_CASE("attention bias gradients match finite differences in f64 (q/k/v sharded-style, o_proj broadcast)",
          "[convert][model][grad]") {
  const std::string dir = work_dir("bias_grad");
  train::import_hf(kFixtures + "llama_bias", dir + "/ckpt");
  const Config c = checkpoint_config(dir + "/ckpt");
  models::Llama model(c.model, DType::f64);
  train::load_checkpoint(dir + "/ckpt", model, nullptr);
  auto ref = safetensors::File::open(kFixtures + "llama_bias/reference.safetensors");
  const Tensor ids = ref.load("input_ids");
  std::vector<int32_t> t(static_cast<size_t>(ids.numel()));
  for (size_t i = 0; i < t.size(); ++i)
    t[i] = static_cast<int32_t>((i * 37 + 11) % 67);  // spread over the vocab
  const Tensor targets = Tensor::from_vector(t, ids.shape());
  model.zero_grad();
  model.loss(ids, targets).backward();
  for (const char* name : {"model.layers.0.self_attn.q_proj.bias", "model.layers.1.self_attn.v_proj.bias",
                           "model.layers.0.self_attn.o_proj.bias", "model.layers.1.self_attn.o_proj.bias"}) {
    models::Parameter& p = model.parameter(name);
    for (int64_t i : {int64_t{1}, p.value.numel() - 2}) {
      INFO(name << "[" << i << "]");
      const double analytic = p.grad.to_vector<double>()[static_cast<size_t>(i)];
      double* v = p.value.data<double>() + i;
      const double v0 = *v, eps = 1e-6;
      double loss[2];
      for (int s = 0; s < 2; ++s) {
        NoGradGuard guard;
        *v = v0 + (s ? eps : -eps);
        loss[s] = model.loss(ids, targets).to_vector<double>()[0];
      }
      *v = v0;
      const double numeric = (loss[1] - loss[0]) / (2 * eps);
      CHECK(std::abs(analytic) > 1e-6);  // the check is not vacuous
      CHECK(std::abs(analytic - numeric) <= 1e-7 * std::max(1.0, std::abs(numeric)));
    }
  }
}

TEST_CASE("Qwen2 configs: sliding window refused only when in use", "[convert][errors][qwen2]") {
  const nlohmann::json base = read_json_file(kFixtures + "qwen2/config.json");
  auto model_of = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = base;
    edit(j);
    return error_of([&] { train::hf_config_to_model(j); });
  };
  // Qwen2-0.5B's own keys: a window that use_sliding_window false switches off.
  CHECK(model_of([](nlohmann::json& j) {
          j["use_sliding_window"] = false;
          j["sliding_window"] = 131072;
          j["max_window_layers"] = 1;
          j.erase("layer_types");
        }) == "(no error)");
  CHECK(model_of([](nlohmann::json& j) {  // in use from layer 2 of 2: no layer has it
          j["use_sliding_window"] = true;
          j["sliding_window"] = 4096;
          j["max_window_layers"] = 2;
          j.erase("layer_types");
        }) == "(no error)");
  CHECK(
      model_of([](nlohmann::json& j) {
        j["use_sliding_window"] = true;
        j["sliding_window"] = 4096;
        j["max_window_layers"] = 1;
        j.erase("layer_types");
      }) ==
      "convert: Qwen2ForCausalLM with a sliding window in use (use_sliding_window true, sliding_window 4096, "
      "max_window_layers 1 of 2 layers) is not supported (polder has full attention only)");
  CHECK(model_of([](nlohmann::json& j) { j["layer_types"][1] = "sliding_attention"; }) ==
        "convert: Qwen2ForCausalLM with layer_types[1] 'sliding_attention' is not supported (polder has full "
        "attention only)");
  CHECK(model_of([](nlohmann::json& j) {
          j["architectures"] = {"LlamaForCausalLM"};
          j["mlp_bias"] = true;
        }) == "convert: mlp_bias true is not supported (polder's MLP has no biases)");
  nlohmann::json by_type = base;
  by_type.erase("architectures");
  CHECK(train::hf_architecture(by_type) == "Qwen2ForCausalLM");
  CHECK(train::hf_config_to_model(by_type).qkv_bias);
}
