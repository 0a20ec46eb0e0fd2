#!/usr/bin/env bash
# `chunkwise batch --eviction X --kv-blocks N` on part of the shipped workload, with a memory limit
# that forces eviction: every policy evicts, reports the kv metrics, and changes no output.
set -uo pipefail
cli=$1
root=$2
model=${CHUNKWISE_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[[ -f "$model" ]] || { echo "skipped: the default model is not at $model"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$root/examples/workloads/assistant.jsonl" "$tmp/w.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][:6]
with open(sys.argv[2], "w") as f:
    for r in rows:
        r["max_tokens"] = 3
        f.write(json.dumps(r) + "\n")
PY
fail=0
run() {  # name, args...
  local name=$1; shift
  if ! "$cli" batch --model "$model" --workload "$tmp/w.jsonl" --out "$tmp/$name.jsonl" \
      --stats-json "$tmp/$name.stats.json" --no-progress --show 0 "$@" >"$tmp/$name.out" 2>&1; then
    echo "FAIL $name: exit code $?"; cat "$tmp/$name.out"; fail=1
  fi
}
run cold --prefix-cache off
for policy in lru prefix-lifetime cost-aware priority; do
  run "$policy" --eviction "$policy" --kv-blocks 100 --max-batch-tokens 512
  grep -q "^eviction  *$policy: [1-9]" "$tmp/$policy.out" || { echo "FAIL $policy: no eviction printed"; fail=1; }
done
python3 - "$tmp" <<'PY' || fail=1
import json, sys, os
d = sys.argv[1]
def outputs(name):
    return {r["id"]: r["output_tokens"] for r in map(json.loads, open(os.path.join(d, name + ".jsonl")))}
cold = outputs("cold")
for policy in ("lru", "prefix-lifetime", "cost-aware", "priority"):
    kv = json.load(open(os.path.join(d, policy + ".stats.json")))["kv"]
    assert kv["total_blocks"] == 100, kv
    assert kv["evictions"] > 0 and kv["prefix_hit_tokens"] > 0, (policy, kv)
    assert 0 < kv["prefix_hit_rate"] <= 1, kv
    assert kv["blocks_free"] + kv["blocks_cached"] + kv["blocks_in_use"] == 100, kv
    assert outputs(policy) == cold, policy
    print(f"ok   {policy}: {kv['evictions']} evictions, hit rate {kv['prefix_hit_rate']:.2f}, "
          f"{kv['preemptions']} preemptions, same outputs as without the cache")
PY
exit $fail
