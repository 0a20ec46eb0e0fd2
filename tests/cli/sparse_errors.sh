#!/usr/bin/env bash
# Sparse prefill from the command line: bad specs and eval-sparse options are one typed error line
# (before the model loads where they can be), and a real run reports its density.
set -uo pipefail
cli=$1
src=$2
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
need_model

expect_error "unknown policy" "unknown sparse policy" run --model "$model" --prompt hi --sparse nope
expect_error "bad tile" "tile must be 64 or 128" run --model "$model" --prompt hi --sparse streaming:tile=32
printf '{"id": "a", "prompt": "hi", "max_tokens": 2}\n' >"$tmp/one.jsonl"
expect_error "unknown key" "unknown key" batch --model "$model" --workload "$tmp/one.jsonl" --sparse flex-prefill:frob=1
expect_error "bad gamma" "gamma" logits --model "$model" --text hi --out "$tmp/x.npy" --sparse flex-prefill:gamma=2
expect_error "missing config" "cannot read sparse config" logits --model "$model" --text hi --out "$tmp/x.npy" \
  --sparse vertical-slash:config="$tmp/none.json"
expect_error "eval: bad policy" "unknown sparse policy" eval-sparse --model "$model" --policies "dense;bogus"
expect_error "eval: bad length" "lengths" eval-sparse --model "$model" --lengths 0
expect_error "eval: bad depth" "depths" eval-sparse --model "$model" --depths 1.5
expect_error "eval: bad task" "tasks" eval-sparse --model "$model" --tasks sudoku
expect_error "eval: past the context" "context-overflow" eval-sparse --model "$model" --lengths 9000 \
  --haystack "$src/bench/sparse/haystack.txt"
expect_error "eval: no haystack" "haystack" eval-sparse --model "$model" --haystack "$tmp/none.txt"

# A real chunked prefill through a sparse policy: the logits are written and the density reported.
# About 2,000 tokens in chunks of 768 (sanitizer build: about 560 in chunks of 256; density 0.98).
chars=9000 chunk=768 min_kv=512
[[ $sanitized == 1 ]] && chars=2500 chunk=256 min_kv=256
text=$(head -c $chars "$src/bench/sparse/haystack.txt")
if "$cli" logits --model "$model" --text "$text" --out "$tmp/l.npy" --chunk $chunk \
    --sparse "vertical-slash:config=$src/bench/sparse/smollm2-135m-vs.json,min_kv_len=$min_kv" >"$tmp/out" 2>"$tmp/err" &&
    grep -q "^sparse vertical-slash: density 0\.[0-9]* over [0-9]* masks" "$tmp/out"; then
  echo "ok   chunked sparse logits: $(grep '^sparse' "$tmp/out")"
else
  echo "FAIL chunked sparse logits"; cat "$tmp/out" "$tmp/err"; fail=1
fi
exit $fail
