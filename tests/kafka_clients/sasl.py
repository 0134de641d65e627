"""SASL authentication and SCRAM user management against eventflowd with confluent-kafka.

Usage: sasl.py BOOTSTRAP ADMIN_USER ADMIN_PASSWORD TOPIC

The broker requires authentication on its Kafka listener, offers SCRAM-SHA-256,
SCRAM-SHA-512 and PLAIN, and has ADMIN_USER as its bootstrap superuser. Prints one JSON line
per step; any unexpected answer raises, so the exit status is non-zero.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    NewTopic,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

TIMEOUT = 10


def say(**fields):
    print(json.dumps(fields), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def sasl(bootstrap, user, password, mechanism):
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }


def auth_error(config):
    """Connects with `config`; returns the error librdkafka reports to error_cb (the
    connection must not get as far as metadata)."""
    errors = []
    config = dict(config, error_cb=errors.append)
    producer = Producer(config)
    try:
        producer.list_topics(timeout=3)
        raise AssertionError("metadata was served")
    except KafkaException:
        pass
    deadline = time.time() + TIMEOUT
    while not errors and time.time() < deadline:
        producer.poll(0.1)
    expect(errors, "the connection was not refused")
    auth = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
    return (auth or errors)[0]


def main():
    bootstrap, admin_user, admin_password, topic = sys.argv[1:5]

    # Without SASL the broker closes the connection before answering metadata.
    err = auth_error({"bootstrap.servers": bootstrap})
    say(step="unauthenticated-refused", error=err.str())

    admin = AdminClient(sasl(bootstrap, admin_user, admin_password, "SCRAM-SHA-512"))
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=TIMEOUT)
    upsert = UserScramCredentialUpsertion(
        "alice", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192), b"alice-secret"
    )
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=TIMEOUT)
    described = admin.describe_user_scram_credentials().result(timeout=TIMEOUT)
    alice = described["alice"]
    infos = [(i.mechanism, i.iterations) for i in alice.scram_credential_infos]
    expect(infos == [(ScramMechanism.SCRAM_SHA_256, 8192)], f"alice's credentials: {infos}")
    expect(admin_user in described, f"the superuser is not listed: {list(described)}")
    say(step="alice-added", users=sorted(described))

    # alice produces and consumes with SCRAM-SHA-256, then with PLAIN.
    producer = Producer(sasl(bootstrap, "alice", "alice-secret", "SCRAM-SHA-256"))
    for i in range(10):
        producer.produce(topic, value=f"m{i}".encode())
    expect(producer.flush(TIMEOUT) == 0, "alice's records were not all delivered")
    consumer = Consumer(
        dict(
            sasl(bootstrap, "alice", "alice-secret", "PLAIN"),
            **{"group.id": "sasl-group", "auto.offset.reset": "earliest"},
        )
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values = []
    deadline = time.time() + TIMEOUT
    while len(values) < 10 and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.append(msg.value().decode())
    consumer.close()
    expect(values == [f"m{i}" for i in range(10)], f"consumed {values}")
    say(step="alice-produced-and-consumed")

    # Failures: wrong password, unknown user, a hash alice has no credential of, a
    # mechanism the listener does not offer.
    for what, config in [
        ("wrong-password", sasl(bootstrap, "alice", "wrong", "SCRAM-SHA-256")),
        ("unknown-user", sasl(bootstrap, "mallory", "alice-secret", "SCRAM-SHA-256")),
        ("wrong-plain-password", sasl(bootstrap, "alice", "wrong", "PLAIN")),
        ("no-sha512-credential", sasl(bootstrap, "alice", "alice-secret", "SCRAM-SHA-512")),
    ]:
        err = auth_error(config)
        expect(err.code() == KafkaError._AUTHENTICATION, f"{what}: {err.code()} {err.str()}")
        expect("Authentication failed" in err.str(), f"{what}: {err.str()}")
        say(step=what, error=err.str())
    err = auth_error(
        dict(
            sasl(bootstrap, "alice", "alice-secret", "OAUTHBEARER"),
            **{
                "enable.sasl.oauthbearer.unsecure.jwt": True,
                "sasl.oauthbearer.config": "principal=alice",
            },
        )
    )
    expect("OAUTHBEARER" in err.str() or "mechanism" in err.str(), err.str())
    say(step="unknown-mechanism", error=err.str())

    # alice is no superuser: she may not manage users.
    alice_admin = AdminClient(sasl(bootstrap, "alice", "alice-secret", "SCRAM-SHA-256"))
    upsert_bob = UserScramCredentialUpsertion(
        "bob", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"bob-secret"
    )
    try:
        alice_admin.alter_user_scram_credentials([upsert_bob])["bob"].result(timeout=TIMEOUT)
        raise AssertionError("alice added a user")
    except KafkaException as e:
        expect(
            e.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED,
            f"alice adding bob: {e.args[0].str()}",
        )
    say(step="alice-may-not-manage-users")

    # Removed, alice can no longer log in.
    deletion = UserScramCredentialDeletion("alice", ScramMechanism.SCRAM_SHA_256)
    for future in admin.alter_user_scram_credentials([deletion]).values():
        future.result(timeout=TIMEOUT)
    err = auth_error(sasl(bootstrap, "alice", "alice-secret", "SCRAM-SHA-256"))
    expect(err.code() == KafkaError._AUTHENTICATION, err.str())
    say(step="alice-removed")


if __name__ == "__main__":
    main()
