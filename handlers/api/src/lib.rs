//! The handler contract of `pulsar-gateway`.
//!
//! A protocol handler (Kafka, MQTT, AMQP, WebSocket) codes against the types
//! and traits of this crate only. They speak the vocabulary of topics,
//! subscriptions and messages; nothing here knows Pulsar's wire format, a
//! config file, or which backend serves the calls.
//!
//! The pieces:
//! - [`topic`]: [`TopicName`] and the cross-protocol naming convention.
//! - [`message`]: [`Message`], [`MessageId`], [`NewMessage`].
//! - [`backend`]: the [`Backend`] trait with [`Subscription`] and [`Reader`].
//! - [`metadata`]: the small durable key-value [`MetadataStore`].
//! - [`auth`]: [`Authenticator`], [`Credentials`], [`Principal`].
//! - [`router`]: [`Router`], which resolves a protocol's name to a topic and
//!   authorizes the action in one place.
//! - [`context`]: the [`Context`] every handler receives.
//! - [`handler`]: [`ProtocolHandler`], the trait a protocol implements, and
//!   the [`ClientStream`] it serves.
//! - [`budget`]: [`ByteBudget`], the bound on bytes in flight (per gateway,
//!   per connection).

#![deny(missing_docs)]

pub mod auth;
pub mod backend;
pub mod budget;
pub mod context;
pub mod error;
pub mod handler;
pub mod message;
pub mod metadata;
pub mod metrics;
pub mod router;
pub mod topic;

pub use auth::{Action, AllowAll, AuthError, Authenticator, Credentials, Principal};
pub use backend::{
    Backend, OffsetRange, Persisting, Reader, StartPosition, SubscribeRequest, Subscription,
    SubscriptionKind, TopicSelector,
};
pub use budget::{ByteBudget, Reservation};
pub use context::{Context, Services};
pub use error::BackendError;
pub use handler::{ClientStream, HandlerError, ProtocolHandler};
pub use message::{Message, MessageId, NewMessage};
pub use metadata::{ExpectedVersion, MetadataStore, Versioned};
pub use metrics::Metrics;
pub use router::{DefaultRouter, Protocol, RouteError, Router};
pub use topic::{Domain, NameError, TopicName};

/// Now, in milliseconds since the Unix epoch (the unit of every stored
/// time: expiries, event times, heartbeats).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
