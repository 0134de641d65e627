#!/usr/bin/env bash
# As run for bench-harness/results/auth-on-off/ (release builds in target/release; scratch in /tmp/ab).
# A/B: the same release eventflowd, open (no auth) vs secured (--native-require-auth,
# --authorizer on, a non-superuser with ACLs), alternating, each round on a fresh broker.
set -euo pipefail
cd /work/main
BIN=target/release
ROUNDS=${ROUNDS:-2}
echo "admin-secret-1" > /tmp/ab/admin.pw
start() { # $1: name, rest: flags; prints the native address
    local dir=/tmp/ab/data-$1
    rm -rf "$dir"
    "$BIN/eventflowd" --data-dir "$dir" --listen 127.0.0.1:0 --no-kafka --no-http --no-metrics \
        --no-direct-ports --cores 2 --fsync never "${@:2}" > /tmp/ab/$1.log 2>&1 &
    echo $! > /tmp/ab/$1.pid
    for _ in $(seq 100); do
        if grep -q "eventflowd ready" /tmp/ab/$1.log; then break; fi
        sleep 0.1
    done
    grep "eventflowd ready" /tmp/ab/$1.log | grep -o "listen=[0-9.:]*" | head -1 | cut -d= -f2
}
stop() { kill "$(cat /tmp/ab/$1.pid)"; wait "$(cat /tmp/ab/$1.pid)" 2>/dev/null || true; rm -rf /tmp/ab/data-$1; }
for round in $(seq "$ROUNDS"); do
    for variant in open secured; do
        if [[ $variant == open ]]; then
            addr=$(start open)
            env -u EVENTFLOW_BENCH_SASL_USER "$BIN/eventflow-bench" compare --name "auth-ab-$variant-$round" \
                --targets "eventflow://$addr" --plan bench-harness/workloads/ab-core.toml --rounds 1 \
                --no-ceiling --quiet --broker-pid "$(cat /tmp/ab/open.pid)" \
                --eventflow-durability "eventflowd --fsync never (open)" --results-dir /tmp/ab/results
            stop open
        else
            addr=$(start secured --native-require-auth --authorizer on --bootstrap-superuser admin \
                --bootstrap-superuser-password-file /tmp/ab/admin.pw)
            export EVENTFLOW_SASL_USER=admin EVENTFLOW_SASL_PASSWORD=admin-secret-1
            printf 'bench-password\n' | "$BIN/eventflow" --bootstrap "$addr" user add bench >/dev/null
            "$BIN/eventflow" --bootstrap "$addr" acl add --principal bench --topic '*' --operation All >/dev/null
            "$BIN/eventflow" --bootstrap "$addr" acl add --principal bench --group '*' --operation All >/dev/null
            unset EVENTFLOW_SASL_USER EVENTFLOW_SASL_PASSWORD
            EVENTFLOW_BENCH_SASL_USER=bench EVENTFLOW_BENCH_SASL_PASSWORD=bench-password \
                "$BIN/eventflow-bench" compare --name "auth-ab-$variant-$round" \
                --targets "eventflow://$addr" --plan bench-harness/workloads/ab-core.toml --rounds 1 \
                --no-ceiling --quiet --broker-pid "$(cat /tmp/ab/secured.pid)" \
                --eventflow-durability "eventflowd --fsync never (SASL + authorizer on, non-superuser)" \
                --results-dir /tmp/ab/results
            stop secured
        fi
    done
done
echo AB-DONE
