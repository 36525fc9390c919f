#!/usr/bin/env python3
"""Tiny random Hugging Face model folders for polder's checkpoint conversion tests (issue 7): Llama GQA untied,
Llama tied embeddings, Llama with llama3 rope scaling saved as several shards, and Mistral without sliding window.
Each folder holds what save_pretrained writes (config.json, generation_config.json, *.safetensors and, when
sharded, model.safetensors.index.json) plus reference.safetensors: input_ids (I32, (2, 9)), logits
(F32, (2, 9, vocab)) from model(input_ids).logits in float32 eval mode, and inv_freq (F32, (head_dim/2,)) of the
rotary embedding the model actually uses, so the C++ side checks its RoPE frequencies, llama3 scaling included.

Usage: /work/venv-torch/bin/python scripts/reference/make_hf_fixtures.py [out_dir]   (default tests/fixtures/hf)
Needs torch, transformers, safetensors. Deterministic: CPU, fixed seeds, float32. Weights are drawn here, not by
transformers' init: matrices N(0, 0.1^2) so logits are O(1) (HF's 0.02 gives logits near 0, where a relative
tolerance says little), norm weights 1 + N(0, 0.1^2) so a missing or misplaced norm weight shows."""
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

BASE = dict(vocab_size=67, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2, pad_token_id=None, attention_bias=False, mlp_bias=False,
            hidden_act="silu", torch_dtype="float32")
BATCH, SEQ = 2, 9
# llama3 scaling at head_dim 8, theta 500000: wavelengths 2*pi/inv_freq are 6.3, 167, 4443, 118000. With
# original_max_position_embeddings 256 and the usual low/high factors 1 and 4, the thresholds are
# high_freq_wavelen 64 and low_freq_wavelen 256, so the 4 frequencies hit all three branches: kept, smoothed,
# divided by factor (twice). max_position_embeddings must exceed the original (transformers warns otherwise): 8 * 256.
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 256}
KEEP = ("config.json", "generation_config.json", "model.safetensors.index.json")

FIXTURES = [
    # name, model class, config class, extra config, save_pretrained kwargs, seed
    ("llama_gqa", LlamaForCausalLM, LlamaConfig,
     dict(tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), {}, 11),
    ("llama_tied", LlamaForCausalLM, LlamaConfig,
     dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), {}, 12),
    ("llama3_scaled_sharded", LlamaForCausalLM, LlamaConfig,
     dict(tie_word_embeddings=False, max_position_embeddings=2048,
          rope_parameters=dict(LLAMA3_SCALING, rope_theta=500000.0)), dict(max_shard_size="20KB"), 13),
    ("mistral", MistralForCausalLM, MistralConfig,
     dict(tie_word_embeddings=False, sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
     {}, 14),
]
# transformers 5 writes "rope_parameters" (rope_theta inside) and "dtype"; configs on the Hub (Llama 3.1 included)
# carry top-level "rope_theta", "rope_scaling" and "torch_dtype". This folder is rewritten in that older form, so
# the importer is tested on both; the reload check below proves transformers reads it back to the same model.
LEGACY_CONFIG = {"llama3_scaled_sharded"}


def write_legacy_config(folder):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope
    cfg["torch_dtype"] = cfg.pop("dtype")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def default_inv_freq(theta, dim):
    # the unscaled frequencies exactly as transformers computes them (float32)
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def init_weights(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is the embedding: listed once
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def build(out_dir, name, model_cls, config_cls, extra, save_kwargs, seed):
    cfg = config_cls(**dict(BASE, **extra))
    torch.manual_seed(seed)
    model = model_cls(cfg).float().eval()
    init_weights(model, seed)
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), name

    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True, **save_kwargs)
    for f in os.listdir(folder):
        if not (f in KEEP or f.endswith(".safetensors")):
            os.remove(os.path.join(folder, f))
    if name in LEGACY_CONFIG:
        write_legacy_config(folder)

    gen = torch.Generator().manual_seed(seed + 100)
    ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()  # (B, T, V)
    inv_freq = model.model.rotary_emb.inv_freq.detach().float().clone()  # (head_dim/2,)

    # reload from disk: the saved folder must reproduce the logits (catches a dropped or mis-tied tensor)
    reloaded = model_cls.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits
    assert torch.equal(again, logits), f"{name}: reloaded logits differ by {(again - logits).abs().max()}"
    assert torch.equal(reloaded.model.rotary_emb.inv_freq, inv_freq), f"{name}: reloaded inv_freq differs"

    save_file({"input_ids": ids.to(torch.int32).contiguous(), "logits": logits.contiguous(),
               "inv_freq": inv_freq.contiguous()}, os.path.join(folder, "reference.safetensors"))

    theta = cfg.rope_parameters["rope_theta"]
    base = default_inv_freq(theta, cfg.head_dim)
    files = sorted(os.listdir(folder))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    print(f"{name}: {len(files)} files, {size} bytes: {', '.join(files)}")
    print(f"  logits mean {logits.mean():.4f} std {logits.std():.4f} max|.| {logits.abs().max():.4f}")
    print(f"  inv_freq unscaled {base.tolist()}")
    if not torch.equal(inv_freq, base):
        print(f"  inv_freq used     {inv_freq.tolist()}")
    tensors = {}
    for f in files:
        if f.startswith("model") and f.endswith(".safetensors"):
            with open(os.path.join(folder, f), "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            tensors[f] = sorted(k for k in header if k != "__metadata__")
    print(f"  lm_head.weight stored: {any('lm_head.weight' in v for v in tensors.values())}; "
          f"tensors per file: {({f: len(v) for f, v in tensors.items()})}")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "tests",
                                                                   "fixtures", "hf")
    os.makedirs(out_dir, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for fixture in FIXTURES:
        build(out_dir, *fixture)


if __name__ == "__main__":
    main()
