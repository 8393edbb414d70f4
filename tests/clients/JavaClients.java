// The Java client (org.apache.kafka:kafka-clients) at its default settings,
// as a Java application uses it. Run as a single-file program:
//
//   java -cp <kafka-clients and its dependencies> JavaClients.java MODE ...
//
//   produce BOOTSTRAP TOPIC COUNT
//       Sends COUNT records (value vN, key kN%3, header h=xN) with the
//       default producer (idempotent, acks=all) and prints one JSON list of
//       {"partition", "offset"} in send order.
//   consume BOOTSTRAP TOPIC GROUP COUNT
//       Subscribes as a member of GROUP (the default classic protocol and
//       assignors; auto.offset.reset=earliest, as a new application that
//       wants the topic's history sets), reads COUNT records, commits them
//       and prints one JSON object {"records": [{"partition", "offset",
//       "key", "value", "headers", "timestamp"}], "committed": {partition:
//       offset}}. Fails if they do not all arrive in 60 s.
//   create BOOTSTRAP TOPIC PARTITIONS
//       Creates the topic with the admin client (default replication) and
//       prints {"partitions": n} as the admin client then describes it.
//   cooperative BOOTSTRAP TOPIC GROUP
//       Two members of GROUP with the cooperative-sticky assignor, on a
//       topic of two partitions: the first joins and gets both, the second
//       joins and the incremental rebalance moves one partition to it. Once
//       each owns one, 5 records go to each partition and both read until
//       all 10 arrived. Prints {"first": M, "second": M}, each M
//       {"assigned": [...], "revoked": [[...], ...] (each revocation),
//       "records": [[partition, offset], ...]}. Fails after 60 s.

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Set;
import java.util.TreeSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.Future;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class JavaClients {
    public static void main(String[] args) throws Exception {
        switch (args[0]) {
            case "produce" -> produce(args[1], args[2], Integer.parseInt(args[3]));
            case "consume" -> consume(args[1], args[2], args[3], Integer.parseInt(args[4]));
            case "create" -> create(args[1], args[2], Integer.parseInt(args[3]));
            case "cooperative" -> cooperative(args[1], args[2], args[3]);
            default -> throw new IllegalArgumentException("unknown mode " + args[0]);
        }
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String text(byte[] b) {
        return b == null ? null : new String(b, StandardCharsets.UTF_8);
    }

    /** A JSON string; the values here are plain ASCII. */
    static String json(String s) {
        return s == null ? "null" : "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }

    static void produce(String bootstrap, String topic, int count) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        List<Future<RecordMetadata>> sent = new ArrayList<>();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            for (int i = 0; i < count; i++) {
                ProducerRecord<byte[], byte[]> record =
                        new ProducerRecord<>(topic, utf8("k" + (i % 3)), utf8("v" + i));
                record.headers().add("h", utf8("x" + i));
                sent.add(producer.send(record));
            }
            List<String> out = new ArrayList<>();
            for (Future<RecordMetadata> f : sent) {
                RecordMetadata m = f.get();
                out.add("{\"partition\": " + m.partition() + ", \"offset\": " + m.offset() + "}");
            }
            System.out.println("[" + String.join(", ", out) + "]");
        }
    }

    static void consume(String bootstrap, String topic, String group, int count) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("group.id", group);
        props.put("auto.offset.reset", "earliest");
        props.put("key.deserializer", ByteArrayDeserializer.class.getName());
        props.put("value.deserializer", ByteArrayDeserializer.class.getName());
        List<String> records = new ArrayList<>();
        Map<Integer, Long> committed = new TreeMap<>();
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            consumer.subscribe(List.of(topic));
            long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
            Map<TopicPartition, OffsetAndMetadata> next = new TreeMap<>(
                    (a, b) -> Integer.compare(a.partition(), b.partition()));
            while (records.size() < count && System.nanoTime() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                    if (records.size() == count) {
                        break;
                    }
                    List<String> headers = new ArrayList<>();
                    for (Header h : r.headers()) {
                        headers.add("[" + json(h.key()) + ", " + json(text(h.value())) + "]");
                    }
                    records.add("{\"partition\": " + r.partition()
                            + ", \"offset\": " + r.offset()
                            + ", \"key\": " + json(text(r.key()))
                            + ", \"value\": " + json(text(r.value()))
                            + ", \"headers\": [" + String.join(", ", headers) + "]"
                            + ", \"timestamp\": " + r.timestamp() + "}");
                    next.put(new TopicPartition(r.topic(), r.partition()),
                            new OffsetAndMetadata(r.offset() + 1));
                }
            }
            if (records.size() < count) {
                System.err.println("only " + records.size() + " of " + count + " records arrived");
                System.exit(1);
            }
            consumer.commitSync(next);
            for (Map.Entry<TopicPartition, OffsetAndMetadata> e : consumer.committed(next.keySet()).entrySet()) {
                committed.put(e.getKey().partition(), e.getValue().offset());
            }
        }
        List<String> commits = new ArrayList<>();
        committed.forEach((p, o) -> commits.add("\"" + p + "\": " + o));
        System.out.println("{\"records\": [" + String.join(", ", records) + "], \"committed\": {"
                + String.join(", ", commits) + "}}");
    }

    static void create(String bootstrap, String topic, int partitions) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(props)) {
            admin.createTopics(List.of(new NewTopic(topic, Optional.of(partitions), Optional.empty())))
                    .all()
                    .get();
            TopicDescription described =
                    admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
            System.out.println("{\"partitions\": " + described.partitions().size() + "}");
        }
    }

    /** One member of the cooperative test: its consumer and what it saw. */
    static final class Member implements ConsumerRebalanceListener {
        final KafkaConsumer<byte[], byte[]> consumer;
        final Set<Integer> assigned = new TreeSet<>();
        final List<String> revoked = new ArrayList<>();
        final List<String> records = new ArrayList<>();

        Member(String bootstrap, String group, String topic) {
            Properties props = new Properties();
            props.put("bootstrap.servers", bootstrap);
            props.put("group.id", group);
            props.put("auto.offset.reset", "earliest");
            props.put("partition.assignment.strategy",
                    "org.apache.kafka.clients.consumer.CooperativeStickyAssignor");
            props.put("key.deserializer", ByteArrayDeserializer.class.getName());
            props.put("value.deserializer", ByteArrayDeserializer.class.getName());
            consumer = new KafkaConsumer<>(props);
            consumer.subscribe(List.of(topic), this);
        }

        @Override
        public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
            partitions.forEach(p -> assigned.add(p.partition()));
        }

        @Override
        public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
            if (!partitions.isEmpty()) {
                List<String> lost = new ArrayList<>();
                partitions.forEach(p -> {
                    assigned.remove(p.partition());
                    lost.add(Integer.toString(p.partition()));
                });
                revoked.add("[" + String.join(", ", lost) + "]");
            }
        }

        /** Polls briefly; a member must keep polling to take part in rebalances. */
        void poll() {
            for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(100))) {
                records.add("[" + r.partition() + ", " + r.offset() + "]");
            }
        }

        String json() {
            List<String> owned = new ArrayList<>();
            assigned.forEach(p -> owned.add(Integer.toString(p)));
            return "{\"assigned\": [" + String.join(", ", owned) + "], \"revoked\": ["
                    + String.join(", ", revoked) + "], \"records\": ["
                    + String.join(", ", records) + "]}";
        }
    }

    static void cooperative(String bootstrap, String topic, String group) throws Exception {
        long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
        Member first = new Member(bootstrap, group, topic);
        while (first.assigned.size() < 2) {
            first.poll();
            check(deadline, "the first member never owned both partitions");
        }
        Member second = new Member(bootstrap, group, topic);
        while (first.assigned.size() != 1 || second.assigned.size() != 1) {
            first.poll();
            second.poll();
            check(deadline, "the partitions were never split: " + first.json() + " " + second.json());
        }
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            for (int i = 0; i < 10; i++) {
                producer.send(new ProducerRecord<>(topic, i % 2, null, utf8("v" + i))).get();
            }
        }
        while (first.records.size() + second.records.size() < 10) {
            first.poll();
            second.poll();
            check(deadline, "not every record arrived: " + first.json() + " " + second.json());
        }
        System.out.println("{\"first\": " + first.json() + ", \"second\": " + second.json() + "}");
        first.consumer.close();
        second.consumer.close();
    }

    static void check(long deadline, String failure) {
        if (System.nanoTime() > deadline) {
            System.err.println(failure);
            System.exit(1);
        }
    }
}
