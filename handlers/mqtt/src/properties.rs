//! An MQTT message as a backend message, and back.
//!
//! MQTT 5 user properties are the message's properties, in order. What
//! else MQTT says of a message travels in properties of its own, named
//! `mqtt-…`, which other protocols see as ordinary properties (Kafka
//! headers) and pass on untouched:
//!
//! | property               | MQTT                                          |
//! |------------------------|-----------------------------------------------|
//! | `mqtt-qos`             | the QoS it was published with (0, 1, 2)       |
//! | `mqtt-expires-at`      | Message Expiry, as a deadline (ms since epoch) |
//! | `mqtt-content-type`    | Content Type                                  |
//! | `mqtt-response-topic`  | Response Topic                                |
//! | `mqtt-correlation-data`| Correlation Data, in hex                      |
//! | `mqtt-utf8`            | Payload Format Indicator 1 (`true`)           |
//! | `mqtt-retain`          | published with the retain flag (`true`)       |
//! | `mqtt-client`          | the publisher's client id (for No Local)       |
//!
//! A message is delivered at the lower of the QoS it was published with and
//! the one granted to the subscription, as MQTT requires; one from another
//! protocol (no `mqtt-qos`) at the one granted.

use std::num::NonZeroU32;

use bytes::Bytes;
use gateway_api::NewMessage;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::PublishProperties;

const QOS: &str = "mqtt-qos";
const EXPIRES_AT: &str = "mqtt-expires-at";
const CONTENT_TYPE: &str = "mqtt-content-type";
const RESPONSE_TOPIC: &str = "mqtt-response-topic";
const CORRELATION_DATA: &str = "mqtt-correlation-data";
const UTF8: &str = "mqtt-utf8";
const RETAIN: &str = "mqtt-retain";
const CLIENT: &str = "mqtt-client";

/// The backend message of a PUBLISH `client` sent, received at `now_ms`.
pub(crate) fn to_backend(p: &Publish, client: &str, now_ms: u64) -> NewMessage {
    let mut properties = vec![
        (QOS.to_owned(), u8::from(p.qos).to_string()),
        (CLIENT.to_owned(), client.to_owned()),
    ];
    if p.retain {
        properties.push((RETAIN.to_owned(), "true".to_owned()));
    }
    if let Some(pp) = &p.properties {
        if let Some(secs) = pp.message_expiry_interval {
            let at = now_ms.saturating_add(u64::from(secs.get()) * 1000);
            properties.push((EXPIRES_AT.to_owned(), at.to_string()));
        }
        if let Some(t) = &pp.content_type {
            properties.push((CONTENT_TYPE.to_owned(), t.to_string()));
        }
        if let Some(t) = &pp.response_topic {
            properties.push((RESPONSE_TOPIC.to_owned(), t.to_string()));
        }
        if let Some(d) = &pp.correlation_data {
            properties.push((CORRELATION_DATA.to_owned(), hex(d)));
        }
        if pp.is_utf8_payload {
            properties.push((UTF8.to_owned(), "true".to_owned()));
        }
        properties.extend(
            pp.user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    NewMessage {
        payload: p.payload.clone(),
        key: None,
        properties,
        event_time: Some(now_ms),
    }
}

/// What a stored message says to an MQTT subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    /// The QoS it was published with over MQTT, if it was.
    pub published_qos: Option<QoS>,
    /// Whether it was published with the retain flag.
    pub retained: bool,
    /// The client id of its MQTT publisher, if it had one.
    pub publisher: Option<String>,
    /// Its MQTT 5 properties (3.1.1 sends none).
    pub properties: PublishProperties,
}

/// What a message with `properties` says to an MQTT subscriber at
/// `now_ms`; `None` once its Message Expiry has passed (it is not
/// delivered).
pub(crate) fn outgoing(properties: &[(String, String)], now_ms: u64) -> Option<Outgoing> {
    let mut out = Outgoing {
        published_qos: None,
        retained: false,
        publisher: None,
        properties: PublishProperties::default(),
    };
    for (key, value) in properties {
        let pp = &mut out.properties;
        match key.as_str() {
            QOS => out.published_qos = value.parse::<u8>().ok().and_then(|q| QoS::try_from(q).ok()),
            EXPIRES_AT => {
                let at: u64 = value.parse().unwrap_or(u64::MAX);
                let left_ms = at.checked_sub(now_ms).filter(|left| *left > 0)?;
                let secs = u32::try_from(left_ms.div_ceil(1000)).unwrap_or(u32::MAX);
                pp.message_expiry_interval = NonZeroU32::new(secs);
            }
            CONTENT_TYPE => pp.content_type = Some(value.as_str().into()),
            RESPONSE_TOPIC => pp.response_topic = Some(value.as_str().into()),
            CORRELATION_DATA => pp.correlation_data = unhex(value),
            UTF8 => pp.is_utf8_payload = value == "true",
            RETAIN => out.retained = value == "true",
            CLIENT => out.publisher = Some(value.clone()),
            _ => pp
                .user_properties
                .push((key.as_str().into(), value.as_str().into())),
        }
    }
    Some(out)
}

/// The QoS a message goes out with: the lower of the two.
pub(crate) fn delivery_qos(published: Option<QoS>, granted: QoS) -> QoS {
    match published {
        Some(p) if u8::from(p) < u8::from(granted) => p,
        _ => granted,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Bytes> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_5_properties_survive_the_backend() {
        let properties = PublishProperties {
            message_expiry_interval: NonZeroU32::new(60),
            content_type: Some("application/json".into()),
            response_topic: Some("replies/1".into()),
            correlation_data: Some(Bytes::from_static(&[0, 1, 0xfe])),
            is_utf8_payload: true,
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            ..PublishProperties::default()
        };
        let publish = Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: "x/y".into(),
            packet_id: None,
            payload: Bytes::from_static(b"{}"),
            properties: Some(properties.clone()),
        };
        let message = to_backend(&publish, "c1", 1_000_000);
        let out = outgoing(&message.properties, 1_010_500).unwrap();
        assert_eq!(out.published_qos, Some(QoS::AtLeastOnce));
        assert_eq!(out.publisher.as_deref(), Some("c1"));
        // 49.5 s left: 50 whole seconds.
        assert_eq!(out.properties.message_expiry_interval, NonZeroU32::new(50));
        assert_eq!(
            out.properties,
            PublishProperties {
                message_expiry_interval: NonZeroU32::new(50),
                ..properties
            }
        );
        assert_eq!(outgoing(&message.properties, 1_060_000), None, "expired");
    }

    #[test]
    fn the_lower_qos_wins() {
        use QoS::*;
        assert_eq!(delivery_qos(Some(AtMostOnce), ExactlyOnce), AtMostOnce);
        assert_eq!(delivery_qos(Some(ExactlyOnce), AtLeastOnce), AtLeastOnce);
        assert_eq!(delivery_qos(None, ExactlyOnce), ExactlyOnce);
    }
}
