#!/usr/bin/env bash
# The read-ahead of preallocated zeros, which never ran before 7b88c14 (a dropped compio
# JoinHandle cancels its task), measured side by side: buffered writes, --fsync always, the
# durable e2e plan, the build without the fix (BEFORE=path; as run: 1c705e5) against the
# build with it (AFTER=path; as run: 6757f80), alternating, a fresh broker per run. Results
# in $SCRATCH/results/ra-<before|after>-<round>/; readahead.txt is the committed summary.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=target/release
BEFORE=${BEFORE:?the eventflowd built before 7b88c14}
AFTER=${AFTER:-$BIN/eventflowd}
ROUNDS=${ROUNDS:-4}
SCRATCH=${SCRATCH:-/tmp/readahead-ab}
mkdir -p "$SCRATCH/results"
for round in $(seq "$ROUNDS"); do
    for variant in before after; do
        case $variant in
            before) binary=$BEFORE ;;
            after) binary=$AFTER ;;
        esac
        "$BIN/eventflow-bench" compare --name "ra-$variant-$round" \
            --targets eventflow --eventflowd "$binary" \
            --eventflowd-flags "--cores 2 --fsync always --log-writes buffered" \
            --plan bench-harness/workloads/direct-writes-durable.toml --rounds 1 \
            --no-ceiling --quiet --scratch "$SCRATCH/data" --results-dir "$SCRATCH/results"
    done
done
echo AB-DONE
