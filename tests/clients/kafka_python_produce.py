"""Produces with kafka-python at its default settings (idempotent, acks=all).

Usage: kafka_python_produce.py BOOTSTRAP TOPIC COUNT [spread]
  Sends COUNT records (value vN, key kN%3, header h=xN) and prints one JSON
  list of {"partition", "offset"} in send order. With "spread", record N
  goes to partition N % (the topic's partition count) rather than by key.
  --compression TYPE (anywhere): kafka-python's compression_type, e.g.
  gzip (the one codec it needs no extra package for), with linger_ms=100 so
  that records share batches: kafka-python sends a batch uncompressed when
  compressing does not make it smaller, as with a single small record.
  --repeat-header (anywhere): each record carries h=xN, then z=zN, then h
  again (h=again), to check that repeated header keys keep their order.
  --acks N (anywhere): a producer that is not idempotent (acks below all
  requires it) with acks=N, 0 or 1. With acks=0 the gateway answers
  nothing, and kafka-python reports offsets it makes up, counted from 0
  in each batch.
Usage: kafka_python_produce.py BOOTSTRAP TOPIC forever
  Sends until killed, one record at a time, printing each acknowledged
  value on its own line as soon as the gateway acknowledged it.
"""

import json
import sys

from kafka import KafkaProducer

args = sys.argv[1:]
compression = None
if "--compression" in args:
    at = args.index("--compression")
    compression = args[at + 1]
    del args[at : at + 2]
settings = {}
if "--acks" in args:
    at = args.index("--acks")
    settings.update(acks=int(args[at + 1]), enable_idempotence=False)
    del args[at : at + 2]
repeat_header = "--repeat-header" in args
if repeat_header:
    args.remove("--repeat-header")
bootstrap, topic, count = args[0], args[1], args[2]
if compression is not None:
    settings.update(compression_type=compression, linger_ms=100)
producer = KafkaProducer(bootstrap_servers=bootstrap, **settings)

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
    spread = len(args) > 3 and args[3] == "spread"
    partitions = sorted(producer.partitions_for(topic)) if spread else []
    futures = [
        producer.send(
            topic,
            key=b"k%d" % (i % 3),
            value=b"v%d" % i,
            headers=(
                [("h", b"x%d" % i), ("z", b"z%d" % i), ("h", b"again")]
                if repeat_header
                else [("h", b"x%d" % i)]
            ),
            partition=partitions[i % len(partitions)] if spread else None,
        )
        for i in range(int(count))
    ]
    results = [f.get(timeout=30) for f in futures]
    producer.close()
    print(json.dumps([{"partition": r.partition, "offset": r.offset} for r in results]))
