#!/usr/bin/env python3
"""Prints the medians of the malloc-reuse A/B from the harness's results.json files and
perf stat's page-fault counts (run.sh writes both under /tmp/malloc-ab)."""
import glob
import json
import os
import statistics
import sys

scratch = sys.argv[1] if len(sys.argv) > 1 else "/tmp/malloc-ab"
runs = {}  # label -> variant -> [(round, M/s, cpu s/M, rss peak MiB)]
faults = {}  # variant -> [(round, faults, records)]
for path in sorted(glob.glob(f"{scratch}/results/malloc-ab-*/results.json")):
    name = os.path.basename(os.path.dirname(path))
    _, _, variant, round_ = name.split("-")
    records = 0
    for r in json.load(open(path)):
        done = (r.get("produced") or {}).get("messages") or 0
        consumed = (r.get("consumed") or {}).get("messages") or 0
        records += done + consumed
        rate = max((r.get("produced") or {}).get("msgs_per_s") or 0,
                   (r.get("consumed") or {}).get("msgs_per_s") or 0)
        broker = r.get("broker") or {}
        runs.setdefault(r["label"], {}).setdefault(variant, []).append((
            int(round_), rate / 1e6, broker.get("cpu_s_per_million"),
            (broker.get("rss_peak_kib") or 0) / 1024))
        assert r["errors"] == 0 and r["missing"] == 0 and r["duplicates"] == 0, name
    with open(f"{scratch}/faults-{variant}-{round_}.csv") as f:
        count = next(int(line.split(",")[0]) for line in f if "page-faults" in line)
    faults.setdefault(variant, []).append((int(round_), count, records))

for label, variants in runs.items():
    print(label)
    for variant in ("before", "after"):
        rows = sorted(variants.get(variant, []))
        rates = [r[1] for r in rows]
        cpus = [r[2] for r in rows if r[2] is not None]
        rss = [r[3] for r in rows]
        print(f"  {variant:6}  M/s median {statistics.median(rates):.2f} "
              f"[{' '.join(f'{x:.2f}' for x in rates)}]  cpu s/M median "
              f"{statistics.median(cpus):.3f} [{' '.join(f'{x:.3f}' for x in cpus)}]  "
              f"rss peak MiB [{' '.join(f'{x:.0f}' for x in rss)}]")
print("broker page faults over the whole plan (all four runs)")
for variant in ("before", "after"):
    rows = sorted(faults.get(variant, []))
    print(f"  {variant:6}  median {statistics.median(r[1] for r in rows):,.0f} "
          f"[{' '.join(f'{r[1]:,}' for r in rows)}]  per M records "
          f"[{' '.join(f'{r[1] / r[2] * 1e6:,.0f}' for r in rows)}]")
