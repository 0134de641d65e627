#!/usr/bin/env bash
# Apache Kafka's own command-line tools against eventflowd: Kafka's quickstart, verbatim
# where it can be, plus the consumer-groups, perf-test and Connect file connector steps.
#
#   KAFKA_HOME=/path/to/kafka_2.13-4.0.0 tests/kafka_tools.sh
#
# Needs a Kafka distribution (KAFKA_HOME, with bin/kafka-topics.sh and Java on the PATH).
# None can be installed on the machines CI uses, so CI does not run this; every API these
# tools use is covered by the client tests (tests/kafka_*.rs), and docs/KAFKA.md lists them.
#
# By default it starts target/release/eventflowd (or EVENTFLOWD=PATH) on a scratch data
# directory with its Kafka listener on 127.0.0.1:19092. BOOTSTRAP=HOST:PORT runs the tools
# against a broker that is already running instead (Eventflow's, or a Kafka cluster's: the
# same script checks both). Every step is bounded in count and time; the script stops the
# broker it started, and only that one, by its PID.
set -euo pipefail

: "${KAFKA_HOME:?set KAFKA_HOME to an Apache Kafka distribution (bin/kafka-topics.sh)}"
bin="$KAFKA_HOME/bin"
[[ -x "$bin/kafka-topics.sh" ]] || { echo "no $bin/kafka-topics.sh" >&2; exit 2; }
command -v java >/dev/null || { echo "Kafka's tools need java on the PATH" >&2; exit 2; }

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
broker_pid=""
cleanup() {
    if [[ -n "$broker_pid" ]]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
# Runs a tool with a time limit, so that a hang fails the script instead of stalling it.
tool() { local limit="$1"; shift; timeout "$limit" "$@"; }

if [[ -z "${BOOTSTRAP:-}" ]]; then
    eventflowd="${EVENTFLOWD:-$root/target/release/eventflowd}"
    [[ -x "$eventflowd" ]] || fail "no $eventflowd: cargo build --release, or set EVENTFLOWD or BOOTSTRAP"
    BOOTSTRAP=127.0.0.1:19092
    "$eventflowd" --data-dir "$work/data" --listen 127.0.0.1:0 --no-direct-ports \
        --kafka-listen "$BOOTSTRAP" --group-initial-rebalance-delay-ms 0 \
        > "$work/ready" 2> "$work/eventflowd.log" &
    broker_pid=$!
    for _ in $(seq 100); do
        grep -q "eventflowd ready" "$work/ready" 2>/dev/null && break
        kill -0 "$broker_pid" 2>/dev/null || { cat "$work/eventflowd.log" >&2; fail "eventflowd exited"; }
        sleep 0.1
    done
    grep -q "eventflowd ready" "$work/ready" || fail "eventflowd did not become ready"
    echo "eventflowd (pid $broker_pid) serves Kafka on $BOOTSTRAP"
fi

topic=quickstart-events

step "kafka-topics.sh --create / --describe / --list"
tool 60 "$bin/kafka-topics.sh" --create --topic "$topic" --partitions 3 --bootstrap-server "$BOOTSTRAP"
described="$(tool 60 "$bin/kafka-topics.sh" --describe --topic "$topic" --bootstrap-server "$BOOTSTRAP")"
echo "$described"
grep -q "PartitionCount: 3" <<<"$described" || fail "describe shows 3 partitions"
tool 60 "$bin/kafka-topics.sh" --list --bootstrap-server "$BOOTSTRAP" | grep -qx "$topic" \
    || fail "the topic is listed"

step "kafka-console-producer.sh (idempotent by default), then kafka-console-consumer.sh --from-beginning"
seq 1 1000 | sed 's/^/event /' > "$work/events.txt"
tool 60 "$bin/kafka-console-producer.sh" --topic "$topic" --bootstrap-server "$BOOTSTRAP" \
    < "$work/events.txt"
tool 60 "$bin/kafka-console-consumer.sh" --topic "$topic" --from-beginning \
    --bootstrap-server "$BOOTSTRAP" --group quickstart-readers --max-messages 1000 \
    > "$work/consumed.txt"
diff <(sort "$work/events.txt") <(sort "$work/consumed.txt") > /dev/null \
    || fail "the consumer read back exactly what was produced"
echo "1000 events produced and consumed"

step "kafka-consumer-groups.sh --list / --describe"
tool 60 "$bin/kafka-consumer-groups.sh" --bootstrap-server "$BOOTSTRAP" --list \
    | grep -qx quickstart-readers || fail "the group is listed"
groups_out="$(tool 60 "$bin/kafka-consumer-groups.sh" --bootstrap-server "$BOOTSTRAP" \
    --describe --group quickstart-readers)"
echo "$groups_out"
# Three partitions, each committed at its end: lag 0.
[[ "$(grep -c "^quickstart-readers *$topic " <<<"$groups_out")" == 3 ]] \
    || fail "the describe shows the group's three partitions"
awk -v t="$topic" '$2 == t && $6 != "0" { bad = 1 } END { exit bad }' <<<"$groups_out" \
    || fail "every partition's lag is 0"

step "kafka-producer-perf-test.sh (200,000 records of 100 bytes)"
tool 60 "$bin/kafka-topics.sh" --create --topic perf --partitions 2 --bootstrap-server "$BOOTSTRAP"
tool 120 "$bin/kafka-producer-perf-test.sh" --topic perf --num-records 200000 --record-size 100 \
    --throughput -1 --producer-props bootstrap.servers="$BOOTSTRAP" acks=all \
    | tee "$work/producer-perf.txt"
grep -q "200000 records sent" "$work/producer-perf.txt" || fail "every record sent"

step "kafka-consumer-perf-test.sh (the same 200,000 records)"
tool 120 "$bin/kafka-consumer-perf-test.sh" --bootstrap-server "$BOOTSTRAP" --topic perf \
    --messages 200000 --timeout 30000 | tee "$work/consumer-perf.txt"
awk -F', *' 'NR == 2 && $5 + 0 < 200000 { exit 1 }' "$work/consumer-perf.txt" \
    || fail "the consumer read all 200,000 records"

step "connect-standalone.sh: FileStreamSource test.txt -> connect-test -> FileStreamSink test.sink.txt"
cd "$work"
printf 'foo\nbar\n' > test.txt
connect_file_jar="$(ls "$KAFKA_HOME"/libs/connect-file-*.jar | head -1)"
cat > worker.properties <<EOF
bootstrap.servers=$BOOTSTRAP
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
offset.storage.file.filename=$work/connect.offsets
offset.flush.interval.ms=1000
plugin.path=$connect_file_jar
EOF
cat > source.properties <<EOF
name=local-file-source
connector.class=FileStreamSource
tasks.max=1
file=$work/test.txt
topic=connect-test
EOF
cat > sink.properties <<EOF
name=local-file-sink
connector.class=FileStreamSink
tasks.max=1
file=$work/test.sink.txt
topics=connect-test
EOF
tool 60 "$bin/kafka-topics.sh" --create --topic connect-test --partitions 1 --bootstrap-server "$BOOTSTRAP"
"$bin/connect-standalone.sh" worker.properties source.properties sink.properties \
    > connect.log 2>&1 &
connect_pid=$!
for _ in $(seq 600); do
    [[ -f test.sink.txt ]] && [[ "$(cat test.sink.txt)" == $'foo\nbar' ]] && break
    sleep 0.1
done
echo "Another line" >> test.txt
for _ in $(seq 600); do
    [[ "$(tail -1 test.sink.txt 2>/dev/null)" == "Another line" ]] && break
    sleep 0.1
done
kill "$connect_pid" 2>/dev/null || true
wait "$connect_pid" 2>/dev/null || true
[[ "$(cat test.sink.txt)" == $'foo\nbar\nAnother line' ]] \
    || { tail -50 connect.log >&2; fail "test.sink.txt holds test.txt's three lines"; }
echo "test.txt copied through connect-test into test.sink.txt"

step "all Kafka tool steps passed against $BOOTSTRAP"
