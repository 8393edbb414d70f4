//! The backend contract: publish, subscribe, read, manage topics.
//!
//! Two implementations exist: the embedded durable store and Apache Pulsar.
//! One conformance suite (`tests/conformance.rs`) holds both to this text.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::error::BackendError;
use crate::message::{Message, MessageId, NewMessage};
use crate::metadata::MetadataStore;
use crate::topic::{Namespace, TopicName};

/// Pulsar's subscription types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionKind {
    /// One consumer; a second one is refused with
    /// [`BackendError::ConsumerBusy`].
    Exclusive,
    /// Many consumers; messages go round-robin to those with room; order
    /// is not kept across consumers.
    Shared,
    /// Many consumers; one is active (per partition) and receives
    /// everything; when it leaves, another takes over with its
    /// unacknowledged messages. Which one is active is the backend's choice
    /// (Pulsar picks by the consumers' names).
    Failover,
    /// Many consumers; the messages of one key go to one consumer at a
    /// time, in order. A key moves to a joining consumer only after what
    /// its old consumer was given of it is acknowledged, or it stays.
    KeyShared,
}

/// Where a subscription starts (when it is new), a reader starts, or a seek
/// moves to. Positions are inclusive: the message at the position is the
/// first one delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest retained message.
    Earliest,
    /// The next message published after the call.
    Latest,
    /// The message with this id (it must name a partition of the topic).
    Id(MessageId),
    /// The message at this offset of a partition.
    Offset(u64),
    /// The first message published at or after this time (ms since epoch).
    Timestamp(u64),
}

/// Which topics a subscription covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicSelector {
    /// These topics; a partitioned topic's base name means all its
    /// partitions.
    Topics(Vec<TopicName>),
    /// Every topic of `namespace` whose full base name
    /// (`persistent://tenant/ns/local`) the regular expression matches
    /// entirely, including topics created after the subscription.
    Pattern {
        /// Where to look.
        namespace: Namespace,
        /// Regular expression in the `regex` crate's syntax, anchored at
        /// both ends by the backend.
        regex: String,
    },
}

/// What a consumer asks for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// The topics.
    pub topics: TopicSelector,
    /// Subscription name: durable state (cursor, acks) is kept under it.
    pub subscription: String,
    /// How messages are spread over the subscription's consumers.
    pub kind: SubscriptionKind,
    /// Where a new subscription starts; an existing one resumes where its
    /// acknowledgements left it.
    pub initial_position: StartPosition,
    /// False for a subscription that disappears with its last consumer.
    pub durable: bool,
    /// The consumer's name, for logs and the Failover choice.
    pub consumer_name: String,
    /// How many unacknowledged messages may be buffered toward this consumer
    /// (Pulsar's receiver queue size): the consumer's flow-control window.
    pub receive_queue: usize,
}

impl SubscribeRequest {
    /// A durable Exclusive subscription of one topic from the earliest
    /// message, with a receive queue of 1000.
    pub fn new(topic: TopicName, subscription: impl Into<String>) -> SubscribeRequest {
        SubscribeRequest {
            topics: TopicSelector::Topics(vec![topic]),
            subscription: subscription.into(),
            kind: SubscriptionKind::Exclusive,
            initial_position: StartPosition::Earliest,
            durable: true,
            consumer_name: String::new(),
            receive_queue: 1000,
        }
    }

    /// Sets the subscription kind.
    pub fn kind(mut self, kind: SubscriptionKind) -> SubscribeRequest {
        self.kind = kind;
        self
    }

    /// Sets where a new subscription starts.
    pub fn initial_position(mut self, position: StartPosition) -> SubscribeRequest {
        self.initial_position = position;
        self
    }

    /// Sets the consumer's name.
    pub fn consumer_name(mut self, name: impl Into<String>) -> SubscribeRequest {
        self.consumer_name = name.into();
        self
    }
}

/// One consumer attached to a subscription. Dropping it (or
/// [`Subscription::close`]) detaches the consumer; messages it had not
/// acknowledged are redelivered to the subscription's other consumers, or
/// to the next one to attach. A drop detaches in the background (on
/// Pulsar the close is a round trip to the broker): a subscribe that must
/// find it detached, such as a new non-durable subscription of the same
/// name that should start afresh, awaits `close` first.
#[async_trait]
pub trait Subscription: Send + Sync {
    /// The next message. Waits until one is available. Cancel-safe: a
    /// message is never lost when the future is dropped before completion.
    async fn receive(&self) -> Result<Message, BackendError>;

    /// Acknowledges one message of `topic` (the message's own topic).
    async fn ack(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError>;

    /// Acknowledges every message of `topic` up to and including `id`.
    /// Refused on Shared and KeyShared subscriptions, as Pulsar does.
    async fn ack_cumulative(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError>;

    /// Negative acknowledgement: the message is redelivered (to any
    /// consumer) with its redelivery count raised by one.
    async fn nack(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError>;

    /// Moves the subscription's cursor on every topic it covers; messages
    /// buffered toward consumers are discarded and redelivered from there.
    async fn seek(&self, position: StartPosition) -> Result<(), BackendError>;

    /// Detaches this consumer and deletes the subscription with its cursor.
    async fn unsubscribe(&self) -> Result<(), BackendError>;

    /// Detaches this consumer; the subscription stays (if durable).
    async fn close(&self) -> Result<(), BackendError>;
}

/// Reads one topic partition from a position, without a subscription.
#[async_trait]
pub trait Reader: Send + Sync {
    /// The next message. Waits until one is published. Cancel-safe.
    async fn next(&self) -> Result<Message, BackendError>;

    /// Moves the reader.
    async fn seek(&self, position: StartPosition) -> Result<(), BackendError>;

    /// Whether a message is available now at the reader's position.
    async fn has_message_available(&self) -> Result<bool, BackendError>;

    /// Up to `max` messages from the reader's position that it can hand
    /// over without waiting for the network or for a publish, in order:
    /// what it has read ahead, or (embedded store) what one disk read
    /// brings. Empty when none is at hand, which does not mean none is
    /// published: on Pulsar one may be on its way (see
    /// [`Reader::has_message_available`] and [`Reader::next`]). Lets a
    /// reader be drained a batch per call rather than a message per call.
    /// Cancel-safe.
    async fn next_available(&self, max: usize) -> Result<Vec<Message>, BackendError>;
}

/// The offsets bounding a partition's retained messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRange {
    /// Offset of the oldest retained message (equal to `next` when empty).
    pub earliest: u64,
    /// Offset the next published message will get.
    pub next: u64,
}

/// A batch queued by [`Backend::queue_batch`]: resolves to the ids of its
/// messages, in order, once all are persisted.
pub type Persisting = BoxFuture<'static, Result<Vec<MessageId>, BackendError>>;

/// Publishes `messages` one after another with [`Backend::publish`], each
/// routed on its own, and returns their ids as a batch already persisted:
/// the default of [`Backend::queue_batch`], and what a backend does where
/// it cannot store a batch together (a partitioned topic's base name).
pub async fn publish_one_by_one<B: Backend + ?Sized>(
    backend: &B,
    topic: &TopicName,
    messages: Vec<NewMessage>,
) -> Result<Persisting, BackendError> {
    let mut ids = Vec::with_capacity(messages.len());
    for message in messages {
        ids.push(backend.publish(topic, message).await?);
    }
    Ok(Box::pin(futures::future::ready(Ok(ids))))
}

/// Where messages are stored: the embedded store or a Pulsar cluster.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Stores a message and returns its id only once it is persisted (after
    /// fsync, or Pulsar's acknowledgement). On a partitioned topic's base
    /// name the partition is chosen by key hash (round-robin when no key);
    /// the id says which.
    async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<MessageId, BackendError>;

    /// Stores `messages` in order on one partition (or topic without
    /// partitions) and returns their ids, in order, once all are
    /// persisted: they get ascending offsets (consecutive unless another
    /// publisher's messages land between them). Backends store them
    /// together (one group commit, one round of sends) rather than one
    /// after another. On an error some first messages may be stored. On a
    /// partitioned topic's base name each message is routed as by
    /// [`Backend::publish`]. The default queues them
    /// ([`Backend::queue_batch`]) and waits.
    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<MessageId>, BackendError> {
        self.queue_batch(topic, messages).await?.await
    }

    /// [`Backend::publish_batch`] in two steps: returns once `messages` are
    /// queued on their partition, ahead of anything queued there after
    /// this call returned, and the returned future resolves to their ids
    /// once they are persisted. A handler can so queue a connection's next
    /// batch while the previous one is being persisted (Kafka producers
    /// keep several Produce requests in flight) and still store them in
    /// the order they came. On an error while queueing, some first
    /// messages may be queued. The default publishes them one after
    /// another before it returns: correct, without the overlap.
    async fn queue_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Persisting, BackendError> {
        publish_one_by_one(self, topic, messages).await
    }

    /// Attaches a consumer to a subscription, creating it if needed.
    async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Box<dyn Subscription>, BackendError>;

    /// Opens a reader on one partition (or non-partitioned topic).
    async fn reader(
        &self,
        topic: &TopicName,
        start: StartPosition,
    ) -> Result<Box<dyn Reader>, BackendError>;

    /// `None` if the topic does not exist, `Some(0)` if it exists and is not
    /// partitioned, `Some(n)` for `n` partitions.
    async fn partitions(&self, topic: &TopicName) -> Result<Option<u32>, BackendError>;

    /// Creates a topic with `partitions` partitions (0: not partitioned).
    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> Result<(), BackendError>;

    /// Raises a partitioned topic's partition count.
    async fn update_partitions(
        &self,
        topic: &TopicName,
        partitions: u32,
    ) -> Result<(), BackendError>;

    /// Deletes a topic (all partitions) with its subscriptions.
    async fn delete_topic(&self, topic: &TopicName) -> Result<(), BackendError>;

    /// The base topics of a namespace.
    async fn list_topics(&self, namespace: &Namespace) -> Result<Vec<TopicName>, BackendError>;

    /// The id of the last message of a partition, if it has any.
    async fn last_message_id(&self, topic: &TopicName) -> Result<Option<MessageId>, BackendError>;

    /// The retained offsets of a partition.
    async fn offsets(&self, topic: &TopicName)
        -> Result<crate::backend::OffsetRange, BackendError>;

    /// Offset of the first message of a partition published at or after
    /// `timestamp` (ms since epoch), `None` if there is none.
    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        timestamp: u64,
    ) -> Result<Option<u64>, BackendError>;

    /// The durable key-value store shared by all gateway instances.
    fn metadata(&self) -> Arc<dyn MetadataStore>;

    /// `Ok` when the backend can serve requests (for `/readyz`).
    async fn ready(&self) -> Result<(), BackendError>;

    /// Flushes and releases everything; called once at shutdown after every
    /// connection is done.
    async fn close(&self) -> Result<(), BackendError>;
}
