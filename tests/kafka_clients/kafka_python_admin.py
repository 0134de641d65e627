"""Kafka admin operations against eventflowd with kafka-python's KafkaAdminClient.

Usage: kafka_python_admin.py BOOTSTRAP TOPIC

kafka-python (3.0.12) is a pure-Python client with its own implementation of the protocol,
so it checks the broker's encoding independently of librdkafka. It picks each request's
version from the broker's ApiVersions answer.

Prints one JSON line per step. After altering retention.ms it prints {"step": "altered"}
and waits for a line on stdin (the caller checks the change through the native protocol),
then goes on. Any unexpected answer raises, so the exit status is non-zero.
"""

import json
import sys

import kafka.errors as Errors
from kafka import KafkaAdminClient
from kafka.admin import AlterConfigOp, ConfigResource, ConfigResourceType

TIMEOUT_MS = 10000


def say(**fields):
    print(json.dumps(fields), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def raises(error, call):
    """`call()` raises `error` (a kafka.errors class); returns the exception."""
    try:
        call()
    except error as e:
        return e
    raise AssertionError(f"expected {error.__name__}, the call succeeded")


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="kafka-python-admin",
        request_timeout_ms=TIMEOUT_MS,
    )

    created = admin.create_topics(
        {topic: {"num_partitions": 3, "replication_factor": 1, "configs": {"retention.ms": "7200000"}}},
        timeout_ms=TIMEOUT_MS,
    )
    [entry] = created["topics"]
    expect(entry["name"] == topic and entry["error_code"] == 0, f"created: {created}")
    again = raises(
        Errors.TopicAlreadyExistsError,
        lambda: admin.create_topics({topic: {"num_partitions": 3}}, timeout_ms=TIMEOUT_MS),
    )
    described = admin.describe_topics([topic])
    [t] = described
    expect(t["error_code"] == 0, f"describe_topics: {t}")
    expect(sorted(p["partition_index"] for p in t["partitions"]) == [0, 1, 2], f"{t}")
    expect(all(p["leader_id"] == 0 for p in t["partitions"]), f"leaders: {t}")
    expect(topic in admin.list_topics(), "listed")
    say(step="created", topic=topic, again=type(again).__name__)

    resource = lambda configs=None: ConfigResource(ConfigResourceType.TOPIC, topic, configs)
    configs = admin.describe_configs([resource()], config_filter="all")["topic"][topic]
    values = {name: c["value"] for name, c in configs.items()}
    for key in ("retention.ms", "retention.bytes", "segment.bytes", "segment.ms", "cleanup.policy"):
        expect(key in values, f"{key} missing from {values}")
    expect(values["retention.ms"] == "7200000", f"retention.ms set at creation: {values}")
    expect(
        configs["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG",
        f"retention.ms source: {configs['retention.ms']}",
    )
    expect(configs["segment.bytes"]["config_source"] == "DEFAULT_CONFIG", f"{configs['segment.bytes']}")
    expect(not configs["cleanup.policy"]["read_only"], "cleanup.policy can be altered")
    # The client's default filter keeps only what differs from the defaults.
    modified = admin.describe_configs([resource()])["topic"][topic]
    expect(list(modified) == ["retention.ms"], f"modified configs: {modified}")
    # Named keys only.
    named = admin.describe_configs([resource(["segment.ms"])], config_filter="all")["topic"][topic]
    expect(list(named) == ["segment.ms"], f"named: {named}")
    say(step="described", configs=values)

    broker = ConfigResource(ConfigResourceType.BROKER, "0")
    broker_configs = admin.describe_configs([broker], config_filter="all")["broker"]["0"]
    broker_values = {n: c["value"] for n, c in broker_configs.items()}
    expect(broker_values.get("log.cleanup.policy") == "delete", f"broker: {broker_values}")
    # The defaults that come from eventflowd's flags are static broker configs.
    for key in ("log.retention.ms", "log.retention.bytes", "log.segment.bytes", "log.roll.ms"):
        expect(
            broker_configs[key]["config_source"] == "STATIC_BROKER_CONFIG",
            f"{key}: {broker_configs}",
        )
    say(step="broker", configs=broker_values)

    missing = ConfigResource(ConfigResourceType.TOPIC, topic + "-missing")
    # kafka-python drops a resource's error code (UNKNOWN_TOPIC_OR_PARTITION here, which
    # tests/kafka_admin.rs checks): the unknown topic comes back without configs.
    unknown = admin.describe_configs([missing], config_filter="all")
    expect(unknown == {"topic": {topic + "-missing": {}}}, f"unknown topic: {unknown}")
    say(step="unknown-topic")

    # The broker advertises IncrementalAlterConfigs, so alter_configs uses it.
    result = admin.alter_configs([resource({"retention.ms": "3600000"})])
    expect(result == {"topic": {topic: "OK"}}, f"alter: {result}")
    configs = admin.describe_configs([resource(["retention.ms"])])["topic"][topic]
    expect(configs["retention.ms"]["value"] == "3600000", f"after alter: {configs}")
    say(step="altered", retention_ms=configs["retention.ms"]["value"])
    sys.stdin.readline()

    result = admin.reset_configs([resource(["retention.ms"])])
    expect(result == {"topic": {topic: "OK"}}, f"reset: {result}")
    configs = admin.describe_configs([resource(["retention.ms"])], config_filter="all")
    configs = configs["topic"][topic]
    expect(configs["retention.ms"]["value"] != "3600000", f"after reset: {configs}")
    say(step="reset", retention_ms=configs["retention.ms"]["value"])

    # Refusals come back in the resource's result, with the broker's message.
    result = admin.alter_configs([resource({"cleanup.policy": "shred"})], raise_on_unknown=False)
    text = result["topic"][topic]
    expect(
        "InvalidConfigurationError" in text and "is not a policy" in text,
        f"shred: {result}",
    )
    result = admin.alter_configs(
        [resource({"retention.ms": (AlterConfigOp.APPEND, "1")})], raise_on_unknown=False
    )
    expect("InvalidRequestError" in result["topic"][topic], f"append: {result}")
    result = admin.alter_configs([resource({"no.such.key": "1"})], raise_on_unknown=False)
    expect("InvalidConfigurationError" in result["topic"][topic], f"unknown key: {result}")
    say(step="alter-refused", compact=text)

    # The non-incremental AlterConfigs (api 33) is not advertised: the client refuses to
    # send it, without a request on the wire, and the connection stays usable.
    refused = raises(
        Errors.IncompatibleBrokerVersion,
        lambda: admin.alter_configs([resource({"retention.ms": "60000"})], incremental=False),
    )
    configs = admin.describe_configs([resource(["retention.ms"])], config_filter="all")
    expect(configs["topic"][topic]["retention.ms"]["value"] != "60000", f"{configs}")
    say(step="legacy-alter-not-advertised", error=type(refused).__name__)

    cluster = admin.describe_cluster()
    port = int(bootstrap.rsplit(":", 1)[1])
    expect(cluster["cluster_id"] == "eventflow", f"cluster: {cluster}")
    expect(cluster["controller_id"] == 0, f"controller: {cluster}")
    expect(
        [(b["broker_id"], b["port"]) for b in cluster["brokers"]] == [(0, port)],
        f"brokers: {cluster['brokers']}",
    )
    say(step="cluster", cluster_id=cluster["cluster_id"])

    refused = raises(
        Errors.InvalidPartitionsError,
        lambda: admin.create_partitions({topic: 6}, timeout_ms=TIMEOUT_MS),
    )
    expect("cannot add partitions" in str(refused), f"create_partitions: {refused}")
    say(step="partitions-refused")

    deleted = admin.delete_topics([topic], timeout_ms=TIMEOUT_MS)
    expect([(t["name"], t["error_code"]) for t in deleted["topics"]] == [(topic, 0)], f"{deleted}")
    expect(topic not in admin.list_topics(), f"{topic} still listed")
    raises(
        Errors.UnknownTopicOrPartitionError,
        lambda: admin.delete_topics([topic], timeout_ms=TIMEOUT_MS),
    )
    admin.close()
    say(step="deleted")


if __name__ == "__main__":
    main()
