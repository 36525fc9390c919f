// polder convert: HF fixtures (tests/fixtures/hf, made by transformers) imported and run against
// transformers' logits and inv_freq; export -> re-import bit-identical; a polder-trained checkpoint through
// HF and back; offline resharding checked against llama_local_parameters; one clear message per kind of bad
// input.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/safetensors.h"
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

std::string work_dir(const std::string& name) { return testing::fresh_dir("convert_work", name); }

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

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  std::ifstream in(dir + "/config.json");
  nlohmann::json j = nlohmann::json::parse(in);
  edit(j);
  std::ofstream(dir + "/config.json") << j.dump(2);
}

}  // namespace

TEST_CASE("HF fixtures import, match transformers' logits and inv_freq, and round-trip bit for bit",
          "[convert]") {
  for (std::string name : {"llama_gqa", "llama_tied", "llama3_scaled_sharded", "mistral"}) {
    INFO("fixture " << name);
    if (!fs::exists(kFixtures + name)) continue;
    const std::string dir = work_dir(name);
    train::import_hf(kFixtures + name, dir + "/ckpt");
    const Config c = checkpoint_config(dir + "/ckpt");
    CHECK(c.model.vocab_size == 67);
    CHECK(c.model.tie_embeddings == (name == "llama_tied"));
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
        "convert: architecture 'GPT2LMHeadModel' is not supported (LlamaForCausalLM, MistralForCausalLM)");

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
  train::export_hf(ckpt, dir + "/hf");
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
    train::AdamW opt(model, c.optim);
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
