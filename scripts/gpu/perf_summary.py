#!/usr/bin/env python3
"""Result plumbing of the GPU scripts (standard library only, so it runs on any Python 3 there is).

  perf_summary.py train CASES.tsv --out TRAIN.json [--device NAME] [--peak TFLOPS] [--skip-steps K]
      bench_train.sh's cases (one per line: model, config, seq_len, micro_batch, global_batch, steps, polder
      status, polder seconds, polder run dir, polder log, torch status, torch seconds, torch JSON file) ->
      polder tokens/s and MFU from the run's metrics.jsonl (median step time over steps > K), the torch JSON
      line, and their ratio. Prints a table.
  perf_summary.py merge --out GPU.json [--steps STEPS.tsv] [--kernels K.json] [--train T.json] [--meta k=v ...]
                        [--quiet]
      check.sh's final file: its steps (name|status|passed|failed|seconds lines), kernel and training results,
      and the short table printed last, with the goals of issue 6 (memory-bound kernels >= 80% of the copy
      bandwidth, llama-1b >= 45% MFU, polder >= 1.1x PyTorch tokens/s); --quiet leaves the table out.
  perf_summary.py table GPU.json
      the table of a merged file (check.sh prints it last, after adding bench_gpu_gemm's and the attention
      results to the file; their summaries are one line each here).
A missing or broken input becomes an "error" entry: the output file is always written.
"""
import argparse
import json
import math
import os
import statistics
import sys

GOAL_BANDWIDTH = 0.80
GOAL_MFU_1B = 0.45
GOAL_VS_TORCH = 1.10


def read_json(path, what):
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"error": f"{what}: cannot read {path}: {e}"}


def last_json_line(path):
    """The last line of a file that parses as a JSON object (torch_llama.py prints one)."""
    try:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.strip().startswith("{")]
    except OSError as e:
        return {"error": f"cannot read {path}: {e}"}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {"error": f"no JSON line in {path}"}


def num(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def polder_result(run_dir, status, seconds, global_batch, seq_len, skip):
    r = {"status": status, "seconds": seconds}
    if status in ("skipped", "no data"):
        return r
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if j.get("kind") == "train" and num(j.get("step_time_s")):
                    rows.append(j)
    except OSError as e:
        r["error"] = f"no metrics: {e}"
        return r
    if not rows:
        r["error"] = f"no training steps logged in {path}"
        return r
    timed = [x for x in rows if x["step"] > skip] or rows[-1:]
    step_s = statistics.median(x["step_time_s"] for x in timed)
    mfus = [x["mfu"] for x in timed if num(x.get("mfu"))]
    r.update(steps_logged=len(rows), steps_timed=len(timed), step_time_s=step_s,
             tokens_per_s=global_batch * seq_len / step_s, mfu=statistics.median(mfus) if mfus else None,
             first_step_s=rows[0]["step_time_s"], loss_first=rows[0].get("loss"), loss_last=rows[-1].get("loss"),
             step_times_s=[x["step_time_s"] for x in rows])
    mem = [x["peak_memory_gib"] for x in rows if num(x.get("peak_memory_gib"))]
    if mem:
        r["max_memory_gib"] = max(mem)  # the device pool's peak (GPU runs log it per step)
    return r


def cmd_train(a):
    cases = []
    try:
        with open(a.cases) as f:
            lines = [l.rstrip("\n") for l in f if l.strip()]
    except OSError as e:
        lines, cases = [], [{"error": f"cannot read {a.cases}: {e}"}]
    for line in lines:
        c = line.split("\t")
        if len(c) != 13:
            cases.append({"error": f"malformed case line: {line!r}"})
            continue
        model, config, seq, micro, glob, steps, pst, psec, run_dir, plog, tst, tsec, tjson = c
        seq, micro, glob, steps = int(seq), int(micro), int(glob), int(steps)
        case = {"model": model, "config": config, "seq_len": seq, "micro_batch": micro, "global_batch": glob,
                "steps": steps, "tokens_per_step": glob * seq}
        case["polder"] = polder_result(run_dir, pst, num(float(psec)), glob, seq, a.skip_steps)
        case["polder"]["log"] = plog
        t = last_json_line(tjson) if tst != "skipped" else {}
        t["status"] = "error" if tst == "ok" and "error" in t else tst
        t["seconds"] = num(float(tsec))
        case["torch"] = t
        p_tok, t_tok = num(case["polder"].get("tokens_per_s")), num(t.get("tokens_per_s"))
        case["polder_over_torch"] = p_tok / t_tok if p_tok and t_tok else None
        cases.append(case)
    out = {"device": a.device, "peak_tflops": a.peak or None, "skip_steps": a.skip_steps, "runs": cases}
    write(a.out, out)
    print(train_table(out))
    return 0


def fmt(x, spec, none="-"):
    return format(x, spec) if num(x) is not None else none


def pct(x):
    return fmt(100 * x, ".1f") + "%" if num(x) is not None else "-"


def train_table(t, goals=False):
    lines = [f"{'training':<12} {'tok/step':>8} {'polder tok/s':>13} {'MFU':>6} {'torch tok/s':>12} {'MFU':>6} "
             f"{'polder/torch':>12}  status"]
    for c in t.get("runs", []):
        if "model" not in c:
            lines.append(f"{'?':<12} {c.get('error', '')}")
            continue
        p, q = c["polder"], c["torch"]
        status = f"polder {p.get('status')}{' (' + p['error'] + ')' if p.get('error') else ''}, torch {q.get('status')}"
        if q.get("error"):
            status += f" ({q['error'][:120]})"
        if goals and num(c.get("polder_over_torch")) and c["polder_over_torch"] < GOAL_VS_TORCH:
            status += f"; < {GOAL_VS_TORCH:.2f}x torch"
        if goals and c["model"] == "llama-1b" and num(p.get("mfu")) is not None and p["mfu"] < GOAL_MFU_1B:
            status += f"; MFU < {GOAL_MFU_1B:.0%}"
        ratio = fmt(c.get("polder_over_torch"), ".2f") + "x" if num(c.get("polder_over_torch")) else "-"
        lines.append(f"{c['model']:<12} {c['tokens_per_step']:>8} {fmt(p.get('tokens_per_s'), ',.0f'):>13} "
                     f"{pct(p.get('mfu')):>6} {fmt(q.get('tokens_per_s'), ',.0f'):>12} {pct(q.get('mfu')):>6} "
                     f"{ratio:>12}  {status}")
    return "\n".join(lines)


def write(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def read_steps(path):
    steps = []
    if not path:
        return steps
    try:
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("|")
                if len(parts) != 5:
                    continue
                name, status, passed, failed, secs = parts
                steps.append({"name": name, "status": status, "passed": int(passed or 0),
                              "failed": int(failed or 0), "seconds": int(secs or 0)})
    except (OSError, ValueError) as e:
        steps.append({"name": "steps", "status": f"error: {e}", "passed": 0, "failed": 0, "seconds": 0})
    return steps


def cmd_merge(a):
    out = {}
    for kv in a.meta:
        k, _, v = kv.partition("=")
        out[k] = v
    out["steps"] = read_steps(a.steps)
    out["kernels"] = read_json(a.kernels, "kernels") if a.kernels else {"error": "not run"}
    out["training"] = read_json(a.train, "training") if a.train else {"error": "not run"}
    out["goals"] = {"memory_bound_vs_copy": GOAL_BANDWIDTH, "llama_1b_mfu": GOAL_MFU_1B,
                    "polder_over_torch": GOAL_VS_TORCH}
    write(a.out, out)
    if not a.quiet:
        print(summary_table(out))
    return 0


def cmd_table(a):
    m = read_json(a.file, "results")
    print(summary_table(m or {}))
    return 0 if m and "error" not in m else 1


def summary_table(m):
    L = []
    steps = m.get("steps", [])
    tests = [s for s in steps if s["name"].startswith(("test_", "memcheck"))]
    if tests:
        ok = sum(1 for s in tests if s["status"] in ("pass", "no [cuda] tests"))
        L.append(f"tests: {ok}/{len(tests)} programs pass, {sum(s['passed'] for s in tests)} test cases passed, "
                 f"{sum(s['failed'] for s in tests)} failed")
    for s in steps:
        if s["status"] not in ("pass", "no [cuda] tests"):
            L.append(f"  {s['name']:<34} {s['status']} ({s['failed']} failed, {s['seconds']} s)")
    k = m.get("kernels") or {}
    if k.get("error") or not k.get("records"):
        L.append(f"kernels: {k.get('error', 'no records')}")
    else:
        copy, gemm = k.get("copy_gbps"), k.get("gemm_8192_tflops")
        L.append(f"kernels on {k.get('device', {}).get('name', '?')}: copy {fmt(copy, '.0f')} GB/s, "
                 f"cuBLASLt 8192^3 bf16 {fmt(gemm, '.0f')} TFLOP/s{' (--quick)' if k.get('quick') else ''}")
        L.append(f"  {'kernel':<34} {'ms':>9} {'rate':>8} {'':<7} {'ratio':>6}  "
                 "note (ratio: to the copy or to gemm 8192^3)")
        for r in k["records"]:
            rate = r.get("gbps", r.get("tflops"))
            unit = "GB/s" if "gbps" in r else "TFLOP/s"
            ratio = r.get("ratio")
            note = "" if r.get("status") == "ok" else r.get("status", "")
            if "gbps" in r and r.get("baseline") and num(ratio) is not None and ratio < GOAL_BANDWIDTH:
                note = (note + "; " if note else "") + f"< {GOAL_BANDWIDTH:.0%} of copy"
            if rate is None and not num(r.get("ms")):
                L.append(f"  {r['name']:<34} {note}")
                continue
            L.append(f"  {r['name']:<34} {fmt(r.get('ms'), '.3f'):>9} {fmt(rate, '.0f'):>8} {unit:<7} "
                     f"{fmt(ratio, '.2f'):>6}  {note}".rstrip())
        for s in k.get("skipped", []):
            L.append(f"  {s:<34} skipped")
    g = m.get("gemm")
    if isinstance(g, dict) and g.get("records"):
        bad = [r["name"] for r in g["records"] if r.get("status") != "ok"]
        L.append(f"gemm (bench_gpu_gemm): own / cuBLASLt on the LLM shapes: geometric mean "
                 f"{fmt(g.get('llm_ratio_geomean'), '.2f')}, minimum {fmt(g.get('llm_ratio_min'), '.2f')} (goal >= 0.9)"
                 + (f"; not ok: {', '.join(bad[:4])}" if bad else ""))
    att = m.get("attention")
    if isinstance(att, dict):
        n = sum(len((att.get(k) or {}).get("records", [])) for k in ("polder", "torch"))
        L.append(f"attention (bench_gpu_attention, attention_torch.py): {n} records, table above")
    t = m.get("training") or {}
    if t.get("error"):
        L.append(f"training: {t['error']}")
    elif not t.get("runs"):
        L.append("training: no runs")
    else:
        L.append(f"training on {t.get('device') or '?'} (peak {fmt(t.get('peak_tflops'), '.0f')} TFLOP/s; goals: "
                 f"polder/torch >= {GOAL_VS_TORCH:.2f}x, llama-1b MFU >= {GOAL_MFU_1B:.0%})")
        L += ["  " + l for l in train_table(t, goals=True).splitlines()]
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("cases")
    t.add_argument("--out", required=True)
    t.add_argument("--device", default="")
    t.add_argument("--peak", type=float, default=0.0)
    t.add_argument("--skip-steps", type=int, default=2)
    mg = sub.add_parser("merge")
    mg.add_argument("--out", required=True)
    mg.add_argument("--steps")
    mg.add_argument("--kernels")
    mg.add_argument("--train")
    mg.add_argument("--meta", action="append", default=[])
    mg.add_argument("--quiet", action="store_true")
    tb = sub.add_parser("table")
    tb.add_argument("file")
    a = ap.parse_args()
    return {"train": cmd_train, "merge": cmd_merge, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
