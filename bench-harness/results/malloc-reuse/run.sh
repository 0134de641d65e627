#!/usr/bin/env bash
# As run for bench-harness/results/malloc-reuse/ (release builds; scratch in /tmp/malloc-ab).
# A/B, alternating, each run on a fresh broker with --cores 2 --fsync never and the plan
# bench-harness/workloads/ab-core.toml:
#   before: eventflowd without keep_freed_buffers (BEFORE=path), glibc's default thresholds
#           (as run: the release build of 36bb097);
#   after:  eventflowd with it (AFTER=path; as run: the release build of 1c602be, the commit
#           that added it; the next commit took it out again, by these figures).
# summarize.py prints the medians: `summarize.py /tmp/malloc-ab` after a run, or
# `summarize.py bench-harness/results/malloc-reuse` for the committed one (summary.txt).
# Besides the harness's figures, `perf stat -e page-faults` counts the broker's page faults
# over the whole plan (a software event: it works without hardware counters).
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=target/release
BEFORE=${BEFORE:?the eventflowd built without keep_freed_buffers}
AFTER=${AFTER:-$BIN/eventflowd}
ROUNDS=${ROUNDS:-3}
SCRATCH=${SCRATCH:-/tmp/malloc-ab}
mkdir -p "$SCRATCH"
start() { # $1: name, $2: binary; prints the native address
    local dir=$SCRATCH/data-$1
    rm -rf "$dir"
    "$2" --data-dir "$dir" --listen 127.0.0.1:0 --no-kafka --no-http --no-metrics \
        --no-direct-ports --cores 2 --fsync never > "$SCRATCH/$1.log" 2>&1 &
    echo $! > "$SCRATCH/$1.pid"
    for _ in $(seq 100); do
        if grep -q "eventflowd ready" "$SCRATCH/$1.log"; then break; fi
        sleep 0.1
    done
    grep "eventflowd ready" "$SCRATCH/$1.log" | grep -o "listen=[0-9.:]*" | head -1 | cut -d= -f2
}
stop() { # the broker is not this shell's child: wait for it to be gone
    local pid
    pid=$(cat "$SCRATCH/$1.pid")
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -rf "$SCRATCH/data-$1"
}
for round in $(seq "$ROUNDS"); do
    for variant in before after; do
        case $variant in
            before) binary=$BEFORE ;;
            after) binary=$AFTER ;;
        esac
        addr=$(start "$variant" "$binary")
        pid=$(cat "$SCRATCH/$variant.pid")
        perf stat -e page-faults -x, -o "$SCRATCH/faults-$variant-$round.csv" -p "$pid" &
        perf_pid=$!
        "$BIN/eventflow-bench" compare --name "malloc-ab-$variant-$round" \
            --targets "eventflow://$addr" --plan bench-harness/workloads/ab-core.toml \
            --rounds 1 --no-ceiling --quiet --broker-pid "$pid" \
            --eventflow-durability "eventflowd --fsync never ($variant)" \
            --results-dir "$SCRATCH/results"
        kill -INT "$perf_pid"
        wait "$perf_pid" || true
        stop "$variant"
    done
done
echo AB-DONE
