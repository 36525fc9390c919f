#!/usr/bin/env bash
# The one script for a single-GPU machine, run from the folder pack.sh made (gpu-pack/): finds cuDNN and NCCL in
# the Python site-packages (gpu_env.sh), prints the device and library versions, runs every [cuda] test of every
# packed test binary (and test_cuda_kernels under compute-sanitizer memcheck while the test phase has time left),
# then (on a machine with several GPUs) the tp/pp parity layouts under mpirun, one rank per GPU; then the
# benchmarks: bench_gpu_kernels (memory-bound kernels vs the copy bandwidth, cuBLASLt), bench_gpu_gemm
# (own GEMM vs cuBLASLt), bench_gpu_attention + attention_torch.py (flash vs cuDNN vs baseline vs PyTorch SDPA),
# and bench_train.sh (polder train vs PyTorch, llama-125m and llama-1b shapes). Writes the full log and one JSON
# file (steps, kernels, gemm, attention, training) to $POLDER_PERF_DIR (default: docs/perf next to this script)
# as gpu-<date>.log / .json and prints a short table last. Every step has a time limit and a failing step never
# stops the others; the whole run has a budget (POLDER_CHECK_BUDGET, 465 s: under 8 minutes): each phase gets
# its cap (tests 75 s, kernels 45 s, gemm 60 s, attention 90 s) or less, so that the phases after it keep their
# share, and training gets what is left (at most 280 s). The JSON and the table are always written.
# POLDER_CHECK_ONLY=tests|bench|train reruns one part (files then named gpu-<date>-<part>.*; tests alone may take
# 400 s);
# POLDER_CHECK_SANITIZER=0 skips memcheck; POLDER_BENCH_ARGS adds arguments to bench_gpu_kernels (e.g. --quick).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
stamp=$(date -u +%Y-%m-%d-%H%M)
only=${POLDER_CHECK_ONLY:-all}
case $only in
  all | tests | bench | train) ;;
  *)
    echo "check.sh: POLDER_CHECK_ONLY must be tests, bench or train (or unset for all), got '$only'" >&2
    exit 2
    ;;
esac
suffix=""
[[ $only != all ]] && suffix="-$only"
perf=${POLDER_PERF_DIR:-$here/docs/perf}
mkdir -p "$perf"
log=$perf/gpu-$stamp$suffix.log
json=$perf/gpu-$stamp$suffix.json
work=${POLDER_CHECK_WORK:-/tmp/polder-check-$stamp}
mkdir -p "$work"
sanitize=${POLDER_CHECK_SANITIZER:-1}
budget=${POLDER_CHECK_BUDGET:-465}
t_start=$(date +%s)
exec > >(tee "$log") 2>&1

echo "== polder GPU check $stamp (part: $only)"
[[ -f $here/MANIFEST ]] && cat "$here/MANIFEST"
# shellcheck source-path=SCRIPTDIR source=gpu_env.sh
source "$here/gpu_env.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

echo "== device"
timeout 30 nvidia-smi || echo "nvidia-smi failed"
timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
device_name=$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
driver=$(timeout 30 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)
# Preflight: CUDA 13 needs driver >= 580, and a library the loader cannot find makes every binary exit 127.
echo "== preflight"
echo "driver: ${driver:-unknown} (CUDA 13 needs >= 580)"
if [[ -n $driver && ${driver%%.*} -lt 580 ]]; then
  echo "preflight: driver $driver is older than 580: the CUDA 13 runtime will not start"
fi
for bin in "$here"/bin/* "$here"/cli/polder "$here"/polder; do
  [[ -f $bin && -x $bin ]] || continue
  missing=$(ldd "$bin" 2> /dev/null | grep "not found" | sort -u)
  [[ -n $missing ]] && echo "preflight: $(basename "$bin") cannot load:" && echo "$missing"
done
echo "== libraries"
command -v nvcc > /dev/null && nvcc --version | tail -n 2
for lib in libcudart.so libcublas.so libcublasLt.so libcudnn.so.9 libnccl.so.2; do
  path=$(ldconfig -p 2> /dev/null | awk -v l="$lib" '$1 ~ "^"l {print $NF; exit}')
  for d in "${gpu_env_libdirs[@]}"; do
    [[ -z $path ]] && path=$(find "$d" -maxdepth 1 -name "$lib*" -print -quit 2> /dev/null)
  done
  echo "$lib: ${path:+$(readlink -f "$path")}"
done
timeout 60 python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "nccl", torch.cuda.nccl.version())' 2>&1 | tail -n 1

steps_tsv=$work/steps.tsv  # name|status|passed|failed|seconds
: > "$steps_tsv"
run_step() {  # run_step NAME TIMEOUT CMD...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*"
  local t0 out rc passed failed status
  t0=$(date +%s)
  out=$(timeout -k 10 "$limit" "$@" 2>&1)
  rc=$?
  echo "$out"
  passed=$(sed -n 's/^test cases: *\([0-9]*\).*| *\([0-9]*\) passed.*/\2/p' <<< "$out" | tail -n 1)
  [[ -z $passed ]] && passed=$(sed -n 's/^All tests passed (.* in \([0-9]*\) test case.*/\1/p' <<< "$out" | tail -n 1)
  failed=$(sed -n 's/^test cases:.*| *\([0-9]*\) failed.*/\1/p' <<< "$out" | tail -n 1)
  case $rc in
    0) status=pass ;;
    124 | 137) status=timeout ;;
    *) status="fail($rc)" ;;
  esac
  if grep -q "No test cases matched" <<< "$out"; then status="no [cuda] tests"; fi
  # A test that found no device warns and passes; on the GPU machine that is a failure of the setup.
  if grep -q "skipped: no CUDA device" <<< "$out"; then status="skipped(no GPU)"; fi
  echo "$name|$status|${passed:-0}|${failed:-0}|$(($(date +%s) - t0))" >> "$steps_tsv"
}
elapsed() { echo $(($(date +%s) - t_start)); }
# Seconds a phase may take: its cap, or less so that the phases after it keep `reserve` seconds of the budget
# (0: skip it). Training, last, keeps 120 s; the summary 10 s. The tests come first and get 120 s: on a first
# run correctness matters more than the training numbers (13 test programs with [cuda] cases, Nov 2026).
phase_limit() {  # phase_limit CAP RESERVE
  local left=$((budget - $(elapsed) - $2))
  ((left < 10)) && { echo 0; return; }
  ((left < $1)) && { echo "$left"; return; }
  echo "$1"
}
runs() { [[ $only == all || $only == "$1" ]]; }
reserve_train=0
runs train && reserve_train=120
reserve_bench=0
runs bench && reserve_bench=$((45 + 60 + 90))

if runs tests; then
  phase0=$(date +%s)
  tests_cap=120
  [[ $only == tests ]] && tests_cap=400  # a rerun of the tests alone may take the whole budget
  tests_budget=$(phase_limit "$tests_cap" $((reserve_bench + reserve_train + 10)))
  for exe in "$here"/bin/test_*; do
    [[ -x $exe ]] || continue
    [[ $(basename "$exe") == test_mpi_* ]] && continue  # multi-rank: below, under mpirun
    left=$((tests_budget - ($(date +%s) - phase0)))
    if ((left < 5)); then
      echo "$(basename "$exe")|skipped(time)|0|0|0" >> "$steps_tsv"
      continue
    fi
    run_step "$(basename "$exe")" "$((left < 120 ? left : 120))" "$exe" "[cuda]" --durations yes
  done
  # Tensor/sequence/pipeline parity over real NCCL (issue 22): the layouts of test_mpi_cuda_parity with one
  # rank per GPU, at 2, 4 and 8 ranks as far as the machine's GPUs go.
  if [[ -x $here/bin/test_mpi_cuda_parity ]]; then
    gpus=$(timeout 30 nvidia-smi -L 2> /dev/null | grep -c '^GPU')
    if ((gpus < 2)); then
      echo "== tp/pp parity over NCCL: not run: this machine has ${gpus} GPU and the layouts need one GPU per rank (2, 4 or 8)"
    elif ! command -v mpirun > /dev/null; then
      echo "== tp/pp parity over NCCL: not run: no mpirun on this machine"
    else
      for np in 2 4 8; do
        ((np <= gpus)) || continue
        left=$((tests_budget - ($(date +%s) - phase0)))
        ((left >= 10)) || { echo "test_mpi_cuda_parity np$np|skipped(time)|0|0|0" >> "$steps_tsv"; continue; }
        run_step "test_mpi_cuda_parity np$np" "$((left < 120 ? left : 120))" mpirun --allow-run-as-root \
          --oversubscribe -np "$np" "$here/bin/test_mpi_cuda_parity"
      done
    fi
  fi
  left=$((tests_budget - ($(date +%s) - phase0)))
  if [[ $sanitize == 1 && -x $here/bin/test_cuda_kernels ]] && command -v compute-sanitizer > /dev/null && ((left >= 15)); then
    run_step "memcheck test_cuda_kernels" "$left" compute-sanitizer --tool memcheck --error-exitcode 3 \
      "$here/bin/test_cuda_kernels" "[cuda]"
  fi
fi

kernels_json="" gemm_json="" attn_json="" attn_torch_json=""
attn_py=$here/bench/attention_torch.py
[[ -f $attn_py ]] || attn_py=$here/../../bench/gpu/attention_torch.py
if runs bench; then
  # Memory-bound kernels vs the copy, cuBLASLt; its cuBLASLt model shapes and baseline attention are left out
  # when bench_gpu_gemm and bench_gpu_attention (which measure those too) are packed.
  kernels_json=$work/kernels.json
  rm -f "$kernels_json"
  limit=$(phase_limit 45 $((60 + 90 + reserve_train + 10)))
  skip=()
  [[ -x $here/bin/bench_gpu_gemm ]] && skip+=(--skip "cublaslt llama")
  [[ -x $here/bin/bench_gpu_attention ]] && skip+=(--skip attention)
  if [[ ! -x $here/bin/bench_gpu_kernels ]]; then
    echo "bench_gpu_kernels|not packed|0|0|0" >> "$steps_tsv"
  elif ((limit == 0)); then
    echo "bench_gpu_kernels|skipped(time)|0|0|0" >> "$steps_tsv"
  else
    # shellcheck disable=SC2086
    run_step bench_gpu_kernels "$limit" "$here/bin/bench_gpu_kernels" --max-seconds $((limit > 25 ? limit - 12 : 12)) \
      --json "$kernels_json" "${skip[@]}" ${POLDER_BENCH_ARGS:-}
  fi
  # Own GEMM vs cuBLASLt (TFLOP/s, square and llama-1b/8b layer shapes); merged into the JSON as "gemm".
  gemm_json=$work/gemm.json
  rm -f "$gemm_json"
  limit=$(phase_limit 60 $((90 + reserve_train + 10)))
  if [[ ! -x $here/bin/bench_gpu_gemm ]]; then
    echo "bench_gpu_gemm|not packed|0|0|0" >> "$steps_tsv"
  elif ((limit == 0)); then
    echo "bench_gpu_gemm|skipped(time)|0|0|0" >> "$steps_tsv"
  else
    run_step bench_gpu_gemm "$limit" "$here/bin/bench_gpu_gemm" --json "$gemm_json"
  fi
  # Attention: own flash kernel vs cuDNN SDPA vs baseline vs auto (bench_gpu_attention), then PyTorch SDPA on
  # the same shapes (attention_torch.py); both JSONs are merged into the results file below.
  attn_json=$work/attention.json attn_torch_json=$work/attention_torch.json
  rm -f "$attn_json" "$attn_torch_json"
  limit=$(phase_limit 90 $((reserve_train + 10)))
  if [[ ! -x $here/bin/bench_gpu_attention ]]; then
    echo "bench_gpu_attention|not packed|0|0|0" >> "$steps_tsv"
  elif ((limit < 50)); then
    echo "bench_gpu_attention|skipped(time)|0|0|0" >> "$steps_tsv"
  else
    own=$(((limit - 10) / 2)) torch_s=$(((limit - 10) / 2 - 10))
    run_step bench_gpu_attention "$limit" bash -c "'$here/bin/bench_gpu_attention' --max-seconds $own --json '$attn_json'; \
      rc=\$?; if [[ -f '$attn_py' ]]; then timeout $((torch_s + 10)) python3 '$attn_py' --max-seconds $torch_s \
      --json '$attn_torch_json'; else echo 'attention_torch.py not packed: no PyTorch SDPA column'; fi; exit \$rc"
  fi
fi

train_json=""
if runs train; then
  train_json=$work/train.json
  rm -f "$train_json"
  limit=$(phase_limit 280 10)
  if ((limit < 30)); then
    echo "bench_train|skipped(time)|0|0|0" >> "$steps_tsv"
  else
    echo "== bench_train.sh (limit $limit s)"
    t0=$(date +%s)
    WORK=$work/train TOTAL_BUDGET=$((limit - 10)) timeout -k 10 "$limit" bash "$here/bench_train.sh" "$train_json"
    rc=$?
    case $rc in 0) status=pass ;; 124 | 137) status=timeout ;; *) status="fail($rc)" ;; esac
    echo "bench_train|$status|0|0|$(($(date +%s) - t0))" >> "$steps_tsv"
  fi
fi

echo
commit=$(sed -n 's/^commit: //p' "$here/MANIFEST" 2> /dev/null)
python_ok=1
if ! timeout 60 python3 "$here/perf_summary.py" merge --quiet --out "$json" --steps "$steps_tsv" \
  ${kernels_json:+--kernels "$kernels_json"} ${train_json:+--train "$train_json"} \
  --meta "date=$stamp" --meta "part=$only" --meta "device=$device_name" --meta "driver=$driver" \
  --meta "commit=$commit" --meta "seconds=$(elapsed)"; then
  python_ok=0  # no usable Python: the steps alone, as JSON and as a table
  {
    echo "{"
    echo "  \"date\": \"$stamp\", \"device\": \"$device_name\", \"driver\": \"$driver\", \"commit\": \"$commit\","
    echo "  \"error\": \"perf_summary.py failed: the benchmark results are in $work\","
    echo "  \"steps\": ["
    sep=""
    while IFS='|' read -r name status passed failed secs; do
      echo "    $sep{\"name\": \"$name\", \"status\": \"$status\", \"passed\": $passed, \"failed\": $failed, \"seconds\": $secs}"
      sep=","
    done < "$steps_tsv"
    echo "  ]"
    echo "}"
  } > "$json"
fi
if [[ -n $attn_json && -f $attn_py ]]; then
  timeout 30 python3 "$attn_py" merge --into "$json" --polder "$attn_json" --torch "$attn_torch_json" ||
    echo "attention merge failed: results in $attn_json, $attn_torch_json"
fi
if [[ -s ${gemm_json:-} && -s $json ]]; then
  timeout 30 python3 -c 'import json, sys
j = json.load(open(sys.argv[1])); j["gemm"] = json.load(open(sys.argv[2]))
json.dump(j, open(sys.argv[1], "w"), indent=1)' "$json" "$gemm_json" || echo "check.sh: merging $gemm_json failed"
fi
echo
echo "== summary: log $log, results $json ($(elapsed) s)"
if ((python_ok == 0)) || ! timeout 60 python3 "$here/perf_summary.py" table "$json"; then
  printf '%-32s %-16s %7s %7s %6s\n' step status passed failed sec
  while IFS='|' read -r name status passed failed secs; do
    printf '%-32s %-16s %7s %7s %6s\n' "$name" "$status" "$passed" "$failed" "$secs"
  done < "$steps_tsv"
fi
bad=0
while IFS='|' read -r name status _; do
  [[ $name == test_* || $name == memcheck* ]] || continue
  [[ $status == pass || $status == "no [cuda] tests" ]] || bad=1
done < "$steps_tsv"
exit $bad
