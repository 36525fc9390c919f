#!/usr/bin/env bash
# The GPU path without a GPU: builds polder's CUDA sources for the emulated CUDA device (tests/sim;
# docs/ARCHITECTURE.md, "The emulated CUDA device") in build-emu/ and runs every test with a CUDA path on it:
# the [cuda] kernel tests, the runtime/cuBLASLt/NCCL emulator tests, training on train.device cuda at one
# rank and at dp2 (ZeRO 0, 1, 2) against the CPU path, and the emulator's mutation checks.
#   bash scripts/emulated_gpu.sh             # configure, build, test
#   bash scripts/emulated_gpu.sh --build     # configure and build only
# Afterwards `build-emu/cli/polder train --set train.device=cuda ...` trains on the emulated device.
# Needs what scripts/setup.sh installs (no nvcc, no GPU, no NVIDIA driver).
set -euo pipefail
cd "$(dirname "$0")/.."
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B build-emu -G Ninja -DCMAKE_BUILD_TYPE=Release -DPOLDER_CUDA=OFF -DPOLDER_CUDA_EMULATOR=ON \
  -DPOLDER_BENCH=OFF "${launcher[@]}" >/dev/null
cmake --build build-emu
[[ ${1:-} == --build ]] && exit 0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build-emu --output-on-failure -j "$(nproc)"
