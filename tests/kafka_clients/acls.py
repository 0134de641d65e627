"""ACLs on eventflowd's Kafka listener with confluent-kafka: an administrator manages them
with CreateAcls / DescribeAcls / DeleteAcls, and an ordinary user's producer, consumer and
admin client are allowed and refused by them.

Usage: acls.py BOOTSTRAP ADMIN_PASSWORD

The broker requires authentication, runs with --authorizer on, and has `admin` as its
bootstrap superuser. Prints one JSON line per step; any unexpected answer raises.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

TIMEOUT = 10


def say(**fields):
    print(json.dumps(fields), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def sasl(bootstrap, user, password):
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": password,
    }


def allow(resource_type, name, operation, pattern=ResourcePatternType.LITERAL):
    return AclBinding(
        resource_type, name, pattern, "User:alice", "*", operation, AclPermissionType.ALLOW
    )


def delivered(config, topic, values):
    """Produces `values` to `topic`; returns the delivery errors (None for success)."""
    outcomes = []
    producer = Producer(dict(config, **{"message.timeout.ms": 5000}))
    for v in values:
        producer.produce(topic, value=v.encode(), on_delivery=lambda err, _m: outcomes.append(err))
    producer.flush(TIMEOUT)
    expect(len(outcomes) == len(values), f"{topic}: {len(outcomes)} outcomes")
    return outcomes


def main():
    bootstrap, admin_password = sys.argv[1:3]
    admin = AdminClient(sasl(bootstrap, "admin", admin_password))
    for topic in ["orders", "secret"]:
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=TIMEOUT)
    upsert = UserScramCredentialUpsertion(
        "alice", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"alice-secret"
    )
    for f in admin.alter_user_scram_credentials([upsert]).values():
        f.result(timeout=TIMEOUT)
    bindings = [
        allow(ResourceType.TOPIC, "orders", AclOperation.WRITE),
        allow(ResourceType.TOPIC, "orders", AclOperation.READ),
        allow(ResourceType.GROUP, "team", AclOperation.READ, ResourcePatternType.PREFIXED),
    ]
    for f in admin.create_acls(bindings).values():
        f.result(timeout=TIMEOUT)
    everything = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
        AclOperation.ANY, AclPermissionType.ANY,
    )
    listed = admin.describe_acls(everything).result(timeout=TIMEOUT)
    expect(sorted(map(str, listed)) == sorted(map(str, bindings)), f"described {listed}")
    say(step="acls-created", count=len(listed))

    alice = sasl(bootstrap, "alice", "alice-secret")
    expect(delivered(alice, "orders", ["a", "b"]) == [None, None], "alice could not write")
    errors = delivered(alice, "secret", ["x"])
    expect(
        errors[0] is not None and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED,
        f"secret: {errors}",
    )
    topics = AdminClient(alice).list_topics(timeout=TIMEOUT).topics
    expect(list(topics) == ["orders"], f"alice sees {list(topics)}")
    say(step="alice-writes-orders-only")

    consumer = Consumer(dict(alice, **{"group.id": "team-1", "auto.offset.reset": "earliest"}))
    consumer.subscribe(["orders"])
    values = []
    deadline = time.time() + 2 * TIMEOUT
    while len(values) < 2 and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.append(msg.value().decode())
    consumer.close()
    expect(values == ["a", "b"], f"team-1 read {values}")
    outsider = Consumer(dict(alice, **{"group.id": "outsiders", "auto.offset.reset": "earliest"}))
    outsider.subscribe(["orders"])
    refused = None
    deadline = time.time() + TIMEOUT
    while refused is None and time.time() < deadline:
        msg = outsider.poll(0.5)
        if msg is not None and msg.error():
            refused = msg.error()
    outsider.close()
    expect(
        refused is not None and refused.code() == KafkaError.GROUP_AUTHORIZATION_FAILED,
        f"outsiders: {refused}",
    )
    say(step="alice-reads-in-her-groups-only")

    alice_admin = AdminClient(alice)
    try:
        for f in alice_admin.create_acls(
            [allow(ResourceType.TOPIC, "secret", AclOperation.ALL)]
        ).values():
            f.result(timeout=TIMEOUT)
        raise AssertionError("alice granted herself an ACL")
    except KafkaException as e:
        expect(e.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED, e.args[0].str())
    say(step="alice-may-not-manage-acls")

    write_filter = AclBindingFilter(
        ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL, "User:alice", None,
        AclOperation.WRITE, AclPermissionType.ANY,
    )
    [deleted] = [f.result(timeout=TIMEOUT) for f in admin.delete_acls([write_filter]).values()]
    expect(len(deleted) == 1, f"deleted {deleted}")
    errors = delivered(alice, "orders", ["c"])
    expect(
        errors[0] is not None and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED,
        f"orders after the delete: {errors}",
    )
    # acks=0 has no answer to refuse in: the broker closes the connection (the caller
    # checks its log).
    fire_and_forget = Producer(dict(alice, **{"acks": 0}))
    fire_and_forget.produce("orders", value=b"y")
    fire_and_forget.flush(TIMEOUT)
    say(step="write-revoked")


if __name__ == "__main__":
    main()
