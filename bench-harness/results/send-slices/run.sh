#!/usr/bin/env bash
# Slices of records (Producer::send_tagged_many) against one send per record, measured side
# by side with one release build: the harness's full-rate producers hand the client 64
# records at a time, or each alone with EVENTFLOW_BENCH_NO_SLICES=1. Each run starts a
# fresh `eventflowd --cores 2 --fsync never` and produces MESSAGES 100-byte records with
# acks=1 from one producer thread, to one partition and to two (one per shard); the order
# of the two variants turns each round (../produce-ab.sh). Prints one line per run and the
# medians; results.txt is the committed output.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=${BIN:-target/release}
BROKER=$BIN/eventflowd SCRATCH=${SCRATCH:-/tmp/send-slices} \
    A_NAME=slices A_BENCH=$BIN/eventflow-bench \
    B_NAME=single B_BENCH=$BIN/eventflow-bench B_ENV=EVENTFLOW_BENCH_NO_SLICES=1 \
    exec bench-harness/results/produce-ab.sh
