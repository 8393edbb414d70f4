//! [`Metered`]: a [`Backend`] around another that counts what the backend
//! itself does, whichever handler called it: every error by operation and
//! kind (`pulsar_gateway_backend_errors_total`) and the time each publish
//! took to persist (`pulsar_gateway_backend_publish_latency_seconds`).
//! Handlers count their own traffic per protocol and topic.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use gateway_api::backend::{OffsetRange, Reader, SubscribeRequest, Subscription};
use gateway_api::metadata::MetadataStore;
use gateway_api::topic::Namespace;
use gateway_api::{
    Backend, BackendError, Message, MessageId, Metrics, NewMessage, Persisting, StartPosition,
    TopicName,
};

/// Counts the errors and publish latency of the backend it wraps.
pub struct Metered {
    inner: Arc<dyn Backend>,
    /// Shared, so a publish's future holds one reference, not each series.
    metrics: Arc<Metrics>,
}

impl Metered {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn Backend>, metrics: Metrics) -> Metered {
        Metered {
            inner,
            metrics: Arc::new(metrics),
        }
    }
}

/// Counts `result`'s error, if any, under `operation`, and passes it on.
/// `Closed` is not counted: it is the end of a consumer or reader the caller
/// (or shutdown) closed, not a failure.
fn count<T>(
    metrics: &Metrics,
    operation: &str,
    result: Result<T, BackendError>,
) -> Result<T, BackendError> {
    match &result {
        Err(BackendError::Closed) | Ok(_) => {}
        Err(error) => metrics.backend_error(operation, error),
    }
    result
}

#[async_trait]
impl Backend for Metered {
    async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<MessageId, BackendError> {
        let started = Instant::now();
        let result = self.inner.publish(topic, message).await;
        if result.is_ok() {
            self.metrics
                .backend_publish_latency
                .observe(started.elapsed().as_secs_f64());
        }
        count(&self.metrics, "publish", result)
    }

    async fn queue_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Persisting, BackendError> {
        let started = Instant::now();
        let persisting = count(
            &self.metrics,
            "queue_batch",
            self.inner.queue_batch(topic, messages).await,
        )?;
        let metrics = self.metrics.clone();
        Ok(Box::pin(async move {
            let result = persisting.await;
            if result.is_ok() {
                metrics
                    .backend_publish_latency
                    .observe(started.elapsed().as_secs_f64());
            }
            count(&metrics, "publish_batch", result)
        }))
    }

    async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        let inner = count(
            &self.metrics,
            "subscribe",
            self.inner.subscribe(request).await,
        )?;
        Ok(Box::new(MeteredSubscription {
            inner,
            metrics: self.metrics.clone(),
        }))
    }

    async fn reader(
        &self,
        topic: &TopicName,
        start: StartPosition,
    ) -> Result<Box<dyn Reader>, BackendError> {
        let inner = count(
            &self.metrics,
            "reader",
            self.inner.reader(topic, start).await,
        )?;
        Ok(Box::new(MeteredReader {
            inner,
            metrics: self.metrics.clone(),
        }))
    }

    async fn partitions(&self, topic: &TopicName) -> Result<Option<u32>, BackendError> {
        count(
            &self.metrics,
            "partitions",
            self.inner.partitions(topic).await,
        )
    }

    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> Result<(), BackendError> {
        let result = self.inner.create_topic(topic, partitions).await;
        count(&self.metrics, "create_topic", result)
    }

    async fn update_partitions(
        &self,
        topic: &TopicName,
        partitions: u32,
    ) -> Result<(), BackendError> {
        let result = self.inner.update_partitions(topic, partitions).await;
        count(&self.metrics, "update_partitions", result)
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<(), BackendError> {
        count(
            &self.metrics,
            "delete_topic",
            self.inner.delete_topic(topic).await,
        )
    }

    async fn list_topics(&self, namespace: &Namespace) -> Result<Vec<TopicName>, BackendError> {
        let result = self.inner.list_topics(namespace).await;
        count(&self.metrics, "list_topics", result)
    }

    async fn last_message_id(&self, topic: &TopicName) -> Result<Option<MessageId>, BackendError> {
        let result = self.inner.last_message_id(topic).await;
        count(&self.metrics, "last_message_id", result)
    }

    async fn offsets(&self, topic: &TopicName) -> Result<OffsetRange, BackendError> {
        count(&self.metrics, "offsets", self.inner.offsets(topic).await)
    }

    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        timestamp: u64,
    ) -> Result<Option<u64>, BackendError> {
        let result = self.inner.offset_for_timestamp(topic, timestamp).await;
        count(&self.metrics, "offset_for_timestamp", result)
    }

    fn metadata(&self) -> Arc<dyn MetadataStore> {
        self.inner.metadata()
    }

    async fn ready(&self) -> Result<(), BackendError> {
        count(&self.metrics, "ready", self.inner.ready().await)
    }

    async fn close(&self) -> Result<(), BackendError> {
        count(&self.metrics, "close", self.inner.close().await)
    }
}

/// A consumer whose errors are counted.
struct MeteredSubscription {
    inner: Box<dyn Subscription>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl Subscription for MeteredSubscription {
    async fn receive(&self) -> Result<Message, BackendError> {
        count(&self.metrics, "receive", self.inner.receive().await)
    }

    async fn ack(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError> {
        count(&self.metrics, "ack", self.inner.ack(topic, id).await)
    }

    async fn ack_cumulative(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError> {
        let result = self.inner.ack_cumulative(topic, id).await;
        count(&self.metrics, "ack_cumulative", result)
    }

    async fn nack(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError> {
        count(&self.metrics, "nack", self.inner.nack(topic, id).await)
    }

    async fn seek(&self, position: StartPosition) -> Result<(), BackendError> {
        count(&self.metrics, "seek", self.inner.seek(position).await)
    }

    async fn unsubscribe(&self) -> Result<(), BackendError> {
        count(&self.metrics, "unsubscribe", self.inner.unsubscribe().await)
    }

    async fn close(&self) -> Result<(), BackendError> {
        count(&self.metrics, "close_consumer", self.inner.close().await)
    }
}

/// A reader whose errors are counted.
struct MeteredReader {
    inner: Box<dyn Reader>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl Reader for MeteredReader {
    async fn next(&self) -> Result<Message, BackendError> {
        count(&self.metrics, "read", self.inner.next().await)
    }

    async fn seek(&self, position: StartPosition) -> Result<(), BackendError> {
        count(
            &self.metrics,
            "reader_seek",
            self.inner.seek(position).await,
        )
    }

    async fn has_message_available(&self) -> Result<bool, BackendError> {
        let result = self.inner.has_message_available().await;
        count(&self.metrics, "has_message_available", result)
    }

    async fn next_available(&self, max: usize) -> Result<Vec<Message>, BackendError> {
        count(&self.metrics, "read", self.inner.next_available(max).await)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use gateway_api::topic::Namespace;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::backend::embedded::{EmbeddedBackend, EmbeddedConfig};

    /// A metered embedded store that creates no topics by itself.
    async fn metered(dir: &std::path::Path) -> (Metered, Registry) {
        let mut config = EmbeddedConfig::new(dir);
        config.auto_create_topics = false;
        let store = EmbeddedBackend::open(config).await.unwrap();
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        (Metered::new(Arc::new(store), metrics), registry)
    }

    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    #[tokio::test]
    async fn errors_are_counted_by_operation_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, registry) = metered(dir.path()).await;
        let topic = TopicName::from_kafka("absent", &Namespace::default()).unwrap();
        for _ in 0..2 {
            let error = backend
                .publish(&topic, NewMessage::new(Bytes::from_static(b"x")))
                .await
                .unwrap_err();
            assert!(matches!(error, BackendError::TopicNotFound(_)), "{error}");
        }
        backend.create_topic(&topic, 0).await.unwrap();
        let error = backend.create_topic(&topic, 0).await.unwrap_err();
        assert!(matches!(error, BackendError::TopicExists(_)), "{error}");

        let text = exposition(&registry);
        assert!(
            text.contains(
                "pulsar_gateway_backend_errors_total{operation=\"publish\",kind=\"topic_not_found\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "pulsar_gateway_backend_errors_total{operation=\"create_topic\",kind=\"topic_exists\"} 1"
            ),
            "{text}"
        );
        backend.close().await.unwrap();
    }

    #[tokio::test]
    async fn publish_latency_counts_persisted_publishes_only() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, registry) = metered(dir.path()).await;
        let topic = TopicName::from_kafka("present", &Namespace::default()).unwrap();
        let absent = TopicName::from_kafka("absent", &Namespace::default()).unwrap();
        backend.create_topic(&topic, 0).await.unwrap();
        for _ in 0..3 {
            backend
                .publish(&topic, NewMessage::new(Bytes::from_static(b"x")))
                .await
                .unwrap();
        }
        backend
            .publish(&absent, NewMessage::new(Bytes::from_static(b"x")))
            .await
            .unwrap_err();

        let text = exposition(&registry);
        assert!(
            text.contains("pulsar_gateway_backend_publish_latency_seconds_count 3"),
            "{text}"
        );
        backend.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_consumer_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, registry) = metered(dir.path()).await;
        let topic = TopicName::from_kafka("present", &Namespace::default()).unwrap();
        backend.create_topic(&topic, 0).await.unwrap();
        let consumer = backend
            .subscribe(SubscribeRequest::new(topic, "s"))
            .await
            .unwrap();
        consumer.close().await.unwrap();
        let error = consumer.receive().await.unwrap_err();
        assert!(matches!(error, BackendError::Closed), "{error}");

        let text = exposition(&registry);
        assert!(!text.contains("backend_errors_total{"), "{text}");
        backend.close().await.unwrap();
    }
}
