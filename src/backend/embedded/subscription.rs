//! A consumer of the embedded store: one bounded receive queue fed by the
//! dispatchers of every partition its subscription covers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use gateway_api::{
    BackendError, Message, MessageId, StartPosition, SubscribeRequest, Subscription, TopicName,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dispatch::{Delivery, PartitionSubscription};
use super::Inner;

/// The partitions a consumer is attached to.
pub type Attached = Arc<Mutex<HashMap<TopicName, Arc<PartitionSubscription>>>>;

pub fn lock_attached(
    attached: &Attached,
) -> MutexGuard<'_, HashMap<TopicName, Arc<PartitionSubscription>>> {
    // Entries are whole inserts/removes: a poisoned map is still consistent.
    attached
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One consumer (implements the contract's `Subscription`).
pub struct EmbeddedSubscription {
    /// This consumer's id in every partition subscription.
    pub(super) id: u64,
    /// What was asked for (name, kind, topics).
    pub(super) request: SubscribeRequest,
    /// The backend, to resolve positions and forget subscriptions.
    pub(super) backend: Arc<Inner>,
    /// The receive queue; a lock because `receive` takes `&self`.
    pub(super) rx: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    /// The partitions this consumer is attached to (grows for patterns and
    /// new partitions).
    pub(super) attached: Attached,
    /// Cancelled on close: wakes a waiting `receive`, stops the watcher.
    pub(super) closed: CancellationToken,
}

impl EmbeddedSubscription {
    fn partition(&self, topic: &TopicName) -> Result<Arc<PartitionSubscription>, BackendError> {
        lock_attached(&self.attached)
            .get(topic)
            .cloned()
            .ok_or_else(|| {
                BackendError::InvalidRequest(format!(
                    "subscription {} is not attached to {topic}",
                    self.request.subscription
                ))
            })
    }

    /// Detaches from every partition; a non-durable subscription with no
    /// consumer left is forgotten.
    fn detach_all(&self) {
        if self.closed.is_cancelled() {
            return;
        }
        self.closed.cancel();
        let attached: Vec<_> = lock_attached(&self.attached).drain().collect();
        for (topic, sub) in attached {
            let empty = sub.detach(self.id);
            if empty && !sub.is_durable() {
                self.backend.forget_subscription(&topic, &sub.name);
                sub.delete();
            }
        }
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn receive(&self) -> Result<Message, BackendError> {
        let mut rx = self.rx.lock().await;
        loop {
            let delivery = tokio::select! {
                delivery = rx.recv() => delivery.ok_or(BackendError::Closed)?,
                () = self.closed.cancelled() => return Err(BackendError::Closed),
            };
            if delivery.epoch == delivery.from.epoch() {
                return Ok(delivery.message);
            }
        }
    }

    async fn ack(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError> {
        self.partition(topic)?.ack(id.offset);
        Ok(())
    }

    async fn ack_cumulative(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError> {
        self.partition(topic)?.ack_cumulative(id.offset)
    }

    async fn nack(&self, topic: &TopicName, id: MessageId) -> Result<(), BackendError> {
        self.partition(topic)?.nack(id.offset);
        Ok(())
    }

    async fn seek(&self, position: StartPosition) -> Result<(), BackendError> {
        let attached: Vec<_> = lock_attached(&self.attached)
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        for (topic, sub) in attached {
            if let StartPosition::Id(id) = position {
                let partition = topic.partition_index().map_or(-1, |p| p as i32);
                if id.partition != partition {
                    continue;
                }
            }
            let offset = self.backend.resolve(&topic, position).await?;
            sub.seek(offset);
        }
        Ok(())
    }

    async fn unsubscribe(&self) -> Result<(), BackendError> {
        let attached: Vec<_> = lock_attached(&self.attached)
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        if attached.iter().any(|(_, s)| s.consumer_count() > 1) {
            return Err(BackendError::InvalidRequest(format!(
                "subscription {} has other consumers attached",
                self.request.subscription
            )));
        }
        self.detach_all();
        let mut gone = Vec::with_capacity(attached.len());
        for (topic, sub) in attached {
            sub.delete();
            self.backend.forget_subscription(&topic, &sub.name);
            gone.push((topic.as_str().to_owned(), sub.name.clone(), None));
        }
        self.backend.write_cursors(gone).await
    }

    async fn close(&self) -> Result<(), BackendError> {
        self.detach_all();
        Ok(())
    }
}

impl Drop for EmbeddedSubscription {
    fn drop(&mut self) {
        self.detach_all();
    }
}
