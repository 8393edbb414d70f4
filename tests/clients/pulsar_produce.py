"""Publishes with the official Pulsar client, batching on (the Java
client's default; the Python client's is off), as a Pulsar application
does.

Usage: pulsar_produce.py SERVICE_URL TOPIC COUNT
  Sends COUNT messages at once (payload vN, partition key kN%3, properties
  h=xN and n=N, event time 1700000000000 + N), so that they travel in
  batches, and waits until all are acknowledged; prints one JSON list of
  the message ids as strings, "(ledger,entry,partition,batch_index)".
"""

import json
import sys
import threading

import pulsar

url, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
# The client logs to stdout; only errors, and the JSON comes last.
client = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
producer = client.create_producer(topic, batching_enabled=True)
ids = [None] * count
done = threading.Semaphore(0)


def acknowledged(i):
    def callback(result, message_id):
        ids[i] = str(message_id) if result == pulsar.Result.Ok else "error: %s" % result
        done.release()

    return callback


for i in range(count):
    producer.send_async(
        b"v%d" % i,
        acknowledged(i),
        partition_key="k%d" % (i % 3),
        properties={"h": "x%d" % i, "n": str(i)},
        event_timestamp=1700000000000 + i,
    )
producer.flush()
for _ in range(count):
    if not done.acquire(timeout=30):
        sys.exit("not every message was acknowledged: %s" % ids)
client.close()
print(json.dumps(ids))
