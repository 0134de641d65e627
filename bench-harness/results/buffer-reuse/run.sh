#!/usr/bin/env bash
# Reused write and receive buffers, measured side by side: the broker's minor page faults,
# CPU and peak RSS over a produce run of MESSAGES 100-byte records to one partition
# (--fsync never), for three builds, alternating, a fresh broker per run:
#   BEFORE  each direct write in one buffer of its own power-of-two size, requests read
#           into fresh memory (as run: c4d946f)
#   BLOCKS  direct writes copied into pooled 1 MiB buffers (5037cf2)
#   AFTER   and receive buffers pooled per shard (aeef828, reverted in the next commit:
#           no gain)
# Faults and CPU are read from /proc/PID/stat before and after the run. Prints one line per
# run and the medians; results.txt is the committed output.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=target/release
BEFORE=${BEFORE:?an eventflowd built at c4d946f}
BLOCKS=${BLOCKS:?an eventflowd built at 5037cf2}
AFTER=${AFTER:?an eventflowd built at aeef828}
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-30000000}
SCRATCH=${SCRATCH:-/tmp/buffer-reuse}
TICKS=$(getconf CLK_TCK)

# One run: prints "variant writes producers faults cpu_s rss_mib records_per_s".
run() {
    local variant=$1 binary=$2 writes=$3 producers=$4
    local dir="$SCRATCH/$variant"
    rm -rf "$dir"
    mkdir -p "$dir"
    "$binary" --data-dir "$dir/data" --listen 127.0.0.1:0 --no-kafka --no-http --no-metrics \
        --cores 2 --fsync never --log-writes "$writes" >"$dir/log" 2>&1 &
    local pid=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(grep -o 'ready listen=[0-9.:]*' "$dir/log" | cut -d= -f2 || true)
        [[ -n $addr ]] && break
        sleep 0.1
    done
    local before after rate
    before=$(awk '{print $10, $14 + $15}' "/proc/$pid/stat")
    rate=$("$BIN/eventflow-bench" produce --target "eventflow://$addr" --create-topic \
        --messages "$MESSAGES" --producers "$producers" --quiet | awk '/^produced/ {print $2}')
    after=$(awk '{print $10, $14 + $15}' "/proc/$pid/stat")
    local rss
    rss=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status")
    kill "$pid"
    wait "$pid" || true
    rm -rf "$dir"
    read -r f0 c0 <<<"$before"
    read -r f1 c1 <<<"$after"
    echo "$variant $writes $producers $((f1 - f0)) $(awk -v t=$((c1 - c0)) -v hz="$TICKS" 'BEGIN {printf "%.2f", t / hz}') $rss $rate"
}

mkdir -p "$SCRATCH"
lines="$SCRATCH/lines.txt"
: >"$lines"
echo "variant writes producers faults cpu_s rss_mib records_per_s"
# The order of the builds turns by one each round: a run can leave the page cache dirty
# for the next (buffered writes most of all).
rotate() {
    local by=$1
    shift
    local items=("$@") i
    for i in $(seq 0 $(($# - 1))); do
        echo "${items[$(((i + by) % $#))]}"
    done
}
binary_of() {
    case $1 in
        before) echo "$BEFORE" ;;
        blocks) echo "$BLOCKS" ;;
        after) echo "$AFTER" ;;
    esac
}
for round in $(seq "$ROUNDS"); do
    for producers in 1 2; do
        for variant in $(rotate "$round" before blocks after); do
            run "$variant" "$(binary_of "$variant")" direct "$producers" | tee -a "$lines"
        done
    done
    # Buffered writes take no aligned buffers: only the receive pool differs.
    for variant in $(rotate "$round" before after); do
        run "$variant" "$(binary_of "$variant")" buffered 1 | tee -a "$lines"
    done
done
echo
echo "medians over $ROUNDS rounds, $MESSAGES records of 100 B, 1 partition"
python3 - "$lines" "$MESSAGES" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    v, w, p, faults, cpu, rss, rate = line.split()
    runs.setdefault((w, int(p), v), []).append((int(faults), float(cpu), int(rss), rate))
print(f"{'writes':9}{'producers':>10}  {'build':8}{'faults':>10}{'faults/M':>10}{'CPU s':>8}{'RSS MiB':>9}  records/s")
order = {"before": 0, "blocks": 1, "after": 2}
for (w, p, v), rs in sorted(runs.items(), key=lambda kv: (kv[0][0] != "direct", kv[0][1], order[kv[0][2]])):
    med = lambda i: statistics.median(r[i] for r in rs)
    per_m = med(0) / (int(sys.argv[2]) / 1e6) if len(sys.argv) > 2 else float("nan")
    rates = " / ".join(r[3] for r in rs)
    print(f"{w:9}{p:>10}  {v:8}{med(0):>10.0f}{per_m:>10.0f}{med(1):>8.2f}{med(2):>9.0f}  {rates}")
PY
