#!/usr/bin/env python3
"""Tiny random Hugging Face model folders for polder's checkpoint conversion tests (issue 7): Llama GQA untied,
Llama tied embeddings, Llama with llama3 rope scaling saved as several shards, Mistral without sliding window
and (issue 19) Llama with attention_bias and a tied Qwen2 whose end-of-text tokens are <|im_end|> and
<|endoftext|> (generation_config.json eos_token_id a list; tokenizer.json and tokenizer_config.json too).
Each folder holds what save_pretrained writes (config.json, generation_config.json, *.safetensors and, when
sharded, model.safetensors.index.json) plus reference.safetensors: input_ids (I32, (2, 9)), logits
(F32, (2, 9, vocab)) from model(input_ids).logits in float32 eval mode, and inv_freq (F32, (head_dim/2,)) of the
rotary embedding the model actually uses, so the C++ side checks its RoPE frequencies, llama3 scaling included.
The qwen2 folder's reference also has generate_prompt (I32, (1, 5)) and generate_ids (I32): what
model.generate(generate_prompt, do_sample=False) returns after the prompt, using the saved generation_config
(greedy, stops at either eos id; the stop token is the last id), and the prompt's text in its __metadata__
(generate_prompt_text). The prompt is chosen (seeded search) so that greedy decoding reaches a new token after
3 other tokens, and <|im_end|> is given that id in the folder's character-level tokenizer.json.

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
from tokenizers import AddedToken, Tokenizer
from tokenizers.decoders import Metaspace as MetaspaceDecoder
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import Metaspace
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

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
# Smaller folders for issue 19 (a few tens of KB): hidden 16, 4 heads of 4, 2 KV heads, MLP 32; tp = 2 divides
# heads, KV heads and the MLP, so the qwen2 folder also serves the tensor-parallel reshard test.
SMALL = dict(hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=4)
QWEN2 = dict(vocab_size=67, num_hidden_layers=2, max_position_embeddings=64, rms_norm_eps=1e-5,
             hidden_act="silu", torch_dtype="float32", tie_word_embeddings=True, use_sliding_window=False, sliding_window=None,
             max_window_layers=2, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **SMALL)
GEN_PROMPT, GEN_STEPS, GEN_STOP_AFTER = 5, 8, 3
# The qwen2 tokenizer: one token per character (67 = the vocabulary), Metaspace pre-tokenizer and decoder, no
# merges: a SentencePiece-style BPE that both transformers and polder run. Two ids become the special tokens.
CHARS = "\u2581abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?"

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
    ("llama_bias", LlamaForCausalLM, LlamaConfig,
     dict(tie_word_embeddings=False, attention_bias=True,
          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **SMALL), {}, 15),
    ("qwen2", Qwen2ForCausalLM, Qwen2Config, QWEN2, {}, 16),
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


def greedy(model, ids, steps):
    # plain argmax loop over the full sequence (no cache, no eos): the continuation to choose the eos from
    out = ids
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(input_ids=out).logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
    return out[0, ids.shape[1]:].tolist()


def char_tokenizer(special):
    # special: {id: name}; every other id i is the character CHARS[i]
    assert len(CHARS) == 67
    vocab = {special.get(i, c): i for i, c in enumerate(CHARS)}
    tok = Tokenizer(BPE(vocab, [], unk_token=None))
    tok.pre_tokenizer = Metaspace()
    tok.decoder = MetaspaceDecoder()
    tok.add_special_tokens([AddedToken(n, special=True) for n in special.values()])
    return tok


def choose_eos(model, vocab, seed):
    """A prompt text (4 letters) whose greedy continuation meets a new token after GEN_STOP_AFTER others: that
    token becomes <|im_end|>; <|endoftext|> is the highest id neither the prompt nor the first
    GEN_STOP_AFTER + 1 generated tokens use (so renaming both leaves the prompt's ids as they are)."""
    gen = torch.Generator().manual_seed(seed + 200)
    plain = char_tokenizer({})
    for _ in range(1000):
        text = "".join(CHARS[1 + i] for i in torch.randint(0, 52, (GEN_PROMPT - 1,), generator=gen).tolist())
        ids = plain.encode(text).ids
        assert len(ids) == GEN_PROMPT, (text, ids)
        prompt = torch.tensor([ids])
        cont = greedy(model, prompt, GEN_STEPS)
        stop = cont[GEN_STOP_AFTER]
        if stop not in cont[:GEN_STOP_AFTER] and stop not in ids:
            used = set(cont[:GEN_STOP_AFTER + 1]) | set(ids)
            endoftext = max(i for i in range(vocab) if i not in used)
            return text, prompt, stop, endoftext
    raise RuntimeError("no prompt found")


def write_tokenizer(folder, im_end, endoftext, text, prompt):
    # The character tokenizer naming the special tokens at the chosen ids, and a Qwen2-style
    # tokenizer_config.json (bos_token null, eos_token <|im_end|>) for the importer's tokenizer_config path.
    tok = char_tokenizer({im_end: "<|im_end|>", endoftext: "<|endoftext|>"})
    assert tok.token_to_id("<|im_end|>") == im_end and tok.token_to_id("<|endoftext|>") == endoftext
    assert tok.encode(text).ids == prompt[0].tolist()
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "model_max_length": 64, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
        f.write("\n")


def build(out_dir, name, model_cls, config_cls, extra, save_kwargs, seed):
    base = BASE if config_cls is not Qwen2Config else {}
    cfg = config_cls(**dict(base, **extra))
    torch.manual_seed(seed)
    model = model_cls(cfg).float().eval()
    init_weights(model, seed)
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), name

    extra_ref = {}
    if config_cls is Qwen2Config:
        # Qwen2-Instruct style: config.json eos <|im_end|>, bos <|endoftext|>; generation_config.json eos both
        text, prompt, im_end, endoftext = choose_eos(model, cfg.vocab_size, seed)
        model.config.bos_token_id, model.config.eos_token_id = endoftext, im_end
        model.config.pad_token_id = endoftext
        model.generation_config.bos_token_id = endoftext
        model.generation_config.eos_token_id = [im_end, endoftext]
        model.generation_config.pad_token_id = endoftext
        extra_ref["generate_prompt"] = prompt.to(torch.int32)

    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True, **save_kwargs)
    for f in os.listdir(folder):
        if not (f in KEEP or f.endswith(".safetensors")):
            os.remove(os.path.join(folder, f))
    if config_cls is Qwen2Config:
        write_tokenizer(folder, im_end, endoftext, text, prompt)
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
    assert type(reloaded).__name__ == model_cls.__name__, f"{name}: reloaded as {type(reloaded).__name__}"
    if "generate_prompt" in extra_ref:
        prompt = extra_ref["generate_prompt"].long()
        with torch.no_grad():  # the saved generation_config: greedy, eos_token_id [im_end, endoftext]
            out = reloaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=GEN_STEPS)
        new = out[0, prompt.shape[1]:]
        want = greedy(model, prompt, GEN_STOP_AFTER) + [im_end]
        assert new.tolist() == want, f"{name}: generate gave {new.tolist()}, expected {want}"
        extra_ref["generate_ids"] = new.to(torch.int32)
        print(f"  generate: prompt {text!r} = {prompt[0].tolist()} -> {new.tolist()} "
              f"(eos <|im_end|> {im_end}, <|endoftext|> {endoftext})")

    save_file(dict({"input_ids": ids.to(torch.int32).contiguous(), "logits": logits.contiguous(),
                    "inv_freq": inv_freq.contiguous()}, **{k: v.contiguous() for k, v in extra_ref.items()}),
              os.path.join(folder, "reference.safetensors"),
              metadata={"generate_prompt_text": text} if "generate_ids" in extra_ref else None)

    theta = cfg.rope_parameters["rope_theta"]
    base = default_inv_freq(theta, cfg.hidden_size // cfg.num_attention_heads)
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
