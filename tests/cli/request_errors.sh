#!/usr/bin/env bash
# Bad requests and options: a typed error, never a crash; in a batch the bad request is reported
# and the good ones still complete.
set -uo pipefail
cli=$1
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
need_model

expect_error "negative temperature" "temperature" run --model "$model" --prompt hi --temperature -1
expect_error "top-p zero" "top_p" run --model "$model" --prompt hi --top-p 0 --temperature 1
expect_error "unknown option" "unknown option" run --model "$model" --prompt hi --bogus 1
expect_error "bad device" "device" run --model "$model" --prompt hi --device tpu
expect_error "bad device index" "cuda:N" run --model "$model" --prompt hi --device cuda:x
expect_error "fp16 on the CPU" "precision fp16 needs --device cuda" run --model "$model" --prompt hi --precision fp16
expect_error "bad precision" "precision" run --model "$model" --prompt hi --precision fp8
# Without a usable GPU (no CUDA backend in the build, or no device): a clear error, not a crash.
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  expect_error "no GPU" "cuda" run --model "$model" --prompt hi --device cuda
fi
expect_error "zero max tokens" "max_new_tokens" run --model "$model" --prompt hi --max-tokens 0
expect_error "past the context" "context-overflow" run --model "$model" --prompt hi --max-tokens 9000
expect_error "tiny KV budget" "kv-exhausted" run --model "$model" --prompt hi --max-tokens 100 --kv-mb 1
printf '{"id": "a", "prompt": "hi", "max_tokens": 2}\n{"id": "b", "prompt": 3}\n' >"$tmp/bad.jsonl"
printf '{"id": "a", "prompt": "hi", "max_tokens": 2}\n' >"$tmp/one.jsonl"
expect_error "unknown eviction policy" "eviction" batch --model "$model" --workload "$tmp/one.jsonl" --eviction fifo
expect_error "bad retention" "retention_s" batch --model "$model" --workload "$tmp/one.jsonl" --eviction priority \
  --retention-s -1
expect_error "bad half-life" "half_life_s" batch --model "$model" --workload "$tmp/one.jsonl" --eviction cost-aware \
  --half-life-s 0
expect_error "negative kv blocks" "kv-blocks" run --model "$model" --prompt hi --kv-blocks -3
expect_error "bad preemption" "preemption" run --model "$model" --prompt hi --preemption pause
expect_error "bad prefix-cache" "prefix-cache" run --model "$model" --prompt hi --prefix-cache maybe
expect_error "malformed workload line" "bad.jsonl:2" batch --model "$model" --workload "$tmp/bad.jsonl"

cat >"$tmp/mixed.jsonl" <<'JSONL'
{"id": "good", "prompt": "The capital of France is", "max_tokens": 4}
{"id": "oov", "prompt_tokens": [1, 999999], "max_tokens": 4}
{"id": "long", "prompt": "hi", "max_tokens": 100000}
{"id": "good2", "prompt_tokens": [504, 3575, 282, 4649, 314], "max_tokens": 4}
JSONL
"$cli" batch --model "$model" --workload "$tmp/mixed.jsonl" --out "$tmp/res.jsonl" --stats-json "$tmp/stats.json" \
  --no-progress >"$tmp/out" 2>"$tmp/err"
rc=$?
python3 - "$tmp/res.jsonl" "$tmp/stats.json" <<'PY' || fail=1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {r["id"]: r for r in rows}
assert [r["id"] for r in rows] == ["good", "oov", "long", "good2"], rows
assert by["good"]["finish_reason"] in ("length", "stop") and len(by["good"]["output_tokens"]) >= 1
assert by["good2"]["finish_reason"] in ("length", "stop")
assert by["oov"]["finish_reason"] == "error" and "token-out-of-range" in by["oov"]["error"], by["oov"]
assert by["long"]["finish_reason"] == "error" and "context-overflow" in by["long"]["error"], by["long"]
stats = json.load(open(sys.argv[2]))
for k in ("requests", "prompt_tokens", "prompt_tokens_computed", "output_tokens", "wall_s", "tokens_per_s",
          "ttft_s", "tbt_s", "peak_kv_blocks", "kv"):
    assert k in stats, k
assert stats["requests"] == 4 and stats["requests_failed"] == 2
for k in ("prefix_queries", "prefix_hit_tokens", "prefix_hit_rate", "evictions", "preemptions", "recomputed_tokens"):
    assert k in stats["kv"], k
assert stats["kv"]["prefix_queries"] == 2 and stats["policies"]["eviction"] == "lru"
print("ok   mixed batch: bad requests reported, good ones completed")
PY
[[ $rc == 3 ]] || { echo "FAIL mixed batch exit code $rc (want 3: some requests failed)"; fail=1; }
exit $fail
