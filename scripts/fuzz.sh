#!/usr/bin/env bash
# Fuzzes the parsers of files that come from outside (fuzz/: YAML config, tokenizer.json, safetensors, .idx)
# with libFuzzer: configures build-fuzz with clang, AddressSanitizer and fuzzer instrumentation on every library
# (CMAKE_CXX_FLAGS), builds only the four targets and what they link, and runs each for a bounded time on seeds
# from configs/, fuzz/seeds/ and tests/fixtures/ (the corpus grows in build-fuzz/corpus/ across local runs).
# A crash fails the script; the input is kept in build-fuzz/crashes/<target>/: fix the parser and add the input
# to tests/fixtures/fuzz/<target>/, which tests/test_cluster_fuzz.cpp replays in the normal test suite.
# Usage: scripts/fuzz.sh [seconds per target (default 30)] [target ...]
# POLDER_FUZZ_SEED: libFuzzer's seed (default 1, so a CI run explores the same inputs each time; 0 = random).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(fuzz_config fuzz_tokenizer fuzz_safetensors fuzz_idx)
B=build-fuzz

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# -O1 (libFuzzer's advice; also compiles several times faster than -O3), assertions on.
CC=clang CXX=clang++ cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address -fno-omit-frame-pointer -gline-tables-only" \
  -DCMAKE_CXX_FLAGS_RELEASE="-O1" \
  -DPOLDER_FUZZ=ON -DPOLDER_CUDA=OFF -DPOLDER_MPI=OFF -DPOLDER_ONEDNN=OFF -DPOLDER_TESTS=OFF -DPOLDER_BENCH=OFF \
  >"$B.configure.log" 2>&1 || { cat "$B.configure.log"; exit 1; }
cmake --build "$B" --target "${targets[@]}"

# Seeds (rebuilt every run; small files only, so the fuzzer's maximum input length stays modest).
seeds=$B/seeds
rm -rf "$seeds"
mkdir -p "$seeds"/{fuzz_config,fuzz_tokenizer,fuzz_safetensors,fuzz_idx}
cp configs/*.yaml fuzz/seeds/*.yaml "$seeds/fuzz_config/"
for f in gpt2 llama3 spm_metaspace spm_legacy polder_trained sample; do
  cp "tests/fixtures/tokenizer/$f.json" "$seeds/fuzz_tokenizer/"
done
n=0
for f in tests/fixtures/hf/*/*.safetensors; do
  (($(stat -c %s "$f") <= 65536)) && cp "$f" "$seeds/fuzz_safetensors/seed$((n++)).safetensors"
done
for idx in tests/fixtures/indexed/*.idx; do  # fuzz_idx input: the .bin size (4 bytes, little-endian), the .idx
  python3 -c 'import os, struct, sys; sys.stdout.buffer.write(struct.pack("<I", os.path.getsize(sys.argv[1])) + open(sys.argv[2], "rb").read())' \
    "${idx%.idx}.bin" "$idx" >"$seeds/fuzz_idx/$(basename "$idx")"
done
for t in "${targets[@]}"; do
  [[ -d tests/fixtures/fuzz/$t ]] && cp tests/fixtures/fuzz/"$t"/* "$seeds/$t/" 2>/dev/null || true
done

status=0
for t in "${targets[@]}"; do
  mkdir -p "$B/corpus/$t" "$B/crashes/$t"
  echo "fuzz: $t for ${seconds} s"
  if ASAN_OPTIONS=detect_leaks=0 "$B/fuzz/$t" "$B/corpus/$t" "$seeds/$t" -max_total_time="$seconds" -timeout=20 \
    -seed="${POLDER_FUZZ_SEED:-1}" -rss_limit_mb=2560 -artifact_prefix="$B/crashes/$t/" -print_final_stats=1 >"$B/$t.log" 2>&1; then
    echo "fuzz: $t: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$B/$t.log" | grep -o '[0-9]*$') runs, no crash"
  else
    echo "fuzz: $t FOUND A CRASH (input in $B/crashes/$t/):"
    grep -A25 -m1 "ERROR\|deadly signal\|Timeout\|out-of-memory" "$B/$t.log" || tail -40 "$B/$t.log"
    status=1
  fi
done
exit $status
