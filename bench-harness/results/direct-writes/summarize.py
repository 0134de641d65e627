#!/usr/bin/env python3
"""Medians of the buffered/O_DIRECT A/B of bench-harness/results/direct-writes/run.sh.

Usage: summarize.py RESULTS_DIR, the directory holding dw-<writes>-<fsync>-<round>/
results.json (the scratch results of a run, or the committed copy).

Per variant, over the rounds: each run's records/s; for the two 30 M-record produce runs,
the share of seconds after the first whose throughput lies within 15 % of that run's median
second, and the second run's throughput over the first's; broker CPU per million records;
the durable e2e latency percentiles.
"""
import json
import statistics
import sys
from pathlib import Path


def median(values):
    return statistics.median(values) if values else float("nan")


def load(root):
    runs = {}
    for path in sorted(Path(root).glob("dw-*-*-*/results.json")):
        _, writes, fsync, rnd = path.parent.name.split("-")
        for i, run in enumerate(json.loads(path.read_text())):
            runs.setdefault((writes, fsync, i), []).append(run)
    return runs


def steady_share(run):
    """Share of the seconds after the first within ±15 % of the run's median second."""
    rates = [s["produced_per_s"] for s in run.get("timeline", [])[1:]]
    rates = [r for r in rates if r > 0]
    if not rates:
        return float("nan")
    mid = median(rates)
    return sum(abs(r - mid) <= 0.15 * mid for r in rates) / len(rates)


def rate(run):
    side = run.get("produced") or run.get("consumed") or {}
    if run["kind"] == "consume" and run.get("consumed"):
        side = run["consumed"]
    return side.get("msgs_per_s", float("nan"))


def main(root):
    runs = load(root)
    variants = sorted({(w, f) for (w, f, _) in runs})
    labels = {}
    for (w, f, i), rs in runs.items():
        labels[(f, i)] = rs[0]["label"]
    print(f"rounds per variant: {max(len(v) for v in runs.values())}")
    for fsync in ("never", "always"):
        indexes = sorted(i for (f, i) in labels if f == fsync)
        for i in indexes:
            print(f"\n## --fsync {fsync}: {labels[(fsync, i)]}")
            for writes in ("buffered", "direct"):
                rs = runs.get((writes, fsync, i), [])
                if not rs:
                    continue
                rates = [rate(r) for r in rs]
                cpu = [r["broker"]["cpu_s_per_million"] for r in rs if r.get("broker")]
                line = (
                    f"  {writes:8} records/s median {median(rates) / 1e6:.2f} M "
                    f"(runs: {', '.join(f'{x / 1e6:.2f}' for x in rates)}); "
                    f"broker CPU {median(cpu):.3f} s per M records"
                )
                if rs[0]["kind"] == "produce" and rs[0]["workload"]["messages"] >= 10_000_000:
                    shares = [steady_share(r) for r in rs]
                    line += (
                        f"; seconds within ±15 % of the median second: "
                        f"{', '.join(f'{s:.0%}' for s in shares)}"
                    )
                if rs[0]["kind"] == "e2e":
                    e2e = [r["latency"]["e2e"] for r in rs if r["latency"].get("e2e")]
                    for p in ("p50_us", "p99_us", "p999_us"):
                        line += f"; e2e {p[:-3]} {median([e[p] for e in e2e]):.0f} µs"
                print(line)
    # Two identical 30 M-record runs in a row: the second over the first, per round.
    print("\n## the second 30 M-record run over the first, per round")
    for writes in ("buffered", "direct"):
        first, second = runs.get((writes, "never", 0), []), runs.get((writes, "never", 1), [])
        ratios = [rate(b) / rate(a) for a, b in zip(first, second)]
        print(f"  {writes:8} {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/direct-ab/results")
