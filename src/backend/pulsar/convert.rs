//! Between the contract's types and Pulsar's wire types: message ids,
//! messages, subscription kinds, and the crate's errors.

use base64::Engine;
use bytes::Bytes;
use gateway_api::{
    BackendError, Message, MessageId, NewMessage, StartPosition, SubscriptionKind, TopicName,
};
use pulsar::consumer::InitialPosition;
use pulsar::message::proto::{MessageIdData, ServerError};
use pulsar::producer;
use pulsar::SubType;

/// The offset of a message whose broker entry carried no index (a cluster
/// without `AppendIndexMetadataInterceptor`; the start-up check refuses
/// those), and of a publish, whose receipt does not say.
pub const UNKNOWN_OFFSET: u64 = u64::MAX;

/// The contract's id of a message Pulsar delivered. `index` is the broker
/// entry index, that of the entry's *last* message; `batch_size` the
/// entry's message count (1 when not batched).
pub fn message_id(id: &MessageIdData, index: Option<u64>, batch_size: i32) -> MessageId {
    let batch_index = id.batch_index.unwrap_or(-1);
    let last = u64::try_from(batch_size.max(1) - 1).unwrap_or(0);
    let position = u64::try_from(batch_index.max(0)).unwrap_or(0);
    let offset = index
        .and_then(|i| i.checked_sub(last))
        .map_or(UNKNOWN_OFFSET, |first| first + position);
    MessageId {
        offset,
        ledger_id: id.ledger_id,
        entry_id: id.entry_id,
        partition: id.partition.unwrap_or(-1),
        batch_index,
    }
}

/// Pulsar's id for a contract id (without any batch ack set).
pub fn id_data(id: &MessageId) -> MessageIdData {
    MessageIdData {
        ledger_id: id.ledger_id,
        entry_id: id.entry_id,
        partition: Some(id.partition),
        batch_index: (id.batch_index >= 0).then_some(id.batch_index),
        ..Default::default()
    }
}

/// Pulsar's `MessageId.earliest`: (-1, -1).
pub fn earliest_id() -> MessageIdData {
    MessageIdData {
        ledger_id: u64::MAX,
        entry_id: u64::MAX,
        ..Default::default()
    }
}

/// Pulsar's `MessageId.latest`: (`i64::MAX`, `i64::MAX`).
pub fn latest_id() -> MessageIdData {
    MessageIdData {
        ledger_id: i64::MAX as u64,
        entry_id: i64::MAX as u64,
        ..Default::default()
    }
}

/// The contract's message from what the consumer delivered. `known` is the
/// topic the caller expects it from, taken as is when the names match
/// (parsing the name of every message costs as much as the rest).
pub fn message(
    received: pulsar::consumer::Message<Vec<u8>>,
    known: Option<&TopicName>,
) -> Result<Message, BackendError> {
    let topic = match known {
        Some(known) if known.as_str() == received.topic => known.clone(),
        _ => received.topic.parse().map_err(|e| {
            BackendError::Unavailable(format!("broker sent topic {}: {e}", received.topic))
        })?,
    };
    let payload = received.payload;
    let metadata = payload.metadata;
    let batch_size = metadata.num_messages_in_batch.unwrap_or(1);
    let index = payload.broker_entry_metadata.as_ref().and_then(|m| m.index);
    let mut id = message_id(&received.message_id.id, index, batch_size);
    // The partition is the topic's; the crate leaves it unset.
    id.partition = topic.partition_index().map_or(-1, |p| p as i32);
    let key = metadata.partition_key.map(|key| {
        if metadata.partition_key_b64_encoded == Some(true) {
            base64::engine::general_purpose::STANDARD
                .decode(&key)
                .map(Bytes::from)
                .unwrap_or_else(|_| Bytes::from(key))
        } else {
            Bytes::from(key)
        }
    });
    Ok(Message {
        topic,
        id,
        payload: payload.data,
        key,
        properties: metadata
            .properties
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect(),
        event_time: metadata.event_time.filter(|&t| t > 0),
        publish_time: metadata.publish_time,
        redelivery_count: payload.redelivery_count,
    })
}

/// The key as Pulsar carries it: text as is; a key that is not UTF-8
/// base64-encoded with the flag set, as Pulsar's own clients send byte keys.
pub fn partition_key(key: &[u8]) -> (String, bool) {
    match std::str::from_utf8(key) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(key), true),
    }
}

/// The partition of `n` a key goes to: Pulsar's Java client's default
/// routing (`JavaStringHash`: the key string's `hashCode`, sign bit
/// cleared, modulo `n`), so keyed messages from the gateway and from Pulsar
/// clients land together.
pub fn partition_for_key(key: &str, n: u32) -> u32 {
    let hash = key.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    (hash & i32::MAX).unsigned_abs() % n.max(1)
}

/// The crate's outgoing message for a contract message.
pub fn outgoing(message: NewMessage) -> producer::Message {
    let (partition_key, partition_key_b64_encoded) = match message.key {
        None => (None, false),
        Some(key) => {
            let (text, encoded) = partition_key(&key);
            (Some(text), encoded)
        }
    };
    producer::Message {
        payload: message.payload.to_vec(),
        // In order, repeated keys kept (vendor patch 5); the map stays
        // empty.
        property_list: message.properties,
        partition_key,
        partition_key_b64_encoded: Some(partition_key_b64_encoded),
        event_time: message.event_time,
        ..Default::default()
    }
}

/// Pulsar's subscription type for a contract kind.
pub fn sub_type(kind: SubscriptionKind) -> SubType {
    match kind {
        SubscriptionKind::Exclusive => SubType::Exclusive,
        SubscriptionKind::Shared => SubType::Shared,
        SubscriptionKind::Failover => SubType::Failover,
        SubscriptionKind::KeyShared => SubType::KeyShared,
    }
}

/// Where a new subscription starts: Pulsar takes earliest or latest at
/// subscribe time; other positions start at the earliest and then seek.
pub fn initial_position(position: &StartPosition) -> InitialPosition {
    match position {
        StartPosition::Latest => InitialPosition::Latest,
        _ => InitialPosition::Earliest,
    }
}

/// The ack set of a batched entry: one bit per message, set while the
/// message is not acknowledged, in 64-bit words (Pulsar's `BitSet` layout).
pub fn ack_set(unacked: &[bool]) -> Vec<i64> {
    unacked
        .chunks(64)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .filter(|(_, &set)| set)
                .fold(0u64, |word, (bit, _)| word | (1 << bit)) as i64
        })
        .collect()
}

/// The contract's error for one of the crate's, as a handler should see it.
pub fn error(topic: Option<&TopicName>, e: pulsar::Error) -> BackendError {
    use pulsar::error::{ConnectionError, ConsumerError, ProducerError, ServiceDiscoveryError};
    let server = |code: Option<ServerError>, text: Option<String>| {
        server_error(topic, code, text.unwrap_or_default())
    };
    match e {
        pulsar::Error::Connection(ConnectionError::PulsarError(code, text))
        | pulsar::Error::Consumer(ConsumerError::Connection(ConnectionError::PulsarError(
            code,
            text,
        )))
        | pulsar::Error::Producer(ProducerError::Connection(ConnectionError::PulsarError(
            code,
            text,
        )))
        | pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Query(code, text)) => {
            server(code, text)
        }
        pulsar::Error::Consumer(ConsumerError::Closed)
        | pulsar::Error::Producer(ProducerError::Closed) => BackendError::Closed,
        other => BackendError::Unavailable(other.to_string()),
    }
}

fn server_error(
    topic: Option<&TopicName>,
    code: Option<ServerError>,
    text: String,
) -> BackendError {
    match (code, topic) {
        (Some(ServerError::TopicNotFound), Some(topic)) => {
            BackendError::TopicNotFound(topic.clone())
        }
        (Some(ServerError::ConsumerBusy), Some(topic)) => BackendError::ConsumerBusy {
            topic: topic.clone(),
            subscription: text,
        },
        (Some(ServerError::SubscriptionNotFound), Some(topic)) => {
            BackendError::SubscriptionNotFound {
                topic: topic.clone(),
                subscription: text,
            }
        }
        (Some(ServerError::AuthorizationError | ServerError::AuthenticationError), Some(topic)) => {
            BackendError::NotAuthorized {
                topic: topic.clone(),
                action: gateway_api::Action::Produce,
            }
        }
        (
            Some(
                ServerError::IncompatibleSchema
                | ServerError::InvalidTopicName
                | ServerError::NotAllowedError
                | ServerError::ConsumerBusy
                | ServerError::TopicNotFound
                | ServerError::SubscriptionNotFound,
            ),
            _,
        ) => BackendError::InvalidRequest(text),
        (Some(code), _) => BackendError::Unavailable(format!("{code:?}: {text}")),
        (None, _) => BackendError::Unavailable(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_members_count_back_from_the_entry_index() {
        let id = MessageIdData {
            ledger_id: 7,
            entry_id: 3,
            batch_index: Some(1),
            ..Default::default()
        };
        // Entry of 4 messages whose last has index 11: offsets 8..=11.
        assert_eq!(message_id(&id, Some(11), 4).offset, 9);
        let single = MessageIdData {
            batch_index: None,
            ..id
        };
        assert_eq!(message_id(&single, Some(5), 1).offset, 5);
        assert_eq!(message_id(&single, None, 1).offset, UNKNOWN_OFFSET);
    }

    #[test]
    fn keys_route_as_pulsar_java_clients_route_them() {
        // String.hashCode: "key-1" is 101943363, "" is 0.
        assert_eq!(partition_for_key("key-1", 7), 101_943_363 % 7);
        assert_eq!(partition_for_key("", 3), 0);
        // A negative hashCode has its sign bit cleared, not negated.
        let negative = "polygenelubricants"; // hashCode i32::MIN
        assert_eq!(partition_for_key(negative, 5), 0);
        assert_eq!(partition_key(&[0xff, 0x00]), ("/wA=".to_owned(), true));
    }

    #[test]
    fn outgoing_properties_keep_their_order_and_repeated_keys() {
        let sent = outgoing(
            NewMessage::new("22.5")
                .with_property("unit", "celsius")
                .with_property("unit", "kelvin")
                .with_property("probe", "7"),
        );
        assert!(sent.properties.is_empty());
        assert_eq!(
            sent.property_list,
            [
                ("unit".to_owned(), "celsius".to_owned()),
                ("unit".to_owned(), "kelvin".to_owned()),
                ("probe".to_owned(), "7".to_owned()),
            ]
        );
    }

    #[test]
    fn ack_set_words_match_pulsar_bitsets() {
        let mut unacked = vec![true; 70];
        unacked[0] = false;
        unacked[65] = false;
        let words = ack_set(&unacked);
        assert_eq!(words.len(), 2);
        assert_eq!(words[0] as u64, u64::MAX - 1);
        assert_eq!(words[1] as u64, 0b11_1101);
    }
}
