#!/usr/bin/env bash
# Sparse prefill from the command line: bad specs and eval-sparse options are one typed error line
# (before the model loads where they can be), and a real run reports its density.
set -uo pipefail
cli=$1
src=$2
model=${CHUNKWISE_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[[ -f "$model" ]] || { echo "skipped: the default model is not at $model"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

check_one() {  # name, expected fragment, args...
  local name=$1 fragment=$2; shift 2
  "$cli" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [[ $rc == 0 || $rc -ge 128 ]] || [[ $(wc -l <"$tmp/err") != 1 ]] || ! grep -q "^chunkwise: error: .*$fragment" "$tmp/err"; then
    echo "FAIL $name: rc=$rc"; cat "$tmp/err"; fail=1
  else
    echo "ok   $name: $(head -1 "$tmp/err")"
  fi
}
check_one "unknown policy" "unknown sparse policy" run --model "$model" --prompt hi --sparse nope
check_one "bad tile" "tile must be 64 or 128" run --model "$model" --prompt hi --sparse streaming:tile=32
printf '{"id": "a", "prompt": "hi", "max_tokens": 2}\n' >"$tmp/one.jsonl"
check_one "unknown key" "unknown key" batch --model "$model" --workload "$tmp/one.jsonl" --sparse flex-prefill:frob=1
check_one "bad gamma" "gamma" logits --model "$model" --text hi --out "$tmp/x.npy" --sparse flex-prefill:gamma=2
check_one "missing config" "cannot read sparse config" logits --model "$model" --text hi --out "$tmp/x.npy" \
  --sparse vertical-slash:config="$tmp/none.json"
check_one "eval: bad policy" "unknown sparse policy" eval-sparse --model "$model" --policies "dense;bogus"
check_one "eval: bad length" "lengths" eval-sparse --model "$model" --lengths 0
check_one "eval: bad depth" "depths" eval-sparse --model "$model" --depths 1.5
check_one "eval: bad task" "tasks" eval-sparse --model "$model" --tasks sudoku
check_one "eval: past the context" "context-overflow" eval-sparse --model "$model" --lengths 9000 \
  --haystack "$src/bench/sparse/haystack.txt"
check_one "eval: no haystack" "haystack" eval-sparse --model "$model" --haystack "$tmp/none.txt"

# A real chunked prefill through a sparse policy: the logits are written and the density reported.
text=$(head -c 9000 "$src/bench/sparse/haystack.txt")
if "$cli" logits --model "$model" --text "$text" --out "$tmp/l.npy" --chunk 768 \
    --sparse "vertical-slash:config=$src/bench/sparse/smollm2-135m-vs.json,min_kv_len=512" >"$tmp/out" 2>"$tmp/err" &&
    grep -q "^sparse vertical-slash: density 0\.[0-9]* over [0-9]* masks" "$tmp/out"; then
  echo "ok   chunked sparse logits: $(grep '^sparse' "$tmp/out")"
else
  echo "FAIL chunked sparse logits"; cat "$tmp/out" "$tmp/err"; fail=1
fi
exit $fail
