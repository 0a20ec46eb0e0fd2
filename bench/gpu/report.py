#!/usr/bin/env python3
"""Markdown report of a GPU benchmark run: chunkwise's measurements next to the peers'.

Reads any number of files:
  - logs (text): lines `BENCH_JSON {...}` (ours: bench_attention, bench_e2e), `PEER_JSON {...}` and
    `PEER_ENV {...}` (bench/gpu/peers.py), `ROUNDS_JSON {...}` (bench/gpu/rounds.py), `STEP_JSON {...}`
    and `E2E_CHECK {...}` (bench/gpu/run.sh);
  - stats (JSON, `chunkwise batch --stats-json`): the file name `stats-<case>.json` names the case.
Pairs them by case name (bench/gpu/README.md), checks the issue's goals, writes
DIR/gpu-<card>.md (--out-dir) or --out FILE, and prints the markdown.

    python3 bench/gpu/report.py --card "NVIDIA H200" --commit abc123 --out-dir OUT run.log stats-*.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys

PREFIXES = ("BENCH_JSON", "PEER_JSON", "PEER_ENV", "ROUNDS_JSON", "STEP_JSON", "E2E_CHECK")
CASE_ORDER = [
    "dense_prefill_L4096", "dense_prefill_L16384", "dense_prefill_L65536",
    "sparse_prefill_L32768_d100", "sparse_prefill_L32768_d30", "sparse_prefill_L32768_d10",
    "sparse_prefill_L32768_d3", "decode_64x4096", "decode_8x32768",
    "e2e_smollm2-135m", "e2e_llama3-8b",
]
CEILINGS = ["copy_2GiB", "gemm_bf16_8192"]
# The peer each goal compares with, per case family.
MAIN_PEER = {"dense_prefill": "sdpa", "sparse_prefill": "flex_attention", "decode": "sdpa", "e2e": "generate_batch"}
UNITS = [("tflops", "TFLOP/s"), ("tbps", "TB/s"), ("tok_s", "tok/s")]


def family(case):
    for f in MAIN_PEER:
        if case.startswith(f):
            return f
    return None


def num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


class Data:
    def __init__(self):
        self.ours = {}    # case -> row
        self.peers = {}   # case -> impl -> row
        self.env = {}
        self.steps = {}   # step -> row (the last one wins)
        self.checks = {}  # case -> row
        self.rounds = {}  # case -> row (alternating rounds against the peer)
        self.problems = []

    def read_log(self, path):
        with open(path, errors="replace") as f:
            for n, line in enumerate(f, 1):
                # The first marker on the line counts (a STEP_JSON line may quote another one).
                hits = [(line.find(p + " "), p) for p in PREFIXES if line.find(p + " ") >= 0]
                if not hits:
                    continue
                i, prefix = min(hits)
                try:
                    row = json.loads(line[i + len(prefix) + 1:])
                except json.JSONDecodeError as e:
                    self.problems.append(f"{os.path.basename(path)}:{n}: bad {prefix} line ({e})")
                    continue
                if isinstance(row, dict):
                    self.add(prefix, row)

    def add(self, prefix, row):
        if prefix == "PEER_ENV":  # a failed run's "unavailable" does not hide a good run's versions
            self.env.update({k: v for k, v in row.items() if k not in self.env or "unavailable" not in str(v)})
        elif prefix == "STEP_JSON":
            self.steps[str(row.get("step"))] = row
        elif prefix == "E2E_CHECK":
            self.checks[str(row.get("case"))] = row
        elif prefix == "ROUNDS_JSON":
            self.rounds[str(row.get("case"))] = row
        elif "case" in row:
            case = str(row["case"])
            if prefix == "BENCH_JSON":
                self.ours[case] = row
            else:
                self.peers.setdefault(case, {})[str(row.get("impl", "peer"))] = row

    def read_stats(self, path):
        with open(path) as f:
            s = json.load(f)
        if not isinstance(s, dict) or "tokens_per_s" not in s:
            self.problems.append(f"{os.path.basename(path)}: not a chunkwise stats file")
            return
        m = re.match(r"stats-(.+)\.json$", os.path.basename(path))
        case = m.group(1) if m else "e2e_" + os.path.splitext(os.path.basename(path))[0]
        req = s.get("requests") or 0
        ran = max(1, req - (s.get("requests_failed") or 0))
        shape = f"{req}x{round((s.get('prompt_tokens') or 0) / ran)}+{round((s.get('output_tokens') or 0) / ran)}"
        row = {"case": case, "shape": shape, "tok_s": s.get("tokens_per_s"), "ms": 1e3 * (s.get("wall_s") or 0),
               "wall_s": s.get("wall_s"), "output_tok_s": s.get("output_tokens_per_s"),
               "note": f"chunkwise batch on {s.get('device', '?')}, {s.get('requests_failed', 0)} failed, "
                       f"{s.get('steps', '?')} steps, {s.get('preemptions', 0)} preemptions"}
        self.ours.setdefault(case, {}).update(row)

    def read(self, path):
        if not os.path.isfile(path):
            self.problems.append(f"{path}: not found")
            return
        if path.endswith(".json"):
            try:
                self.read_stats(path)
            except (OSError, json.JSONDecodeError) as e:
                self.problems.append(f"{os.path.basename(path)}: {e}")
        else:
            self.read_log(path)


def metric(row):
    """(key, value) of the row's throughput figure, or (None, None)."""
    if not row:
        return None, None
    for key, _ in UNITS:
        if num(row.get(key)):
            return key, row[key]
    return None, None


def fmt_value(row):
    if not row:
        return "–"
    if row.get("error"):
        return "error"
    parts = []
    key, v = metric(row)
    if key == "tok_s":
        parts.append(f"{v:,.0f} tok/s")
        if num(row.get("wall_s")):
            parts.append(f"{row['wall_s']:.1f} s")
    else:
        if num(row.get("ms")):
            parts.append(f"{row['ms']:.3f} ms" if row["ms"] < 100 else f"{row['ms']:.1f} ms")
        if key:
            parts.append(f"{v:.3g} {dict(UNITS)[key]}" if v < 100 else f"{v:,.0f} {dict(UNITS)[key]}")
    if num(row.get("kept")):
        parts.append(f"kept {100 * row['kept']:.1f}%")
    return ", ".join(parts) or "–"


def speed_ratio(ours, peer):
    """How many times faster ours is than the peer: the throughput ratio for end-to-end runs (their
    sizes may differ), else the inverse time ratio (same work), else the throughput ratio."""
    if not ours or not peer or ours.get("error") or peer.get("error"):
        return None
    ko, vo = metric(ours)
    kp, vp = metric(peer)
    if ko == "tok_s" and kp == "tok_s" and vp:
        return vo / vp
    if num(ours.get("ms")) and num(peer.get("ms")) and ours["ms"] > 0:
        return peer["ms"] / ours["ms"]
    if ko and ko == kp and vp:
        return vo / vp
    return None


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×"


def goals(d):
    rows = []

    def peer(case, impl):
        return d.peers.get(case, {}).get(impl)

    def add(goal, case, impl, target_text, check):
        ours = d.ours.get(case)
        ref = peer(case, impl) if impl else None
        value = check(ours, ref)
        met = "–" if value is None else ("✅ yes" if value[1] else "❌ no")
        rows.append([goal, fmt_value(ours), fmt_value(ref) if impl else "–",
                     "–" if value is None else value[0], target_text, met])

    def ratio_check(target):
        def check(ours, ref):
            r = speed_ratio(ours, ref)
            return None if r is None else (fmt_ratio(r), r >= target)
        return check

    def absolute_check(key, target, unit, scale=1.0):
        def check(ours, _ref):
            if not ours or ours.get("error") or not num(ours.get(key)):
                return None
            return (f"{ours[key] / scale:,.2f} {unit}", ours[key] >= target)
        return check

    dense = d.rounds.get("dense_prefill_L16384")
    if dense and num(dense.get("ratio")):
        # Alternating rounds, when run, decide: one measurement of each moves by as much as the margin.
        n = dense.get("rounds")
        rows.append([f"dense prefill, 16K: ≥ 0.9× PyTorch SDPA (medians of {n} alternating rounds)",
                     f"{dense['ours_median']:,.0f} TFLOP/s", f"{dense['peer_median']:,.0f} TFLOP/s",
                     fmt_ratio(dense["ratio"]), "≥ 0.90×", "✅ yes" if dense["ratio"] >= 0.9 else "❌ no"])
    else:
        add("dense prefill, 16K: ≥ 0.9× PyTorch SDPA", "dense_prefill_L16384", "sdpa", "≥ 0.90×", ratio_check(0.9))
    add("block-sparse prefill, 32K, 10% of tiles: ≥ 1.25× faster than FlexAttention", "sparse_prefill_L32768_d10",
        "flex_attention", "≥ 1.25×", ratio_check(1.25))
    add("decode, 64 × 4K: ≥ 2.5 TB/s of KV read", "decode_64x4096", "sdpa", "≥ 2.5 TB/s",
        absolute_check("tbps", 2.5, "TB/s"))
    add("end to end, SmolLM2-135M shape: ≥ 10× transformers generate_batch", "e2e_smollm2-135m", "generate_batch",
        "≥ 10×", ratio_check(10.0))
    add("end to end, SmolLM2-135M shape: ≥ 200k tok/s", "e2e_smollm2-135m", None, "≥ 200,000 tok/s",
        absolute_check("tok_s", 200000, "k tok/s", 1000.0))
    return rows


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
    return "\n".join(out)


def measurement_rows(d, cases):
    rows = []
    for case in cases:
        ours = d.ours.get(case)
        peers = d.peers.get(case, {})
        main = MAIN_PEER.get(family(case))
        impls = sorted(peers, key=lambda i: (i != main, i)) or [None]
        for impl in impls:
            p = peers.get(impl) if impl else None
            shape = (ours or {}).get("shape") or (p or {}).get("shape") or ""
            if ours and p and ours.get("shape") and p.get("shape") and ours["shape"] != p["shape"]:
                shape = f"ours {ours['shape']}; peer {p['shape']}"
            note = (p or {}).get("error") or (p or {}).get("note") or ""
            if ours and ours.get("error"):
                note = f"ours: {ours['error']}; {note}"
            rows.append([case, shape, fmt_value(ours), impl or "–", fmt_value(p), fmt_ratio(speed_ratio(ours, p)),
                         note])
    return rows


def slug(card):
    words = [w for w in re.split(r"[^a-z0-9]+", card.lower()) if w and w not in ("nvidia", "tesla", "geforce")]
    for w in words:
        if re.search(r"\d", w) and re.search(r"[a-z]", w):
            return w
    return "-".join(words) or "unknown"


def render(d, card, commit, date):
    lines = [f"# GPU benchmark: {card}", ""]
    env = ", ".join(f"{k} {v}" for k, v in d.env.items() if k != "device")
    lines += [f"- date: {date}", f"- commit: `{commit}`", f"- card: {card}" +
              (f" (torch sees '{d.env['device']}')" if d.env.get("device") and d.env["device"] != card else ""),
              f"- peers: {env or 'no PEER_ENV line'}",
              "- ratio = how many times faster ours is (peer time / our time for the same work; "
              "throughput ratio for end-to-end runs); > 1 means ours is faster", ""]
    lines += ["## Goals (from the issue)", "",
              table(["goal", "ours", "reference", "measured", "target", "met"], goals(d)), ""]
    kernel_cases = [c for c in CASE_ORDER if not c.startswith("e2e")]
    others = sorted((set(d.ours) | set(d.peers)) - set(CASE_ORDER) - set(CEILINGS))
    lines += ["## Kernels", "",
              table(["case", "shape", "ours", "peer", "peer result", "ratio", "note"],
                    measurement_rows(d, kernel_cases + [c for c in others if not c.startswith("e2e")])), ""]
    if d.rounds:
        lines += ["## Alternating rounds (bench/gpu/rounds.py)", "",
                  table(["case", "peer", "rounds", "ours, TFLOP/s", "peer, TFLOP/s", "medians", "ratio"],
                        [[c, r.get("peer"), r.get("rounds"), ", ".join(f"{x:.0f}" for x in r.get("ours_tflops", [])),
                          ", ".join(f"{x:.0f}" for x in r.get("peer_tflops", [])),
                          f"{r.get('ours_median', 0):.0f} / {r.get('peer_median', 0):.0f}", fmt_ratio(r.get("ratio"))]
                         for c, r in sorted(d.rounds.items())]), ""]
    e2e_cases = [c for c in CASE_ORDER if c.startswith("e2e")] + [c for c in others if c.startswith("e2e")]
    lines += ["## End to end (random weights, token-id prompts, every request runs to max_tokens)", "",
              table(["case", "shape", "ours", "peer", "peer result", "ratio", "note"],
                    measurement_rows(d, e2e_cases)), ""]
    if d.checks:
        lines += [table(["check", "requests", "ran to max_tokens", "failed"],
                        [[c, r.get("requests"), r.get("ran_to_max_tokens"), r.get("failed")]
                         for c, r in sorted(d.checks.items())]), ""]
    ceil_rows = [[c, (r or {}).get("shape", ""), fmt_value(r), (r or {}).get("error") or (r or {}).get("note", "")]
                 for c in CEILINGS for r in [next(iter(d.peers.get(c, {}).values()), None)]]
    lines += ["## Ceilings of the card (PyTorch)", "", table(["case", "shape", "result", "note"], ceil_rows), ""]
    if d.steps:
        lines += ["## Steps", "",
                  table(["step", "status", "s", "last line"],
                        [[s, r.get("status"), r.get("seconds"), f"`{r.get('tail', '')}`" if r.get("tail") else ""]
                         for s, r in d.steps.items()]), ""]
    if d.problems:
        lines += ["## Problems reading the inputs", ""] + [f"- {p}" for p in d.problems] + [""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*")
    p.add_argument("--card", default=None, help="GPU name (default: the peers' PEER_ENV device)")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--date", default=None)
    p.add_argument("--out-dir", default=None, help="write DIR/gpu-<card>.md")
    p.add_argument("--out", default=None, help="write this file instead")
    args = p.parse_args()
    d = Data()
    for f in args.files:
        d.read(f)
    card = args.card or d.env.get("device") or "unknown GPU"
    date = args.date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = render(d, card, args.commit, date)
    path = args.out or (os.path.join(args.out_dir, f"gpu-{slug(card)}.md") if args.out_dir else None)
    if path:
        with open(path, "w") as f:
            f.write(md + "\n")
    print(md)
    if path:
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
