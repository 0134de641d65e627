#!/usr/bin/env bash
# Two builds of the harness (and so of the client it links) side by side against one broker
# build: acknowledgements reported per record (Producer::with_callback, one clock reading
# and one lock each in the harness) before, and a run of a batch at a time
# (Producer::with_batch_callback) after. Each run starts a fresh
# `eventflowd --cores 2 --fsync never` and produces MESSAGES 100-byte records with acks=1
# from one producer thread, to one partition and to two; the order of the two builds turns
# each round (../produce-ab.sh). Prints one line per run and the medians; results.txt is the
# committed output.
#
#   BEFORE=/path/to/old/eventflow-bench AFTER=target/release/eventflow-bench \
#       bench-harness/results/batch-acks/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
BEFORE=${BEFORE:?the harness binary built before the change}
LABEL=build SCRATCH=${SCRATCH:-/tmp/batch-acks} \
    A_NAME=before A_BENCH=$BEFORE \
    B_NAME=after B_BENCH=${AFTER:-target/release/eventflow-bench} \
    exec bench-harness/results/produce-ab.sh
