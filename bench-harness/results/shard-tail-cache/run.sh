#!/usr/bin/env bash
# The shard's tail-cache budget (--tail-cache-shard-mb) against the build before it, which
# had a budget per partition only, when many partitions are written: each run starts a
# fresh `eventflowd --cores 2 --fsync never --tail-cache-mb CACHE_MB` on a data directory
# under SCRATCH and produces MESSAGES 100-byte records (acks=1, 1 MiB batches, linger 1 ms)
# over PARTITIONS partitions with one producer. The order of the two builds turns each
# round. Prints one line per run and the medians: throughput, CPU and the broker's peak
# RSS, which the per-partition budget lets grow with the partitions (PARTITIONS × CACHE_MB)
# and the shard's bounds (cores × 256 MiB by default). results.txt is the committed output.
#
#   BEFORE=/tmp/eventflowd-before bench-harness/results/shard-tail-cache/run.sh
#   ROUNDS=2 PARTITIONS=32 BEFORE=... AFTER=... bench-harness/results/shard-tail-cache/run.sh
#
# AFTER and BENCH default to the release builds.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BEFORE=${BEFORE:?the eventflowd built before the shard budget}
AFTER=${AFTER:-target/release/eventflowd}
BENCH=${BENCH:-target/release/eventflow-bench}
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-20000000}
PARTITIONS=${PARTITIONS:-64}
CACHE_MB=${CACHE_MB:-16}
SCRATCH=${SCRATCH:-/tmp/shard-tail-cache}
# shellcheck source=../broker.sh
source bench-harness/results/broker.sh

# One run: prints "variant partitions records_per_s harness_cpu_s broker_cpu_s_per_M
# broker_peak_rss_mib".
run() {
    local variant=$1
    BROKER=$AFTER
    [[ $variant == before ]] && BROKER=$BEFORE
    local dir="$SCRATCH/run"
    rm -rf "$dir"
    mkdir -p "$dir"
    start_broker "$dir" --fsync never --tail-cache-mb "$CACHE_MB"
    timeout 300 "$BENCH" produce --target "eventflow://$broker_addr" --create-topic \
        --partitions "$PARTITIONS" --producers 1 --messages "$MESSAGES" --acks 1 \
        --batch-bytes 1048576 --linger-us 1000 --broker-pid "$broker_pid" >"$dir/out" 2>&1
    stop_broker
    report_figures produced "$variant" "$PARTITIONS" "$dir/out"
    rm -rf "$dir"
}

echo "variant partitions records_per_s harness_cpu_s broker_cpu_s_per_M broker_peak_rss_mib"
alternate "" -- before after
echo
echo "medians over $ROUNDS rounds, $MESSAGES records of 100 B over $PARTITIONS partitions, --tail-cache-mb $CACHE_MB"
python3 bench-harness/results/medians.py "$lines" variant "harness CPU s:.2f" \
    "broker CPU s/M:.3f" "peak RSS MiB:.0f"
