#!/usr/bin/env bash
# The client's consumer sending its next fetch before it decodes the last response, against
# the build before (which sent it after): two harness binaries against one broker build.
# Each run starts a fresh `eventflowd --cores 2 --fsync never --tail-cache-mb C`, fills a
# backlog of MESSAGES 100-byte records (not timed) and measures consumers reading it: with
# a 2 GiB tail cache (the backlog read from memory) one and two partitions, and with the
# default 4 MiB (read from the disk) one partition. The order of the two turns each round.
# Prints one line per run and the medians; results.txt is the committed output.
#
#   BEFORE=/tmp/old/eventflow-bench AFTER=target/release/eventflow-bench \
#       bench-harness/results/consumer-pipelining/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
BROKER=${BROKER:-target/release/eventflowd}
BEFORE=${BEFORE:?the harness binary built before the change}
AFTER=${AFTER:-target/release/eventflow-bench}
ROUNDS=${ROUNDS:-4}
MESSAGES=${MESSAGES:-10000000}
SCRATCH=${SCRATCH:-/tmp/consumer-pipelining}
# shellcheck source=../broker.sh
source bench-harness/results/broker.sh

# One run: prints "variant-cCACHE partitions records_per_s harness_cpu_s broker_cpu_s_per_M
# broker_peak_rss_mib".
run() {
    local variant=$1 cache=$2 partitions=$3 bench=$BEFORE
    [[ $variant == after ]] && bench=$AFTER
    local dir="$SCRATCH/run"
    rm -rf "$dir"
    mkdir -p "$dir"
    start_broker "$dir" --fsync never --tail-cache-mb "$cache"
    consume_backlog "$bench" "$partitions" "$dir/out"
    stop_broker
    consume_figures "$variant-c$cache" "$partitions" "$dir/out"
    rm -rf "$dir"
}

echo "variant partitions records_per_s harness_cpu_s broker_cpu_s_per_M broker_peak_rss_mib"
# Cases: "CACHE_MB PARTITIONS".
alternate "2048 1" "2048 2" "4 1" -- before after
echo
echo "medians over $ROUNDS rounds, a backlog of $MESSAGES records of 100 B; -cN: --tail-cache-mb N"
python3 bench-harness/results/medians.py "$lines" variant "harness CPU s:.2f" \
    "broker CPU s/M:.3f"
