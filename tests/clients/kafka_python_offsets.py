"""Lists offsets with kafka-python: earliest, latest and by time.

Usage: kafka_python_offsets.py BOOTSTRAP TOPIC FIRST SECOND
  Produces FIRST records, takes a time T after they were acknowledged,
  produces SECOND more, and prints one JSON object: "beginning" and "end"
  offsets of partition 0, "at_t" (offset and timestamp of
  offsets_for_times at T), "future" (offsets_for_times an hour ahead,
  null when there is none) and "t".
"""

import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap, topic = sys.argv[1], sys.argv[2]
first, second = int(sys.argv[3]), int(sys.argv[4])


def produce(producer, start, n):
    futures = [producer.send(topic, value=b"v%d" % i) for i in range(start, start + n)]
    for f in futures:
        f.get(timeout=30)


producer = KafkaProducer(bootstrap_servers=bootstrap)
produce(producer, 0, first)
# A time after every stored publish time of the first records and before
# any of the second's: the clock moves on by a millisecond first.
t = int(time.time() * 1000) + 1
while int(time.time() * 1000) <= t:
    time.sleep(0.001)
produce(producer, first, second)
producer.close()

consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
tp = TopicPartition(topic, 0)
at_t = consumer.offsets_for_times({tp: t})[tp]
future = consumer.offsets_for_times({tp: int(time.time() * 1000) + 3600 * 1000})[tp]
out = {
    "beginning": consumer.beginning_offsets([tp])[tp],
    "end": consumer.end_offsets([tp])[tp],
    "at_t": {"offset": at_t.offset, "timestamp": at_t.timestamp} if at_t else None,
    "future": {"offset": future.offset} if future else None,
    "t": t,
}
consumer.close()
print(json.dumps(out))
