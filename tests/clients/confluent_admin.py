"""Administers topics with confluent-kafka's AdminClient (librdkafka), as
an operator would: create, create again, validate only, add partitions,
describe configs, produce to a new partition, delete, delete again.

Usage: confluent_admin.py BOOTSTRAP TOPIC
  Prints one JSON object: each step's outcome ("ok" or Kafka's error code)
  and what was observed after it.
"""

import json
import sys

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

bootstrap, topic = sys.argv[1], sys.argv[2]
admin = AdminClient({"bootstrap.servers": bootstrap})
out = {}


def step(name, futures):
    """Waits for one admin call's only future; records "ok" or the error's
    Kafka code."""
    try:
        (future,) = futures.values()
        result = future.result(timeout=30)
        out[name] = "ok"
        return result
    except KafkaException as e:
        out[name] = e.args[0].code()
        return None


def partition_count(name):
    listed = admin.list_topics(topic=name, timeout=10).topics.get(name)
    if listed is None or listed.error is not None:
        return None
    return len(listed.partitions)


def listed(name):
    return name in admin.list_topics(timeout=10).topics


step("create", admin.create_topics([NewTopic(topic, num_partitions=3)]))
out["partitions_after_create"] = partition_count(topic)
step("create_again", admin.create_topics([NewTopic(topic, num_partitions=3)]))
step("create_too_many", admin.create_topics([NewTopic(topic + "-huge", num_partitions=100000)]))
step(
    "validate_only",
    admin.create_topics([NewTopic(topic + "-dry", num_partitions=2)], validate_only=True),
)
out["dry_run_listed"] = listed(topic + "-dry")
out["listed"] = listed(topic)

step("add_partitions", admin.create_partitions([NewPartitions(topic, 5)]))
out["partitions_after_add"] = partition_count(topic)
step("shrink_partitions", admin.create_partitions([NewPartitions(topic, 2)]))

configs = step("describe_configs", admin.describe_configs([ConfigResource("topic", topic)]))
if configs is not None:
    out["configs"] = sorted(configs.keys())
    out["cleanup_policy"] = configs["cleanup.policy"].value

delivered = []
producer = Producer({"bootstrap.servers": bootstrap})
producer.produce(
    topic,
    value=b"to-the-new-partition",
    partition=4,
    on_delivery=lambda err, msg: delivered.append(
        [msg.partition(), msg.offset()] if err is None else str(err)
    ),
)
producer.flush(30)
out["produced_to_new_partition"] = delivered[0] if delivered else None

step("delete", admin.delete_topics([topic]))
out["listed_after_delete"] = listed(topic)
step("delete_again", admin.delete_topics([topic]))
print(json.dumps(out))
