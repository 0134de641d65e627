#!/usr/bin/env bash
# Two builds of the harness (and so of the client it links) side by side against one broker
# build: the client before and after a change to how it encodes records. Each run starts a
# fresh `eventflowd --cores 2 --fsync never` and produces MESSAGES 100-byte records with
# acks=1 from one producer thread, to one partition and to two (one per shard); the order
# of the two builds turns each round. Prints one line per run and the medians; results.txt
# is the committed output.
#
#   BEFORE=/path/to/old/eventflow-bench AFTER=target/release/eventflow-bench \
#       bench-harness/results/record-encoding/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
BROKER=${BROKER:-target/release/eventflowd}
BEFORE=${BEFORE:?the harness binary built before the change}
AFTER=${AFTER:-target/release/eventflow-bench}
ROUNDS=${ROUNDS:-4}
MESSAGES=${MESSAGES:-10000000}
SCRATCH=${SCRATCH:-/tmp/record-encoding}

# One run: prints "build partitions records_per_s harness_cpu_s broker_cpu_s_per_M publish_p50".
run() {
    local build=$1 partitions=$2 harness
    harness=$BEFORE
    [[ $build == after ]] && harness=$AFTER
    local dir="$SCRATCH/$build"
    rm -rf "$dir"
    mkdir -p "$dir"
    "$BROKER" --data-dir "$dir/data" --listen 127.0.0.1:0 --no-kafka --no-http \
        --no-metrics --cores 2 --fsync never >"$dir/log" 2>&1 &
    local pid=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(grep -o 'ready listen=[0-9.:]*' "$dir/log" | cut -d= -f2 || true)
        [[ -n $addr ]] && break
        sleep 0.1
    done
    "$harness" produce --target "eventflow://$addr" --create-topic \
        --partitions "$partitions" --messages "$MESSAGES" --acks 1 --broker-pid "$pid" \
        >"$dir/out" 2>&1
    kill "$pid"
    wait "$pid" || true
    awk -v b="$build" -v p="$partitions" '
        /^produced/ { rate = $2 }
        /^publish/ { p50 = $2 $3 }
        /^harness CPU/ { cpu = $3 }
        /^broker CPU/ { broker = $3 }
        END { print b, p, rate, cpu, broker, p50 }' "$dir/out"
    rm -rf "$dir"
}

mkdir -p "$SCRATCH"
lines="$SCRATCH/lines.txt"
: >"$lines"
echo "build partitions records_per_s harness_cpu_s broker_cpu_s_per_M publish_p50"
for round in $(seq "$ROUNDS"); do
    order=(before after)
    ((round % 2 == 0)) && order=(after before)
    for partitions in 1 2; do
        for build in "${order[@]}"; do
            run "$build" "$partitions" | tee -a "$lines"
        done
    done
done
echo
echo "medians over $ROUNDS rounds, $MESSAGES records of 100 B, one producer, acks=1"
python3 - "$lines" <<'PY'
import statistics, sys
def num(s):
    m = {"k": 1e3, "M": 1e6}
    return float(s[:-1]) * m[s[-1]] if s[-1] in m else float(s)
runs = {}
for line in open(sys.argv[1]):
    b, p, rate, cpu, broker, p50 = line.split()
    runs.setdefault((int(p), b), []).append((num(rate), float(cpu), float(broker)))
print(f"{'partitions':>10}  {'build':8}{'M records/s':>12}{'harness CPU s':>15}{'broker CPU s/M':>16}  each run (M records/s)")
for (p, b), rs in sorted(runs.items()):
    med = lambda i: statistics.median(r[i] for r in rs)
    each = " / ".join(f"{r[0] / 1e6:.2f}" for r in rs)
    print(f"{p:>10}  {b:8}{med(0) / 1e6:>12.2f}{med(1):>15.2f}{med(2):>16.3f}  {each}")
PY
