#!/usr/bin/env bash
# End-to-end training throughput on one GPU, polder against PyTorch on the same model, batch and sequence
# length: `polder train` (device cuda, bf16 policy) and bench/torch_llama.py (torch.compile, SDPA, fused AdamW,
# bf16 autocast) for the llama-125m and llama-1b shapes, on a synthetic random-token dataset written by
# make_tokens (the GPU machine has no corpus). polder's tokens/s and MFU are the median over its steps after the
# first two (from runs/<name>/metrics.jsonl), torch's over its steps after its warm-up (compilation excluded and
# reported apart); both MFUs use train::flops_per_token (6N + 12 L H D T) and the same peak. Each run has a time
# limit (POLDER_TIMEOUT 90 s; TORCH_TIMEOUT 120 s, compilation included: at the limit torch_llama.py reports the
# steps timed so far) and the whole script a budget (TOTAL_BUDGET, 285 s): what does not fit is skipped.
# polder is stopped once its last step is logged, so the 15 GB final checkpoint of llama-1b is never written.
#
# Usage: bench_train.sh [OUT.json]   (default $WORK/train.json); prints a table last.
# Runs from the folder pack.sh made (bin/polder, bin/make_tokens, configs/, bench/torch_llama.py) or from
# scripts/gpu/ in a checkout (binaries from $POLDER_BUILD, default build-gpu). Environment:
#   BENCH_TRAIN_CPU=1   plumbing check without a GPU: configs/tiny-nl.yaml cut to seq 64, device cpu, f32, 3 steps;
#                       torch_llama.py --device cpu --precision f32 --no-compile
#   MODELS="llama-125m llama-1b"   which cases run;  POLDER, MAKE_TOKENS, TORCH_LLAMA, PYTHON (python3)
#   WORK (scratch, default /tmp/polder-bench-train), PEAK_TFLOPS (default from the device name),
#   POLDER_TIMEOUT, TORCH_TIMEOUT, TOTAL_BUDGET (seconds)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -x $here/bin/polder ]]; then
  root=$here
  bindir=$here/bin
else
  root=$(cd "$here/../.." && pwd)
  build=${POLDER_BUILD:-$root/build-gpu}
  bindir=""
fi
POLDER=${POLDER:-${bindir:-$build/cli}/polder}
MAKE_TOKENS=${MAKE_TOKENS:-${bindir:-$build/bench/gpu}/make_tokens}
TORCH_LLAMA=${TORCH_LLAMA:-$root/bench/torch_llama.py}
SUMMARY=$here/perf_summary.py
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/polder-bench-train}
POLDER_TIMEOUT=${POLDER_TIMEOUT:-90}
TORCH_TIMEOUT=${TORCH_TIMEOUT:-120}
TOTAL_BUDGET=${TOTAL_BUDGET:-285}
cpu=${BENCH_TRAIN_CPU:-0}
out=${1:-$WORK/train.json}
t_start=$(date +%s)
mkdir -p "$WORK" "$(dirname "$out")"

# name config seq_len micro_batch global_batch steps (polder steps; torch times steps - 3 after 3 warm-ups)
if [[ $cpu == 1 ]]; then
  all_cases=("tiny configs/tiny-nl.yaml 64 2 4 3")
  MODELS=${MODELS:-tiny}
  threads=$(OMP_NUM_THREADS='' nproc)  # nproc honours OMP_NUM_THREADS, which check.sh sets for the tests
  device_name="cpu ($threads threads)"
  peak=${PEAK_TFLOPS:-0}
  skip=1
  export OMP_NUM_THREADS=$threads  # torch takes its intra-op thread count from it
  polder_extra=(--set train.device=cpu --set train.precision=f32 --set train.threads="$threads")
  torch_extra=(--device cpu --precision f32 --no-compile --warmup 1)
else
  # 125m: 32 x 1024 tokens per step in 2 micro-batches of 16; 1b: 8 x 2048 in 2 micro-batches of 4 (fits 80 GB
  # without recompute on both sides: polder ~20 GB of training state + activations, torch about the same).
  all_cases=("llama-125m configs/llama-125m.yaml 1024 16 32 30" "llama-1b configs/llama-1b.yaml 2048 4 8 20")
  MODELS=${MODELS:-llama-125m llama-1b}
  # shellcheck source-path=SCRIPTDIR source=gpu_env.sh
  POLDER_GPU_ENV_QUIET=1 source "$here/gpu_env.sh"
  device_name=$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
  peak=${PEAK_TFLOPS:-$(timeout 30 "$PYTHON" "$TORCH_LLAMA" --print-peak "$device_name" 2>/dev/null || echo 0)}
  skip=2
  polder_extra=(--set train.device=cuda --set train.precision=bf16)
  torch_extra=(--device cuda --warmup 3)
fi
peak=${peak:-0}
echo "bench_train: $device_name, peak ${peak} TFLOP/s, models: $MODELS, limits polder ${POLDER_TIMEOUT} s, torch" \
  "${TORCH_TIMEOUT} s, budget ${TOTAL_BUDGET} s"
echo "bench_train: polder $POLDER, torch $TORCH_LLAMA ($PYTHON)"

cases_tsv=$WORK/cases.tsv
: > "$cases_tsv"
elapsed() { echo $(($(date +%s) - t_start)); }
# Seconds the next run may take: its own limit, or what is left of the budget (0: skip it).
limit_now() {  # limit_now CAP
  local left=$((TOTAL_BUDGET - $(elapsed)))
  ((left < 15)) && { echo 0; return; }
  ((left < $1)) && { echo "$left"; return; }
  echo "$1"
}

# Synthetic data: random ids below 32000 (valid for both vocabularies), 8M tokens in documents of 200..2000.
prefix=$WORK/tokens
data_ok=1
if ! timeout 120 "$MAKE_TOKENS" --prefix "$prefix" --tokens 8000000 --vocab 32000 --seed 1234; then
  echo "bench_train: make_tokens failed ($MAKE_TOKENS); polder runs are skipped" >&2
  data_ok=0
fi

# Runs polder in the background and stops it once the last step is in metrics.jsonl (or at the limit).
# Sets polder_status and polder_seconds.
run_polder() {  # limit log run_dir steps cmd...
  local limit=$1 log=$2 run_dir=$3 steps=$4
  shift 4
  local t0 pid rc done_pat="\"kind\":\"train\",\"step\":$steps,"
  t0=$(date +%s)
  polder_status=""
  echo "+ $*"
  "$@" > "$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if grep -q "$done_pat" "$run_dir/metrics.jsonl" 2>/dev/null; then
      sleep 1
      kill -KILL "$pid" 2>/dev/null
      polder_status=ok
      break
    fi
    if (($(date +%s) - t0 >= limit)); then
      kill -KILL "$pid" 2>/dev/null
      polder_status=timeout
      break
    fi
    sleep 0.5
  done
  wait "$pid" 2>/dev/null
  rc=$?
  if [[ -z $polder_status ]]; then
    if grep -q "$done_pat" "$run_dir/metrics.jsonl" 2>/dev/null; then polder_status=ok; else polder_status="fail($rc)"; fi
  fi
  polder_seconds=$(($(date +%s) - t0))
  if (($(wc -l < "$log") <= 8)); then
    sed 's/^/  | /' "$log"
  else
    head -n 3 "$log" | sed 's/^/  | /'
    echo "  | ..."
    tail -n 4 "$log" | sed 's/^/  | /'
  fi
}

for spec in "${all_cases[@]}"; do
  read -r name config seq micro global steps <<< "$spec"
  [[ " $MODELS " == *" $name "* ]] || continue
  cfg=$root/$config
  echo "== $name: $config, seq $seq, micro-batch $micro, global batch $global, $steps steps ($(elapsed) s so far)"
  run_dir=$WORK/run-$name
  plog=$WORK/polder-$name.log
  rm -rf "$run_dir"
  polder_status=skipped
  polder_seconds=0
  limit=$(limit_now "$POLDER_TIMEOUT")
  if ((data_ok == 0)); then
    polder_status="no data"
  elif ((limit == 0)); then
    echo "  polder skipped: time budget spent"
  else
    run_polder "$limit" "$plog" "$run_dir" "$steps" "$POLDER" train -c "$cfg" \
      --set data.seq_len="$seq" --set train.micro_batch="$micro" --set train.global_batch="$global" \
      --set train.steps="$steps" "${polder_extra[@]}" --set train.peak_tflops="$peak" --set train.eval_every=0 \
      --set schedule.warmup_steps=1 --set checkpoint.every=0 --set logging.every=1 --set logging.tensorboard=false --set train.resume=none \
      --set train.run_dir="$run_dir" --set "data.datasets=[{name: synthetic, prefix: $prefix, weight: 1}]"
    rm -rf "$run_dir/checkpoints"
  fi
  echo "  polder: $polder_status in $polder_seconds s"

  tjson=$WORK/torch-$name.json
  : > "$tjson"
  torch_status=skipped
  torch_seconds=0
  limit=$(limit_now "$TORCH_TIMEOUT")
  if ((limit == 0)); then
    echo "  torch skipped: time budget spent"
  else
    tsteps=$((steps - 3 > 1 ? steps - 3 : 1))
    [[ $cpu == 1 ]] && tsteps=2
    cmd=("$PYTHON" "$TORCH_LLAMA" -c "$cfg" --set data.seq_len="$seq" --set train.micro_batch="$micro"
         --set train.global_batch="$global" --steps "$tsteps" "${torch_extra[@]}" --name "$name")
    [[ $peak != 0 ]] && cmd+=(--peak-tflops "$peak")
    echo "+ ${cmd[*]}"
    t0=$(date +%s)
    timeout -k 10 "$limit" "${cmd[@]}" > "$tjson" 2> "$WORK/torch-$name.err"
    rc=$?
    torch_seconds=$(($(date +%s) - t0))
    case $rc in
      0) torch_status=ok ;;
      124 | 137) torch_status=timeout ;;
      *) torch_status="fail($rc)" ;;
    esac
    grep -v '^W[0-9]' "$WORK/torch-$name.err" | tail -n 3 | sed 's/^/  | /'
  fi
  echo "  torch: $torch_status in $torch_seconds s"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$config" "$seq" "$micro" "$global" "$steps" \
    "$polder_status" "$polder_seconds" "$run_dir" "$plog" "$torch_status" "$torch_seconds" "$tjson" >> "$cases_tsv"
done

echo "== bench_train done in $(elapsed) s; results $out"
"$PYTHON" "$SUMMARY" train "$cases_tsv" --out "$out" --device "$device_name" --peak "$peak" --skip-steps "$skip"
