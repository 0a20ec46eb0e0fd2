#!/usr/bin/env bash
# Corrupted, truncated and foreign model files: exactly one "chunkwise: error:" line on stderr,
# a non-zero exit, no crash (this also runs in the sanitizer build).
set -uo pipefail
cli=$1
model=${CHUNKWISE_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

expect_error() {  # name, expected message fragment, model path
  local name=$1 fragment=$2 path=$3
  "$cli" run --model "$path" --prompt "hello" --max-tokens 2 >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(wc -l <"$tmp/err")
  if [[ $rc == 0 || $rc -ge 128 || $lines != 1 ]] || ! grep -q "^chunkwise: error: .*$fragment" "$tmp/err"; then
    echo "FAIL $name: rc=$rc, stderr:"; cat "$tmp/err"; fail=1
  else
    echo "ok   $name: $(cat "$tmp/err")"
  fi
}

expect_error "missing file" "not found" "$tmp/none.gguf"
printf 'definitely not a model' >"$tmp/garbage.gguf"
expect_error "garbage" "model-format" "$tmp/garbage.gguf"
: >"$tmp/empty.gguf"
expect_error "empty" "model-format" "$tmp/empty.gguf"
mkdir -p "$tmp/emptydir"
expect_error "folder without config.json" "config.json" "$tmp/emptydir"

if [[ ! -f "$model" ]]; then
  echo "skipped: the default model is not at $model (run scripts/setup)"
  [[ $fail == 0 ]] && exit 77 || exit 1
fi
for bytes in 4 24 4096 1000000 50000000; do
  head -c "$bytes" "$model" >"$tmp/trunc.gguf"
  expect_error "truncated at $bytes bytes" "model-format" "$tmp/trunc.gguf"
done
cp "$model" "$tmp/badmagic.gguf"
printf 'XXXX' | dd of="$tmp/badmagic.gguf" conv=notrunc status=none
expect_error "bad magic" "magic" "$tmp/badmagic.gguf"
# An absurd tensor count (header bytes 8..15) must be rejected before any allocation.
cp "$model" "$tmp/count.gguf"
printf '\xff\xff\xff\xff\xff\xff\xff\x7f' | dd of="$tmp/count.gguf" bs=1 seek=8 conv=notrunc status=none
expect_error "absurd tensor count" "model-format" "$tmp/count.gguf"
exit $fail
