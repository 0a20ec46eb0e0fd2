#!/usr/bin/env python3
"""Markdown tables from `chunkwise eval-reuse --out-json` files.

    python3 bench/reuse/report.py FILE.json...
"""
import json
import sys


def fmt(row, key, spec):
    return format(row[key], spec) if key in row else "-"


def main(paths):
    print("| device | chunks x tokens | policy | ratio | accuracy | kept of full's correct | top-1 | KL | "
          "TTFT ms | speed-up | forward ms | placement ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        for r in json.load(open(path)):
            full = r["policy"] == "full-prefill"
            print("| {} | {} x {} | {} | {} | {} | {} | {} | {} | {:.2f} | {} | {} | {} |".format(
                r["device"], r["chunks"], r["chunk_tokens"], r["policy"],
                "-" if full else fmt(r, "recompute_ratio", ".3f"),
                fmt(r, "accuracy", ".3f"),
                "-" if full else fmt(r, "accuracy_vs_full", ".3f"),
                fmt(r, "top1", ".3f"), fmt(r, "mean_kl", ".4f"),
                1e3 * r["ttft_s"], "-" if full else fmt(r, "speedup", ".2f"),
                "{:.2f}".format(1e3 * r["prefill_forward_s"]) if "prefill_forward_s" in r else "-",
                "-" if full or "load_s" not in r else "{:.2f}".format(1e3 * r["load_s"])))


if __name__ == "__main__":
    main(sys.argv[1:])
