"""Consumes one partition with confluent-kafka (librdkafka), without
committing: assign() from the beginning, enable.auto.commit off.

Usage: confluent_consume.py BOOTSTRAP TOPIC COUNT [--tail]
  Prints one JSON list of {"offset", "key", "value", "headers",
  "timestamp"} for the first COUNT records (fails if they do not all arrive
  in 30 s).
  --tail: starts at the partition's end (its high watermark, asked with
  ListOffsets), prints "ready", then reads COUNT records published after.
"""

import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
tail = sys.argv[4:] == ["--tail"]

consumer = Consumer(
    {
        "bootstrap.servers": bootstrap,
        # Required by the library; assign() without commits never uses it.
        "group.id": "unused",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
    }
)
if tail:
    _, end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    consumer.assign([TopicPartition(topic, 0, end)])
    print("ready", flush=True)
else:
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])

out = []
deadline = time.monotonic() + 30
while len(out) < count and time.monotonic() < deadline:
    m = consumer.poll(1.0)
    if m is None:
        continue
    if m.error():
        sys.exit("consumer error: %s" % m.error())
    out.append(
        {
            "offset": m.offset(),
            "key": m.key().decode() if m.key() is not None else None,
            "value": m.value().decode(),
            "headers": [[k, v.decode()] for k, v in (m.headers() or [])],
            "timestamp": m.timestamp()[1],
        }
    )
consumer.close()
if len(out) < count:
    sys.exit("only %d of %d records arrived: %s" % (len(out), count, out))
print(json.dumps(out[:count]))
