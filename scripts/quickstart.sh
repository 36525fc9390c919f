#!/usr/bin/env bash
# The quickstart: installs and builds polder (scripts/setup.sh), fetches the Dutch/European corpus from Debian
# documentation packages, tokenizes it with the committed 32k tokenizer into Megatron-style datasets, trains
# configs/tiny-nl.yaml on the CPU (a few minutes on 2 cores), evaluates the checkpoint and generates Dutch text.
# Idempotent: finished steps are skipped. Extra arguments go to `polder train` (e.g. --set train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

say "1/5 setup and build (scripts/setup.sh)"
if [[ -x build/cli/polder ]] && [[ -z "${POLDER_REBUILD:-}" ]]; then
  cmake --build build
else
  bash scripts/setup.sh
fi
polder=build/cli/polder

say "2/5 corpus (scripts/data/get_corpus.sh -> data_work/corpus)"
if [[ -f data_work/corpus/manifest.json ]]; then
  echo "corpus present: data_work/corpus"
else
  bash scripts/data/get_corpus.sh
fi

say "3/5 datasets (polder data prepare, tokenizer configs/tokenizers/polder-eu-32k.json)"
mkdir -p data_work/datasets
for lang in nl en de fr; do
  if [[ -f data_work/datasets/$lang.idx ]]; then
    echo "dataset present: data_work/datasets/$lang"
  else
    "$polder" data prepare --input "data_work/corpus/$lang.jsonl" --tokenizer configs/tokenizers/polder-eu-32k.json \
      --out "data_work/datasets/$lang" --workers "$(nproc)"
  fi
done

say "4/5 train configs/tiny-nl.yaml (CPU; resumes from runs/tiny-nl/checkpoints if present)"
"$polder" info --config configs/tiny-nl.yaml
"$polder" train --config configs/tiny-nl.yaml --set train.threads="$(nproc)" "$@"
"$polder" eval --checkpoint runs/tiny-nl/checkpoints

say "5/5 generate from a Dutch prompt"
for prompt in "De installatie van Debian" "Met LibreOffice kunt u"; do
  "$polder" generate --checkpoint runs/tiny-nl/checkpoints --prompt "$prompt" --max-new-tokens 40 \
    --temperature 0.7 --top-k 40 --seed 7
done
echo
echo "quickstart done: metrics in runs/tiny-nl/metrics.jsonl, TensorBoard: tensorboard --logdir runs/tiny-nl"
