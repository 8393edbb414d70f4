//! The metadata store on Pulsar: a replicated state machine over one topic.
//!
//! Every write (a put or a delete, with its expected version) is a message
//! on the namespace's `__pulsar-gateway-metadata` topic: key = the metadata
//! key, payload = the value, properties = the operation, the condition and
//! the writing store. Each gateway reads that topic from the start, in
//! order, and applies every write whose condition holds against the state
//! built so far — the same decision in every gateway, since all read one
//! order. A write's version is its message's offset plus one: versions
//! grow and a key never gets one again after a delete.
//!
//! A writer learns its outcome by waiting until its own reader has applied
//! its message. A read first asks Pulsar for the topic's last message and
//! waits until it is applied, so it sees every write acknowledged before it
//! started (linearizable, as compare-and-set needs).
//!
//! The topic keeps everything: a durable subscription that never
//! acknowledges holds it against retention. Start-up replays it all; a
//! snapshot to bound that replay is future work.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use gateway_api::metadata::{ExpectedVersion, MetadataStore, Versioned};
use gateway_api::topic::{Domain, Namespace};
use gateway_api::{
    Backend, BackendError, Message, NewMessage, StartPosition, SubscribeRequest, SubscriptionKind,
    TopicName,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{index, lock, PulsarBackend};

/// Local name of the log topic in the gateway's namespace.
pub const LOG_TOPIC: &str = "__pulsar-gateway-metadata";

/// The durable subscription that holds the log against retention.
const RETENTION_SUBSCRIPTION: &str = "pulsar-gateway-metadata-retention";

/// Outcomes kept for writers that stopped waiting (cancelled requests).
const MAX_UNCLAIMED_OUTCOMES: usize = 10_000;

/// How long a write or read waits for the local replica to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause before the replica reader is opened again after it failed.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

/// Message properties of a write.
const OP: &str = "op";
const EXPECTED: &str = "expected";
const WRITER: &str = "writer";

/// A position in the log: (ledger, entry) orders as the log does.
type Position = (u64, u64);

/// The replica every gateway builds from the log.
#[derive(Default)]
struct Replica {
    entries: BTreeMap<String, Versioned>,
    /// Outcomes of this store's own writes, until their writer takes them.
    outcomes: BTreeMap<Position, Result<u64, BackendError>>,
}

/// The store: writes go to the log, reads come from the replica.
pub struct PulsarMetadata {
    backend: PulsarBackend,
    topic: TopicName,
    /// Tells this store's writes apart from other gateways'.
    writer: String,
    replica: Arc<Mutex<Replica>>,
    /// The last position applied, `None` before the first.
    applied: watch::Receiver<Option<Position>>,
    /// Writes of one key take turns (a key hashes to one of these): two
    /// in flight at once would be batched into one entry by the producer,
    /// share its position, and one would lose its outcome.
    key_turns: Box<[tokio::sync::Mutex<()>]>,
    stop: CancellationToken,
}

/// How many [`PulsarMetadata::key_turns`]: writes of different keys
/// rarely wait for each other.
const KEY_TURNS: usize = 64;

impl PulsarMetadata {
    /// Starts the replica on `namespace`'s log topic. `backend` must not
    /// hold this store (no reference cycle).
    pub async fn start(
        backend: PulsarBackend,
        namespace: &Namespace,
    ) -> Result<PulsarMetadata, BackendError> {
        let topic = TopicName::new(Domain::Persistent, namespace, LOG_TOPIC)
            .map_err(|e| BackendError::InvalidRequest(format!("metadata topic: {e}")))?;
        hold_against_retention(&backend, &topic).await?;
        let replica = Arc::new(Mutex::new(Replica::default()));
        let (applied_tx, applied) = watch::channel(None);
        let stop = CancellationToken::new();
        let writer = writer_id();
        let applier = Applier {
            backend: backend.clone(),
            topic: topic.clone(),
            writer: writer.clone(),
            replica: replica.clone(),
            applied: applied_tx,
        };
        tokio::spawn(applier.run(stop.clone()));
        Ok(PulsarMetadata {
            backend,
            topic,
            writer,
            replica,
            applied,
            key_turns: (0..KEY_TURNS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            stop,
        })
    }

    /// Stops the replica.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Appends a write and returns its outcome once applied here.
    async fn write(
        &self,
        key: &str,
        value: Bytes,
        op: &str,
        expected: ExpectedVersion,
    ) -> Result<u64, BackendError> {
        let turn = {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
            &self.key_turns[(hash % KEY_TURNS as u64) as usize]
        };
        let _turn = turn.lock().await;
        let message = NewMessage {
            payload: value,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            properties: vec![
                (OP.into(), op.into()),
                (EXPECTED.into(), encode_expected(expected)),
                (WRITER.into(), self.writer.clone()),
            ],
            event_time: None,
        };
        let id = self.backend.publish(&self.topic, message).await?;
        let position = (id.ledger_id, id.entry_id);
        self.caught_up(position).await?;
        lock(&self.replica)
            .outcomes
            .remove(&position)
            .unwrap_or_else(|| {
                Err(BackendError::Unavailable(format!(
                    "metadata write at {position:?} was applied without its outcome"
                )))
            })
    }

    /// Waits until every write acknowledged so far is applied here.
    async fn sync(&self) -> Result<(), BackendError> {
        match index::end(&self.backend.admin, &self.topic, index::End::Latest).await {
            Ok(Some(last)) => self.caught_up((last.ledger, last.entry)).await,
            Ok(None) | Err(BackendError::TopicNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn caught_up(&self, position: Position) -> Result<(), BackendError> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            applied.wait_for(|a| a.is_some_and(|a| a >= position)),
        )
        .await
        .map(|r| r.map(drop));
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BackendError::Closed),
            Err(_) => Err(BackendError::Unavailable(format!(
                "the metadata replica did not reach {position:?} within {} s",
                CATCH_UP_TIMEOUT.as_secs()
            ))),
        }
    }
}

#[async_trait]
impl MetadataStore for PulsarMetadata {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, BackendError> {
        self.sync().await?;
        Ok(lock(&self.replica).entries.get(key).cloned())
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: ExpectedVersion,
    ) -> Result<u64, BackendError> {
        self.write(key, value, "put", expected).await
    }

    async fn delete(&self, key: &str, expected: ExpectedVersion) -> Result<(), BackendError> {
        self.write(key, Bytes::new(), "delete", expected)
            .await
            .map(drop)
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, BackendError> {
        self.sync().await?;
        Ok(lock(&self.replica)
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// Creates the durable subscription that never acknowledges, so Pulsar
/// keeps every write of the log.
async fn hold_against_retention(
    backend: &PulsarBackend,
    topic: &TopicName,
) -> Result<(), BackendError> {
    let mut request = SubscribeRequest::new(topic.clone(), RETENTION_SUBSCRIPTION);
    request.kind = SubscriptionKind::Shared;
    request.receive_queue = 1;
    let subscription = backend.subscribe(request).await?;
    subscription.close().await
}

/// Reads the log into the replica, reopening its reader when it fails.
struct Applier {
    backend: PulsarBackend,
    topic: TopicName,
    writer: String,
    replica: Arc<Mutex<Replica>>,
    applied: watch::Sender<Option<Position>>,
}

impl Applier {
    async fn run(self, stop: CancellationToken) {
        // The furthest position ever applied: a replay after a reopen does
        // not record outcomes again up to it.
        let mut furthest = None;
        loop {
            let failure = tokio::select! {
                () = stop.cancelled() => return,
                failure = self.follow(&mut furthest) => failure,
            };
            tracing::warn!(topic = %self.topic, error = %failure, "metadata replica reader failed; reopening");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REOPEN_DELAY) => {}
            }
        }
    }

    /// Replays the log from its start and follows it; returns why it
    /// stopped.
    async fn follow(&self, furthest: &mut Option<Position>) -> BackendError {
        let mut request = SubscribeRequest::new(
            self.topic.clone(),
            format!("pulsar-gateway-metadata-{}", self.writer),
        );
        request.durable = false;
        request.initial_position = StartPosition::Earliest;
        let subscription = match self.backend.subscribe(request).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        // Readers wait until the replay has passed what they need.
        lock(&self.replica).entries.clear();
        self.applied.send_replace(None);
        loop {
            let message = match subscription.receive().await {
                Ok(m) => m,
                Err(e) => return e,
            };
            let position = (message.id.ledger_id, message.id.entry_id);
            let new = furthest.is_none_or(|f| position > f);
            self.apply(message, new);
            if new {
                *furthest = Some(position);
            }
            self.applied.send_replace(Some(position));
        }
    }

    /// Applies one write: the same decision every gateway makes. `new`
    /// when it was never applied before (its outcome is then recorded for
    /// its writer, if that is this store).
    fn apply(&self, message: Message, new: bool) {
        let property = |name: &str| {
            message
                .properties
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let position = (message.id.ledger_id, message.id.entry_id);
        let key = message
            .key
            .as_ref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned);
        let expected = property(EXPECTED).and_then(decode_expected);
        let mine = property(WRITER) == Some(self.writer.as_str());
        let mut replica = lock(&self.replica);
        let outcome = match (key, property(OP), expected) {
            (Some(key), Some(op @ ("put" | "delete")), Some(expected)) => {
                let current = replica.entries.get(&key).map(|v| v.version);
                if !expected.matches(current) {
                    Err(BackendError::VersionConflict(format!(
                        "{key} is at {current:?}, expected {expected:?}"
                    )))
                } else if op == "put" {
                    let version = message.id.offset.saturating_add(1);
                    replica.entries.insert(
                        key,
                        Versioned {
                            value: message.payload,
                            version,
                        },
                    );
                    Ok(version)
                } else {
                    replica.entries.remove(&key);
                    Ok(0)
                }
            }
            _ => {
                tracing::warn!(topic = %self.topic, ?position, "skipping a malformed metadata write");
                Err(BackendError::InvalidRequest(
                    "malformed metadata write".into(),
                ))
            }
        };
        if mine && new {
            replica.outcomes.insert(position, outcome);
            if replica.outcomes.len() > MAX_UNCLAIMED_OUTCOMES {
                replica.outcomes.pop_first();
            }
        }
    }
}

fn encode_expected(expected: ExpectedVersion) -> String {
    match expected {
        ExpectedVersion::Any => "any".into(),
        ExpectedVersion::Absent => "absent".into(),
        ExpectedVersion::Exactly(v) => v.to_string(),
    }
}

fn decode_expected(text: &str) -> Option<ExpectedVersion> {
    match text {
        "any" => Some(ExpectedVersion::Any),
        "absent" => Some(ExpectedVersion::Absent),
        v => v.parse().ok().map(ExpectedVersion::Exactly),
    }
}

/// A name unique to this store instance.
fn writer_id() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}-{nanos:x}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions_round_trip() {
        for expected in [
            ExpectedVersion::Any,
            ExpectedVersion::Absent,
            ExpectedVersion::Exactly(42),
        ] {
            assert_eq!(decode_expected(&encode_expected(expected)), Some(expected));
        }
        assert_eq!(decode_expected("later"), None);
    }
}
