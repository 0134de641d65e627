#!/usr/bin/env bash
# benches/direct_write.rs, ROUNDS times in a row: the medians criterion measured for each way
# of issuing a direct write (plain writev against a registered buffer's write_fixed) and a
# durable round (write then fdatasync in two submissions, linked in one, or one RWF_DSYNC
# write), one line per round, then the median of the rounds. The disk drifts within a run,
# and criterion measures the ways one after the other, so only a difference that holds in
# every round counts. results.txt is the committed output.
#
#   bench-harness/results/io-uring-writes/run.sh
#   ROUNDS=5 EVENTFLOW_BENCH_DIR=/data bench-harness/results/io-uring-writes/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROUNDS=${ROUNDS:-3}
lines=$(mktemp)
trap 'rm -f "$lines"' EXIT
for round in $(seq "$ROUNDS"); do
    cargo bench --bench direct_write >/dev/null 2>&1
    python3 - "$round" >>"$lines" <<'PY'
import json, pathlib, sys
out = []
# criterion keeps "group/size/way" as target/criterion/group/size_way/new/estimates.json.
for group in ("direct_write", "durable_round"):
    for est in sorted(pathlib.Path("target/criterion", group).glob("*/new/estimates.json")):
        size, way = est.parts[-3].split("_", 1)
        median_us = json.loads(est.read_text())["median"]["point_estimate"] / 1000
        out.append(f"{sys.argv[1]} {group}/{size}/{way} {median_us:.1f}")
print("\n".join(out))
PY
    tail -n 10 "$lines"
done
echo
echo "median of $ROUNDS rounds, µs per operation (a durable round: its write and its sync):"
python3 - "$lines" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    _, name, us = line.split()
    runs.setdefault(name, []).append(float(us))
for name, values in runs.items():
    each = " / ".join(f"{v:.1f}" for v in values)
    print(f"  {name:<36} {statistics.median(values):>8.1f}   ({each})")
PY
