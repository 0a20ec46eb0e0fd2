#!/usr/bin/env bash
# Builds bench/sparse/calibration.txt, the default calibration text of `chunkwise tune-sparse`:
# the prose of the repository's own documentation (README.md, docs/*.md, bench/results/*.md, in
# that order, each folder sorted by name) with fenced code blocks, tables, images and HTML
# comments left out, and runs of blank lines squeezed to one. Deterministic: the same files give
# the same bytes. Usage: bench/sparse/make_calibration.sh [OUT] (default: next to this script).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-$root/bench/sparse/calibration.txt}
export LC_ALL=C
files=("$root/README.md")
while IFS= read -r f; do files+=("$f"); done < <(ls "$root"/docs/*.md | sort)
while IFS= read -r f; do files+=("$f"); done < <(ls "$root"/bench/results/*.md | sort)
for f in "${files[@]}"; do
  awk '
    /^[[:space:]]*```/ { fence = !fence; next }   # fenced code blocks
    fence { next }
    /^[[:space:]]*\|/ { next }                     # table rows
    /^[[:space:]]*!\[/ { next }                    # images
    /^[[:space:]]*<!--/ { comment = 1 }
    comment { if ($0 ~ /-->/) comment = 0; next }
    { print }
  ' "$f"
  printf '\n'
done | cat -s >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out: $(wc -c <"$out") bytes from ${#files[@]} files"
