#!/usr/bin/env bash
# scripts/gpu/gpu_env.sh on fake Python wheel layouts (issue 21, defect 1): a CUDA 13 PyTorch's site-packages
# (nvidia/cu13/lib/ with libcublasLt.so.13 and friends) puts every library polder links on LD_LIBRARY_PATH; a
# CUDA 12 PyTorch's (nvidia/cublas/lib/libcublasLt.so.12, ...) has no cuBLASLt 13, and the script says so by
# name (check.sh's preflight then shows ldd's "not found" lines) instead of leaving binaries to exit 127.
# Usage: tests/gpu_env_layouts.sh <work folder>
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W="$1"
rm -rf "$W"
mkdir -p "$W/cu13/nvidia/cu13/lib" "$W/cu13/nvidia/cudnn/lib" "$W/cu13/nvidia/nccl/lib"
for lib in libcudart.so.13 libnvrtc.so.13 libcublasLt.so.13 libcublas.so.13; do touch "$W/cu13/nvidia/cu13/lib/$lib"; done
touch "$W/cu13/nvidia/cudnn/lib/libcudnn.so.9" "$W/cu13/nvidia/nccl/lib/libnccl.so.2"
mkdir -p "$W/cu12/nvidia/cublas/lib" "$W/cu12/nvidia/cuda_runtime/lib" "$W/cu12/nvidia/cudnn/lib" \
  "$W/cu12/nvidia/nccl/lib"
touch "$W/cu12/nvidia/cublas/lib/libcublasLt.so.12" "$W/cu12/nvidia/cublas/lib/libcublas.so.12" \
  "$W/cu12/nvidia/cuda_runtime/lib/libcudart.so.12" "$W/cu12/nvidia/cudnn/lib/libcudnn.so.9" \
  "$W/cu12/nvidia/nccl/lib/libnccl.so.2"

run() {  # <sites> -> the script's output, then LD_LIBRARY_PATH on the last line
  env -u POLDER_GPU_ENV_DONE -u POLDER_GPU_ENV_QUIET POLDER_GPU_ENV_SYSTEM=0 POLDER_GPU_ENV_SITES="$1" \
    LD_LIBRARY_PATH= bash -c "source '$here/scripts/gpu/gpu_env.sh'; echo \"LD_LIBRARY_PATH=\$LD_LIBRARY_PATH\""
}
out=$(run "$W/cu13")
echo "$out"
for lib in libcudart.so.13 libnvrtc.so.13 libcublasLt.so.13 libcublas.so.13 libcudnn.so.9 libnccl.so.2; do
  grep -q "^found $lib: " <<<"$out" || { echo "cu13 layout: $lib not found"; exit 1; }
done
grep -q "^LD_LIBRARY_PATH=.*$W/cu13/nvidia/cu13/lib" <<<"$out" || { echo "cu13 lib folder not on the path"; exit 1; }

out=$(run "$W/cu12")
echo "$out"
for lib in libcudart.so.13 libcublasLt.so.13 libcublas.so.13; do
  grep -q "^not found in site-packages: $lib$" <<<"$out" || { echo "cu12 layout: no line for $lib"; exit 1; }
done
grep -q "^found libcudnn.so.9: " <<<"$out"
echo "gpu_env layouts test passed"
