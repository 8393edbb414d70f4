"""Administers a consumer group with confluent-kafka's AdminClient
(librdkafka), as an operator would: deletes it (optionally while a member
of it is live), then lists, describes and fetches its committed offsets.
The same steps and output as kafka_python_groups.py.

Usage: confluent_groups.py BOOTSTRAP GROUP [--member TOPIC] [--delete]
  The options and the printed JSON object are kafka_python_groups.py's
  (the member joins with librdkafka). One difference:
  librdkafka shows only whether a group's protocol type is empty (a
  "simple" group, of consumers that assign partitions themselves): it is
  reported as "" for those, else as "consumer". States are reported as
  Kafka names them ("Empty", "Stable", "Dead", ...).
"""

import argparse
import json
import sys
import time

from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    Consumer,
    KafkaException,
)
from confluent_kafka.admin import AdminClient

parser = argparse.ArgumentParser()
parser.add_argument("bootstrap")
parser.add_argument("group")
parser.add_argument("--member")
parser.add_argument("--delete", action="store_true")
args = parser.parse_args()
group = args.group
out = {}

STATES = {
    ConsumerGroupState.UNKNOWN: "Unknown",
    ConsumerGroupState.PREPARING_REBALANCING: "PreparingRebalance",
    ConsumerGroupState.COMPLETING_REBALANCING: "CompletingRebalance",
    ConsumerGroupState.STABLE: "Stable",
    ConsumerGroupState.DEAD: "Dead",
    ConsumerGroupState.EMPTY: "Empty",
}


def protocol_type(simple):
    return "" if simple else "consumer"


member = None
if args.member is not None:
    member = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    member.subscribe([args.member])
    deadline = time.monotonic() + 60
    while not member.assignment():
        if time.monotonic() > deadline:
            sys.exit("not assigned a partition of %s within 60 s" % args.member)
        member.poll(0.2)

admin = AdminClient({"bootstrap.servers": args.bootstrap})
if args.delete:
    try:
        admin.delete_consumer_groups([group], request_timeout=30)[group].result(timeout=30)
        out["deleted"] = "ok"
    except KafkaException as e:
        out["deleted"] = e.args[0].code()

listing = admin.list_consumer_groups(request_timeout=30).result(timeout=30)
if listing.errors:
    sys.exit("ListGroups failed: %s" % listing.errors)
listed = [g for g in listing.valid if g.group_id == group]
out["listed"] = (
    {
        "protocol_type": protocol_type(listed[0].is_simple_consumer_group),
        "state": STATES[listed[0].state],
    }
    if listed
    else None
)

try:
    described = admin.describe_consumer_groups([group], request_timeout=30)[group].result(
        timeout=30
    )
    out["described"] = {
        "state": STATES[described.state],
        "protocol_type": protocol_type(described.is_simple_consumer_group),
        "members": len(described.members),
    }
except KafkaException as e:
    out["described"] = {"error": str(e.args[0])}

fetched = admin.list_consumer_group_offsets(
    [ConsumerGroupTopicPartitions(group)], request_timeout=30
)[group].result(timeout=30)
out["offsets"] = {
    "%s/%d" % (tp.topic, tp.partition): tp.offset for tp in fetched.topic_partitions or []
}
if member is not None:
    member.close()
print(json.dumps(out))
