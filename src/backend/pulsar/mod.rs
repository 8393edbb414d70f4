//! The Pulsar backend: the handler contract on a real Apache Pulsar cluster,
//! over the binary protocol (the `pulsar` crate, patched under
//! `vendor/pulsar`) plus a few admin REST calls.
//!
//! The gateway keeps no state of its own here: subscriptions, cursors and
//! topics are Pulsar's. Producers are cached per topic. Offsets of received
//! messages are the broker entry index (`AppendIndexMetadataInterceptor`),
//! which [`PulsarBackend::connect`] checks the cluster provides.
//!
//! Not built yet (the backend answers `InvalidRequest` or `Unavailable`):
//! offsets of published messages (Pulsar's send receipt does not carry the
//! index), seek and readers by offset, `offsets`, `offset_for_timestamp`,
//! the metadata store, producer idle eviction.

mod admin;
pub mod consumer;
pub mod convert;
pub mod reader;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use gateway_api::backend::{OffsetRange, Reader, SubscribeRequest, Subscription, TopicSelector};
use gateway_api::metadata::MetadataStore;
use gateway_api::topic::Namespace;
use gateway_api::{BackendError, MessageId, NewMessage, StartPosition, TopicName};
use pulsar::consumer::ConsumerOptions;
use pulsar::{Producer, Pulsar, TokioExecutor};
use tokio::sync::Mutex;

use admin::Admin;
use consumer::PulsarSubscription;

/// Where the cluster is and how to reach it.
#[derive(Debug, Clone)]
pub struct PulsarConfig {
    /// `pulsar://host:6650` (or `pulsar+ssl://`).
    pub service_url: String,
    /// The admin REST API, `http://host:8080`.
    pub admin_url: String,
    /// A JWT sent to the cluster on both APIs.
    pub token: Option<String>,
    /// Namespace `ready` checks.
    pub namespace: Namespace,
}

/// Broker settings the gateway relies on: (key, what it must contain, why).
const REQUIRED_SETTINGS: [(&str, &str, &str); 3] = [
    (
        "brokerEntryMetadataInterceptors",
        "AppendIndexMetadataInterceptor",
        "contiguous per-partition offsets are the broker entry index",
    ),
    (
        "exposingBrokerEntryMetadataToClientEnabled",
        "true",
        "the gateway reads the entry index of each message",
    ),
    (
        "acknowledgmentAtBatchIndexLevelEnabled",
        "true",
        "single messages of a batched entry are acknowledged one by one",
    ),
];

/// A cached producer, locked only to enqueue a send.
type SharedProducer = Arc<Mutex<Producer<TokioExecutor>>>;

/// The producers by topic.
type ProducerCache = HashMap<TopicName, SharedProducer>;

/// The contract on a Pulsar cluster.
#[derive(Clone)]
pub struct PulsarBackend {
    client: Pulsar<TokioExecutor>,
    admin: Admin,
    config: Arc<PulsarConfig>,
    /// One producer per topic named in a publish.
    producers: Arc<std::sync::Mutex<ProducerCache>>,
}

impl PulsarBackend {
    /// Connects and checks the cluster has the settings the gateway needs;
    /// refuses (with which setting and why) when it does not.
    pub async fn connect(config: PulsarConfig) -> Result<PulsarBackend, BackendError> {
        let mut builder = Pulsar::builder(config.service_url.clone(), TokioExecutor);
        if let Some(token) = &config.token {
            builder = builder.with_auth(pulsar::Authentication {
                name: "token".into(),
                data: token.clone().into_bytes(),
            });
        }
        let client = builder
            .build()
            .await
            .map_err(|e| BackendError::Unavailable(format!("{}: {e}", config.service_url)))?;
        let admin = Admin::new(&config.admin_url, config.token.clone())?;
        check_settings(&admin).await?;
        Ok(PulsarBackend {
            client,
            admin,
            config: Arc::new(config),
            producers: Default::default(),
        })
    }

    async fn producer(&self, topic: &TopicName) -> Result<SharedProducer, BackendError> {
        if let Some(p) = self.lock_producers().get(topic) {
            return Ok(p.clone());
        }
        let producer = self
            .client
            .producer()
            .with_topic(topic.as_str())
            .build()
            .await
            .map_err(|e| convert::error(Some(topic), e))?;
        let producer = Arc::new(Mutex::new(producer));
        Ok(self
            .lock_producers()
            .entry(topic.clone())
            .or_insert(producer)
            .clone())
    }

    fn lock_producers(&self) -> std::sync::MutexGuard<'_, ProducerCache> {
        // Whole inserts only: a poisoned map is still consistent.
        self.producers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Topic names of a namespace as Pulsar lists them (partitions included).
    async fn namespace_topics(&self, namespace: &Namespace) -> Result<Vec<String>, BackendError> {
        self.client
            .get_topics_of_namespace(
                format!("{}/{}", namespace.tenant, namespace.namespace),
                pulsar::message::proto::command_get_topics_of_namespace::Mode::Persistent,
            )
            .await
            .map_err(|e| convert::error(None, e))
    }
}

/// Refuses a cluster without the settings in [`REQUIRED_SETTINGS`]. When the
/// gateway's role may not read broker settings, the check cannot be made;
/// it says so and goes on.
async fn check_settings(admin: &Admin) -> Result<(), BackendError> {
    let Some(settings) = admin.broker_settings().await? else {
        tracing::warn!(
            "cannot read the broker's settings (needs a super-user token); make sure it has: {}",
            REQUIRED_SETTINGS
                .iter()
                .map(|(k, v, _)| format!("{k} containing {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    };
    for (key, wanted, why) in REQUIRED_SETTINGS {
        let value = settings.get(key).map(String::as_str).unwrap_or("");
        // Lists come as `[a, b]`.
        let mut items = value
            .split(',')
            .map(|v| v.trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace()));
        if !items.any(|v| v.ends_with(wanted)) {
            return Err(BackendError::InvalidRequest(format!(
                "the Pulsar cluster needs {key} set to include {wanted} ({why}); it is \"{value}\""
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl gateway_api::Backend for PulsarBackend {
    async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<MessageId, BackendError> {
        let producer = self.producer(topic).await?;
        let pending = {
            let mut producer = producer.lock().await;
            producer
                .send_non_blocking(convert::outgoing(message))
                .await
                .map_err(|e| convert::error(Some(topic), e))?
        };
        let receipt = pending.await.map_err(|e| convert::error(Some(topic), e))?;
        let id = receipt.message_id.unwrap_or_default();
        Ok(convert::message_id(&id, None, 1))
    }

    async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        let options = ConsumerOptions::default()
            .durable(request.durable)
            .with_receiver_queue_size(u32::try_from(request.receive_queue).unwrap_or(u32::MAX))
            .with_initial_position(convert::initial_position(&request.initial_position));
        let mut builder = self
            .client
            .consumer()
            .with_subscription(request.subscription.clone())
            .with_subscription_type(convert::sub_type(request.kind))
            .with_options(options)
            .with_unacked_message_resend_delay(None);
        if !request.consumer_name.is_empty() {
            builder = builder.with_consumer_name(request.consumer_name.clone());
        }
        builder = match &request.topics {
            TopicSelector::Topics(topics) => {
                builder.with_topics(topics.iter().map(|t| t.as_str().to_owned()))
            }
            TopicSelector::Pattern { namespace, regex } => {
                let regex = regex::Regex::new(&format!("^(?:{regex})$"))
                    .map_err(|e| BackendError::InvalidRequest(format!("pattern: {e}")))?;
                builder
                    .with_lookup_namespace(format!("{}/{}", namespace.tenant, namespace.namespace))
                    .with_topic_regex(regex)
                    .with_topic_refresh(std::time::Duration::from_secs(1))
            }
        };
        let first = match &request.topics {
            TopicSelector::Topics(t) => t.first().cloned(),
            TopicSelector::Pattern { .. } => None,
        };
        let consumer = builder.build::<Vec<u8>>().await.map_err(|e| {
            match convert::error(first.as_ref(), e) {
                BackendError::ConsumerBusy { topic, .. } => BackendError::ConsumerBusy {
                    topic,
                    subscription: request.subscription.clone(),
                },
                other => other,
            }
        })?;
        let subscription = PulsarSubscription::start(
            consumer,
            self.client.clone(),
            request.kind,
            request.receive_queue,
            Arc::new(reader::NoIndex),
        );
        match request.initial_position {
            StartPosition::Earliest | StartPosition::Latest => {}
            other => subscription.seek(other).await?,
        }
        Ok(Box::new(subscription))
    }

    async fn reader(
        &self,
        topic: &TopicName,
        start: StartPosition,
    ) -> Result<Box<dyn Reader>, BackendError> {
        let positions = Arc::new(reader::NoIndex);
        let reader =
            reader::PulsarReader::open(self.client.clone(), positions, topic, start).await?;
        Ok(Box::new(reader))
    }

    async fn partitions(&self, topic: &TopicName) -> Result<Option<u32>, BackendError> {
        let n = self
            .client
            .lookup_partitioned_topic_number(topic.as_str())
            .await
            .map_err(|e| convert::error(Some(topic), e))?;
        if n > 0 {
            return Ok(Some(n));
        }
        let listed = self.namespace_topics(topic.namespace()).await?;
        Ok(listed.iter().any(|t| t == topic.as_str()).then_some(0))
    }

    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> Result<(), BackendError> {
        if self.partitions(topic).await?.is_some() {
            return Err(BackendError::TopicExists(topic.clone()));
        }
        self.admin.create_topic(topic, partitions).await
    }

    async fn update_partitions(
        &self,
        topic: &TopicName,
        partitions: u32,
    ) -> Result<(), BackendError> {
        self.admin.update_partitions(topic, partitions).await
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<(), BackendError> {
        let partitioned = match self.partitions(topic).await? {
            None => return Err(BackendError::TopicNotFound(topic.clone())),
            Some(n) => n > 0,
        };
        let cached = self.lock_producers().remove(topic);
        if let Some(producer) = cached {
            let _ = producer.lock().await.close().await;
        }
        self.admin.delete_topic(topic, partitioned).await
    }

    async fn list_topics(&self, namespace: &Namespace) -> Result<Vec<TopicName>, BackendError> {
        let mut topics: Vec<TopicName> = self
            .namespace_topics(namespace)
            .await?
            .iter()
            .filter_map(|t| t.parse::<TopicName>().ok())
            .map(|t| t.base())
            .collect();
        topics.sort();
        topics.dedup();
        Ok(topics)
    }

    async fn last_message_id(&self, topic: &TopicName) -> Result<Option<MessageId>, BackendError> {
        Err(BackendError::InvalidRequest(format!(
            "last message id is not built on the Pulsar backend yet ({topic})"
        )))
    }

    async fn offsets(&self, topic: &TopicName) -> Result<OffsetRange, BackendError> {
        Err(BackendError::InvalidRequest(format!(
            "offsets are not built on the Pulsar backend yet ({topic})"
        )))
    }

    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        _timestamp: u64,
    ) -> Result<Option<u64>, BackendError> {
        Err(BackendError::InvalidRequest(format!(
            "offset by timestamp is not built on the Pulsar backend yet ({topic})"
        )))
    }

    fn metadata(&self) -> Arc<dyn MetadataStore> {
        Arc::new(NoMetadata)
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.namespace_topics(&self.config.namespace)
            .await
            .map(drop)
    }

    async fn close(&self) -> Result<(), BackendError> {
        let producers: Vec<_> = self.lock_producers().drain().map(|(_, p)| p).collect();
        for producer in producers {
            let _ = producer.lock().await.close().await;
        }
        Ok(())
    }
}

/// The metadata store until it lives in Pulsar: refuses everything.
struct NoMetadata;

#[async_trait]
impl MetadataStore for NoMetadata {
    async fn get(&self, key: &str) -> Result<Option<gateway_api::Versioned>, BackendError> {
        Err(not_built(key))
    }

    async fn put(
        &self,
        key: &str,
        _value: bytes::Bytes,
        _expected: gateway_api::ExpectedVersion,
    ) -> Result<u64, BackendError> {
        Err(not_built(key))
    }

    async fn delete(
        &self,
        key: &str,
        _expected: gateway_api::ExpectedVersion,
    ) -> Result<(), BackendError> {
        Err(not_built(key))
    }

    async fn scan(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, gateway_api::Versioned)>, BackendError> {
        Err(not_built(prefix))
    }
}

fn not_built(key: &str) -> BackendError {
    BackendError::Unavailable(format!(
        "the metadata store is not built on the Pulsar backend yet (key {key})"
    ))
}
