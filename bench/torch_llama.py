#!/usr/bin/env python3
"""PyTorch baseline of polder's GPU training throughput: the same Llama, shapes, batch and AdamW settings.

The model is models/llama's (RMSNorm, RoPE with HF's rotate_half, grouped-query attention, SwiGLU MLP, no
biases, tied or untied LM head), randomly initialised and trained on random tokens with the shape, batch and
AdamW settings of a polder YAML config plus polder-style --set overrides.
Prints one JSON line: tokens/s and MFU after warm-up (compile time reported apart).

Usage: python3 bench/torch_llama.py -c configs/llama-125m.yaml [--set data.seq_len=1024 --set train.micro_batch=16
           --set train.global_batch=16 ...] [--steps 20] [--warmup 3] [--device cuda|cpu] [--no-compile]
       python3 bench/torch_llama.py --print-peak "NVIDIA H100 80GB HBM3"   (the peak table, without importing torch)
       python3 bench/torch_llama.py --self-check   (the model against scripts/reference/llama_reference.py, f64)
Without -c, every model.* key, data.seq_len and train.micro_batch/global_batch come from --set.

The choices, PyTorch's standard fast path for each part (the fair baseline, not a copy of polder's policy):
- mixed precision: fp32 parameters under torch.autocast(bfloat16). polder keeps bf16 parameters and activations
  with fp32 gradients, master weights and moments; the optimizer state is the same size in both (fp32 weights
  and two moments), torch re-casts weights to bf16 in every forward and keeps an fp32 residual stream.
- torch.compile per transformer block (identical blocks compile once; the head + loss compile separately),
  attention through F.scaled_dot_product_attention (flash on H100 for bf16 causal), fused AdamW
  (torch.optim.AdamW(fused=True) on CUDA), grad_clip by clip_grad_norm_(foreach=True) as configured.
- MFU = tokens/s * (6 N + 12 L H D T) / peak, N the parameters a token multiplies with (the embedding lookup
  excluded unless it is also the tied head): exactly train::flops_per_token, so the two MFUs compare.
"""
import argparse
import gc
import json
import math
import os
import re
import signal
import statistics
import sys
import time

# Dense bf16 tensor-core peaks (TFLOP/s) by device name, first match wins: the table polder's trainer uses
# (core/cuda_context.cpp known_bf16_peak), so both MFUs have the same denominator.
PEAKS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
         ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("B200", 2250.0), ("B100", 1750.0)]


class Terminated(BaseException):
    """SIGTERM (a time limit's first signal): stop timing and report what was measured."""


def on_sigterm(signum, frame):
    raise Terminated()


def peak_tflops_for(name):
    for key, peak in PEAKS:
        if key in (name or ""):
            return peak
    return None


# ---- configuration: polder's YAML (PyYAML when present, else a subset reader) plus --set overrides ----

def parse_scalar(text):
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    low = t.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("null", "~", ""):
        return None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def read_yaml_subset(text):
    """Nested mappings of scalars by indentation; list items and flow collections (data.datasets) are skipped,
    since nothing here needs them."""
    root, stack = {}, [(-1, None)]
    stack[0] = (-1, root)
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip() or line.lstrip().startswith("-"):
            continue
        indent = len(line) - len(line.lstrip())
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value.strip() == "":
            parent[key] = {}
            stack.append((indent, parent[key]))
        elif not value.strip().startswith(("{", "[")):
            parent[key] = parse_scalar(value)
    return root


def load_config(path, overrides):
    cfg = {}
    if path:
        with open(path) as f:
            text = f.read()
        try:
            import yaml
            cfg = yaml.safe_load(text) or {}
        except ImportError:
            cfg = read_yaml_subset(text)
    for o in overrides:
        key, eq, value = o.partition("=")
        if not eq or "." not in key:
            raise SystemExit(f"torch_llama: --set expects section.key=value, got '{o}'")
        section, _, name = key.partition(".")
        node = cfg.setdefault(section, {})
        try:
            import yaml
            node[name] = yaml.safe_load(value)
        except ImportError:
            node[name] = parse_scalar(value)
    return cfg


def model_dims(cfg):
    m = cfg.get("model") or {}
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads") if k not in m]
    if missing:
        raise SystemExit(f"torch_llama: model.{missing[0]} is not set (give -c CONFIG or --set model.{missing[0]}=N)")
    H = int(m["num_heads"])
    return dict(V=int(m["vocab_size"]), C=int(m["hidden_size"]), I=int(m["intermediate_size"]),
                L=int(m["num_layers"]), H=H, Hkv=int(m.get("num_kv_heads") or H),
                D=int(m.get("head_dim") or int(m["hidden_size"]) // H), theta=float(m.get("rope_theta", 1e4)),
                eps=float(m.get("rms_norm_eps", 1e-5)), tied=bool(m.get("tie_embeddings", False)),
                std=float(m.get("init_std", 0.02)))


def parameter_count(d):
    """models::llama_parameter_count."""
    per_layer = 2 * d["C"] + d["C"] * d["H"] * d["D"] * 2 + 2 * d["C"] * d["Hkv"] * d["D"] + 3 * d["C"] * d["I"]
    return d["V"] * d["C"] * (1 if d["tied"] else 2) + d["L"] * per_layer + d["C"]


def flops_per_token(d, T):
    """train::flops_per_token: 6 N + 12 L H D T, the untied embedding lookup not counted in N."""
    n = parameter_count(d) - (0 if d["tied"] else d["V"] * d["C"])
    return 6.0 * n + 12.0 * d["L"] * d["H"] * d["D"] * T


# ---- the model ----

def build(torch, d, T, device, gqa_native=False, table_dtype=None):
    table_dtype = table_dtype or torch.float32
    nn, F = torch.nn, torch.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d["C"]))

        def forward(self, x):  # HF LlamaRMSNorm: statistics in fp32, the weight applied in the input dtype
            h = x.to(torch.promote_types(x.dtype, torch.float32))
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + d["eps"])
            return self.weight * h.to(x.dtype)

    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            C, H, Hkv, D, I = d["C"], d["H"], d["Hkv"], d["D"], d["I"]
            self.input_layernorm, self.post_attention_layernorm = RMSNorm(), RMSNorm()
            self.q_proj = nn.Linear(C, H * D, bias=False)
            self.k_proj = nn.Linear(C, Hkv * D, bias=False)
            self.v_proj = nn.Linear(C, Hkv * D, bias=False)
            self.o_proj = nn.Linear(H * D, C, bias=False)
            self.gate_proj = nn.Linear(C, I, bias=False)
            self.up_proj = nn.Linear(C, I, bias=False)
            self.down_proj = nn.Linear(I, C, bias=False)

        def forward(self, x, cos, sin):
            B, T_, _ = x.shape
            H, Hkv, D = d["H"], d["Hkv"], d["D"]
            h = self.input_layernorm(x)
            q = self.q_proj(h).view(B, T_, H, D).transpose(1, 2)
            k = self.k_proj(h).view(B, T_, Hkv, D).transpose(1, 2)
            v = self.v_proj(h).view(B, T_, Hkv, D).transpose(1, 2)
            cos_, sin_ = cos.to(q.dtype), sin.to(q.dtype)
            q = q * cos_ + rotate_half(q) * sin_
            k = k * cos_ + rotate_half(k) * sin_
            if Hkv != H and not gqa_native:  # HF's repeat_kv: every SDPA backend takes it
                k = k.repeat_interleave(H // Hkv, dim=1)
                v = v.repeat_interleave(H // Hkv, dim=1)
            if gqa_native and Hkv != H:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o_proj(a.transpose(1, 2).reshape(B, T_, H * D))
            h = self.post_attention_layernorm(x)
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = RMSNorm()
            self.lm_head = None if d["tied"] else nn.Linear(d["C"], d["V"], bias=False)

        def forward(self, x, embed_weight, targets):
            x = self.norm(x)
            logits = F.linear(x, embed_weight) if self.lm_head is None else self.lm_head(x)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(d["V"], d["C"])
            self.layers = nn.ModuleList(Block() for _ in range(d["L"]))
            self.head = Head()
            # float32 as HF computes it (inv_freq and angles in float32, like polder's f32 tables); float64 exact.
            dt = table_dtype
            inv = 1.0 / (d["theta"] ** (torch.arange(0, d["D"], 2, dtype=torch.int64).to(dt) / d["D"]))
            f = torch.arange(T, dtype=torch.int64).to(dt)[:, None] * inv[None, :]
            emb = torch.cat((f, f), dim=-1)
            self.register_buffer("cos", emb.cos(), persistent=False)
            self.register_buffer("sin", emb.sin(), persistent=False)

        def forward(self, ids, targets):
            x = self.embed_tokens(ids)
            for layer in self.layers:
                x = layer(x, self.cos, self.sin)
            return self.head(x, self.embed_tokens.weight, targets)

    model = Llama()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, d["std"])
    return model.to(device)


def train_steps(torch, d, T, device, micro, accumulation, train, optim, a, use_compile):
    """Builds the model and optimizer, runs a.warmup + a.steps optimizer steps on random tokens and returns the
    timings (median over the steps after the warm-up)."""
    cuda = device.type == "cuda"
    torch.manual_seed(int(train.get("seed", 1234)))
    model = build(torch, d, T, device, gqa_native=a.gqa == "native")
    n_params = sum(p.numel() for p in model.parameters())
    if n_params != parameter_count(d):
        raise RuntimeError(f"model has {n_params} parameters, polder's count is {parameter_count(d)}")
    if use_compile:
        try:  # identical blocks share one compiled graph; the limit only guards against fallbacks to eager
            torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        except AttributeError:
            pass
        for layer in model.layers:
            layer.compile()
        model.head.compile()
    decay = [p for n, p in model.named_parameters() if not n.endswith("norm.weight") and "embed_tokens" not in n]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("norm.weight") or "embed_tokens" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(optim.get("weight_decay", 0.1))},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=float(optim.get("lr", 3e-4)),
                            betas=(float(optim.get("beta1", 0.9)), float(optim.get("beta2", 0.95))),
                            eps=float(optim.get("eps", 1e-8)), fused=cuda)
    grad_clip = float(optim.get("grad_clip", 1.0))
    gen = torch.Generator(device=device).manual_seed(1)
    pool = torch.randint(0, d["V"], (4, micro, T + 1), device=device, generator=gen)  # random tokens

    def step(i):
        for j in range(accumulation):
            batch = pool[(i * accumulation + j) % pool.shape[0]]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                loss = model(batch[:, :-1], batch[:, 1:])
            (loss / accumulation).backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=cuda)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    t_start = time.perf_counter()
    stopped = False
    try:
        for i in range(a.warmup + a.steps):
            sync()
            t0 = time.perf_counter()
            loss = step(i)
            sync()
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
    except Terminated:
        if len(times) <= a.warmup:
            raise
        stopped = True  # a time limit: the steps timed so far still make a median
    timed = times[a.warmup:]
    step_s = statistics.median(timed)
    r = dict(first_step_s=times[0], warmup_s=sum(times[:a.warmup]), step_time_s=step_s, step_times_s=timed,
             tokens_per_s=micro * accumulation * T / step_s, losses=losses, loss_first=losses[0],
             loss_last=losses[-1], total_s=time.perf_counter() - t_start, steps_timed=len(timed))
    if stopped:
        r["stopped"] = f"SIGTERM after {len(timed)} of {a.steps} timed steps"
    if cuda:
        r["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return r


def self_check(torch):
    """The model against scripts/reference/llama_reference.py (the equations polder is tested against, itself
    checked against transformers), in float64 on the CPU: same weights, loss and every gradient; untied, tied,
    and with SDPA's enable_gqa. Returns the number of mismatches."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "reference"))
    import llama_reference as ref  # noqa: E402

    bad = 0
    for tied, native in ((False, False), (True, False), (False, True)):
        c = dict(ref.CONFIG, tie_embeddings=tied)
        d = dict(V=c["vocab_size"], C=c["hidden_size"], I=c["intermediate_size"], L=c["num_layers"],
                 H=c["num_heads"], Hkv=c["num_kv_heads"], D=c["head_dim"], theta=c["rope_theta"],
                 eps=c["rms_norm_eps"], tied=tied, std=0.02)
        B, T = 2, 12
        gen = torch.Generator().manual_seed(7)
        params = {n: p.detach().double().requires_grad_(True) for n, p in ref.init_params(c, gen).items()}
        if tied:
            params["lm_head.weight"] = params["model.embed_tokens.weight"]
        ids = torch.randint(0, d["V"], (B, T + 1), generator=gen)
        model = build(torch, d, T, "cpu", gqa_native=native, table_dtype=torch.float64).double()
        mine = dict(model.named_parameters())
        rename = lambda n: (n.replace("model.layers.", "layers.").replace("self_attn.", "").replace("mlp.", "")
                            .replace("model.embed_tokens", "embed_tokens").replace("model.norm", "head.norm")
                            .replace("lm_head", "head.lm_head"))
        with torch.no_grad():
            for n, p in params.items():
                if not (tied and n == "lm_head.weight"):
                    mine[rename(n)].copy_(p)
        loss = model(ids[:, :-1], ids[:, 1:])
        ref_loss = ref.loss_fn(ref.forward(c, params, ids[:, :-1]), ids[:, 1:])
        loss.backward()
        ref_loss.backward()
        err = abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())
        worst = ("loss", err)
        for n, p in params.items():
            if tied and n == "lm_head.weight":
                continue
            g, r = mine[rename(n)].grad, p.grad
            e = ((g - r).norm() / r.norm()).item()
            worst = max(worst, (n, e), key=lambda x: x[1])
        ok = worst[1] < 1e-10
        bad += not ok
        what = f"{'tied' if tied else 'untied'}, GQA {'native' if native else 'repeat'}"
        print(f"self-check ({what}): loss {loss.item():.12f} vs reference {ref_loss.item():.12f}; "
              f"largest relative error {worst[1]:.2e} ({worst[0]}): {'ok' if ok else 'MISMATCH'}")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--config", help="polder YAML config (configs/llama-125m.yaml, ...)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                    help="polder-style override, e.g. --set train.micro_batch=8 (repeatable)")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens in the first)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--compile", dest="compile", action="store_true", default=None,
                    help="torch.compile (default on cuda; on failure the run falls back to eager and says so)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="MFU denominator; default: from the device name (H100 SXM/H200 989)")
    ap.add_argument("--precision", choices=["bf16", "f32"], default="bf16",
                    help="bf16: autocast over fp32 parameters (default); f32: no autocast (CPU smoke runs: bf16 "
                         "autocast is very slow on CPUs without native bf16)")
    ap.add_argument("--gqa", choices=["repeat", "native"], default="repeat",
                    help="repeat: k/v heads repeated before SDPA (HF's repeat_kv; flash always applies); native: "
                         "SDPA's enable_gqa (torch >= 2.5; which backend takes it under compile is not checked)")
    ap.add_argument("--name", default=None, help="a label for the JSON line (default: the config file's name)")
    ap.add_argument("--self-check", action="store_true",
                    help="compare the model with scripts/reference/llama_reference.py (f64, CPU) and exit")
    ap.add_argument("--print-peak", metavar="DEVICE_NAME", help="print the peak TFLOP/s for a device name and exit")
    a = ap.parse_args()
    if a.self_check:
        import torch
        return 1 if self_check(torch) else 0
    if a.print_peak is not None:
        peak = peak_tflops_for(a.print_peak)
        print(peak if peak else 0)
        return 0
    if a.steps < 1 or a.warmup < 0:
        raise SystemExit(f"torch_llama: --steps must be >= 1 and --warmup >= 0, got {a.steps} and {a.warmup}")

    cfg = load_config(a.config, a.overrides)
    d = model_dims(cfg)
    train, optim = cfg.get("train") or {}, cfg.get("optim") or {}
    try:
        T = int(cfg["data"]["seq_len"])
        micro, global_batch = int(train["micro_batch"]), int(train["global_batch"])
    except (KeyError, TypeError) as e:
        raise SystemExit(f"torch_llama: data.seq_len, train.micro_batch and train.global_batch must be set ({e})")
    if micro <= 0 or global_batch % micro:
        raise SystemExit(f"torch_llama: train.global_batch {global_batch} is not a multiple of "
                         f"train.micro_batch {micro}")
    accumulation = global_batch // micro
    label = a.name or (os.path.splitext(os.path.basename(a.config))[0] if a.config else "cmdline")
    result = RESULT
    result.update({"framework": "torch", "name": label, "device": a.device, "seq_len": T, "micro_batch": micro,
              "global_batch": global_batch, "accumulation": accumulation, "params": parameter_count(d),
              "flops_per_token": flops_per_token(d, T)})

    try:
        import torch
    except ImportError as e:
        result["error"] = f"no torch: {e}"
        print(json.dumps(result))
        return 1
    result["torch"] = torch.__version__
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        result["error"] = "torch.cuda.is_available() is False"
        print(json.dumps(result))
        return 1
    use_compile = cuda if a.compile is None else a.compile
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = a.peak_tflops if a.peak_tflops is not None else (peak_tflops_for(name) if cuda else None)
    result.update(device_name=name, compile=use_compile, peak_tflops=peak,
                  precision="fp32 params + bf16 autocast" if a.precision == "bf16" else "f32",
                  attention=f"F.scaled_dot_product_attention causal, GQA {a.gqa}")
    run = dict(torch=torch, d=d, T=T, device=device, micro=micro, accumulation=accumulation, train=train,
               optim=optim, a=a)
    def attempt(use_compile):  # one JSON line whatever happens (out of memory, compile failure)
        try:
            result.update(train_steps(use_compile=use_compile, **run))
            return None
        except Exception as e:
            return f"{type(e).__name__}: {e}".splitlines()[0][:500]

    try:
        error = attempt(use_compile)
    except Terminated:
        error = "terminated by SIGTERM (time limit) before the first timed step"
        use_compile = False  # no second attempt
    if error and use_compile and "out of memory" not in error.lower():
        # A number from eager mode beats none; the failed compile stays on record. (Retried outside the except
        # block, so the failed attempt's tensors are no longer referenced by a traceback.)
        result.update(compile_error=error, compile=False)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        try:
            error = attempt(False)
        except Terminated:
            error = "terminated by SIGTERM (time limit) before the first timed step (eager retry)"
    if error:
        result["error"] = error
    if "tokens_per_s" in result:
        result["mfu"] = result["tokens_per_s"] * result["flops_per_token"] / (peak * 1e12) if peak else None
        if not all(math.isfinite(x) for x in result["losses"]):
            result["error"] = f"non-finite loss: {result['losses']}"
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


RESULT = {}  # main's result: printed as it stands when a time limit's SIGTERM comes before the end

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        sys.exit(main())
    except Terminated:
        RESULT["error"] = "terminated by SIGTERM (time limit) before any step was timed"
        print(json.dumps(RESULT), flush=True)
        sys.exit(1)
