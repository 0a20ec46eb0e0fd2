#!/usr/bin/env bash
# `chunkwise tune-sparse`: bad options give one error line and a non-zero exit; a short search writes
# a vertical-slash config sized to --target-density (some heads dense under --min-recall) that
# `logits --sparse` accepts; --budget caps each head's total size.
set -uo pipefail
cli=$1
root=$2
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
need_model

check_one() {  # name, expected fragment, tune-sparse args...
  local name=$1 fragment=$2; shift 2
  expect_error "$name" "$fragment" tune-sparse --model "$model" "$@"
}
check_one "no --out" "--out is required"
check_one "zero budget" "--budget" --out "$tmp/x.json" --budget 0
check_one "budget not a number" "--budget" --out "$tmp/x.json" --budget many
check_one "zero target density" "--target-density" --out "$tmp/x.json" --target-density 0
check_one "target density above 1" "--target-density" --out "$tmp/x.json" --target-density 1.5
check_one "target density not a number" "--target-density" --out "$tmp/x.json" --target-density most
check_one "min-recall above 1" "--min-recall" --out "$tmp/x.json" --min-recall 1.5
check_one "too few tokens" "--tokens" --out "$tmp/x.json" --tokens 10
check_one "past the context" "context" --out "$tmp/x.json" --tokens 1000000
check_one "missing text file" "--text-file" --out "$tmp/x.json" --text-file "$tmp/none.txt"
check_one "unknown option" "unknown option" --out "$tmp/x.json" --bogus 1
printf 'A short text.\n' >"$tmp/short.txt"
check_one "text too short" "tokens" --out "$tmp/x.json" --text-file "$tmp/short.txt" --tokens 1500
[[ -e "$tmp/x.json" ]] && { echo "FAIL: a failed run wrote its --out file"; fail=1; }

# A short search: 1500 tokens of the shipped calibration text (sanitizer build: 1024, the fewest at
# which one tile per row stays under the target), each head's candidates sized to density 0.4
# (B <= 2000 tokens per row).
tokens=1500
[[ $sanitized == 1 ]] && tokens=1024
if ! "$cli" tune-sparse --model "$model" --tokens $tokens --target-density 0.4 --budget 2000 --min-recall 0.9 \
    --out "$tmp/vs.json" >"$tmp/tune.out" 2>&1; then
  echo "FAIL search: exit code $?"; cat "$tmp/tune.out"; fail=1
else
  grep -E "^  (per-head winners|f=)|^winners" "$tmp/tune.out"
  python3 - "$tmp/vs.json" "$tmp/tune.out" <<'PY' || fail=1
import json, re, sys
c = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
assert c["format"] == "chunkwise-vertical-slash/1", c["format"]
assert c["model"], "no model name"
def sized(h):
    return isinstance(h, list) and len(h) == 2 and all(isinstance(x, int) and x >= 0 for x in h) and sum(h) <= 2000
heads = [h for layer in c["heads"] for h in layer]
assert c["heads"] and all(len(layer) == len(c["heads"][0]) > 0 for layer in c["heads"]), "uneven layers"
assert all(h == "dense" or sized(h) for h in heads), heads
assert c["default"] == "dense" or sized(c["default"]), c["default"]
dense = sum(h == "dense" for h in heads)
assert 0 < dense < len(heads), f"{dense} dense heads of {len(heads)} under --min-recall 0.9"
# Equal-cost candidates: every share's mean density and the winners' at most the target, and near it.
densities = [float(d) for d in re.findall(r"^  (?:per-head winners|f=[0-9.]+) .* density ([0-9.]+)", log, re.M)]
assert len(densities) == 6, log
assert all(0.3 <= d <= 0.4 for d in densities), densities
print(f"ok   search: {len(heads)} heads, {dense} dense, default {c['default']}, densities {densities}")
PY
  # The config drives the sparse prefill.
  if ! "$cli" logits --model "$model" --sparse "vertical-slash:config=$tmp/vs.json,min_kv_len=0" \
      --text "$(head -c 1500 "$root/bench/sparse/calibration.txt")" --out "$tmp/l.npy" >"$tmp/logits.out" 2>&1 ||
      ! grep -q "^sparse vertical-slash: density" "$tmp/logits.out"; then
    echo "FAIL logits with the config"; cat "$tmp/logits.out"; fail=1
  else
    echo "ok   logits: $(grep '^sparse' "$tmp/logits.out")"
  fi
fi
# --budget caps B: at target density 1 every head's candidates reach the cap of 100 tokens per row
# (sanitizer build: over 512 tokens, rows still longer than the cap).
[[ $sanitized == 1 ]] && tokens=512
if ! "$cli" tune-sparse --model "$model" --tokens $tokens --target-density 1 --budget 100 --out "$tmp/cap.json" \
    >"$tmp/cap.out" 2>&1; then
  echo "FAIL capped search: exit code $?"; cat "$tmp/cap.out"; fail=1
else
  python3 - "$tmp/cap.json" <<'PY' || fail=1
import json, sys
c = json.load(open(sys.argv[1]))
heads = [h for layer in c["heads"] for h in layer]
assert heads and all(isinstance(h, list) and sum(h) == 100 for h in heads), heads
print(f"ok   capped search: {len(heads)} heads, all at B = 100")
PY
fi
exit $fail
