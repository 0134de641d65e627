#!/usr/bin/env bash
# Consuming a backlog that direct writes kept out of the page cache: the shard's own O_DIRECT
# read-ahead into pooled blocks (storage::direct::ReadAhead) against the build before it,
# which read such a backlog through the page cache with the kernel asked to read 64 MiB
# ahead; and, for reference, the same backlog written with --log-writes buffered (left in
# the page cache by its writes). Each run starts a fresh `eventflowd --cores 2 --fsync
# never`, fills a backlog of MESSAGES 100-byte records (not timed) and measures consumers
# reading it: one partition and one consumer, then two and two. The order of the variants
# turns each round. Prints one line per run and the medians; results.txt is the committed
# output.
#
# The read-ahead was not kept: AFTER is a release build of 9d70784, BEFORE one of 2b83cd2.
#
#   BEFORE=dir-with-2b83cd2-eventflowd AFTER=dir-with-9d70784-eventflowd \
#       bench-harness/results/read-ahead/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
BEFORE=${BEFORE:?the directory of the eventflowd build to compare against}
AFTER=${AFTER:?the directory of the eventflowd build with the read-ahead}
BENCH=${BENCH:-target/release/eventflow-bench}
ROUNDS=${ROUNDS:-4}
MESSAGES=${MESSAGES:-10000000}
SCRATCH=${SCRATCH:-target/read-ahead-runs}
# shellcheck source=../broker.sh
source bench-harness/results/broker.sh

# One run: prints "variant partitions records_per_s harness_cpu_s broker_cpu_s_per_M
# broker_peak_rss_mib".
run() {
    local variant=$1 partitions=$2
    local bin=$AFTER flags=()
    [[ $variant == before ]] && bin=$BEFORE
    [[ $variant == buffered ]] && flags=(--log-writes buffered)
    local dir="$SCRATCH/$variant"
    rm -rf "$dir"
    mkdir -p "$dir"
    BROKER="$bin/eventflowd" start_broker "$dir" --fsync never "${flags[@]}"
    consume_backlog "$BENCH" "$partitions" "$dir/out"
    stop_broker
    consume_figures "$variant" "$partitions" "$dir/out"
    rm -rf "$dir"
}

echo "variant partitions records_per_s harness_cpu_s broker_cpu_s_per_M broker_peak_rss_mib"
alternate 1 2 -- before after buffered
echo
echo "medians over $ROUNDS rounds, a backlog of $MESSAGES records of 100 B"
python3 bench-harness/results/medians.py "$lines" variant "harness CPU s:.2f" \
    "broker CPU s/M:.3f" "peak RSS MiB:.0f"
