#!/usr/bin/env bash
# Chunk reuse on the GPU machine, in steps that each fit one device call:
#
#   bash bench/gpu/reuse.sh BUILD_DIR STEP...
#
# BUILD_DIR holds bin/ and lib/ from bench/gpu/build.sh. Steps:
#   tests     the CUDA tests of chunk reuse ("[reuse]": chunk KV placement and read-back, the device
#             tier, the selective forward against the CPU backend), then the whole binary
#   eval      eval-reuse on the default model (CHUNKWISE_MODEL) with the GPU: CHUNKS (default 4,8,16)
#             chunks of CHUNK_TOKENS (default 256,512) tokens, every policy, QUESTIONS (default 80)
#             prompts; 16 x 512 is past the model's context and skipped
# Results go to $OUT (default ./gpu-out): reuse-<step>.json and the logs.
set -uo pipefail
BUILD=$(cd "${1:?usage: bash bench/gpu/reuse.sh BUILD_DIR STEP...}" && pwd) || exit 1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
[[ -d $BUILD/lib ]] && export LD_LIBRARY_PATH=$BUILD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
CLI=$BUILD/bin/chunkwise
cd "$ROOT" || exit 1

for step in "$@"; do
  case $step in
    tests)
      "$BUILD/bin/chunkwise_cuda_tests" "[reuse]" 2>&1 | tail -60 | tee "$OUT/reuse-tests.log"
      "$BUILD/bin/chunkwise_cuda_tests" 2>&1 | tail -5 | tee -a "$OUT/reuse-tests.log" ;;
    eval)
      "$CLI" eval-reuse --device cuda --chunks "${CHUNKS:-4,8,16}" --chunk-tokens "${CHUNK_TOKENS:-256,512}" \
        --questions "${QUESTIONS:-80}" --out-json "$OUT/reuse-eval.json" ${EVAL_FLAGS:-} \
        2>"$OUT/reuse-eval.log" | tee "$OUT/reuse-eval.txt" ;;
    *) echo "unknown step '$step' (tests, eval)"; exit 2 ;;
  esac
done
