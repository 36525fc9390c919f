#!/usr/bin/env bash
# A rank that dies mid-collective must end the whole job with a non-zero exit code, never a hang: for each way
# of dying (SIGKILL, abort, an uncaught polder::Error, exit() without parallel::finalize()), run the drill on
# 2 ranks under `timeout 90` and require a non-zero exit from mpirun itself (not timeout's 124) within 60 s.
# Usage: mpi_dead_rank.sh <test_mpi_comm executable> <mpirun and its options...>
set -u
exe=$1
shift
status=0
export POLDER_EXIT_GRACE_S=3  # --die=exit: how long the exiting rank waits for the others before aborting
for how in kill abort throw exit; do
  start=$(date +%s%N)
  timeout 90 "$@" -np 2 "$exe" --die="$how" >/tmp/mpi_dead_rank.$$.log 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$ms" -ge 60000 ]; then
    echo "FAIL --die=$how: mpirun exited with $rc after ${ms} ms (want non-zero, not a timeout, under 60 s)"
    tail -20 /tmp/mpi_dead_rank.$$.log
    status=1
  else
    echo "ok   --die=$how: mpirun exited with $rc after $ms ms"
  fi
done
# Every rank leaving main without finalize() (e.g. the same config error everywhere) keeps its exit code.
timeout 90 "$@" -np 2 "$exe" --all-exit-5 >/tmp/mpi_dead_rank.$$.log 2>&1
rc=$?
if [ "$rc" -ne 5 ]; then
  echo "FAIL --all-exit-5: mpirun exited with $rc (want 5)"
  tail -20 /tmp/mpi_dead_rank.$$.log
  status=1
else
  echo "ok   --all-exit-5: mpirun exited with 5"
fi
rm -f /tmp/mpi_dead_rank.$$.log
exit $status
