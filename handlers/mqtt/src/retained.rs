//! Retained messages: the last message published with the retain flag on
//! each topic, sent to each new subscription whose filter matches it.
//!
//! They live in the backend's metadata store under
//! `mqtt/retained/{full topic name}`, so every gateway on the backend sees
//! the same ones and they survive restarts. A retained message with an
//! empty payload clears the topic's. The message itself is published to
//! the topic as any other.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use gateway_api::topic::Namespace;
use gateway_api::{BackendError, ExpectedVersion, MetadataStore, NewMessage, TopicName};

use crate::filter::Filter;

/// Where retained messages live in the metadata store.
const PREFIX: &str = "mqtt/retained/";

/// The format of a stored retained message; a record of another is passed
/// over.
const FORMAT: u8 = 1;

/// A retained message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    /// Its MQTT topic name.
    pub topic: String,
    /// Its properties, as the backend message had them (`properties.rs`).
    pub properties: Vec<(String, String)>,
    pub payload: Bytes,
}

/// The retained messages of the metadata store.
#[derive(Clone)]
pub(crate) struct Retained {
    store: Arc<dyn MetadataStore>,
}

impl Retained {
    pub(crate) fn new(store: Arc<dyn MetadataStore>) -> Retained {
        Retained { store }
    }

    /// Keeps `message` as `topic`'s retained message, or clears it when
    /// the payload is empty.
    pub(crate) async fn set(
        &self,
        topic: &TopicName,
        message: &NewMessage,
    ) -> Result<(), BackendError> {
        let key = format!("{PREFIX}{}", topic.as_str());
        if message.payload.is_empty() {
            return self.store.delete(&key, ExpectedVersion::Any).await;
        }
        self.store
            .put(&key, encode(message), ExpectedVersion::Any)
            .await
            .map(drop)
    }

    /// The retained messages of the topics of `namespace` that `filter`
    /// matches.
    pub(crate) async fn matching(
        &self,
        filter: &Filter,
        namespace: &Namespace,
    ) -> Result<Vec<Stored>, BackendError> {
        let prefix = format!(
            "{PREFIX}persistent://{}/{}/",
            namespace.tenant, namespace.namespace
        );
        let found = if filter.is_wildcard() {
            self.store.scan(&prefix).await?
        } else {
            let Ok(topic) = TopicName::from_mqtt(&filter.levels, namespace) else {
                return Ok(Vec::new());
            };
            let key = format!("{PREFIX}{}", topic.as_str());
            self.store
                .get(&key)
                .await?
                .map(|v| vec![(key, v)])
                .unwrap_or_default()
        };
        Ok(found
            .into_iter()
            .filter_map(|(key, value)| {
                let topic = TopicName::parse(key.strip_prefix(PREFIX)?, namespace).ok()?;
                let name = topic.mqtt_topic()?;
                if !filter.matches(&name) {
                    return None;
                }
                let (properties, payload) = decode(value.value)?;
                Some(Stored {
                    topic: name,
                    properties,
                    payload,
                })
            })
            .collect())
    }
}

/// `[FORMAT][count u32]([len u32][key][len u32][value])*[payload]`.
pub(crate) fn encode(message: &NewMessage) -> Bytes {
    let mut out = BytesMut::with_capacity(message.size() + 16);
    out.put_u8(FORMAT);
    out.put_u32(message.properties.len() as u32);
    for (k, v) in &message.properties {
        out.put_u32(k.len() as u32);
        out.put_slice(k.as_bytes());
        out.put_u32(v.len() as u32);
        out.put_slice(v.as_bytes());
    }
    out.put_slice(&message.payload);
    out.freeze()
}

/// The properties and payload of a stored record; `None` if it does not
/// read.
pub(crate) fn decode(mut bytes: Bytes) -> Option<(Vec<(String, String)>, Bytes)> {
    fn text(bytes: &mut Bytes) -> Option<String> {
        if bytes.remaining() < 4 {
            return None;
        }
        let len = bytes.get_u32() as usize;
        if bytes.remaining() < len {
            return None;
        }
        String::from_utf8(bytes.split_to(len).to_vec()).ok()
    }
    if bytes.remaining() < 5 || bytes.get_u8() != FORMAT {
        return None;
    }
    let count = bytes.get_u32() as usize;
    // Each property takes at least 8 bytes: a count beyond that is corrupt.
    if count > bytes.remaining() / 8 {
        return None;
    }
    let mut properties = Vec::with_capacity(count);
    for _ in 0..count {
        properties.push((text(&mut bytes)?, text(&mut bytes)?));
    }
    Some((properties, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_a_corrupt_one_does_not() {
        let message = NewMessage::new("21.5")
            .with_property("mqtt-qos", "1")
            .with_property("unit", "C");
        let bytes = encode(&message);
        assert_eq!(
            decode(bytes.clone()),
            Some((message.properties.clone(), message.payload.clone()))
        );
        assert_eq!(decode(bytes.slice(..7)), None);
        let mut huge = BytesMut::from(&bytes[..]);
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(huge.freeze()), None);
    }
}
