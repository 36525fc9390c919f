#!/usr/bin/env bash
# Mutation checks of the emulated CUDA device (issue 21): each mutation deletes one synchronisation that the
# GPU path needs, rebuilds the emulated build (build-emu/, scripts/emulated_gpu.sh --build first) and runs the
# test that must catch it. A mutation that no test catches is a hole in the emulator or the tests: exit 1.
# The source is restored after each mutation (also on ^C); rerun scripts/emulated_gpu.sh --build afterwards.
#   bash scripts/emulator_mutations.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[[ -d build-emu ]] || bash scripts/emulated_gpu.sh --build

# file | the exact text of the line deleted | what it orders | build target | test command (must fail)
mutations=(
  "parallel/comm_nccl.cpp|cudaStreamWaitEvent(s_->stream, s_->ready, 0)|the NCCL stream waits for the compute stream before reading a collective's input|test_cuda_nccl|build-emu/tests/test_cuda_nccl"
  "parallel/comm_nccl.cpp|cudaStreamWaitEvent(compute, s_->done, 0)|the compute stream waits for a synchronous collective's result|test_cuda_nccl|build-emu/tests/test_cuda_nccl"
  "core/cuda_context.cpp|if (slot.in_flight) CUDA_CHECK(cudaEventSynchronize(slot.done))|the host waits before overwriting a pinned staging buffer an upload may still read|test_cuda_train|build-emu/tests/test_cuda_train [train][cuda]"
  "train/trainer.cpp|watchdog_->add_probe([] { return parallel::nccl_async_error(); }, 2.0);|the watchdog polls ncclCommGetAsyncError, which alone ends a job whose peer died inside a collective (the emulated NCCL, as NCCL, keeps the survivor's collective waiting)|polder|bash tests/emulated_cli.sh build-emu/cli/polder build-emu/mutation_cli mpirun --allow-run-as-root --oversubscribe"
)

restore() { [[ -n ${backup:-} && -f $backup ]] && cp "$backup" "$file" && rm -f "$backup"; backup=; }
trap restore EXIT INT TERM
missed=0
for m in "${mutations[@]}"; do
  IFS='|' read -r file line what target cmd <<<"$m"
  n=$(grep -nF -- "$line" "$file" | cut -d: -f1)
  [[ $(wc -w <<<"$n") == 1 ]] || { echo "mutation: '$line' is not exactly one line of $file" >&2; exit 2; }
  backup=$(mktemp)
  cp "$file" "$backup"
  sed -i "${n}d" "$file"
  echo "== $file:$n deleted ($what)"
  cmake --build build-emu --target "$target" >/dev/null
  start=$SECONDS
  if timeout 900 $cmd >"build-emu/mutation.log" 2>&1; then
    echo "   NOT CAUGHT: $cmd passed"
    missed=1
  else
    echo "   caught in $((SECONDS - start)) s: $(grep -m1 -E 'FAILED|sim:|REQUIRE|CHECK' build-emu/mutation.log || tail -1 build-emu/mutation.log)"
  fi
  restore
done
cmake --build build-emu >/dev/null
exit $missed
