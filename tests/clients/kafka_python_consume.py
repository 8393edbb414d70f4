"""Consumes one partition with kafka-python, without a consumer group.

Usage: kafka_python_consume.py BOOTSTRAP TOPIC COUNT [--partitions N]
                               [--tail | --seek OFFSET]
  Assigns partition 0 (group_id=None, no commits), seeks to the beginning
  and prints one JSON list of {"partition", "offset", "key", "value",
  "headers", "timestamp"} for the first COUNT records (fails if they do not
  all arrive in 30 s).
  --partitions N: assigns partitions 0..N-1 instead (with --seek or --tail,
  only partition 0 is read).
  --tail: seeks to the end instead, prints "ready" once its position is
  known, then reads COUNT records published after that.
  --seek OFFSET: starts at OFFSET, resetting to the earliest offset when
  the gateway answers that it is out of range.
"""

import argparse
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition

parser = argparse.ArgumentParser()
parser.add_argument("bootstrap")
parser.add_argument("topic")
parser.add_argument("count", type=int)
parser.add_argument("--tail", action="store_true")
parser.add_argument("--seek", type=int)
parser.add_argument("--partitions", type=int, default=1)
args = parser.parse_args()

consumer = KafkaConsumer(
    bootstrap_servers=args.bootstrap,
    group_id=None,
    enable_auto_commit=False,
    auto_offset_reset="earliest",
)
tp = TopicPartition(args.topic, 0)
if args.partitions > 1:
    consumer.assign([TopicPartition(args.topic, p) for p in range(args.partitions)])
    consumer.seek_to_beginning()
else:
    consumer.assign([tp])
if args.tail:
    consumer.seek_to_end(tp)
    # Resolves the end now (ListOffsets), before anything is produced.
    consumer.position(tp)
    print("ready", flush=True)
elif args.seek is not None:
    consumer.seek(tp, args.seek)
elif args.partitions == 1:
    consumer.seek_to_beginning(tp)

out = []
deadline = time.monotonic() + 30
while len(out) < args.count and time.monotonic() < deadline:
    for records in consumer.poll(timeout_ms=1000).values():
        for r in records:
            out.append(
                {
                    "partition": r.partition,
                    "offset": r.offset,
                    "key": r.key.decode() if r.key is not None else None,
                    "value": r.value.decode(),
                    "headers": [[k, v.decode()] for k, v in r.headers],
                    "timestamp": r.timestamp,
                }
            )
consumer.close()
if len(out) < args.count:
    sys.exit("only %d of %d records arrived: %s" % (len(out), args.count, out))
print(json.dumps(out[: args.count]))
