#!/usr/bin/env bash
# Runs sim_nccl_test (the emulated NCCL under mpirun): the checks on 1 to 4 ranks with small shared-memory
# slots (so that transfers go in many chunks), then each expected failure in a process group of its own, with
# the line the emulator must print for it. Usage: sim_nccl_test.sh path/to/sim_nccl_test [mpirun]
# (Open MPI 4's mpirun: the peer-death case turns off its abort-on-exit with orte_abort_on_non_zero_status).
set -u
test_bin=${1:?usage: sim_nccl_test.sh path/to/sim_nccl_test [mpirun]}
mpirun=${2:-mpirun}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
failures=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

fail() {
  echo "FAIL: $1"
  sed 's/^/  | /' "$log"
  failures=$((failures + 1))
}

for np in 1 2 3 4; do
  if POLDER_SIM_NCCL_SLOT=64K POLDER_SIM_NCCL_DEADLOCK=60 timeout 300 "$mpirun" -np "$np" "$test_bin" >"$log" 2>&1 &&
    grep -q "^OK: $np ranks, 0 failure" "$log"; then
    echo "ok: checks on $np rank(s)"
  else
    fail "checks on $np rank(s)"
  fi
done

# expect MODE PATTERN [ENV=VALUE ...] [-- MPIRUN-OPTIONS]: mode prints "OK MODE" and the log has PATTERN.
expect() {
  local mode=$1 pattern=$2
  shift 2
  local envs=() opts=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ $# -gt 0 ] && shift && opts=("$@")
  env "${envs[@]}" timeout 120 "$mpirun" "${opts[@]}" -np 2 "$test_bin" "$mode" >"$log" 2>&1
  if grep -q "^OK $mode" "$log" && grep -qE "$pattern" "$log"; then
    echo "ok: $mode"
  else
    fail "$mode (expected /$pattern/)"
  fi
}

expect deadlock \
  'sim: NCCL deadlock: rank 0 blocked in ncclSend to 1 \(seq 1\) for [0-9]+ s; rank 1 blocked in ncclSend to 0 \(seq 1\)' \
  POLDER_SIM_NCCL_DEADLOCK=2
expect outside \
  'sim: NCCL deadlock: rank 0 blocked in ncclAllReduce \(seq 1\) for [0-9]+ s; rank 1 is in no NCCL call on this comm' \
  POLDER_SIM_NCCL_DEADLOCK=1
expect slow_peer . POLDER_SIM_NCCL_DEADLOCK=1
expect destroy \
  'sim: NCCL deadlock: ncclCommDestroy on comm [0-9a-f]+ waited 1 s for the other ranks: rank 0 blocked in ncclCommDestroy \(host\) for [0-9]+ s; rank 1 is in no NCCL call' \
  POLDER_SIM_NCCL_DEADLOCK=1
expect mismatch \
  'collective mismatch on comm [0-9a-f]+: rank 0 called ncclAllReduce\(64 x float32, sum\) as collective 1 \(seq 1\) but rank 1 called ncclAllReduce\(32 x float32, sum\)' \
  POLDER_SIM_NCCL_DEADLOCK=30
expect p2p_mismatch \
  'send/recv mismatch on comm [0-9a-f]+: rank 0 ncclSend of 64 x float32 to rank 1 \(seq 1\) but rank 1 ncclRecv of 60 x float32' \
  POLDER_SIM_NCCL_DEADLOCK=30
# A dead or aborting peer: rank 0's operation stays pending with async error ncclRemoteError (no deadlock
# report although POLDER_SIM_NCCL_DEADLOCK is short) until rank 0 aborts the comm; CUDA works afterwards.
remote='async error: remote process exited or there was a network error, cudaStreamQuery: device not ready then device not ready, ncclCommAbort: no error, cudaStreamSynchronize: no error, memset: no error'
expect abort 'sim: NCCL: rank 1 aborted comm [0-9a-f]+ while rank 0 was in ncclAllReduce \(seq 1\)' \
  POLDER_SIM_NCCL_DEADLOCK=1
grep -qF "rank 0: abort: $remote" "$log" || fail "abort: rank 0's line"
grep -q deadlock "$log" && fail "abort: a deadlock report"
# Open MPI would kill rank 0 as soon as rank 1 exits; the emulator must see the death first.
expect die 'sim: NCCL: rank 1 \(pid [0-9]+\) died during ncclAllReduce \(seq 2\)' \
  POLDER_SIM_NCCL_DIE=1:2 POLDER_SIM_NCCL_DEADLOCK=1 -- --mca orte_abort_on_non_zero_status 0
grep -qF "rank 0: die: $remote" "$log" || fail "die: rank 0's line"
[ "$(grep -c 'sim: NCCL: rank 1 (pid' "$log")" = 1 ] || fail "die: the death reported once"
grep -q deadlock "$log" && fail "die: a deadlock report"
# exit() while the stream worker still waits on the dead peer: prompt (the wait ends at exit).
expect die_exit 'rank 0: exit took [0-9.]+ s \(prompt\)' \
  POLDER_SIM_NCCL_DIE=1:2 POLDER_SIM_NCCL_DEADLOCK=1 -- --mca orte_abort_on_non_zero_status 0
expect init_timeout 'rank\(s\) 1 of 2 never arrived within 2 s' POLDER_SIM_NCCL_TIMEOUT=2
expect oom "Cuda failure 'out of memory': NCCL ring connections \(first collective\)" POLDER_SIM_MEMORY=40M

if ls /dev/shm 2>/dev/null | grep -q '^polder-nccl-'; then
  echo "note: /dev/shm holds polder-nccl-* segments (from this run or an earlier crashed one)"
fi
[ "$failures" -eq 0 ] && echo "all passed" || echo "$failures failure(s)"
[ "$failures" -eq 0 ]
