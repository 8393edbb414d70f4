"""Records larger than a consumer's fetch limits still arrive, one per
fetch (Kafka's rule: the first record of a response goes whatever its size).

Usage: kafka_python_large_records.py BOOTSTRAP TOPIC COUNT BYTES
  Produces COUNT records of BYTES bytes each (value "vN" padded with "x"),
  consumes them with fetch_max_bytes and max_partition_fetch_bytes of 1024,
  and prints one JSON list of {"offset", "size", "prefix"}.
"""

import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap, topic = sys.argv[1], sys.argv[2]
count, size = int(sys.argv[3]), int(sys.argv[4])

producer = KafkaProducer(bootstrap_servers=bootstrap)
for f in [producer.send(topic, value=(b"v%d" % i).ljust(size, b"x")) for i in range(count)]:
    f.get(timeout=30)
producer.close()

consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    group_id=None,
    enable_auto_commit=False,
    fetch_max_bytes=1024,
    max_partition_fetch_bytes=1024,
)
tp = TopicPartition(topic, 0)
consumer.assign([tp])
consumer.seek_to_beginning(tp)
out = []
deadline = time.monotonic() + 30
while len(out) < count and time.monotonic() < deadline:
    for records in consumer.poll(timeout_ms=1000).values():
        for r in records:
            out.append({"offset": r.offset, "size": len(r.value), "prefix": r.value[:4].decode()})
consumer.close()
if len(out) < count:
    sys.exit("only %d of %d records arrived: %s" % (len(out), count, out))
print(json.dumps(out[:count]))
