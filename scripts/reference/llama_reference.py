#!/usr/bin/env python3
"""Reference state of a tiny Llama for tests/test_llama_reference.cpp: a Llama written from the equations in
PyTorch (float32), cross-checked against transformers' LlamaForCausalLM when transformers is importable. Records,
for batch 0 with the initial weights, the logits, the loss, every block's output and every parameter's gradient;
then 5 steps of clip_grad_norm_ + torch.optim.AdamW under polder's warmup + cosine schedule (the loss and the
pre-clip grad norm of each step) and the weights after them.

Usage: python scripts/reference/llama_reference.py [out_dir]   (default tests/fixtures/llama)
Needs torch, numpy, safetensors (transformers optional). Deterministic: CPU, fixed seeds, float32."""
import json
import math
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

CONFIG = dict(vocab_size=67, hidden_size=48, intermediate_size=112, num_layers=2, num_heads=6, num_kv_heads=2,
              head_dim=8, rope_theta=10000.0, rms_norm_eps=1e-5, tie_embeddings=False, max_seq_len=32)
BATCH, SEQ, NUM_BATCHES, STEPS = 2, 12, 6, 5
OPTIM = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, grad_clip=1.0)
SCHEDULE = dict(type="cosine", warmup_steps=2, min_lr_ratio=0.1, total_steps=STEPS)
IGNORED = [(0, 3), (1, 7)]  # (row, position) of batch 0's targets set to -100
SEED = 1234


def parameter_shapes(c):
    """HF names and shapes in polder's canonical order (models/llama/model.cpp llama_parameter_shapes)."""
    C, I, D = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    H, Hkv, V = c["num_heads"], c["num_kv_heads"], c["vocab_size"]
    out = [("model.embed_tokens.weight", (V, C))]
    for l in range(c["num_layers"]):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (C,)), (p + "self_attn.q_proj.weight", (H * D, C)),
                (p + "self_attn.k_proj.weight", (Hkv * D, C)), (p + "self_attn.v_proj.weight", (Hkv * D, C)),
                (p + "self_attn.o_proj.weight", (C, H * D)), (p + "post_attention_layernorm.weight", (C,)),
                (p + "mlp.gate_proj.weight", (I, C)), (p + "mlp.up_proj.weight", (I, C)),
                (p + "mlp.down_proj.weight", (C, I))]
    out += [("model.norm.weight", (C,)), ("lm_head.weight", (V, C))]
    return out


def is_norm(name):
    return name.endswith("norm.weight")


def init_params(c, gen):
    params = {}
    for name, shape in parameter_shapes(c):
        if is_norm(name):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)  # not 1, so a wrong norm weight shows
        else:
            t = 0.02 * torch.randn(shape, generator=gen)
        params[name] = t.float().requires_grad_(True)
    return params


def rms_norm(x, w, eps):
    # x * rsqrt(mean(x^2) + eps) * w over the last dim
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(T, D, theta, dtype=torch.float32):
    """HF rotate_half convention. float32: inv_freq and angles in float32, as HF computes them. float64: exact
    angles pos / theta^(2i/D) in float64, as polder's f64 tables (core/ops_nn.cpp make_rope_table)."""
    if dtype == torch.float64:
        angle = torch.arange(T, dtype=torch.float64)[:, None] / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    else:
        inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
        angle = torch.arange(T, dtype=torch.int64).float()[:, None] * inv_freq[None, :]  # (T, D/2)
    emb = torch.cat([angle, angle], dim=-1)  # (T, D)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):  # x (B, T, H, D), cos/sin (T, D)
    return x * cos[None, :, None, :] + rotate_half(x) * sin[None, :, None, :]


def attention(q, k, v):  # q (B, T, H, D), k/v (B, T, Hkv, D) -> (B, T, H, D)
    B, T, H, D = q.shape
    rep = H // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)  # query head h uses kv head h // rep
    v = v.repeat_interleave(rep, dim=2)
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhts,bshd->bthd", p, v)


def block(c, params, l, x, cos, sin):
    pre = f"model.layers.{l}."
    B, T, _ = x.shape
    H, Hkv, D, eps = c["num_heads"], c["num_kv_heads"], c["head_dim"], c["rms_norm_eps"]
    h = rms_norm(x, params[pre + "input_layernorm.weight"], eps)
    q = (h @ params[pre + "self_attn.q_proj.weight"].T).view(B, T, H, D)
    k = (h @ params[pre + "self_attn.k_proj.weight"].T).view(B, T, Hkv, D)
    v = (h @ params[pre + "self_attn.v_proj.weight"].T).view(B, T, Hkv, D)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    a = attention(q, k, v).reshape(B, T, H * D)
    x = x + a @ params[pre + "self_attn.o_proj.weight"].T
    h = rms_norm(x, params[pre + "post_attention_layernorm.weight"], eps)
    g = h @ params[pre + "mlp.gate_proj.weight"].T
    u = h @ params[pre + "mlp.up_proj.weight"].T
    return x + (torch.nn.functional.silu(g) * u) @ params[pre + "mlp.down_proj.weight"].T


def forward(c, params, ids, hidden=None):
    """ids (B, T) -> logits (B, T, V); hidden, if a list, receives the embedding and every block's output."""
    T = ids.shape[1]
    cos, sin = rope_tables(T, c["head_dim"], c["rope_theta"], params["model.norm.weight"].dtype)
    x = params["model.embed_tokens.weight"][ids]
    if hidden is not None:
        hidden.append(x.detach().clone())
    for l in range(c["num_layers"]):
        x = block(c, params, l, x, cos, sin)
        if hidden is not None:
            hidden.append(x.detach().clone())
    x = rms_norm(x, params["model.norm.weight"], c["rms_norm_eps"])
    return x @ params["lm_head.weight"].T


def loss_fn(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100)


def lr_at(step):
    """train/optimizer.cpp lr_at for the cosine schedule."""
    peak, warm, total = OPTIM["lr"], SCHEDULE["warmup_steps"], SCHEDULE["total_steps"]
    if step < warm:
        return peak * (step + 1) / warm
    lo = peak * SCHEDULE["min_lr_ratio"]
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return lo + (peak - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def transformers_check(c, params, ids, targets, logits, loss):
    """Same weights in LlamaForCausalLM (eager attention): max |diff| of logits, loss and gradients."""
    try:
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except Exception as e:  # optional
        return {"skipped": f"transformers not importable: {e}"}
    hf_config = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                            intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_layers"],
                            num_attention_heads=c["num_heads"], num_key_value_heads=c["num_kv_heads"],
                            head_dim=c["head_dim"], rope_theta=c["rope_theta"], rms_norm_eps=c["rms_norm_eps"],
                            tie_word_embeddings=c["tie_embeddings"], max_position_embeddings=c["max_seq_len"],
                            attention_bias=False, mlp_bias=False, hidden_act="silu", attn_implementation="eager")
    model = LlamaForCausalLM(hf_config).float()
    model.load_state_dict({k: v.detach() for k, v in params.items()}, strict=True)
    out = model(input_ids=ids.long())
    hf_logits = out.logits
    hf_loss = loss_fn(hf_logits, targets)
    hf_loss.backward()
    named = dict(model.named_parameters())
    grad_diff = max((named[n].grad - p.grad).abs().max().item() for n, p in params.items())
    return {"transformers_version": transformers.__version__,
            "max_abs_logits_diff": (hf_logits - logits).abs().max().item(),
            "abs_loss_diff": abs(hf_loss.item() - loss.item()),
            "max_abs_grad_diff": grad_diff}


def train(c, params, inputs, targets):
    decay = [p for n, p in params.items() if not is_norm(n) and n != "model.embed_tokens.weight"]
    no_decay = [p for n, p in params.items() if is_norm(n) or n == "model.embed_tokens.weight"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": OPTIM["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=OPTIM["lr"], betas=OPTIM["betas"], eps=OPTIM["eps"], foreach=False)
    losses, norms, lrs = [], [], []
    for s in range(STEPS):
        loss = loss_fn(forward(c, params, inputs[s]), targets[s])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=OPTIM["grad_clip"])
        lr = lr_at(s)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        norms.append(norm.item())
        lrs.append(lr)
        dtype = next(iter(params.values())).dtype
        print(f"{dtype} step {s}: loss {loss.item():.8f} grad_norm {norm.item():.8f} lr {lr:.6g}")
    return losses, norms, lrs, {n: p.detach() for n, p in params.items()}


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "tests",
                                                                  "fixtures", "llama")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    c = CONFIG
    gen = torch.Generator().manual_seed(SEED)
    params = init_params(c, gen)
    ids = torch.randint(0, c["vocab_size"], (NUM_BATCHES, BATCH, SEQ + 1), generator=gen, dtype=torch.int64)
    inputs = ids[:, :, :-1].contiguous()
    targets = ids[:, :, 1:].clone()
    for row, pos in IGNORED:
        targets[0, row, pos] = -100

    tensors = {"input_ids": inputs.to(torch.int32).numpy(), "targets": targets.to(torch.int32).numpy()}
    for name, p in params.items():
        tensors["init." + name] = p.detach().numpy().copy()

    # Batch 0 with the initial weights: logits, loss, block outputs, gradients.
    hidden = []
    logits = forward(c, params, inputs[0], hidden)
    loss = loss_fn(logits, targets[0])
    loss.backward()
    tensors["logits"] = logits.detach().numpy().copy()
    tensors["loss"] = np.array([loss.item()], dtype=np.float32)
    tensors["hidden.embed"] = hidden[0].numpy()
    for l in range(c["num_layers"]):
        tensors[f"hidden.{l}"] = hidden[l + 1].numpy()
    for name, p in params.items():
        tensors["grad." + name] = p.grad.detach().numpy().copy()
    hf = transformers_check(c, params, inputs[0], targets[0], logits, loss)
    print("transformers cross-check:", hf)
    if "skipped" not in hf:
        assert hf["max_abs_logits_diff"] < 1e-5 and hf["abs_loss_diff"] < 1e-5 and hf["max_abs_grad_diff"] < 1e-6, hf

    # 5 optimizer steps; step s uses batch s. Once in float32 (the precision polder trains in) and once in float64
    # from the same initial weights: Adam's near-sign first update on a near-zero gradient element (an embedding
    # row whose contributions cancel) turns float32 rounding into 1e-4-level weight differences between two
    # correct float32 implementations, so the tight optimizer check is against the float64 trajectory.
    for p in params.values():
        p.grad = None
    for prefix, dtype in (("", torch.float32), ("f64.", torch.float64)):
        start = {n: p.detach().to(dtype).clone().requires_grad_(True) for n, p in params.items()}
        losses, norms, lrs, final = train(c, start, inputs, targets)
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        tensors[prefix + "step_losses"] = np.array(losses, dtype=np_dtype)
        tensors[prefix + "step_grad_norms"] = np.array(norms, dtype=np_dtype)
        for name, w in final.items():
            tensors[prefix + "final." + name] = w.float().numpy().copy()  # f64 weights rounded to f32: 6e-8
        if dtype == torch.float32:
            tensors["step_lrs"] = np.array(lrs, dtype=np.float32)
            f32_trace = (losses, norms, lrs)
        else:
            f64_trace = (losses, norms)

    save_file(tensors, os.path.join(out_dir, "reference.safetensors"), metadata={"torch": torch.__version__})
    meta = {"generator": "scripts/reference/llama_reference.py", "torch_version": torch.__version__,
            "model": c, "batch": BATCH, "seq_len": SEQ, "num_batches": NUM_BATCHES, "steps": STEPS,
            "ignored_targets_batch0": IGNORED, "seed": SEED,
            "dtype": "float32; the f64.* entries repeat the 5 steps in float64 from the same initial weights",
            "init": "normal(0, 0.02) matrices and embeddings; 1 + 0.1 * normal for norm weights",
            "optim": {"type": "AdamW", **OPTIM, "betas": list(OPTIM["betas"]),
                      "no_decay": "norm weights and model.embed_tokens.weight"},
            "schedule": SCHEDULE, "step_lrs": f32_trace[2], "step_losses": f32_trace[0], "step_grad_norms": f32_trace[1],
            "f64_step_losses": f64_trace[0], "f64_step_grad_norms": f64_trace[1],
            "transformers_check": hf}
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
