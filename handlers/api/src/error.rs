//! The one error type of the contract. Each handler maps it to its own
//! protocol's codes in one function at its edge.

use crate::auth::Action;
use crate::topic::{NameError, TopicName};

/// What went wrong behind the contract.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("topic {0} does not exist")]
    TopicNotFound(TopicName),
    #[error("topic {0} already exists")]
    TopicExists(TopicName),
    #[error("not authorized to {action} on {topic}")]
    NotAuthorized { topic: TopicName, action: Action },
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("subscription {subscription} on {topic} already has an exclusive consumer")]
    ConsumerBusy {
        topic: TopicName,
        subscription: String,
    },
    #[error("subscription {subscription} does not exist on {topic}")]
    SubscriptionNotFound {
        topic: TopicName,
        subscription: String,
    },
    #[error("message too large: {size} bytes, limit {limit}")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("version conflict on key {0}")]
    VersionConflict(String),
    #[error("the subscription or reader was closed")]
    Closed,
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Storage(String),
}

impl BackendError {
    /// True when the client may retry the same request and expect success
    /// once the backend recovers (maps to each protocol's retriable codes).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable(_) | BackendError::VersionConflict(_)
        )
    }
}
