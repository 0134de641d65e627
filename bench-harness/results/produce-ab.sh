#!/usr/bin/env bash
# Two variants of the producing side measured against each other, one producer thread at
# full rate: each run starts a fresh `eventflowd --cores 2 --fsync never` and produces
# MESSAGES 100-byte records with acks=1, to one partition and to two (one per shard); the
# order of the two variants turns each round. Prints one line per run and the medians.
#
# A variant is a name, a harness binary and, optionally, environment settings for it:
#
#   A_NAME=new A_BENCH=target/release/eventflow-bench \
#   B_NAME=old B_BENCH=/tmp/old/eventflow-bench B_ENV="SOME_VAR=1" \
#       bench-harness/results/produce-ab.sh
#
# BROKER is the eventflowd binary both variants run against (target/release/eventflowd);
# LABEL names the variant column (variant). send-slices/ and record-encoding/ call this.
set -euo pipefail
cd "$(dirname "$0")/../.."
BROKER=${BROKER:-target/release/eventflowd}
A_NAME=${A_NAME:?the first variant's name} A_BENCH=${A_BENCH:?its harness binary}
B_NAME=${B_NAME:?the second variant's name} B_BENCH=${B_BENCH:?its harness binary}
A_ENV=${A_ENV:-} B_ENV=${B_ENV:-}
LABEL=${LABEL:-variant}
ROUNDS=${ROUNDS:-4}
MESSAGES=${MESSAGES:-10000000}
SCRATCH=${SCRATCH:-/tmp/produce-ab}
# shellcheck source=broker.sh
source bench-harness/results/broker.sh

# One run: prints "variant partitions records_per_s harness_cpu_s broker_cpu_s_per_M publish_p50".
run() {
    local variant=$1 partitions=$2 bench=$A_BENCH settings=$A_ENV
    if [[ $variant == "$B_NAME" ]]; then
        bench=$B_BENCH
        settings=$B_ENV
    fi
    local dir="$SCRATCH/$variant"
    rm -rf "$dir"
    mkdir -p "$dir"
    start_broker "$dir" --fsync never
    local env=()
    [[ -n $settings ]] && read -r -a env <<<"$settings"
    env "${env[@]}" "$bench" produce --target "eventflow://$broker_addr" --create-topic \
        --partitions "$partitions" --messages "$MESSAGES" --acks 1 --broker-pid "$broker_pid" \
        >"$dir/out" 2>&1
    stop_broker
    awk -v v="$variant" -v p="$partitions" '
        /^produced/ { rate = $2 }
        /^publish/ { p50 = $2 $3 }
        /^harness CPU/ { cpu = $3 }
        /^broker CPU/ { broker = $3 }
        END { print v, p, rate, cpu, broker, p50 }' "$dir/out"
    rm -rf "$dir"
}

echo "$LABEL partitions records_per_s harness_cpu_s broker_cpu_s_per_M publish_p50"
alternate 1 2 -- "$A_NAME" "$B_NAME"
echo
echo "medians over $ROUNDS rounds, $MESSAGES records of 100 B, one producer, acks=1"
python3 bench-harness/results/medians.py "$lines" "$LABEL" "harness CPU s:.2f" \
    "broker CPU s/M:.3f"
