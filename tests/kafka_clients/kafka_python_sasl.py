"""kafka-python logging in to eventflowd with SASL (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN),
producing and consuming, and refused with a wrong password.

Usage: kafka_python_sasl.py BOOTSTRAP USER PASSWORD TOPIC

Prints one JSON line per step; any unexpected answer raises.
"""

import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

TIMEOUT_MS = 10000


def say(**fields):
    print(json.dumps(fields), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def sasl(bootstrap, user, password, mechanism):
    return dict(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_plain_username=user,
        sasl_plain_password=password,
        request_timeout_ms=TIMEOUT_MS,
    )


def main():
    bootstrap, user, password, topic = sys.argv[1:5]
    for i, mechanism in enumerate(["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]):
        producer = KafkaProducer(**sasl(bootstrap, user, password, mechanism))
        producer.send(topic, f"v{i}".encode()).get(timeout=10)
        producer.close()
        say(step="produced", mechanism=mechanism)
    consumer = KafkaConsumer(
        **sasl(bootstrap, user, password, "SCRAM-SHA-512"),
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    values = [m.value.decode() for m in consumer]
    consumer.close()
    expect(values == ["v0", "v1", "v2"], f"consumed {values}")
    say(step="consumed")
    # kafka-python reports a failed login as a failed bootstrap; the broker's log says why
    # (the caller checks it).
    try:
        KafkaProducer(
            **sasl(bootstrap, user, "wrong", "SCRAM-SHA-256"), bootstrap_timeout_ms=3000
        ).close()
        raise AssertionError("a wrong password was accepted")
    except KafkaError as e:
        say(step="wrong-password-refused", error=type(e).__name__)


if __name__ == "__main__":
    main()
