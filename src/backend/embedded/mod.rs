//! The embedded durable store: a segmented log per topic partition with
//! cursors per subscription, for a gateway without a Pulsar cluster.
//!
//! On disk, under the data directory:
//! - `meta.redb`: the metadata store, the topic registry and the cursors;
//! - `topics/<domain>/<tenant>/<namespace>/<local name>/`: one partition's
//!   log segments (see [`log`]).
//!
//! Every registered partition is opened (and recovered) at start-up, so a
//! corrupt segment stops the gateway before it serves anything. Cursors are
//! written every [`EmbeddedConfig::cursor_flush_interval`] and at close:
//! after a crash, messages acknowledged in the last interval are delivered
//! again (at-least-once, as Pulsar does), never lost.

pub mod cursor;
pub mod dispatch;
pub mod log;
mod name_locks;
pub mod reader;
pub mod store;
pub mod subscription;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use gateway_api::backend::{publish_one_by_one, OffsetRange};
use gateway_api::topic::Namespace;
use gateway_api::{
    Backend, BackendError, MessageId, MetadataStore, NewMessage, Persisting, Reader, StartPosition,
    SubscribeRequest, Subscription, TopicName, TopicSelector,
};
use regex::Regex;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use cursor::Cursor;
use dispatch::PartitionSubscription;
use log::{LogConfig, LogError, PartitionLog, RetentionPolicy};
use name_locks::NameLocks;
use store::MetaDb;
use subscription::{lock_attached, Attached, EmbeddedSubscription};

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Where everything is kept.
    pub data_dir: PathBuf,
    /// Create a topic on first publish or subscribe (as Pulsar's
    /// `allowAutoTopicCreation`), not partitioned.
    pub auto_create_topics: bool,
    /// Segment size, batching and limits of each partition log.
    pub log: LogConfig,
    /// How much acknowledged data is kept.
    pub retention: RetentionPolicy,
    /// How often retention runs.
    pub retention_check_interval: Duration,
    /// How often changed cursors are written.
    pub cursor_flush_interval: Duration,
    /// Most unacknowledged messages one consumer may hold before it gets no
    /// more (Pulsar's `maxUnackedMessagesPerConsumer`, same default).
    pub max_unacked_per_consumer: u32,
}

impl EmbeddedConfig {
    /// Defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> EmbeddedConfig {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            auto_create_topics: true,
            log: LogConfig::default(),
            retention: RetentionPolicy {
                max_bytes: None,
                max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            },
            retention_check_interval: Duration::from_secs(60),
            cursor_flush_interval: Duration::from_millis(100),
            max_unacked_per_consumer: 50_000,
        }
    }
}

/// One open partition.
struct Partition {
    /// Its log.
    log: PartitionLog,
    /// Its subscriptions by name, durable ones loaded from `meta.redb`.
    subscriptions: std::sync::Mutex<HashMap<String, Arc<PartitionSubscription>>>,
}

impl Partition {
    fn subscriptions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PartitionSubscription>>> {
        // Whole inserts/removes only: a poisoned map is still consistent.
        self.subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a consumer's topic watcher needs to attach it to new partitions.
struct TopicWatch {
    /// The consumer's request (topics or pattern, subscription, kind).
    request: SubscribeRequest,
    /// The compiled pattern of a pattern subscription.
    pattern: Option<Regex>,
    /// The consumer's id.
    id: u64,
    /// The consumer's receive queue.
    tx: mpsc::Sender<dispatch::Delivery>,
    /// The partitions it is attached to.
    attached: Attached,
    /// Cancelled when the consumer closes.
    closed: CancellationToken,
}

/// State shared by the backend, its consumers and its background tasks.
pub struct Inner {
    /// Settings.
    config: EmbeddedConfig,
    /// Metadata, registry and cursors.
    meta: MetaDb,
    /// Topic registry cache: base topic -> partitions (0: not partitioned).
    topics: RwLock<HashMap<TopicName, u32>>,
    /// Open partitions (and non-partitioned topics).
    partitions: RwLock<HashMap<TopicName, Arc<Partition>>>,
    /// Serializes changes to one topic's registration (and the opening of
    /// its partitions), by base topic name.
    registry_locks: NameLocks,
    /// Serializes cursor writes so a deletion is never overwritten.
    cursor_lock: tokio::sync::Mutex<()>,
    /// Source of consumer ids.
    next_consumer: AtomicU64,
    /// Round-robin for keyless publishes to partitioned topics.
    next_partition: AtomicU64,
    /// Base topics created or grown, for pattern subscriptions.
    topic_events: broadcast::Sender<TopicName>,
    /// Stops the background tasks.
    stop: CancellationToken,
    /// Set by `close`; later calls fail with `Closed`.
    closed: AtomicBool,
}

/// The embedded store (implements the contract's `Backend`).
#[derive(Clone)]
pub struct EmbeddedBackend {
    /// Everything, shared with consumers and tasks.
    inner: Arc<Inner>,
}

pub(crate) fn log_error(e: LogError) -> BackendError {
    match e {
        LogError::RecordTooLarge { size, limit } => BackendError::MessageTooLarge { size, limit },
        LogError::Closed => BackendError::Closed,
        other => BackendError::Storage(other.to_string()),
    }
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Maps updated by whole inserts/removes: consistent even if poisoned.
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The offset a start position stands for in `log`.
pub(crate) async fn resolve_in(
    log: &PartitionLog,
    position: StartPosition,
) -> Result<u64, BackendError> {
    let start = log.start_offset();
    let next = log.next_offset();
    Ok(match position {
        StartPosition::Earliest => start,
        StartPosition::Latest => next,
        StartPosition::Id(id) => id.offset.clamp(start, next),
        StartPosition::Offset(offset) => offset.clamp(start, next),
        StartPosition::Timestamp(t) => log
            .offset_for_timestamp(t)
            .await
            .map_err(log_error)?
            .unwrap_or(next),
    })
}

/// Directory of a partition's log. Long names are shortened with a stable
/// hash so they fit a file name.
fn partition_dir(root: &Path, topic: &TopicName) -> PathBuf {
    const MAX: usize = 200;
    let local = topic.local_name();
    let name = if local.len() <= MAX {
        local.to_owned()
    } else {
        let mut cut = 150;
        while !local.is_char_boundary(cut) {
            cut -= 1;
        }
        let hash = dispatch::key_hash(local.as_bytes());
        format!("{}~{hash:016x}", &local[..cut])
    };
    let ns = topic.namespace();
    root.join("topics")
        .join(topic.domain().as_str())
        .join(&ns.tenant)
        .join(&ns.namespace)
        .join(name)
}

/// The partitions of a base topic with `n` partitions (itself when 0).
fn partitions_of(base: &TopicName, n: u32) -> Vec<TopicName> {
    if n == 0 {
        vec![base.clone()]
    } else {
        (0..n).map(|p| base.partition(p)).collect()
    }
}

impl EmbeddedBackend {
    /// Opens the store: the database, then every registered partition (with
    /// recovery), then the cursor flusher and retention tasks.
    pub async fn open(config: EmbeddedConfig) -> Result<EmbeddedBackend, BackendError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            BackendError::Storage(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let meta = MetaDb::open(&config.data_dir.join("meta.redb"))?;
        let mut topics = HashMap::new();
        let default_ns = Namespace::default();
        for (name, n) in meta.topics_blocking()? {
            let topic = TopicName::parse(&name, &default_ns)?;
            topics.insert(topic, n);
        }
        let (topic_events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            config,
            meta,
            topics: RwLock::new(HashMap::new()),
            partitions: RwLock::new(HashMap::new()),
            registry_locks: NameLocks::default(),
            cursor_lock: tokio::sync::Mutex::new(()),
            next_consumer: AtomicU64::new(1),
            next_partition: AtomicU64::new(0),
            topic_events,
            stop: CancellationToken::new(),
            closed: AtomicBool::new(false),
        });
        for (topic, n) in &topics {
            for partition in partitions_of(topic, *n) {
                inner.open_partition(&partition).await?;
            }
        }
        *write_lock(&inner.topics) = topics;
        let (flush, retain) = (
            inner.config.cursor_flush_interval,
            inner.config.retention_check_interval,
        );
        tokio::spawn(
            inner
                .clone()
                .every(flush, "writing cursors", |i| async move {
                    i.flush_cursors().await
                }),
        );
        tokio::spawn(inner.clone().every(retain, "retention", |i| async move {
            i.enforce_retention().await
        }));
        Ok(EmbeddedBackend { inner })
    }

    /// Group-commit counters of one partition's log (for benchmarks and
    /// diagnostics).
    pub async fn log_stats(&self, topic: &TopicName) -> Result<log::LogStats, BackendError> {
        Ok(self.inner.partition_log(topic, false).await?.log.stats())
    }

    /// Runs retention on every partition now (also runs periodically).
    pub async fn enforce_retention(&self) -> Result<u64, BackendError> {
        self.inner.enforce_retention().await
    }
}

impl Inner {
    fn check_open(&self) -> Result<(), BackendError> {
        if self.closed.load(Ordering::Acquire) {
            Err(BackendError::Closed)
        } else {
            Ok(())
        }
    }

    /// The open partition, opening it (and loading its cursors) if needed.
    async fn open_partition(&self, topic: &TopicName) -> Result<Arc<Partition>, BackendError> {
        if let Some(p) = read_lock(&self.partitions).get(topic) {
            return Ok(p.clone());
        }
        let dir = partition_dir(&self.config.data_dir, topic);
        let log = PartitionLog::open(&dir, self.config.log.clone())
            .await
            .map_err(|e| BackendError::Storage(format!("{topic}: {e}")))?;
        let mut subscriptions = HashMap::new();
        for (name, raw) in self.meta.cursors(topic.as_str().to_owned()).await? {
            let Some(cursor) = Cursor::decode(&raw) else {
                return Err(BackendError::Storage(format!(
                    "cursor of subscription {name} on {topic} is corrupt"
                )));
            };
            let sub = PartitionSubscription::new(
                topic.clone(),
                name.clone(),
                log.clone(),
                cursor,
                true,
                self.config.max_unacked_per_consumer,
            );
            subscriptions.insert(name, sub);
        }
        let partition = Arc::new(Partition {
            log,
            subscriptions: std::sync::Mutex::new(subscriptions),
        });
        let mut open = write_lock(&self.partitions);
        Ok(open.entry(topic.clone()).or_insert(partition).clone())
    }

    /// Partition count of a registered base topic.
    fn registered(&self, base: &TopicName) -> Option<u32> {
        read_lock(&self.topics).get(base).copied()
    }

    /// The partition count of `base`, registering it (not partitioned) when
    /// auto-creation is on and `create` is true.
    async fn ensure_topic(&self, base: &TopicName, create: bool) -> Result<u32, BackendError> {
        if let Some(n) = self.registered(base) {
            return Ok(n);
        }
        if !(create && self.config.auto_create_topics) {
            return Err(BackendError::TopicNotFound(base.clone()));
        }
        self.register(base, 0, false).await
    }

    /// Registers `base` with `n` partitions and opens them. With
    /// `must_be_new`, an existing topic is an error; otherwise the existing
    /// count is returned.
    async fn register(
        &self,
        base: &TopicName,
        n: u32,
        must_be_new: bool,
    ) -> Result<u32, BackendError> {
        let _guard = self.registry_locks.lock(base).await;
        if let Some(existing) = self.registered(base) {
            return if must_be_new {
                Err(BackendError::TopicExists(base.clone()))
            } else {
                Ok(existing)
            };
        }
        for partition in partitions_of(base, n) {
            self.open_partition(&partition).await?;
        }
        self.meta.put_topic(base.as_str().to_owned(), n).await?;
        write_lock(&self.topics).insert(base.clone(), n);
        let _ = self.topic_events.send(base.clone());
        Ok(n)
    }

    /// The partition topics a publish, subscribe or read of `topic` means.
    async fn resolve_partitions(
        &self,
        topic: &TopicName,
        create: bool,
    ) -> Result<Vec<TopicName>, BackendError> {
        match topic.partition_index() {
            Some(p) => match self.registered(&topic.base()) {
                Some(n) if p < n => Ok(vec![topic.clone()]),
                _ => Err(BackendError::TopicNotFound(topic.clone())),
            },
            None => {
                let n = self.ensure_topic(topic, create).await?;
                Ok(partitions_of(topic, n))
            }
        }
    }

    /// The log of a single partition (or non-partitioned topic).
    async fn partition_log(
        &self,
        topic: &TopicName,
        create: bool,
    ) -> Result<Arc<Partition>, BackendError> {
        let partitions = self.resolve_partitions(topic, create).await?;
        match partitions.as_slice() {
            [single] => self.open_partition(single).await,
            _ => Err(BackendError::InvalidRequest(format!(
                "{topic} is partitioned: name one partition"
            ))),
        }
    }

    /// The offset `position` stands for on one partition.
    pub(crate) async fn resolve(
        &self,
        topic: &TopicName,
        position: StartPosition,
    ) -> Result<u64, BackendError> {
        let partition = self.open_partition(topic).await?;
        resolve_in(&partition.log, position).await
    }

    /// Drops a subscription from its partition's map.
    pub(crate) fn forget_subscription(&self, topic: &TopicName, name: &str) {
        if let Some(p) = read_lock(&self.partitions).get(topic) {
            p.subscriptions().remove(name);
        }
    }

    /// Writes (or with `None` deletes) cursors, serialized with the flusher.
    pub(crate) async fn write_cursors(
        &self,
        cursors: Vec<(String, String, Option<Vec<u8>>)>,
    ) -> Result<(), BackendError> {
        let _guard = self.cursor_lock.lock().await;
        self.meta.write_cursors(cursors).await
    }

    /// Attaches consumer `id` to subscription `request` on `topic`.
    async fn attach(
        &self,
        topic: &TopicName,
        request: &SubscribeRequest,
        id: u64,
        tx: &mpsc::Sender<dispatch::Delivery>,
        attached: &Attached,
    ) -> Result<(), BackendError> {
        if lock_attached(attached).contains_key(topic) {
            return Ok(());
        }
        let partition = self.open_partition(topic).await?;
        let existing = partition
            .subscriptions()
            .get(&request.subscription)
            .cloned();
        let sub = match existing {
            Some(sub) => sub,
            None => {
                let start = resolve_in(&partition.log, request.initial_position).await?;
                let fresh = PartitionSubscription::new(
                    topic.clone(),
                    request.subscription.clone(),
                    partition.log.clone(),
                    Cursor::at(start),
                    request.durable,
                    self.config.max_unacked_per_consumer,
                );
                partition
                    .subscriptions()
                    .entry(request.subscription.clone())
                    .or_insert(fresh)
                    .clone()
            }
        };
        sub.attach(id, &request.consumer_name, request.kind, tx.clone())?;
        lock_attached(attached).insert(topic.clone(), sub);
        Ok(())
    }

    /// Whether a subscription request covers base topic `base`.
    fn covers(request: &SubscribeRequest, pattern: Option<&Regex>, base: &TopicName) -> bool {
        match (&request.topics, pattern) {
            (TopicSelector::Topics(topics), _) => topics.iter().any(|t| t == base),
            (TopicSelector::Pattern { namespace, .. }, Some(re)) => {
                base.namespace() == namespace && re.is_match(base.as_str())
            }
            (TopicSelector::Pattern { .. }, None) => false,
        }
    }

    /// Attaches a consumer to partitions that appear after it subscribed:
    /// new topics matching its pattern, new partitions of its topics.
    async fn watch_topics(
        self: Arc<Self>,
        watch: TopicWatch,
        mut events: broadcast::Receiver<TopicName>,
    ) {
        let TopicWatch {
            request,
            pattern,
            id,
            tx,
            attached,
            closed,
        } = watch;
        // A partition found now holds only what was published after the
        // subscription was made (possibly before it was found): it is read
        // from its first message, whatever the initial position.
        let request = SubscribeRequest {
            initial_position: StartPosition::Earliest,
            ..request
        };
        loop {
            let bases: Vec<TopicName> = tokio::select! {
                () = closed.cancelled() => return,
                event = events.recv() => match event {
                    Ok(base) => vec![base],
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        read_lock(&self.topics).keys().cloned().collect()
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            for base in bases {
                if !Self::covers(&request, pattern.as_ref(), &base) {
                    continue;
                }
                let n = self.registered(&base).unwrap_or(0);
                for partition in partitions_of(&base, n) {
                    if closed.is_cancelled() {
                        return;
                    }
                    if let Err(e) = self.attach(&partition, &request, id, &tx, &attached).await {
                        tracing::warn!(topic = %partition, subscription = %request.subscription, "cannot attach new partition: {e}");
                    }
                }
            }
        }
    }

    /// Writes every changed cursor in one transaction.
    async fn flush_cursors(&self) -> Result<(), BackendError> {
        let mut dirty = Vec::new();
        let mut subs = Vec::new();
        {
            let partitions = read_lock(&self.partitions);
            for (topic, partition) in partitions.iter() {
                for sub in partition.subscriptions().values() {
                    if let Some(raw) = sub.take_dirty() {
                        dirty.push((topic.as_str().to_owned(), sub.name.clone(), Some(raw)));
                        subs.push(sub.clone());
                    }
                }
            }
        }
        let result = self.write_cursors(dirty).await;
        if result.is_err() {
            for sub in subs {
                sub.mark_dirty();
            }
        }
        result
    }

    /// Runs `job` every `period` until the backend closes, logging failures.
    async fn every<F, Fut, T>(self: Arc<Self>, period: Duration, what: &'static str, job: F)
    where
        F: Fn(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = job(self.clone()).await {
                tracing::error!("{what} failed: {e}");
            }
        }
    }

    /// Applies the retention policy to every partition, keeping what any
    /// subscription still needs.
    async fn enforce_retention(&self) -> Result<u64, BackendError> {
        let partitions: Vec<Arc<Partition>> =
            read_lock(&self.partitions).values().cloned().collect();
        let mut deleted = 0;
        for partition in partitions {
            let keep_from = partition
                .subscriptions()
                .values()
                .map(|s| s.keep_from())
                .min()
                .unwrap_or(u64::MAX);
            deleted += partition
                .log
                .enforce_retention(self.config.retention, keep_from)
                .await
                .map_err(log_error)?;
        }
        Ok(deleted)
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<MessageId, BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let partitions = inner.resolve_partitions(topic, true).await?;
        let target = match partitions.as_slice() {
            [single] => single.clone(),
            many => {
                let n = many.len() as u64;
                let index = match &message.key {
                    Some(key) => dispatch::key_hash(key) % n,
                    None => inner.next_partition.fetch_add(1, Ordering::Relaxed) % n,
                };
                many[index as usize].clone()
            }
        };
        let partition = inner.open_partition(&target).await?;
        let (offset, _) = partition.log.append(message).await.map_err(log_error)?;
        Ok(MessageId::from_offset(offset, target.partition_index()))
    }

    async fn queue_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Persisting, BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let partitions = inner.resolve_partitions(topic, true).await?;
        let [target] = partitions.as_slice() else {
            // A partitioned topic's base name: each message is routed.
            return publish_one_by_one(self, topic, messages).await;
        };
        let partition = inner.open_partition(target).await?;
        let appending = partition
            .log
            .queue_batch(messages)
            .await
            .map_err(log_error)?;
        let index = target.partition_index();
        Ok(Box::pin(async move {
            let appended = appending.await.map_err(log_error)?;
            Ok(appended
                .into_iter()
                .map(|(offset, _)| MessageId::from_offset(offset, index))
                .collect())
        }))
    }

    async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        if request.receive_queue == 0 {
            return Err(BackendError::InvalidRequest(
                "receive queue must be at least 1".into(),
            ));
        }
        let pattern = match &request.topics {
            TopicSelector::Pattern { regex, .. } => Some(
                Regex::new(&format!("^(?:{regex})$"))
                    .map_err(|e| BackendError::InvalidRequest(format!("bad topic pattern: {e}")))?,
            ),
            TopicSelector::Topics(_) => None,
        };
        // Subscribe to topic events first so no topic created meanwhile is missed.
        let events = inner.topic_events.subscribe();
        let mut partitions = Vec::new();
        match &request.topics {
            TopicSelector::Topics(topics) => {
                for topic in topics {
                    partitions.extend(inner.resolve_partitions(topic, true).await?);
                }
            }
            TopicSelector::Pattern { .. } => {
                let topics: Vec<(TopicName, u32)> = read_lock(&inner.topics)
                    .iter()
                    .map(|(t, n)| (t.clone(), *n))
                    .collect();
                for (base, n) in topics {
                    if Inner::covers(&request, pattern.as_ref(), &base) {
                        partitions.extend(partitions_of(&base, n));
                    }
                }
            }
        }
        let id = inner.next_consumer.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(request.receive_queue);
        let subscription = EmbeddedSubscription {
            id,
            request: request.clone(),
            backend: inner.clone(),
            rx: tokio::sync::Mutex::new(rx),
            attached: Attached::default(),
            closed: CancellationToken::new(),
        };
        for partition in &partitions {
            // On error `subscription` drops here and detaches what it attached.
            inner
                .attach(partition, &request, id, &tx, &subscription.attached)
                .await?;
        }
        let watch = TopicWatch {
            request,
            pattern,
            id,
            tx,
            attached: subscription.attached.clone(),
            closed: subscription.closed.clone(),
        };
        tokio::spawn(inner.clone().watch_topics(watch, events));
        Ok(Box::new(subscription))
    }

    async fn reader(
        &self,
        topic: &TopicName,
        start: StartPosition,
    ) -> Result<Box<dyn Reader>, BackendError> {
        self.inner.check_open()?;
        let partition = self.inner.partition_log(topic, true).await?;
        let offset = resolve_in(&partition.log, start).await?;
        Ok(Box::new(reader::EmbeddedReader::new(
            topic.clone(),
            partition.log.clone(),
            offset,
        )))
    }

    async fn partitions(&self, topic: &TopicName) -> Result<Option<u32>, BackendError> {
        Ok(match topic.partition_index() {
            None => self.inner.registered(topic),
            Some(p) => self
                .inner
                .registered(&topic.base())
                .filter(|&n| p < n)
                .map(|_| 0),
        })
    }

    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> Result<(), BackendError> {
        self.inner.check_open()?;
        if topic.partition_index().is_some() {
            return Err(BackendError::InvalidRequest(format!(
                "{topic} names a partition, not a topic"
            )));
        }
        self.inner
            .register(topic, partitions, true)
            .await
            .map(|_| ())
    }

    async fn update_partitions(
        &self,
        topic: &TopicName,
        partitions: u32,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let _guard = inner.registry_locks.lock(topic).await;
        let current = inner
            .registered(topic)
            .ok_or_else(|| BackendError::TopicNotFound(topic.clone()))?;
        if current == 0 || partitions <= current {
            return Err(BackendError::InvalidRequest(format!(
                "{topic} has {current} partitions; the count can only grow, on a partitioned topic"
            )));
        }
        for p in current..partitions {
            inner.open_partition(&topic.partition(p)).await?;
        }
        inner
            .meta
            .put_topic(topic.as_str().to_owned(), partitions)
            .await?;
        write_lock(&inner.topics).insert(topic.clone(), partitions);
        let _ = inner.topic_events.send(topic.clone());
        Ok(())
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<(), BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let _guard = inner.registry_locks.lock(topic).await;
        let n = inner
            .registered(topic)
            .ok_or_else(|| BackendError::TopicNotFound(topic.clone()))?;
        let parts = partitions_of(topic, n);
        {
            let open = read_lock(&inner.partitions);
            let busy = parts
                .iter()
                .filter_map(|p| open.get(p))
                .any(|p| p.subscriptions().values().any(|s| s.consumer_count() > 0));
            if busy {
                return Err(BackendError::InvalidRequest(format!(
                    "{topic} has connected consumers"
                )));
            }
        }
        write_lock(&inner.topics).remove(topic);
        let _cursors = inner.cursor_lock.lock().await;
        inner
            .meta
            .delete_topic(
                topic.as_str().to_owned(),
                parts.iter().map(|p| p.as_str().to_owned()).collect(),
            )
            .await?;
        for p in &parts {
            let removed = write_lock(&inner.partitions).remove(p);
            if let Some(partition) = removed {
                for sub in partition.subscriptions().values() {
                    sub.delete();
                }
                partition.log.clone().delete().await.map_err(log_error)?;
            }
        }
        Ok(())
    }

    async fn list_topics(&self, namespace: &Namespace) -> Result<Vec<TopicName>, BackendError> {
        let mut topics: Vec<TopicName> = read_lock(&self.inner.topics)
            .keys()
            .filter(|t| t.namespace() == namespace)
            .cloned()
            .collect();
        topics.sort();
        Ok(topics)
    }

    async fn last_message_id(&self, topic: &TopicName) -> Result<Option<MessageId>, BackendError> {
        let partition = self.inner.partition_log(topic, false).await?;
        let range = (partition.log.start_offset(), partition.log.next_offset());
        Ok((range.1 > range.0)
            .then(|| MessageId::from_offset(range.1 - 1, topic.partition_index())))
    }

    async fn offsets(&self, topic: &TopicName) -> Result<OffsetRange, BackendError> {
        let partition = self.inner.partition_log(topic, false).await?;
        Ok(OffsetRange {
            earliest: partition.log.start_offset(),
            next: partition.log.next_offset(),
        })
    }

    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        timestamp: u64,
    ) -> Result<Option<u64>, BackendError> {
        let partition = self.inner.partition_log(topic, false).await?;
        partition
            .log
            .offset_for_timestamp(timestamp)
            .await
            .map_err(log_error)
    }

    fn metadata(&self) -> Arc<dyn MetadataStore> {
        Arc::new(self.inner.meta.clone())
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.inner.check_open()
    }

    async fn close(&self) -> Result<(), BackendError> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        inner.stop.cancel();
        let flushed = inner.flush_cursors().await;
        let partitions: Vec<Arc<Partition>> =
            read_lock(&inner.partitions).values().cloned().collect();
        for partition in partitions {
            partition.log.close().await.map_err(log_error)?;
        }
        inner.meta.close();
        flushed
    }
}
