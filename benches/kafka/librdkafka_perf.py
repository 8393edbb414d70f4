"""The Kafka bench's librdkafka client (confluent-kafka): one producer or
one consumer, as fast as the broker takes or gives records.

Usage:
  librdkafka_perf.py produce BOOTSTRAP TOPIC COUNT SIZE BATCH_BYTES IN_FLIGHT
    Sends COUNT records of SIZE bytes to partition 0 of TOPIC, acks=all,
    batching for 1 ms (linger.ms=1) into batches of up to BATCH_BYTES, with
    at most IN_FLIGHT records sent and not yet acknowledged. The clock runs
    from the first send to the last acknowledgement; each record's latency
    from its send call to its acknowledgement.
  librdkafka_perf.py consume BOOTSTRAP TOPIC COUNT
    Reads COUNT records of TOPIC from the earliest offset in a new consumer
    group. The clock runs from the first record received to the last (the
    group join left out, as ConsumerPerformance's fetch rate does).

Prints one JSON object: {"records", "seconds", "rate", "cpu_seconds"} and,
for produce, "p50_ms" and "p99_ms". Exits non-zero if a record failed.
"""

import json
import resource
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def produce(bootstrap, topic, count, size, batch_bytes, in_flight):
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 1,
            "batch.size": batch_bytes,
            "queue.buffering.max.messages": in_flight,
        }
    )
    value = b"x" * size
    sent = [0] * count
    latencies = []
    errors = []

    # One partition: acknowledgements come in send order, so the k-th
    # acknowledgement is that of the k-th record sent.
    def report(err, _msg):
        if err is not None:
            errors.append(str(err))
        latencies.append(time.perf_counter_ns() - sent[len(latencies)])

    cpu, start = cpu_seconds(), time.perf_counter()
    for i in range(count):
        while True:
            sent[i] = time.perf_counter_ns()
            try:
                producer.produce(topic, value=value, partition=0, on_delivery=report)
                break
            except BufferError:
                # IN_FLIGHT records are waiting: wait for acknowledgements.
                producer.poll(0.001)
        producer.poll(0)
    remaining = producer.flush(120)
    seconds = time.perf_counter() - start
    if errors or remaining:
        sys.exit("%d records failed (%s), %d unacknowledged" % (len(errors), errors[:3], remaining))
    latencies.sort()
    at = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] / 1e6
    return {
        "records": count,
        "seconds": seconds,
        "rate": count / seconds,
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "cpu_seconds": cpu_seconds() - cpu,
    }


def consume(bootstrap, topic, count):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic + "-group",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    received, start, cpu = 0, None, None
    deadline = time.monotonic() + 120
    while received < count:
        if time.monotonic() > deadline:
            sys.exit("only %d of %d records within 120 s" % (received, count))
        for message in consumer.consume(num_messages=1000, timeout=1.0):
            if message.error() is not None:
                raise KafkaException(message.error())
            if start is None:
                cpu, start = cpu_seconds(), time.perf_counter()
            received += 1
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    consumer.close()
    return {"records": received, "seconds": seconds, "rate": received / seconds, "cpu_seconds": cpu}


def main():
    mode, bootstrap, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "produce":
        size, batch_bytes, in_flight = map(int, sys.argv[5:8])
        result = produce(bootstrap, topic, count, size, batch_bytes, in_flight)
    elif mode == "consume":
        result = consume(bootstrap, topic, count)
    else:
        sys.exit("mode: produce or consume")
    print(json.dumps(result), flush=True)


main()
