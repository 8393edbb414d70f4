"""Administers a consumer group with kafka-python's KafkaAdminClient, as an
operator would: deletes it (optionally while a member of it is live), then
lists, describes and fetches its committed offsets.

Usage: kafka_python_groups.py BOOTSTRAP GROUP [--member TOPIC] [--delete]
  --member TOPIC: first joins GROUP as a consumer of TOPIC (kafka-python,
  no commits) and waits, up to 60 s, until the group assigned it
  partitions; it stays a member until the end, then leaves.
  --delete: deletes GROUP (DeleteGroups) before looking at it.
  Prints one JSON object:
    "deleted": the deletion's outcome, "ok" or Kafka's error code (with
      --delete only);
    "listed": the group as ListGroups shows it, {"protocol_type",
      "state"}, or null when it is not listed;
    "described": DescribeGroups' {"state", "protocol_type", "members"
      (their count)}, or {"error": the client's text of the error};
    "offsets": the group's committed offsets, {"TOPIC/PARTITION": offset}
      (OffsetFetch for all of them).
"""

import argparse
import json
import sys
import time

import kafka.errors as Errors
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient

parser = argparse.ArgumentParser()
parser.add_argument("bootstrap")
parser.add_argument("group")
parser.add_argument("--member")
parser.add_argument("--delete", action="store_true")
args = parser.parse_args()
group = args.group
out = {}

member = None
if args.member is not None:
    member = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    member.subscribe([args.member])
    deadline = time.monotonic() + 60
    while not member.assignment():
        if time.monotonic() > deadline:
            sys.exit("not assigned a partition of %s within 60 s" % args.member)
        member.poll(timeout_ms=200)

admin = KafkaAdminClient(bootstrap_servers=args.bootstrap)
if args.delete:
    # "OK" or the error's class name, per group.
    outcome = admin.delete_groups([group])[group]
    out["deleted"] = "ok" if outcome == "OK" else getattr(Errors, outcome).errno

listed = [g for g in admin.list_groups() if g["group_id"] == group]
out["listed"] = (
    {"protocol_type": listed[0]["protocol_type"], "state": listed[0].get("group_state")}
    if listed
    else None
)

described = admin.describe_groups([group])[group]
if described["error"] is not None:
    out["described"] = {"error": described["error"]}
else:
    out["described"] = {
        "state": described["group_state"],
        "protocol_type": described["protocol_type"],
        "members": len(described["members"]),
    }

offsets = admin.list_group_offsets(group).get(group, {})
out["offsets"] = {"%s/%d" % (tp.topic, tp.partition): o.offset for tp, o in offsets.items()}
admin.close()
if member is not None:
    member.close()
print(json.dumps(out))
