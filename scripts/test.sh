#!/usr/bin/env bash
# Runs setup (install + build), then the whole test suite through ctest: unit tests and multi-rank tests; then
# fuzzes the file parsers for a bounded time (scripts/fuzz.sh: POLDER_FUZZ_SECONDS per target, default 25;
# 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "$@"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build --output-on-failure -j "$(nproc)"
if [[ ${POLDER_FUZZ_SECONDS:-25} != 0 ]]; then
  bash scripts/fuzz.sh "${POLDER_FUZZ_SECONDS:-25}"
fi
