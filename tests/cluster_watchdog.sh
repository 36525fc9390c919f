#!/usr/bin/env bash
# A rank that stops participating must not hang the job: `polder train` on 2 ranks where the last rank stops
# itself (SIGSTOP, as a hung node; debug.stall_step) at step 3. Rank 0's watchdog (train.watchdog_s = 3) must
# end the whole job with a non-zero exit code within 60 s, naming the step and the collective it waits in:
# the data-parallel gradient all-reduce at dp 2, the pipeline receive of gradients at pp 2.
# Usage: cluster_watchdog.sh <polder binary> <work folder> <mpirun and its options...>
set -uo pipefail
P=$(realpath "$1")
W=$2
shift 2
rm -rf "$W"
mkdir -p "$W/docs"
cp /usr/share/common-licenses/GPL-3 "$W/docs/a.txt"
"$P" tokenizer train --input "$W/docs/a.txt" --vocab-size 300 --out "$W/tok.json" >/dev/null || exit 1
"$P" data prepare --input "$W/docs/a.txt" --tokenizer "$W/tok.json" --out "$W/ds" --workers 1 >/dev/null || exit 1
cat >"$W/cfg.yaml" <<YAML
model: {vocab_size: 304, hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, max_seq_len: 32}
data: {tokenizer: $W/tok.json, seq_len: 16, valid_fraction: 0, datasets: [{name: lic, prefix: $W/ds}]}
train: {steps: 100, global_batch: 4, micro_batch: 2, run_dir: $W/run, threads: 1, resume: none, watchdog_s: 3}
debug: {stall_step: 3}
logging: {tensorboard: false}
YAML
status=0
for layout in "dp=2:gradient all-reduce (data parallel)" "pp=2:pipeline receive of gradients"; do
  key=${layout%%:*}
  phase=${layout#*:}
  start=$(date +%s%N)
  timeout -k 10 90 "$@" -np 2 "$P" train --config "$W/cfg.yaml" --set "parallel.$key" >"$W/$key.log" 2>&1
  rc=$?
  ms=$((($(date +%s%N) - start) / 1000000))
  want="polder (rank 0): watchdog: no step completed for 3 s; stuck at step 3 in $phase; aborting the job"
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] || [ "$ms" -ge 60000 ]; then
    echo "FAIL $key: exit code $rc after $ms ms (want non-zero, not a timeout, under 60 s)"
    tail -20 "$W/$key.log"
    status=1
  elif ! grep -qF "$want" "$W/$key.log"; then
    echo "FAIL $key: no line '$want'"
    tail -20 "$W/$key.log"
    status=1
  else
    echo "ok   $key: exit code $rc after $ms ms: $want"
  fi
done
exit $status
