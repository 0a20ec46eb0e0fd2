#!/usr/bin/env bash
# Chunk reuse from the command line: bad options and segments are one typed error line; a chunk
# store on disk is filled by one run and read by the next; a corrupted chunk file is a logged miss
# and the answer is the full prefill's.
set -uo pipefail
cli=$1
src=$2
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
need_model

prefix='prefix:<|im_start|>system
Answer from the passage.<|im_end|>
<|im_start|>user
'
chunk='chunk:Passage: The Varnholm lighthouse first shone in 1847. It was built by Odile Brannock, an engineer from the harbour town of Kessrow, who designed its copper lantern and its spiral stair of grey granite.

'
question='question:Who built the Varnholm lighthouse?<|im_end|>
<|im_start|>assistant
'
expect_error "unknown policy" "unknown reuse policy" run --model "$model" --segment "$chunk" --reuse nope
expect_error "ratio out of range" "recompute-ratio" run --model "$model" --segment "$chunk" --reuse blend \
  --recompute-ratio 1.5
expect_error "ratio for full" "applies to" run --model "$model" --segment "$chunk" --reuse full --recompute-ratio 0.2
expect_error "store without reuse" "need --reuse" run --model "$model" --segment "$chunk" --chunk-store "$tmp/s"
expect_error "bad segment kind" "KIND:TEXT" run --model "$model" --segment "passage:hello"
expect_error "prompt and segments" "either --prompt or --segment" run --model "$model" --prompt hi --segment "$chunk"
expect_error "missing segment file" "cannot read" run --model "$model" --segment "chunk:@$tmp/none.txt"
printf '{"id": "a", "segments": [{"kind": "chunk"}], "max_tokens": 2}\n' >"$tmp/bad.jsonl"
expect_error "workload: segment without text" "exactly one of 'text' and 'tokens'" batch --model "$model" \
  --workload "$tmp/bad.jsonl"
printf '{"id": "a", "segments": [{"kind": "blurb", "text": "x"}], "max_tokens": 2}\n' >"$tmp/bad.jsonl"
expect_error "workload: bad kind" "'kind' must be prefix, chunk or question" batch --model "$model" \
  --workload "$tmp/bad.jsonl"
expect_error "bad load control" "load-control must be on or off" run --model "$model" --segment "$chunk" \
  --reuse full --load-control maybe
expect_error "pinned level out of range" "chunk-pinned-mb must be in" run --model "$model" --segment "$chunk" \
  --reuse full --chunk-pinned-mb -1
expect_error "eval: bad pinned level" "chunk-pinned-mb must be in" eval-reuse --model "$model" \
  --chunk-pinned-mb 99999999
expect_error "eval: bad policy" "unknown reuse policy" eval-reuse --model "$model" --policies blend,bogus
expect_error "eval: no corpus" "cannot read corpus" eval-reuse --model "$model" --corpus "$tmp/none.jsonl"

run_rag() {  # run_rag NAME ARGS...: the answer in $tmp/NAME.out, stderr in $tmp/NAME.err
  local name=$1; shift
  "$cli" run --model "$model" --max-tokens 12 --segment "$prefix" --segment "$chunk" --segment "$question" "$@" \
    >"$tmp/$name.out" 2>"$tmp/$name.err"
}
check() {  # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then echo "ok   $name"; else echo "FAIL $name"; cat "$tmp"/*.err; fail=1; fi
}
run_rag full --reuse prefix
run_rag fill --reuse full --chunk-store "$tmp/store"
check "first run stores the chunk" grep -q "1 stored" "$tmp/fill.err"
check "the chunk is on disk" test "$(ls "$tmp/store" | wc -l)" = 1
run_rag warm --reuse full --chunk-store "$tmp/store"
check "second run loads it" grep -q "1 chunks loaded (0 from the GPU's chunk tier), 0 missed, 0 stored" "$tmp/warm.err"
# On the CPU loading a chunk is far cheaper than prefilling it: the controller loads it.
run_rag controlled --reuse full --chunk-store "$tmp/store" --load-control on
check "load control on the CPU: loaded" grep -q "1 chunks loaded (0 from the GPU's chunk tier), 0 missed, 0 stored, 0 computed" "$tmp/controlled.err"
# The GPU's chunk tier sizes are accepted on the CPU, which has no such tier: loaded from the store.
run_rag tiered --reuse full --chunk-store "$tmp/store" --chunk-device-mb 16 --chunk-pinned-mb 64
check "chunk tier options on the CPU: loaded" grep -q "1 chunks loaded (0 from the GPU's chunk tier), 0 missed" "$tmp/tiered.err"
file=$(ls "$tmp"/store/*)
size=$(stat -c %s "$file")
printf 'XXXXXXXX' | dd of="$file" bs=1 seek=$((size - 12)) conv=notrunc status=none
run_rag corrupt --reuse full --chunk-store "$tmp/store"
check "corrupt file: one log line naming it" grep -q "$(basename "$file")" "$tmp/corrupt.err"
check "corrupt file: a miss" grep -q "0 chunks loaded (0 from the GPU's chunk tier), 1 missed" "$tmp/corrupt.err"
check "corrupt file: the full prefill's answer" cmp -s "$tmp/full.out" "$tmp/corrupt.out"
exit $fail
