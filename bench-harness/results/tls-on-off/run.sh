#!/usr/bin/env bash
# As run for bench-harness/results/tls-on-off/ (release builds in target/release; scratch in
# /tmp/tls-ab). A/B/C, alternating, each run on a fresh broker with --cores 2 --fsync never:
#   before: eventflowd built before TLS existed (BEFORE=path; plaintext), to show that the
#           plaintext path kept its speed;
#   plain:  this build, plaintext;
#   tls:    this build, TLS on the native listener (a P-256 certificate, TLS 1.3), the
#           harness trusting its CA (EVENTFLOW_BENCH_TLS_CA).
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=target/release
BEFORE=${BEFORE:?the eventflowd built before TLS}
ROUNDS=${ROUNDS:-3}
SCRATCH=/tmp/tls-ab
mkdir -p "$SCRATCH"
cd "$SCRATCH"
if [[ ! -f ca.pem ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -keyout ca.key -out ca.pem -subj "/CN=Eventflow bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout broker.key -out broker.csr -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > san.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
        -extfile san.ext -out broker.pem 2>/dev/null
fi
cd - > /dev/null
start() { # $1: name, $2: binary, rest: flags; prints the native address
    local dir=$SCRATCH/data-$1
    rm -rf "$dir"
    "$2" --data-dir "$dir" --listen 127.0.0.1:0 --no-kafka --no-http --no-metrics \
        --no-direct-ports --cores 2 --fsync never "${@:3}" > "$SCRATCH/$1.log" 2>&1 &
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
bench() { # $1: variant, $2: round, $3: address, $4: durability label
    "$BIN/eventflow-bench" compare --name "tls-ab-$1-$2" --targets "eventflow://$3" \
        --plan bench-harness/workloads/ab-core.toml --rounds 1 --no-ceiling --quiet \
        --broker-pid "$(cat "$SCRATCH/$1.pid")" --eventflow-durability "$4" \
        --results-dir "$SCRATCH/results"
}
unset EVENTFLOW_BENCH_TLS_CA
for round in $(seq "$ROUNDS"); do
    for variant in before plain tls; do
        case $variant in
            before)
                addr=$(start before "$BEFORE")
                bench before "$round" "$addr" "eventflowd --fsync never, before TLS, plaintext" ;;
            plain)
                addr=$(start plain "$BIN/eventflowd")
                bench plain "$round" "$addr" "eventflowd --fsync never, plaintext" ;;
            tls)
                addr=$(start tls "$BIN/eventflowd" --tls-cert "$SCRATCH/broker.pem" \
                    --tls-key "$SCRATCH/broker.key" --tls-listeners native)
                EVENTFLOW_BENCH_TLS_CA=$SCRATCH/ca.pem bench tls "$round" "localhost:${addr##*:}" \
                    "eventflowd --fsync never, TLS 1.3 (rustls) on the native listener" ;;
        esac
        stop "$variant"
    done
done
echo AB-DONE
