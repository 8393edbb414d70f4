//! One contract [`Reader`] on Pulsar: a non-durable Exclusive subscription
//! of one partition, under a name of its own, started at the asked position.
//!
//! Pulsar starts a non-durable subscription at a message id (the subscribe
//! command's `start_message_id`) and delivers from that id's *entry* on; the
//! reader drops what comes before the asked message (the earlier members of
//! a batched entry, or, for `Latest`, everything up to the partition's last
//! message when the reader opened). Offsets and timestamps are turned into
//! ids first, by [`Positions`].
//!
//! A seek opens a new subscription at the new position and closes the old
//! one, so nothing buffered toward the old one is returned after the seek
//! (Pulsar's own seek disconnects the consumer and leaves it to the client
//! to tell messages sent before the seek from those after).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use gateway_api::{BackendError, Message, MessageId, Reader, StartPosition, TopicName};
use pulsar::consumer::ConsumerOptions;
use pulsar::message::proto::MessageIdData;
use pulsar::{Pulsar, SubType, TokioExecutor};
use tokio::sync::Mutex;

use super::consumer::{close_consumer, RawConsumer};
use super::convert;

/// Messages the crate buffers toward a reader (its receiver queue), which
/// is also how many the broker may have on their way to it. A reader is
/// drained in bursts (a Kafka Fetch at a time); in between, a full queue
/// stops the flow from the broker, so this is four Fetches' worth of
/// 1 KiB records. It bounds a reader's memory by count, not bytes.
const READ_AHEAD: u32 = 4000;

/// Turns the positions that need the broker entry index into message ids.
///
/// The backend passes one to every reader and subscription, so seeks and
/// starts by offset or time resolve the same way everywhere.
#[async_trait]
pub trait Positions: Send + Sync {
    /// The id of the message at `offset` of the partition `topic` (the
    /// oldest retained one when `offset` is older); `None` when no message
    /// holds it yet, that is, the end of the partition.
    async fn offset(
        &self,
        topic: &TopicName,
        offset: u64,
    ) -> Result<Option<MessageId>, BackendError>;

    /// The id of the first message of the partition `topic` published at or
    /// after `timestamp` (ms since the epoch); `None` when there is none.
    async fn timestamp(
        &self,
        topic: &TopicName,
        timestamp: u64,
    ) -> Result<Option<MessageId>, BackendError>;
}

/// Where a message sits in its partition, in Pulsar's order: ledger, entry,
/// index in the batch (-1 when not batched).
type Key = (u64, u64, i64);

fn key(id: &MessageIdData) -> Key {
    (
        id.ledger_id,
        id.entry_id,
        i64::from(id.batch_index.unwrap_or(-1)),
    )
}

/// Whether an id the broker answers names a message: an empty partition's
/// last id has entry -1 (all bits set on the wire).
fn names_a_message(id: &MessageIdData) -> bool {
    i64::try_from(id.entry_id).is_ok() && i64::try_from(id.ledger_id).is_ok()
}

/// Where a subscription starts and which delivered messages the reader
/// drops.
struct Start {
    /// The broker's start: the subscription delivers from this entry on.
    id: MessageIdData,
    /// Everything up to and including this key was passed over; `None`:
    /// nothing is.
    floor: Option<Key>,
    /// `Latest`: the floor is the partition's last message once subscribed.
    at_end: bool,
}

impl Start {
    fn earliest() -> Start {
        Start {
            id: convert::earliest_id(),
            floor: None,
            at_end: false,
        }
    }

    fn latest() -> Start {
        Start {
            id: convert::latest_id(),
            floor: None,
            at_end: true,
        }
    }

    /// At the message `id`, inclusive.
    fn at(id: &MessageId) -> Start {
        let data = convert::id_data(id);
        let (ledger, entry, batch_index) = key(&data);
        Start {
            id: data,
            floor: Some((ledger, entry, batch_index - 1)),
            at_end: false,
        }
    }

    /// Just after the message `id`: the broker starts at its entry, and
    /// the reader drops it and what came before it in the entry.
    fn after(id: &MessageId) -> Start {
        let data = convert::id_data(id);
        let floor = key(&data);
        Start {
            id: data,
            floor: Some(floor),
            at_end: false,
        }
    }
}

/// The crate's consumer and where the reader stands on it.
struct State {
    consumer: RawConsumer,
    /// The last message passed over or returned; later ones are returned.
    floor: Option<Key>,
    /// A message taken by `has_message_available`, returned by the next
    /// `next`.
    peeked: Option<Message>,
    /// An error met by `next_available` after it had messages to return:
    /// what the next call returns.
    failed: Option<BackendError>,
}

/// Implements the contract's `Reader` over a Pulsar partition.
pub struct PulsarReader {
    /// The partition read.
    topic: TopicName,
    /// To open the subscription again on a seek.
    client: Pulsar<TokioExecutor>,
    /// Offsets and times to ids.
    positions: Arc<dyn Positions>,
    /// Behind an async lock: `next` holds it while it waits for a message,
    /// as the embedded reader does.
    state: Mutex<State>,
}

impl PulsarReader {
    /// Opens a reader on `topic` (one partition, or a topic without
    /// partitions) whose first message is the one at `start`.
    pub async fn open(
        client: Pulsar<TokioExecutor>,
        positions: Arc<dyn Positions>,
        topic: &TopicName,
        start: StartPosition,
    ) -> Result<PulsarReader, BackendError> {
        let partitions = client
            .lookup_partitioned_topic_number(topic.as_str())
            .await
            .map_err(|e| convert::error(Some(topic), e))?;
        if partitions > 0 {
            return Err(BackendError::InvalidRequest(format!(
                "a reader reads one partition; {topic} has {partitions}"
            )));
        }
        let start = resolve(positions.as_ref(), topic, start).await?;
        let state = subscribe(&client, topic, start).await?;
        Ok(PulsarReader {
            topic: topic.clone(),
            client,
            positions,
            state: Mutex::new(state),
        })
    }

    /// The next message past the floor, waiting for one when `wait`;
    /// `Ok(None)` when not waiting and none is buffered.
    async fn take(&self, state: &mut State, wait: bool) -> Result<Option<Message>, BackendError> {
        loop {
            let next = if wait {
                state.consumer.next().await
            } else {
                // Polled once: a dropped `next` future loses nothing (the
                // crate's stream is a channel).
                match state.consumer.next().now_or_never() {
                    Some(next) => next,
                    None => return Ok(None),
                }
            };
            let raw = match next {
                Some(Ok(raw)) => raw,
                Some(Err(e)) => return Err(convert::error(Some(&self.topic), e)),
                None => return Err(BackendError::Closed),
            };
            let at = key(&raw.message_id.id);
            if state.floor.is_some_and(|floor| at <= floor) {
                continue;
            }
            state.floor = Some(at);
            return convert::message(raw, Some(&self.topic)).map(Some);
        }
    }
}

#[async_trait]
impl Reader for PulsarReader {
    async fn next(&self) -> Result<Message, BackendError> {
        let mut state = self.state.lock().await;
        if let Some(error) = state.failed.take() {
            return Err(error);
        }
        if let Some(message) = state.peeked.take() {
            return Ok(message);
        }
        match self.take(&mut state, true).await? {
            Some(message) => Ok(message),
            // Not reached: waiting ends with a message or an error.
            None => Err(BackendError::Closed),
        }
    }

    async fn seek(&self, position: StartPosition) -> Result<(), BackendError> {
        let start = resolve(self.positions.as_ref(), &self.topic, position).await?;
        let mut state = self.state.lock().await;
        let fresh = subscribe(&self.client, &self.topic, start).await?;
        let mut old = std::mem::replace(&mut *state, fresh);
        // The old subscription is non-durable: closing it deletes it.
        let _ = close_consumer(&mut old.consumer).await;
        Ok(())
    }

    async fn has_message_available(&self) -> Result<bool, BackendError> {
        let mut state = self.state.lock().await;
        if state.peeked.is_some() || state.failed.is_some() {
            return Ok(true);
        }
        if let Some(message) = self.take(&mut state, false).await? {
            state.peeked = Some(message);
            return Ok(true);
        }
        tracing::debug!(topic = %self.topic, floor = ?state.floor, "asking for the last message id");
        let last = last_message_id(&mut state.consumer, &self.topic).await?;
        tracing::debug!(topic = %self.topic, last = ?last.as_ref().map(key), "last message id");
        Ok(last.is_some_and(|last| state.floor.is_none_or(|floor| key(&last) > floor)))
    }

    async fn next_available(&self, max: usize) -> Result<Vec<Message>, BackendError> {
        let mut state = self.state.lock().await;
        if let Some(error) = state.failed.take() {
            return Err(error);
        }
        let mut out: Vec<Message> = state.peeked.take().into_iter().collect();
        // No await below suspends: `take` without waiting polls a channel
        // once, so this cannot be cancelled holding taken messages.
        while out.len() < max {
            match self.take(&mut state, false).await {
                Ok(Some(message)) => out.push(message),
                Ok(None) => break,
                Err(error) if out.is_empty() => return Err(error),
                Err(error) => {
                    state.failed = Some(error);
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// The start for a contract position; offsets and times through `positions`
/// (past the end: the end). The offset the next message will get starts
/// just after the message before it, not at the end found on subscribing:
/// a message published in between is read, as the offset promised.
async fn resolve(
    positions: &dyn Positions,
    topic: &TopicName,
    position: StartPosition,
) -> Result<Start, BackendError> {
    let id = match position {
        StartPosition::Earliest => return Ok(Start::earliest()),
        StartPosition::Latest => return Ok(Start::latest()),
        StartPosition::Id(id) => Some(id),
        StartPosition::Offset(offset) => match positions.offset(topic, offset).await? {
            Some(id) => Some(id),
            None if offset == 0 => return Ok(Start::earliest()),
            None => match positions.offset(topic, offset - 1).await? {
                Some(previous) => return Ok(Start::after(&previous)),
                None => None,
            },
        },
        StartPosition::Timestamp(timestamp) => positions.timestamp(topic, timestamp).await?,
    };
    Ok(id.as_ref().map_or_else(Start::latest, Start::at))
}

/// A name no other reader of the partition has: non-durable subscriptions
/// share the partition's namespace of subscription names.
fn subscription_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "gateway-reader-{:x}-{nanos:x}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A new non-durable subscription of `topic` at `start`.
async fn subscribe(
    client: &Pulsar<TokioExecutor>,
    topic: &TopicName,
    start: Start,
) -> Result<State, BackendError> {
    let options = ConsumerOptions {
        start_message_id: Some(MessageIdData {
            partition: Some(topic.partition_index().map_or(-1, |p| p as i32)),
            ..start.id
        }),
        ..ConsumerOptions::default()
    }
    .durable(false)
    .with_receiver_queue_size(READ_AHEAD);
    let mut consumer: RawConsumer = client
        .consumer()
        .with_topic(topic.as_str())
        .with_subscription(subscription_name())
        .with_subscription_type(SubType::Exclusive)
        .with_options(options)
        .with_unacked_message_resend_delay(None)
        .build()
        .await
        .map_err(|e| convert::error(Some(topic), e))?;
    let floor = if start.at_end {
        // What is published from here on is read; what the subscription
        // may deliver from before (published while it was set up) is not.
        last_message_id(&mut consumer, topic)
            .await?
            .map(|last| key(&last))
    } else {
        start.floor
    };
    Ok(State {
        consumer,
        floor,
        peeked: None,
        failed: None,
    })
}

/// The partition's last message id, `None` when it holds none.
async fn last_message_id(
    consumer: &mut RawConsumer,
    topic: &TopicName,
) -> Result<Option<MessageIdData>, BackendError> {
    let ids = consumer
        .get_last_message_id()
        .await
        .map_err(|e| convert::error(Some(topic), e))?;
    Ok(ids.into_iter().next().filter(names_a_message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_at_an_id_passes_over_what_precedes_it_in_its_entry() {
        let batched = MessageId {
            offset: 9,
            ledger_id: 7,
            entry_id: 3,
            partition: -1,
            batch_index: 1,
        };
        let floor = Start::at(&batched).floor.unwrap_or((0, 0, 0));
        assert!((7, 3, 0) <= floor, "the batch member before is dropped");
        assert!((7, 3, 1) > floor, "the asked member is returned");
        let single = MessageId {
            batch_index: -1,
            ..batched
        };
        let floor = Start::at(&single).floor.unwrap_or((0, 0, 0));
        assert!((7, 2, -1) <= floor);
        assert!((7, 3, -1) > floor);
    }

    #[test]
    fn an_empty_partitions_last_id_names_no_message() {
        let empty = MessageIdData {
            ledger_id: 12,
            entry_id: u64::MAX,
            ..Default::default()
        };
        assert!(!names_a_message(&empty));
        assert!(names_a_message(&MessageIdData {
            entry_id: 0,
            ..empty
        }));
    }
}
