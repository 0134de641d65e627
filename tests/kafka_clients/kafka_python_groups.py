"""A Kafka consumer group against eventflowd, with kafka-python.

Usage: kafka_python_groups.py BOOTSTRAP TOPIC GROUP

kafka-python (3.0.12) implements the protocol itself, the group protocol included: its
members join, sync, heartbeat (from a background thread) and commit with their own
encoders, and the group's leader assigns with kafka-python's range assignor.

Creates TOPIC (4 partitions) with the KafkaAdminClient, produces RECORDS keyed records with
a KafkaProducer (acks='all'), then consumes them with two members of GROUP that commit
synchronously after each record (enable_auto_commit=False):

1. member A starts alone and takes every partition;
2. once a quarter of the records are processed, member B joins: the group rebalances and
   the partitions are split; the script describes the group with the admin client (two
   members, each with its decoded assignment), prints {"step": "both-active", ...} and
   waits for a line on stdin (the caller looks at the group through the native protocol);
3. once three quarters are processed, A closes (leaves the group): B takes everything;
4. B reads the rest.

Then it checks that every record was delivered exactly once and looks at the group with the
admin client: listed, described (Empty), committed offsets equal to the end offsets, one
partition's offset deleted (OffsetDelete), the group deleted. Prints one JSON line per step;
any unexpected answer raises, so the exit status is non-zero.
"""

import json
import sys
import threading
import time

import kafka.errors as Errors
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

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

    def __init__(self, name, bootstrap, topic, group, seen, lock):
        super().__init__(daemon=True)
        self.name = name
        self.seen = seen
        self.lock = lock
        self.stop = threading.Event()
        self.error = None
        self.count = 0
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id=name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=300,
            fetch_max_wait_ms=100,
            max_poll_records=50,
        )
        # The topic's partitions are known before the member joins. Otherwise the first
        # leader may assign before its metadata names them (an empty assignment), rejoin
        # once they arrive, and, when a poll's timeout ends while that rejoin is in flight,
        # kafka-python 3.0.12 never applies the assignment it then gets: with its metadata
        # and assignment snapshots now equal it stops asking to rejoin, so nothing awaits
        # the finished join, and the member holds nothing and sends no heartbeat. (The
        # broker answers every request of such a run; the client's join is what stalls.)
        known = self.consumer.partitions_for_topic(topic)
        expect(known == set(range(PARTITIONS)), f"{name}: partitions of {topic}: {known}")
        self.consumer.subscribe([topic])

    def assigned(self):
        return {tp.partition for tp in self.consumer.assignment()}

    def run(self):
        try:
            while not self.stop.is_set():
                # The member rejoins inside poll() when the group rebalances, so a record
                # committed before the next poll is never handed to the other member.
                for tp, records in self.consumer.poll(timeout_ms=100).items():
                    for r in records:
                        with self.lock:
                            self.seen.setdefault((tp.partition, r.offset), []).append(self.name)
                            self.count += 1
                        expect(r.key == f"k{r.value.decode()[1:]}".encode(), f"key of {r}")
                        self.consumer.commit({tp: OffsetAndMetadata(r.offset + 1, "", -1)})
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
    bootstrap, topic, group = sys.argv[1:4]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=TIMEOUT * 1000)
    admin.create_topics({topic: {"num_partitions": PARTITIONS}}, timeout_ms=TIMEOUT * 1000)

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, enable_idempotence=False
    )
    futures = [producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(RECORDS)]
    producer.flush(timeout=TIMEOUT)
    acked = [f.get(timeout=TIMEOUT) for f in futures]
    per_partition = {}
    for m in acked:
        per_partition.setdefault(m.partition, []).append(m.offset)
    for p, offsets in per_partition.items():
        expect(offsets == list(range(len(offsets))), f"partition {p} offsets in send order")
    producer.close()
    say(step="produced", records=RECORDS, partitions=len(per_partition))

    seen = {}
    lock = threading.Lock()
    total = lambda: len(seen)
    a = Member("member-a", bootstrap, topic, group, seen, lock)
    a.start()
    wait_until("A has a quarter", lambda: total() >= RECORDS // 4, [a])
    b = Member("member-b", bootstrap, topic, group, seen, lock)
    b.start()
    # Each member's view of what it holds, until they split the partitions between them
    # (for a moment after B's join, A still lists what it is giving up).
    split = {}

    def split_between_both():
        held_a, held_b = a.assigned(), b.assigned()
        split.update(a=sorted(held_a), b=sorted(held_b))
        return held_a and held_b and not held_a & held_b and len(held_a | held_b) == PARTITIONS

    wait_until("both members hold partitions", split_between_both, [a, b])

    # The admin client decodes each member's subscription and assignment.
    described = admin.describe_groups([group])[group]
    expect(described["error"] is None, f"describe: {described}")
    expect(described["group_state"] == "Stable", f"state: {described}")
    expect(described["protocol_type"] == "consumer", f"protocol type: {described}")
    members = {m["client_id"]: m for m in described["members"]}
    expect(sorted(members) == ["member-a", "member-b"], f"members: {described}")
    for name, member in members.items():
        topics = member["member_metadata"]["topics"]
        expect(topics == [topic], f"{name} subscribes to {topics}")
        assigned = member["member_assignment"]["assigned_partitions"]
        expect({a["topic"] for a in assigned} == {topic}, f"{name} assigned {assigned}")
        held = {p for a in assigned for p in a["partitions"]}
        expect(held == set(split[name[-1]]), f"{name} holds {held}, said {split}")
    say(step="both-active", protocol=described["protocol_data"], **split)
    sys.stdin.readline()

    wait_until("three quarters", lambda: total() >= 3 * RECORDS // 4, [a, b])
    a.stop.set()
    a.join(TIMEOUT)
    expect(not a.is_alive() and a.error is None, f"A closed cleanly: {a.error!r}")
    wait_until("B has everything", lambda: total() >= RECORDS, [b])
    b.stop.set()
    b.join(TIMEOUT)
    expect(not b.is_alive() and b.error is None, f"B closed cleanly: {b.error!r}")

    twice = {k: v for k, v in seen.items() if len(v) > 1}
    expect(not twice, f"records delivered twice: {sorted(twice.items())[:10]}")
    expect(len(seen) == RECORDS, f"{len(seen)} distinct records of {RECORDS}")
    expect(a.count > 0 and b.count > 0, f"both consumed: a={a.count} b={b.count}")
    say(step="consumed", a=a.count, b=b.count)

    listed = admin.list_groups()
    expect(
        any(g["group_id"] == group and g["protocol_type"] == "consumer" for g in listed),
        f"{group} listed: {listed}",
    )
    described = admin.describe_groups([group])[group]
    expect(described["group_state"] == "Empty", f"state: {described}")
    expect(described["protocol_type"] == "consumer", f"protocol type: {described}")
    expect(not described["members"], f"members: {described}")
    say(step="described", state=described["group_state"])

    committed = {
        tp.partition: o.offset for tp, o in admin.list_group_offsets(group)[group].items()
    }
    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    ends = probe.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    probe.close()
    ends = {tp.partition: o for tp, o in ends.items()}
    expect(committed == ends, f"committed {committed} == end offsets {ends}")
    say(step="offsets", committed=committed)

    gone = TopicPartition(topic, 0)
    result = admin.delete_group_offsets(group, [gone])
    expect(result == {gone: Errors.NoError}, f"delete_group_offsets: {result}")
    left = {tp.partition for tp in admin.list_group_offsets(group)[group]}
    expect(left == set(range(1, PARTITIONS)), f"offsets after OffsetDelete: {left}")
    say(step="offset-deleted", partition=0)

    result = admin.delete_groups([group])
    expect(result == {group: "OK"}, f"delete_groups: {result}")
    left = admin.list_group_offsets(group)[group]
    expect(not left, f"offsets after delete: {left}")
    result = admin.delete_groups([group])
    expect(result == {group: "GroupIdNotFoundError"}, f"second delete_groups: {result}")
    admin.close()
    say(step="deleted")


if __name__ == "__main__":
    main()
