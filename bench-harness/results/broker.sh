# Sourced by the result scripts: a fresh eventflowd on loopback for one run, and a backlog
# consumed against it.
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

# consume_backlog BENCH PARTITIONS OUT: the harness binary BENCH, against the broker
# start_broker started, fills a backlog of $MESSAGES 100-byte records over PARTITIONS
# partitions (not timed) and measures PARTITIONS consumers reading it; its report goes to
# OUT. Bounded: it is stopped after 300 s.
consume_backlog() {
    local bench=$1 partitions=$2 out=$3
    timeout 300 "$bench" consume --target "eventflow://$broker_addr" --create-topic \
        --partitions "$partitions" --consumers "$partitions" --messages "$MESSAGES" \
        --acks 1 --batch-bytes 1048576 --linger-us 1000 --broker-pid "$broker_pid" \
        >"$out" 2>&1
}

# consume_figures VARIANT PARTITIONS OUT: one line from the consume report in OUT,
# "VARIANT PARTITIONS records_per_s harness_cpu_s broker_cpu_s_per_M broker_peak_rss_mib"
# (the report prints its RSS in MiB or GiB), as medians.py reads it.
consume_figures() {
    report_figures consumed "$@"
}

# report_figures produced|consumed VARIANT PARTITIONS OUT: the same from a produce report
# (its records produced) or a consume report (its records consumed).
report_figures() {
    awk -v kind="$1" -v v="$2" -v p="$3" '
        $1 == kind { rate = $2 }
        /^harness CPU/ { cpu = $3 }
        /^broker CPU/ { broker = $3 }
        /^broker peak RSS/ { rss = $4; if ($5 == "GiB") rss *= 1024 }
        END { print v, p, rate, cpu, broker, rss }' "$4"
}

# alternate CASE... -- VARIANT...: $ROUNDS rounds of `run VARIANT CASE` (the case's words
# as separate arguments; an empty case passes none) for every case and, within it, every
# variant, the variants' order reversed every other round so that drift touches each
# alike. Each run's line is printed and kept in $SCRATCH/lines.txt, whose path is left in
# `lines` for medians.py.
alternate() {
    local cases=() variants=() order=() round case variant i
    while [[ $1 != -- ]]; do
        cases+=("$1")
        shift
    done
    shift
    variants=("$@")
    mkdir -p "$SCRATCH"
    lines="$SCRATCH/lines.txt"
    : >"$lines"
    for round in $(seq "$ROUNDS"); do
        order=("${variants[@]}")
        if ((round % 2 == 0)); then
            order=()
            for ((i = ${#variants[@]} - 1; i >= 0; i--)); do
                order+=("${variants[i]}")
            done
        fi
        for case in "${cases[@]}"; do
            for variant in "${order[@]}"; do
                # shellcheck disable=SC2086 # a case is words on purpose
                run "$variant" $case | tee -a "$lines"
            done
        done
    done
}
