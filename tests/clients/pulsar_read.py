"""Reads a topic from its earliest message with the official Pulsar client.

Usage: pulsar_read.py SERVICE_URL TOPIC COUNT
  Prints one JSON list of {"value", "key", "properties", "event_time"} for
  the first COUNT messages (fails if they do not all arrive in 30 s), or
  for every message the topic holds when COUNT is "all".
"""

import json
import sys

import pulsar

url, topic, count = sys.argv[1], sys.argv[2], sys.argv[3]
# The client logs to stdout; only errors, and the JSON comes last.
client = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
reader = client.create_reader(topic, pulsar.MessageId.earliest)
out = []
while (len(out) < int(count)) if count != "all" else reader.has_message_available():
    m = reader.read_next(timeout_millis=30000)
    out.append(
        {
            "value": m.data().decode(),
            "key": m.partition_key(),
            "properties": m.properties(),
            "event_time": m.event_timestamp(),
        }
    )
client.close()
print(json.dumps(out))
