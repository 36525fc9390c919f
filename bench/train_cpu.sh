#!/usr/bin/env bash
# Training throughput on CPU, polder vs PyTorch eager (bench/train_torch.py) and torch.compile
# (bench/torch_llama.py --device cpu) in the same run: the tiny model (configs/tiny-nl.yaml as is: 4
# micro-batches of 4), the same as one micro-batch of 16 (tiny1), and a 125m-shaped one (configs/llama-125m.yaml
# cut to seq 256 x 2 sequences so a step takes seconds), in f32 and in the bf16 policy (torch: bf16 autocast).
# Same shapes, batch, accumulation, AdamW and thread count on all sides; tokens/s = global_batch * seq_len /
# median step time after step 1 (torch.compile: after its warm-up steps, compilation excluded). Runs alternate
# per row, so background load (this is a shared machine) hits all alike. Also prints the GEMM-bound limit of
# each shape: the step's GEMM FLOPs (polder's profile) at the GEMM rate of polder's own profile. polder runs with
# train.profile on for that (two clock reads and a map update per kernel call, ~700 calls per tiny step; its
# cost was not measured apart, estimated well under 1% of a step).
#
# Usage: bench/train_cpu.sh            env: STEPS=6 THREADS=2 MODELS="tiny tiny1 125m" PRECISIONS="f32 bf16"
#        POLDER=build-bench/cli/polder PYTHON=/work/venv-torch/bin/python WORK=/tmp/polder-train-cpu
#        TORCH_ATTENTION=sdpa|eager (eager: the reference's einsum/softmax attention)
#        TORCH_BF16_STEPS=$STEPS (fewer when torch's bf16 autocast is very slow, as on CPUs without AVX-512-BF16)
#        TORCH_COMPILE=1 (0 leaves the torch.compile column out)
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-6}
THREADS=${THREADS:-2}
MODELS=${MODELS:-"tiny tiny1 125m"}
PRECISIONS=${PRECISIONS:-"f32 bf16"}
POLDER=${POLDER:-build-bench/cli/polder}
PYTHON=${PYTHON:-/work/venv-torch/bin/python}
WORK=${WORK:-/tmp/polder-train-cpu}
TORCH_ATTENTION=${TORCH_ATTENTION:-sdpa}
TORCH_COMPILE=${TORCH_COMPILE:-1}
TORCH_BF16_STEPS=${TORCH_BF16_STEPS:-$STEPS}
mkdir -p "$WORK"

if [[ ! -x "$POLDER" ]]; then
  echo "no polder binary at $POLDER; build it first:" >&2
  echo "  cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DPOLDER_CUDA=OFF && cmake --build build-bench --target polder" >&2
  exit 1
fi

# Data: the real Dutch corpus when prepared, else a synthetic uint16 Megatron dataset (random ids < 32000).
if [[ -f data_work/datasets/nl.bin && -f data_work/datasets/nl.idx ]]; then
  DATA_PREFIX=data_work/datasets/nl
  DATA_DESC="real: data_work/datasets/nl"
else
  DATA_PREFIX=$WORK/synthetic
  DATA_DESC="synthetic: $DATA_PREFIX (random ids)"
  "$PYTHON" - "$DATA_PREFIX" <<'EOF'
import struct, sys
import numpy as np
prefix, rng = sys.argv[1], np.random.default_rng(1234)
lengths = rng.integers(200, 2000, size=2000)
with open(prefix + ".bin", "wb") as f:
    for n in lengths:
        f.write(rng.integers(0, 32000, size=int(n)).astype(np.uint16).tobytes())
pointers = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) * 2
with open(prefix + ".idx", "wb") as f:  # Megatron MMIDIDX v1, dtype code 8 = uint16, one sequence per document
    f.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, len(lengths), len(lengths) + 1))
    f.write(lengths.astype(np.int32).tobytes() + pointers.tobytes() + np.arange(len(lengths) + 1, dtype=np.int64).tobytes())
EOF
fi

config_of() { case $1 in tiny | tiny1) echo configs/tiny-nl.yaml ;; 125m) echo configs/llama-125m.yaml ;; esac; }
# Shape overrides, identical on both sides.
shape_of() {
  case $1 in
    tiny) echo "" ;;
    tiny1) echo "train.micro_batch=16 train.global_batch=16" ;;
    125m) echo "model.vocab_size=32000 model.max_seq_len=256 data.seq_len=256 train.micro_batch=1 train.global_batch=2" ;;
  esac
}

median_tok_s() {  # <run_dir>: tokens/s from metrics.jsonl, median step time of steps >= 2
  "$PYTHON" - "$1" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
rows = [r for r in rows if r.get("kind") == "train"]
t = statistics.median([r["step_time_s"] for r in rows if r["step"] >= 2] or [rows[0]["step_time_s"]])
tokens = rows[0]["tokens_per_s"] * rows[0]["step_time_s"]
print(f"{tokens / t:.1f} {t:.3f}")
EOF
}

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
TORCH_VERSION=$("$PYTHON" -c 'import torch; print(torch.__version__)')
echo "CPU: $CPU ($(nproc) cores visible), threads: $THREADS, steps: $STEPS (median of steps 2..$STEPS)"
echo "torch $TORCH_VERSION ($TORCH_ATTENTION attention), $("$POLDER" --version 2>/dev/null | head -1), data $DATA_DESC"

ROWS=()
for model in $MODELS; do
  cfg=$(config_of "$model")
  shape=$(shape_of "$model")
  [[ -n "$shape" ]] && echo "$model: $cfg with overrides: $shape"
  for prec in $PRECISIONS; do
    sets=()
    for kv in $shape; do sets+=(--set "$kv"); done
    sets+=(--set train.precision="$prec" --set train.threads="$THREADS" --set train.device=cpu)
    run_dir=$WORK/run-$model-$prec
    rm -rf "$run_dir"
    load=$(cut -d' ' -f1 /proc/loadavg)
    cmd=("$POLDER" train -c "$cfg" "${sets[@]}" --set train.steps="$STEPS" --set train.eval_every=0
         --set checkpoint.every=1000000 --set logging.every=1 --set logging.tensorboard=false --set train.resume=none
         --set train.run_dir="$run_dir" --set schedule.warmup_steps=1 --set train.profile=true
         --set "data.datasets=[{name: nl, prefix: $DATA_PREFIX, weight: 1}]")
    echo "+ ${cmd[*]}"
    "${cmd[@]}" | sed -u 's/^/  /' | tee "$WORK/polder-$model-$prec.log"
    batch=$(grep -o '[0-9]* sequences x [0-9]* tokens ([0-9]* micro-batches of [0-9]*)' "$WORK/polder-$model-$prec.log" || true)
    read -r p_tok p_step < <(median_tok_s "$run_dir")
    # GEMM-bound limit: the profile's GEMM seconds per step (the step if nothing but its GEMMs took time).
    read -r gemm_s gemm_rate < <("$PYTHON" - "$run_dir/profile.json" <<'EOF2'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["kind"] == "GEMM"]
s = sum(r["seconds_per_step"] for r in rows)
flops = sum(r["gflops"] * r["seconds_per_step"] for r in rows if r.get("gflops"))
print(f"{s:.3f} {flops / s if s else 0:.0f}")
EOF2
)
    cp "$run_dir/profile.txt" "$WORK/profile-$model-$prec.txt"
    rm -rf "$run_dir/checkpoints"
    tsteps=$STEPS
    [[ $prec == bf16 ]] && tsteps=$TORCH_BF16_STEPS
    tcmd=("$PYTHON" bench/train_torch.py -c "$cfg" "${sets[@]}" --steps "$tsteps" --attention "$TORCH_ATTENTION")
    echo "+ ${tcmd[*]}"
    "${tcmd[@]}" | sed -u 's/^/  /' | tee "$WORK/torch-$model-$prec.log"
    t_tok=$(tail -1 "$WORK/torch-$model-$prec.log" | sed -E 's/.* ([0-9.]+) tok\/s$/\1/')
    t_step=$(tail -1 "$WORK/torch-$model-$prec.log" | sed -E 's/.*median ([0-9.]+) s\/step.*/\1/')
    ratio=$(awk -v a="$p_tok" -v b="$t_tok" 'BEGIN { printf "%.2f", a / b }')
    c_cell="-" c_ratio="-"
    if [[ $TORCH_COMPILE != 0 ]]; then
      # torch.compile per block and head, SDPA (bench/torch_llama.py): warm-up steps (compilation) untimed.
      ccmd=(env OMP_NUM_THREADS="$THREADS" "$PYTHON" bench/torch_llama.py -c "$cfg" "${sets[@]}" --device cpu
            --compile --precision "$prec" --warmup 2 --steps "$((tsteps > 2 ? tsteps - 1 : 1))" --name "$model")
      echo "+ ${ccmd[*]}"
      "${ccmd[@]}" | tee "$WORK/compile-$model-$prec.json" | sed -u 's/^/  /'
      read -r c_tok c_step c_ok < <("$PYTHON" - "$WORK/compile-$model-$prec.json" <<'EOF2'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
ok = "compiled" if r.get("compile") and "error" not in r else ("eager fallback" if "tokens_per_s" in r else "failed")
print(f"{r.get('tokens_per_s', 0):.1f} {r.get('step_time_s', 0):.3f} {ok.replace(' ', '_')}")
EOF2
)
      case $c_ok in
        compiled) c_cell="$c_tok ($c_step s/step)" ;;
        eager_fallback) c_cell="$c_tok ($c_step s/step; compile failed, eager)" ;;
        *) c_cell="failed (see $WORK/compile-$model-$prec.json)" c_tok=0 ;;
      esac
      c_ratio=$(awk -v a="$p_tok" -v b="$c_tok" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')
    fi
    limit=$(awk -v s="$p_step" -v g="$gemm_s" 'BEGIN { printf "%.2f", s / g }')
    ROWS+=("| $model | $batch | $prec | $p_tok ($p_step s/step) | $t_tok ($t_step s/step) | ${ratio}x | $c_cell | $c_ratio | $gemm_s s at $gemm_rate GFLOP/s: step = ${limit}x | $load |")
  done
done

echo
echo "| model | batch per step | precision | polder tok/s | torch eager tok/s | polder / eager | torch.compile tok/s | polder / compile | polder's GEMMs alone (GEMM-bound limit) | load avg (1 min) before |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
