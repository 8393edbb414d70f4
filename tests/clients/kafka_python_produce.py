"""Produces with kafka-python at its default settings (idempotent, acks=all).

Usage: kafka_python_produce.py BOOTSTRAP TOPIC COUNT
  Sends COUNT records (value vN, key kN%3, header h=xN) and prints one JSON
  list of {"partition", "offset"} in send order.
Usage: kafka_python_produce.py BOOTSTRAP TOPIC forever
  Sends until killed, one record at a time, printing each acknowledged
  value on its own line as soon as the gateway acknowledged it.
"""

import json
import sys

from kafka import KafkaProducer

bootstrap, topic, count = sys.argv[1], sys.argv[2], sys.argv[3]
producer = KafkaProducer(bootstrap_servers=bootstrap)

if count == "forever":
    i = 0
    while True:
        value = b"v%d" % i
        try:
            producer.send(topic, value=value).get(timeout=10)
        except Exception as e:  # the gateway went away: stop here
            print("error %r" % e, file=sys.stderr, flush=True)
            break
        print(value.decode(), flush=True)
        i += 1
else:
    futures = [
        producer.send(
            topic,
            key=b"k%d" % (i % 3),
            value=b"v%d" % i,
            headers=[("h", b"x%d" % i)],
        )
        for i in range(int(count))
    ]
    results = [f.get(timeout=30) for f in futures]
    producer.close()
    print(json.dumps([{"partition": r.partition, "offset": r.offset} for r in results]))
