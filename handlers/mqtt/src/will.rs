//! Wills: published when a connection ends without a clean DISCONNECT,
//! at once or, for a persistent session with a Will Delay Interval (MQTT
//! 5), once the delay ran out, unless the client came back first.
//!
//! A delayed will waits in the backend's metadata store under
//! `mqtt/wills/{tenant}/{namespace}/{client id}`, and the session's record
//! says one waits (so a CONNECT, which reads the record anyway, deletes it
//! without another read). Its gateway publishes it on time, and so does
//! every gateway that reads it (at start and every minute), should its
//! gateway have stopped first. It is published once: whoever publishes it
//! deletes it first, at the version read.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use gateway_api::metadata::ExpectedVersion;
use gateway_api::topic::Namespace;
use gateway_api::{BackendError, Context, NewMessage, TopicName};

use crate::due;
use crate::retained::{self, Retained};
use crate::session;
use gateway_api::now_ms;

/// Where delayed wills wait in the metadata store.
const PREFIX: &str = "mqtt/wills/";

/// The format of a stored will; a record of another is passed over.
const FORMAT: u8 = 1;

/// How long publishing a will may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// A will, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Will {
    /// Where it is published.
    pub topic: TopicName,
    /// What is published, its Message Expiry counted from its publication.
    pub message: NewMessage,
    /// Published as the topic's retained message too (Will Retain).
    pub retain: bool,
}

/// A will waiting for its delay to run out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiting {
    /// When it is published, ms since the epoch.
    at: u64,
    /// What is then published.
    will: Will,
}

impl Waiting {
    /// `[FORMAT][at u64][retain u8][event time u64, 0: none][topic len
    /// u32][topic]` then the message as a retained one is stored.
    fn encode(&self) -> Bytes {
        let topic = self.will.topic.as_str();
        let mut out = BytesMut::with_capacity(32 + topic.len());
        out.put_u8(FORMAT);
        out.put_u64(self.at);
        out.put_u8(u8::from(self.will.retain));
        out.put_u64(self.will.message.event_time.unwrap_or(0));
        out.put_u32(topic.len() as u32);
        out.put_slice(topic.as_bytes());
        out.put_slice(&retained::encode(&self.will.message));
        out.freeze()
    }

    /// When a stored will is published, read without the rest of it.
    fn time_of(bytes: &[u8]) -> Option<u64> {
        match bytes {
            [FORMAT, at @ ..] => Some(u64::from_be_bytes(at.get(..8)?.try_into().ok()?)),
            _ => None,
        }
    }

    /// A stored will; `None` if it does not read.
    fn decode(mut bytes: Bytes, namespace: &Namespace) -> Option<Waiting> {
        if bytes.remaining() < 1 + 8 + 1 + 8 + 4 || bytes.get_u8() != FORMAT {
            return None;
        }
        let at = bytes.get_u64();
        let retain = bytes.get_u8() != 0;
        let event_time = Some(bytes.get_u64()).filter(|&t| t != 0);
        let len = bytes.get_u32() as usize;
        if bytes.remaining() < len {
            return None;
        }
        let topic = String::from_utf8(bytes.split_to(len).to_vec()).ok()?;
        let topic = TopicName::parse(&topic, namespace).ok()?;
        let (properties, payload) = retained::decode(bytes)?;
        let message = NewMessage {
            payload,
            key: None,
            properties,
            event_time,
        };
        Some(Waiting {
            at,
            will: Will {
                topic,
                message,
                retain,
            },
        })
    }
}

/// Where the will `client_id` of `namespace` left waits.
fn key(namespace: &Namespace, client_id: &str) -> String {
    due::client_key(PREFIX, namespace, client_id)
}

/// Publishes `will` now: the message, then, with Will Retain, the topic's
/// retained message.
pub(crate) async fn publish(ctx: &Context, client_id: &str, will: Will) {
    let published = ctx.backend.publish(&will.topic, will.message.clone());
    match tokio::time::timeout(PUBLISH_TIMEOUT, published).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(client = client_id, error = %e, "will not published");
            return;
        }
        Err(_) => {
            tracing::warn!(client = client_id, "will not published in time");
            return;
        }
    }
    if will.retain {
        let retained = Retained::new(ctx.backend.metadata());
        if let Err(e) = retained.set(&will.topic, &will.message).await {
            tracing::warn!(client = client_id, error = %e, "will not retained");
        }
    }
}

/// Keeps `will` of `client_id` until `at` (ms since the epoch).
pub(crate) async fn keep(
    ctx: &Context,
    namespace: &Namespace,
    client_id: &str,
    will: Will,
    at: u64,
) -> Result<(), BackendError> {
    let waiting = Waiting { at, will };
    ctx.backend
        .metadata()
        .put(
            &key(namespace, client_id),
            waiting.encode(),
            ExpectedVersion::Any,
        )
        .await
        .map(drop)
}

/// The client of `client_id` is back: its waiting will is not published
/// (`resumed`, the session goes on) or is published now (a clean start
/// ends the session, and a will goes when its session ends).
pub(crate) async fn client_back(
    ctx: &Context,
    namespace: &Namespace,
    client_id: &str,
    resumed: bool,
) {
    if !resumed {
        publish_if_due(ctx, namespace, client_id, u64::MAX).await;
        return;
    }
    let store = ctx.backend.metadata();
    match store
        .delete(&key(namespace, client_id), ExpectedVersion::Any)
        .await
    {
        Ok(()) => {}
        Err(e) => tracing::warn!(client = client_id, error = %e, "waiting will kept"),
    }
}

/// Publishes the will `client_id` left if it is due by `now`: deleted
/// first, at the version read, so that it goes once.
async fn publish_if_due(ctx: &Context, namespace: &Namespace, client_id: &str, now: u64) {
    let store = ctx.backend.metadata();
    let key = key(namespace, client_id);
    let (waiting, version) = match store.get(&key).await {
        Ok(Some(v)) => (Waiting::decode(v.value, namespace), v.version),
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(client = client_id, error = %e, "waiting will not read");
            return;
        }
    };
    // One that does not read (written by a later version) is left alone.
    let Some(waiting) = waiting.filter(|w| w.at <= now) else {
        return;
    };
    match store.delete(&key, ExpectedVersion::Exactly(version)).await {
        Ok(()) => {}
        Err(BackendError::VersionConflict(_)) => return,
        Err(e) => {
            tracing::warn!(client = client_id, error = %e, "waiting will not taken");
            return;
        }
    }
    publish(ctx, client_id, waiting.will).await;
    tracing::info!(client = client_id, "delayed will published");
}

/// Publishes the will of `client_id` `after` its connection ended, unless
/// the client comes back first or the gateway stops (the next gateway to
/// start publishes it then).
pub(crate) fn publish_later(
    ctx: Context,
    namespace: Namespace,
    client_id: String,
    back: tokio_util::sync::CancellationToken,
    after: Duration,
) {
    let stopping = ctx.shutdown.clone();
    session::unless_back(stopping, back, after, async move {
        publish_if_due(&ctx, &namespace, &client_id, now_ms()).await;
    });
}

/// Publishes each waiting will on time, reading them at start and every
/// minute, until shutdown. Every gateway on the backend does this; a will
/// goes once (see [`publish_if_due`]).
pub(crate) async fn publish_stored(ctx: Context) {
    let time_of = |_: &Namespace, value: Bytes| Waiting::time_of(&value);
    let publish = |ctx: Context, namespace: Namespace, client_id: String| async move {
        publish_if_due(&ctx, &namespace, &client_id, now_ms()).await
    };
    due::run_client_records(ctx, PREFIX, "delayed wills waiting", time_of, publish).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_will_reads_back_as_written() {
        let namespace = Namespace::default();
        let will = Will {
            topic: TopicName::from_mqtt("a/b", &namespace).unwrap_or_else(|e| panic!("{e}")),
            message: NewMessage {
                payload: Bytes::from_static(b"gone"),
                key: None,
                properties: vec![("k".into(), "v".into())],
                event_time: Some(1_700_000_000_000),
            },
            retain: true,
        };
        let waiting = Waiting { at: 42, will };
        assert_eq!(Waiting::time_of(&waiting.encode()), Some(42));
        assert_eq!(
            Waiting::decode(waiting.encode(), &namespace),
            Some(waiting.clone())
        );
        let cut = waiting.encode().slice(..20);
        assert_eq!(Waiting::decode(cut, &namespace), None);
    }
}
