"""Kafka admin operations against eventflowd with confluent-kafka's AdminClient.

Usage: admin.py BOOTSTRAP TOPIC

Prints one JSON line per step. After altering retention.ms it prints {"step": "altered"}
and waits for a line on stdin (the caller checks the change through the native protocol),
then goes on. Any unexpected answer raises, so the exit status is non-zero.
"""

import json
import sys

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

TIMEOUT = 10


def say(**fields):
    print(json.dumps(fields), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def refused(future, code, text=None):
    """The future fails with Kafka error `code` (and a message containing `text`)."""
    try:
        future.result(timeout=TIMEOUT)
    except KafkaException as e:
        err = e.args[0]
        expect(err.code() == code, f"expected error {code}, got {err.code()}: {err.str()}")
        if text is not None:
            expect(text in err.str(), f"expected {text!r} in {err.str()!r}")
        return err.str()
    raise AssertionError(f"expected error {code}, the request succeeded")


def topic_configs(admin, topic):
    resource = ConfigResource(ResourceType.TOPIC, topic)
    [future] = admin.describe_configs([resource], request_timeout=TIMEOUT).values()
    return future.result(timeout=TIMEOUT)


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    admin = AdminClient({"bootstrap.servers": bootstrap})

    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=TIMEOUT)
    say(step="created", topic=topic)

    configs = topic_configs(admin, topic)
    values = {name: entry.value for name, entry in configs.items()}
    for key in ("retention.ms", "retention.bytes", "segment.bytes", "segment.ms"):
        expect(key in values, f"{key} missing from {values}")
    expect(values["cleanup.policy"] == "delete", f"cleanup.policy: {values}")
    expect(not configs["cleanup.policy"].is_read_only, "cleanup.policy can be altered")
    expect(
        configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value,
        f"retention.ms source {configs['retention.ms'].source}",
    )
    say(step="described", configs=values)

    broker = ConfigResource(ResourceType.BROKER, "0")
    [future] = admin.describe_configs([broker], request_timeout=TIMEOUT).values()
    broker_values = {n: e.value for n, e in future.result(timeout=TIMEOUT).items()}
    expect(broker_values.get("log.cleanup.policy") == "delete", f"broker: {broker_values}")
    say(step="broker", configs=broker_values)

    missing = ConfigResource(ResourceType.TOPIC, topic + "-missing")
    [future] = admin.describe_configs([missing], request_timeout=TIMEOUT).values()
    refused(future, KafkaError.UNKNOWN_TOPIC_OR_PART)
    say(step="unknown-topic")

    def alter(name, value, op=AlterConfigOpType.SET):
        resource = ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[ConfigEntry(name, value, incremental_operation=op)],
        )
        [future] = admin.incremental_alter_configs([resource]).values()
        return future

    alter("retention.ms", "3600000").result(timeout=TIMEOUT)
    configs = topic_configs(admin, topic)
    expect(configs["retention.ms"].value == "3600000", f"after alter: {configs['retention.ms']}")
    expect(
        configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value,
        f"retention.ms source {configs['retention.ms'].source}",
    )
    say(step="altered", retention_ms=configs["retention.ms"].value)
    sys.stdin.readline()

    alter("retention.ms", None, AlterConfigOpType.DELETE).result(timeout=TIMEOUT)
    configs = topic_configs(admin, topic)
    expect(
        configs["retention.ms"].value == values["retention.ms"],
        f"after delete: {configs['retention.ms']}",
    )
    # The override is gone: the topic follows the broker's default again.
    expect(
        configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value,
        f"retention.ms source after delete: {configs['retention.ms'].source}",
    )
    say(step="reset", retention_ms=configs["retention.ms"].value)

    alter("cleanup.policy", "compact,delete").result(timeout=TIMEOUT)
    policy = topic_configs(admin, topic)["cleanup.policy"].value
    expect(policy == "compact,delete", f"cleanup.policy after alter: {policy}")
    message = refused(
        alter("cleanup.policy", "shred"),
        KafkaError.INVALID_CONFIG,
        "is not a policy",
    )
    say(step="compact-refused", message=message)
    refused(alter("retention.ms", "1", AlterConfigOpType.APPEND), KafkaError.INVALID_REQUEST)
    refused(alter("no.such.key", "1"), KafkaError.INVALID_CONFIG)
    say(step="append-and-unknown-refused")

    cluster = admin.describe_cluster(request_timeout=TIMEOUT).result(timeout=TIMEOUT)
    port = int(bootstrap.rsplit(":", 1)[1])
    expect(cluster.cluster_id == "eventflow", f"cluster id {cluster.cluster_id}")
    expect(cluster.controller is not None and cluster.controller.id == 0, "controller 0")
    expect(
        [(n.id, n.port) for n in cluster.nodes] == [(0, port)],
        f"nodes {cluster.nodes}",
    )
    say(step="cluster", cluster_id=cluster.cluster_id, nodes=len(cluster.nodes))

    future = admin.create_partitions([NewPartitions(topic, 4)])[topic]
    message = refused(
        future,
        KafkaError.INVALID_PARTITIONS,
        "eventflow cannot add partitions to an existing topic yet",
    )
    say(step="partitions-refused", message=message)

    admin.delete_topics([topic])[topic].result(timeout=TIMEOUT)
    listed = admin.list_topics(timeout=TIMEOUT).topics
    expect(topic not in listed, f"{topic} still listed")
    say(step="deleted")


if __name__ == "__main__":
    main()
