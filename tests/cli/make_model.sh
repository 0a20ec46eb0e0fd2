#!/usr/bin/env bash
# `chunkwise make-model`: the tiny random model loads and runs (token-id prompts, exactly max_tokens
# outputs since config.json has no eos), is deterministic from --seed, shards load like one file,
# every --dtype loads, and bad arguments give one typed error line.
set -uo pipefail
cli=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

make() {  # name, args...
  local name=$1; shift
  if ! "$cli" make-model --shape tiny "$@" >"$tmp/$name.make.out" 2>&1; then
    echo "FAIL make $name: exit code $?"; cat "$tmp/$name.make.out"; fail=1
  fi
}
make a --out "$tmp/a" --seed 1
make b --out "$tmp/b" --seed 1 --shard-mb 0.05
make c --out "$tmp/c" --seed 2
make f16 --out "$tmp/f16" --seed 1 --dtype f16
make f32 --out "$tmp/f32" --seed 1 --dtype f32 --threads 1
make eos --out "$tmp/eos" --with-eos
[[ -f "$tmp/a/config.json" && -f "$tmp/a/model.safetensors" ]] || { echo "FAIL a: files missing"; ls "$tmp/a"; fail=1; }
[[ -f "$tmp/b/model.safetensors.index.json" && -f "$tmp/b/model-00002-of-00005.safetensors" ]] \
  || { echo "FAIL b: expected 5 shards and an index"; ls "$tmp/b"; fail=1; }
make a2 --out "$tmp/a2" --seed 1
cmp -s "$tmp/a/model.safetensors" "$tmp/a2/model.safetensors" || { echo "FAIL same seed, different file"; fail=1; }
cmp -s "$tmp/a/model.safetensors" "$tmp/c/model.safetensors" && { echo "FAIL seeds 1 and 2 gave the same file"; fail=1; }

python3 - "$tmp/w.jsonl" <<'PY'
import json, random, sys
rng = random.Random(5)
with open(sys.argv[1], "w") as f:
    for i in range(3):
        f.write(json.dumps({"id": f"r{i}", "prompt_tokens": [rng.randrange(256) for _ in range(20 + 7 * i)],
                            "max_tokens": 12}) + "\n")
PY
for m in a b c f16 f32 eos; do
  if ! "$cli" batch --model "$tmp/$m" --workload "$tmp/w.jsonl" --out "$tmp/$m.jsonl" --stats-json "$tmp/$m.stats.json" \
      --kv-mb 8 --no-progress --show 0 >"$tmp/$m.out" 2>&1; then
    echo "FAIL batch on $m: exit code $?"; cat "$tmp/$m.out"; fail=1
  fi
done
python3 - "$tmp" <<'PY' || fail=1
import json, os, sys
d = sys.argv[1]
def rows(m):
    return {r["id"]: r for r in map(json.loads, open(os.path.join(d, m + ".jsonl")))}
for m in ("a", "b", "c", "f16", "f32"):
    for r in rows(m).values():
        assert r["finish_reason"] == "length" and len(r["output_tokens"]) == 12, (m, r)
        assert all(0 <= t < 256 for t in r["output_tokens"]), (m, r)
    stats = json.load(open(os.path.join(d, m + ".stats.json")))
    assert stats["output_tokens"] == 36 and stats["requests_failed"] == 0, (m, stats)
out = lambda m: {k: r["output_tokens"] for k, r in rows(m).items()}
assert out("a") == out("b"), "the sharded model differs from the single file"
assert out("a") != out("c"), "seeds 1 and 2 gave the same outputs"
cfg = json.load(open(os.path.join(d, "a", "config.json")))
assert cfg["eos_token_id"] is None and cfg["tie_word_embeddings"] is False and cfg["vocab_size"] == 256, cfg
assert json.load(open(os.path.join(d, "eos", "config.json")))["eos_token_id"] == 1
index = json.load(open(os.path.join(d, "b", "model.safetensors.index.json")))
assert len(index["weight_map"]) == 21 and index["metadata"]["total_size"] == os.path.getsize(
    os.path.join(d, "a", "model.safetensors")) - 8 - int.from_bytes(open(os.path.join(d, "a", "model.safetensors"), "rb").read(8), "little")
print("ok   tiny model: loads, runs to max_tokens, deterministic, shards and dtypes load")
PY

check_one() {  # name, expected fragment, args...
  local name=$1 fragment=$2; shift 2
  "$cli" make-model "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(wc -l <"$tmp/err")
  if [[ $rc == 0 || $rc -ge 128 || $lines != 1 ]] || ! grep -q "^chunkwise: error: .*$fragment" "$tmp/err"; then
    echo "FAIL $name: rc=$rc"; cat "$tmp/err"; fail=1
  else
    echo "ok   $name: $(head -1 "$tmp/err")"
  fi
}
check_one "unknown shape" "invalid-argument: --shape must be one of" --shape llama9 --out "$tmp/x"
check_one "no shape" "invalid-argument: --shape is required" --out "$tmp/x"
check_one "no out" "invalid-argument: --out is required" --shape tiny
check_one "bad dtype" "invalid-argument: --dtype" --shape tiny --out "$tmp/x" --dtype q4
check_one "negative seed" "invalid-argument: --seed" --shape tiny --out "$tmp/x" --seed -1
check_one "unknown option" "unknown option --bogus" --shape tiny --out "$tmp/x" --bogus 1
check_one "non-empty folder" "invalid-argument: .* is not empty" --shape tiny --out "$tmp/a"
: >"$tmp/file"
check_one "out is a file" "io: .* not a folder" --shape tiny --out "$tmp/file"
check_one "unwritable folder" "io: cannot create folder" --shape tiny --out "$tmp/file/sub"
[[ -e "$tmp/x" ]] && { echo "FAIL a rejected command created its --out folder"; fail=1; }

# --force replaces the model in a folder, stale shards included; other files stay.
echo keep >"$tmp/b/notes.txt"
make b-force --out "$tmp/b" --seed 1 --force
if [[ -f "$tmp/b/model.safetensors.index.json" || -f "$tmp/b/model-00001-of-00005.safetensors" || ! -f "$tmp/b/notes.txt" ]]; then
  echo "FAIL --force: stale shards left or other files removed"; ls "$tmp/b"; fail=1
fi
cmp -s "$tmp/a/model.safetensors" "$tmp/b/model.safetensors" || { echo "FAIL --force wrote a different model"; fail=1; }
[[ $fail == 0 ]] && echo "ok   --force"
exit $fail
