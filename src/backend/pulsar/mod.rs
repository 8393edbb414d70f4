//! The Pulsar backend: the handler contract on a real Apache Pulsar cluster,
//! over the binary protocol (the `pulsar` crate, patched under
//! `vendor/pulsar`) plus a few admin REST calls.
//!
//! The gateway keeps no state of its own here: subscriptions, cursors and
//! topics are Pulsar's. Offsets are the
//! broker entry index (`AppendIndexMetadataInterceptor`), which
//! [`PulsarBackend::connect`] checks the cluster provides: received messages
//! carry it; see [`index`] for the rest and [`PulsarBackend::publish`] for
//! the offsets of published messages.
//!
//! The metadata store is a replicated state machine on a topic
//! ([`metadata`]).
//!
//! Producers, the in-flight bound and the offsets of published messages
//! are [`producers`]'s.

mod admin;
pub mod consumer;
pub mod convert;
pub mod index;
pub mod metadata;
mod opener;
mod probe;
mod producers;
pub mod reader;
mod sender;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gateway_api::backend::{
    publish_one_by_one, OffsetRange, Reader, SubscribeRequest, Subscription,
};
use gateway_api::metadata::MetadataStore;
use gateway_api::topic::Namespace;
use gateway_api::{BackendError, MessageId, NewMessage, Persisting, StartPosition, TopicName};
use pulsar::{Pulsar, TokioExecutor};

use admin::{Admin, Retention};
use consumer::PulsarSubscription;
use metadata::PulsarMetadata;
use producers::Producers;
pub use producers::{Compression, ProducerSettings};

/// Where the cluster is and how to reach it.
#[derive(Clone)]
pub struct PulsarConfig {
    /// `pulsar://host:6650` (or `pulsar+ssl://host:6651` for TLS).
    pub service_url: String,
    /// The admin REST API, `http://host:8080` (or `https://`).
    pub admin_url: String,
    /// A JWT sent to the cluster on both APIs. Never logged: `Debug` hides
    /// it.
    pub token: Option<String>,
    /// Namespace `ready` checks.
    pub namespace: Namespace,
    /// PEM CA certificates trusted on TLS connections (both APIs), on top
    /// of the built-in public roots.
    pub tls_trust_certs: Option<Vec<u8>>,
    /// How producers toward Pulsar behave.
    pub producers: ProducerSettings,
}

impl PulsarConfig {
    /// A cluster at these URLs, in the default namespace, without a token
    /// or extra trusted certificates, with default producer settings.
    pub fn new(service_url: impl Into<String>, admin_url: impl Into<String>) -> PulsarConfig {
        PulsarConfig {
            service_url: service_url.into(),
            admin_url: admin_url.into(),
            token: None,
            namespace: Namespace::default(),
            tls_trust_certs: None,
            producers: ProducerSettings::default(),
        }
    }
}

impl std::fmt::Debug for PulsarConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarConfig")
            .field("service_url", &self.service_url)
            .field("admin_url", &self.admin_url)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("namespace", &self.namespace)
            .field(
                "tls_trust_certs",
                &self.tls_trust_certs.as_ref().map(|pem| pem.len()),
            )
            .field("producers", &self.producers)
            .finish()
    }
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

/// How long `ready` waits for Pulsar's answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a partition count read from Pulsar is trusted for routing
/// (this gateway's own partition changes apply at once).
const PARTITION_COUNT_TTL: Duration = Duration::from_secs(10);

/// The retention the gateway's namespace must have at least: Kafka's and
/// AMQP's "publish now, consume later" needs messages kept when no
/// subscription exists yet, which Pulsar's default (0) does not do. A week
/// by age and no size bound, as Kafka's default.
pub const DEFAULT_RETENTION: Retention = Retention {
    retention_time_in_minutes: 7 * 24 * 60,
    retention_size_in_mb: -1,
};

/// Partition counts by base topic, with when they were read.
type PartitionCounts = HashMap<TopicName, (u32, Instant)>;

/// The contract on a Pulsar cluster.
#[derive(Clone)]
pub struct PulsarBackend {
    client: Pulsar<TokioExecutor>,
    admin: Admin,
    config: Arc<PulsarConfig>,
    /// One producer per partition published to.
    producers: Producers,
    /// Partition counts for routing publishes to a base topic.
    partition_counts: Arc<std::sync::Mutex<PartitionCounts>>,
    /// Round-robin position for publishes without a key.
    next_partition: Arc<AtomicU32>,
    /// The metadata store, set once connected. The store's own backend
    /// handle has an empty cell here, so the two do not hold each other.
    metadata: Arc<OnceLock<Arc<PulsarMetadata>>>,
}

impl PulsarBackend {
    /// Connects and checks the cluster has the settings the gateway needs;
    /// refuses (with which setting and why) when it does not.
    pub async fn connect(config: PulsarConfig) -> Result<PulsarBackend, BackendError> {
        let admin = Admin::new(
            &config.admin_url,
            config.token.clone(),
            config.tls_trust_certs.as_deref(),
        )?;
        let mut builder = Pulsar::builder(config.service_url.clone(), TokioExecutor);
        if let Some(token) = &config.token {
            builder = builder.with_auth(pulsar::Authentication {
                name: "token".into(),
                data: token.clone().into_bytes(),
            });
        }
        if let Some(pem) = &config.tls_trust_certs {
            builder = builder.with_certificate_chain(pem.clone());
        }
        let client = builder
            .build()
            .await
            .map_err(|e| connect_error(&config.service_url, e))?;
        let namespace = config.namespace.clone();
        let settings = check_settings(&client, &admin, &namespace).await?;
        ensure_retention(&admin, &namespace, DEFAULT_RETENTION, settings.as_ref()).await?;
        let producers = Producers::start(client.clone(), admin.clone(), config.producers.clone());
        let backend = PulsarBackend {
            client,
            admin,
            config: Arc::new(config),
            producers,
            partition_counts: Default::default(),
            next_partition: Default::default(),
            metadata: Default::default(),
        };
        let store = PulsarMetadata::start(backend.without_metadata(), &namespace).await?;
        let _ = backend.metadata.set(Arc::new(store));
        Ok(backend)
    }

    /// Runs the probe `connect` runs when the gateway's role may not read
    /// the broker's settings. For tests: a role on the test cluster reads
    /// them, so `connect` never probes there.
    #[doc(hidden)]
    pub async fn probe_cluster(&self) -> Result<(), BackendError> {
        probe::probe(&self.client, &self.admin, &self.config.namespace).await
    }

    /// How readers and seeks find offsets and times.
    fn positions(&self) -> Arc<dyn reader::Positions> {
        Arc::new(index::IndexPositions(self.admin.clone()))
    }

    /// This backend with no metadata store, for the store itself.
    fn without_metadata(&self) -> PulsarBackend {
        PulsarBackend {
            metadata: Default::default(),
            ..self.clone()
        }
    }

    /// The partition (or non-partitioned topic) a publish to `topic` goes
    /// to: by key as Pulsar's Java client routes, round-robin without one.
    async fn route(
        &self,
        topic: &TopicName,
        key: Option<&[u8]>,
    ) -> Result<TopicName, BackendError> {
        if topic.partition_index().is_some() {
            return Ok(topic.clone());
        }
        let n = self.partition_count(topic).await?;
        if n == 0 {
            return Ok(topic.clone());
        }
        let partition = match key {
            Some(key) => convert::partition_for_key(&convert::partition_key(key).0, n),
            None => self.next_partition.fetch_add(1, Ordering::Relaxed) % n,
        };
        Ok(topic.partition(partition))
    }

    /// A base topic's partition count (0: not partitioned, or absent).
    async fn partition_count(&self, topic: &TopicName) -> Result<u32, BackendError> {
        let cached = lock(&self.partition_counts).get(topic).copied();
        if let Some((n, read)) = cached {
            if read.elapsed() < PARTITION_COUNT_TTL {
                return Ok(n);
            }
        }
        let n = self
            .client
            .lookup_partitioned_topic_number(topic.as_str())
            .await
            .map_err(|e| convert::error(Some(topic), e))?;
        lock(&self.partition_counts).insert(topic.clone(), (n, Instant::now()));
        Ok(n)
    }

    /// Forgets what this gateway knows of a topic's partitions after it
    /// changed them.
    fn forget_partitions(&self, topic: &TopicName) {
        lock(&self.partition_counts).remove(&topic.base());
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

/// Why the first connection failed: credentials the broker refused are for
/// good (the gateway stops with the broker's reason); anything else may
/// pass (the gateway retries).
fn connect_error(url: &str, e: pulsar::Error) -> BackendError {
    use pulsar::error::ConnectionError;
    use pulsar::message::proto::ServerError;
    match e {
        pulsar::Error::Connection(ConnectionError::PulsarError(
            Some(code @ (ServerError::AuthenticationError | ServerError::AuthorizationError)),
            text,
        )) => BackendError::InvalidRequest(format!(
            "{url} refused the gateway's credentials ({code:?}: {}); check --pulsar-token-file",
            text.unwrap_or_default()
        )),
        pulsar::Error::Connection(ConnectionError::Io(io)) if untrusted_certificate(&io) => {
            BackendError::InvalidRequest(format!(
                "{url} presented a certificate the gateway does not trust ({io}); \
                 check --pulsar-tls-trust-certs-file"
            ))
        }
        other => BackendError::Unavailable(format!("{url}: {other}")),
    }
}

/// Whether a TLS handshake failed on the broker's certificate: a setting to
/// fix, not a fault that passes.
fn untrusted_certificate(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

/// Refuses a cluster without the settings in [`REQUIRED_SETTINGS`]. When the
/// gateway's role may not read the broker's settings, proves the features
/// on a topic of its own instead ([`probe`]) and refuses the same way if
/// one is missing. The settings, when they could be read.
async fn check_settings(
    client: &Pulsar<TokioExecutor>,
    admin: &Admin,
    namespace: &Namespace,
) -> Result<Option<HashMap<String, String>>, BackendError> {
    let Some(settings) = admin.broker_settings().await? else {
        tracing::info!(
            "the broker's settings are not readable (needs a super-user token); \
             probing the cluster for them instead"
        );
        probe::probe(client, admin, namespace).await?;
        return Ok(None);
    };
    check_values(&settings)?;
    Ok(Some(settings))
}

/// The decision over the broker's runtime settings: the first of
/// [`REQUIRED_SETTINGS`] missing, named with why it is needed.
fn check_values(settings: &HashMap<String, String>) -> Result<(), BackendError> {
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

/// Raises `namespace`'s retention to `wanted` when it keeps less (its own
/// policy, or else the broker's default from `settings`); never lowers it.
/// Refuses to start when it keeps less and may not be changed: messages
/// published before their first subscription would be lost.
async fn ensure_retention(
    admin: &Admin,
    namespace: &Namespace,
    wanted: Retention,
    settings: Option<&HashMap<String, String>>,
) -> Result<(), BackendError> {
    let broker_default = |key: &str| {
        settings
            .and_then(|s| s.get(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let current = admin.retention(namespace).await?.unwrap_or(Retention {
        retention_time_in_minutes: broker_default("defaultRetentionTimeInMinutes"),
        retention_size_in_mb: broker_default("defaultRetentionSizeInMB"),
    });
    if current.covers(&wanted) {
        return Ok(());
    }
    tracing::info!(
        namespace = %format!("{}/{}", namespace.tenant, namespace.namespace),
        ?current,
        ?wanted,
        "raising the namespace's retention so messages wait for their first subscription"
    );
    admin.set_retention(namespace, wanted).await
}

#[async_trait]
impl gateway_api::Backend for PulsarBackend {
    /// Routes to a partition and publishes there ([`producers`]).
    async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<MessageId, BackendError> {
        let target = self.route(topic, message.key.as_deref()).await?;
        self.producers.publish(&target, message).await
    }

    async fn queue_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Persisting, BackendError> {
        let one_partition =
            topic.partition_index().is_some() || self.partition_count(topic).await? == 0;
        if one_partition {
            return self.producers.queue_batch(topic, messages).await;
        }
        // A partitioned topic's base name: each message is routed.
        publish_one_by_one(self, topic, messages).await
    }

    async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        let opener = opener::Opener {
            client: self.client.clone(),
            admin: self.admin.clone(),
            positions: self.positions(),
            request,
        };
        Ok(Box::new(PulsarSubscription::open(opener).await?))
    }

    async fn reader(
        &self,
        topic: &TopicName,
        start: StartPosition,
    ) -> Result<Box<dyn Reader>, BackendError> {
        let reader =
            reader::PulsarReader::open(self.client.clone(), self.positions(), topic, start).await?;
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
        self.forget_partitions(topic);
        self.admin.create_topic(topic, partitions).await
    }

    async fn update_partitions(
        &self,
        topic: &TopicName,
        partitions: u32,
    ) -> Result<(), BackendError> {
        self.forget_partitions(topic);
        self.admin.update_partitions(topic, partitions).await
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<(), BackendError> {
        let partitioned = match self.partitions(topic).await? {
            None => return Err(BackendError::TopicNotFound(topic.clone())),
            Some(n) => n > 0,
        };
        self.forget_partitions(topic);
        self.producers.close_topic(topic).await;
        self.admin.delete_topic(topic, partitioned).await
    }

    async fn list_topics(&self, namespace: &Namespace) -> Result<Vec<TopicName>, BackendError> {
        let mut topics: Vec<TopicName> = self
            .namespace_topics(namespace)
            .await?
            .iter()
            .filter_map(|t| t.parse::<TopicName>().ok())
            .map(|t| t.base())
            .filter(|t| t.local_name() != metadata::LOG_TOPIC)
            .collect();
        topics.sort();
        topics.dedup();
        Ok(topics)
    }

    async fn last_message_id(&self, topic: &TopicName) -> Result<Option<MessageId>, BackendError> {
        let partition = topic.partition_index().map_or(-1, |p| p as i32);
        let last = index::end(&self.admin, topic, index::End::Latest).await?;
        Ok(last.map(|entry| entry.message_id(entry.last_index, partition)))
    }

    /// From the entries at both ends. A partition whose entries retention
    /// removed entirely reads as empty at 0: the index is not kept apart
    /// from the entries.
    async fn offsets(&self, topic: &TopicName) -> Result<OffsetRange, BackendError> {
        let last = index::end(&self.admin, topic, index::End::Latest).await?;
        let Some(last) = last else {
            return Ok(OffsetRange {
                earliest: 0,
                next: 0,
            });
        };
        let first = index::end(&self.admin, topic, index::End::Earliest).await?;
        Ok(OffsetRange {
            earliest: first.unwrap_or(last).first_index(),
            next: last.last_index + 1,
        })
    }

    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        timestamp: u64,
    ) -> Result<Option<u64>, BackendError> {
        let entry = index::entry_for_timestamp(&self.admin, topic, timestamp).await?;
        Ok(entry.map(|e| e.first_index()))
    }

    fn metadata(&self) -> Arc<dyn MetadataStore> {
        match self.metadata.get() {
            Some(store) => store.clone(),
            None => Arc::new(NoMetadata),
        }
    }

    async fn ready(&self) -> Result<(), BackendError> {
        // A readiness check answers, even when the crate waits on a
        // connection that went away without it noticing.
        let listed = self.namespace_topics(&self.config.namespace);
        match tokio::time::timeout(READY_TIMEOUT, listed).await {
            Ok(listed) => listed.map(drop),
            Err(_) => Err(BackendError::Unavailable(format!(
                "Pulsar did not list the namespace's topics within {READY_TIMEOUT:?}"
            ))),
        }
    }

    async fn close(&self) -> Result<(), BackendError> {
        if let Some(store) = self.metadata.get() {
            store.close();
        }
        self.producers.close_all().await;
        Ok(())
    }
}

/// Locks state that is only ever changed whole under its lock (cache
/// inserts and removals, a replica's applied write), so a poisoned one is
/// still consistent.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The metadata store of the store's own backend handle: refuses everything.
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
        "no metadata store on this handle of the Pulsar backend (key {key})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runtime settings as Pulsar 4.0's admin API returns them, with the
    /// gateway's requirements met; `change` applies a difference.
    fn settings(change: &[(&str, &str)]) -> HashMap<String, String> {
        let mut settings: HashMap<String, String> = [
            (
                "brokerEntryMetadataInterceptors",
                "[org.apache.pulsar.common.intercept.AppendIndexMetadataInterceptor, \
                 org.apache.pulsar.common.intercept.AppendBrokerTimestampMetadataInterceptor]",
            ),
            ("exposingBrokerEntryMetadataToClientEnabled", "true"),
            ("acknowledgmentAtBatchIndexLevelEnabled", "true"),
            ("defaultRetentionTimeInMinutes", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (key, value) in change {
            settings.insert((*key).to_owned(), (*value).to_owned());
        }
        settings
    }

    /// The refusal's message, failing the test if there is none.
    fn refused(settings: &HashMap<String, String>) -> String {
        match check_values(settings) {
            Err(BackendError::InvalidRequest(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_cluster_with_every_setting_is_accepted() {
        assert!(check_values(&settings(&[])).is_ok());
        // A single interceptor, written without brackets, is a list too.
        let single = settings(&[(
            "brokerEntryMetadataInterceptors",
            "org.apache.pulsar.common.intercept.AppendIndexMetadataInterceptor",
        )]);
        assert!(check_values(&single).is_ok());
    }

    #[test]
    fn a_cluster_without_the_index_interceptor_is_refused_naming_it() {
        let only_timestamps = settings(&[(
            "brokerEntryMetadataInterceptors",
            "[org.apache.pulsar.common.intercept.AppendBrokerTimestampMetadataInterceptor]",
        )]);
        let message = refused(&only_timestamps);
        assert!(
            message.contains("brokerEntryMetadataInterceptors"),
            "{message}"
        );
        assert!(
            message.contains("AppendIndexMetadataInterceptor"),
            "{message}"
        );
        let none = settings(&[("brokerEntryMetadataInterceptors", "[]")]);
        assert!(refused(&none).contains("brokerEntryMetadataInterceptors"));
        let mut absent = settings(&[]);
        absent.remove("brokerEntryMetadataInterceptors");
        assert!(refused(&absent).contains("brokerEntryMetadataInterceptors"));
    }

    #[test]
    fn a_cluster_that_hides_entry_metadata_from_clients_is_refused() {
        let hidden = settings(&[("exposingBrokerEntryMetadataToClientEnabled", "false")]);
        let message = refused(&hidden);
        assert!(
            message.contains("exposingBrokerEntryMetadataToClientEnabled"),
            "{message}"
        );
    }

    #[test]
    fn a_cluster_without_batch_index_acknowledgement_is_refused() {
        let whole_entries = settings(&[("acknowledgmentAtBatchIndexLevelEnabled", "false")]);
        let message = refused(&whole_entries);
        assert!(
            message.contains("acknowledgmentAtBatchIndexLevelEnabled"),
            "{message}"
        );
    }
}
