#!/usr/bin/env python3
"""Baseline for bench/tokenizer.cpp: HF `tokenizers` encode throughput on the same text, one thread.

TOKENIZERS_PARALLELISM=false and a Python loop over encode() (no encode_batch), one warm-up pass, median of 3.
It reads the documents exactly as bench_tokenizer does (round-robin over the files, first --max-mb MB);
--dump-ids writes HF's ids so that `bench_tokenizer --check-ids` can compare them with polder's, document by document.

  /work/venv-tok/bin/python scripts/reference/bench_hf_tokenizer.py --tokenizer configs/tokenizers/polder-eu-32k.json
"""
import argparse
import glob
import json
import os
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RAYON_NUM_THREADS", "1")


def read_jsonl(paths, max_mb):
    files = [open(p, encoding="utf-8") for p in paths]
    docs, total, alive = [], 0, True
    while alive and total < max_mb * 1e6:
        alive = False
        for f in files:
            line = f.readline()
            if not line:
                continue
            alive = True
            line = line.rstrip("\n")
            if not line:
                continue
            docs.append(json.loads(line)["text"])
            total += len(docs[-1].encode())
    return docs


def main():
    from tokenizers import Tokenizer, __version__
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", action="append")
    ap.add_argument("--max-mb", type=float, default=8)
    ap.add_argument("--dump-ids", help="write HF's ids of every document, one line each (for bench_tokenizer --check-ids)")
    ap.add_argument("inputs", nargs="*")
    a = ap.parse_args()
    inputs = a.inputs or sorted(glob.glob("data_work/corpus/*.jsonl"))
    docs = read_jsonl(inputs, a.max_mb)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    print(f"HF tokenizers {__version__}: {len(docs)} documents, {mb:.2f} MB, 1 thread")
    for path in a.tokenizer or ["configs/tokenizers/polder-eu-32k.json"]:
        tok = Tokenizer.from_file(path)
        times = []
        for p in range(4):
            t0 = time.perf_counter()
            n = 0
            for d in docs:
                n += len(tok.encode(d, add_special_tokens=False).ids)
            if p > 0:
                times.append(time.perf_counter() - t0)
        t = sorted(times)[1]
        print(f"{os.path.basename(path):44s} {mb / t:8.2f} MB/s {n / t / 1e6:8.3f} Mtok/s")
        if a.dump_ids:
            with open(a.dump_ids, "w") as f:
                for d in docs:
                    f.write(" ".join(map(str, tok.encode(d, add_special_tokens=False).ids)) + "\n")


if __name__ == "__main__":
    main()
