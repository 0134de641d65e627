"""Read a compacted partition from offset 0 to its end with confluent-kafka (librdkafka).

Usage: compacted.py BOOTSTRAP TOPIC END

Reads partition 0 of TOPIC from offset 0 until a record at or past offset END - 1 arrived
or the partition's end was reached, and prints one line
{"step": "done", "records": [[offset, key, value-or-null], ...]} in the order received.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, TopicPartition

TIMEOUT = 60


def main():
    bootstrap, topic, end = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "eventflow-compaction-test",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 200,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    records = []
    deadline = time.time() + TIMEOUT
    done = False
    while not done and time.time() < deadline:
        for m in consumer.consume(num_messages=500, timeout=0.2):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    done = True
                    continue
                raise RuntimeError(f"consume error: {m.error()}")
            value = m.value()
            records.append(
                [m.offset(), m.key().decode(), None if value is None else value.decode()]
            )
            if m.offset() >= end - 1:
                done = True
    consumer.close()
    if not done:
        raise RuntimeError("the partition's end was not reached in time")
    print(json.dumps({"step": "done", "records": records}), flush=True)


if __name__ == "__main__":
    main()
