#!/usr/bin/env bash
# As run for bench-harness/results/direct-writes/ (release build; scratch in /tmp/direct-ab).
# Buffered against O_DIRECT log writes, alternating (buffered direct buffered direct ...),
# each run on a fresh eventflowd --cores 2 from the same binary:
#   bench-harness/workloads/direct-writes.toml         with --fsync never
#   bench-harness/workloads/direct-writes-durable.toml with --fsync always
# The machine's ceilings are measured once first (ceiling.txt). summarize.py prints the
# medians: `summarize.py /tmp/direct-ab/results` after a run, or
# `summarize.py bench-harness/results/direct-writes` for the committed one (summary.txt).
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=target/release
ROUNDS=${ROUNDS:-3}
SCRATCH=${SCRATCH:-/tmp/direct-ab}
mkdir -p "$SCRATCH/results"
"$BIN/eventflow-bench" ceiling --dir "$SCRATCH" > "$SCRATCH/ceiling.txt" 2>&1 || true
for round in $(seq "$ROUNDS"); do
    for writes in buffered direct; do
        for durability in never always; do
            case $durability in
                never) plan=bench-harness/workloads/direct-writes.toml ;;
                always) plan=bench-harness/workloads/direct-writes-durable.toml ;;
            esac
            "$BIN/eventflow-bench" compare --name "dw-$writes-$durability-$round" \
                --targets eventflow --eventflowd "$BIN/eventflowd" \
                --eventflowd-flags "--cores 2 --fsync $durability --log-writes $writes" \
                --plan "$plan" --rounds 1 --no-ceiling --quiet \
                --scratch "$SCRATCH/data" --results-dir "$SCRATCH/results"
        done
    done
done
echo AB-DONE
