//! Proof that the cluster gives what [`super::REQUIRED_SETTINGS`] asks for,
//! when the gateway's role may not read the broker's settings (that needs a
//! super-user): rather than hand out wrong offsets or lose messages on a
//! cluster it cannot check, the gateway tries the features on a topic of
//! its own and refuses to start if one is missing.
//!
//! On a fresh topic `__pulsar-gateway-probe-…` of the gateway's namespace:
//! two messages sent as one batched entry must arrive with the broker's
//! entry index (`brokerEntryMetadataInterceptors` with
//! `AppendIndexMetadataInterceptor`, and
//! `exposingBrokerEntryMetadataToClientEnabled`); the first member is then
//! acknowledged alone (batch-index acknowledgement), a third message sent
//! as an entry of its own, and the subscription opened again: with
//! `acknowledgmentAtBatchIndexLevelEnabled` the second member comes first,
//! without it the broker took the ack for the whole entry and the third
//! comes first. Every step waits for something that must arrive, so the
//! decision never rests on a timeout. The topic is deleted afterwards
//! (best effort: a role that may not delete it leaves three small
//! messages behind).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use gateway_api::topic::Namespace;
use gateway_api::{BackendError, TopicName};
use pulsar::consumer::ConsumerOptions;
use pulsar::message::proto::MessageIdData;
use pulsar::producer::ProducerOptions;
use pulsar::{Pulsar, SubType, TokioExecutor};

use super::admin::Admin;
use super::consumer::RawConsumer;
use super::convert;

/// How long one step of the probe may take before the cluster counts as
/// unavailable (retried; never a refusal).
const STEP: Duration = Duration::from_secs(30);

/// The subscription the probe reads with.
const SUBSCRIPTION: &str = "pulsar-gateway-probe";

/// Runs the probe on a topic of its own in `namespace`, deleting the topic
/// afterwards whatever the outcome.
pub async fn probe(
    client: &Pulsar<TokioExecutor>,
    admin: &Admin,
    namespace: &Namespace,
) -> Result<(), BackendError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let topic: TopicName = format!(
        "persistent://{}/{}/__pulsar-gateway-probe-{nanos:x}",
        namespace.tenant, namespace.namespace
    )
    .parse()
    .map_err(|e| BackendError::InvalidRequest(format!("probe topic: {e}")))?;
    let outcome = run(client, &topic).await;
    if let Err(e) = admin.delete_topic(&topic, false).await {
        tracing::debug!("could not delete the probe topic {topic}: {e}");
    }
    outcome
}

async fn run(client: &Pulsar<TokioExecutor>, topic: &TopicName) -> Result<(), BackendError> {
    let error = |e: pulsar::Error| convert::error(Some(topic), e);
    let mut consumer = subscribe(client, topic).await?;
    let mut producer = client
        .producer()
        .with_topic(topic.as_str())
        .with_options(ProducerOptions {
            // Exactly the two sends below share one entry.
            batch_size: Some(2),
            batch_timeout: Some(STEP),
            ..Default::default()
        })
        .build()
        .await
        .map_err(error)?;
    let mut receipts = Vec::new();
    for payload in [&b"probe-0"[..], b"probe-1"] {
        let message = pulsar::producer::Message {
            payload: payload.to_vec(),
            ..Default::default()
        };
        receipts.push(producer.send_non_blocking(message).await.map_err(error)?);
    }
    for receipt in receipts {
        step("publish", receipt).await?.map_err(error)?;
    }

    let mut first = None;
    for _ in 0..2 {
        let message = next(&mut consumer, topic).await?;
        let index = message
            .payload
            .broker_entry_metadata
            .as_ref()
            .and_then(|m| m.index);
        if index.is_none() {
            return Err(refusal(
                "received messages carry no broker entry index (the cluster needs \
                 brokerEntryMetadataInterceptors to include AppendIndexMetadataInterceptor \
                 and exposingBrokerEntryMetadataToClientEnabled=true: contiguous offsets \
                 are the broker entry index)",
            ));
        }
        let batch_size = message.payload.metadata.num_messages_in_batch.unwrap_or(1);
        if batch_size != 2 {
            return Err(BackendError::Unavailable(format!(
                "the probe's two messages did not share an entry ({batch_size} in it)"
            )));
        }
        first.get_or_insert(message.message_id.id.clone());
    }
    let Some(first) = first else {
        return Err(BackendError::Unavailable("the probe read nothing".into()));
    };

    // The first member alone: bit 1 (the second member) stays set.
    let ack = MessageIdData {
        batch_index: Some(0),
        ack_set: convert::ack_set(&[false, true]),
        batch_size: Some(2),
        ..first
    };
    consumer
        .ack_with_id(topic.as_str(), ack)
        .await
        .map_err(|e| error(e.into()))?;
    let alone = pulsar::producer::Message {
        payload: b"probe-2".to_vec(),
        ..Default::default()
    };
    // Flushed at once: the batch holds two, so one send waits for the
    // timeout otherwise.
    let receipt = producer.send_non_blocking(alone).await.map_err(error)?;
    producer.send_batch().await.map_err(error)?;
    step("publish", receipt).await?.map_err(error)?;
    if let Err(e) = producer.close().await {
        tracing::debug!("closing the probe's producer: {e}");
    }
    consumer.close().await.map_err(error)?;

    // Opened again, the subscription starts at what is unacknowledged.
    let mut consumer = subscribe(client, topic).await?;
    let message = next(&mut consumer, topic).await?;
    let outcome = if message.payload.data[..] == b"probe-1"[..] {
        Ok(())
    } else {
        Err(refusal(
            "acknowledging one message of a batched entry acknowledged the whole entry \
             (the cluster needs acknowledgmentAtBatchIndexLevelEnabled=true, or the \
             gateway loses the rest of a batch when a client acknowledges one message)",
        ))
    };
    if let Err(e) = consumer.unsubscribe().await {
        tracing::debug!("unsubscribing the probe: {e}");
    }
    let _ = consumer.close().await;
    outcome
}

/// A durable Exclusive subscription of `topic` from its earliest message.
async fn subscribe(
    client: &Pulsar<TokioExecutor>,
    topic: &TopicName,
) -> Result<RawConsumer, BackendError> {
    client
        .consumer()
        .with_topic(topic.as_str())
        .with_subscription(SUBSCRIPTION)
        .with_subscription_type(SubType::Exclusive)
        .with_options(
            ConsumerOptions::default()
                .with_initial_position(pulsar::consumer::InitialPosition::Earliest),
        )
        .build::<Vec<u8>>()
        .await
        .map_err(|e| convert::error(Some(topic), e))
}

/// The consumer's next message, within [`STEP`].
async fn next(
    consumer: &mut RawConsumer,
    topic: &TopicName,
) -> Result<pulsar::consumer::Message<Vec<u8>>, BackendError> {
    match step("receive", consumer.next()).await? {
        Some(Ok(message)) => Ok(message),
        Some(Err(e)) => Err(convert::error(Some(topic), e)),
        None => Err(BackendError::Unavailable(
            "the probe's consumer ended".into(),
        )),
    }
}

/// `future` within [`STEP`]; a cluster that slow is unavailable for now.
async fn step<T>(
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, BackendError> {
    tokio::time::timeout(STEP, future).await.map_err(|_| {
        BackendError::Unavailable(format!("the start-up probe's {what} took over {STEP:?}"))
    })
}

/// A missing feature: waiting cannot fix it, so the gateway stops.
fn refusal(why: &str) -> BackendError {
    BackendError::InvalidRequest(format!(
        "the gateway's role may not read the broker's settings, and probing the cluster \
         showed: {why}"
    ))
}
