#!/usr/bin/env bash
# The one script for a single-GPU machine, run from the folder pack.sh made (gpu-pack/): finds cuDNN and NCCL in
# the Python site-packages (gpu_env.sh), prints the device and library versions, runs every [cuda] test of every
# packed test binary (and test_cuda_kernels under compute-sanitizer memcheck while the test phase has time left),
# then bench_gpu_kernels (kernels vs copy bandwidth and cuBLASLt) and bench_train.sh (polder train vs PyTorch,
# llama-125m and llama-1b shapes). Writes the full log and one JSON file (steps + kernels + training) to
# $POLDER_PERF_DIR (default: docs/perf next to this script) as gpu-<date>.log / .json and prints a short table
# last. Every step has a time limit and a failing step never stops the others: the whole run stays under 8
# minutes (tests <= 85 s, kernels <= 90 s, training <= 280 s) and the JSON and the table are always written.
# POLDER_CHECK_ONLY=tests|bench|train reruns one part (files then named gpu-<date>-<part>.*);
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
tests_budget=85
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

if [[ $only == all || $only == tests ]]; then
  phase0=$(date +%s)
  for exe in "$here"/bin/test_*; do
    [[ -x $exe ]] || continue
    left=$((tests_budget - ($(date +%s) - phase0)))
    if ((left < 5)); then
      echo "$(basename "$exe")|skipped(time)|0|0|0" >> "$steps_tsv"
      continue
    fi
    run_step "$(basename "$exe")" "$((left < 120 ? left : 120))" "$exe" "[cuda]" --durations yes
  done
  left=$((tests_budget - ($(date +%s) - phase0)))
  if [[ $sanitize == 1 && -x $here/bin/test_cuda_kernels ]] && command -v compute-sanitizer > /dev/null && ((left >= 15)); then
    run_step "memcheck test_cuda_kernels" "$left" compute-sanitizer --tool memcheck --error-exitcode 3 \
      "$here/bin/test_cuda_kernels" "[cuda]"
  fi
fi

kernels_json=""
if [[ $only == all || $only == bench ]]; then
  kernels_json=$work/kernels.json
  rm -f "$kernels_json"
  if [[ -x $here/bin/bench_gpu_kernels ]]; then
    # shellcheck disable=SC2086
    run_step bench_gpu_kernels 90 "$here/bin/bench_gpu_kernels" --max-seconds 70 --json "$kernels_json" \
      ${POLDER_BENCH_ARGS:-}
  else
    echo "bench_gpu_kernels|not packed|0|0|0" >> "$steps_tsv"
  fi
  # Own GEMM vs cuBLASLt (TFLOP/s, square and llama-1b/8b layer shapes); merged into the JSON as "gemm".
  gemm_json=$work/gemm.json
  rm -f "$gemm_json"
  if [[ -x $here/bin/bench_gpu_gemm ]]; then
    run_step bench_gpu_gemm 60 "$here/bin/bench_gpu_gemm" --json "$gemm_json"
  else
    echo "bench_gpu_gemm|not packed|0|0|0" >> "$steps_tsv"
  fi
fi

# Attention (one step, <= 90 s): own flash kernel vs cuDNN SDPA vs baseline vs auto (bench_gpu_attention), then
# PyTorch SDPA on the same shapes (attention_torch.py); both JSONs are merged into the results file below.
attn_json="" attn_torch_json=""
attn_py=$here/bench/attention_torch.py
[[ -f $attn_py ]] || attn_py=$here/../bench/gpu/attention_torch.py
if [[ $only == all || $only == bench ]]; then
  attn_json=$work/attention.json attn_torch_json=$work/attention_torch.json
  rm -f "$attn_json" "$attn_torch_json"
  if [[ -x $here/bin/bench_gpu_attention ]]; then
    run_step bench_gpu_attention 90 bash -c "'$here/bin/bench_gpu_attention' --max-seconds 45 --json '$attn_json'; \
      rc=\$?; if [[ -f '$attn_py' ]]; then timeout 35 python3 '$attn_py' --max-seconds 25 --json '$attn_torch_json'; \
      else echo 'attention_torch.py not packed: no PyTorch SDPA column'; fi; exit \$rc"
  else
    echo "bench_gpu_attention|not packed|0|0|0" >> "$steps_tsv"
  fi
fi

train_json=""
if [[ $only == all || $only == train ]]; then
  train_json=$work/train.json
  rm -f "$train_json"
  echo "== bench_train.sh (limit 280 s)"
  t0=$(date +%s)
  WORK=$work/train TOTAL_BUDGET=270 timeout -k 10 280 bash "$here/bench_train.sh" "$train_json"
  rc=$?
  case $rc in 0) status=pass ;; 124 | 137) status=timeout ;; *) status="fail($rc)" ;; esac
  echo "bench_train|$status|0|0|$(($(date +%s) - t0))" >> "$steps_tsv"
fi

echo
echo "== summary: log $log, results $json ($(elapsed) s)"
commit=$(sed -n 's/^commit: //p' "$here/MANIFEST" 2> /dev/null)
if ! timeout 60 python3 "$here/perf_summary.py" merge --out "$json" --steps "$steps_tsv" \
  ${kernels_json:+--kernels "$kernels_json"} ${train_json:+--train "$train_json"} \
  --meta "date=$stamp" --meta "part=$only" --meta "device=$device_name" --meta "driver=$driver" \
  --meta "commit=$commit" --meta "seconds=$(elapsed)"; then
  # No usable Python: the steps alone, as JSON and as a table.
  {
    echo "{"
    echo "  \"date\": \"$stamp\", \"device\": \"$device_name\", \"driver\": \"$driver\", \"commit\": \"$commit\","
    echo "  \"error\": \"perf_summary.py failed: kernels and training results are in $work\","
    echo "  \"steps\": ["
    sep=""
    while IFS='|' read -r name status passed failed secs; do
      echo "    $sep{\"name\": \"$name\", \"status\": \"$status\", \"passed\": $passed, \"failed\": $failed, \"seconds\": $secs}"
      sep=","
    done < "$steps_tsv"
    echo "  ]"
    echo "}"
  } > "$json"
  printf '%-32s %-16s %7s %7s %6s\n' step status passed failed sec
  while IFS='|' read -r name status passed failed secs; do
    printf '%-32s %-16s %7s %7s %6s\n' "$name" "$status" "$passed" "$failed" "$secs"
  done < "$steps_tsv"
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
bad=0
while IFS='|' read -r name status _; do
  [[ $name == test_* || $name == memcheck* ]] || continue
  [[ $status == pass || $status == "no [cuda] tests" ]] || bad=1
done < "$steps_tsv"
exit $bad
