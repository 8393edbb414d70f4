//! One subscription on one partition: its cursor, the messages delivered and
//! not yet acknowledged, and the task that hands messages to its consumers.
//!
//! Dispatch follows Pulsar's subscription types:
//! - Exclusive: one consumer; another is refused.
//! - Failover: consumers sorted by name; for partition `p` of a partitioned
//!   topic the active one is number `p mod n` (number 0 for a topic without
//!   partitions); the others wait and take over when it leaves.
//! - Shared: round-robin over the consumers that have room.
//! - KeyShared: a message goes to the consumer its key hashes to (messages
//!   without a key hash as the empty key). While a key has messages delivered
//!   and unacknowledged on one consumer, its next messages follow them there,
//!   so a consumer joining or leaving never reorders a key.
//!
//! The dispatcher waits on consumer room (bounded channels, the consumers'
//! receive queues), so a slow consumer slows its dispatcher, never the
//! memory: the backlog stays on disk. A consumer holding
//! `max_unacked_per_consumer` unacknowledged messages gets no more until it
//! acknowledges some (Pulsar's `maxUnackedMessagesPerConsumer`), which bounds
//! what a subscription tracks in memory.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use gateway_api::{BackendError, Message, MessageId, SubscriptionKind, TopicName};
use tokio::sync::{mpsc, Notify};

use super::cursor::Cursor;
use super::log::{PartitionLog, Record};

/// Records read from the log in one go when dispatching forward.
const READ_AHEAD_RECORDS: usize = 256;
/// Bytes read from the log in one go when dispatching forward.
const READ_AHEAD_BYTES: usize = 1 << 20;

/// A message on its way to a consumer, tagged so that a seek can discard
/// what was buffered before it.
pub struct Delivery {
    /// The message itself.
    pub message: Message,
    /// The subscription it came from, to check the epoch on receipt.
    pub from: Arc<PartitionSubscription>,
    /// The subscription's epoch when it was sent.
    pub epoch: u64,
}

/// One consumer's place in a subscription.
struct ConsumerSlot {
    /// Unique per backend, to find the slot again.
    id: u64,
    /// Failover order.
    name: String,
    /// The consumer's bounded receive queue.
    tx: mpsc::Sender<Delivery>,
}

/// Everything that changes under the subscription's lock.
struct State {
    /// The type the current consumers agreed on.
    kind: SubscriptionKind,
    /// Whether the cursor outlives the last consumer.
    durable: bool,
    /// Acknowledged positions.
    cursor: Cursor,
    /// Next offset to deliver for the first time.
    read_position: u64,
    /// Offsets to deliver again (nacked, or their consumer left).
    redeliver: BTreeSet<u64>,
    /// Delivered and not acknowledged: offset -> consumer and key hash.
    pending: HashMap<u64, Pending>,
    /// Keys with unacknowledged messages: key hash -> (consumer, count).
    /// KeyShared sends a key's next messages to that consumer.
    key_owners: HashMap<u64, (u64, u32)>,
    /// Unacknowledged messages per consumer, for the per-consumer limit.
    unacked: HashMap<u64, u32>,
    /// The dispatcher waits for a consumer under its unacked limit: an
    /// acknowledgement must wake it.
    blocked_on_unacked: bool,
    /// Redelivery counts of messages delivered more than once.
    redelivery_counts: HashMap<u64, u32>,
    /// Attached consumers, in join order.
    consumers: Vec<ConsumerSlot>,
    /// Shared dispatch: where round-robin resumes.
    next_shared: usize,
    /// A dispatcher task runs (at most one).
    dispatching: bool,
    /// The cursor changed since it was last persisted.
    dirty: bool,
    /// Bumped by every change a dispatcher must re-read the state for.
    version: u64,
    /// The subscription was deleted (unsubscribe, topic deletion).
    deleted: bool,
}

/// A delivered, unacknowledged message.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The consumer holding it.
    consumer: u64,
    /// Hash of its key (of the empty key when it has none).
    key: u64,
}

impl State {
    /// Records a delivery.
    fn hold(&mut self, offset: u64, pending: Pending) {
        self.pending.insert(offset, pending);
        self.key_owners
            .entry(pending.key)
            .or_insert((pending.consumer, 0))
            .1 += 1;
        *self.unacked.entry(pending.consumer).or_insert(0) += 1;
    }

    /// Forgets a delivery (acknowledged, nacked, or its consumer left).
    fn release(&mut self, offset: u64) -> Option<Pending> {
        let pending = self.pending.remove(&offset)?;
        if let Some(owner) = self.key_owners.get_mut(&pending.key) {
            owner.1 -= 1;
            if owner.1 == 0 {
                self.key_owners.remove(&pending.key);
            }
        }
        if let Some(count) = self.unacked.get_mut(&pending.consumer) {
            *count -= 1;
            if *count == 0 {
                self.unacked.remove(&pending.consumer);
            }
        }
        Some(pending)
    }

    /// Forgets every delivery.
    fn release_all(&mut self) {
        self.pending.clear();
        self.key_owners.clear();
        self.unacked.clear();
    }

    /// Moves past a candidate: out of the redelivery set, or the read
    /// position beyond it.
    fn advance(&mut self, candidate: Candidate) {
        if candidate.redelivery {
            self.redeliver.remove(&candidate.offset);
        } else {
            self.read_position = candidate.offset + 1;
        }
    }

    /// Whether a dispatcher waits on the unacked limit (and must be woken).
    fn take_unblock(&mut self) -> bool {
        std::mem::take(&mut self.blocked_on_unacked)
    }
}

/// What the dispatcher decided to deliver next.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    offset: u64,
    redelivery: bool,
}

/// A subscription's state on one partition, shared by its consumers.
pub struct PartitionSubscription {
    /// The partition (or non-partitioned topic).
    pub topic: TopicName,
    /// The subscription's name.
    pub name: String,
    /// Where the messages are read from.
    log: PartitionLog,
    /// Cursor, pending messages, consumers.
    state: Mutex<State>,
    /// Wakes the dispatcher after any change to `state`.
    wake: Notify,
    /// Bumped by seeks; deliveries of an older epoch are discarded.
    epoch: AtomicU64,
    /// Most unacknowledged messages one consumer may hold.
    max_unacked: u32,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding this lock cannot leave the state half-updated
    // in a way later calls would misread (each update is a few field writes),
    // so a poisoned lock is used as is.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PartitionSubscription {
    /// A subscription positioned by `cursor`.
    pub fn new(
        topic: TopicName,
        name: String,
        log: PartitionLog,
        cursor: Cursor,
        durable: bool,
        max_unacked: u32,
    ) -> Arc<PartitionSubscription> {
        let read_position = cursor.mark_delete();
        Arc::new(PartitionSubscription {
            topic,
            name,
            log,
            state: Mutex::new(State {
                kind: SubscriptionKind::Exclusive,
                durable,
                cursor,
                read_position,
                redeliver: BTreeSet::new(),
                pending: HashMap::new(),
                key_owners: HashMap::new(),
                unacked: HashMap::new(),
                blocked_on_unacked: false,
                redelivery_counts: HashMap::new(),
                consumers: Vec::new(),
                next_shared: 0,
                dispatching: false,
                dirty: durable,
                version: 0,
                deleted: false,
            }),
            wake: Notify::new(),
            epoch: AtomicU64::new(0),
            max_unacked: max_unacked.max(1),
        })
    }

    /// The current epoch (see [`Delivery::epoch`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Attaches a consumer and starts dispatching if needed.
    pub fn attach(
        self: &Arc<Self>,
        id: u64,
        name: &str,
        kind: SubscriptionKind,
        tx: mpsc::Sender<Delivery>,
    ) -> Result<(), BackendError> {
        let mut st = lock(&self.state);
        if st.deleted {
            return Err(BackendError::SubscriptionNotFound {
                topic: self.topic.clone(),
                subscription: self.name.clone(),
            });
        }
        if !st.consumers.is_empty() {
            if st.kind == SubscriptionKind::Exclusive || kind == SubscriptionKind::Exclusive {
                return Err(BackendError::ConsumerBusy {
                    topic: self.topic.clone(),
                    subscription: self.name.clone(),
                });
            }
            if st.kind != kind {
                return Err(BackendError::InvalidRequest(format!(
                    "subscription {} on {} is {:?}, not {:?}",
                    self.name, self.topic, st.kind, kind
                )));
            }
        }
        st.kind = kind;
        st.consumers.push(ConsumerSlot {
            id,
            name: name.to_owned(),
            tx,
        });
        st.version += 1;
        if !st.dispatching {
            st.dispatching = true;
            tokio::spawn(self.clone().dispatch());
        }
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Detaches a consumer; what it had not acknowledged is redelivered.
    /// Returns true when no consumer is left.
    pub fn detach(&self, id: u64) -> bool {
        let mut st = lock(&self.state);
        st.consumers.retain(|c| c.id != id);
        let orphaned: Vec<u64> = st
            .pending
            .iter()
            .filter(|(_, p)| p.consumer == id)
            .map(|(&o, _)| o)
            .collect();
        for offset in orphaned {
            st.release(offset);
            st.redeliver.insert(offset);
            *st.redelivery_counts.entry(offset).or_insert(0) += 1;
        }
        st.version += 1;
        let empty = st.consumers.is_empty();
        drop(st);
        self.wake.notify_one();
        empty
    }

    /// Acknowledges one message.
    pub fn ack(&self, offset: u64) {
        let mut st = lock(&self.state);
        st.release(offset);
        st.redeliver.remove(&offset);
        st.redelivery_counts.remove(&offset);
        st.cursor.ack(offset);
        st.dirty = true;
        if st.take_unblock() {
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Acknowledges every message up to and including `offset`.
    pub fn ack_cumulative(&self, offset: u64) -> Result<(), BackendError> {
        let mut st = lock(&self.state);
        if matches!(
            st.kind,
            SubscriptionKind::Shared | SubscriptionKind::KeyShared
        ) {
            return Err(BackendError::InvalidRequest(
                "cumulative acknowledgement is not allowed on Shared or KeyShared subscriptions"
                    .into(),
            ));
        }
        let done: Vec<u64> = st
            .pending
            .keys()
            .filter(|&&o| o <= offset)
            .copied()
            .collect();
        for o in done {
            st.release(o);
        }
        st.redeliver = st.redeliver.split_off(&(offset + 1));
        st.redelivery_counts.retain(|&o, _| o > offset);
        st.cursor.ack_cumulative(offset);
        st.dirty = true;
        if st.take_unblock() {
            drop(st);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Negative acknowledgement: deliver again, with the count raised.
    pub fn nack(&self, offset: u64) {
        let mut st = lock(&self.state);
        if st.release(offset).is_some() {
            st.redeliver.insert(offset);
            *st.redelivery_counts.entry(offset).or_insert(0) += 1;
            st.version += 1;
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Moves the cursor to `offset`: everything from there is delivered
    /// again, everything before counts as acknowledged.
    pub fn seek(&self, offset: u64) {
        let mut st = lock(&self.state);
        st.cursor.reset(offset);
        st.read_position = offset;
        st.redeliver.clear();
        st.release_all();
        st.redelivery_counts.clear();
        st.dirty = true;
        st.version += 1;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        drop(st);
        self.wake.notify_one();
    }

    /// Marks the subscription deleted and stops its dispatcher.
    pub fn delete(&self) {
        let mut st = lock(&self.state);
        st.deleted = true;
        st.consumers.clear();
        st.version += 1;
        drop(st);
        self.wake.notify_one();
    }

    /// Number of attached consumers.
    pub fn consumer_count(&self) -> usize {
        lock(&self.state).consumers.len()
    }

    /// Whether the cursor outlives its consumers.
    pub fn is_durable(&self) -> bool {
        lock(&self.state).durable
    }

    /// The lowest offset this subscription still needs (for retention).
    pub fn keep_from(&self) -> u64 {
        lock(&self.state).cursor.mark_delete()
    }

    /// The cursor's stored form if it changed since the last call.
    pub fn take_dirty(&self) -> Option<Vec<u8>> {
        let mut st = lock(&self.state);
        if !st.dirty || !st.durable || st.deleted {
            return None;
        }
        st.dirty = false;
        Some(st.cursor.encode())
    }

    /// Marks the cursor as needing to be written again (a write failed).
    pub fn mark_dirty(&self) {
        lock(&self.state).dirty = true;
    }

    /// The dispatcher: runs while consumers are attached.
    async fn dispatch(self: Arc<Self>) {
        let mut appends = self.log.subscribe_appends();
        let mut read_ahead: VecDeque<Record> = VecDeque::new();
        loop {
            let (version, candidate) = {
                let mut st = lock(&self.state);
                if st.consumers.is_empty() {
                    st.dispatching = false;
                    return;
                }
                (st.version, next_candidate(&mut st, self.log.next_offset()))
            };
            let Some(candidate) = candidate else {
                tokio::select! {
                    changed = appends.changed() => {
                        if changed.is_err() {
                            // The log closed: nothing more will arrive.
                            let mut st = lock(&self.state);
                            st.dispatching = false;
                            return;
                        }
                    }
                    () = self.wake.notified() => {}
                }
                continue;
            };
            let record = match self.fetch(&mut read_ahead, candidate).await {
                Ok(Some(record)) => record,
                Ok(None) => {
                    // Removed by retention: nothing to deliver there.
                    self.skip(candidate, version);
                    continue;
                }
                Err(e) => {
                    tracing::error!(topic = %self.topic, subscription = %self.name, "cannot read offset {}: {e}", candidate.offset);
                    self.skip(candidate, version);
                    continue;
                }
            };
            let Some(targets) = self.targets(version, record.key.as_deref()) else {
                continue;
            };
            if targets.is_empty() {
                // Every eligible consumer is at its unacked limit.
                self.wake.notified().await;
                continue;
            }
            let permit = tokio::select! {
                permit = reserve_any(targets) => permit,
                () = self.wake.notified() => continue,
            };
            let Some((consumer, permit)) = permit else {
                // Every target's queue closed: its detach is on the way.
                tokio::task::yield_now().await;
                continue;
            };
            let message = {
                let mut st = lock(&self.state);
                if st.version != version {
                    continue;
                }
                st.advance(candidate);
                let key = key_hash(record.key.as_deref().unwrap_or_default());
                st.hold(candidate.offset, Pending { consumer, key });
                let count = st
                    .redelivery_counts
                    .get(&candidate.offset)
                    .copied()
                    .unwrap_or(0);
                to_message(&self.topic, &record, count)
            };
            permit.send(Delivery {
                message,
                from: self.clone(),
                epoch: self.epoch(),
            });
        }
    }

    /// Moves past a candidate that cannot be delivered.
    fn skip(&self, candidate: Candidate, version: u64) {
        let mut st = lock(&self.state);
        if st.version == version {
            st.advance(candidate);
        }
    }

    /// The record at the candidate's offset; `None` if retention removed it.
    async fn fetch(
        &self,
        read_ahead: &mut VecDeque<Record>,
        candidate: Candidate,
    ) -> Result<Option<Record>, BackendError> {
        while read_ahead
            .front()
            .is_some_and(|r| r.offset < candidate.offset)
        {
            read_ahead.pop_front();
        }
        if let Some(front) = read_ahead.front() {
            if front.offset == candidate.offset {
                return Ok(read_ahead.pop_front());
            }
        }
        let (records, bytes) = if candidate.redelivery {
            (1, 1)
        } else {
            (READ_AHEAD_RECORDS, READ_AHEAD_BYTES)
        };
        let batch = self
            .log
            .read(candidate.offset, records, bytes)
            .await
            .map_err(|e| BackendError::Storage(e.to_string()))?;
        let mut batch = VecDeque::from(batch);
        match batch.front() {
            Some(first) if first.offset == candidate.offset => {
                let record = batch.pop_front();
                if !candidate.redelivery {
                    *read_ahead = batch;
                }
                Ok(record)
            }
            _ => Ok(None),
        }
    }

    /// The consumers a message may go to, in the order to try them.
    fn targets(
        &self,
        version: u64,
        key: Option<&[u8]>,
    ) -> Option<Vec<(u64, mpsc::Sender<Delivery>)>> {
        let mut st = lock(&self.state);
        if st.version != version || st.consumers.is_empty() {
            return None;
        }
        let n = st.consumers.len();
        let slot = |c: &ConsumerSlot| (c.id, c.tx.clone());
        let targets = match st.kind {
            SubscriptionKind::Exclusive => vec![slot(&st.consumers[0])],
            SubscriptionKind::Failover => {
                let mut order: Vec<&ConsumerSlot> = st.consumers.iter().collect();
                order.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
                let index = self.topic.partition_index().unwrap_or(0) as usize % n;
                vec![slot(order[index])]
            }
            SubscriptionKind::KeyShared => {
                let hash = key_hash(key.unwrap_or_default());
                let owner = st
                    .key_owners
                    .get(&hash)
                    .and_then(|&(id, _)| st.consumers.iter().find(|c| c.id == id));
                let chosen = owner.unwrap_or_else(|| {
                    let mut order: Vec<&ConsumerSlot> = st.consumers.iter().collect();
                    order.sort_by_key(|c| c.id);
                    order[(hash % n as u64) as usize]
                });
                vec![slot(chosen)]
            }
            SubscriptionKind::Shared => {
                let start = st.next_shared % n;
                st.next_shared = start + 1;
                (0..n)
                    .map(|i| slot(&st.consumers[(start + i) % n]))
                    .collect()
            }
        };
        let max = self.max_unacked;
        let open: Vec<_> = targets
            .into_iter()
            .filter(|(id, _)| st.unacked.get(id).copied().unwrap_or(0) < max)
            .collect();
        st.blocked_on_unacked = open.is_empty();
        Some(open)
    }
}

/// The next offset to deliver: redeliveries first, then new messages below
/// the log's high watermark, skipping what is already acknowledged.
fn next_candidate(st: &mut State, high_watermark: u64) -> Option<Candidate> {
    if let Some(&offset) = st.redeliver.first() {
        return Some(Candidate {
            offset,
            redelivery: true,
        });
    }
    st.read_position = st.cursor.next_unacked(st.read_position);
    while st.pending.contains_key(&st.read_position) {
        st.read_position = st.cursor.next_unacked(st.read_position + 1);
    }
    (st.read_position < high_watermark).then_some(Candidate {
        offset: st.read_position,
        redelivery: false,
    })
}

/// Room in the first of `targets` that has it, waiting if none has.
/// `None` when every target's consumer is gone.
async fn reserve_any(
    targets: Vec<(u64, mpsc::Sender<Delivery>)>,
) -> Option<(u64, mpsc::OwnedPermit<Delivery>)> {
    let mut waiting = Vec::with_capacity(targets.len());
    for (id, tx) in targets {
        match tx.try_reserve_owned() {
            Ok(permit) => return Some((id, permit)),
            Err(mpsc::error::TrySendError::Full(tx)) => waiting.push((id, tx)),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    if waiting.is_empty() {
        return None;
    }
    let futures = waiting
        .into_iter()
        .map(|(id, tx)| Box::pin(async move { tx.reserve_owned().await.ok().map(|p| (id, p)) }));
    futures::future::select_all(futures).await.0
}

/// FNV-1a: stable across builds and restarts, so a key keeps its consumer,
/// its partition, and a long topic name its directory.
pub fn key_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A log record as the contract's message.
pub fn to_message(topic: &TopicName, record: &Record, redelivery_count: u32) -> Message {
    into_message(topic, record.clone(), redelivery_count)
}

/// [`to_message`] of a record the caller gives up, without copying it.
pub fn into_message(topic: &TopicName, record: Record, redelivery_count: u32) -> Message {
    Message {
        topic: topic.clone(),
        id: MessageId::from_offset(record.offset, topic.partition_index()),
        payload: record.payload,
        key: record.key,
        properties: record.properties,
        event_time: record.event_time,
        publish_time: record.publish_time,
        redelivery_count,
    }
}
