#!/usr/bin/env python3
"""PyTorch SDPA on the shapes of bench_gpu_attention, and the merge of both into the check's JSON.

time:  attention_torch.py [--json PATH] [--quick] [--max-seconds S]
       torch.nn.functional.scaled_dot_product_attention, bf16, (B, H, T, D) with B T = 16k tokens, H D = 2048,
       d 64 and 128, seq 512..16k, causal and not; forward and backward (torch.autograd.grad of the output) timed
       with CUDA events after warm-up, median of repeats. FLOPs as in bench_gpu_attention: 4 b s^2 h d forward,
       halved when causal, backward 2.5x.
merge: attention_torch.py merge --into CHECK.json [--polder P.json] [--torch T.json]
       adds {"attention": {"polder": ..., "torch": ...}} to CHECK.json and prints one table: polder, cudnn,
       baseline, auto and torch TFLOP/s per (d, seq, causal, direction), and auto against the best of polder and
       cudnn (the implementations auto chooses from).
"""
import argparse
import json
import math
import os
import sys
import time

TOKENS, HD = 16384, 2048


def seqs(quick):
    return [1024, 4096] if quick else [512, 1024, 2048, 4096, 8192, 16384]


def time_torch(args):
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    t_start = time.time()
    records, skipped = [], []

    def median_ms(fn, reps):
        fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        ts.sort()
        return ts[len(ts) // 2]

    for d in (64, 128):
        for seq in seqs(args.quick):
            for causal in (True, False):
                label = f"d{d} seq {seq}{' causal' if causal else ''}"
                if time.time() - t_start > args.max_seconds:
                    skipped.append(label)
                    continue
                b, h = TOKENS // seq, HD // d
                gen = torch.Generator(device=dev).manual_seed(seq + d)
                q, k, v, g = (torch.rand(b, h, seq, d, device=dev, dtype=torch.bfloat16, generator=gen) * 2 - 1
                              for _ in range(4))
                for t in (q, k, v):
                    t.requires_grad_(True)
                fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                reps = 3 if seq >= 8192 else 5
                with torch.no_grad():
                    ms_f = median_ms(fwd, reps)
                out = fwd()
                ms_b = median_ms(lambda: torch.autograd.grad(out, (q, k, v), g, retain_graph=True), reps)
                flops = 4.0 * b * seq * seq * h * d * (0.5 if causal else 1.0)
                for direction, ms, fl in (("fwd", ms_f, flops), ("bwd", ms_b, 2.5 * flops)):
                    records.append({"impl": "torch", "dir": direction, "d": d, "seq": seq, "batch": b, "heads": h,
                                    "causal": causal, "ms": ms, "tflops": fl / ms * 1e-9})
                print(f"{label:24s} torch fwd {flops / ms_f * 1e-9:7.1f}  bwd {2.5 * flops / ms_b * 1e-9:7.1f} TFLOP/s",
                      flush=True)
                del q, k, v, g, out
    result = {"benchmark": "torch_sdpa", "torch": torch.__version__, "device": torch.cuda.get_device_name(),
              "elapsed_s": time.time() - t_start, "skipped": skipped, "records": records}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def load(path):
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"attention_torch.py: {path} unreadable: {e}", file=sys.stderr)
        return None


def merge(args):
    final = load(args.into) or {}
    polder, torch_res = load(args.polder), load(args.torch)
    final["attention"] = {"polder": polder, "torch": torch_res}
    with open(args.into, "w") as f:
        json.dump(final, f, indent=1)
    rows = {}
    for res in (polder, torch_res):
        for r in (res or {}).get("records", []):
            key = (r["d"], r["seq"], r["causal"], r["dir"])
            rows.setdefault(key, {})[r["impl"]] = r["tflops"]
    if not rows:
        print("attention: no results (bench_gpu_attention and attention_torch.py both missing or failed)")
        return 0
    impls = ["polder", "cudnn", "baseline", "auto", "torch"]
    print("attention TFLOP/s (bf16, 16k tokens, h d = 2048)")
    print(f"{'d':>4} {'seq':>6} {'causal':>6} {'dir':>4} " + " ".join(f"{i:>9}" for i in impls) + "  auto/best")
    for key in sorted(rows):
        r = rows[key]
        cells = " ".join(f"{r[i]:9.1f}" if i in r and r[i] is not None and not math.isnan(r[i]) else f"{'-':>9}"
                         for i in impls)
        best = max([r[i] for i in ("polder", "cudnn") if i in r] or [float("nan")])
        ratio = r["auto"] / best if "auto" in r and best == best and best > 0 else float("nan")
        print(f"{key[0]:>4} {key[1]:>6} {'yes' if key[2] else 'no':>6} {key[3]:>4} {cells}  {ratio:9.2f}")
    return 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "merge":
        p = argparse.ArgumentParser(prog="attention_torch.py merge")
        p.add_argument("--into", required=True)
        p.add_argument("--polder")
        p.add_argument("--torch")
        return merge(p.parse_args(sys.argv[2:]))
    p = argparse.ArgumentParser(prog="attention_torch.py")
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--max-seconds", type=float, default=30)
    return time_torch(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
