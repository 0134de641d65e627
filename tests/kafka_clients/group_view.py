"""Looks at a consumer group that eventflow's native client members hold, as a Kafka client.

Usage: group_view.py BOOTSTRAP GROUP TOPIC

Prints {"step": "described", "members": [{"client_id", "partitions"}...]} from the
AdminClient's DescribeConsumerGroups, then tries to join GROUP as a Kafka consumer and prints
{"step": "join-refused", "code": CODE} with the error the broker gave.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

TIMEOUT = 10


def say(**fields):
    print(json.dumps(fields), flush=True)


def main():
    bootstrap, group, topic = sys.argv[1:4]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [described] = admin.describe_consumer_groups([group]).values()
    described = described.result(timeout=TIMEOUT)
    say(
        step="described",
        state=str(described.state).rsplit(".", 1)[-1],
        assignor=described.partition_assignor,
        members=[
            {
                "client_id": m.client_id,
                "partitions": sorted(
                    tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic
                ),
            }
            for m in described.members
        ],
    )

    errors = []
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "session.timeout.ms": 6000,
            "error_cb": errors.append,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + TIMEOUT
    code = None
    while code is None and time.monotonic() < deadline:
        try:
            message = consumer.poll(0.2)
            if message is not None and message.error():
                code = message.error().code()
        except KafkaException as e:
            code = e.args[0].code()
        for e in errors:
            code = e.code()
    consumer.close()
    if code is None:
        raise AssertionError("the Kafka consumer was not refused")
    say(step="join-refused", code=code, inconsistent=code == KafkaError.INCONSISTENT_GROUP_PROTOCOL)


if __name__ == "__main__":
    main()
