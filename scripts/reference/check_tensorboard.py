#!/usr/bin/env python3
"""Checks polder's natively written TensorBoard events with the real `tensorboard` package (not run in CI).

It runs the hidden test case that writes a sample run (steps 1..5, then a resume at step 4 that logs 4..6 again),
then reads <run>/tb with TensorBoard's EventAccumulator (the Python loader) and, with --server, also through a live
`tensorboard --load_fast=true` server (the Rust data server, TensorBoard's default loader), and compares every
scalar with float32(value) from metrics.jsonl after dropping the entries the resume made stale.

  python3 -m venv /work/venv-tb && /work/venv-tb/bin/pip install tensorboard
  /work/venv-tb/bin/python scripts/reference/check_tensorboard.py --build build-met [--server]
"""
import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TB_TAG = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
          "tokens_per_s": "train/tokens_per_s", "mfu": "train/mfu", "step_time_s": "train/step_time"}


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def expected_scalars(jsonl_path, purge=True):
    """{tag: {step: float32 value}} from metrics.jsonl, later lines winning; purge: resumes drop stale steps."""
    out = {}
    for line in open(jsonl_path):
        j = json.loads(line)
        if j["kind"] == "resume" and purge:
            for series in out.values():
                for s in [s for s in series if s >= j["step"]]:
                    del series[s]
        elif j["kind"] == "train":
            for key, tag in TB_TAG.items():
                if j[key] is not None:
                    out.setdefault(tag, {})[j["step"]] = f32(j[key])
        elif j["kind"] == "scalar":
            out.setdefault(j["tag"], {})[j["step"]] = f32(j["value"])
    return out


def check(name, got, want):
    """got, want: {tag: {step: value}}; prints and returns the number of mismatches."""
    bad = 0
    if set(got) != set(want):
        print(f"  {name}: tags differ: got {sorted(got)}, want {sorted(want)}")
        bad += 1
    for tag in sorted(want):
        g = got.get(tag, {})
        if g != want[tag]:
            print(f"  {name}: {tag}: got {g}, want {want[tag]}")
            bad += 1
    print(f"{name}: {len(want)} tags, {sum(len(v) for v in want.values())} points, "
          f"{'OK' if bad == 0 else f'{bad} MISMATCHES'}")
    return bad


def via_accumulator(tb_dir):
    acc = EventAccumulator(tb_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def via_server(run_dir):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    tb = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    proc = subprocess.Popen([tb, "--logdir", run_dir, "--port", str(port), "--host", "127.0.0.1",
                             "--load_fast=true", "--reload_interval", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    try:
        for _ in range(60):
            time.sleep(1)
            try:
                tags = json.load(urllib.request.urlopen(f"{base}/tags", timeout=5))
            except OSError:
                continue
            if "tb" in tags and len(tags["tb"]) >= len(TB_TAG) + 1:
                break
        got = {}
        for tag in tags.get("tb", {}):
            q = urllib.parse.urlencode({"run": "tb", "tag": tag})
            points = json.load(urllib.request.urlopen(f"{base}/scalars?{q}", timeout=5))
            got[tag] = {}
            for _wall, step, value in points:
                got[tag][step] = f32(value)  # the server keeps every point; later ones override
        return got
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="CMake build dir holding tests/test_metrics")
    ap.add_argument("--run", help="an existing run dir to check instead of writing the sample")
    ap.add_argument("--server", action="store_true", help="also query a live tensorboard server")
    args = ap.parse_args()
    run = args.run
    if run is None:
        run = os.path.join(tempfile.mkdtemp(prefix="polder_tb_"), "run")
        env = dict(os.environ, POLDER_METRICS_SAMPLE_DIR=run)
        subprocess.run([os.path.join(args.build, "tests", "test_metrics"), "[.tb_sample]"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    want = expected_scalars(os.path.join(run, "metrics.jsonl"))
    bad = check("EventAccumulator", via_accumulator(os.path.join(run, "tb")), want)
    if args.server:
        # The Rust data server (tensorboard-data-server 0.7) does not purge on SessionLog START: it keeps the stale
        # points of the first process (here valid/loss at step 5) and reports a rewritten step's later value last.
        want_unpurged = expected_scalars(os.path.join(run, "metrics.jsonl"), purge=False)
        bad += check("tensorboard --load_fast=true server (no purge)", via_server(run), want_unpurged)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
