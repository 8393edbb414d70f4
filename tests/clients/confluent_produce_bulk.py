"""Produces many records with confluent-kafka (librdkafka), acks=all, not
idempotent (so librdkafka keeps as many requests in flight as the broker
reads), as fast as the broker takes them.

Usage: confluent_produce_bulk.py BOOTSTRAP TOPIC COUNT SIZE TIMEOUT NAME
  Sends COUNT records of SIZE bytes (value: NAME-<number>, then dots) to
  partition 0: the first, then, once it is acknowledged, prints "started"
  and waits for a line on standard input before it sends the rest and
  waits up to TIMEOUT seconds for every acknowledgement. Prints one JSON
  object: {"acknowledged": N, "errors": [the first few errors]}; exits
  non-zero if any record was not acknowledged.
"""

import json
import sys

from confluent_kafka import Producer

bootstrap, topic = sys.argv[1], sys.argv[2]
count, size, timeout = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
name = sys.argv[6]

producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
acknowledged = 0
errors = []
started = False


def report(err, _msg):
    global acknowledged, started
    if err is not None:
        errors.append(str(err))
        return
    acknowledged += 1
    if not started:
        started = True
        print("started", flush=True)


def send(i):
    value = ("%s-%d" % (name, i)).encode().ljust(size, b".")
    while True:
        try:
            producer.produce(topic, value=value, partition=0, on_delivery=report)
            return
        except BufferError:
            # The client's queue is full: the broker is slow; wait for room.
            producer.poll(0.1)


send(0)
producer.flush(timeout)
if not started:
    sys.exit("the first record was not acknowledged: %s" % errors[:1])
sys.stdin.readline()
for i in range(1, count):
    send(i)
    producer.poll(0)
producer.flush(timeout)
print(json.dumps({"acknowledged": acknowledged, "errors": errors[:5]}), flush=True)
sys.exit(0 if acknowledged == count else 1)
