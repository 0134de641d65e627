#!/usr/bin/env bash
# Checks this machine against the performance targets of the write-path work
# (docs/PERFORMANCE.md, "The write-path targets, checked in one command") and prints each
# goal, what was measured and whether it was met. ROUNDS rounds, each of two comparisons,
# each comparison measuring the machine's ceilings before its runs:
#   - bench-harness/workloads/direct-writes.toml against a fresh `eventflowd --fsync never`
#     per run: two 30 M-record produce runs one after the other, a 1 KiB produce run, and a
#     10 M-record backlog read from one partition;
#   - bench-harness/workloads/direct-writes-durable.toml against a fresh
#     `eventflowd --fsync always`: end-to-end at 200 k records/s, acks=all.
# Then `eventflow-bench targets` reads every round's results.
#
#   bench-harness/targets.sh                                  # 3 rounds, --cores 2
#   ROUNDS=5 FLAGS="--cores 4" bench-harness/targets.sh
#   DURABLE_FLAGS="--group-commit-interval-us 800" bench-harness/targets.sh
#   BIN_DIR=target/release bench-harness/targets.sh            # binaries already built
#
# FLAGS go to both brokers (default `--cores 2`), DURABLE_FLAGS to the durable one only.
# Results go to RESULTS (default target/bench-results/targets), one directory per
# comparison, and the table to RESULTS/targets.md; brokers keep their data under SCRATCH
# (default target/bench-data, on the filesystem to measure; each run's is deleted after
# it). About a minute per round on a 2-vCPU VM, and up to 4 GB of scratch at a time.
# STRICT=1 makes the script fail when a goal it measured is not met.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
FLAGS=${FLAGS:---cores 2}
DURABLE_FLAGS=${DURABLE_FLAGS:-}
RESULTS=${RESULTS:-target/bench-results/targets}
SCRATCH=${SCRATCH:-target/bench-data}
if [[ -z ${BIN_DIR:-} ]]; then
    cargo build --release -p eventflow -p eventflow-bench --bin eventflowd --bin eventflow-bench
    BIN_DIR=target/release
fi

mkdir -p "$RESULTS"
dirs=()
for round in $(seq "$ROUNDS"); do
    for fsync in never always; do
        plan=bench-harness/workloads/direct-writes.toml
        flags="$FLAGS --fsync $fsync"
        if [[ $fsync == always ]]; then
            plan=bench-harness/workloads/direct-writes-durable.toml
            flags="$flags $DURABLE_FLAGS"
        fi
        echo "round $round of $ROUNDS: $plan against eventflowd $flags" >&2
        # One round per comparison: `compare` runs a plan entry for all its rounds before
        # the next, and the two 30 M-record runs must run one right after the other.
        "$BIN_DIR/eventflow-bench" compare --name "$fsync-$round" --targets eventflow \
            --eventflowd "$BIN_DIR/eventflowd" --eventflowd-flags "$flags" \
            --plan "$plan" --rounds 1 --quiet --scratch "$SCRATCH" --results-dir "$RESULTS" \
            >"$RESULTS/$fsync-$round.log" 2>&1 || {
            cat "$RESULTS/$fsync-$round.log" >&2
            exit 1
        }
        dirs+=("$RESULTS/$fsync-$round")
    done
done

strict=()
[[ ${STRICT:-0} == 1 ]] && strict=(--strict)
"$BIN_DIR/eventflow-bench" targets "${dirs[@]}" --out "$RESULTS/targets.md" "${strict[@]}"
