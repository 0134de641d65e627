"""kafka-python over TLS with SASL/SCRAM (SASL_SSL) against eventflowd.

Usage: kafka_python_tls.py BOOTSTRAP CA_PEM USER PASSWORD TOPIC

Prints one JSON line per step; any unexpected answer raises.
"""

import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def say(**fields):
    print(json.dumps(fields), flush=True)


def main():
    bootstrap, ca, user, password, topic = sys.argv[1:6]
    secure = dict(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_SSL",
        ssl_cafile=ca,
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user,
        sasl_plain_password=password,
        request_timeout_ms=10000,
    )
    producer = KafkaProducer(**secure)
    for i in range(100):
        producer.send(topic, f"p{i}".encode()).get(timeout=10)
    producer.close()
    say(step="produced")
    consumer = KafkaConsumer(**secure, consumer_timeout_ms=5000)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    values = [m.value.decode() for m in consumer]
    consumer.close()
    mine = [v for v in values if v.startswith("p")]
    if mine != [f"p{i}" for i in range(100)]:
        raise AssertionError(f"consumed {mine[:5]}... ({len(mine)})")
    say(step="consumed")


if __name__ == "__main__":
    main()
