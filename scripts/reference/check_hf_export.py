#!/usr/bin/env python3
"""Loads a Hugging Face folder (one written by `polder convert --to hf`) with transformers, prints the logits of a
prompt and the greedy continuation, to compare by eye with `polder generate --temperature 0` on the same ids.
Run by hand (not in CI): transformers is not a build dependency.

Usage: python scripts/reference/check_hf_export.py <hf_dir> --prompt-ids "1 2 3" --tokens 20
           [--polder-ids "4 5 6 ..."] [--stop-at-eos] [--dtype float32|bfloat16] [--device cpu|cuda]
Greedy decoding is a plain loop of full forwards and argmax (no KV cache, no generation_config: no eos stop unless
--stop-at-eos, no repetition penalty), so it is exactly argmax of the model. --polder-ids: the generated ids polder
printed; the script names the first position where they differ. Exits 1 on a mismatch."""
import argparse
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def parse_ids(text):
    return [int(t) for t in text.replace(",", " ").split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf_dir")
    ap.add_argument("--prompt-ids", required=True, help='space-separated token ids, e.g. "1 2 3"')
    ap.add_argument("--tokens", type=int, default=20, help="new tokens to generate greedily")
    ap.add_argument("--polder-ids", default=None, help="ids polder generated, to compare")
    ap.add_argument("--stop-at-eos", action="store_true", help="stop at the config's eos_token_id")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    dtype = getattr(torch, args.dtype)
    config = AutoConfig.from_pretrained(args.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=dtype).to(args.device).eval()
    prompt = parse_ids(args.prompt_ids)
    vocab = config.vocab_size
    bad = [i for i in prompt if not 0 <= i < vocab]
    if bad:
        sys.exit(f"check_hf_export: prompt ids {bad} outside the vocabulary [0, {vocab})")

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.dtype} on {args.device}")
    print(f"{args.hf_dir}: {config.architectures}, vocab {vocab}, hidden {config.hidden_size}, "
          f"layers {config.num_hidden_layers}, heads {config.num_attention_heads}/{config.num_key_value_heads}, "
          f"tied {config.tie_word_embeddings}, rope {getattr(config, 'rope_parameters', None)}")
    print(f"parameters: {sum(p.numel() for p in model.parameters())}")

    ids = torch.tensor([prompt], dtype=torch.long, device=args.device)  # (1, T)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()  # (T, V)
    last = logits[-1]
    top = torch.topk(last, min(5, vocab))
    print(f"prompt logits (T={len(prompt)}, V={vocab}): mean {logits.mean():.6f} std {logits.std():.6f} "
          f"min {logits.min():.6f} max {logits.max():.6f}")
    print("last position top-5: " + ", ".join(f"{i}:{v:.6f}" for v, i in zip(top.values.tolist(), top.indices.tolist())))
    print("last position logits[:8]: " + " ".join(f"{v:.6f}" for v in last[:8].tolist()))

    generated = []
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    with torch.no_grad():
        for _ in range(args.tokens):
            next_id = int(model(input_ids=ids).logits[0, -1].argmax())
            generated.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]], device=args.device)], dim=1)
            if args.stop_at_eos and next_id in eos:
                break
    print("greedy ids: " + " ".join(map(str, generated)))

    if args.polder_ids is not None:
        theirs = parse_ids(args.polder_ids)
        n = min(len(theirs), len(generated))
        diff = next((i for i in range(n) if theirs[i] != generated[i]), None)
        if diff is None and len(theirs) == len(generated):
            print(f"polder ids: identical ({len(generated)} tokens)")
        elif diff is None:
            print(f"polder ids: agree on the first {n} tokens; lengths differ: polder {len(theirs)}, "
                  f"transformers {len(generated)}")
            sys.exit(1)
        else:
            print(f"polder ids: first difference at generated position {diff}: polder {theirs[diff]}, "
                  f"transformers {generated[diff]}")
            sys.exit(1)


if __name__ == "__main__":
    main()
