"""Consumes one partition with kafka-python, without a consumer group.

Usage: kafka_python_consume.py BOOTSTRAP TOPIC COUNT
  Assigns partition 0 (group_id=None, no commits), seeks to the beginning
  and prints one JSON list of {"offset", "key", "value", "headers",
  "timestamp"} for the first COUNT records (fails if they do not all arrive
  in 30 s).
Usage: kafka_python_consume.py BOOTSTRAP TOPIC COUNT tail
  Seeks to the end instead, prints "ready" once its position is known,
  then reads COUNT records published after that.
"""

import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
tail = len(sys.argv) > 4 and sys.argv[4] == "tail"

consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    group_id=None,
    enable_auto_commit=False,
)
tp = TopicPartition(topic, 0)
consumer.assign([tp])
if tail:
    consumer.seek_to_end(tp)
    # Resolves the end now (ListOffsets), before anything is produced.
    consumer.position(tp)
    print("ready", flush=True)
else:
    consumer.seek_to_beginning(tp)

out = []
deadline = time.monotonic() + 30
while len(out) < count and time.monotonic() < deadline:
    for records in consumer.poll(timeout_ms=1000).values():
        for r in records:
            out.append(
                {
                    "offset": r.offset,
                    "key": r.key.decode() if r.key is not None else None,
                    "value": r.value.decode(),
                    "headers": [[k, v.decode()] for k, v in r.headers],
                    "timestamp": r.timestamp,
                }
            )
consumer.close()
if len(out) < count:
    sys.exit("only %d of %d records arrived: %s" % (len(out), count, out))
print(json.dumps(out[:count]))
