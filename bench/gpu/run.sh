#!/usr/bin/env bash
# The GPU benchmark in one command, on the GPU machine:
#
#   bash bench/gpu/run.sh BUILD_DIR
#
# BUILD_DIR holds prebuilt binaries (bin/chunkwise, bin/chunkwise_cuda_tests, bin/bench_attention,
# optionally bin/bench_e2e). Every step has its own time limit and the whole script a deadline
# (TOTAL_S, default 570 s, so that it ends inside one 600 s device call); a step that would not fit
# is skipped and says so. Everything printed goes to $OUT/run.log (OUT defaults to ./gpu-out); the
# CLI's stats land in $OUT/stats-<case>.json and the report in $OUT/gpu-<card>.md, which is also
# printed last. bench/gpu/README.md lists the steps, the case names and the environment knobs.
set -uo pipefail

BUILD=${1:?usage: bash bench/gpu/run.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd) || exit 1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
WORK=${WORK:-/tmp/chunkwise-gpu}
mkdir -p "$WORK" || exit 1
LOG=$OUT/run.log
CLI=$BUILD/bin/chunkwise
# bench/gpu/build.sh stages the shared libraries a GPU machine may lack in BUILD_DIR/lib.
[[ -d $BUILD/lib ]] && export LD_LIBRARY_PATH=$BUILD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
TOTAL_S=${TOTAL_S:-570}
REPORT_RESERVE_S=${REPORT_RESERVE_S:-15}
START=$(date +%s)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

# Steps, in priority order: the issue's goals first (kernels, then the 135M end to end), the 8B last.
DEFAULT_STEPS="smi,tests,bench,peers-kernels,rounds,prep-135m,e2e-135m,peers-135m,bench-e2e,prep-8b,e2e-8b,peers-8b"
STEPS=${STEPS:-$DEFAULT_STEPS}
if [[ ${SKIP_8B:-0} == 1 ]]; then STEPS=$(echo ",$STEPS," | sed -e 's/,prep-8b,/,/; s/,e2e-8b,/,/; s/,peers-8b,/,/; s/^,//; s/,$//'); fi
# Requests of the end-to-end runs: the issue's sizes for our CLI; the transformers peers default to
# a reduced size that still fills the GPU (PEER_FLAGS="--full" runs the full size, 1-3 min each).
REQ_135M=${REQ_135M:-1024}
REQ_8B=${REQ_8B:-256}
PROMPT_LEN=${PROMPT_LEN:-512}
NEW_TOKENS=${NEW_TOKENS:-128}
PEER_FLAGS=${PEER_FLAGS:-}
# Our CLI's knobs for the end-to-end runs (the KV pool must hold the batch: fp32 KV of the 135M
# shape is 46 KB/token, of the 8B shape 262 KB/token).
CLI_FLAGS_135M=${CLI_FLAGS_135M:---kv-mb 32768 --max-seqs 1024 --max-batch-tokens 16384 --token-budget 16384}
CLI_FLAGS_8B=${CLI_FLAGS_8B:---kv-mb 49152 --max-seqs 256 --max-batch-tokens 16384 --token-budget 16384}

: >"$LOG"
log() { echo "$*" | tee -a "$LOG"; }
json_line() {  # PREFIX key=value...  -> PREFIX {"key": "value", ...}; numbers stay numbers
  "$PY" - "$@" <<'PY'
import json, sys
prefix, row = sys.argv[1], {}
for kv in sys.argv[2:]:
    k, _, v = kv.partition("=")
    try:
        row[k] = int(v)
    except ValueError:
        try:
            row[k] = float(v)
        except ValueError:
            row[k] = v
print(prefix + " " + json.dumps(row))
PY
}
enabled() { [[ ",$STEPS," == *",$1,"* ]]; }

# step NAME MAX_S MIN_S CMD...: runs CMD under `timeout`, with at most MAX_S seconds and never past
# the deadline; skipped if fewer than MIN_S seconds are left. Prints a STEP_JSON line either way.
step() {
  local name=$1 max=$2 min=$3; shift 3
  enabled "$name" || return 0
  local now left limit
  now=$(date +%s)
  left=$((START + TOTAL_S - REPORT_RESERVE_S - now))
  limit=$((max < left ? max : left))
  if ((limit < min)); then
    json_line STEP_JSON step="$name" status=skipped rc=-1 seconds=0 \
      tail="skipped: ${left}s left before the deadline, step needs ${min}s" | tee -a "$LOG"
    return 0
  fi
  log "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
  local t0=$SECONDS
  # A new bash runs CMD, so that shell functions (exported below) can be steps; timeout signals
  # the whole process group.
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 | tee "$WORK/$name.out" >>"$LOG"
  local rc=${PIPESTATUS[0]}
  local status=ok
  ((rc != 0)) && status=failed
  ((rc == 124 || rc == 137)) && status=timeout
  local tail
  tail=$(grep -v -E '^\s*$|^(PEER_JSON|PEER_ENV|BENCH_JSON|ROUNDS_JSON|E2E_CHECK) ' "$WORK/$name.out" | tail -1 | cut -c1-240)
  json_line STEP_JSON step="$name" status="$status" rc="$rc" seconds=$((SECONDS - t0)) tail="$tail" | tee -a "$LOG"
  return 0
}

write_workload() {  # FILE REQUESTS PROMPT_LEN NEW_TOKENS VOCAB SEED: random token-id prompts
  "$PY" - "$@" <<'PY'
import json, random, sys
path, n, plen, new, vocab, seed = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(seed)
with open(path, "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"r{i}", "prompt_tokens": [rng.randrange(vocab) for _ in range(plen)],
                            "max_tokens": new}) + "\n")
print(f"wrote {path}: {n} requests x {plen} prompt tokens + {new}")
PY
}

prep() {  # SHAPE REQUESTS VOCAB: the random model (make-model, no eos) and the workload
  local shape=$1 n=$2 vocab=$3
  "$CLI" make-model --shape "$shape" --out "$WORK/m-$shape" --force --seed 0 || return 1
  write_workload "$WORK/w-$shape.jsonl" "$n" "$PROMPT_LEN" "$NEW_TOKENS" "$vocab" 1
}

e2e_ours() {  # SHAPE FLAGS...: chunkwise batch on the GPU, then check that every request ran to max_tokens
  local shape=$1; shift
  local stats=$OUT/stats-e2e_$shape.json
  rm -f "$stats"
  [[ -f "$WORK/m-$shape/config.json" && -f "$WORK/w-$shape.jsonl" ]] || { echo "no model or workload (prep-$shape failed?)"; return 1; }
  "$CLI" batch --device cuda --model "$WORK/m-$shape" --workload "$WORK/w-$shape.jsonl" \
    --out "$WORK/results-$shape.jsonl" --stats-json "$stats" --no-progress --show 0 "$@"
  local rc=$?
  "$PY" - "$WORK/results-$shape.jsonl" "$shape" "$NEW_TOKENS" <<'PY'
import json, sys
path, shape, new = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    rows = [json.loads(l) for l in open(path)]
except OSError:
    rows = []
full = sum(1 for r in rows if r.get("finish_reason") == "length" and len(r.get("output_tokens", [])) == new)
failed = sum(1 for r in rows if r.get("finish_reason") == "error")
print("E2E_CHECK " + json.dumps({"case": f"e2e_{shape}", "requests": len(rows), "ran_to_max_tokens": full,
                                 "failed": failed}))
PY
  return $rc
}

peers() { "$PY" "$ROOT/bench/gpu/peers.py" "$@"; }

smi() {
  nvidia-smi || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv || true
  "$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' || true
  df -h "$WORK" | tail -1
}

export CLI WORK OUT PY ROOT PROMPT_LEN NEW_TOKENS
export -f json_line write_workload prep e2e_ours peers smi
shopt -s nullglob

CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
CARD=${CARD:-unknown GPU}
COMMIT=${COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
log "chunkwise GPU benchmark: card '$CARD', commit $COMMIT, $(date -u +%Y-%m-%dT%H:%M:%SZ), build $BUILD"
log "steps: $STEPS; deadline ${TOTAL_S}s"

step smi 20 5 smi
step tests 90 20 "$BUILD/bin/chunkwise_cuda_tests"
# shellcheck disable=SC2086
step bench 120 20 "$BUILD/bin/bench_attention" ${BENCH_ATTENTION_ARGS:-}
step peers-kernels 180 60 peers --cases kernels --time-budget 150
# Dense prefill against SDPA in alternating rounds: one measurement of each moves by as much as the goal's margin.
step rounds 150 40 "$PY" "$ROOT/bench/gpu/rounds.py" --bench "$BUILD/bin/bench_attention" --rounds "${ROUNDS:-7}"
step prep-135m 60 10 prep smollm2-135m "$REQ_135M" 49152
# shellcheck disable=SC2086
step e2e-135m 150 30 e2e_ours smollm2-135m $CLI_FLAGS_135M
# shellcheck disable=SC2086
step peers-135m 150 60 peers --cases e2e_135m $PEER_FLAGS
if [[ -x "$BUILD/bin/bench_e2e" ]]; then
  # shellcheck disable=SC2086
  step bench-e2e 120 20 "$BUILD/bin/bench_e2e" ${BENCH_E2E_ARGS:-}
fi
step prep-8b 120 40 prep llama3-8b "$REQ_8B" 128256
# shellcheck disable=SC2086
step e2e-8b 180 60 e2e_ours llama3-8b $CLI_FLAGS_8B
# shellcheck disable=SC2086
step peers-8b 180 90 peers --cases e2e_8b $PEER_FLAGS

# The report: our BENCH_JSON / stats next to the PEER_JSON lines (PREV_LOGS: logs and stats of an
# earlier call to merge in, e.g. when the 8B steps ran in a second call).
log "=== report $(date -u +%H:%M:%S)"
# shellcheck disable=SC2086
"$PY" "$ROOT/bench/gpu/report.py" --card "$CARD" --commit "$COMMIT" --out-dir "$OUT" \
  "$LOG" "$OUT"/stats-*.json ${PREV_LOGS:-} 2>&1 | tee "$WORK/report.out"
log "total $(($(date +%s) - START)) s"
