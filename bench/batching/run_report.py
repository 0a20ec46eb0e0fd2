#!/usr/bin/env python3
"""Runs every batching policy on every bench workload with `chunkwise batch` and writes a
report: bench/results/batching.md and an SVG plot of TBT p99 against output throughput.

    python3 bench/batching/run_report.py                      # everything (about 20 runs)
    python3 bench/batching/run_report.py --dry-run            # print the commands only
    python3 bench/batching/run_report.py --only short_prompts --policies packed,prefill-first

Runs (each one `chunkwise batch` process; the model load is not part of the measured time):
  * every policy (--policies, default all four) on every workload (--only to restrict), with
    the policy's own default token budget and the default eviction policy; the chat and mix
    workloads get --slo-ttft/--slo-tbt (default 10 s / 1.0 s) so SLO attainment is reported;
  * the BatchLLM check: shared_prefix under limited KV memory (--kv-blocks, default 100 and 200
    blocks, so that LRU has to evict shared prefixes), prefill-first + lru against
    prefix-grouped + prefix-lifetime (plus the two crossed pairs unless --no-kv-cross);
    --kv-blocks 0 skips it.

Every number in the report comes from the stats JSON / results JSONL that the CLI wrote; the
raw files stay in --work-dir (default build/batching-runs, not committed). If the CLI rejects
a flag or a run fails, the error is printed and recorded in the report, and the script goes
on with the next run. The report is written only if at least one run succeeded.

Run it on an otherwise idle machine: on 2 cores, any other busy process slows the CLI's
OpenMP threads several-fold and the numbers stop meaning much. Only the Python standard library
is used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

POLICIES = ["prefill-first", "stall-free", "prefix-grouped", "packed"]
WORKLOADS = ["shared_prefix", "chat_poisson", "long_prompt_mix", "short_prompts"]
SLO_WORKLOADS = {"chat_poisson", "long_prompt_mix"}
SHARED = "shared_prefix"
MIX = "long_prompt_mix"
SHORT = "short_prompts"
# (batching, eviction) pairs for the limited-memory shared-prefix experiment; the first two are
# the BatchLLM comparison, the other two separate the effect of grouping from that of eviction.
KV_PAIRS = [("prefill-first", "lru"), ("prefix-grouped", "prefix-lifetime")]
KV_CROSS = [("prefill-first", "prefix-lifetime"), ("prefix-grouped", "lru")]

POLICY_COLOURS = {"prefill-first": "#d62728", "stall-free": "#1f77b4", "prefix-grouped": "#2ca02c",
                  "packed": "#9467bd"}
EXTRA_COLOURS = ["#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
WORKLOAD_MARKERS = {"shared_prefix": "circle", "chat_poisson": "square", "long_prompt_mix": "triangle",
                    "short_prompts": "diamond"}
EXTRA_MARKERS = ["cross", "star", "triangle-down"]


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
class Run:
    def __init__(self, workload: str, policy: str, eviction: str | None, kv_blocks: int | None,
                 slo: tuple[float, float] | None, tag: str):
        self.workload = workload
        self.policy = policy          # batching policy asked for ("default": no --batching flag)
        self.eviction = eviction      # None: the CLI's default
        self.kv_blocks = kv_blocks    # None: the CLI's default pool
        self.slo = slo
        self.tag = tag                # "main" or "kv"
        self.cmd: list[str] = []
        self.rc: int | None = None
        self.error = ""
        self.elapsed_s = 0.0
        self.stats: dict | None = None
        self.results: dict[str, dict] | None = None

    @property
    def name(self) -> str:
        s = f"{self.workload}__{self.policy}"
        if self.eviction:
            s += f"__{self.eviction}"
        if self.kv_blocks:
            s += f"__kv{self.kv_blocks}"
        return s

    @property
    def label(self) -> str:
        s = self.policy
        if self.eviction:
            s += f" + {self.eviction}"
        return s

    @property
    def ok(self) -> bool:
        return self.stats is not None


def build_cmd(args, run: Run, out: Path, stats: Path) -> list[str]:
    cmd = [str(args.cli), "batch", "--workload", str(args.workloads / f"{run.workload}.jsonl")]
    if run.policy != "default":
        cmd += ["--batching", run.policy]
    if run.eviction:
        cmd += ["--eviction", run.eviction]
    if run.kv_blocks:
        cmd += ["--kv-blocks", str(run.kv_blocks)]
    if run.slo:
        cmd += ["--slo-ttft", f"{run.slo[0]:g}", "--slo-tbt", f"{run.slo[1]:g}"]
    cmd += list(args.cli_arg)
    cmd += ["--out", str(out), "--stats-json", str(stats), "--no-progress", "--show", "0"]
    return cmd


def execute(args, run: Run) -> None:
    out = args.work_dir / f"{run.name}.jsonl"
    stats = args.work_dir / f"{run.name}.stats.json"
    log = args.work_dir / f"{run.name}.log"
    run.cmd = build_cmd(args, run, out, stats)
    print("$ " + shlex.join(rel(c) for c in run.cmd), flush=True)
    if args.dry_run:
        return
    if args.reuse and stats.exists() and out.exists() and log.exists():
        # --reuse: the files of an earlier run of the same command in --work-dir stand for this run.
        print("  reusing the files of an earlier run", flush=True)
        run.rc, output, run.elapsed_s = 0, log.read_text(encoding="utf-8"), 0.0
    else:
        for p in (out, stats):  # never read a previous run's files
            if p.exists():
                p.unlink()
        t0 = time.monotonic()
        try:
            proc = subprocess.run(run.cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
            run.rc = proc.returncode
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            run.rc = None
            output = f"timed out after {args.timeout} s\n" + (e.stdout or b"").decode(errors="replace") + \
                (e.stderr or b"").decode(errors="replace")
        except OSError as e:
            run.rc = None
            output = f"could not start: {e}"
        run.elapsed_s = time.monotonic() - t0
        log.write_text(output, encoding="utf-8")
    if run.rc in (0, 3) and stats.exists():
        try:
            run.stats = json.loads(stats.read_text(encoding="utf-8"))
            run.results = {}
            if out.exists():
                for line in out.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        r = json.loads(line)
                        run.results[r["id"]] = r
        except (ValueError, KeyError) as e:
            run.stats = None
            run.error = f"unreadable output: {e}"
    if run.stats is None:
        err_lines = [ln for ln in output.splitlines() if ln.strip()]
        tail = [ln for ln in err_lines if "error" in ln.lower()] or err_lines[-3:]
        run.error = run.error or ("; ".join(tail[-3:]) if tail else f"exit status {run.rc}, no stats file")
        print(f"  FAILED (exit {run.rc}): {run.error}", file=sys.stderr, flush=True)
    else:
        s = run.stats
        print(f"  ok in {run.elapsed_s:.1f} s: wall {fmt(s.get('wall_s'), 2)} s, "
              f"{fmt(out_tps(s), 1)} output tok/s, TBT p99 {fmt(get(s, 'tbt_s', 'p99'), 3)} s"
              + (f" (exit 3: {s.get('requests_failed')} request(s) rejected)" if run.rc == 3 else ""),
              flush=True)


# ---------------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------------
def rel(p) -> str:
    s = str(p)
    root = str(REPO) + os.sep
    return s[len(root):] if s.startswith(root) else s


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def fmt(v, digits=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}f}"
    return str(v)


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def out_tps(s: dict):
    """Output tokens per second: the stats field if the CLI writes it, else output_tokens /
    wall_s from the same file."""
    v = s.get("output_tokens_per_s")
    if v is None and s.get("output_tokens") is not None and s.get("wall_s"):
        v = s["output_tokens"] / s["wall_s"]
    return v


def ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "–"
    return f"{a / b:.2f}×"


def policy_note(run: Run) -> str:
    """Flags a run whose stats name a different policy than the one asked for."""
    notes = []
    pol = get(run.stats, "policies", "batching")
    if run.policy != "default" and pol is not None and pol != run.policy:
        notes.append(f"stats say batching={pol}")
    ev = get(run.stats, "policies", "eviction")
    if run.eviction and ev is not None and ev != run.eviction:
        notes.append(f"stats say eviction={ev}")
    return "; ".join(notes)


def shown_policy(run: Run) -> str:
    if run.policy == "default":
        return f"default ({get(run.stats, 'policies', 'batching') or '?'})" if run.stats else "default"
    return run.policy


# ---------------------------------------------------------------------------------------------
# Output equality
# ---------------------------------------------------------------------------------------------
def compare_outputs(runs: list[Run]) -> list[str]:
    """Markdown lines: per workload, whether every successful run produced the same
    output_tokens for every id."""
    lines = []
    by_wl: dict[str, list[Run]] = {}
    for r in runs:
        if r.ok and r.results is not None:
            by_wl.setdefault(r.workload, []).append(r)
    for wl in [w for w in WORKLOADS if w in by_wl] + [w for w in by_wl if w not in WORKLOADS]:
        rs = by_wl[wl]
        ref = rs[0]
        names = ", ".join(f"`{r.label}`" + (f" (kv {r.kv_blocks})" if r.kv_blocks else "") for r in rs)
        if len(rs) < 2:
            lines.append(f"- **{wl}**: only one successful run ({names}); nothing to compare.")
            continue
        diffs = []
        for r in rs[1:]:
            bad = []
            ids = sorted(set(ref.results) | set(r.results))
            for i in ids:
                a, b = ref.results.get(i), r.results.get(i)
                if a is None or b is None:
                    bad.append(f"{i} (missing in {'reference' if a is None else 'this run'})")
                    continue
                ta, tb = a.get("output_tokens", []), b.get("output_tokens", [])
                if ta != tb:
                    k = next((j for j in range(min(len(ta), len(tb))) if ta[j] != tb[j]), min(len(ta), len(tb)))
                    bad.append(f"{i} (first difference at token {k}; lengths {len(ta)} vs {len(tb)})")
            if bad:
                more = f", and {len(bad) - 8} more" if len(bad) > 8 else ""
                diffs.append(f"`{r.label}`" + (f" (kv {r.kv_blocks})" if r.kv_blocks else "")
                             + f" differs from `{ref.label}` in {len(bad)} of {len(ids)} requests: "
                             + "; ".join(bad[:8]) + more)
        errs = sorted({i for r in rs for i, x in r.results.items() if x.get("finish_reason") == "error"})
        err_note = f" Rejected requests: {', '.join(errs)}." if errs else ""
        if diffs:
            lines.append(f"- **{wl}**: outputs differ ({len(rs)} runs: {names}).{err_note}")
            lines += [f"  - {d}" for d in diffs]
        else:
            lines.append(f"- **{wl}**: identical output tokens for every request across {len(rs)} runs "
                         f"({names}).{err_note}")
    return lines


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def header(args) -> list[str]:
    def cmd_out(cmd):
        try:
            return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    # COMMIT names the build where the checkout has no .git (a copied tree on a GPU machine).
    commit = os.environ.get("COMMIT") or cmd_out(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    if "COMMIT" not in os.environ and cmd_out(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " (working tree has uncommitted changes)"
    model = ""
    for line in cmd_out(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    cores = os.cpu_count()
    gpus = ""
    if any(a.startswith("cuda") or a.startswith("--device=cuda") for a in args.cli_arg):
        gpus = ", ".join(cmd_out(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).splitlines())
    invoked = shlex.join(["python3", rel(Path(sys.argv[0]).resolve())] + sys.argv[1:])
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "# Batching policies on the bench workloads",
        "",
        f"- Command: `{invoked}`",
        f"- Commit: `{commit}`",
        f"- Machine: {model or 'unknown CPU'}, {cores} logical cores" + (f"; GPU: {gpus}" if gpus else ""),
        f"- Date: {now}",
        f"- CLI: `{rel(args.cli)}`" + (f", extra arguments `{shlex.join(args.cli_arg)}`" if args.cli_arg else ""),
    ]


def main_table(runs: list[Run]) -> list[str]:
    cols = ["workload", "policy", "token budget", "wall s", "output tok/s", "total tok/s", "TTFT p50 s", "TTFT p99 s",
            "TBT p50 s", "TBT p99 s", "peak KV blocks", "prefix hit rate", "prompt tok", "computed",
            "saved (cache hits)", "recomputed", "preemptions", "SLO attained", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in runs:
        if not r.ok:
            lines.append(f"| {r.workload} | {shown_policy(r)} | " + " | ".join("–" for _ in cols[2:-1])
                         + f" | failed (see below) |")
            continue
        s = r.stats
        slo = s.get("slo") if r.slo else None
        slo_txt = "–"
        if isinstance(slo, dict) and slo.get("attained") is not None:
            slo_txt = pct(slo["attained"])
            parts = []
            if slo.get("ttft_attained") is not None:
                parts.append(f"TTFT {pct(slo['ttft_attained'])}")
            if slo.get("tbt_attained") is not None:
                parts.append(f"TBT {pct(slo['tbt_attained'])}")
            if parts:
                slo_txt += " (" + ", ".join(parts) + ")"
        elif r.slo:
            slo_txt = "not in stats"
        notes = [n for n in (policy_note(r),) if n]
        if r.rc == 3:
            notes.append(f"{s.get('requests_failed')} rejected")
        row = [r.workload, shown_policy(r), fmt(get(s, "policies", "token_budget")), fmt(s.get("wall_s"), 2), fmt(out_tps(s), 1),
               fmt(s.get("tokens_per_s"), 1), fmt(get(s, "ttft_s", "p50"), 3), fmt(get(s, "ttft_s", "p99"), 3),
               fmt(get(s, "tbt_s", "p50"), 4), fmt(get(s, "tbt_s", "p99"), 4), fmt(s.get("peak_kv_blocks")),
               pct(get(s, "kv", "prefix_hit_rate")), fmt(s.get("prompt_tokens")),
               fmt(s.get("prompt_tokens_computed")), fmt(get(s, "kv", "prefix_hit_tokens")),
               fmt(get(s, "kv", "recomputed_tokens")), fmt(s.get("preemptions")), slo_txt, "; ".join(notes)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def kv_section(args, kv_runs: list[Run]) -> list[str]:
    lines = []
    for kv in sorted({r.kv_blocks for r in kv_runs}):
        lines += kv_pool_section(kv, [r for r in kv_runs if r.kv_blocks == kv])
    return lines


def kv_pool_section(kv: int, kv_runs: list[Run]) -> list[str]:
    lines = ["", f"## BatchLLM check: shared prefixes under limited KV memory (`--kv-blocks {kv}`)", "",
             f"`{SHARED}.jsonl` (4 documents x 12 questions, all at t = 0, groups interleaved in file order) with a "
             f"pool of {kv} KV blocks, so the four documents and the running requests do not all fit "
             "and cached prefixes get evicted. BatchLLM's claim: scheduling each prefix group together and "
             "keeping its prefix only for the group's lifetime computes far fewer prefill tokens than FCFS "
             "with an LRU prefix cache.", ""]
    cols = ["batching + eviction", "wall s", "output tok/s", "prompt tok", "computed", "cache hits",
            "recomputed", "evictions", "preemptions", "prefix hit rate", "peak KV blocks", "TTFT p99 s", "note"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in kv_runs:
        if not r.ok:
            lines.append(f"| {r.label} | " + " | ".join("–" for _ in cols[1:-1]) + " | failed (see below) |")
            continue
        s = r.stats
        row = [r.label, fmt(s.get("wall_s"), 2), fmt(out_tps(s), 1), fmt(s.get("prompt_tokens")),
               fmt(s.get("prompt_tokens_computed")), fmt(get(s, "kv", "prefix_hit_tokens")),
               fmt(get(s, "kv", "recomputed_tokens")), fmt(get(s, "kv", "evictions")), fmt(s.get("preemptions")),
               pct(get(s, "kv", "prefix_hit_rate")), fmt(s.get("peak_kv_blocks")), fmt(get(s, "ttft_s", "p99"), 3),
               policy_note(r)]
        lines.append("| " + " | ".join(row) + " |")
    base = next((r for r in kv_runs if (r.policy, r.eviction) == KV_PAIRS[0] and r.ok), None)
    new = next((r for r in kv_runs if (r.policy, r.eviction) == KV_PAIRS[1] and r.ok), None)
    lines.append("")
    if base and new:
        cb, cn = base.stats.get("prompt_tokens_computed"), new.stats.get("prompt_tokens_computed")
        wb, wn = base.stats.get("wall_s"), new.stats.get("wall_s")
        lines.append(f"**Result:** `{base.label}` computed {fmt(cb)} prefill tokens in {fmt(wb, 2)} s; "
                     f"`{new.label}` computed {fmt(cn)} in {fmt(wn, 2)} s. Prefill tokens computed: "
                     f"{ratio(cb, cn)} (baseline / grouped); wall time: {ratio(wb, wn)} (baseline / grouped).")
    else:
        lines.append("**Result:** not available: the pair `prefill-first + lru` / `prefix-grouped + "
                     "prefix-lifetime` did not both run successfully.")
    return lines


def by(runs: list[Run], workload: str, policy: str) -> Run | None:
    return next((r for r in runs if r.workload == workload and r.policy == policy and r.ok), None)


def checks_section(main_runs: list[Run]) -> list[str]:
    lines = []
    if any(r.workload == MIX for r in main_runs):
        lines += ["", "## Sarathi-Serve check: prefill stalls in the long-prompt mix", "",
                  f"`{MIX}.jsonl`: 40 short chat requests (Poisson, 2 req/s) while three prompts of about "
                  "2,600-3,400 tokens arrive at about 3 s, 8 s and 13 s. A scheduler that prefills a whole long prompt "
                  "in one step stalls every running decode for that step; that shows up in TBT p99.", ""]
        sf, pf = by(main_runs, MIX, "stall-free"), by(main_runs, MIX, "prefill-first")
        cols = ["policy", "TBT p50 s", "TBT p90 s", "TBT p99 s", "TTFT p50 s", "TTFT p99 s", "SLO attained",
                "output tok/s"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for r in [r for r in main_runs if r.workload == MIX and r.ok]:
            s = r.stats
            lines.append("| " + " | ".join([
                shown_policy(r), fmt(get(s, "tbt_s", "p50"), 4), fmt(get(s, "tbt_s", "p90"), 4),
                fmt(get(s, "tbt_s", "p99"), 4), fmt(get(s, "ttft_s", "p50"), 3), fmt(get(s, "ttft_s", "p99"), 3),
                pct(get(s, "slo", "attained")), fmt(out_tps(s), 1)]) + " |")
        lines.append("")
        if sf and pf:
            a, b = get(pf.stats, "tbt_s", "p99"), get(sf.stats, "tbt_s", "p99")
            lines.append(f"**Result:** TBT p99 is {fmt(a, 4)} s with `prefill-first` and {fmt(b, 4)} s with "
                         f"`stall-free` (prefill-first / stall-free = {ratio(a, b)}).")
        else:
            lines.append("**Result:** not available: `stall-free` and `prefill-first` did not both run.")
    if any(r.workload == SHORT for r in main_runs):
        lines += ["", "## Prepacking check: many short prompts at once", "",
                  f"`{SHORT}.jsonl`: 160 short raw prompts, all at t = 0, with 4-16 output tokens each. "
                  "Packing several prompts into one prefill step should raise prefill throughput and cut TTFT.", ""]
        cols = ["policy", "prefill tok/s", "decode tok/s", "TTFT p50 s", "TTFT p99 s", "wall s", "steps"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for r in [r for r in main_runs if r.workload == SHORT and r.ok]:
            s = r.stats
            lines.append("| " + " | ".join([
                shown_policy(r), fmt(s.get("prefill_tokens_per_s"), 1), fmt(s.get("decode_tokens_per_s"), 1),
                fmt(get(s, "ttft_s", "p50"), 3), fmt(get(s, "ttft_s", "p99"), 3), fmt(s.get("wall_s"), 2),
                fmt(s.get("steps"))]) + " |")
        pk, pf = by(main_runs, SHORT, "packed"), by(main_runs, SHORT, "prefill-first")
        if pk and pf:
            lines += ["", f"**Result:** TTFT p50 {fmt(get(pf.stats, 'ttft_s', 'p50'), 3)} s (`prefill-first`) vs "
                      f"{fmt(get(pk.stats, 'ttft_s', 'p50'), 3)} s (`packed`); prefill throughput "
                      f"{fmt(pf.stats.get('prefill_tokens_per_s'), 1)} vs {fmt(pk.stats.get('prefill_tokens_per_s'), 1)}"
                      " tok/s."]
    return lines


def write_markdown(args, main_runs: list[Run], kv_runs: list[Run], svg_written: bool) -> None:
    runs = main_runs + kv_runs
    lines = header(args)
    ok = [r for r in runs if r.ok]
    models = sorted({str(r.stats.get("model")) for r in ok if r.stats.get("model")})
    devices = sorted({str(r.stats.get("device")) for r in ok if r.stats.get("device")})
    if models:
        lines.append(f"- Model: `{', '.join(models)}` on {', '.join(devices) or '?'}")
    lines.append(f"- Runs: {len(ok)} of {len(runs)} succeeded; one run per configuration (no repeats), "
                 f"{sum(r.elapsed_s for r in runs):.0f} s in all including model loads.")
    lines += ["", "Every number below is copied from the stats JSON and results JSONL written by the CLI "
              f"(raw files in `{rel(args.work_dir)}/`). `output tok/s` is `output_tokens / wall_s`; "
              "`total tok/s` is `(prompt_tokens + output_tokens) / wall_s`. `computed` is "
              "`prompt_tokens_computed` (prefill positions actually run, recomputation included), "
              "`saved` is `kv.prefix_hit_tokens`. SLOs (`--slo-ttft "
              f"{args.slo_ttft:g} --slo-tbt {args.slo_tbt:g}`) are set for {', '.join(sorted(SLO_WORKLOADS))}; "
              "`attained` is the share of requests with TTFT within the SLO and mean time between tokens within "
              "the SLO, as the CLI computes it. Each policy ran with its own default token budget and the "
              "default eviction policy and KV pool.", ""]

    wl_rows = []
    for wl in [w for w in WORKLOADS if any(r.workload == w for r in main_runs)]:
        r = next((x for x in main_runs if x.workload == wl and x.ok), None)
        if r:
            s = r.stats
            wl_rows.append(f"| `{wl}.jsonl` | {fmt(s.get('requests'))} | {fmt(s.get('prompt_tokens'))} | "
                           f"{fmt(s.get('output_tokens'))} (from `{shown_policy(r)}`) |")
    if wl_rows:
        lines += ["## Workloads", "", "See `bench/workloads/README.md`.", "",
                  "| workload | requests | prompt tokens (engine input) | output tokens generated |",
                  "|---|---|---|---|"] + wl_rows + [""]

    lines += ["## All runs", ""] + main_table(main_runs)
    if svg_written:
        lines += ["", f"![TBT p99 vs output throughput]({os.path.relpath(args.out_svg, args.out_md.parent)})",
                  "", "TBT p99 (y) against output throughput (x): colour = policy, marker = workload."]
    lines += kv_section(args, kv_runs)
    lines += checks_section(main_runs)
    lines += ["", "## Are the outputs the same?", "",
              "All requests are greedy, so every policy should generate the same tokens for each request "
              "(docs/formats.md: the tokens do not depend on the batch). Compared: `output_tokens` per `id` in the "
              "results JSONL, against the first successful run of the workload.", ""]
    cmp_lines = compare_outputs(runs)
    lines += cmp_lines or ["- no results to compare."]
    failed = [r for r in runs if not r.ok]
    if failed:
        lines += ["", "## Failed runs", ""]
        for r in failed:
            lines += [f"- `{r.name}` (exit {r.rc}): {r.error}", f"  `{shlex.join(rel(c) for c in r.cmd)}`"]
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {rel(args.out_md)}")


# ---------------------------------------------------------------------------------------------
# SVG
# ---------------------------------------------------------------------------------------------
def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [start], start
    while ticks[-1] < hi - step * 1e-9:  # the last tick is at or above hi
        t += step
        ticks.append(round(t, 10))
    return ticks


def marker(shape: str, x: float, y: float, colour: str, r: float = 6.0) -> str:
    style = f'fill="{colour}" fill-opacity="0.85" stroke="#222" stroke-width="0.8"'
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {style}/>'
    if shape == "square":
        return f'<rect x="{x - r * 0.9:.1f}" y="{y - r * 0.9:.1f}" width="{1.8 * r:.1f}" height="{1.8 * r:.1f}" {style}/>'
    if shape == "triangle":
        pts = [(x, y - r * 1.15), (x - r * 1.05, y + r * 0.8), (x + r * 1.05, y + r * 0.8)]
    elif shape == "triangle-down":
        pts = [(x, y + r * 1.15), (x - r * 1.05, y - r * 0.8), (x + r * 1.05, y - r * 0.8)]
    elif shape == "diamond":
        pts = [(x, y - r * 1.2), (x + r * 1.0, y), (x, y + r * 1.2), (x - r * 1.0, y)]
    elif shape == "star":
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rr = r * 1.25 if i % 2 == 0 else r * 0.55
            pts.append((x + rr * math.cos(a), y + rr * math.sin(a)))
    else:  # cross
        d = r * 0.9
        return (f'<path d="M{x - d:.1f},{y - d:.1f}L{x + d:.1f},{y + d:.1f}M{x - d:.1f},{y + d:.1f}L{x + d:.1f},{y - d:.1f}" '
                f'stroke="{colour}" stroke-width="2.5"/>')
    return f'<polygon points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}" {style}/>'


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_svg(args, main_runs: list[Run]) -> bool:
    pts = []
    for r in main_runs:
        if not r.ok:
            continue
        x, y = out_tps(r.stats), get(r.stats, "tbt_s", "p99")
        if x is None or y is None or y <= 0:
            continue
        pts.append((r, float(x), float(y)))
    if not pts:
        return False
    policies = list(dict.fromkeys(r.policy for r, _, _ in pts))
    workloads = list(dict.fromkeys(r.workload for r, _, _ in pts))
    colours = {p: POLICY_COLOURS.get(p) or EXTRA_COLOURS[i % len(EXTRA_COLOURS)] for i, p in enumerate(policies)}
    extra = iter(EXTRA_MARKERS * 4)
    markers = {w: WORKLOAD_MARKERS.get(w) or next(extra) for w in workloads}

    W, H = 820, 520
    L, R, T, B = 80, 230, 50, 70  # margins; legend on the right
    pw, ph = W - L - R, H - T - B
    xs = [x for _, x, _ in pts]
    ys = [y for _, _, y in pts]
    xt = nice_ticks(0.0, max(xs) * 1.08)
    x0, x1 = xt[0], xt[-1]
    log_y = max(ys) / min(ys) > 20
    if log_y:
        d0, d1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        if d1 == d0:
            d1 += 1
        y0, y1 = 10.0 ** d0, 10.0 ** d1
        yt = [m * 10.0 ** d for d in range(d0, d1 + 1) for m in (1, 2, 5) if y0 <= m * 10.0 ** d <= y1]
        fy = lambda v: T + ph - (math.log10(v) - d0) / (d1 - d0) * ph  # noqa: E731
    else:
        yt = nice_ticks(0.0, max(ys) * 1.08)
        y0, y1 = yt[0], yt[-1]
        fy = lambda v: T + ph - (v - y0) / (y1 - y0) * ph  # noqa: E731
    fx = lambda v: L + (v - x0) / (x1 - x0) * pw  # noqa: E731

    def tick_label(v: float) -> str:
        return f"{v:g}"

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="Helvetica, Arial, sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L + pw / 2:.0f}" y="28" text-anchor="middle" font-size="15" font-weight="bold">'
         'Time between tokens (p99) vs output throughput, per batching policy</text>']
    for v in xt:
        X = fx(v)
        o.append(f'<line x1="{X:.1f}" y1="{T}" x2="{X:.1f}" y2="{T + ph}" stroke="#e5e5e5"/>')
        o.append(f'<text x="{X:.1f}" y="{T + ph + 18}" text-anchor="middle">{tick_label(v)}</text>')
    for v in yt:
        Y = fy(v)
        o.append(f'<line x1="{L}" y1="{Y:.1f}" x2="{L + pw}" y2="{Y:.1f}" stroke="#e5e5e5"/>')
        o.append(f'<text x="{L - 8}" y="{Y + 4:.1f}" text-anchor="end">{tick_label(v)}</text>')
    o.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    o.append(f'<text x="{L + pw / 2:.0f}" y="{H - 22}" text-anchor="middle" font-size="13">'
             'output throughput (tokens/s, higher is better)</text>')
    o.append(f'<text transform="translate(22,{T + ph / 2:.0f}) rotate(-90)" text-anchor="middle" font-size="13">'
             f'TBT p99 (s{", log scale" if log_y else ""}, lower is better)</text>')
    for r, x, y in pts:
        o.append(marker(markers[r.workload], fx(x), fy(y), colours[r.policy]))
        o.append(f'<!-- {esc(r.workload)} / {esc(r.policy)}: x={x:.3f} tok/s, y={y:.5f} s -->')
    # Legend
    lx, ly = L + pw + 24, T + 6
    o.append(f'<text x="{lx}" y="{ly}" font-weight="bold">policy (colour)</text>')
    for i, p in enumerate(policies):
        yy = ly + 20 + 20 * i
        o.append(f'<rect x="{lx}" y="{yy - 9}" width="14" height="10" fill="{colours[p]}"/>')
        o.append(f'<text x="{lx + 22}" y="{yy}">{esc(p)}</text>')
    ly2 = ly + 20 + 20 * len(policies) + 20
    o.append(f'<text x="{lx}" y="{ly2}" font-weight="bold">workload (marker)</text>')
    for i, w in enumerate(workloads):
        yy = ly2 + 20 + 20 * i
        o.append(marker(markers[w], lx + 7, yy - 4, "#bbbbbb", 5.5))
        o.append(f'<text x="{lx + 22}" y="{yy}">{esc(w)}</text>')
    o.append(f'<text x="{L}" y="{H - 4}" font-size="10" fill="#666">One point per run of chunkwise batch '
             '(policy default token budget); numbers in batching.md.</text>')
    o.append("</svg>")
    args.out_svg.parent.mkdir(parents=True, exist_ok=True)
    args.out_svg.write_text("\n".join(o) + "\n", encoding="utf-8")
    print(f"wrote {rel(args.out_svg)}")
    return True


# ---------------------------------------------------------------------------------------------
def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", type=Path, default=REPO / "build/bin/chunkwise", help="chunkwise binary")
    ap.add_argument("--workloads", type=Path, default=REPO / "bench/workloads", help="folder with the .jsonl files")
    ap.add_argument("--out-md", type=Path, default=REPO / "bench/results/batching.md")
    ap.add_argument("--out-svg", type=Path, default=REPO / "bench/results/batching-tbt-vs-throughput.svg")
    ap.add_argument("--work-dir", type=Path, default=REPO / "build/batching-runs",
                    help="where the raw results/stats/log of each run go")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated batching policies (default: all four); 'default' runs without "
                         "--batching")
    ap.add_argument("--only", action="append", default=[], metavar="WORKLOAD",
                    help="run only this workload (name without .jsonl; repeatable)")
    ap.add_argument("--kv-blocks", default="100,200",
                    help="KV pools (comma-separated) for the limited-memory shared-prefix experiment (0: skip it)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the files of runs already in --work-dir (same command) instead of running them again")
    ap.add_argument("--no-kv-cross", action="store_true",
                    help="limited-memory experiment: run only the two BatchLLM pairs, not the crossed ones")
    ap.add_argument("--slo-ttft", type=float, default=10.0)
    ap.add_argument("--slo-tbt", type=float, default=1.0)
    ap.add_argument("--cli-arg", action="append", default=[], metavar="ARG",
                    help="extra argument passed to every run (repeatable), e.g. --cli-arg=--threads --cli-arg=2")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run (a run past it counts as failed)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args()
    # On SIGTERM, unwind like Ctrl-C, so that subprocess.run kills the running chunkwise too.
    signal.signal(signal.SIGTERM, _interrupt)

    args.cli = args.cli if args.cli.is_absolute() else (Path.cwd() / args.cli)
    for a in ("workloads", "out_md", "out_svg", "work_dir"):
        p = getattr(args, a)
        setattr(args, a, p if p.is_absolute() else (Path.cwd() / p).resolve())
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    only = [w[:-6] if w.endswith(".jsonl") else w for w in args.only]
    workloads = only or list(WORKLOADS)
    missing = [w for w in workloads if not (args.workloads / f"{w}.jsonl").exists()]
    if missing:
        print(f"error: no such workload in {rel(args.workloads)}: {', '.join(missing)}", file=sys.stderr)
        return 1
    if not args.dry_run:
        if not args.cli.exists():
            print(f"error: {rel(args.cli)} not found (build it, or pass --cli)", file=sys.stderr)
            return 1
        args.work_dir.mkdir(parents=True, exist_ok=True)

    slo = (args.slo_ttft, args.slo_tbt)
    main_runs = [Run(w, p, None, None, slo if w in SLO_WORKLOADS else None, "main")
                 for w in workloads for p in policies]
    kv_runs = []
    kv_pools = [int(x) for x in str(args.kv_blocks).split(",") if x.strip() and int(x) > 0]
    if kv_pools and SHARED in workloads:
        pairs = KV_PAIRS + ([] if args.no_kv_cross else KV_CROSS)
        kv_runs = [Run(SHARED, b, e, kv, None, "kv") for kv in kv_pools for b, e in pairs]

    all_runs = main_runs + kv_runs
    for i, r in enumerate(all_runs, start=1):
        print(f"[{i}/{len(all_runs)}] {r.workload}: {r.label}" + (f", kv-blocks {r.kv_blocks}" if r.kv_blocks else ""),
              flush=True)
        execute(args, r)
    if args.dry_run:
        return 0
    if not any(r.ok for r in all_runs):
        print("no run succeeded; not writing the report", file=sys.stderr)
        return 1
    svg = write_svg(args, main_runs)
    write_markdown(args, main_runs, kv_runs, svg)
    failed = [r for r in all_runs if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(all_runs)} runs failed; see the report", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; no report written", file=sys.stderr)
        sys.exit(130)
