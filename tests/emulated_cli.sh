#!/usr/bin/env bash
# The command line on the emulated CUDA device (issue 21): `polder train --set train.device=cuda` at one rank
# and at dp2 with ZeRO-2 under mpirun (the emulated NCCL), tp2 x pp2 with sequence parallelism, a CUDA
# checkpoint continued on the CPU, two ranks on one GPU and a tp group across nodes refused with one line, and
# a rank
# dying inside an NCCL collective (POLDER_SIM_NCCL_DIE): the job must end, non-zero and within a bound, with a
# line naming the dead peer or the asynchronous NCCL error the watchdog polls, instead of hanging.
# Usage: tests/emulated_cli.sh <polder binary (emulated build)> <work folder> <mpirun command...>
set -euo pipefail
P="$1"
W="$2"
shift 2
MPIRUN=("$@")
rm -rf "$W"
mkdir -p "$W/docs"
for f in Apache-2.0 GPL-3 MPL-2.0; do cp "/usr/share/common-licenses/$f" "$W/docs/$f.txt"; done
"$P" tokenizer train --input "$W"/docs/*.txt --vocab-size 300 --out "$W/tok.json" >/dev/null
"$P" data prepare --input "$W"/docs/*.txt --tokenizer "$W/tok.json" --out "$W/ds" --workers 1 >/dev/null
cat >"$W/cfg.yaml" <<YAML
model: {vocab_size: 304, hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2,
        max_seq_len: 16}
data: {tokenizer: $W/tok.json, seq_len: 16, valid_fraction: 0.1, datasets: [{name: lic, prefix: $W/ds, weight: 1}]}
train: {steps: 3, global_batch: 4, micro_batch: 2, eval_every: 0, run_dir: $W/run, threads: 1}
optim: {lr: 3.0e-3}
schedule: {warmup_steps: 1}
checkpoint: {every: 3}
logging: {every: 1, tensorboard: false}
YAML

# One rank on the emulated GPU, then the same checkpoint continued on the CPU.
"$P" train --config "$W/cfg.yaml" --set train.device=cuda | tee "$W/one.log"
grep -q "device: NVIDIA H100 80GB HBM3 (emulated)" "$W/one.log"
grep -qE "step +3/3" "$W/one.log"
"$P" train --config "$W/cfg.yaml" --set train.steps=4 | tee "$W/cpu.log"
grep -q "resumed from .*step_00000003 at step 3" "$W/cpu.log"

# dp2 with ZeRO-2 over the emulated NCCL.
"${MPIRUN[@]}" -np 2 "$P" train --config "$W/cfg.yaml" --set train.device=cuda --set parallel.zero=2 \
  --set train.run_dir="$W/run-dp2" | tee "$W/dp2.log"
grep -qE "step +3/3" "$W/dp2.log"

# Tensor and pipeline parallelism on the GPU path (issue 22): tp2 x pp2 with sequence parallelism on 4 ranks.
"${MPIRUN[@]}" -np 4 "$P" train --config "$W/cfg.yaml" --set train.device=cuda --set parallel.tp=2 \
  --set parallel.pp=2 --set parallel.sequence_parallel=true --set train.run_dir="$W/run-tp2pp2" | tee "$W/tp2pp2.log"
grep -qE "step +3/3" "$W/tp2pp2.log"

# Context parallelism on the GPU path (issue 23): cp2 x tp2 on 4 ranks.
"${MPIRUN[@]}" -np 4 "$P" train --config "$W/cfg.yaml" --set train.device=cuda --set parallel.tp=2 \
  --set parallel.cp=2 --set train.run_dir="$W/run-cp2tp2" | tee "$W/cp2tp2.log"
grep -qE "step +3/3" "$W/cp2tp2.log"
grep -q "cp=2" "$W/cp2tp2.log"

# A tensor-parallel group across two nodes (POLDER_NODE_NAME stands in for the host names): one line, exit 2.
# shellcheck disable=SC2016  # $OMPI_COMM_WORLD_RANK is expanded by each rank's own shell
if "${MPIRUN[@]}" -np 2 bash -c 'POLDER_NODE_NAME=node$OMPI_COMM_WORLD_RANK exec "$@"' _ "$P" train \
  --config "$W/cfg.yaml" --set train.device=cuda --set parallel.tp=2 --set train.run_dir="$W/run-tpnodes" \
  >"$W/tpnodes.log" 2>"$W/tpnodes.err"; then
  echo "a tp group across nodes was accepted"
  exit 1
fi
grep -q "puts ranks 0 and 1 in one tensor-parallel group across nodes (node0 and node1)" "$W/tpnodes.err" ||
  { cat "$W/tpnodes.err"; exit 1; }
[[ $(grep -c "polder: error" "$W/tpnodes.err") == 1 ]] || { echo "not one line:"; cat "$W/tpnodes.err"; exit 1; }

# Two ranks on one GPU (POLDER_SIM_SHARED_GPU: both processes see the same device UUID, as on a node started
# with more ranks than GPUs): exit 2 and one line, before any work on the GPU.
if POLDER_SIM_SHARED_GPU=1 "${MPIRUN[@]}" -np 2 "$P" train --config "$W/cfg.yaml" --set train.device=cuda \
  --set train.run_dir="$W/run-shared" >"$W/shared.log" 2>"$W/shared.err"; then
  echo "two ranks on one GPU were accepted"
  exit 1
fi
grep -q "ranks 0 and 1 would share one GPU" "$W/shared.err" || { cat "$W/shared.err"; exit 1; }
[[ $(grep -c "polder: error" "$W/shared.err") == 1 ]] || { echo "not one line:"; cat "$W/shared.err"; exit 1; }
[[ ! -d "$W/run-shared/checkpoints" ]]

# Rank 1 dies in its 5th NCCL call; mpirun must not kill rank 0 for it (so that rank 0's own detection is
# what ends the job): the survivor must exit non-zero within 120 s, naming the dead rank.
start=$SECONDS
if POLDER_SIM_NCCL_DIE=1:5 timeout 300 "${MPIRUN[@]}" --mca orte_abort_on_non_zero_status 0 -np 2 "$P" train \
  --config "$W/cfg.yaml" --set train.device=cuda --set train.steps=20 --set train.run_dir="$W/run-die" \
  >"$W/die.log" 2>&1; then
  echo "a rank died but the job succeeded"
  exit 1
fi
elapsed=$((SECONDS - start))
cat "$W/die.log" | grep -v "^\s*$" | tail -5
((elapsed < 120)) || { echo "the job took $elapsed s to end after a rank died"; exit 1; }
grep -qE "rank 1 \(pid [0-9]+\) died|asynchronous NCCL error" "$W/die.log"
echo "emulated cli test passed (dead peer: job ended in $elapsed s)"
