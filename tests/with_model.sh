#!/usr/bin/env bash
# Runs a test program only where the default model has been fetched; exit 77 = skipped.
model=${CHUNKWISE_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [[ ! -e "$model" ]]; then
  echo "skipped: the default model is not at $model (run scripts/setup)"
  exit 77
fi
exec "$@"
