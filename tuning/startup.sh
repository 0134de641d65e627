#!/usr/bin/env bash
# Start-up time and idle memory of eventflowd with many partitions on disk.
#
#   tuning/startup.sh                  # 1,000 partitions, 5 restarts
#   PARTITIONS=5000 RUNS=3 tuning/startup.sh
#   BIN_DIR=/path tuning/startup.sh    # use eventflowd, eventflow and eventflow-bench from /path
#
# Creates a topic with $PARTITIONS partitions, writes 100 records of 100 bytes to each
# (random keys), stops the broker with SIGTERM, then starts it $RUNS times on the same data
# directory (the page cache is warm after the first) and prints, for each start, the time
# from exec to the "eventflowd ready" line (every partition recovered and open, every
# listener bound) and the broker's resident memory once idle.
set -euo pipefail

cd "$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
partitions=${PARTITIONS:-1000}
runs=${RUNS:-5}
port=${PORT:-19492}
flags=${EVENTFLOWD_FLAGS:---cores 2 --fsync always}

if [[ -z ${BIN_DIR:-} ]]; then
    cargo build --release --bin eventflowd --bin eventflow -p eventflow -p eventflow-bench
    BIN_DIR=target/release
fi

mkdir -p target
data=$(mktemp -d target/startup-data.XXXXXX)
broker=
cleanup() {
    if [[ -n $broker ]]; then
        kill "$broker" 2>/dev/null || true
        wait "$broker" 2>/dev/null || true
    fi
    rm -rf "$data"
}
trap cleanup EXIT

# start: runs eventflowd in the background and waits for its ready line; sets $broker and
# $ready_ms, the milliseconds it took.
start() {
    rm -f "$data/ready"
    local t0
    t0=$(date +%s%N)
    # shellcheck disable=SC2086
    "$BIN_DIR/eventflowd" --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$data/data" $flags \
        >"$data/ready" 2>>"$data/eventflowd.log" &
    broker=$!
    while ! grep -q ready "$data/ready" 2>/dev/null; do
        if ! kill -0 "$broker" 2>/dev/null; then
            echo "eventflowd exited; its log:" >&2
            cat "$data/eventflowd.log" >&2
            exit 1
        fi
        sleep 0.001
    done
    ready_ms=$((($(date +%s%N) - t0) / 1000000))
}

stop() {
    kill -TERM "$broker"
    wait "$broker" || true
    broker=
}

start
"$BIN_DIR/eventflow-bench" produce --target "eventflow://127.0.0.1:$port" --topic startup \
    --create-topic --partitions "$partitions" --keys random --message-size 100 \
    --messages $((partitions * 100)) --quiet >/dev/null
stop

echo "eventflowd $flags, $partitions partitions of 100 records each"
for run in $(seq "$runs"); do
    start
    sleep 1
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$broker/status")
    echo "start $run: ready in $ready_ms ms, idle RSS $((rss / 1024)) MiB"
    stop
done
