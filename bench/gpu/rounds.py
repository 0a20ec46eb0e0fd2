#!/usr/bin/env python3
"""Dense causal prefill against PyTorch SDPA in alternating rounds, on the GPU machine.

One measurement of each (bench_attention's median of 20, then peers.py's) moves by up to 5-7%
from one process or machine to the next on the H200 we rent, as much as the goal's margin. This
runs ours and SDPA one after the other, several rounds, the order swapped every round, and reports
the medians and their ratio.

    python3 bench/gpu/rounds.py --bench BUILD/bin/bench_attention [--lengths 16384] [--rounds 7]

Prints one line per round and one `ROUNDS_JSON {...}` line per length (bench/gpu/report.py reads it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402


def ours_tflops(bench, case):
    out = subprocess.run([bench, case], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            row = json.loads(line[len("BENCH_JSON "):])
            if row.get("case") == case and not row.get("error"):
                return float(row["tflops"])
    raise RuntimeError(f"{bench} printed no result for {case}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True, help="bench_attention binary")
    p.add_argument("--lengths", default="16384", help="comma-separated prompt lengths")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    import torch
    import torch.nn.functional as functional
    peers.torch, peers.F = torch, functional
    for L in (int(x) for x in args.lengths.split(",")):
        case = f"dense_prefill_L{L}"
        ours, sdpa = [], []

        def peer():
            sdpa.append(peers.dense_prefill_flops(L) / peers.sdpa_prefill_ms(L, 20) / 1e9)
            peers.free_memory()

        for r in range(args.rounds):
            if r % 2 == 0:
                ours.append(ours_tflops(args.bench, case))
                peer()
            else:
                peer()
                ours.append(ours_tflops(args.bench, case))
            print(f"{case} round {r + 1}: ours {ours[-1]:.1f}, sdpa {sdpa[-1]:.1f} TFLOP/s", flush=True)
        mo, ms = statistics.median(ours), statistics.median(sdpa)
        print("ROUNDS_JSON " + json.dumps({
            "case": case, "peer": "sdpa", "rounds": args.rounds, "ours_tflops": [round(x, 1) for x in ours],
            "peer_tflops": [round(x, 1) for x in sdpa], "ours_median": round(mo, 1), "peer_median": round(ms, 1),
            "ratio": round(mo / ms, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
