"""A Kafka consumer group against eventflowd, with confluent-kafka.

Usage: groups.py BOOTSTRAP TOPIC GROUP ASSIGNOR

Creates TOPIC (4 partitions), produces RECORDS records, then consumes them with two members
of GROUP using ASSIGNOR (range, roundrobin or cooperative-sticky), committing every record
synchronously after processing it:

1. member A starts alone and takes every partition;
2. once A has processed a quarter of the records, member B joins: the group rebalances and
   the partitions are split; the script prints {"step": "both-active", ...} and waits for a
   line on stdin (the caller looks at the group through the native protocol);
3. once three quarters are processed, A closes (leaves the group): B takes everything;
4. B reads the rest.

Then it checks that every record was delivered exactly once (a committed record is never
delivered again, which is what the rebalance protocol must guarantee when members commit
before giving partitions up), and looks at the group with the AdminClient: listed, described,
committed offsets equal to the end offsets, deleted. Prints one JSON line per step; any
unexpected answer raises, so the exit status is non-zero.
"""

import json
import sys
import threading
import time

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT = 20
RECORDS = 2000
PARTITIONS = 4


def say(**fields):
    print(json.dumps(fields), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


class Member(threading.Thread):
    """A group member that records what it is given and commits each record."""

    def __init__(self, name, bootstrap, topic, group, assignor, seen, lock):
        super().__init__(daemon=True)
        self.name = name
        self.seen = seen
        self.lock = lock
        self.stop = threading.Event()
        self.error = None
        self.count = 0
        self.assigned = set()
        self.pending = {}
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": name,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": assignor,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 300,
            }
        )
        self.consumer.subscribe(
            [topic], on_assign=self.on_assign, on_revoke=self.on_revoke
        )

    def on_assign(self, consumer, partitions):
        with self.lock:
            self.assigned |= {p.partition for p in partitions}

    def on_revoke(self, consumer, partitions):
        # What is given up is committed first, so the next owner starts after it.
        self.commit_pending()
        with self.lock:
            self.assigned -= {p.partition for p in partitions}

    def commit_pending(self):
        """Commits the positions whose commit was refused during a rebalance."""
        deadline = time.monotonic() + TIMEOUT
        while self.pending:
            expect(time.monotonic() < deadline, "commit refused for too long")
            offsets = [TopicPartition(t, p, o) for (t, p), o in self.pending.items()]
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
                self.pending.clear()
            except KafkaException as e:
                # Between the join and the leader's assignment a commit is refused with
                # REBALANCE_IN_PROGRESS, as by Kafka: retriable once the rebalance is over.
                if e.args[0].code() != KafkaError.REBALANCE_IN_PROGRESS:
                    raise
                time.sleep(0.05)

    def run(self):
        try:
            while not self.stop.is_set():
                message = self.consumer.poll(0.1)
                if message is None:
                    continue
                if message.error():
                    raise KafkaException(message.error())
                key = (message.partition(), message.offset())
                with self.lock:
                    self.seen.setdefault(key, []).append(self.name)
                    self.count += 1
                self.pending[(message.topic(), message.partition())] = message.offset() + 1
                self.commit_pending()
            self.consumer.close()
        except Exception as e:  # reported by the main thread
            self.error = e


def wait_until(what, cond, members):
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        for m in members:
            if m.error is not None:
                raise AssertionError(f"{m.name} failed: {m.error!r}")
        expect(time.monotonic() < deadline, f"timed out waiting until {what}")
        time.sleep(0.05)


def main():
    bootstrap, topic, group, assignor = sys.argv[1:5]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=TIMEOUT)

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(RECORDS):
        producer.produce(topic, key=f"k{i}", value=f"v{i}")
    expect(producer.flush(TIMEOUT) == 0, "every record acknowledged")
    say(step="produced", records=RECORDS)

    seen = {}
    lock = threading.Lock()
    a = Member("member-a", bootstrap, topic, group, assignor, seen, lock)
    a.start()
    total = lambda: len(seen)
    wait_until("A has a quarter", lambda: total() >= RECORDS // 4, [a])
    b = Member("member-b", bootstrap, topic, group, assignor, seen, lock)
    b.start()
    wait_until(
        "both members hold partitions",
        lambda: a.assigned and b.assigned and len(a.assigned | b.assigned) == PARTITIONS,
        [a, b],
    )
    with lock:
        split = {"a": sorted(a.assigned), "b": sorted(b.assigned)}
    expect(not (a.assigned & b.assigned), f"a partition held twice: {split}")
    say(step="both-active", **split)
    sys.stdin.readline()

    wait_until("three quarters", lambda: total() >= 3 * RECORDS // 4, [a, b])
    a.stop.set()
    a.join(TIMEOUT)
    expect(not a.is_alive() and a.error is None, f"A closed cleanly: {a.error!r}")
    wait_until("B has everything", lambda: total() >= RECORDS, [b])
    b.stop.set()
    b.join(TIMEOUT)
    expect(b.error is None, f"B closed cleanly: {b.error!r}")

    twice = {k: v for k, v in seen.items() if len(v) > 1}
    expect(not twice, f"records delivered twice: {sorted(twice.items())[:10]}")
    expect(len(seen) == RECORDS, f"{len(seen)} distinct records of {RECORDS}")
    expect(a.count > 0 and b.count > 0, f"both consumed: a={a.count} b={b.count}")
    say(step="consumed", a=a.count, b=b.count)

    listed = admin.list_consumer_groups(request_timeout=TIMEOUT).result()
    expect(group in [g.group_id for g in listed.valid], f"{group} listed")
    [described] = admin.describe_consumer_groups([group]).values()
    described = described.result(timeout=TIMEOUT)
    expect(str(described.state).endswith("EMPTY"), f"state {described.state}")
    expect(not described.members, f"members {described.members}")
    say(step="described", state=str(described.state))

    [offsets] = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)]
    ).values()
    committed = {
        tp.partition: tp.offset for tp in offsets.result(timeout=TIMEOUT).topic_partitions
    }
    ends = {}
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group + "-probe"})
    for p in range(PARTITIONS):
        _, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT)
        ends[p] = high
    probe.close()
    expect(committed == ends, f"committed {committed} == end offsets {ends}")
    say(step="offsets", committed=committed)

    [deleted] = admin.delete_consumer_groups([group], request_timeout=TIMEOUT).values()
    deleted.result(timeout=TIMEOUT)
    [offsets] = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)]
    ).values()
    left = [
        tp.offset for tp in offsets.result(timeout=TIMEOUT).topic_partitions if tp.offset >= 0
    ]
    expect(not left, f"offsets after delete: {left}")
    say(step="deleted")


if __name__ == "__main__":
    main()
