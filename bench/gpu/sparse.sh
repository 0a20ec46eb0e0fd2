#!/usr/bin/env bash
# Sparse prefill on the GPU machine, in steps that each fit one device call:
#
#   bash bench/gpu/sparse.sh BUILD_DIR STEP...
#
# BUILD_DIR holds bin/ and lib/ from bench/gpu/build.sh. Steps:
#   tests     the CUDA tests of the sparse path ("[sparse]": host probe, device mask building, the mask
#             gather), then the whole binary
#   index     bench_sparse_index: device mask building per layer on the Llama-3-8B shape, 32K and 128K
#   quality   eval-sparse on the default model (CHUNKWISE_MODEL): every policy at 2K, 4K and 8K
#             (8,184: its 8,192-token context less the answer)
#   speed     eval-sparse timing on the Llama-3-8B shape (random weights, Llama-3 RoPE scaling) at
#             32K, 64K and 128K tokens (131,064: the context less the generated tokens), dense and every sparse policy (SPEED_POLICIES overrides)
# Results go to $OUT (default ./gpu-out): sparse-<step>.json and the logs.
set -uo pipefail
BUILD=$(cd "${1:?usage: bash bench/gpu/sparse.sh BUILD_DIR STEP...}" && pwd) || exit 1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
WORK=${WORK:-/tmp/chunkwise-gpu}
mkdir -p "$WORK"
[[ -d $BUILD/lib ]] && export LD_LIBRARY_PATH=$BUILD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CHUNKWISE_SOURCE_DIR=$ROOT
CLI=$BUILD/bin/chunkwise
VS_CONFIG=$ROOT/bench/sparse/smollm2-135m-vs.json
POLICIES=${POLICIES:-"dense;streaming;vertical-slash:config=$VS_CONFIG;block-topk;flex-prefill"}
# At long context, MInference's and FlexPrefill's published settings: A-shape 1024 + 8192 (FlexPrefill's
# StreamingLLM baseline), vertical-slash (1000, 6096) (MInference's block-sparse fallback size), block
# top-k 100 tiles of 64, FlexPrefill's defaults, and FlexPrefill with its budget capped at 8K tokens
# (random weights attend almost uniformly, so gamma alone keeps most tiles there).
SPEED_POLICIES=${SPEED_POLICIES:-"dense;streaming:sink=1024,window=8192;vertical-slash:vertical=1000,slash=6096;block-topk:top_k=100;flex-prefill;flex-prefill:max_budget=8192"}
cd "$ROOT" || exit 1

for step in "$@"; do
  case $step in
    tests)
      "$BUILD/bin/chunkwise_cuda_tests" "[sparse],cuda::gather_paged_f32*" 2>&1 | tail -40 | tee "$OUT/sparse-tests.log"
      "$BUILD/bin/chunkwise_cuda_tests" 2>&1 | tail -5 | tee -a "$OUT/sparse-tests.log" ;;
    index)
      "$BUILD/bin/bench_sparse_index" ${INDEX_FILTER:-} 2>&1 | tee "$OUT/sparse-index.txt" ;;
    quality)
      "$CLI" eval-sparse --device cuda --policies "$POLICIES" --lengths "${LENGTHS:-2048,4096,8184}" \
        --out-json "$OUT/sparse-quality.json" ${QUALITY_FLAGS:-} 2>"$OUT/sparse-quality.log" | tee "$OUT/sparse-quality.txt" ;;
    speed)
      [[ -d $WORK/m-llama3-8b ]] || "$CLI" make-model --shape llama3-8b --out "$WORK/m-llama3-8b" --force --seed 0 || exit 1
      "$CLI" eval-sparse --device cuda --model "$WORK/m-llama3-8b" --no-retrieval --no-fidelity --repeat 1 \
        --policies "$SPEED_POLICIES" --lengths "${SPEED_LENGTHS:-32768,65536,131064}" \
        --prefill-chunk "${SPEED_CHUNK:-16384}" --kv-mb "${SPEED_KV_MB:-24576}" \
        --out-json "$OUT/sparse-speed.json" 2>"$OUT/sparse-speed.log" | tee "$OUT/sparse-speed.txt" ;;
    *) echo "unknown step '$step' (tests, index, quality, speed)"; exit 2 ;;
  esac
done
