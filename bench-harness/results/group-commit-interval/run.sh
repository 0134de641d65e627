#!/usr/bin/env bash
# Paced group-commit rounds (--group-commit-interval-us) against unpaced ones: each run
# starts a fresh `eventflowd --cores 2 --fsync FSYNC --group-commit-interval-us I` on a
# data directory under SCRATCH and runs one harness plan against it; the order of the
# intervals turns each round. Besides the harness's figures, each line has the disk
# writes per second the device of SCRATCH completed during the run (/proc/diskstats,
# which counts each flush among them) and the CPU time stolen by the host.
#
#   bench-harness/results/group-commit-interval/run.sh            # durable e2e, 0 vs 600 µs
#   FSYNC=never INTERVALS="0 300 600" bench-harness/results/group-commit-interval/run.sh
#   PLAN=produce INTERVALS="0 1000" ROUNDS=4 bench-harness/results/group-commit-interval/run.sh
#
# PLAN: e2e (200 k records/s, acks=all, linger 0, 6 s) or produce (MESSAGES records, one
# partition, acks=all, full rate). BROKER and BENCH default to the release builds.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BROKER=${BROKER:-target/release/eventflowd}
BENCH=${BENCH:-target/release/eventflow-bench}
PLAN=${PLAN:-e2e}
FSYNC=${FSYNC:-always}
read -r -a INTERVALS <<<"${INTERVALS:-0 600}"
ROUNDS=${ROUNDS:-4}
MESSAGES=${MESSAGES:-5000000}
SCRATCH=${SCRATCH:-/tmp/group-commit-interval}
# shellcheck source=../broker.sh
source bench-harness/results/broker.sh
mkdir -p "$SCRATCH"
device=$(basename "$(df --output=source "$SCRATCH" | tail -1)")

# Completed writes of $device and the machine's stolen and total CPU ticks, on one line.
counters() {
    awk -v d="$device" '$3 == d { print $8 }' /proc/diskstats | tr '\n' ' '
    awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}

# One run: prints "interval rate e2e_or_publish_p50 p99 p99.9 steal_pct writes_per_s".
run() {
    local interval=$1 dir="$SCRATCH/run"
    rm -rf "$dir"
    mkdir -p "$dir"
    start_broker "$dir" --fsync "$FSYNC" --group-commit-interval-us "$interval"
    local plan=(produce --partitions 1 --messages "$MESSAGES")
    local line=publish
    if [[ $PLAN == e2e ]]; then
        plan=(e2e --rate 200000 --linger-us 0 --duration 6s)
        line=e2e
    fi
    local before after start end
    before=$(counters)
    start=$(date +%s.%N)
    "$BENCH" "${plan[@]}" --target "eventflow://$broker_addr" --create-topic --acks all \
        --broker-pid "$broker_pid" --quiet >"$dir/out" 2>&1
    end=$(date +%s.%N)
    after=$(counters)
    stop_broker
    echo "$before $after $start $end" | awk -v i="$interval" -v line="$line" -v out="$dir/out" '
        {
            steal = ($5 - $2) * 100 / ($6 - $3)
            writes = ($4 - $1) / ($8 - $7)
            while ((getline l < out) > 0) {
                split(l, f, " +")
                if (f[1] == "produced") rate = f[2]
                if (f[1] == line) { p50 = us(f[2], f[3]); p99 = us(f[6], f[7]); p999 = us(f[8], f[9]) }
            }
            printf "%s %s %.0f %.0f %.0f %.1f %.0f\n", i, rate, p50, p99, p999, steal, writes
        }
        function us(v, unit) { return unit == "ms" ? v * 1000 : unit == "s" ? v * 1e6 : v }'
    cp "$dir/out" "$SCRATCH/out-$interval-$(date +%s%N)"
    rm -rf "$dir"
}

echo "# $PLAN, --fsync $FSYNC, $ROUNDS rounds, device $device, $(date -u +%FT%TZ)"
echo "# interval_us records_per_s p50_us p99_us p99.9_us steal_pct disk_writes_per_s"
results="$SCRATCH/lines"
: >"$results"
for round in $(seq "$ROUNDS"); do
    order=("${INTERVALS[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#INTERVALS[@]} - 1; i >= 0; i--)); do order+=("${INTERVALS[i]}"); done
    fi
    for interval in "${order[@]}"; do
        run "$interval" | tee -a "$results"
    done
done
echo "# medians: interval_us p50_us p99_us p99.9_us steal_pct disk_writes_per_s"
for interval in "${INTERVALS[@]}"; do
    line="$interval"
    for column in 3 4 5 6 7; do
        line+=" $(awk -v i="$interval" -v c="$column" '$1 == i { print $c }' "$results" |
            sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')"
    done
    echo "$line"
done
