//! The producers toward Pulsar, and the offsets of what they publish.
//!
//! - One producer per partition (or topic without partitions), created on
//!   first publish and closed once no publish used it for the idle timeout
//!   (a sweeper checks twice per timeout).
//! - A publish reserves its size from the gateway-wide [`ByteBudget`] until
//!   Pulsar answered it: when Pulsar is slow, publishes wait there and
//!   memory stays bounded.
//! - A send waits for room in the connection's send queue rather than
//!   failing with `SlowDown`: more concurrent publishes than that queue
//!   holds are back-pressure, not an error.
//!
//! Batching: messages published together ([`Producers::publish_batch`], a
//! Kafka record batch) go to Pulsar as batched entries, in order, each of
//! at most `batch_max_messages` and `batch_max_bytes`, a new entry begun
//! wherever the key changes: Key_Shared subscriptions dispatch a whole
//! entry by its key (the first message's), as the Java client's key-based
//! batcher makes them. Entries are sent without waiting for each other's
//! receipts (vendor patch 8); the crate's own batching, which waits for
//! each batch's receipt before sending the next, is not used. A message
//! published alone is sent alone.
//!
//! Offsets: a message's offset is its entry's broker index (that of the
//! entry's last message), less the messages after it in the entry. The
//! send receipt does not carry the index, so each entry waits for where
//! the previous entry of the same producer landed (receipts come in send
//! order): in the next entry of the same ledger, its index is that one's
//! plus this entry's message count. Otherwise (the first send, after a
//! reconnect or ledger roll-over, or when another producer wrote in
//! between) the admin API tells the entry's index.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use gateway_api::{BackendError, ByteBudget, MessageId, NewMessage, Persisting, TopicName};
use pulsar::compression;
use pulsar::producer::{ProducerOptions, SendFuture};
use pulsar::{Producer, Pulsar, TokioExecutor};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Mutex};

use super::admin::Admin;
use super::{convert, index, lock};

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
    /// The most messages of one batched entry, for messages published
    /// together; 1 sends every message as an entry of its own.
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
    fn options(&self) -> ProducerOptions {
        ProducerOptions {
            block_queue_if_full: true,
            compression: Some(self.compression.to_pulsar()),
            ..Default::default()
        }
    }

    /// Splits messages published together into the entries they are sent
    /// as, in order: a new entry where the key changes or one would
    /// outgrow the limits.
    fn entries(&self, messages: Vec<NewMessage>) -> Vec<Vec<NewMessage>> {
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

/// Where a published message's entry landed: ledger, entry, and the index
/// of the entry's last message.
#[derive(Debug, Clone, Copy)]
struct Placed {
    ledger: u64,
    entry: u64,
    index: u64,
}

/// A cached producer, locked only to enqueue a send, with the end of its
/// chain of placements.
struct Sender {
    producer: Producer<TokioExecutor>,
    /// Resolves to where the previous send landed, `None` if unknown.
    previous: Option<oneshot::Receiver<Option<Placed>>>,
}

/// An entry handed to a producer, not yet acknowledged.
struct Sent {
    /// Resolves to Pulsar's receipt.
    pending: SendFuture,
    /// Messages in the entry; `None`: one message, not batched.
    batched: Option<u32>,
    /// Where the entry before it landed, to derive its offsets.
    previous: Option<oneshot::Receiver<Option<Placed>>>,
    /// Tells the entry after it where this one landed.
    placed: oneshot::Sender<Option<Placed>>,
}

impl Sent {
    /// Messages in the entry.
    fn count(&self) -> u64 {
        self.batched.map_or(1, u64::from)
    }
}

/// A cache entry: the producer and when a publish last took it.
struct Slot {
    sender: Mutex<Sender>,
    last_used: std::sync::Mutex<Instant>,
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
        let _in_flight = self.budget.reserve(size(&message)).await;
        let slot = self.slot(target).await?;
        let sent = self.send(&slot, target, vec![message]).await?;
        let mut ids = self.complete(target, sent).await?;
        ids.pop().ok_or_else(|| {
            BackendError::Unavailable(format!("no id for a message published to {target}"))
        })
    }

    /// Hands `messages` to the partition's producer, batched, in order,
    /// and returns the wait for their receipts. The batch holds one
    /// reservation of its whole size (at most the budget) until then,
    /// never one per message: two batches each holding part of the budget
    /// while waiting for more would wait for ever.
    pub(super) async fn queue_batch(
        &self,
        target: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Persisting, BackendError> {
        let total = messages.iter().map(size).fold(0, usize::saturating_add);
        let in_flight = self.budget.reserve(total).await;
        let slot = self.slot(target).await?;
        let count = messages.len();
        let mut sent = Vec::new();
        for entry in self.settings.entries(messages) {
            sent.push(self.send(&slot, target, entry).await?);
        }
        let (producers, target) = (self.clone(), target.clone());
        Ok(Box::pin(async move {
            let _in_flight = in_flight;
            let mut ids = Vec::with_capacity(count);
            for one in sent {
                ids.extend(producers.complete(&target, one).await?);
            }
            Ok(ids)
        }))
    }

    /// Hands one entry's messages (one message: not batched) to the
    /// partition's producer, in call order. The caller holds their size
    /// of the in-flight budget until [`Producers::complete`].
    async fn send(
        &self,
        slot: &Slot,
        target: &TopicName,
        mut messages: Vec<NewMessage>,
    ) -> Result<Sent, BackendError> {
        let (placed, placed_rx) = oneshot::channel();
        let mut sender = slot.sender.lock().await;
        let (pending, batched) = if messages.len() == 1 {
            let message = messages.pop().map(convert::outgoing).unwrap_or_default();
            (sender.producer.send_non_blocking(message).await, None)
        } else {
            let count = u32::try_from(messages.len()).map_err(|_| {
                BackendError::Unavailable(format!("an entry of {} messages", messages.len()))
            })?;
            let entry = messages.into_iter().map(convert::outgoing).collect();
            (
                sender.producer.send_entry_non_blocking(entry).await,
                Some(count),
            )
        };
        let pending = pending.map_err(|e| convert::error(Some(target), e))?;
        let previous = sender.previous.replace(placed_rx);
        Ok(Sent {
            pending,
            batched,
            previous,
            placed,
        })
    }

    /// Waits for Pulsar's receipt of a sent entry and works out the ids
    /// and offsets of its messages.
    async fn complete(
        &self,
        target: &TopicName,
        sent: Sent,
    ) -> Result<Vec<MessageId>, BackendError> {
        let in_entry = sent.count();
        let Sent {
            pending,
            batched,
            previous,
            placed,
        } = sent;
        // On any error below `placed` is dropped: the next entry looks its
        // index up.
        let receipt = pending.await.map_err(|e| convert::error(Some(target), e))?;
        let id = receipt.message_id.ok_or_else(|| {
            BackendError::Unavailable(format!("Pulsar's receipt for {target} had no message id"))
        })?;
        let previous = match previous {
            Some(previous) => previous.await.ok().flatten(),
            None => None,
        };
        let entry_index = match previous {
            Some(p) if p.ledger == id.ledger_id && p.entry.checked_add(1) == Some(id.entry_id) => {
                p.index + in_entry
            }
            _ => {
                index::entry(&self.admin, target, id.ledger_id, id.entry_id)
                    .await?
                    .last_index
            }
        };
        let _ = placed.send(Some(Placed {
            ledger: id.ledger_id,
            entry: id.entry_id,
            index: entry_index,
        }));
        let partition = target.partition_index().map_or(-1, |p| p as i32);
        let first = entry_index.saturating_sub(in_entry - 1);
        let ids = (0..in_entry).map(|position| MessageId {
            offset: first + position,
            ledger_id: id.ledger_id,
            entry_id: id.entry_id,
            partition,
            // Not batched: -1.
            batch_index: batched.map_or(-1, |_| i32::try_from(position).unwrap_or(i32::MAX)),
        });
        Ok(ids.collect())
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
        let slot = Arc::new(Slot {
            sender: Mutex::new(Sender {
                producer,
                previous: None,
            }),
            last_used: std::sync::Mutex::new(Instant::now()),
        });
        Ok(lock(&self.cache)
            .entry(topic.clone())
            .or_insert(slot)
            .clone())
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

async fn close(slots: Vec<Arc<Slot>>) {
    for slot in slots {
        let _ = slot.sender.lock().await.producer.close().await;
    }
}

/// What a message weighs against the in-flight budget.
fn size(message: &NewMessage) -> usize {
    let properties: usize = message
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    message.payload.len() + message.key.as_ref().map_or(0, |k| k.len()) + properties
}

/// Every `period`, closes the producers no publish took for `idle`. A
/// producer a publish still holds (one clone in the cache, one per
/// publish) is never closed; a publish can only take one from the cache
/// under the cache's lock, which the check holds.
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
