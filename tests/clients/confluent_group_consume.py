"""Consumes in a consumer group with confluent-kafka (librdkafka):
subscribe, commit synchronously, close (leaving the group).

Usage: confluent_group_consume.py BOOTSTRAP TOPIC GROUP COUNT
  Subscribes TOPIC in GROUP (auto.offset.reset=earliest, no auto commit),
  polls until COUNT records arrived (failing after 60 s), commits, and
  prints one JSON object like kafka_python_group_consume.py's: "records"
  ({"partition", "offset", "value"} in arrival order), "assigned" and
  "committed" (the group's committed offset per assigned partition).
"""

import json
import sys
import time

from confluent_kafka import Consumer

bootstrap, topic, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

consumer = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
)
consumer.subscribe([topic])
records = []
deadline = time.monotonic() + 60
while len(records) < count:
    if time.monotonic() > deadline:
        sys.exit("only %d of %d records within 60 s" % (len(records), count))
    message = consumer.poll(0.5)
    if message is None:
        continue
    if message.error():
        sys.exit("consumer error: %s" % message.error())
    records.append(
        {
            "partition": message.partition(),
            "offset": message.offset(),
            "value": message.value().decode(),
        }
    )
consumer.commit(asynchronous=False)
assignment = consumer.assignment()
committed = {str(tp.partition): tp.offset for tp in consumer.committed(assignment, timeout=10)}
consumer.close()
print(
    json.dumps(
        {
            "records": records,
            "assigned": sorted(tp.partition for tp in assignment),
            "committed": committed,
        }
    )
)
