"""An idempotent producer and a committing group consumer carry on across a broker crash.

Usage: restart.py BOOTSTRAP TOPIC GROUP RECORDS

Creates TOPIC (4 partitions). A confluent-kafka producer (enable.idempotence, acks=all)
sends RECORDS values "0".."RECORDS-1" at a steady pace while a consumer of GROUP reads
them, committing each record synchronously. Once a third of the records are acknowledged
the script prints {"step": "crash-now"} and waits for a line on stdin: the caller kills the
broker with SIGKILL and starts it again on the same address. Both clients ride through:
the producer retries what was in flight, the consumer rejoins its group and resumes from
its committed offsets. At the end:

- every record was acknowledged, with no delivery error;
- the log holds every value exactly once (read back from the start of every partition):
  the retries of batches the broker had written before it died were recognised;
- the consumer saw every value, and saw a value twice only if its first delivery's commit
  was not acknowledged (at-least-once, nothing committed is delivered again).

Prints one JSON line per step; any unexpected answer raises, so the exit status is non-zero.
"""

import json
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT = 60
PARTITIONS = 4


def say(**fields):
    print(json.dumps(fields), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


class GroupReader(threading.Thread):
    """A group member that commits every record and notes whether the commit held."""

    def __init__(self, bootstrap, topic, group):
        super().__init__(daemon=True)
        self.deliveries = []  # (value, committed)
        self.last = {}  # partition -> (offset, monotonic time) of its newest delivery
        self.commit_failures = 0
        self.stop = threading.Event()
        self.error = None
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 300,
            }
        )
        self.consumer.subscribe([topic])

    def describe(self):
        """Where the reader stands, for a failure message."""
        now = time.monotonic()
        last = {p: (o, round(now - t, 1)) for p, (o, t) in sorted(self.last.items())}
        return (
            f"newest delivery per partition (offset, seconds ago): {last}; "
            f"commit failures: {self.commit_failures}"
        )

    def run(self):
        try:
            while not self.stop.is_set():
                message = self.consumer.poll(0.1)
                if message is None:
                    continue
                if message.error():
                    # Connection losses while the broker is down are reported and retried
                    # by the client; only a fatal error ends the test.
                    if message.error().fatal():
                        raise KafkaException(message.error())
                    continue
                try:
                    self.consumer.commit(message=message, asynchronous=False)
                    committed = True
                except KafkaException:
                    committed = False
                    self.commit_failures += 1
                self.deliveries.append((int(message.value()), committed))
                self.last[message.partition()] = (message.offset(), time.monotonic())
            self.consumer.close()
        except Exception as e:
            self.error = e


def main():
    bootstrap, topic, group, records = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=TIMEOUT)

    reader = GroupReader(bootstrap, topic, group)
    reader.start()

    acked, failed = [], []

    def on_delivery(err, message):
        if err is not None:
            failed.append(str(err))
        else:
            acked.append(int(message.value()))

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": TIMEOUT * 1000,
            "reconnect.backoff.max.ms": 200,
        }
    )
    crashed = False
    for i in range(records):
        while True:
            try:
                producer.produce(topic, key=str(i % 97), value=str(i), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if i % 50 == 49:
            time.sleep(0.01)
        if not crashed and len(acked) >= records // 3:
            say(step="crash-now", acked=len(acked))
            sys.stdin.readline()
            crashed = True
    expect(producer.flush(TIMEOUT) == 0, "every record delivered or failed")
    expect(crashed, "the crash happened while producing")
    expect(not failed, f"delivery errors: {failed[:5]}")
    expect(sorted(acked) == list(range(records)), f"{len(acked)} acknowledged of {records}")
    say(step="produced", acked=len(acked))

    # The log, read from the start: every value once.
    probe = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group + "-probe", "enable.auto.commit": False}
    )
    ends = {}
    for p in range(PARTITIONS):
        _, ends[p] = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT)
    probe.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    stored = []
    deadline = time.monotonic() + TIMEOUT
    while len(stored) < sum(ends.values()):
        expect(time.monotonic() < deadline, f"read {len(stored)} of {sum(ends.values())}")
        message = probe.poll(0.2)
        if message is not None and not message.error():
            stored.append(int(message.value()))
    probe.close()
    expect(len(stored) == records, f"the log holds {len(stored)} records for {records} values")
    expect(sorted(stored) == list(range(records)), "every value stored exactly once")
    say(step="stored-once", records=len(stored))

    # The reader must keep making progress, not finish by a fixed time: each of its commits
    # is an fdatasync'ed append under --fsync always, so its pace is the disk's (about
    # 1,300 records/s here, 200/s with another process writing to the same disk).
    seen, progress_at = 0, time.monotonic()
    while seen < records:
        expect(reader.error is None, f"the group reader failed: {reader.error!r}")
        now_seen = len({v for v, _ in reader.deliveries})
        if now_seen > seen:
            seen, progress_at = now_seen, time.monotonic()
        expect(
            time.monotonic() - progress_at < TIMEOUT,
            f"the group reader saw {seen} of {records} and nothing new for {TIMEOUT} s; "
            f"{reader.describe()}; log ends {ends}",
        )
        time.sleep(0.1)
    reader.stop.set()
    reader.join(TIMEOUT)
    first = {}
    redelivered = 0
    for value, committed in reader.deliveries:
        if value in first:
            expect(
                not first[value],
                f"value {value} was delivered again although its commit was acknowledged",
            )
            redelivered += 1
        first[value] = committed
    say(step="consumed", deliveries=len(reader.deliveries), redelivered=redelivered)


if __name__ == "__main__":
    main()
