#!/usr/bin/env bash
# Runs setup (install + build) and the clang-format check, then the whole test suite through ctest: unit
# tests and multi-rank tests, then the CUDA path on the emulated device (scripts/emulated_gpu.sh); then fuzzes
# the file parsers for a bounded time (scripts/fuzz.sh: POLDER_FUZZ_SECONDS per target, default 25; 0 skips).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "$@"
# Formatting is part of the build's contract: a C++ source that clang-format (14, .clang-format) would change
# fails CI before the tests run (fix with clang-format -i on the listed files).
bash scripts/check_format.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build --output-on-failure -j "$(nproc)"
# The GPU path on the emulated CUDA device (build-emu/; docs/ARCHITECTURE.md, "The emulated CUDA device").
# POLDER_EMULATED_GPU=0 skips it.
if [[ ${POLDER_EMULATED_GPU:-1} != 0 ]]; then
  bash scripts/emulated_gpu.sh
fi
if [[ ${POLDER_FUZZ_SECONDS:-25} != 0 ]]; then
  bash scripts/fuzz.sh "${POLDER_FUZZ_SECONDS:-25}"
fi
