#!/usr/bin/env bash
# Idempotent setup: installs the Debian packages polder builds with, then configures and builds build/ (Release).
# CUDA sources are compiled whenever nvcc is found (also without a GPU); pass -DPOLDER_CUDA=OFF to skip them.
# Extra CMake arguments are passed through: scripts/setup.sh -DPOLDER_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."

# clang, its runtime libraries (libFuzzer, sanitizers) and libomp: only for scripts/fuzz.sh (build-fuzz).
packages=(cmake ninja-build g++ libopenmpi-dev openmpi-bin libyaml-cpp-dev libcli11-dev catch2 libdnnl-dev
          nlohmann-json3-dev libpcre2-dev ocl-icd-opencl-dev libutf8proc-dev ccache python3 python3-numpy python3-pip clang libclang-rt-14-dev libomp-dev
          clang-format)  # scripts/check_format.sh (Debian's version 14)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# nvcc is often installed outside PATH (/usr/local/cuda/bin).
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

# The header-only cuDNN frontend for the cuDNN SDPA attention path (pinned wheel from PyPI; optional).
if command -v nvcc >/dev/null && [[ " $* " != *" -DPOLDER_CUDA=OFF "* ]]; then
  bash scripts/fetch_cudnn_frontend.sh
fi

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "$@"
cmake --build build
