#!/usr/bin/env bash
# Consuming a backlog under --log-writes direct with the default tail cache (4 MiB per
# partition: a backlog behind it is read from the disk) against one large enough to hold the
# whole backlog (--tail-cache-mb CACHE_MB), and, for reference, --log-writes buffered (the
# backlog left in the page cache by its writes). Each run starts a fresh `eventflowd
# --cores 2 --fsync never` on a data directory under SCRATCH, fills a backlog of MESSAGES
# 100-byte records (not timed) and measures consumers reading it: one partition and one
# consumer, then two and two. The order of the variants turns each round. Prints one line
# per run and the medians; results.txt is the committed output.
#
#   bench-harness/results/tail-cache/run.sh
#   ROUNDS=2 MESSAGES=5000000 CACHE_MB=1024 bench-harness/results/tail-cache/run.sh
#
# BROKER and BENCH default to the release builds.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BROKER=${BROKER:-target/release/eventflowd}
BENCH=${BENCH:-target/release/eventflow-bench}
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-10000000}
CACHE_MB=${CACHE_MB:-2048}
SCRATCH=${SCRATCH:-/tmp/tail-cache}
# shellcheck source=../broker.sh
source bench-harness/results/broker.sh

# One run: prints "variant partitions records_per_s harness_cpu_s broker_cpu_s_per_M
# broker_peak_rss_mib".
run() {
    local variant=$1 partitions=$2 flags=()
    case $variant in
        direct-4) flags=(--log-writes direct) ;;
        direct-big) flags=(--log-writes direct --tail-cache-mb "$CACHE_MB") ;;
        buffered) flags=(--log-writes buffered) ;;
    esac
    local dir="$SCRATCH/run"
    rm -rf "$dir"
    mkdir -p "$dir"
    start_broker "$dir" --fsync never "${flags[@]}"
    consume_backlog "$BENCH" "$partitions" "$dir/out"
    stop_broker
    consume_figures "$variant" "$partitions" "$dir/out"
    rm -rf "$dir"
}

echo "variant partitions records_per_s harness_cpu_s broker_cpu_s_per_M broker_peak_rss_mib"
alternate 1 2 -- direct-4 direct-big buffered
echo
echo "medians over $ROUNDS rounds, a backlog of $MESSAGES records of 100 B, direct-big: --tail-cache-mb $CACHE_MB"
python3 bench-harness/results/medians.py "$lines" variant "harness CPU s:.2f" \
    "broker CPU s/M:.3f" "peak RSS MiB:.0f"
