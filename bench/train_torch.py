#!/usr/bin/env python3
"""PyTorch-eager side of bench/train_cpu.sh: trains the Llama of scripts/reference/llama_reference.py (the same
equations polder implements) on random tokens with the shape, batch, accumulation, AdamW settings and thread
count of a polder config plus the same --set overrides, and prints the median step time after the first step.

Usage: python bench/train_torch.py -c configs/tiny-nl.yaml [--set model.max_seq_len=256 ...]
                                   [--precision f32|bf16] [--steps 6] [--threads 2] [--json]
bf16 is torch.autocast('cpu', dtype=torch.bfloat16) over f32 weights (PyTorch's usual mixed precision); polder's
bf16 policy instead keeps bf16 weights/activations with f32 gradients and master weights. Data loading is left
out (random ids): in polder it is a memcpy of an mmapped range per micro-batch."""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "reference"))
from llama_reference import apply_rope, rms_norm, rope_tables  # noqa: E402  (the reference's own equations)


def load_config(path, overrides):
    """YAML plus polder-style `a.b=c` overrides (values parsed as YAML scalars)."""
    with open(path) as f:
        cfg = yaml.safe_load(f)
    for o in overrides:
        key, _, value = o.partition("=")
        section, _, name = key.partition(".")
        cfg.setdefault(section, {})[name] = yaml.safe_load(value)
    return cfg


def model_dims(m):
    heads = m["num_heads"]
    return dict(vocab_size=m["vocab_size"], hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
                num_layers=m["num_layers"], num_heads=heads, num_kv_heads=m.get("num_kv_heads") or heads,
                head_dim=m.get("head_dim") or m["hidden_size"] // heads, rope_theta=float(m.get("rope_theta", 1e4)),
                rms_norm_eps=float(m.get("rms_norm_eps", 1e-5)), tie_embeddings=bool(m.get("tie_embeddings", False)),
                max_seq_len=m.get("max_seq_len", 2048))


def init_params(c, std):
    """polder's parameter set (models/llama/model.cpp): tied embedding = LM head when tie_embeddings."""
    C, I, D = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    H, Hkv, V = c["num_heads"], c["num_kv_heads"], c["vocab_size"]
    shapes = [("model.embed_tokens.weight", (V, C))]
    for l in range(c["num_layers"]):
        p = f"model.layers.{l}."
        shapes += [(p + "input_layernorm.weight", (C,)), (p + "self_attn.q_proj.weight", (H * D, C)),
                   (p + "self_attn.k_proj.weight", (Hkv * D, C)), (p + "self_attn.v_proj.weight", (Hkv * D, C)),
                   (p + "self_attn.o_proj.weight", (C, H * D)), (p + "post_attention_layernorm.weight", (C,)),
                   (p + "mlp.gate_proj.weight", (I, C)), (p + "mlp.up_proj.weight", (I, C)),
                   (p + "mlp.down_proj.weight", (C, I))]
    shapes.append(("model.norm.weight", (C,)))
    if not c["tie_embeddings"]:
        shapes.append(("lm_head.weight", (V, C)))
    params = {}
    for name, shape in shapes:
        t = torch.ones(shape) if name.endswith("norm.weight") else std * torch.randn(shape)
        params[name] = t.requires_grad_(True)
    return params


def attention(q, k, v, sdpa):  # q (B, T, H, D), k/v (B, T, Hkv, D) -> (B, T, H, D)
    B, T, H, D = q.shape
    rep = H // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    if sdpa:
        o = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                             is_causal=True)
        return o.transpose(1, 2)
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)  # the reference's attention
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", torch.softmax(s, dim=-1), v)


def forward(c, params, ids, cos, sin, sdpa):
    """llama_reference.forward/block with a tied LM head and a selectable attention kernel."""
    B, T = ids.shape
    H, Hkv, D, eps = c["num_heads"], c["num_kv_heads"], c["head_dim"], c["rms_norm_eps"]
    x = params["model.embed_tokens.weight"][ids]
    for l in range(c["num_layers"]):
        pre = f"model.layers.{l}."
        h = rms_norm(x, params[pre + "input_layernorm.weight"], eps)
        q = (h @ params[pre + "self_attn.q_proj.weight"].T).view(B, T, H, D)
        k = (h @ params[pre + "self_attn.k_proj.weight"].T).view(B, T, Hkv, D)
        v = (h @ params[pre + "self_attn.v_proj.weight"].T).view(B, T, Hkv, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        a = attention(q, k, v, sdpa).reshape(B, T, H * D)
        x = x + a @ params[pre + "self_attn.o_proj.weight"].T
        h = rms_norm(x, params[pre + "post_attention_layernorm.weight"], eps)
        g = h @ params[pre + "mlp.gate_proj.weight"].T
        u = h @ params[pre + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ params[pre + "mlp.down_proj.weight"].T
    x = rms_norm(x, params["model.norm.weight"], eps)
    head = params["model.embed_tokens.weight" if c["tie_embeddings"] else "lm_head.weight"]
    return x @ head.T


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--precision", choices=["f32", "bf16"], default=None, help="default: the config's train.precision")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0: the config's train.threads or torch's default")
    ap.add_argument("--attention", choices=["eager", "sdpa"], default="eager",
                    help="eager: the reference's einsum/softmax attention; sdpa: F.scaled_dot_product_attention")
    ap.add_argument("--json", action="store_true", help="print one JSON line with the result")
    a = ap.parse_args()

    cfg = load_config(a.config, a.overrides)
    c = model_dims(cfg["model"])
    train, optim = cfg["train"], cfg.get("optim", {})
    precision = a.precision or train.get("precision", "f32")
    threads = a.threads or int(train.get("threads", 0) or 0)
    if threads:
        torch.set_num_threads(threads)
    T = int(cfg["data"]["seq_len"])
    micro, global_batch = int(train["micro_batch"]), int(train["global_batch"])
    accumulation = global_batch // micro
    torch.manual_seed(int(train.get("seed", 1234)))

    params = init_params(c, float(cfg["model"].get("init_std", 0.02)))
    decay = [p for n, p in params.items() if not n.endswith("norm.weight") and n != "model.embed_tokens.weight"]
    no_decay = [p for n, p in params.items() if n.endswith("norm.weight") or n == "model.embed_tokens.weight"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(optim.get("weight_decay", 0.1))},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=float(optim.get("lr", 3e-4)), betas=(float(optim.get("beta1", 0.9)),
                                                                   float(optim.get("beta2", 0.95))),
                            eps=float(optim.get("eps", 1e-8)))
    cos, sin = rope_tables(T, c["head_dim"], c["rope_theta"])
    grad_clip = float(optim.get("grad_clip", 1.0))
    sdpa = a.attention == "sdpa"

    times, losses = [], []
    for step in range(a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss_sum = 0.0
        for _ in range(accumulation):
            ids = torch.randint(0, c["vocab_size"], (micro, T + 1))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = forward(c, params, ids[:, :-1], cos, sin, sdpa)
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            loss_sum += loss.item()
            (loss / accumulation).backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=grad_clip)
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss_sum / accumulation)
        if not a.json:
            print(f"torch step {step + 1}/{a.steps} | loss {losses[-1]:.4f} | {global_batch * T / times[-1]:.0f} tok/s "
                  f"| {times[-1]:.3f} s/step", flush=True)

    timed = times[1:] if len(times) > 1 else times
    step_s = statistics.median(timed)
    result = {"precision": precision, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "attention": a.attention, "seq_len": T, "global_batch": global_batch, "micro_batch": micro,
              "step_time_s": step_s, "tokens_per_s": global_batch * T / step_s, "step_times_s": times,
              "losses": losses}
    if a.json:
        print(json.dumps(result))
    else:
        print(f"torch {torch.__version__} {precision} ({a.attention} attention), {result['threads']} threads: "
              f"median {step_s:.3f} s/step after step 1, {result['tokens_per_s']:.1f} tok/s")


if __name__ == "__main__":
    main()
