"""Consume a multi-partition topic from eventflowd with assign() (no consumer group).

Usage: consume.py CLIENT BOOTSTRAP TOPIC PARTITIONS COUNT

CLIENT is `confluent` (confluent-kafka, librdkafka) or `kafka-python` (the pure-Python
client, which fetches in incremental fetch sessions). Every partition is read from
offset 0. Prints {"step": "assigned"} once the consumer has fetched (the caller then
produces while it consumes), and, once COUNT records per partition arrived and a further
second brought nothing, one line {"step": "done", "partitions": {P: [[offset, value], ...]}}
with every record received, duplicates included, in the order received.
"""

import json
import sys
import time

TIMEOUT = 60
SETTLE = 1.0


def say(**fields):
    print(json.dumps(fields), flush=True)


class Confluent:
    def __init__(self, bootstrap, topic, partitions):
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "eventflow-consume-test",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 200,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

    def poll(self):
        out = []
        for m in self.consumer.consume(num_messages=500, timeout=0.2):
            if m.error():
                raise RuntimeError(f"consume error: {m.error()}")
            out.append((m.partition(), m.offset(), m.value().decode()))
        return out

    def close(self):
        self.consumer.close()


class KafkaPython:
    def __init__(self, bootstrap, topic, partitions):
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=200,
        )
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer.assign(assigned)
        for tp in assigned:
            self.consumer.seek(tp, 0)

    def poll(self):
        out = []
        for tp, records in self.consumer.poll(timeout_ms=200).items():
            for r in records:
                out.append((tp.partition, r.offset, r.value.decode()))
        return out

    def close(self):
        self.consumer.close()


def main():
    client, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    partitions, count = int(sys.argv[4]), int(sys.argv[5])
    consumer = {"confluent": Confluent, "kafka-python": KafkaPython}[client](
        bootstrap, topic, partitions
    )
    received = {p: [] for p in range(partitions)}

    def take(records):
        for partition, offset, value in records:
            received[partition].append([offset, value])

    # The first records are produced before the caller hears "assigned", so the first
    # polls both connect and fetch.
    deadline = time.time() + TIMEOUT
    while not any(received.values()):
        if time.time() > deadline:
            raise RuntimeError("no record within the timeout")
        take(consumer.poll())
    say(step="assigned")
    while any(len(r) < count for r in received.values()):
        if time.time() > deadline:
            got = {p: len(r) for p, r in received.items()}
            raise RuntimeError(f"timed out with {got} of {count} per partition")
        take(consumer.poll())
    # Anything more would be a duplicate.
    settle = time.time() + SETTLE
    while time.time() < settle:
        take(consumer.poll())
    consumer.close()
    say(step="done", partitions=received)


if __name__ == "__main__":
    main()
