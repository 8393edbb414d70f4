//! One contract [`Subscription`] on Pulsar: a task owns the crate's
//! consumer (whose calls need `&mut`), hands messages to `receive` through a
//! bounded queue and takes acknowledgements through another, so `receive`
//! and `ack` never wait on each other.
//!
//! Batched entries: the contract acknowledges single messages. The task
//! remembers, for each delivered batch entry not yet fully acknowledged,
//! which of its messages are still unacknowledged, and sends Pulsar's
//! batch-index acknowledgement (the entry id with an `ack_set`) for each, or
//! the plain entry acknowledgement once the last one is acknowledged.
//!
//! Seeks close the crate's consumer and open a new one ([`Opener`]). Each
//! queued message carries the seek epoch it was taken in; `receive` passes
//! over those taken before the latest seek.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use gateway_api::{
    BackendError, Message, MessageId, StartPosition, Subscription, SubscriptionKind, TopicName,
};
use pulsar::message::proto::MessageIdData;
use pulsar::TokioExecutor;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::convert;
use super::opener::Opener;

/// The crate's consumer of raw payloads.
pub type RawConsumer = pulsar::Consumer<Vec<u8>, TokioExecutor>;

/// How long one close or unsubscribe of the crate's consumer is waited
/// for before its queue is drained again and the call repeated.
const ENGINE_ATTEMPT: Duration = Duration::from_secs(1);

/// How long a close or unsubscribe is tried in all.
const ENGINE_GRACE: Duration = Duration::from_secs(10);

/// The most buffered messages drained before one attempt.
const DRAIN_MAX: usize = 10_000;

/// A call of the crate's consumer that its engine must answer.
#[derive(Clone, Copy, Debug)]
enum EngineCall {
    /// Detach the consumer; the subscription stays.
    Close,
    /// Delete the subscription.
    Unsubscribe,
}

/// Makes `call` on the crate's consumer, draining its delivery queue
/// first and again whenever an attempt goes unanswered.
///
/// The crate's consumer engine answers calls only between deliveries, and
/// a delivery waits while the engine's queue toward the consumer is full:
/// a consumer that is not read (closing, or its handler stopped receiving)
/// with more messages on their way would never be closed. Drained
/// messages were not acknowledged; Pulsar delivers them again.
async fn call_engine(consumer: &mut RawConsumer, call: EngineCall) -> Result<(), BackendError> {
    let deadline = tokio::time::Instant::now() + ENGINE_GRACE;
    loop {
        // What is buffered now (the engine's queue is bounded by the
        // receiver queue), without waiting for more.
        for _ in 0..DRAIN_MAX {
            if !matches!(consumer.next().now_or_never(), Some(Some(_))) {
                break;
            }
        }
        tokio::task::yield_now().await;
        let attempt = async {
            match call {
                EngineCall::Close => consumer.close().await,
                EngineCall::Unsubscribe => consumer.unsubscribe().await,
            }
        };
        match tokio::time::timeout(ENGINE_ATTEMPT, attempt).await {
            Ok(result) => return result.map_err(|e| convert::error(None, e)),
            Err(_) if tokio::time::Instant::now() < deadline => {}
            Err(_) => {
                return Err(BackendError::Unavailable(format!(
                    "the consumer's {call:?} went unanswered for {} s",
                    ENGINE_GRACE.as_secs()
                )))
            }
        }
    }
}

/// Closes the crate's consumer; false when its engine did not answer.
/// The caller then drops the consumer, which ends the engine and closes
/// the consumer on the broker from a task of the crate's.
pub(super) async fn close_consumer(consumer: &mut RawConsumer) -> bool {
    match call_engine(consumer, EngineCall::Close).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("closing a consumer: {e}; dropping it instead");
            false
        }
    }
}

/// What the handler side asks the task to do.
enum Command {
    Ack {
        topic: TopicName,
        id: MessageId,
        cumulative: bool,
        reply: oneshot::Sender<Result<(), BackendError>>,
    },
    Nack {
        topic: TopicName,
        id: MessageId,
        reply: oneshot::Sender<Result<(), BackendError>>,
    },
    Seek {
        position: StartPosition,
        reply: oneshot::Sender<Result<(), BackendError>>,
    },
    Unsubscribe {
        reply: oneshot::Sender<Result<(), BackendError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), BackendError>>,
    },
}

/// A message (or error) for `receive`, with the seek epoch it was taken in.
type Queued = (u64, Result<Message, BackendError>);

/// A consumer attached to a Pulsar subscription.
pub struct PulsarSubscription {
    messages: Mutex<mpsc::Receiver<Queued>>,
    /// The number of seeks done: queued messages of an earlier epoch were
    /// taken before the latest seek.
    epoch: Arc<AtomicU64>,
    commands: mpsc::Sender<Command>,
    /// The subscription's type: cumulative acknowledgements are refused on
    /// Shared and KeyShared, where the broker would ignore them (Pulsar's
    /// own clients refuse them the same way, before sending).
    kind: SubscriptionKind,
}

impl PulsarSubscription {
    /// Attaches a consumer to the subscription `opener` describes, at its
    /// initial position, and starts the task that drives it.
    pub async fn open(opener: Opener) -> Result<Self, BackendError> {
        let consumer = opener.open(None).await?;
        let request = &opener.request;
        let (kind, queue) = (request.kind, request.receive_queue);
        let initial = request.initial_position;
        let (message_tx, message_rx) = mpsc::channel(queue.max(1));
        let (command_tx, command_rx) = mpsc::channel(64);
        let epoch = Arc::new(AtomicU64::new(0));
        let task = Task {
            consumer,
            opener,
            messages: message_tx,
            epoch: epoch.clone(),
            commands: command_rx,
            batches: HashMap::new(),
        };
        tokio::spawn(task.run());
        let subscription = PulsarSubscription {
            messages: Mutex::new(message_rx),
            epoch,
            commands: command_tx,
            kind,
        };
        // Pulsar starts new subscriptions at the earliest or latest message
        // only; other positions are a seek.
        match initial {
            StartPosition::Earliest | StartPosition::Latest => {}
            other => subscription.seek(other).await?,
        }
        Ok(subscription)
    }

    async fn call(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), BackendError>>) -> Command,
    ) -> Result<(), BackendError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| BackendError::Closed)?;
        answer.await.map_err(|_| BackendError::Closed)?
    }
}

impl PulsarSubscription {
    async fn ack_command(
        &self,
        topic: &TopicName,
        id: MessageId,
        cumulative: bool,
    ) -> Result<(), BackendError> {
        let topic = topic.clone();
        self.call(|reply| Command::Ack {
            topic,
            id,
            cumulative,
            reply,
        })
        .await
    }
}

#[async_trait]
impl Subscription for PulsarSubscription {
    async fn receive(&self) -> Result<Message, BackendError> {
        // `recv` is cancel-safe, and so is waiting for the lock.
        let mut messages = self.messages.lock().await;
        loop {
            match messages.recv().await {
                Some((epoch, _)) if epoch != self.epoch.load(Ordering::Acquire) => continue,
                Some((_, message)) => return message,
                None => return Err(BackendError::Closed),
            }
        }
    }

    async fn ack(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError> {
        self.ack_command(topic, id, false).await
    }

    async fn ack_cumulative(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError> {
        if matches!(
            self.kind,
            SubscriptionKind::Shared | SubscriptionKind::KeyShared
        ) {
            return Err(BackendError::InvalidRequest(format!(
                "cumulative acknowledgement is not allowed on a {:?} subscription ({topic})",
                self.kind
            )));
        }
        self.ack_command(topic, id, true).await
    }

    async fn nack(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError> {
        let topic = topic.clone();
        self.call(|reply| Command::Nack { topic, id, reply }).await
    }

    async fn seek(&self, position: StartPosition) -> Result<(), BackendError> {
        self.call(|reply| Command::Seek { position, reply }).await
    }

    async fn unsubscribe(&self) -> Result<(), BackendError> {
        self.call(|reply| Command::Unsubscribe { reply }).await
    }

    async fn close(&self) -> Result<(), BackendError> {
        self.call(|reply| Command::Close { reply }).await
    }
}

/// Key of a delivered batch entry: partition topic, ledger, entry.
type EntryKey = (String, u64, u64);

/// What woke the task.
enum Event {
    /// A command, or `None` when every handle is gone.
    Command(Option<Command>),
    /// The consumer's next message, error or end.
    Next(Option<Result<Box<pulsar::consumer::Message<Vec<u8>>>, pulsar::Error>>),
}

/// The task that owns the crate's consumer.
struct Task {
    consumer: RawConsumer,
    /// To open the consumer again on a seek.
    opener: Opener,
    messages: mpsc::Sender<Queued>,
    /// Shared with the handle; only the task changes it.
    epoch: Arc<AtomicU64>,
    commands: mpsc::Receiver<Command>,
    /// Per batch entry delivered and not fully acknowledged: which of its
    /// messages are still unacknowledged.
    batches: HashMap<EntryKey, Vec<bool>>,
}

impl Task {
    async fn run(mut self) {
        // One message at a time is taken from the consumer and held until
        // the queue has room, while commands keep flowing.
        let mut held: Option<Result<Message, BackendError>> = None;
        loop {
            let event = tokio::select! {
                command = self.commands.recv() => Event::Command(command),
                permit = self.messages.reserve(), if held.is_some() => match permit {
                    Ok(permit) => {
                        if let Some(message) = held.take() {
                            permit.send((self.epoch.load(Ordering::Acquire), message));
                        }
                        continue;
                    }
                    Err(_) => Event::Command(None),
                },
                next = self.consumer.next(), if held.is_none() => {
                    Event::Next(next.map(|r| r.map(Box::new)))
                }
            };
            match event {
                Event::Command(Some(command)) => {
                    if self.handle(command, &mut held).await {
                        return;
                    }
                }
                // Every handle on the subscription is gone.
                Event::Command(None) => {
                    let _ = close_consumer(&mut self.consumer).await;
                    return;
                }
                Event::Next(next) => {
                    held = Some(match next {
                        Some(Ok(raw)) => self.delivered(*raw),
                        Some(Err(e)) => Err(convert::error(None, e)),
                        None => Err(BackendError::Closed),
                    });
                }
            }
        }
    }

    /// Converts a delivered message, remembering its batch.
    fn delivered(
        &mut self,
        raw: pulsar::consumer::Message<Vec<u8>>,
    ) -> Result<Message, BackendError> {
        let batch_size = raw.payload.metadata.num_messages_in_batch.unwrap_or(1);
        let id = raw.message_id.id.clone();
        let key = (raw.topic.clone(), id.ledger_id, id.entry_id);
        let message = convert::message(raw, None)?;
        if batch_size > 1 {
            self.batches
                .entry(key)
                .or_insert_with(|| vec![true; usize::try_from(batch_size).unwrap_or(1)]);
        }
        Ok(message)
    }

    /// Does one command; true when the task is done.
    async fn handle(
        &mut self,
        command: Command,
        held: &mut Option<Result<Message, BackendError>>,
    ) -> bool {
        match command {
            Command::Ack {
                topic,
                id,
                cumulative,
                reply,
            } => {
                let result = self.ack(&topic, id, cumulative).await;
                let _ = reply.send(result);
                false
            }
            Command::Nack { topic, id, reply } => {
                let result = self
                    .consumer
                    .nack_with_id(topic.as_str(), convert::id_data(&id))
                    .await
                    .map_err(|e| convert::error(Some(&topic), e.into()));
                let _ = reply.send(result);
                false
            }
            Command::Seek { position, reply } => {
                let (result, done) = self.seek(position, held).await;
                let _ = reply.send(result);
                done
            }
            Command::Unsubscribe { reply } => {
                let result = call_engine(&mut self.consumer, EngineCall::Unsubscribe).await;
                let _ = close_consumer(&mut self.consumer).await;
                let _ = reply.send(result);
                true
            }
            Command::Close { reply } => {
                // Detached either way: closed, or dropped as the task ends.
                let _ = close_consumer(&mut self.consumer).await;
                let _ = reply.send(Ok(()));
                true
            }
        }
    }

    async fn ack(
        &mut self,
        topic: &TopicName,
        id: MessageId,
        cumulative: bool,
    ) -> Result<(), BackendError> {
        let data = self.ack_data(topic, &id, cumulative);
        let result = if cumulative {
            self.consumer
                .cumulative_ack_with_id(topic.as_str(), data)
                .await
        } else {
            self.consumer.ack_with_id(topic.as_str(), data).await
        };
        result.map_err(|e| convert::error(Some(topic), e.into()))
    }

    /// The id to acknowledge: for a message of a batch entry not otherwise
    /// fully acknowledged, the entry with the ack set of what remains.
    fn ack_data(&mut self, topic: &TopicName, id: &MessageId, cumulative: bool) -> MessageIdData {
        let mut data = convert::id_data(id);
        let key = (topic.as_str().to_owned(), id.ledger_id, id.entry_id);
        let (Ok(index), Some(unacked)) =
            (usize::try_from(id.batch_index), self.batches.get_mut(&key))
        else {
            return data;
        };
        if cumulative {
            unacked
                .iter_mut()
                .take(index + 1)
                .for_each(|bit| *bit = false);
        } else if let Some(bit) = unacked.get_mut(index) {
            *bit = false;
        }
        if unacked.iter().any(|&bit| bit) {
            data.ack_set = convert::ack_set(unacked);
            data.batch_size = i32::try_from(unacked.len()).ok();
        } else {
            self.batches.remove(&key);
            data.batch_index = None;
        }
        if cumulative {
            // Every entry before this one is acknowledged too. This entry's
            // own remainder (if any) stays: a later ack of one of its
            // members must still carry the ack set, or the broker would
            // take it for the whole entry.
            self.batches.retain(|(t, l, e), _| {
                t != topic.as_str() || (*l, *e) >= (id.ledger_id, id.entry_id)
            });
        }
        data
    }

    /// Moves the subscription to `position`: closes the consumer, moves
    /// the cursors, opens a new consumer. True when the task is done: the
    /// consumer could not be opened again.
    async fn seek(
        &mut self,
        position: StartPosition,
        held: &mut Option<Result<Message, BackendError>>,
    ) -> (Result<(), BackendError>, bool) {
        let planned = match self.topics() {
            Ok(topics) => self.opener.plan(&topics, position).await,
            Err(e) => Err(e),
        };
        let planned = match planned {
            Ok(planned) => planned,
            Err(e) => return (Err(e), false),
        };
        if !close_consumer(&mut self.consumer).await {
            // Still attached: a new consumer could be refused as a second
            // one. The task ends, dropping it; the subscription is closed.
            let stuck = BackendError::Unavailable(
                "the consumer did not close for the seek; subscribe again".into(),
            );
            return (Err(stuck), true);
        }
        // A cursor that could not be moved is reported, and the consumer
        // goes on from where it was.
        let moved = self.opener.move_cursors(&planned).await;
        match self.opener.open(planned.start()).await {
            Ok(consumer) => {
                self.consumer = consumer;
                *held = None;
                self.batches.clear();
                self.epoch.fetch_add(1, Ordering::AcqRel);
                (moved, false)
            }
            Err(e) => (Err(e), true),
        }
    }

    /// The partitions (or topics without partitions) the consumer reads.
    fn topics(&self) -> Result<Vec<TopicName>, BackendError> {
        self.consumer
            .topics()
            .iter()
            .map(|t| {
                t.parse().map_err(|e| {
                    BackendError::Unavailable(format!("the crate reports topic {t}: {e}"))
                })
            })
            .collect()
    }
}
