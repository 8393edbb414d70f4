//! Persistent sessions: what outlives a connection whose client asked for
//! a session (3.1.1 clean session off, 5 Session Expiry above 0).
//!
//! The messages wait in the backend: each filter of such a session is a
//! durable subscription named after the client id and the filter, so QoS
//! 1 and 2 messages published while the client is away stay in its
//! backlog. The list of filters (with the QoS granted) is kept in the
//! backend's metadata store under `mqtt/sessions/{tenant}/{namespace}/{client
//! id}` (a client id is its namespace's), so the
//! client's next connection, to this gateway or another on the same
//! backend, subscribes them again before the client asks.

use std::sync::Arc;
use std::time::Duration;

use gateway_api::backend::{StartPosition, SubscribeRequest, SubscriptionKind};
use gateway_api::metadata::ExpectedVersion;
use gateway_api::topic::{escape_word, Namespace};
use gateway_api::{BackendError, Context, MetadataStore, NewMessage, TopicName};
use rmqtt_codec::types::QoS;
use tokio_util::sync::CancellationToken;

use crate::clients::Clients;
use crate::filter::Filter;

/// Where the session records live in the metadata store.
const PREFIX: &str = "mqtt/sessions/";

/// One filter of a session and the QoS granted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscribed {
    pub filter: String,
    pub qos: QoS,
}

/// A stored session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Record {
    pub filters: Vec<Subscribed>,
}

impl Record {
    /// The record as stored: one line per filter, `{qos} {filter}`, the
    /// filter percent-escaped as a topic word (so it holds no newline).
    fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for s in &self.filters {
            out.push_str(&format!("{} {}\n", u8::from(s.qos), escape_word(&s.filter)));
        }
        out.into_bytes()
    }

    /// A stored record; lines that do not read are passed over (a record
    /// written by a later version).
    fn decode(bytes: &[u8]) -> Record {
        let text = String::from_utf8_lossy(bytes);
        let filters = text
            .lines()
            .filter_map(|line| {
                let (qos, filter) = line.split_once(' ')?;
                let qos = QoS::try_from(qos.parse::<u8>().ok()?).ok()?;
                let filter = gateway_api::topic::unescape_word(filter)?;
                Some(Subscribed { filter, qos })
            })
            .collect();
        Record { filters }
    }

    /// Adds or replaces `filter`.
    pub(crate) fn set(&mut self, filter: &str, qos: QoS) {
        match self.filters.iter_mut().find(|s| s.filter == filter) {
            Some(s) => s.qos = qos,
            None => self.filters.push(Subscribed {
                filter: filter.to_owned(),
                qos,
            }),
        }
    }

    /// Removes `filter`; whether it was there.
    pub(crate) fn remove(&mut self, filter: &str) -> bool {
        let before = self.filters.len();
        self.filters.retain(|s| s.filter != filter);
        before != self.filters.len()
    }
}

/// The session records of one namespace in the metadata store: client
/// ids are the namespace's (a tenant's clients do not meet another's).
#[derive(Clone)]
pub(crate) struct Sessions {
    store: Arc<dyn MetadataStore>,
    /// `mqtt/sessions/{tenant}/{namespace}/`.
    prefix: String,
}

impl Sessions {
    pub(crate) fn new(store: Arc<dyn MetadataStore>, namespace: &Namespace) -> Sessions {
        let prefix = format!(
            "{PREFIX}{}/{}/",
            escape_word(&namespace.tenant),
            escape_word(&namespace.namespace)
        );
        Sessions { store, prefix }
    }

    fn key(&self, client_id: &str) -> String {
        format!("{}{}", self.prefix, escape_word(client_id))
    }

    /// The stored session of `client_id`, if any.
    pub(crate) async fn load(&self, client_id: &str) -> Result<Option<Record>, BackendError> {
        Ok(self
            .store
            .get(&self.key(client_id))
            .await?
            .map(|v| Record::decode(&v.value)))
    }

    /// Stores `record` as the session of `client_id`.
    pub(crate) async fn save(&self, client_id: &str, record: &Record) -> Result<(), BackendError> {
        self.store
            .put(
                &self.key(client_id),
                record.encode().into(),
                ExpectedVersion::Any,
            )
            .await
            .map(drop)
    }

    /// Forgets the session of `client_id`.
    pub(crate) async fn delete(&self, client_id: &str) -> Result<(), BackendError> {
        self.store
            .delete(&self.key(client_id), ExpectedVersion::Any)
            .await
    }
}

/// The backend subscription a session's filter is kept in.
pub(crate) fn subscription_name(client_id: &str, filter: &str) -> String {
    format!("mqtt.{}.{}", escape_word(client_id), escape_word(filter))
}

/// The backend subscription a sharing group's filter is kept in.
pub(crate) fn shared_subscription_name(group: &str, filter: &str) -> String {
    format!("mqtt-share.{}.{}", escape_word(group), escape_word(filter))
}

/// Deletes a session's durable subscriptions and its record.
pub(crate) async fn forget(
    ctx: &Context,
    sessions: &Sessions,
    namespace: &Namespace,
    client_id: &str,
    record: &Record,
) {
    for stored in &record.filters {
        let Ok(filter) = Filter::parse(&stored.filter) else {
            continue;
        };
        if filter.share.is_some() {
            continue;
        }
        let Ok(topics) = filter.selector(namespace, |name| TopicName::from_mqtt(name, namespace))
        else {
            continue;
        };
        let request = SubscribeRequest {
            topics,
            subscription: subscription_name(client_id, &stored.filter),
            kind: SubscriptionKind::Exclusive,
            initial_position: StartPosition::Latest,
            durable: true,
            consumer_name: client_id.to_owned(),
            receive_queue: 1,
        };
        match ctx.backend.subscribe(request).await {
            Ok(sub) => {
                if let Err(e) = sub.unsubscribe().await {
                    tracing::warn!(client = client_id, error = %e, "old session subscription kept");
                }
            }
            Err(e) => {
                tracing::warn!(client = client_id, error = %e, "old session subscription kept")
            }
        }
    }
    if let Err(e) = sessions.delete(client_id).await {
        tracing::warn!(client = client_id, error = %e, "old session record kept");
    }
}

/// Runs `work` `after` a client left, unless it comes back first (`back`
/// cancelled) or the gateway stops (`stopping` cancelled).
fn unless_back(
    stopping: CancellationToken,
    back: CancellationToken,
    after: Duration,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::select! {
            () = back.cancelled() => {}
            () = stopping.cancelled() => {}
            () = tokio::time::sleep(after) => work.await,
        }
    });
}

/// Ends a persistent session `after` its client left, unless the client
/// comes back first or the gateway stops: its durable subscriptions and
/// record are deleted (MQTT 5 Session Expiry).
pub(crate) fn expire_later(
    ctx: Context,
    namespace: Namespace,
    client_id: String,
    record: Record,
    (clients, registered): (Clients, String),
    back: CancellationToken,
    after: Duration,
) {
    let token = back.clone();
    unless_back(ctx.shutdown.clone(), back, after, async move {
        if clients.unpark(&registered, &token) {
            let sessions = Sessions::new(ctx.backend.metadata(), &namespace);
            forget(&ctx, &sessions, &namespace, &client_id, &record).await;
            tracing::debug!(client = %client_id, "session expired");
        }
    });
}

/// Publishes a will `after` its connection ended, unless the client comes
/// back first or the gateway stops (MQTT 5 Will Delay Interval).
pub(crate) fn will_later(
    ctx: Context,
    topic: TopicName,
    message: NewMessage,
    back: CancellationToken,
    after: Duration,
) {
    unless_back(ctx.shutdown.clone(), back, after, async move {
        if let Err(e) = ctx.backend.publish(&topic, message).await {
            tracing::warn!(topic = %topic, error = %e, "delayed will not published");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let mut record = Record::default();
        record.set("a/+/c", QoS::AtLeastOnce);
        record.set("odd\nfilter #", QoS::ExactlyOnce);
        record.set("a/+/c", QoS::AtMostOnce);
        assert_eq!(Record::decode(&record.encode()), record);
        assert_eq!(record.filters.len(), 2);
        assert!(record.remove("a/+/c"));
        assert!(!record.remove("a/+/c"));
    }

    #[test]
    fn names_keep_client_and_filter_apart() {
        assert_ne!(subscription_name("a.b", "c"), subscription_name("a", "b.c"));
    }
}
