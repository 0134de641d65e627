"""An idempotent producer against eventflowd with confluent-kafka, then every record read back.

Usage: idempotent.py BOOTSTRAP TOPIC PARTITIONS RECORDS

Produces RECORDS records (keys spread over the topic's PARTITIONS partitions) with
enable.idempotence=True and acks=all, pipelining up to five requests per connection, then
reads every partition back from offset 0 with a consumer assigned to them (no group
membership) and checks that each record arrived exactly once. Prints one JSON line per
step; any failure raises, so the exit status is non-zero.
"""

import json
import sys
import time
from collections import Counter

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

TIMEOUT = 30


def say(**fields):
    print(json.dumps(fields), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def produce(bootstrap, topic, records):
    errors = []
    delivered = Counter()
    offsets = {}

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
            return
        delivered[msg.value().decode()] += 1
        offsets.setdefault(msg.partition(), []).append(msg.offset())

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 2,
            "batch.num.messages": 50,
        }
    )
    for i in range(records):
        while True:
            try:
                producer.produce(topic, key=f"k{i}", value=f"v{i}", on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(TIMEOUT)
    expect(left == 0, f"{left} records not delivered within {TIMEOUT} s")
    expect(not errors, f"delivery errors: {errors[:5]}")
    expect(len(delivered) == records, f"{len(delivered)} distinct records delivered")
    expect(max(delivered.values()) == 1, "a record was acknowledged twice")
    for partition, acked in offsets.items():
        expect(acked == sorted(acked), f"partition {partition}: offsets out of order")
        expect(len(set(acked)) == len(acked), f"partition {partition}: an offset twice")
    return {p: len(o) for p, o in offsets.items()}


def consume(bootstrap, topic, partitions, records):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Required by the client; assign() below joins no group.
            "group.id": "idempotent-check",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = Counter()
    at_end = set()
    deadline = time.monotonic() + TIMEOUT
    while len(at_end) < partitions and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition())
                continue
            raise AssertionError(f"consume error: {msg.error()}")
        seen[msg.value().decode()] += 1
        at_end.discard(msg.partition())
    consumer.close()
    expect(len(at_end) == partitions, f"only {sorted(at_end)} read to the end")
    duplicates = [v for v, n in seen.items() if n > 1]
    missing = [f"v{i}" for i in range(records) if f"v{i}" not in seen]
    expect(not duplicates, f"read twice: {duplicates[:5]}")
    expect(not missing, f"never read: {missing[:5]} ({len(missing)} in all)")
    expect(sum(seen.values()) == records, f"{sum(seen.values())} records read")


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    partitions, records = int(sys.argv[3]), int(sys.argv[4])
    per_partition = produce(bootstrap, topic, records)
    say(step="produced", records=records, per_partition=per_partition)
    consume(bootstrap, topic, partitions, records)
    say(step="consumed", records=records)


if __name__ == "__main__":
    main()
