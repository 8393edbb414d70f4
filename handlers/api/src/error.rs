//! The one error type of the contract. Each handler maps it to its own
//! protocol's codes in one function at its edge.

use crate::auth::Action;
use crate::topic::{NameError, TopicName};

/// What went wrong behind the contract.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The topic does not exist (and was not auto-created).
    #[error("topic {0} does not exist")]
    TopicNotFound(TopicName),
    /// A topic was to be created but already exists.
    #[error("topic {0} already exists")]
    TopicExists(TopicName),
    /// The backend refused the action on the topic (for example, Pulsar's
    /// own ACLs on a forwarded token).
    #[error("not authorized to {action} on {topic}")]
    NotAuthorized {
        /// The topic acted on.
        topic: TopicName,
        /// The action that was refused.
        action: Action,
    },
    /// A name did not make a valid topic.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The request is not valid for the topic or subscription as it is
    /// (for example, one partition expected but a partitioned topic named,
    /// or a subscription joined with another kind); holds the reason.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A consumer asked to join a subscription that already has a consumer,
    /// where one of the two is Exclusive.
    #[error("subscription {subscription} on {topic} already has an exclusive consumer")]
    ConsumerBusy {
        /// The topic of the subscription.
        topic: TopicName,
        /// The subscription's name.
        subscription: String,
    },
    /// The subscription does not exist (or was deleted) on the topic.
    #[error("subscription {subscription} does not exist on {topic}")]
    SubscriptionNotFound {
        /// The topic looked on.
        topic: TopicName,
        /// The subscription's name.
        subscription: String,
    },
    /// A message is larger than the backend accepts.
    #[error("message too large: {size} bytes, limit {limit}")]
    MessageTooLarge {
        /// The message's size in bytes, as the backend stores it.
        size: usize,
        /// The largest size accepted, in bytes.
        limit: usize,
    },
    /// A metadata write or delete found the key at another version than
    /// expected (see [`crate::metadata::ExpectedVersion`]); holds the key.
    /// Re-read and retry.
    #[error("version conflict on key {0}")]
    VersionConflict(String),
    /// The subscription or reader (or the whole backend, at shutdown) was
    /// closed; nothing more will come from it.
    #[error("the subscription or reader was closed")]
    Closed,
    /// The backend cannot serve the request right now (for example, the
    /// Pulsar cluster is unreachable); holds the cause. Retriable.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Reading or writing durable storage failed (I/O error, corrupt data);
    /// holds the cause.
    #[error("storage error: {0}")]
    Storage(String),
}

impl BackendError {
    /// A short, stable name of the variant, for metric labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::TopicNotFound(_) => "topic_not_found",
            BackendError::TopicExists(_) => "topic_exists",
            BackendError::NotAuthorized { .. } => "not_authorized",
            BackendError::InvalidName(_) => "invalid_name",
            BackendError::InvalidRequest(_) => "invalid_request",
            BackendError::ConsumerBusy { .. } => "consumer_busy",
            BackendError::SubscriptionNotFound { .. } => "subscription_not_found",
            BackendError::MessageTooLarge { .. } => "message_too_large",
            BackendError::VersionConflict(_) => "version_conflict",
            BackendError::Closed => "closed",
            BackendError::Unavailable(_) => "unavailable",
            BackendError::Storage(_) => "storage",
        }
    }

    /// True when the client may retry the same request and expect success
    /// once the backend recovers (maps to each protocol's retriable codes).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable(_) | BackendError::VersionConflict(_)
        )
    }
}
