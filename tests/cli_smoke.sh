#!/usr/bin/env bash
# End-to-end smoke test of the polder command line on Debian's licence texts (present on every Debian system):
# tokenizer train/encode, data prepare/inspect, train, resume, eval, generate, and one-line errors.
# Usage: tests/cli_smoke.sh <polder binary> <work folder>
set -euo pipefail
P="$1"
W="$2"
rm -rf "$W"
mkdir -p "$W"
mkdir -p "$W/docs"
for f in Apache-2.0 GPL-2 GPL-3 LGPL-2.1 LGPL-3 MPL-2.0 GFDL-1.3 Artistic; do
  cp "/usr/share/common-licenses/$f" "$W/docs/$f.txt"  # a .txt file is one document
done
docs=("$W"/docs/*.txt)

"$P" tokenizer train --input "${docs[@]}" --vocab-size 700 --out "$W/tok.json"
ids=$("$P" tokenizer encode --tokenizer "$W/tok.json" --text "the licence")
[[ -n "$ids" ]]
back=$("$P" tokenizer decode --tokenizer "$W/tok.json" --ids "$ids")
[[ "$back" == "the licence" ]] || { echo "decode gave '$back'"; exit 1; }
# decode also takes the ids as separate arguments (--ids or positional), with commas, or on stdin, so encode's
# output can be passed on unquoted.
nl="Het ĳs op de grachten is nog dun, maar één schaatser waagt het toch: café 't Hoekje, 1.234,5 km²."
nl_ids=$("$P" tokenizer encode --tokenizer "$W/tok.json" --text "$nl")
# shellcheck disable=SC2046  # word splitting into one argument per id is the point
for back in "$("$P" tokenizer decode --tokenizer "$W/tok.json" --ids $("$P" tokenizer encode \
                   --tokenizer "$W/tok.json" --text "$nl"))" \
            "$("$P" tokenizer decode --tokenizer "$W/tok.json" $nl_ids)" \
            "$("$P" tokenizer decode --tokenizer "$W/tok.json" --ids "${nl_ids// /,}")" \
            "$(echo "$nl_ids" | "$P" tokenizer decode --tokenizer "$W/tok.json")"; do
  [[ "$back" == "$nl" ]] || { echo "decode of '$nl_ids' gave '$back'"; exit 1; }
done

"$P" data prepare --input "${docs[@]}" --tokenizer "$W/tok.json" --out "$W/ds" --workers 2
"$P" data inspect "$W/ds" --tokenizer "$W/tok.json" | grep -q "documents"

cat > "$W/cfg.yaml" <<YAML
model: {vocab_size: 704, hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2,
        max_seq_len: 64, tie_embeddings: true}
data: {tokenizer: $W/tok.json, seq_len: 32, valid_fraction: 0.2, datasets: [{name: lic, prefix: $W/ds, weight: 1}]}
train: {steps: 4, global_batch: 4, micro_batch: 2, eval_every: 2, eval_batches: 2, run_dir: $W/run, threads: 2}
optim: {lr: 3.0e-3}
schedule: {type: cosine, warmup_steps: 1}
checkpoint: {every: 2, keep_last: 2}
logging: {every: 1, tensorboard: true}
YAML
"$P" info --config "$W/cfg.yaml" | grep -q "parameters"
"$P" train --config "$W/cfg.yaml" | tee "$W/train1.log"
grep -q "step      4/4" "$W/train1.log" || grep -q "step 4/4" "$W/train1.log"
"$P" train --config "$W/cfg.yaml" --set train.steps=6 | tee "$W/train2.log"
grep -q "resumed from .*step_00000004 at step 4" "$W/train2.log"
[[ -f "$W/run/metrics.jsonl" && -f "$W/run/provenance.json" && -f "$W/run/config.yaml" ]]
ls "$W"/run/tb/events.out.tfevents.* >/dev/null
"$P" eval --checkpoint "$W/run/checkpoints" | grep -q "validation loss"
"$P" generate --checkpoint "$W/run/checkpoints" --prompt "the" -n 5 --temperature 0 >/dev/null

# Hugging Face round trip: export, import, export again; the two exports must be byte-identical.
"$P" convert --from polder "$W/run/checkpoints" --to hf "$W/hf1"
"$P" convert --from hf "$W/hf1" --to polder "$W/imported"
"$P" convert --from polder "$W/imported" --to hf "$W/hf2"
cmp "$W/hf1/model.safetensors" "$W/hf2/model.safetensors"
"$P" generate --checkpoint "$W/imported" --tokenizer "$W/tok.json" --prompt "the" -n 3 --temperature 0 >/dev/null

# Bad input: exit code 2 and one line naming the problem.
expect_error() {
  local needle="$1"
  shift
  if "$@" 2>"$W/err"; then echo "expected failure: $*"; exit 1; fi
  [[ $(wc -l <"$W/err") -eq 1 ]] || { echo "more than one error line:"; cat "$W/err"; exit 1; }
  grep -qF "$needle" "$W/err" || { echo "error lacks '$needle':"; cat "$W/err"; exit 1; }
}
expect_error "did you mean 'train.steps'" "$P" train --config "$W/cfg.yaml" --set train.stpes=3
expect_error "does not exist" "$P" data inspect "$W/nothing"
expect_error "'x7' is not a token id" "$P" tokenizer decode --tokenizer "$W/tok.json" --ids 5 x7 9
expect_error "token id 99999 is not in the vocabulary" "$P" tokenizer decode --tokenizer "$W/tok.json" 5 99999
expect_error "is corrupted" bash -c "printf 'x' >> '$W/run/checkpoints/step_00000006/shard-pp0-tp0.safetensors'; '$P' eval --checkpoint '$W/run/checkpoints'"
echo "cli smoke test passed"
