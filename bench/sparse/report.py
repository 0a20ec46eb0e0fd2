#!/usr/bin/env python3
"""Markdown tables from `chunkwise eval-sparse --out-json` reports (quality and/or speed runs).

usage: report.py REPORT.json [REPORT.json ...]   (prints the tables; bench/results/sparse.md embeds them)
"""
import json
import sys


def fmt(row, key, spec="{:.3f}"):
    v = row.get(key)
    return "–" if v is None else spec.format(v)


def dense_solved(rows, length):
    for r in rows:
        if r["policy"].startswith("dense") and r["length"] == length and "answers" in r:
            return sum(a["ok"] for a in r["answers"])
    return None


def quality_table(rows):
    out = ["| policy | tokens | density (natural text) | density (retrieval) | passkey | needle | solved of dense-solved "
           "| top-1 vs dense | KL vs dense | recall mean | recall worst layer | TTFT s | mask s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = fmt(r, "retained_vs_dense")
        n = dense_solved(rows, r["length"])
        if n and r.get("retained_vs_dense") is not None:
            kept += f" ({round(r['retained_vs_dense'] * n)}/{n})"
        out.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["policy"], r["length"], fmt(r, "density"), fmt(r, "retrieval_density"), fmt(r, "passkey_accuracy"),
            fmt(r, "needle_accuracy"), kept, fmt(r, "top1_agreement"), fmt(r, "kl", "{:.2e}"),
            fmt(r, "recall_mean"), fmt(r, "recall_min"), fmt(r, "ttft_s", "{:.4f}"), fmt(r, "mask_s", "{:.4f}")))
    return "\n".join(out)


def speed_table(rows):
    out = ["| policy | tokens | density | TTFT s | of which mask building s | speed-up vs dense |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| {} | {} | {} | {} | {} | {} |".format(r["policy"], r["length"], fmt(r, "density"),
                                                          fmt(r, "ttft_s", "{:.3f}"), fmt(r, "mask_s", "{:.3f}"),
                                                          fmt(r, "speedup_vs_dense", "{:.2f}")))
    return "\n".join(out)


def main():
    for path in sys.argv[1:]:
        rows = json.load(open(path))
        quality = any("top1_agreement" in r or "passkey_accuracy" in r for r in rows)
        print(f"<!-- {path} -->")
        print(quality_table(rows) if quality else speed_table(rows))
        print()


if __name__ == "__main__":
    main()
