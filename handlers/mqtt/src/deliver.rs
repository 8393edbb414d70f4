//! What a subscription delivers, on its way to the connection.
//!
//! Each subscription has a task that takes its messages and queues them
//! for the connection, in a bounded queue the connection's subscriptions
//! share: when the client is slow the queue fills, the tasks wait, and the
//! backlog stays in the backend.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use gateway_api::backend::Subscription;
use gateway_api::metrics::DeliveryMeter;
use gateway_api::{BackendError, Message, Metrics, Protocol, TopicName};
use rmqtt_codec::types::QoS;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::filter::Filter;

/// How long a subscription whose backend failed waits before asking again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// One message for the connection.
pub(crate) struct Delivery {
    /// The filter (as the client wrote it) it matched.
    pub filter: Arc<str>,
    /// Which subscription of that filter delivered it: one replaced since
    /// (unsubscribed, subscribed again) no longer counts.
    pub generation: u64,
    /// Boxed: the queue's slots stay small.
    pub message: Box<Message>,
    /// Its topic's MQTT name and series.
    pub named: Arc<Named>,
}

/// A topic as a subscription delivers it: its MQTT name and the series
/// its deliveries count in, made once for a run of messages from it.
pub(crate) struct Named {
    /// The topic's MQTT name, shared by its deliveries' PUBLISHes.
    pub name: ByteString,
    /// The series its deliveries count in.
    pub meter: DeliveryMeter,
}

/// What a client asked of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOptions {
    /// The QoS granted: the most its messages are sent with.
    pub qos: QoS,
    /// MQTT 5 No Local.
    pub no_local: bool,
    /// MQTT 5 Retain As Published.
    pub retain_as_published: bool,
    /// MQTT 5 Subscription Identifier.
    pub id: Option<NonZeroU32>,
}

impl SubOptions {
    /// A subscription at `qos` and nothing else (MQTT 3.1.1's).
    pub(crate) fn qos(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }
}

/// A filter's open subscription.
pub(crate) struct Subscribed {
    pub subscription: Arc<dyn Subscription>,
    pub options: SubOptions,
    pub generation: u64,
    /// A `$share` group's: the group's subscription outlives the member.
    pub shared: bool,
    /// Takes its messages into the connection's queue.
    task: JoinHandle<()>,
}

impl Drop for Subscribed {
    /// A subscription dropped without `close` (a connection failing as it
    /// starts) stops delivering all the same.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscribed {
    /// Stops delivering; the subscription stays (if durable).
    pub(crate) async fn close(self) {
        self.task.abort();
        if let Err(e) = self.subscription.close().await {
            tracing::debug!(error = %e, "subscription close failed");
        }
    }

    /// Stops delivering and deletes the subscription.
    pub(crate) async fn unsubscribe(self) {
        self.task.abort();
        if let Err(e) = self.subscription.unsubscribe().await {
            tracing::warn!(error = %e, "unsubscribe failed");
        }
    }
}

/// Starts delivering what `subscription` receives into `queue`.
pub(crate) fn start(
    filter_text: Arc<str>,
    filter: Filter,
    subscription: Arc<dyn Subscription>,
    options: SubOptions,
    queue: mpsc::Sender<Delivery>,
    metrics: &Metrics,
) -> Subscribed {
    static GENERATIONS: AtomicU64 = AtomicU64::new(0);
    let generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
    let shared = filter.share.is_some();
    let task = tokio::spawn(pump(
        filter_text,
        filter,
        generation,
        subscription.clone(),
        queue,
        metrics.clone(),
    ));
    Subscribed {
        subscription,
        options,
        generation,
        shared,
        task,
    }
}

async fn pump(
    filter_text: Arc<str>,
    filter: Filter,
    generation: u64,
    subscription: Arc<dyn Subscription>,
    queue: mpsc::Sender<Delivery>,
    metrics: Metrics,
) {
    // The topic delivered from last and how it is named (`None`: passed
    // over): a subscription mostly delivers runs from one topic.
    let mut last: Option<(TopicName, Option<Arc<Named>>)> = None;
    loop {
        let message = match subscription.receive().await {
            Ok(m) => m,
            Err(BackendError::Closed) => return,
            Err(e) if e.is_retriable() => {
                tracing::debug!(filter = %filter_text, error = %e, "receive failed, retrying");
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(filter = %filter_text, error = %e, "subscription ended");
                return;
            }
        };
        let named = match &last {
            Some((topic, named)) if *topic == message.topic => named.clone(),
            _ => {
                let named = named(&message.topic, &filter, &metrics);
                last = Some((message.topic.clone(), named.clone()));
                named
            }
        };
        let Some(named) = named else {
            let _ = subscription.ack(&message.topic, message.id).await;
            continue;
        };
        let delivery = Delivery {
            filter: filter_text.clone(),
            generation,
            message: Box::new(message),
            named,
        };
        if queue.send(delivery).await.is_err() {
            return;
        }
    }
}

/// How `topic` is delivered through `filter`: `None` when it is not. A
/// topic without an MQTT name is not for MQTT clients, and a pattern also
/// matches names MQTT's rules exclude (a topic created by another protocol
/// under a `$` level): both are passed over.
fn named(topic: &TopicName, filter: &Filter, metrics: &Metrics) -> Option<Arc<Named>> {
    let name = topic
        .base()
        .mqtt_topic()
        .filter(|name| !filter.is_wildcard() || filter.matches(name))?;
    Some(Arc::new(Named {
        name: name.into(),
        meter: metrics.delivery_meter(Protocol::Mqtt, topic),
    }))
}
