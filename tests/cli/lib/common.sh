# Sourced by the CLI tests (tests/cli/*.sh): $model (the default model, or $CHUNKWISE_MODEL), $tmp (a
# folder removed on exit), fail=0, need_model (skip, exit 77, without the model) and
#   expect_error NAME FRAGMENT ARGS...
# which runs the CLI ($cli) with ARGS and wants a non-zero exit (not a signal) with exactly one line
# on stderr, "chunkwise: error: ...FRAGMENT...".
# $sanitized is 1 in a sanitizer build (ctest sets CHUNKWISE_TEST_SANITIZED=1 there): ASan and
# UBSan make the model's matrix products some 30 times slower, so the tests run the model on
# shorter prompts there, through the same code and checks; the Release build runs the full sizes.
model=${CHUNKWISE_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf}
need_model() {
  [[ -f "$model" ]] || { echo "skipped: the default model is not at $model"; exit 77; }
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
sanitized=0
[[ "${CHUNKWISE_TEST_SANITIZED:-0}" == 1 ]] && sanitized=1

expect_error() {
  local name=$1 fragment=$2; shift 2
  "$cli" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [[ $rc == 0 || $rc -ge 128 ]] || [[ $(wc -l <"$tmp/err") != 1 ]] ||
      ! grep -q "^chunkwise: error: .*$fragment" "$tmp/err"; then
    echo "FAIL $name: rc=$rc"; cat "$tmp/err"; fail=1
  else
    echo "ok   $name: $(head -1 "$tmp/err")"
  fi
}
