//! The producers toward Pulsar.
//!
//! - One producer per partition (or topic without partitions), created on
//!   first publish and closed once no publish used it for the idle timeout
//!   (a sweeper checks twice per timeout). Each is driven by a sender of
//!   its own ([`sender`](super::sender)), which publishes take turns at
//!   through a bounded queue: the queue's order is the partition's order.
//! - A publish reserves its size from the gateway-wide [`ByteBudget`] until
//!   Pulsar answered it: when Pulsar is slow, publishes wait there and
//!   memory stays bounded.
//!
//! Batching: the sender takes every publish waiting in its queue at once
//! (until it has `batch_max_messages` messages) and sends them as batched
//! entries, in order, each of at most `batch_max_messages` and
//! `batch_max_bytes`, a new entry begun wherever the key changes:
//! Key_Shared subscriptions dispatch a whole entry by its key (the first
//! message's), as the Java client's key-based batcher makes them. A
//! publish alone in the queue goes at once, alone: batches form under load
//! only, and never wait for company (the embedded store's group commit
//! works alike). The messages of one [`Producers::queue_batch`] stay
//! together, in order.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use gateway_api::{BackendError, ByteBudget, MessageId, NewMessage, Persisting, TopicName};
use pulsar::compression;
use pulsar::producer::ProducerOptions;
use pulsar::{Pulsar, TokioExecutor};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::admin::Admin;
use super::sender::{self, Job};
use super::{convert, lock};

/// Publishes waiting for a partition's sender, at most; further publishes
/// wait to join the queue.
const QUEUED_JOBS: usize = 1024;

/// How messages are compressed toward Pulsar (consumers of every protocol
/// get them decompressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Sent as published.
    #[default]
    None,
    /// LZ4: fast, the usual choice.
    Lz4,
    /// zlib (deflate).
    Zlib,
    /// Zstandard: smaller, more CPU.
    Zstd,
    /// Snappy.
    Snappy,
}

impl Compression {
    fn to_pulsar(self) -> compression::Compression {
        match self {
            Compression::None => compression::Compression::None,
            Compression::Lz4 => compression::Compression::Lz4(Default::default()),
            Compression::Zlib => compression::Compression::Zlib(Default::default()),
            Compression::Zstd => compression::Compression::Zstd(Default::default()),
            Compression::Snappy => compression::Compression::Snappy(Default::default()),
        }
    }
}

/// How the gateway's producers toward Pulsar behave.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// A producer no publish used for this long is closed (and opened again
    /// by the next publish to its partition); zero keeps producers open.
    pub idle_timeout: Duration,
    /// Bytes published and not yet answered by Pulsar, across the gateway;
    /// further publishes wait.
    pub max_in_flight_bytes: usize,
    /// Compression of what is sent.
    pub compression: Compression,
    /// The most messages of one batched entry (and of the publishes a
    /// sender takes at once); 1 sends every message as an entry of its
    /// own.
    pub batch_max_messages: u32,
    /// An entry being batched is closed once it holds this many bytes.
    pub batch_max_bytes: usize,
}

impl Default for ProducerSettings {
    fn default() -> ProducerSettings {
        // Pulsar's Java client's defaults.
        ProducerSettings {
            idle_timeout: Duration::from_secs(300),
            max_in_flight_bytes: 64 << 20,
            compression: Compression::None,
            batch_max_messages: 1000,
            batch_max_bytes: 128 << 10,
        }
    }
}

impl ProducerSettings {
    pub(super) fn options(&self) -> ProducerOptions {
        ProducerOptions {
            block_queue_if_full: true,
            compression: Some(self.compression.to_pulsar()),
            ..Default::default()
        }
    }

    /// Splits messages sent together into the entries they are sent as,
    /// in order: a new entry where the key changes or one would outgrow
    /// the limits.
    pub(super) fn entries(&self, messages: Vec<NewMessage>) -> Vec<Vec<NewMessage>> {
        let max_messages = usize::try_from(self.batch_max_messages.max(1)).unwrap_or(usize::MAX);
        let mut entries: Vec<Vec<NewMessage>> = Vec::new();
        let mut bytes = 0;
        for message in messages {
            let weight = size(&message);
            let joins = entries.last().is_some_and(|entry| {
                entry.len() < max_messages
                    && bytes + weight <= self.batch_max_bytes
                    && entry.first().map(|m| &m.key) == Some(&message.key)
            });
            if joins {
                bytes += weight;
                if let Some(entry) = entries.last_mut() {
                    entry.push(message);
                }
            } else {
                bytes = weight;
                entries.push(vec![message]);
            }
        }
        entries
    }
}

/// A cache entry: the queue to the partition's sender, and when a publish
/// last took it. Publishes hold it while they wait (their jobs do).
pub(super) struct Slot {
    /// The sender's queue.
    jobs: mpsc::Sender<Job>,
    /// When a publish last took this entry, for the idle sweep.
    last_used: std::sync::Mutex<Instant>,
    /// The sender, which ends once every clone of `jobs` is dropped and
    /// the queue is drained, having closed its producer.
    sender: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

type Cache = HashMap<TopicName, Arc<Slot>>;

/// The producers of one backend.
#[derive(Clone)]
pub(super) struct Producers {
    client: Pulsar<TokioExecutor>,
    admin: Admin,
    settings: Arc<ProducerSettings>,
    cache: Arc<std::sync::Mutex<Cache>>,
    budget: ByteBudget,
}

impl Producers {
    /// The producers of a backend, with the sweeper that closes idle ones
    /// (it ends when the last clone of these producers is dropped).
    pub(super) fn start(
        client: Pulsar<TokioExecutor>,
        admin: Admin,
        settings: ProducerSettings,
    ) -> Producers {
        let producers = Producers {
            client,
            admin,
            budget: ByteBudget::new(settings.max_in_flight_bytes),
            settings: Arc::new(settings),
            cache: Default::default(),
        };
        let idle = producers.settings.idle_timeout;
        if !idle.is_zero() {
            let period = (idle / 2).max(Duration::from_millis(100));
            tokio::spawn(sweep(Arc::downgrade(&producers.cache), idle, period));
        }
        producers
    }

    /// Publishes to one partition (or topic without partitions) and
    /// resolves once Pulsar has persisted the message.
    pub(super) async fn publish(
        &self,
        target: &TopicName,
        message: NewMessage,
    ) -> Result<MessageId, BackendError> {
        let mut ids = self.queue_batch(target, vec![message]).await?.await?;
        ids.pop().ok_or_else(|| {
            BackendError::Unavailable(format!("no id for a message published to {target}"))
        })
    }

    /// Queues `messages` on the partition `target`'s sender, to be sent
    /// together and in order, and returns the wait for their ids. The
    /// batch holds one reservation of its whole size (at most the budget)
    /// until answered, never one per message: two batches each holding
    /// part of the budget while waiting for more would wait for ever.
    pub(super) async fn queue_batch(
        &self,
        target: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Persisting, BackendError> {
        let total = messages.iter().map(size).fold(0, usize::saturating_add);
        let in_flight = self.budget.reserve(total).await;
        let slot = self.slot(target).await?;
        let (reply, ids) = oneshot::channel();
        let job = Job {
            messages,
            reply,
            in_flight,
            slot: slot.clone(),
        };
        slot.jobs.send(job).await.map_err(|_| {
            BackendError::Unavailable(format!("the producer of {target} is closed"))
        })?;
        let target = target.clone();
        Ok(Box::pin(async move {
            ids.await.unwrap_or_else(|_| {
                Err(BackendError::Unavailable(format!(
                    "the producer of {target} stopped"
                )))
            })
        }))
    }

    /// The cached producer of a partition, created on first use.
    async fn slot(&self, topic: &TopicName) -> Result<Arc<Slot>, BackendError> {
        if let Some(slot) = lock(&self.cache).get(topic) {
            *lock(&slot.last_used) = Instant::now();
            return Ok(slot.clone());
        }
        let producer = self
            .client
            .producer()
            .with_topic(topic.as_str())
            .with_options(self.settings.options())
            .build()
            .await
            .map_err(|e| convert::error(Some(topic), e))?;
        let mut cache = lock(&self.cache);
        if let Some(slot) = cache.get(topic) {
            // Another publish made one meanwhile: this one goes.
            let mut spare = producer;
            tokio::spawn(async move {
                let _ = spare.close().await;
            });
            return Ok(slot.clone());
        }
        let (jobs, queue) = mpsc::channel(QUEUED_JOBS);
        let task = tokio::spawn(sender::run(
            producer,
            topic.clone(),
            self.settings.clone(),
            self.admin.clone(),
            queue,
        ));
        let slot = Arc::new(Slot {
            jobs,
            last_used: std::sync::Mutex::new(Instant::now()),
            sender: std::sync::Mutex::new(Some(task)),
        });
        cache.insert(topic.clone(), slot.clone());
        Ok(slot)
    }

    /// Closes the producers of every partition of `topic`'s base topic.
    pub(super) async fn close_topic(&self, topic: &TopicName) {
        let gone: Vec<Arc<Slot>> = {
            let mut cache = lock(&self.cache);
            let topics: Vec<TopicName> = cache
                .keys()
                .filter(|t| t.base() == topic.base())
                .cloned()
                .collect();
            topics.iter().filter_map(|t| cache.remove(t)).collect()
        };
        close(gone).await;
    }

    /// Closes every producer.
    pub(super) async fn close_all(&self) {
        let all: Vec<Arc<Slot>> = lock(&self.cache).drain().map(|(_, s)| s).collect();
        close(all).await;
    }
}

/// Lets the senders of `slots` finish what is queued and close their
/// producers, and waits for them.
async fn close(slots: Vec<Arc<Slot>>) {
    for slot in slots {
        let task = lock(&slot.sender).take();
        drop(slot);
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// What a message weighs against the in-flight budget.
pub(super) fn size(message: &NewMessage) -> usize {
    let properties: usize = message
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    message.payload.len() + message.key.as_ref().map_or(0, |k| k.len()) + properties
}

/// Every `period`, closes the producers no publish took for `idle`. A
/// producer a publish still holds (one clone in the cache, one per
/// publish until it is answered) is never closed; a publish can only take
/// one from the cache under the cache's lock, which the check holds.
async fn sweep(cache: Weak<std::sync::Mutex<Cache>>, idle: Duration, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let idle_slots: Vec<Arc<Slot>> = {
            let mut cache = lock(&cache);
            let topics: Vec<TopicName> = cache
                .iter()
                .filter(|(_, slot)| {
                    Arc::strong_count(slot) == 1 && lock(&slot.last_used).elapsed() >= idle
                })
                .map(|(topic, _)| topic.clone())
                .collect();
            topics.iter().filter_map(|t| cache.remove(t)).collect()
        };
        if !idle_slots.is_empty() {
            tracing::debug!(closed = idle_slots.len(), "closing idle producers");
        }
        close(idle_slots).await;
    }
}
