#!/usr/bin/env bash
# What a segment roll costs a long produce run: the same 30 M-record run (100 B, one
# partition, acks=1, `--fsync never`) against a fresh eventflowd with the default 1 GiB
# segments and with `--segment-bytes` of 8 GiB, which the run's 3.3 GB never fills (a
# segment rolls at 4 GiB at the latest). A roll syncs the segment it
# seals (its batches must be durable before a segment follows them), and that fdatasync
# is where a device with a volatile write cache writes back what the O_DIRECT appends left
# in it. The order of the two turns each round. Each line: segment MiB, partitions,
# records/s, the share of seconds after the first within ±15 % of the run's median second
# (the steadiness target of bench-harness/targets.sh), and the slowest second (records/s).
# segment-roll.txt is the committed output.
#
#   bench-harness/results/targets-check/segment-roll.sh
#   ROUNDS=2 MESSAGES=20000000 bench-harness/results/targets-check/segment-roll.sh
#
# BROKER and BENCH default to the release builds; SCRATCH (the filesystem measured)
# defaults to target/bench-data/segment-roll.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BROKER=${BROKER:-target/release/eventflowd}
BENCH=${BENCH:-target/release/eventflow-bench}
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-30000000}
SCRATCH=${SCRATCH:-target/bench-data/segment-roll}
# shellcheck source=../broker.sh
source bench-harness/results/broker.sh

run() {
    local segment_mib=$1 dir="$SCRATCH/run"
    rm -rf "$dir"
    mkdir -p "$dir"
    start_broker "$dir" --fsync never --segment-bytes $((segment_mib << 20))
    timeout 300 "$BENCH" produce --target "eventflow://$broker_addr" --create-topic \
        --partitions 1 --producers 1 --messages "$MESSAGES" --acks 1 --batch-bytes 1048576 \
        --linger-us 1000 --broker-pid "$broker_pid" --quiet --json "$dir/run.json" \
        >"$dir/out" 2>&1
    stop_broker
    python3 - "$segment_mib" "$dir/run.json" <<'PY'
import json, statistics, sys
run = json.load(open(sys.argv[2]))[0]
seconds = [s["produced_per_s"] for s in run["timeline"][1:] if s["produced_per_s"] > 0]
mid = statistics.median(seconds)
steady = sum(abs(s - mid) <= 0.15 * mid for s in seconds) / len(seconds)
rate = run["produced"]["msgs_per_s"]
print(f"{sys.argv[1]} 1 {rate / 1e6:.2f}M {steady * 100:.0f} {min(seconds) / 1e6:.2f}")
PY
    rm -rf "$dir"
}

echo "segment_mib partitions records_per_s steady_pct slowest_second_M"
alternate "" -- 1024 8192
echo
echo "medians over $ROUNDS rounds, $MESSAGES records of 100 B, one partition, --fsync never"
python3 bench-harness/results/medians.py "$lines" segment_mib "steady %:.0f" \
    "slowest second M:.2f"
