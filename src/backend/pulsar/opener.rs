//! Opening a subscription's consumer, and opening it again elsewhere on a
//! seek.
//!
//! A seek closes the consumer, moves the subscription, then opens a new
//! consumer. Pulsar's own seek (the SEEK command on a live consumer) makes
//! the broker disconnect the consumer, and the client must then tell
//! messages it buffered before the seek from those after it; the crate's
//! seek instead opened a second consumer while the first was reconnecting
//! by itself, and on an Exclusive subscription one of them was refused.
//! With no consumer attached while the subscription moves, neither can
//! happen.
//!
//! - A durable subscription's cursors are moved through the admin API,
//!   partition by partition.
//! - A non-durable subscription's cursor goes with its consumer: the new
//!   consumer starts at the asked message.

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use gateway_api::backend::{SubscribeRequest, TopicSelector};
use gateway_api::{BackendError, MessageId, StartPosition, TopicName};
use pulsar::consumer::ConsumerOptions;
use pulsar::message::proto::MessageIdData;
use pulsar::{Pulsar, TokioExecutor};

use super::admin::{Admin, CursorTarget};
use super::consumer::RawConsumer;
use super::convert;
use super::reader::Positions;

/// How often a pattern subscription looks for new matching topics.
const PATTERN_REFRESH: Duration = Duration::from_secs(1);

/// How often a subscription looks for partitions added to its topics
/// (vendor patch 6).
const PARTITION_REFRESH: Duration = Duration::from_secs(5);

/// Everything needed to open a subscription's consumer again.
pub struct Opener {
    pub client: Pulsar<TokioExecutor>,
    pub admin: Admin,
    pub positions: Arc<dyn Positions>,
    pub request: SubscribeRequest,
}

/// Where a seek takes the subscription.
pub enum Move {
    /// A durable subscription: these partitions' cursors move.
    Cursors(Vec<(TopicName, CursorTarget)>),
    /// A non-durable subscription: the new consumer starts here.
    Start(MessageIdData),
}

impl Opener {
    /// Attaches a consumer to the subscription (creating the subscription
    /// at the request's initial position if it does not exist); `start`
    /// sets where a non-durable one starts.
    pub async fn open(&self, start: Option<MessageIdData>) -> Result<RawConsumer, BackendError> {
        let request = &self.request;
        let options = ConsumerOptions {
            start_message_id: start,
            ..ConsumerOptions::default()
        }
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
            TopicSelector::Topics(topics) => builder
                .with_topics(topics.iter().map(|t| t.as_str().to_owned()))
                .with_topic_refresh(PARTITION_REFRESH),
            TopicSelector::Pattern { namespace, regex } => {
                let regex = regex::Regex::new(&format!("^(?:{regex})$"))
                    .map_err(|e| BackendError::InvalidRequest(format!("pattern: {e}")))?;
                builder
                    .with_lookup_namespace(format!("{}/{}", namespace.tenant, namespace.namespace))
                    .with_topic_regex(regex)
                    .with_topic_refresh(PATTERN_REFRESH)
            }
        };
        let first = match &request.topics {
            TopicSelector::Topics(t) => t.first().cloned(),
            TopicSelector::Pattern { .. } => None,
        };
        builder
            .build::<Vec<u8>>()
            .await
            .map_err(|e| match convert::error(first.as_ref(), e) {
                BackendError::ConsumerBusy { topic, .. } => BackendError::ConsumerBusy {
                    topic,
                    subscription: request.subscription.clone(),
                },
                other => other,
            })
    }

    /// Where a seek to `position` takes a subscription reading `topics`
    /// (the partitions its consumer reads). Offsets and times are resolved
    /// here, before the consumer is closed, so a position that cannot be
    /// resolved leaves the subscription as it was.
    pub async fn plan(
        &self,
        topics: &[TopicName],
        position: StartPosition,
    ) -> Result<Move, BackendError> {
        if !self.request.durable {
            let start = match position {
                StartPosition::Earliest => convert::earliest_id(),
                StartPosition::Latest => convert::latest_id(),
                other => {
                    let topic = one_partition(topics, "a non-durable subscription")?;
                    self.resolve(topic, other)
                        .await?
                        .map_or_else(convert::latest_id, |id| {
                            convert::id_data(&MessageId {
                                partition: topic.partition_index().map_or(-1, |p| p as i32),
                                ..id
                            })
                        })
                }
            };
            return Ok(Move::Start(start));
        }
        let every = |to: CursorTarget| topics.iter().map(|t| (t.clone(), to)).collect();
        let cursors = match position {
            StartPosition::Earliest => every(CursorTarget::EARLIEST),
            StartPosition::Latest => every(CursorTarget::LATEST),
            StartPosition::Timestamp(ms) => every(CursorTarget::Time(ms)),
            StartPosition::Id(id) => {
                let topic = partition_of(topics, &id)?;
                vec![(topic.clone(), entry(&id))]
            }
            StartPosition::Offset(offset) => {
                let topic = one_partition(topics, "a seek by offset")?;
                let at = self.positions.offset(topic, offset).await?;
                let to = at.as_ref().map_or(CursorTarget::LATEST, entry);
                vec![(topic.clone(), to)]
            }
        };
        Ok(Move::Cursors(cursors))
    }

    /// Moves a durable subscription's cursors, with no consumer attached.
    pub async fn move_cursors(&self, planned: &Move) -> Result<(), BackendError> {
        let Move::Cursors(cursors) = planned else {
            return Ok(());
        };
        let subscription = self.request.subscription.as_str();
        try_join_all(
            cursors
                .iter()
                .map(|(topic, to)| self.admin.reset_cursor(topic, subscription, *to)),
        )
        .await
        .map(drop)
    }

    /// The id of the message at an offset or time, `None` past the end.
    async fn resolve(
        &self,
        topic: &TopicName,
        position: StartPosition,
    ) -> Result<Option<MessageId>, BackendError> {
        match position {
            StartPosition::Id(id) => Ok(Some(id)),
            StartPosition::Offset(offset) => self.positions.offset(topic, offset).await,
            StartPosition::Timestamp(ms) => self.positions.timestamp(topic, ms).await,
            StartPosition::Earliest | StartPosition::Latest => Ok(None),
        }
    }
}

impl Move {
    /// Where the new consumer starts (non-durable subscriptions only).
    pub fn start(&self) -> Option<MessageIdData> {
        match self {
            Move::Start(id) => Some(id.clone()),
            Move::Cursors(_) => None,
        }
    }
}

/// A cursor position at the message `id`, inclusive.
fn entry(id: &MessageId) -> CursorTarget {
    CursorTarget::Entry {
        ledger: i64::try_from(id.ledger_id).unwrap_or(i64::MAX),
        entry: i64::try_from(id.entry_id).unwrap_or(i64::MAX),
        batch_index: id.batch_index,
    }
}

/// The one partition of `topics`: offsets and times name positions in one
/// partition only.
fn one_partition<'t>(topics: &'t [TopicName], what: &str) -> Result<&'t TopicName, BackendError> {
    match topics {
        [one] => Ok(one),
        _ => Err(BackendError::InvalidRequest(format!(
            "{what} names a position in one partition; this subscription reads {}",
            topics.len()
        ))),
    }
}

/// The partition of `topics` a message id belongs to.
fn partition_of<'t>(
    topics: &'t [TopicName],
    id: &MessageId,
) -> Result<&'t TopicName, BackendError> {
    let wanted = u32::try_from(id.partition).ok();
    topics
        .iter()
        .find(|t| t.partition_index() == wanted)
        .or(match topics {
            [one] => Some(one),
            _ => None,
        })
        .ok_or_else(|| {
            BackendError::InvalidRequest(format!(
                "this subscription reads no partition {} of the message id",
                id.partition
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(partition: i32) -> MessageId {
        MessageId {
            offset: 4,
            ledger_id: 9,
            entry_id: 3,
            partition,
            batch_index: -1,
        }
    }

    #[test]
    fn an_id_moves_the_cursor_of_its_own_partition() {
        let base: TopicName = "persistent://public/default/t".parse().unwrap();
        let topics = [base.partition(0), base.partition(1)];
        assert_eq!(partition_of(&topics, &id(1)).unwrap(), &base.partition(1));
        assert!(partition_of(&topics, &id(5)).is_err());
        let single = [base.clone()];
        assert_eq!(partition_of(&single, &id(-1)).unwrap(), &base);
        assert_eq!(
            entry(&id(-1)),
            CursorTarget::Entry {
                ledger: 9,
                entry: 3,
                batch_index: -1
            }
        );
    }
}
