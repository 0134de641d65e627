"""confluent-kafka over TLS against eventflowd: SASL_SSL with SCRAM, an untrusted CA
refused, and plaintext refused by the TLS listener.

Usage: tls.py BOOTSTRAP CA_PEM OTHER_CA_PEM ADMIN_USER ADMIN_PASSWORD TOPIC

The broker speaks TLS on its Kafka listener with a certificate CA_PEM signed, and
requires SCRAM authentication; OTHER_CA_PEM is a CA that did not sign it. Prints one JSON line per step; any unexpected answer raises.
"""

import json
import sys

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT = 10


def say(**fields):
    print(json.dumps(fields), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    bootstrap, ca, other_ca, user, password, topic = sys.argv[1:7]
    secure = {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": ca,
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": password,
    }
    admin = AdminClient(secure)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=TIMEOUT)
    producer = Producer(secure)
    for i in range(1000):
        producer.produce(topic, value=f"v{i}".encode() * 50)
    expect(producer.flush(TIMEOUT) == 0, "records left unsent")
    say(step="sasl-ssl-produced")
    consumer = Consumer({**secure, "group.id": "tls-readers", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    values = []
    while len(values) < 1000:
        message = consumer.poll(TIMEOUT)
        expect(message is not None, f"only {len(values)} records came back")
        expect(message.error() is None, f"consume error: {message.error()}")
        values.append(message.value())
    consumer.close()
    expect(values == [f"v{i}".encode() * 50 for i in range(1000)], "records differ")
    say(step="sasl-ssl-consumed")

    # A CA that did not sign the broker's certificate: no metadata, ever.
    try:
        AdminClient({**secure, "ssl.ca.location": other_ca}).list_topics(timeout=3)
        raise AssertionError("a broker certificate no trusted CA signed was accepted")
    except KafkaException:
        pass
    say(step="untrusted-refused")

    plaintext = {**secure, "security.protocol": "SASL_PLAINTEXT"}
    plaintext.pop("ssl.ca.location")
    try:
        AdminClient(plaintext).list_topics(timeout=3)
        raise AssertionError("plaintext was served on the TLS listener")
    except KafkaException:
        pass
    say(step="plaintext-refused")


if __name__ == "__main__":
    main()
