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

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use gateway_api::{
    BackendError, Message, MessageId, StartPosition, Subscription, SubscriptionKind, TopicName,
};
use pulsar::message::proto::MessageIdData;
use pulsar::{Pulsar, TokioExecutor};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::convert;
use super::reader::Positions;

/// The crate's consumer of raw payloads.
pub type RawConsumer = pulsar::Consumer<Vec<u8>, TokioExecutor>;

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

/// A consumer attached to a Pulsar subscription.
pub struct PulsarSubscription {
    messages: Mutex<mpsc::Receiver<Result<Message, BackendError>>>,
    commands: mpsc::Sender<Command>,
    /// The subscription's type: cumulative acknowledgements are refused on
    /// Shared and KeyShared, where the broker would ignore them (Pulsar's
    /// own clients refuse them the same way, before sending).
    kind: SubscriptionKind,
}

impl PulsarSubscription {
    /// Starts the task that drives `consumer`; `queue` bounds the messages
    /// waiting for `receive` (the crate's own receiver queue bounds the rest).
    pub fn start(
        consumer: RawConsumer,
        client: Pulsar<TokioExecutor>,
        kind: SubscriptionKind,
        queue: usize,
        positions: Arc<dyn Positions>,
    ) -> Self {
        let (message_tx, message_rx) = mpsc::channel(queue.max(1));
        let (command_tx, command_rx) = mpsc::channel(64);
        let task = Task {
            consumer,
            client,
            messages: message_tx,
            commands: command_rx,
            batches: HashMap::new(),
            positions,
        };
        tokio::spawn(task.run());
        PulsarSubscription {
            messages: Mutex::new(message_rx),
            commands: command_tx,
            kind,
        }
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
        messages.recv().await.unwrap_or(Err(BackendError::Closed))
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
    client: Pulsar<TokioExecutor>,
    messages: mpsc::Sender<Result<Message, BackendError>>,
    commands: mpsc::Receiver<Command>,
    /// Per batch entry delivered and not fully acknowledged: which of its
    /// messages are still unacknowledged.
    batches: HashMap<EntryKey, Vec<bool>>,
    /// Offsets to message ids, for seeks by offset.
    positions: Arc<dyn Positions>,
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
                            permit.send(message);
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
                    let _ = self.consumer.close().await;
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
        let message = convert::message(raw)?;
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
                let result = self.seek(position).await;
                if result.is_ok() {
                    // Whatever was taken before the seek is not wanted now.
                    *held = None;
                    self.batches.clear();
                }
                let _ = reply.send(result);
                false
            }
            Command::Unsubscribe { reply } => {
                let result = self
                    .consumer
                    .unsubscribe()
                    .await
                    .map_err(|e| convert::error(None, e));
                let _ = self.consumer.close().await;
                let _ = reply.send(result);
                true
            }
            Command::Close { reply } => {
                let result = self
                    .consumer
                    .close()
                    .await
                    .map_err(|e| convert::error(None, e));
                let _ = reply.send(result);
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
            // Everything before this entry is acknowledged too.
            self.batches.retain(|(t, l, e), _| {
                t != topic.as_str() || (*l, *e) > (id.ledger_id, id.entry_id)
            });
        }
        data
    }

    /// The one partition this consumer reads: an offset names a position
    /// in one partition only.
    fn single_topic(&self) -> Result<TopicName, BackendError> {
        match self.consumer.topics().as_slice() {
            [one] => one.parse().map_err(|e| {
                BackendError::Unavailable(format!("the crate reports topic {one}: {e}"))
            }),
            topics => Err(BackendError::InvalidRequest(format!(
                "a seek by offset names a position in one partition; this subscription covers {}",
                topics.len()
            ))),
        }
    }

    async fn seek(&mut self, position: StartPosition) -> Result<(), BackendError> {
        let position = match position {
            StartPosition::Offset(offset) => {
                let topic = self.single_topic()?;
                // Past the end: the end.
                self.positions
                    .offset(&topic, offset)
                    .await?
                    .map_or(StartPosition::Latest, StartPosition::Id)
            }
            other => other,
        };
        let (id, timestamp) = match position {
            StartPosition::Earliest => (
                Some(MessageIdData {
                    ledger_id: u64::MAX,
                    entry_id: u64::MAX,
                    ..Default::default()
                }),
                None,
            ),
            // (An offset was resolved above.)
            StartPosition::Latest | StartPosition::Offset(_) => (
                Some(MessageIdData {
                    ledger_id: i64::MAX as u64,
                    entry_id: i64::MAX as u64,
                    ..Default::default()
                }),
                None,
            ),
            StartPosition::Id(id) => (Some(convert::id_data(&id)), None),
            StartPosition::Timestamp(ms) => (None, Some(ms)),
        };
        self.consumer
            .seek(None, id, timestamp, self.client.clone())
            .await
            .map_err(|e| convert::error(None, e))
    }
}
