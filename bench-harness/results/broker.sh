# Sourced by the result scripts: a fresh eventflowd on loopback for one run.
#
# start_broker DIR ARGS... starts "$BROKER" --data-dir DIR/data --listen 127.0.0.1:0
# --no-kafka --no-http --no-metrics --cores 2 ARGS..., logging to DIR/log, and waits for
# its ready line: it then sets broker_pid and broker_addr. A broker that exits first or
# is not ready within 10 s is stopped and its log printed, and start_broker fails. If the
# script ends early (a failed harness run under `set -e`), the broker is stopped on exit.
# stop_broker ends it.

start_broker() {
    local dir=$1
    shift
    "$BROKER" --data-dir "$dir/data" --listen 127.0.0.1:0 --no-kafka --no-http \
        --no-metrics --cores 2 "$@" >"$dir/log" 2>&1 &
    broker_pid=$!
    trap 'kill "$broker_pid" 2>/dev/null || true' EXIT
    broker_addr=""
    for _ in $(seq 100); do
        broker_addr=$(grep -o 'ready listen=[0-9.:]*' "$dir/log" | cut -d= -f2 || true)
        [[ -n $broker_addr ]] && return 0
        kill -0 "$broker_pid" 2>/dev/null || break
        sleep 0.1
    done
    stop_broker
    echo "eventflowd did not become ready; its log:" >&2
    cat "$dir/log" >&2
    return 1
}

stop_broker() {
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    trap - EXIT
}
