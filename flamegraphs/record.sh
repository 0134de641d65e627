#!/usr/bin/env bash
# Records eventflowd under a produce-heavy and a consume-heavy eventflow-bench run and
# renders one flamegraph SVG per run into flamegraphs/.
#
#   flamegraphs/record.sh            # from the repository root or anywhere inside it
#   BIN_DIR=/path flamegraphs/record.sh   # use eventflowd and eventflow-bench from /path
#   RECORD="e2e" flamegraphs/record.sh    # only some of: produce consume e2e
#
# Needs perf (Debian: linux-perf) and inferno's two tools (cargo install inferno); the
# script installs inferno into target/tools if it is not on PATH. This VM has no hardware
# counters, so samples come from the software clock (cpu-clock); the release build keeps
# no frame pointers, so stacks are unwound from DWARF (--call-graph dwarf).
set -euo pipefail

cd "$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
out=flamegraphs
port=${PORT:-19392}
seconds=${SECONDS_RECORDED:-6}

if ! command -v perf >/dev/null; then
    echo "perf not found: apt-get install linux-perf" >&2
    exit 1
fi
if ! command -v inferno-flamegraph >/dev/null; then
    cargo install inferno --locked --root target/tools
    export PATH="$PWD/target/tools/bin:$PATH"
fi

if [[ -z ${BIN_DIR:-} ]]; then
    cargo build --release -p eventflow -p eventflow-bench --bin eventflowd --bin eventflow-bench
    BIN_DIR=target/release
fi

mkdir -p target
data=$(mktemp -d target/flamegraph-data.XXXXXX)
"$BIN_DIR/eventflowd" --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 --data-dir "$data/data" \
    --cores 2 --fsync always >"$data/ready" 2>"$data/eventflowd.log" &
broker=$!
cleanup() {
    kill "$broker" 2>/dev/null || true
    wait "$broker" 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 100); do
    grep -q ready "$data/ready" 2>/dev/null && break
    sleep 0.1
done
grep -q ready "$data/ready"

bench="$BIN_DIR/eventflow-bench"
target="eventflow://127.0.0.1:$port"

# record NAME: samples the broker for $seconds while the harness command that follows runs.
record() {
    local name=$1
    shift
    "$@" &
    local load=$!
    sleep 1
    perf record -e cpu-clock -F 997 --call-graph dwarf,16384 -p "$broker" \
        -o "$data/$name.perf" -- sleep "$seconds" 2>/dev/null
    wait "$load"
    perf script -i "$data/$name.perf" 2>/dev/null |
        inferno-collapse-perf >"$data/$name.folded"
    inferno-flamegraph --title "eventflowd: $name" --width 1600 <"$data/$name.folded" >"$out/$name.svg"
    # The ten hottest frames by self time, for the README.
    awk '{ n = $NF; $NF = ""; split($0, f, ";"); leaf = f[length(f)]; self[leaf] += n; total += n }
         END { for (k in self) printf "%6.2f%%  %s\n", 100 * self[k] / total, k }' \
        "$data/$name.folded" | sort -rn | sed -n 1,10p >"$out/$name.top.txt"
    echo "wrote $out/$name.svg"
}

# Which recordings to make (all by default).
wanted=${RECORD:-produce consume e2e}
wants() { [[ " $wanted " == *" $1 "* ]]; }

# Produce-heavy: two producers as fast as they go, 100-byte records, 2 partitions, acks=all.
if wants produce; then
    record produce "$bench" produce --target "$target" --topic fg-produce --create-topic \
        --partitions 2 --producers 2 --duration $((seconds + 2))s --quiet
fi

# Consume-heavy: fill a 20 M-record backlog first (not recorded), then two consumers read it
# from the earliest offsets, again and again.
if wants consume; then
    "$bench" produce --target "$target" --topic fg-consume --create-topic --partitions 2 \
        --messages 20000000 --quiet >/dev/null
fi
consume_loop() {
    local end=$((SECONDS + seconds + 2))
    while ((SECONDS < end)); do
        "$bench" consume --target "$target" --topic fg-consume --partitions 2 --consumers 2 \
            --backlog existing --messages 20000000 --quiet >/dev/null || true
    done
}
if wants consume; then
    record consume consume_loop
fi

# Durable end-to-end latency: open-loop at 200 k records/s (the latency target's load), one
# partition, acks=all, no linger. The broker is mostly waiting here: the graph shows where
# its 0.4 of a core goes, and how little of it is the sync.
if wants e2e; then
    record e2e-durable "$bench" e2e --target "$target" --topic fg-e2e --create-topic \
        --partitions 1 --rate 200000 --linger-us 0 --duration $((seconds + 2))s --quiet
fi
