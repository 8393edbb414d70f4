"""Consumes in a consumer group with kafka-python (subscribe, not assign),
commits, and leaves.

Usage: kafka_python_group_consume.py BOOTSTRAP TOPIC GROUP COUNT [HOLD_SECONDS]
  Subscribes TOPIC in GROUP (auto_offset_reset=earliest, manual commits),
  polls until COUNT records arrived (failing after 60 s), commits them
  synchronously, then (with HOLD_SECONDS) keeps polling that long, still a
  member, and prints one JSON object: "records", a list of {"partition",
  "offset", "value"} in arrival order, "assigned", the partitions it held at
  the end, and "committed", the group's committed offset per partition.
  Each time the group assigns it partitions it prints a line
  "assigned [p, ...]" as it happens.
"""

import json
import sys
import time

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

bootstrap, topic, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
hold = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0



class Announce(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        print("assigned %s" % sorted(tp.partition for tp in assigned), flush=True)


consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    group_id=group,
    auto_offset_reset="earliest",
    enable_auto_commit=False,
)
consumer.subscribe([topic], listener=Announce())
records = []
deadline = time.monotonic() + 60
while len(records) < count:
    if time.monotonic() > deadline:
        sys.exit("only %d of %d records within 60 s" % (len(records), count))
    for batch in consumer.poll(timeout_ms=500).values():
        for r in batch:
            records.append(
                {"partition": r.partition, "offset": r.offset, "value": r.value.decode()}
            )
consumer.commit()
end = time.monotonic() + hold
while time.monotonic() < end:
    for batch in consumer.poll(timeout_ms=200).values():
        for r in batch:
            records.append(
                {"partition": r.partition, "offset": r.offset, "value": r.value.decode()}
            )
    consumer.commit()
assigned = sorted(tp.partition for tp in consumer.assignment())
committed = {
    str(p): consumer.committed(TopicPartition(topic, p))
    for p in sorted(consumer.partitions_for_topic(topic) or [])
}
consumer.close()
print(json.dumps({"records": records, "assigned": assigned, "committed": committed}))
