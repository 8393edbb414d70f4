"""Produces then consumes with SASL/PLAIN, or without SASL, and reports what
happened rather than failing, so a test can assert a refusal.

Usage: kafka_sasl.py LIBRARY BOOTSTRAP TOPIC COUNT
  LIBRARY: kafka-python or confluent (librdkafka).
  The SASL password comes from the environment variable KAFKA_SASL_PASSWORD
  (the user name is "any"); without it the client connects without SASL.
  KAFKA_SASL_MECHANISM picks another mechanism than PLAIN (librdkafka).
  Sends COUNT records (value vN) to partition 0 of TOPIC, then reads them
  back from the beginning, and prints one JSON object:
    {"values": ["v0", ...]}               everything went through
    {"error": NAME, "message": TEXT}       the client gave up; NAME is the
                                           exception's class (kafka-python)
                                           or the error code's name
                                           (librdkafka)
  With kafka-python, "log" holds what the library logged at WARNING and
  above: it reports a refused authentication there, then gives up on
  bootstrapping with a timeout.
"""

import json
import logging
import os
import sys
import time

library, bootstrap, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
password = os.environ.get("KAFKA_SASL_PASSWORD")
values = ["v%d" % i for i in range(count)]



class Remember(logging.Handler):
    """Keeps what a library logs, for the report."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


logged = Remember()
logging.getLogger().addHandler(logged)


def report(**fields):
    if logged.lines:
        fields["log"] = logged.lines
    print(json.dumps(fields), flush=True)
    sys.exit(0)


def kafka_python():
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    config = {"bootstrap_servers": bootstrap, "request_timeout_ms": 5000}
    if password is not None:
        config.update(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username="any",
            sasl_plain_password=password,
        )
    try:
        producer = KafkaProducer(max_block_ms=8000, bootstrap_timeout_ms=5000, **config)
        for v in values:
            producer.send(topic, value=v.encode(), partition=0).get(timeout=10)
        producer.close()
        consumer = KafkaConsumer(enable_auto_commit=False, **config)
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        got = []
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                got.extend(r.value.decode() for r in records)
        consumer.close()
    except Exception as e:  # the report says which
        report(error=type(e).__name__, message=str(e))
    report(values=got)


def confluent():
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

    errors = []

    def on_error(err):
        errors.append(err)

    config = {"bootstrap.servers": bootstrap, "error_cb": on_error}
    if password is not None:
        config.update(
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanisms": os.environ.get("KAFKA_SASL_MECHANISM", "PLAIN"),
                "sasl.username": "any",
                "sasl.password": password,
            }
        )

    def give_up_on_error():
        if errors:
            e = errors[0]
            report(error=e.name(), message=e.str())

    delivered = []
    producer = Producer(dict(config, **{"message.timeout.ms": 10000}))
    for v in values:
        producer.produce(topic, value=v.encode(), partition=0, on_delivery=lambda err, m: delivered.append(err))
    deadline = time.monotonic() + 15
    while len(delivered) < count and time.monotonic() < deadline:
        producer.poll(0.5)
        give_up_on_error()
    failed = [e for e in delivered if e is not None]
    if failed or len(delivered) < count:
        give_up_on_error()
        report(error="delivery", message="%d of %d delivered: %s" % (len(delivered) - len(failed), count, failed[:1]))

    consumer = Consumer(
        dict(config, **{"group.id": "unused", "enable.auto.commit": False, "enable.auto.offset.store": False})
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        m = consumer.poll(1.0)
        give_up_on_error()
        if m is None:
            continue
        if m.error():
            report(error=m.error().name(), message=m.error().str())
        got.append(m.value().decode())
    consumer.close()
    report(values=got)


if library == "kafka-python":
    kafka_python()
elif library == "confluent":
    confluent()
else:
    sys.exit("unknown library %s" % library)
