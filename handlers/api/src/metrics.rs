//! The gateway's Prometheus metrics, shared by every handler and backend.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::router::Protocol;
use crate::topic::TopicName;

/// Labels of per-protocol metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// `kafka`, `mqtt`, `amqp`, `websocket`.
    pub protocol: String,
}

/// Labels of per-protocol, per-topic metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// `kafka`, `mqtt`, `amqp`, `websocket`.
    pub protocol: String,
    /// Full Pulsar topic name.
    pub topic: String,
}

/// Labels of backend error counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The operation that failed (`publish`, `subscribe`, ...).
    pub operation: String,
    /// What went wrong ([`crate::BackendError::kind`]).
    pub kind: String,
}

/// Every metric the gateway exports. Cloning shares the same series.
#[derive(Clone)]
pub struct Metrics {
    /// Open client connections by protocol.
    pub connections: Family<ProtocolLabels, Gauge>,
    /// Messages clients published, by protocol and topic.
    pub messages_in: Family<TopicLabels, Counter>,
    /// Payload bytes clients published.
    pub bytes_in: Family<TopicLabels, Counter>,
    /// Messages delivered to clients.
    pub messages_out: Family<TopicLabels, Counter>,
    /// Payload bytes delivered to clients.
    pub bytes_out: Family<TopicLabels, Counter>,
    /// Time from a publish call to the backend's acknowledgement, seconds.
    pub publish_latency: Family<ProtocolLabels, Histogram>,
    /// Errors returned by the backend, by operation and kind.
    pub backend_errors: Family<ErrorLabels, Counter>,
    /// Time the backend took to persist a publish, whatever the protocol,
    /// seconds: set against `publish_latency` it tells the gateway's own
    /// share from the store's.
    pub backend_publish_latency: Histogram,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Metrics {
    /// Creates the metrics and registers them under `pulsar_gateway_`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            connections: Family::default(),
            messages_in: Family::default(),
            bytes_in: Family::default(),
            messages_out: Family::default(),
            bytes_out: Family::default(),
            publish_latency: Family::new_with_constructor(latency_histogram),
            backend_errors: Family::default(),
            backend_publish_latency: latency_histogram(),
        };
        let r = registry.sub_registry_with_prefix("pulsar_gateway");
        r.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        r.register(
            "messages_in",
            "Messages published by clients",
            m.messages_in.clone(),
        );
        r.register(
            "bytes_in",
            "Payload bytes published by clients",
            m.bytes_in.clone(),
        );
        r.register(
            "messages_out",
            "Messages delivered to clients",
            m.messages_out.clone(),
        );
        r.register(
            "bytes_out",
            "Payload bytes delivered to clients",
            m.bytes_out.clone(),
        );
        r.register(
            "publish_latency_seconds",
            "Time from publish to the backend's acknowledgement",
            m.publish_latency.clone(),
        );
        r.register(
            "backend_errors",
            "Errors returned by the backend",
            m.backend_errors.clone(),
        );
        r.register(
            "backend_publish_latency_seconds",
            "Time the backend took to persist a published message",
            m.backend_publish_latency.clone(),
        );
        m
    }

    /// Metrics registered nowhere, for tests and tools.
    pub fn unregistered() -> Metrics {
        Metrics::new(&mut Registry::default())
    }

    /// Counts `messages` published together (`bytes` of payload), which
    /// took `took` from the client's request to the backend's
    /// acknowledgement.
    pub fn published(
        &self,
        protocol: Protocol,
        topic: &TopicName,
        messages: u64,
        bytes: usize,
        took: Duration,
    ) {
        let labels = topic_labels(protocol, topic);
        self.messages_in.get_or_create(&labels).inc_by(messages);
        self.bytes_in.get_or_create(&labels).inc_by(bytes as u64);
        self.publish_latency
            .get_or_create(&protocol_labels(protocol))
            .observe(took.as_secs_f64());
    }

    /// Counts `messages` delivered together (`bytes` of payload).
    pub fn delivered(&self, protocol: Protocol, topic: &TopicName, messages: u64, bytes: usize) {
        let labels = topic_labels(protocol, topic);
        self.messages_out.get_or_create(&labels).inc_by(messages);
        self.bytes_out.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// The series `protocol`'s publishes to `topic` count in, looked up
    /// once: a handler that keeps it counts each message without building
    /// and hashing labels.
    pub fn publish_meter(&self, protocol: Protocol, topic: &TopicName) -> PublishMeter {
        let labels = topic_labels(protocol, topic);
        PublishMeter(Arc::new(PublishSeries {
            messages: self.messages_in.get_or_create(&labels).clone(),
            bytes: self.bytes_in.get_or_create(&labels).clone(),
            latency: self
                .publish_latency
                .get_or_create(&protocol_labels(protocol))
                .clone(),
        }))
    }

    /// The series `protocol`'s deliveries from `topic` count in (see
    /// [`Metrics::publish_meter`]).
    pub fn delivery_meter(&self, protocol: Protocol, topic: &TopicName) -> DeliveryMeter {
        let labels = topic_labels(protocol, topic);
        DeliveryMeter(Arc::new(DeliverySeries {
            messages: self.messages_out.get_or_create(&labels).clone(),
            bytes: self.bytes_out.get_or_create(&labels).clone(),
        }))
    }

    /// Counts an error the backend returned to `operation`.
    pub fn backend_error(&self, operation: &str, error: &crate::BackendError) {
        self.backend_errors
            .get_or_create(&ErrorLabels {
                operation: operation.into(),
                kind: error.kind().into(),
            })
            .inc();
    }

    /// The gauge of open connections for `protocol`.
    pub fn connection_gauge(&self, protocol: Protocol) -> Gauge {
        self.connections
            .get_or_create(&protocol_labels(protocol))
            .clone()
    }
}

/// Where one protocol's publishes to one topic are counted. Cheap to
/// clone.
#[derive(Clone)]
pub struct PublishMeter(Arc<PublishSeries>);

struct PublishSeries {
    /// `messages_in` of the protocol and topic.
    messages: Counter,
    /// `bytes_in` of the protocol and topic.
    bytes: Counter,
    /// `publish_latency` of the protocol.
    latency: Histogram,
}

impl PublishMeter {
    /// Counts `messages` published together (`bytes` of payload), which
    /// took `took` from the client's request to the backend's
    /// acknowledgement.
    pub fn published(&self, messages: u64, bytes: usize, took: Duration) {
        self.0.messages.inc_by(messages);
        self.0.bytes.inc_by(bytes as u64);
        self.0.latency.observe(took.as_secs_f64());
    }
}

/// Where one protocol's deliveries from one topic are counted. Cheap to
/// clone.
#[derive(Clone)]
pub struct DeliveryMeter(Arc<DeliverySeries>);

struct DeliverySeries {
    /// `messages_out` of the protocol and topic.
    messages: Counter,
    /// `bytes_out` of the protocol and topic.
    bytes: Counter,
}

impl DeliveryMeter {
    /// Counts `messages` delivered together (`bytes` of payload).
    pub fn delivered(&self, messages: u64, bytes: usize) {
        self.0.messages.inc_by(messages);
        self.0.bytes.inc_by(bytes as u64);
    }
}

fn protocol_labels(protocol: Protocol) -> ProtocolLabels {
    ProtocolLabels {
        protocol: protocol.as_str().into(),
    }
}

fn topic_labels(protocol: Protocol, topic: &TopicName) -> TopicLabels {
    TopicLabels {
        protocol: protocol.as_str().into(),
        topic: topic.as_str().into(),
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::topic::Namespace;

    #[test]
    fn traffic_shows_per_protocol_and_topic() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let topic = TopicName::from_kafka("orders", &Namespace::default()).unwrap();
        metrics.published(Protocol::Kafka, &topic, 1, 100, Duration::from_millis(2));
        metrics.published(Protocol::Kafka, &topic, 2, 50, Duration::from_millis(3));
        metrics.delivered(Protocol::Mqtt, &topic, 1, 100);
        metrics.connection_gauge(Protocol::Amqp).inc();

        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let kafka = "protocol=\"kafka\",topic=\"persistent://public/default/orders\"";
        let mqtt = "protocol=\"mqtt\",topic=\"persistent://public/default/orders\"";
        for line in [
            format!("pulsar_gateway_messages_in_total{{{kafka}}} 3"),
            format!("pulsar_gateway_bytes_in_total{{{kafka}}} 150"),
            format!("pulsar_gateway_messages_out_total{{{mqtt}}} 1"),
            format!("pulsar_gateway_bytes_out_total{{{mqtt}}} 100"),
            "pulsar_gateway_publish_latency_seconds_count{protocol=\"kafka\"} 2".to_string(),
            "pulsar_gateway_connections{protocol=\"amqp\"} 1".to_string(),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }
}
