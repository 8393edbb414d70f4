//! [`Deferred`]: a backend that arrives after start-up.
//!
//! A gateway in a container must not exit because its cluster is not up
//! yet (orchestrators start both at once), nor report ready before it can
//! serve. So the runtime starts serving at once on a [`Deferred`] while
//! [`Deferred::connect`] opens the real backend, retrying with backoff and
//! logging each failure. Until then every operation, and `/readyz`, answers
//! `Unavailable` with what the last attempt said; afterwards every call goes
//! straight to the real backend.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use gateway_api::backend::{OffsetRange, Reader, SubscribeRequest, Subscription};
use gateway_api::metadata::{ExpectedVersion, MetadataStore, Versioned};
use gateway_api::topic::Namespace;
use gateway_api::{
    Backend, BackendError, MessageId, NewMessage, Persisting, StartPosition, TopicName,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long [`Deferred::connect`] waits between attempts: doubling from
/// `first` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait, reached after a few failures and kept.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s, 2 s, 4 s ... 30 s: quick when the cluster is just starting, and
    /// no flood of log lines when it is down for long.
    fn default() -> Backoff {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// A backend that is connected later; see the module documentation.
pub struct Deferred {
    /// Shared with the [`MetadataStore`] handed out before connection, so
    /// that it too reaches the backend once it is there.
    slot: Arc<Slot>,
}

/// The backend once connected, and the state of the wait until then.
struct Slot {
    /// Set once, when the connection succeeds; read without a lock by
    /// every call.
    backend: OnceLock<Arc<dyn Backend>>,
    /// What the wait is for and why it goes on (the last attempt's error);
    /// `closed` refuses a backend that arrives after shutdown began.
    waiting: Mutex<Waiting>,
}

/// See [`Slot::waiting`].
struct Waiting {
    /// What is being connected to, e.g. "connecting to Pulsar at URL".
    what: String,
    /// The last attempt's failure, if one failed yet.
    last_error: Option<String>,
    /// Set by [`Deferred::close`].
    closed: bool,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // Only whole-field writes happen under the lock: a poisoned one is
        // still consistent.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The backend, or why there is none yet.
    fn get(&self) -> Result<&Arc<dyn Backend>, BackendError> {
        if let Some(backend) = self.backend.get() {
            return Ok(backend);
        }
        let waiting = self.lock();
        Err(BackendError::Unavailable(match &waiting.last_error {
            _ if waiting.closed => "the gateway is shutting down".to_owned(),
            None => format!("{}: first attempt under way", waiting.what),
            Some(e) => format!("{}: last attempt failed: {e}", waiting.what),
        }))
    }
}

impl Deferred {
    /// A backend that is not there yet. `what` says what it waits for, in
    /// the errors it answers meanwhile ("connecting to Pulsar at URL").
    pub fn new(what: impl Into<String>) -> Deferred {
        Deferred {
            slot: Arc::new(Slot {
                backend: OnceLock::new(),
                waiting: Mutex::new(Waiting {
                    what: what.into(),
                    last_error: None,
                    closed: false,
                }),
            }),
        }
    }

    /// Whether the backend is connected.
    pub fn is_connected(&self) -> bool {
        self.slot.backend.get().is_some()
    }

    /// Calls `open` until it returns a backend, which then serves every
    /// call. An `Unavailable` error is logged and retried after `backoff`;
    /// any other error is final and returned (a cluster that refuses the
    /// gateway's settings or credentials does not change by waiting).
    /// Returns `Ok` without a backend when `shutdown` is cancelled first,
    /// or when [`Deferred::close`] ran meanwhile.
    pub async fn connect<F, Fut>(
        &self,
        mut open: F,
        backoff: Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Arc<dyn Backend>, BackendError>>,
    {
        let mut delay = backoff.first;
        for attempt in 1u64.. {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                result = open() => result,
            };
            match result {
                Ok(backend) => {
                    let unused = {
                        let mut waiting = self.slot.lock();
                        if waiting.closed {
                            Some(backend)
                        } else {
                            waiting.last_error = None;
                            // Only this loop sets it, once.
                            self.slot.backend.set(backend).err()
                        }
                    };
                    if let Some(backend) = unused {
                        // Shutdown began during the attempt: nobody will
                        // use it.
                        let _ = backend.close().await;
                    }
                    return Ok(());
                }
                Err(BackendError::Unavailable(e)) => {
                    let what = {
                        let mut waiting = self.slot.lock();
                        waiting.last_error = Some(e.clone());
                        waiting.what.clone()
                    };
                    warn!(
                        "{what}: attempt {attempt} failed: {e}; retrying in {} s",
                        delay.as_secs_f32()
                    );
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(backoff.max);
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for Deferred {
    async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<MessageId, BackendError> {
        self.slot.get()?.publish(topic, message).await
    }

    async fn queue_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Persisting, BackendError> {
        self.slot.get()?.queue_batch(topic, messages).await
    }

    async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        self.slot.get()?.subscribe(request).await
    }

    async fn reader(
        &self,
        topic: &TopicName,
        start: StartPosition,
    ) -> Result<Box<dyn Reader>, BackendError> {
        self.slot.get()?.reader(topic, start).await
    }

    async fn partitions(&self, topic: &TopicName) -> Result<Option<u32>, BackendError> {
        self.slot.get()?.partitions(topic).await
    }

    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> Result<(), BackendError> {
        self.slot.get()?.create_topic(topic, partitions).await
    }

    async fn update_partitions(
        &self,
        topic: &TopicName,
        partitions: u32,
    ) -> Result<(), BackendError> {
        self.slot.get()?.update_partitions(topic, partitions).await
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<(), BackendError> {
        self.slot.get()?.delete_topic(topic).await
    }

    async fn list_topics(&self, namespace: &Namespace) -> Result<Vec<TopicName>, BackendError> {
        self.slot.get()?.list_topics(namespace).await
    }

    async fn last_message_id(&self, topic: &TopicName) -> Result<Option<MessageId>, BackendError> {
        self.slot.get()?.last_message_id(topic).await
    }

    async fn offsets(&self, topic: &TopicName) -> Result<OffsetRange, BackendError> {
        self.slot.get()?.offsets(topic).await
    }

    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        timestamp: u64,
    ) -> Result<Option<u64>, BackendError> {
        self.slot
            .get()?
            .offset_for_timestamp(topic, timestamp)
            .await
    }

    /// The backend's store once connected; before, one that follows the
    /// backend as soon as it is there.
    fn metadata(&self) -> Arc<dyn MetadataStore> {
        match self.slot.backend.get() {
            Some(backend) => backend.metadata(),
            None => Arc::new(DeferredMetadata(self.slot.clone())),
        }
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.slot.get()?.ready().await
    }

    /// Closes the backend if it is connected; a connection still being
    /// attempted is dropped when it arrives.
    async fn close(&self) -> Result<(), BackendError> {
        let backend = {
            let mut waiting = self.slot.lock();
            waiting.closed = true;
            self.slot.backend.get().cloned()
        };
        match backend {
            Some(backend) => backend.close().await,
            None => Ok(()),
        }
    }
}

/// The metadata store of a [`Deferred`] backend, taken before it connected.
struct DeferredMetadata(Arc<Slot>);

#[async_trait]
impl MetadataStore for DeferredMetadata {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, BackendError> {
        self.0.get()?.metadata().get(key).await
    }

    async fn put(
        &self,
        key: &str,
        value: bytes::Bytes,
        expected: ExpectedVersion,
    ) -> Result<u64, BackendError> {
        self.0.get()?.metadata().put(key, value, expected).await
    }

    async fn delete(&self, key: &str, expected: ExpectedVersion) -> Result<(), BackendError> {
        self.0.get()?.metadata().delete(key, expected).await
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, BackendError> {
        self.0.get()?.metadata().scan(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::backend::embedded::{EmbeddedBackend, EmbeddedConfig};

    const FAST: Backoff = Backoff {
        first: Duration::from_millis(1),
        max: Duration::from_millis(4),
    };

    async fn embedded(dir: &tempfile::TempDir) -> Arc<dyn Backend> {
        Arc::new(
            EmbeddedBackend::open(EmbeddedConfig::new(dir.path()))
                .await
                .unwrap(),
        )
    }

    fn unavailable(e: BackendError) -> String {
        match e {
            BackendError::Unavailable(why) => why,
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn before_connecting_every_call_says_what_it_waits_for_and_why() {
        let deferred = Deferred::new("connecting to X at x://h:1");
        let why = unavailable(deferred.ready().await.unwrap_err());
        assert!(why.contains("connecting to X at x://h:1"), "{why}");
        assert!(why.contains("first attempt"), "{why}");

        let topic: TopicName = "t".parse().unwrap();
        let why = unavailable(deferred.partitions(&topic).await.unwrap_err());
        assert!(why.contains("x://h:1"), "{why}");
        let why = unavailable(deferred.metadata().get("k").await.unwrap_err());
        assert!(why.contains("x://h:1"), "{why}");
    }

    #[tokio::test]
    async fn unavailable_is_retried_until_the_backend_opens_then_calls_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let deferred = Arc::new(Deferred::new("connecting to X"));
        let metadata_before = deferred.metadata();
        let attempts = AtomicU32::new(0);
        // The third attempt says it started (so two have failed), then
        // waits for the test to have looked.
        let (third_tx, third_rx) = tokio::sync::oneshot::channel::<()>();
        let mut third_tx = Some(third_tx);
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let mut go_rx = Some(go_rx);
        let shutdown = CancellationToken::new();

        let connecting = {
            let deferred = deferred.clone();
            let dir = &dir;
            async move {
                deferred
                    .connect(
                        || {
                            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                            let third = (n == 3).then(|| (third_tx.take(), go_rx.take()));
                            async move {
                                match third {
                                    Some((Some(started), Some(go))) => {
                                        let _ = started.send(());
                                        let _ = go.await;
                                        Ok(embedded(dir).await)
                                    }
                                    _ => Err(BackendError::Unavailable(format!("refused #{n}"))),
                                }
                            }
                        },
                        FAST,
                        &shutdown,
                    )
                    .await
            }
        };
        let check = async {
            third_rx.await.unwrap();
            let why = unavailable(deferred.ready().await.unwrap_err());
            assert!(why.contains("last attempt failed: refused #2"), "{why}");
            assert!(!deferred.is_connected());
            go_tx.send(()).unwrap();
        };
        let (result, ()) = tokio::join!(connecting, check);
        result.unwrap();
        assert!(deferred.is_connected());
        deferred.ready().await.unwrap();
        let topic: TopicName = "t".parse().unwrap();
        deferred.create_topic(&topic, 0).await.unwrap();
        assert_eq!(deferred.partitions(&topic).await.unwrap(), Some(0));
        // A store handed out before the connection follows the backend.
        assert_eq!(metadata_before.get("absent").await.unwrap(), None);
        deferred.close().await.unwrap();
    }

    #[tokio::test]
    async fn errors_other_than_unavailable_end_the_attempts() {
        let deferred = Deferred::new("connecting to X");
        let attempts = AtomicU32::new(0);
        let result = deferred
            .connect(
                || {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    async {
                        Err(BackendError::InvalidRequest(
                            "cluster lacks a setting".into(),
                        ))
                    }
                },
                FAST,
                &CancellationToken::new(),
            )
            .await;
        assert!(
            matches!(&result, Err(BackendError::InvalidRequest(m)) if m.contains("lacks")),
            "{result:?}"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert!(!deferred.is_connected());
    }

    #[tokio::test]
    async fn shutdown_ends_the_attempts_even_during_one() {
        let deferred = Deferred::new("connecting to X");
        let shutdown = CancellationToken::new();
        let connecting = deferred.connect(
            || async {
                // An attempt that hangs, as a TCP connect to a black hole.
                std::future::pending::<Result<Arc<dyn Backend>, BackendError>>().await
            },
            FAST,
            &shutdown,
        );
        let stop = async {
            tokio::task::yield_now().await;
            shutdown.cancel();
        };
        let (result, ()) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(connecting, stop)
        })
        .await
        .expect("connect returned after shutdown");
        result.unwrap();
        assert!(!deferred.is_connected());
    }

    #[tokio::test]
    async fn a_backend_arriving_after_close_is_closed_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let deferred = Deferred::new("connecting to X");
        deferred.close().await.unwrap();
        deferred
            .connect(
                || async { Ok(embedded(&dir).await) },
                FAST,
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert!(!deferred.is_connected());
        let why = unavailable(deferred.ready().await.unwrap_err());
        assert!(why.contains("shutting down"), "{why}");
    }
}
