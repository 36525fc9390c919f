#!/usr/bin/env bash
# What a job on several ranks says when it cannot start, end to end through mpirun. A configuration error
# (a bad value, a layout that does not fit the world, the trainer's own pipeline rules, datasets that do not
# exist or do not fit the vocabulary) is agreed by every rank before any work: exactly one "polder: error:"
# line (rank 0's, without a rank number), no training output, every rank exits with 2 and mpirun returns 2,
# well within the timeout (no hang). Then
# train.resume: auto on 2 ranks (tp 2) when only rank 1's shard of the newest checkpoint is corrupt: both
# ranks skip it together, one warning names it, and the run goes on from the previous checkpoint with the
# uninterrupted run's loss.
# Usage: mpi_config_errors.sh <polder binary> <work folder> <mpirun and its options...>
set -euo pipefail
P=$(realpath "$1")
W=$2
shift 2
mpirun_cmd=("$@")
rm -rf "$W"
mkdir -p "$W/docs"
cp /usr/share/common-licenses/GPL-3 "$W/docs/a.txt"
cp /usr/share/common-licenses/Apache-2.0 "$W/docs/b.txt"
"$P" tokenizer train --input "$W"/docs/*.txt --vocab-size 300 --out "$W/tok.json" >/dev/null
"$P" data prepare --input "$W"/docs/*.txt --tokenizer "$W/tok.json" --out "$W/ds" --workers 1 >/dev/null

write_config() {  # <file> <run dir> <parallel section> [steps]
  cat >"$1" <<YAML
model: {vocab_size: 304, hidden_size: 32, intermediate_size: 64, num_layers: 4, num_heads: 4, num_kv_heads: 2,
        max_seq_len: 32, tie_embeddings: true}
data: {tokenizer: $W/tok.json, seq_len: 16, valid_fraction: 0, datasets: [{name: lic, prefix: $W/ds}]}
train: {steps: ${4:-3}, global_batch: 4, micro_batch: 2, run_dir: $2, threads: 1}
parallel: $3
checkpoint: {every: 1, keep_last: 3}
logging: {every: 1, tensorboard: false}
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

# <name> <ranks> <parallel section> <expected text of the error line> [--set overrides...]
expect_one_error() {
  write_config "$W/$1.yaml" "$W/run-$1" "$3"
  local start rc=0 ms
  start=$(date +%s%N)
  timeout 120 "${mpirun_cmd[@]}" -np "$2" "$P" train --config "$W/$1.yaml" "${@:5}" >"$W/$1.log" 2>&1 || rc=$?
  ms=$((($(date +%s%N) - start) / 1000000))
  ((rc != 124)) || fail "$1: mpirun hung (killed by timeout after $ms ms)"
  ((rc == 2)) || fail "$1: mpirun exited with $rc, expected 2"
  local n
  n=$(grep -c "^polder: error" "$W/$1.log" || true)
  ((n == 1)) || fail "$1: $n 'polder: error' lines, expected exactly 1"
  grep -q "^polder: error: .*$4" "$W/$1.log" || fail "$1: the error line does not say '$4'"
  ! grep -q "(rank [0-9]*)" "$W/$1.log" || fail "$1: the error names a rank (printed by one rank alone?)"
  ! grep -q "^polder train:" "$W/$1.log" || fail "$1: training started before the error"
  echo "ok   $1 on $2 ranks: one error line, exit 2 after $ms ms: $(grep "^polder: error" "$W/$1.log")"
}

# A layout that does not fit the world (validate_config with the world size).
expect_one_error world 4 "{dp: 3}" "(3 \* 1 \* 1 = 3) differs from the world size (4)"
# The trainer's pipeline rules, which only some ranks used to reach: interleaving with micro-batches not
# divisible by pp, and fewer micro-batches than stages.
expect_one_error interleaved 4 "{pp: 2, dp: 2, virtual_stages: 2}" "parallel.virtual_stages = 2"
expect_one_error microbatches 4 "{pp: 4, dp: 1}" "parallel.pp = 4 needs at least as many micro-batches"
# A bad value in the file itself (load_config, before the trainer exists).
expect_one_error value 4 "{zero: 4}" "parallel.zero"
# Context parallelism: 12 tokens do not split into 2 cp = 8 equal chunks.
expect_one_error cp_sequence 4 "{cp: 4}" "parallel.cp = 4: data.seq_len (12) must be divisible by 2 \* cp = 8" \
  --set data.seq_len=12
# Datasets that do not fit the config, found when every rank opens them.
expect_one_error dataset 4 "{dp: 4}" "index file /nonexistent/ds.idx does not exist" \
  --set train.global_batch=8 --set "data.datasets=[{name: x, prefix: /nonexistent/ds}]"
expect_one_error vocabulary 4 "{dp: 4}" "is outside the vocabulary of 100 tokens" \
  --set train.global_batch=8 --set model.vocab_size=100
# ZeRO-2 with the embedding tied across stages is no longer refused: it trains.
write_config "$W/zero2tied.yaml" "$W/run-zero2tied" "{pp: 2, dp: 2, zero: 2}" 2
timeout 120 "${mpirun_cmd[@]}" -np 4 "$P" train --config "$W/zero2tied.yaml" --set train.global_batch=8 \
  >"$W/zero2tied.log" 2>&1 ||
  fail "dp 2 x pp 2, zero 2, tied embeddings did not train"
grep -q "^step *2/2" "$W/zero2tied.log" || fail "dp 2 x pp 2, zero 2, tied: no step 2"
echo "ok   dp 2 x pp 2, zero 2, tied embeddings trains"

# train.resume: auto with one rank's shard of the newest checkpoint corrupt (tp 2: rank 1 alone reads tp1).
write_config "$W/resume.yaml" "$W/run-resume" "{tp: 2}" 4
timeout 120 "${mpirun_cmd[@]}" -np 2 "$P" train --config "$W/resume.yaml" >"$W/resume-1.log" 2>&1 ||
  fail "the tp 2 run failed"
ck=$W/run-resume/checkpoints
shard=$ck/step_00000004/shard-pp0-tp1.safetensors
[[ -f $shard && -d $ck/step_00000003 ]] || fail "checkpoints step_00000003 and step_00000004 were not written"
size=$(stat -c %s "$shard")
printf '\x5a' | dd of="$shard" bs=1 seek=$((size / 2)) conv=notrunc status=none
timeout 120 "${mpirun_cmd[@]}" -np 2 "$P" train --config "$W/resume.yaml" >"$W/resume-2.log" 2>&1 ||
  fail "the resumed run failed"
warning="^polder: warning: train.resume auto: skipped step_00000004 (checkpoint file .*shard-pp0-tp1"
n=$(grep -c "$warning.safetensors' is corrupted" "$W/resume-2.log" || true)
((n == 1)) || fail "$n warnings naming the corrupt step_00000004 shard, expected exactly 1"
grep -q "resumed from $ck/step_00000003 at step 3" "$W/resume-2.log" || fail "did not resume from step 3"
want=$(grep "^step *4/4" "$W/resume-1.log" | sed 's/ | lr.*//')
got=$(grep "^step *4/4" "$W/resume-2.log" | sed 's/ | lr.*//')
[[ -n $want && $got == "$want" ]] || fail "step 4 after the fallback: '$got', uninterrupted: '$want'"
# The same fault in a checkpoint named explicitly: one error line from rank 0 (rank 1 found it), exit 2.
size=$(stat -c %s "$shard")
printf '\x5a' | dd of="$shard" bs=1 seek=$((size / 2)) conv=notrunc status=none
expect_one_error explicit 2 "{tp: 2}" "step_00000004/shard-pp0-tp1.safetensors' is corrupted: SHA-256" \
  --set train.steps=4 --set "train.resume=$ck/step_00000004"
echo "ok   tp 2, rank 1's newest shard corrupt: one warning, both ranks resumed from step 3, same step-4 loss"
echo "mpi config error test passed"
