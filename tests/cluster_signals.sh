#!/usr/bin/env bash
# Graceful stop and auto-resume end to end, without Slurm: `polder train` on 2 ranks (pp 2) gets SIGUSR1
# through mpirun and must exit 0 with a checkpoint at the step it stopped at; the same command again resumes from
# it and completes. Then scripts/slurm/train.sbatch itself, run by bash with stand-ins for srun and scontrol
# (srun -> mpirun, scontrol records its arguments), for both launchers: SIGUSR1 to the batch shell (what
# --signal=B:USR1@300 does) stops the step with a checkpoint and requeues the job; the requeued run (a second
# run of the script) resumes and completes without requeueing.
# Usage: cluster_signals.sh <polder binary> <work folder> <mpirun and its options...>
set -euo pipefail
P=$(realpath "$1")
W=$2
shift 2
mpirun_cmd=("$@")
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$W"
mkdir -p "$W/docs" "$W/bin"
cp /usr/share/common-licenses/GPL-3 "$W/docs/a.txt"
cp /usr/share/common-licenses/Apache-2.0 "$W/docs/b.txt"
"$P" tokenizer train --input "$W"/docs/*.txt --vocab-size 300 --out "$W/tok.json" >/dev/null
"$P" data prepare --input "$W"/docs/*.txt --tokenizer "$W/tok.json" --out "$W/ds" --workers 1 >/dev/null

write_config() {  # <file> <run dir>
  cat >"$1" <<YAML
model: {vocab_size: 304, hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2,
        max_seq_len: 32}
data: {tokenizer: $W/tok.json, seq_len: 16, valid_fraction: 0, datasets: [{name: lic, prefix: $W/ds}]}
train: {steps: 200, global_batch: 4, micro_batch: 2, run_dir: $2, threads: 1}
parallel: {pp: 2}
checkpoint: {every: 100000}
logging: {every: 5, tensorboard: false}
YAML
}

fail() {
  echo "FAIL: $*"
  for f in "$W"/*.log; do
    echo "--- $f"
    tail -15 "$f"
  done
  exit 1
}

wait_for_step() {  # <log>: until training has logged a step (at most 60 s)
  for _ in $(seq 600); do
    grep -q "^step " "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "no training step logged in $1"
}

# Checks that the log says it stopped at step S, that latest is step S with both pipeline shards, and prints S.
stopped_step() {  # <log> <run dir>
  local s
  s=$(sed -n 's/^stopping at step \([0-9]*\) (SIGUSR1): checkpoint .*/\1/p' "$1")
  [[ -n $s ]] || fail "$1 has no 'stopping at step S (SIGUSR1)' line"
  local name
  name=$(printf 'step_%08d' "$s")
  [[ $(cat "$2/checkpoints/latest") == "$name" ]] || fail "latest is $(cat "$2/checkpoints/latest"), not $name"
  for f in metadata.json shard-pp0-tp0.safetensors shard-pp1-tp0.safetensors; do
    [[ -f $2/checkpoints/$name/$f ]] || fail "$name/$f is missing"
  done
  grep -q "\"step\": $s," "$2/checkpoints/$name/metadata.json" || fail "$name/metadata.json does not say step $s"
  ((s > 0 && s < 200)) || fail "stopped at step $s"
  echo "$s"
}

# 1. mpirun forwards SIGUSR1 to both ranks; exit 0 within the warning window; the same command resumes.
write_config "$W/direct.yaml" "$W/run"
cmd=("${mpirun_cmd[@]}" -np 2 "$P" train --config "$W/direct.yaml")
"${cmd[@]}" >"$W/direct1.log" 2>&1 &
pid=$!
wait_for_step "$W/direct1.log"
start=$(date +%s%N)
kill -USR1 "$pid"
rc=0
wait "$pid" || rc=$?
ms=$((($(date +%s%N) - start) / 1000000))
((rc == 0)) || fail "mpirun exited with $rc after SIGUSR1"
((ms < 30000)) || fail "the stop took $ms ms"
s=$(stopped_step "$W/direct1.log" "$W/run")
grep -q "polder: SIGUSR1: stopping after the current step with a checkpoint" "$W/direct1.log" || fail "no signal line"
echo "ok   mpirun -np 2: SIGUSR1 -> exit 0 after $ms ms, checkpoint at step $s"
"${cmd[@]}" >"$W/direct2.log" 2>&1 || fail "the resumed run failed"
grep -q "resumed from $W/run/checkpoints/step_$(printf %08d "$s") at step $s" "$W/direct2.log" || fail "no resume"
grep -q "^step    200/200" "$W/direct2.log" || fail "the resumed run did not complete"
echo "ok   the same command resumed at step $s and completed"

# 2. The batch script, with srun and scontrol stand-ins.
cat >"$W/bin/srun" <<SH
#!/usr/bin/env bash
# stand-in for srun: drop srun's own options, run the command on 2 ranks
while [[ \$1 == --* ]]; do shift; done
exec ${mpirun_cmd[*]} -np 2 "\$@"
SH
cat >"$W/bin/scontrol" <<SH
#!/usr/bin/env bash
echo "\$*" >>"$W/scontrol.calls"
SH
chmod +x "$W/bin/srun" "$W/bin/scontrol"
for launcher in srun mpirun; do
  write_config "$W/$launcher.yaml" "$W/run-$launcher"
  rm -f "$W/scontrol.calls"
  env PATH="$W/bin:$PATH" POLDER_BIN="$P" POLDER_LAUNCHER=$launcher SLURM_JOB_ID=4242 SLURM_RESTART_COUNT=0 \
    SLURM_NTASKS=2 SLURM_NTASKS_PER_NODE=2 SLURM_SUBMIT_DIR="$W" OMPI_MCA_rmaps_base_oversubscribe=1 \
    OMPI_MCA_btl=self,vader bash "$root/scripts/slurm/train.sbatch" "$W/$launcher.yaml" >"$W/sbatch-$launcher-1.log" 2>&1 &
  pid=$!
  wait_for_step "$W/sbatch-$launcher-1.log"
  kill -USR1 "$pid"
  rc=0
  wait "$pid" || rc=$?
  ((rc == 0)) || fail "$launcher: train.sbatch exited with $rc after SIGUSR1"
  s=$(stopped_step "$W/sbatch-$launcher-1.log" "$W/run-$launcher")
  [[ $(cat "$W/scontrol.calls") == "requeue 4242" ]] || fail "$launcher: scontrol was not asked to requeue job 4242"
  echo "ok   train.sbatch ($launcher): SIGUSR1 -> checkpoint at step $s, exit 0, scontrol requeue 4242"
  rm -f "$W/scontrol.calls"
  env PATH="$W/bin:$PATH" POLDER_BIN="$P" POLDER_LAUNCHER=$launcher SLURM_JOB_ID=4242 SLURM_RESTART_COUNT=1 \
    SLURM_NTASKS=2 SLURM_NTASKS_PER_NODE=2 SLURM_SUBMIT_DIR="$W" OMPI_MCA_rmaps_base_oversubscribe=1 \
    OMPI_MCA_btl=self,vader bash "$root/scripts/slurm/train.sbatch" "$W/$launcher.yaml" >"$W/sbatch-$launcher-2.log" 2>&1 ||
    fail "$launcher: the requeued run failed"
  grep -q "resumed from .*step_$(printf %08d "$s") at step $s" "$W/sbatch-$launcher-2.log" || fail "$launcher: no resume"
  grep -q "^step    200/200" "$W/sbatch-$launcher-2.log" || fail "$launcher: the requeued run did not complete"
  [[ ! -e $W/scontrol.calls ]] || fail "$launcher: a completed run was requeued"
  echo "ok   train.sbatch ($launcher): the requeued run resumed at step $s and completed without requeueing"
done
bash -n "$root/scripts/slurm/train.sbatch"
echo "cluster signal test passed"
