"""Administers topics with kafka-python's KafkaAdminClient, as an operator
would: create, create again, validate only, add partitions, describe
configs, produce to a new partition, delete, delete again.

Usage: kafka_python_admin.py BOOTSTRAP TOPIC
  Prints one JSON object: each step's outcome ("ok", Kafka's error code,
  or the class name of an error without one) and what was observed after
  it.
"""

import json
import sys

from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

bootstrap, topic = sys.argv[1], sys.argv[2]
admin = KafkaAdminClient(bootstrap_servers=bootstrap)
out = {}


def step(name, call):
    """Runs one admin call; records "ok" or the error's Kafka code."""
    try:
        result = call()
        out[name] = "ok"
        return result
    except Exception as e:  # the outcome is what the test checks
        out[name] = getattr(e, "errno", None) or type(e).__name__
        return None


def partition_count(name):
    described = admin.describe_topics([name])
    return len(described[0]["partitions"]) if described[0]["error_code"] == 0 else None


step("create", lambda: admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1}}))
out["partitions_after_create"] = partition_count(topic)
step("create_again", lambda: admin.create_topics({topic: {"num_partitions": 3}}))
step("create_zero_partitions", lambda: admin.create_topics({topic + "-zero": {"num_partitions": 0}}))
step("create_too_many", lambda: admin.create_topics({topic + "-huge": {"num_partitions": 100000}}))
step("create_assigned", lambda: admin.create_topics({topic + "-assigned": {"assignments": {0: [0], 1: [0]}}}))
out["partitions_assigned"] = partition_count(topic + "-assigned")
step("validate_only", lambda: admin.create_topics({topic + "-dry": {"num_partitions": 2}}, validate_only=True))
out["dry_run_listed"] = topic + "-dry" in admin.list_topics()
out["listed"] = topic in admin.list_topics()

step("add_partitions", lambda: admin.create_partitions({topic: 5}))
out["partitions_after_add"] = partition_count(topic)
step("shrink_partitions", lambda: admin.create_partitions({topic: 2}))

configs = step(
    "describe_configs",
    lambda: admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
    ),
)
if configs is not None:
    entries = configs.get("topic", {}).get(topic, {})
    out["configs"] = sorted(entries.keys())
    out["cleanup_policy"] = entries.get("cleanup.policy", {}).get("value")

producer = KafkaProducer(bootstrap_servers=bootstrap)
sent = step(
    "produce_to_new_partition",
    lambda: producer.send(topic, value=b"to-the-new-partition", partition=4).get(timeout=30),
)
producer.close()
out["produced_to_new_partition"] = [sent.partition, sent.offset] if sent else None

step("delete", lambda: admin.delete_topics([topic]))
out["listed_after_delete"] = topic in admin.list_topics()
step("delete_again", lambda: admin.delete_topics([topic]))
# The gateway's own metadata log is internal: no client may touch it.
step("delete_internal", lambda: admin.delete_topics(["__pulsar-gateway-metadata"]))
admin.close()
print(json.dumps(out))
