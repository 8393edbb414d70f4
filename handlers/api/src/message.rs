//! Messages as every handler sees them.

use std::fmt;

use bytes::Bytes;

use crate::topic::TopicName;

/// Where a message sits in its topic partition.
///
/// `offset` is contiguous per partition from 0 (the Kafka offset; on Pulsar
/// the broker entry index). `ledger_id`, `entry_id`, `partition` and
/// `batch_index` locate the message in Pulsar's own terms; the embedded store
/// sets `ledger_id = 0`, `entry_id = offset`, `batch_index = -1`. Ids of one
/// partition order by offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// Contiguous position within the partition, from 0.
    pub offset: u64,
    /// Pulsar ledger holding the entry (0 on the embedded store).
    pub ledger_id: u64,
    /// Pulsar entry within the ledger (the offset on the embedded store).
    pub entry_id: u64,
    /// Partition of a partitioned topic, -1 for a non-partitioned one.
    pub partition: i32,
    /// Index within a batched Pulsar entry, -1 when not batched.
    pub batch_index: i32,
}

impl MessageId {
    /// The id of the message at `offset` on a store with no ledgers.
    pub fn from_offset(offset: u64, partition: Option<u32>) -> MessageId {
        MessageId {
            offset,
            ledger_id: 0,
            entry_id: offset,
            partition: partition.map_or(-1, |p| p as i32),
            batch_index: -1,
        }
    }

    /// A compact, stable byte form (for the WebSocket API's `messageId` and
    /// for storing positions): five big-endian fields, 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[0..8].copy_from_slice(&self.offset.to_be_bytes());
        out[8..16].copy_from_slice(&self.ledger_id.to_be_bytes());
        out[16..24].copy_from_slice(&self.entry_id.to_be_bytes());
        out[24..28].copy_from_slice(&self.partition.to_be_bytes());
        out[28..32].copy_from_slice(&self.batch_index.to_be_bytes());
        out
    }

    /// Parses [`MessageId::to_bytes`]; `None` unless exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<MessageId> {
        let bytes: &[u8; 32] = bytes.try_into().ok()?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let i32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[i..i + 4]);
            i32::from_be_bytes(b)
        };
        Some(MessageId {
            offset: u64_at(0),
            ledger_id: u64_at(8),
            entry_id: u64_at(16),
            partition: i32_at(24),
            batch_index: i32_at(28),
        })
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}@{}",
            self.ledger_id, self.entry_id, self.partition, self.batch_index, self.offset
        )
    }
}

/// A message to publish. The backend assigns id and publish time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage {
    /// The body, opaque to the gateway.
    pub payload: Bytes,
    /// Pulsar partition key (Kafka record key, MQTT has none).
    pub key: Option<Bytes>,
    /// Pulsar properties (Kafka headers, MQTT 5 user properties, AMQP
    /// headers), in the order the producer gave them; keys may repeat.
    pub properties: Vec<(String, String)>,
    /// Producer-set event time, milliseconds since the Unix epoch.
    pub event_time: Option<u64>,
}

impl NewMessage {
    /// A message with a payload and nothing else.
    pub fn new(payload: impl Into<Bytes>) -> NewMessage {
        NewMessage {
            payload: payload.into(),
            ..NewMessage::default()
        }
    }

    /// Sets the partition key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> NewMessage {
        self.key = Some(key.into());
        self
    }

    /// Appends a property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> NewMessage {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// Bytes this message occupies, for limits and metrics.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// A message delivered by a subscription or a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic partition it was read from (needed to ack it).
    pub topic: TopicName,
    /// Its position in that partition.
    pub id: MessageId,
    /// The body.
    pub payload: Bytes,
    /// Pulsar partition key.
    pub key: Option<Bytes>,
    /// Pulsar properties, in publish order.
    pub properties: Vec<(String, String)>,
    /// Producer-set event time, ms since the epoch.
    pub event_time: Option<u64>,
    /// When the backend stored it, ms since the epoch.
    pub publish_time: u64,
    /// How many times it was redelivered because a consumer asked (a
    /// negative acknowledgement) on a Shared or KeyShared subscription.
    /// Backends may count other redeliveries too; Pulsar does not (a
    /// consumer that left, Exclusive and Failover subscriptions).
    pub redelivery_count: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_bytes() {
        let id = MessageId {
            offset: 42,
            ledger_id: 7,
            entry_id: 9,
            partition: 3,
            batch_index: -1,
        };
        assert_eq!(MessageId::from_bytes(&id.to_bytes()), Some(id));
        assert_eq!(MessageId::from_bytes(&[0u8; 5]), None);
    }
}
