#!/usr/bin/env bash
# The one script for a single-GPU machine, run from the folder pack.sh made (gpu-pack/): finds cuDNN and NCCL in
# the Python site-packages, prints the device and library versions, runs every [cuda] test of every packed test
# binary (and the test_cuda_kernels run again under compute-sanitizer memcheck), then any packed GPU benchmark.
# Writes the full log and a JSON summary to $POLDER_PERF_DIR (default: docs/perf next to this script) as
# gpu-<date>.log / .json and prints a short table last. Every step has a timeout: the whole run stays < 8 min.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
stamp=$(date -u +%Y-%m-%d-%H%M)
perf=${POLDER_PERF_DIR:-$here/docs/perf}
mkdir -p "$perf"
log=$perf/gpu-$stamp.log
json=$perf/gpu-$stamp.json
sanitize=${POLDER_CHECK_SANITIZER:-1}
exec > >(tee "$log") 2>&1

# cuDNN and NCCL ship as Python wheels there; the CUDA toolkit's own lib64 provides cudart and cuBLAS.
libdirs=("$here/lib")
sites=$(python3 -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
for lib in libcudnn.so.9 libnccl.so.2 libcudart.so.13; do
  [[ $lib == libcudart* ]] && ldconfig -p 2>/dev/null | grep -q "$lib" && continue
  [[ $lib == libcudart* ]] && [[ -e /usr/local/cuda/lib64/$lib || -e /usr/local/cuda/lib/$lib ]] && continue
  found=""
  while read -r dir; do
    [[ -d $dir ]] || continue
    found=$(find "$dir" -maxdepth 5 -name "$lib" -print -quit 2>/dev/null)
    [[ -n $found ]] && break
  done <<< "$sites"
  if [[ -n $found ]]; then
    libdirs+=("$(dirname "$found")")
    echo "found $lib: $(readlink -f "$found")"
  else
    echo "not found in site-packages: $lib"
  fi
done
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do [[ -d $d ]] && libdirs+=("$d"); done
LD_LIBRARY_PATH=$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

echo "== polder GPU check $stamp"
[[ -f $here/MANIFEST ]] && cat "$here/MANIFEST"
echo "== device"
timeout 30 nvidia-smi || echo "nvidia-smi failed"
timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
echo "== libraries"
command -v nvcc >/dev/null && nvcc --version | tail -n 2
for lib in libcudart.so libcublas.so libcublasLt.so libcudnn.so.9 libnccl.so.2; do
  path=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 ~ "^"l {print $NF; exit}')
  for d in "${libdirs[@]}"; do
    [[ -z $path ]] && path=$(find "$d" -maxdepth 1 -name "$lib*" -print -quit 2>/dev/null)
  done
  echo "$lib: ${path:+$(readlink -f "$path")}"
done
timeout 60 python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "nccl", torch.cuda.nccl.version())' 2>&1 | tail -n 1

rows=()   # name|status|passed|failed|seconds
run_step() {  # run_step NAME TIMEOUT CMD...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  local t0 out rc passed failed status
  t0=$(date +%s)
  out=$(timeout "$limit" "$@" 2>&1)
  rc=$?
  echo "$out"
  passed=$(sed -n 's/^test cases: *\([0-9]*\).*| *\([0-9]*\) passed.*/\2/p' <<< "$out" | tail -n 1)
  [[ -z $passed ]] && passed=$(sed -n 's/^All tests passed (.* in \([0-9]*\) test case.*/\1/p' <<< "$out" | tail -n 1)
  failed=$(sed -n 's/^test cases:.*| *\([0-9]*\) failed.*/\1/p' <<< "$out" | tail -n 1)
  case $rc in
    0) status=pass ;;
    124) status=timeout ;;
    *) status="fail($rc)" ;;
  esac
  if grep -q "No test cases matched" <<< "$out"; then status="no [cuda] tests"; fi
  # A test that found no device warns and passes; on the GPU machine that is a failure of the setup.
  if grep -q "skipped: no CUDA device" <<< "$out"; then status="skipped(no GPU)"; fi
  rows+=("$name|$status|${passed:-0}|${failed:-0}|$(($(date +%s) - t0))")
}

for exe in "$here"/bin/test_*; do
  [[ -x $exe ]] || continue
  run_step "$(basename "$exe")" 180 "$exe" "[cuda]" --durations yes
done
if [[ $sanitize == 1 && -x $here/bin/test_cuda_kernels ]] && command -v compute-sanitizer >/dev/null; then
  run_step "memcheck test_cuda_kernels" 150 compute-sanitizer --tool memcheck --error-exitcode 3 \
    "$here/bin/test_cuda_kernels" "[cuda]"
fi
for exe in "$here"/bin/bench_gpu*; do
  [[ -x $exe ]] || continue
  run_step "$(basename "$exe")" 120 "$exe"
done

{
  echo "{"
  echo "  \"date\": \"$stamp\","
  echo "  \"device\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)\","
  echo "  \"driver\": \"$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)\","
  echo "  \"commit\": \"$(sed -n 's/^commit: //p' "$here/MANIFEST" 2>/dev/null)\","
  echo "  \"steps\": ["
  n=${#rows[@]}
  for i in "${!rows[@]}"; do
    IFS='|' read -r name status passed failed secs <<< "${rows[$i]}"
    sep=","
    ((i == n - 1)) && sep=""
    echo "    {\"name\": \"$name\", \"status\": \"$status\", \"passed\": $passed, \"failed\": $failed, \"seconds\": $secs}$sep"
  done
  echo "  ]"
  echo "}"
} > "$json"

echo
echo "== summary (log $log, results $json)"
printf '%-32s %-16s %7s %7s %6s\n' step status passed failed sec
bad=0
for r in "${rows[@]}"; do
  IFS='|' read -r name status passed failed secs <<< "$r"
  printf '%-32s %-16s %7s %7s %6s\n' "$name" "$status" "$passed" "$failed" "$secs"
  [[ $status == pass || $status == "no [cuda] tests" ]] || bad=1
done
exit $bad
