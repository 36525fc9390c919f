#!/usr/bin/env bash
# Checkpoint writes that fail on a real filesystem: the previous checkpoint and `latest` stay intact, the
# partial folder is removed, one line says so, a failed periodic checkpoint lets the run go on, a failed final
# one ends it with exit code 2, and once there is room the same command resumes from the intact checkpoint.
# Two ways to make the disk fail, both usable as root (where chmod stops nothing): a file size limit
# (ulimit -f: EFBIG, "File too large"), always; and a full 700 KiB tmpfs (ENOSPC) in a private mount namespace
# (unshare -m), when this machine allows mounting (skipped otherwise, with a note).
# Usage: cluster_disk.sh <polder binary> <work folder>
set -euo pipefail
P=$(realpath "$1")
W=$2
rm -rf "$W"
mkdir -p "$W/docs"
cp /usr/share/common-licenses/GPL-3 "$W/docs/a.txt"
"$P" tokenizer train --input "$W/docs/a.txt" --vocab-size 300 --out "$W/tok.json" >/dev/null
"$P" data prepare --input "$W/docs/a.txt" --tokenizer "$W/tok.json" --out "$W/ds" --workers 1 >/dev/null

fail() {
  echo "FAIL: $*"
  exit 1
}

# <run name> <checkpoint dir>: a config whose checkpoint shard is ~460 KB, checkpoints at steps 2, 4 and 6.
write_config() {
  cat >"$W/$1.yaml" <<YAML
model: {vocab_size: 304, hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, max_seq_len: 32}
data: {tokenizer: $W/tok.json, seq_len: 16, valid_fraction: 0, datasets: [{name: lic, prefix: $W/ds}]}
train: {steps: 6, global_batch: 4, micro_batch: 2, run_dir: $W/run-$1, threads: 1}
checkpoint: {every: 2, dir: $2}
logging: {tensorboard: false, jsonl: false}
YAML
}

# <checkpoint dir> <log> <error text>: the run failed at step 6 with exit code 2 after warning at step 4, and
# step 2 is intact (the resume after it verifies every checksum).
check_failed_run() {
  local dir=$1 log=$2 err=$3
  grep -qF "polder: warning: checkpoint step 4 not written: writing '$dir/.tmp-step_00000004/shard-pp0-tp0.safetensors.tmp' failed: $err; the previous checkpoint (step 2) is intact; training continues" "$log" ||
    fail "no warning for step 4 in $log: $(cat "$log")"
  grep -qF "polder: error: checkpoint step 6 not written: writing '$dir/.tmp-step_00000006/shard-pp0-tp0.safetensors.tmp' failed: $err; the previous checkpoint (step 2) is intact" "$log" ||
    fail "no error for step 6 in $log: $(cat "$log")"
  grep -q "^step      6/6" "$log" || fail "the run did not go on to step 6"
  [[ $(cat "$dir/latest") == step_00000002 ]] || fail "latest changed: $(cat "$dir/latest")"
  [[ $(ls -A "$dir") == $'latest\nstep_00000002' ]] || fail "leftovers in $dir: $(ls -A "$dir")"
}

# 1. A file size limit of 300 KiB (the shard is larger; config, metadata and `latest` are not).
write_config limit "$W/limit-ckpt"
"$P" train --config "$W/limit.yaml" --set train.steps=2 >/dev/null
rc=0
(ulimit -f 300 && exec "$P" train --config "$W/limit.yaml") >"$W/limit.log" 2>&1 || rc=$?
((rc == 2)) || fail "exit code $rc with a failing final checkpoint (want 2): $(cat "$W/limit.log")"
check_failed_run "$W/limit-ckpt" "$W/limit.log" "File too large"
"$P" train --config "$W/limit.yaml" >"$W/limit2.log" 2>&1 || fail "the resumed run failed: $(cat "$W/limit2.log")"
grep -q "resumed from $W/limit-ckpt/step_00000002 at step 2" "$W/limit2.log" || fail "no resume from step 2"
[[ $(cat "$W/limit-ckpt/latest") == step_00000006 ]] || fail "latest is not step 6 after the resumed run"
echo "ok   file size limit: step 4 warned, step 6 exit 2, step 2 intact; resumed from step 2 to step 6"

# 2. A full tmpfs (ENOSPC) in a private mount namespace.
if ! unshare -m --propagation private true 2>/dev/null; then
  echo "skip tmpfs (ENOSPC): unshare -m is not permitted here"
  echo "cluster disk test passed"
  exit 0
fi
mkdir -p "$W/tmpfs"
write_config tmpfs "$W/tmpfs"
export P W
rc=0
unshare -m --propagation private bash -c '
  set -e
  mount -t tmpfs -o size=700k tmpfs "$W/tmpfs" || exit 77
  rc=0
  "$P" train --config "$W/tmpfs.yaml" >"$W/tmpfs.log" 2>&1 || rc=$?
  [[ $rc -eq 2 ]] || { echo "exit code $rc (want 2)"; exit 1; }
  cp -r "$W/tmpfs" "$W/tmpfs-copy"  # to check after the namespace is gone
  mount -o remount,size=4m "$W/tmpfs"
  "$P" train --config "$W/tmpfs.yaml" >"$W/tmpfs2.log" 2>&1
  cat "$W/tmpfs/latest" >"$W/tmpfs-latest-after"
' || rc=$?
if ((rc == 77)); then
  echo "skip tmpfs (ENOSPC): mounting a tmpfs is not permitted here"
  echo "cluster disk test passed"
  exit 0
fi
((rc == 0)) || fail "tmpfs run: $(cat "$W/tmpfs.log" 2>/dev/null)"
sed -i "s|$W/tmpfs/|$W/tmpfs-copy/|g" "$W/tmpfs.log"
check_failed_run "$W/tmpfs-copy" "$W/tmpfs.log" "No space left on device"
grep -q "resumed from $W/tmpfs/step_00000002 at step 2" "$W/tmpfs2.log" || fail "no resume from step 2 on tmpfs"
[[ $(cat "$W/tmpfs-latest-after") == step_00000006 ]] || fail "latest is not step 6 after the resumed tmpfs run"
echo "ok   full tmpfs: step 4 warned, step 6 exit 2 (No space left on device), step 2 intact; resumed to step 6"
echo "cluster disk test passed"
