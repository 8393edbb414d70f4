"""Produces with confluent-kafka (librdkafka), compressed, idempotent,
acks=all, batching the records (linger.ms) so each batch holds many.

Usage: confluent_produce.py BOOTSTRAP TOPIC COUNT COMPRESSION [BATCH]
  COMPRESSION is librdkafka's compression.type: gzip, snappy, lz4, zstd or
  none. BATCH, when given, sends batches of at most BATCH records at once
  (linger.ms 0), so that several Produce requests are in flight (five at
  most, the idempotent producer's limit). Sends COUNT records (value vN, key kN%3, header h=xN, as
  kafka_python_produce.py does) to partition 0 and prints one JSON list of
  {"partition", "offset"} in send order; exits non-zero if any record
  failed.
  --acks N (anywhere): a producer that is not idempotent (acks below all
  requires it) with acks=N, 0 or 1. With acks=0 the gateway answers
  nothing and every record is reported at offset null (librdkafka knows
  none).
"""

import json
import sys

from confluent_kafka import KafkaException, Producer

args = sys.argv[1:]
acks = None
if "--acks" in args:
    at = args.index("--acks")
    acks = int(args[at + 1])
    del args[at : at + 2]
bootstrap, topic, count, compression = args[0], args[1], int(args[2]), args[3]
batch = int(args[4]) if len(args) > 4 else None

settings = {
    "bootstrap.servers": bootstrap,
    "compression.type": compression,
    "enable.idempotence": True,
    "acks": "all",
    # Long enough for all the records to go in one or a few batches.
    "linger.ms": 100,
}
if acks is not None:
    settings.update({"enable.idempotence": False, "acks": acks})
if batch is not None:
    settings.update({"linger.ms": 0, "batch.num.messages": batch})
producer = Producer(settings)

results = [None] * count
errors = []


def delivered(index):
    def report(err, msg):
        if err is not None:
            errors.append("record %d: %s" % (index, err))
        else:
            results[index] = {"partition": msg.partition(), "offset": msg.offset()}

    return report


for i in range(count):
    producer.produce(
        topic,
        key=b"k%d" % (i % 3),
        value=b"v%d" % i,
        headers=[("h", b"x%d" % i)],
        partition=0,
        on_delivery=delivered(i),
    )
remaining = producer.flush(30)
if remaining or errors:
    raise KafkaException(
        "%d records unacknowledged, %d failed; the first: %s"
        % (remaining, len(errors), errors[:3])
    )
print(json.dumps(results))
