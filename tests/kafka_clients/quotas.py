"""Client quotas on eventflowd's Kafka listener with confluent-kafka: a greedy producer
(client id `greedy`, which has a producer_byte_rate quota) and a polite one (client id
`polite`, no quota) produce at the same time to the same broker.

Usage: quotas.py BOOTSTRAP TOPIC GREEDY_BYTES POLITE_BYTES

Prints one JSON line per producer with the bytes it sent, how long they took to be
acknowledged, and the throttle times librdkafka reported (throttle_cb); then `done`.
"""

import json
import sys
import time

from confluent_kafka import Producer

RECORD = 1024


def say(**fields):
    print(json.dumps(fields), flush=True)


class Run:
    def __init__(self, bootstrap, client_id, total):
        self.client_id = client_id
        self.throttles = []
        self.acked = 0
        self.errors = []
        self.sent = 0
        self.total = total
        self.started = None
        self.finished = None
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": client_id,
                "linger.ms": 5,
                "batch.size": 16384,
                "acks": 1,
                "throttle_cb": self.on_throttle,
            }
        )

    def on_throttle(self, event):
        self.throttles.append(event.throttle_time)

    def on_delivery(self, err, _msg):
        if err is not None:
            self.errors.append(str(err))
        self.acked += RECORD
        if self.acked >= self.total and self.finished is None:
            self.finished = time.monotonic()

    def step(self, topic, value):
        if self.started is None:
            self.started = time.monotonic()
        while self.sent < self.total:
            try:
                self.producer.produce(topic, value=value, on_delivery=self.on_delivery)
            except BufferError:
                break
            self.sent += RECORD
            if self.sent % (64 * RECORD) == 0:
                break
        self.producer.poll(0)

    def done(self):
        return self.finished is not None

    def report(self):
        self.producer.flush(60)
        self.producer.poll(0)
        say(
            step=self.client_id,
            bytes=self.acked,
            seconds=(self.finished or time.monotonic()) - self.started,
            throttles=len(self.throttles),
            max_throttle_s=max(self.throttles, default=0.0),
            errors=self.errors,
        )


def main():
    bootstrap, topic, greedy_bytes, polite_bytes = sys.argv[1:5]
    value = b"x" * RECORD
    greedy = Run(bootstrap, "greedy", int(greedy_bytes))
    polite = Run(bootstrap, "polite", int(polite_bytes))
    deadline = time.monotonic() + 120
    while not (greedy.done() and polite.done()) and time.monotonic() < deadline:
        greedy.step(topic, value)
        polite.step(topic, value)
        time.sleep(0.001)
    greedy.report()
    polite.report()
    say(step="done")


if __name__ == "__main__":
    main()
