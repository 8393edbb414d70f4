//! Packets in and out, whatever the protocol version: the connection's
//! logic sees one set of packet types, and this file alone knows how each
//! version (3.1.1 or 5) writes them, on top of `rmqtt-codec`.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder, Encoder};

use crate::reason::{self, Reason};

/// The protocol version a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// MQTT 3.1 and 3.1.1 (protocol levels 3 and 4).
    V3,
    /// MQTT 5.
    V5,
}

/// A client's last will, either version.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    /// Published with this topic, payload, QoS and retain flag.
    pub publish: Publish,
    /// MQTT 5 Will Delay Interval, in seconds.
    pub delay_secs: u32,
}

/// CONNECT, either version.
#[derive(Debug, Clone)]
pub(crate) struct Connect {
    /// Start a new session (3.1.1's clean session, 5's clean start).
    pub clean_start: bool,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// Seconds the session outlives the connection (MQTT 5; for 3.1.1: 0
    /// with a clean session, for ever without).
    pub session_expiry_secs: u32,
    /// Unacknowledged QoS 1 and 2 messages the client accepts at once.
    pub receive_max: u16,
    /// The largest packet the client accepts, in bytes.
    pub max_packet_size: Option<NonZeroU32>,
    /// MQTT 5: the topic aliases the client accepts in what it is sent
    /// (its Topic Alias Maximum; 3.1.1: none).
    pub topic_alias_max: u16,
    /// The client id as sent (may be empty).
    pub client_id: ByteString,
    /// User name, if any.
    pub username: Option<ByteString>,
    /// Password (or token), if any.
    pub password: Option<Bytes>,
    /// The last will, if any.
    pub will: Option<Will>,
}

/// One topic filter of a SUBSCRIBE with its options (3.1.1: QoS only).
#[derive(Debug, Clone)]
pub(crate) struct FilterRequest {
    /// The filter as sent.
    pub filter: ByteString,
    /// The most QoS the client asks for.
    pub qos: QoS,
    /// MQTT 5 Retain Handling: 0 send retained messages, 1 only for a new
    /// subscription, 2 never (3.1.1: 0).
    pub retain_handling: u8,
    /// MQTT 5 No Local: not the messages this client published.
    pub no_local: bool,
    /// MQTT 5 Retain As Published: deliveries keep the retain flag they
    /// were published with.
    pub retain_as_published: bool,
}

/// A packet a client sends, either version.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A second CONNECT (a protocol violation once connected).
    Connect,
    Publish(Box<Publish>),
    PubAck(NonZeroU16),
    PubRec(NonZeroU16),
    PubRel(NonZeroU16),
    PubComp(NonZeroU16),
    Subscribe {
        packet_id: NonZeroU16,
        /// MQTT 5 Subscription Identifier, sent back with each delivery.
        id: Option<NonZeroU32>,
        filters: Vec<FilterRequest>,
    },
    Unsubscribe {
        packet_id: NonZeroU16,
        filters: Vec<ByteString>,
    },
    PingReq,
    Disconnect {
        /// MQTT 5's reason 0x04: publish the will all the same.
        with_will: bool,
        /// MQTT 5: a new session expiry interval.
        session_expiry_secs: Option<u32>,
    },
    /// MQTT 5 AUTH (re-authentication), not served.
    Auth,
    /// A packet only a server sends (CONNACK, SUBACK ...).
    ServerOnly,
}

/// How a SUBSCRIBE filter was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Granted {
    Qos(QoS),
    Refused(Reason),
}

/// CONNACK, either version.
#[derive(Debug, Clone)]
pub(crate) struct ConnAck {
    pub session_present: bool,
    pub reason: Reason,
    /// MQTT 5: the id the server chose for a client that sent none.
    pub assigned_client_id: Option<ByteString>,
    /// MQTT 5: unacknowledged QoS 1 and 2 publishes the server accepts
    /// (`None`: the protocol's default, 65,535).
    pub receive_max: Option<NonZeroU16>,
    /// MQTT 5: the largest packet the server accepts (`None`: no limit).
    pub max_packet_size: Option<u32>,
    /// MQTT 5: the session expiry the server uses, when it differs.
    pub session_expiry_secs: Option<u32>,
    /// MQTT 5: the topic aliases the client may set.
    pub topic_alias_max: u16,
}

/// A packet the gateway sends, either version.
#[derive(Debug)]
pub(crate) enum Outbound {
    ConnAck(ConnAck),
    Publish(Box<Publish>),
    PubAck(NonZeroU16, Reason),
    PubRec(NonZeroU16, Reason),
    /// MQTT 5: with reason 0x92 for an id not known.
    PubRel(NonZeroU16, Reason),
    /// MQTT 5: with reason 0x92 for an id not known.
    PubComp(NonZeroU16, Reason),
    SubAck {
        packet_id: NonZeroU16,
        granted: Vec<Granted>,
    },
    UnsubAck {
        packet_id: NonZeroU16,
        /// MQTT 5's per-filter reasons.
        reasons: Vec<Reason>,
    },
    PingResp,
    /// MQTT 5 only; a 3.1.1 connection is just closed.
    Disconnect(Reason),
}

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("packet not encodable: {0}")]
    Encode(#[from] EncodeError),
}

impl WireError {
    /// The MQTT 5 reason a DISCONNECT gives for it.
    pub(crate) fn reason(&self) -> Reason {
        match self {
            WireError::Decode(DecodeError::MaxSizeExceeded { .. }) => reason::PACKET_TOO_LARGE,
            WireError::Decode(DecodeError::InvalidTopicName) => reason::TOPIC_NAME_INVALID,
            WireError::Decode(DecodeError::InvalidTopicFilter) => reason::TOPIC_FILTER_INVALID,
            WireError::Decode(
                DecodeError::UnsupportedPacketType | DecodeError::InvalidProtocol,
            ) => reason::PROTOCOL_ERROR,
            WireError::Decode(_) => reason::MALFORMED_PACKET,
            WireError::Encode(_) => reason::IMPLEMENTATION_SPECIFIC_ERROR,
        }
    }
}

/// The codec of one connection once its version is known.
pub(crate) enum Codec {
    V3(v3::Codec),
    V5(v5::Codec),
}

impl Codec {
    /// Reads the protocol version off the start of a CONNECT, without
    /// consuming it; `Ok(None)`: not enough bytes yet.
    pub(crate) fn detect(buf: &mut BytesMut) -> Result<Option<Version>, DecodeError> {
        Ok(VersionCodec.decode(buf)?.map(|v| match v {
            ProtocolVersion::MQTT3 => Version::V3,
            ProtocolVersion::MQTT5 => Version::V5,
        }))
    }

    /// A codec for `version` accepting packets up to `max_in` bytes.
    pub(crate) fn new(version: Version, max_in: u32) -> Codec {
        match version {
            Version::V3 => Codec::V3(v3::Codec::new(max_in)),
            Version::V5 => Codec::V5(v5::Codec::new(max_in, 0)),
        }
    }

    pub(crate) fn version(&self) -> Version {
        match self {
            Codec::V3(_) => Version::V3,
            Codec::V5(_) => Version::V5,
        }
    }

    /// Packets larger than `max` are not sent (MQTT 5's client Maximum
    /// Packet Size); 3.1.1 has no such limit.
    pub(crate) fn limit_outbound(&mut self, max: u32) {
        if let Codec::V5(c) = self {
            c.set_max_outbound_size(max);
        }
    }

    /// The CONNECT at the start of `buf`; `Ok(None)`: not all here yet.
    pub(crate) fn decode_connect(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Connect>, WireError> {
        let connect = match self {
            Codec::V3(c) => match c.decode(buf)? {
                None => return Ok(None),
                Some((v3::Packet::Connect(c), _)) => connect_v3(*c),
                Some(_) => return Err(DecodeError::UnsupportedPacketType.into()),
            },
            Codec::V5(c) => match c.decode(buf)? {
                None => return Ok(None),
                Some((v5::Packet::Connect(c), _)) => connect_v5(*c),
                Some(_) => return Err(DecodeError::UnsupportedPacketType.into()),
            },
        };
        Ok(Some(connect))
    }

    /// The next packet in `buf`; `Ok(None)`: not all here yet.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, WireError> {
        Ok(match self {
            Codec::V3(c) => c.decode(buf)?.map(|(p, _)| inbound_v3(p)),
            Codec::V5(c) => c.decode(buf)?.map(|(p, _)| inbound_v5(p)),
        })
    }

    /// Writes `packet` at the end of `dst`.
    pub(crate) fn encode(&mut self, packet: Outbound, dst: &mut BytesMut) -> Result<(), WireError> {
        match self {
            Codec::V3(c) => {
                if let Some(p) = outbound_v3(packet) {
                    c.encode(p, dst)?;
                }
            }
            Codec::V5(c) => c.encode(outbound_v5(packet), dst)?,
        }
        Ok(())
    }
}

/// CONNACK refusing a client whose version could not be read, in the
/// oldest form every client reads (3.1.1: "unacceptable protocol version").
pub(crate) fn refuse_version(dst: &mut BytesMut) {
    let ack = v3::Packet::ConnectAck(v3::ConnectAck {
        return_code: v3::ConnectAckReason::UnacceptableProtocolVersion,
        session_present: false,
    });
    // A fixed four bytes: encoding cannot fail.
    let _ = v3::Codec::new(0).encode(ack, dst);
}

fn connect_v3(c: v3::Connect) -> Connect {
    Connect {
        clean_start: c.clean_session,
        keep_alive: c.keep_alive,
        session_expiry_secs: if c.clean_session { 0 } else { u32::MAX },
        receive_max: u16::MAX,
        max_packet_size: None,
        topic_alias_max: 0,
        client_id: c.client_id,
        username: c.username,
        password: c.password,
        will: c.last_will.map(|w| Will {
            publish: will_publish(w.qos, w.retain, w.topic, w.message, None),
            delay_secs: 0,
        }),
    }
}

fn connect_v5(c: v5::Connect) -> Connect {
    Connect {
        clean_start: c.clean_start,
        keep_alive: c.keep_alive,
        session_expiry_secs: c.session_expiry_interval_secs,
        receive_max: c.receive_max.map_or(u16::MAX, NonZeroU16::get),
        max_packet_size: c.max_packet_size,
        topic_alias_max: c.topic_alias_max,
        client_id: c.client_id,
        username: c.username,
        password: c.password,
        will: c.last_will.map(|w| {
            let properties = v5::PublishProperties {
                topic_alias: None,
                correlation_data: w.correlation_data,
                message_expiry_interval: w.message_expiry_interval,
                content_type: w.content_type,
                user_properties: w.user_properties,
                is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
                response_topic: w.response_topic,
                subscription_ids: Vec::new(),
            };
            Will {
                delay_secs: w.will_delay_interval_sec.unwrap_or(0),
                publish: will_publish(w.qos, w.retain, w.topic, w.message, Some(properties)),
            }
        }),
    }
}

/// The PUBLISH a will becomes.
fn will_publish(
    qos: QoS,
    retain: bool,
    topic: ByteString,
    payload: Bytes,
    properties: Option<v5::PublishProperties>,
) -> Publish {
    Publish {
        dup: false,
        retain,
        qos,
        topic,
        packet_id: None,
        payload,
        properties,
    }
}

fn inbound_v3(p: v3::Packet) -> Inbound {
    use v3::Packet as P;
    match p {
        P::Connect(_) => Inbound::Connect,
        P::Publish(p) => Inbound::Publish(p),
        P::PublishAck { packet_id } => Inbound::PubAck(packet_id),
        P::PublishReceived { packet_id } => Inbound::PubRec(packet_id),
        P::PublishRelease { packet_id } => Inbound::PubRel(packet_id),
        P::PublishComplete { packet_id } => Inbound::PubComp(packet_id),
        P::Subscribe {
            packet_id,
            topic_filters,
        } => Inbound::Subscribe {
            packet_id,
            id: None,
            filters: topic_filters
                .into_iter()
                .map(|(filter, qos)| FilterRequest {
                    filter,
                    qos,
                    retain_handling: 0,
                    no_local: false,
                    retain_as_published: false,
                })
                .collect(),
        },
        P::Unsubscribe {
            packet_id,
            topic_filters,
        } => Inbound::Unsubscribe {
            packet_id,
            filters: topic_filters,
        },
        P::PingRequest => Inbound::PingReq,
        P::Disconnect => Inbound::Disconnect {
            with_will: false,
            session_expiry_secs: None,
        },
        P::ConnectAck(_) | P::SubscribeAck { .. } | P::UnsubscribeAck { .. } | P::PingResponse => {
            Inbound::ServerOnly
        }
    }
}

fn inbound_v5(p: v5::Packet) -> Inbound {
    use v5::Packet as P;
    match p {
        P::Connect(_) => Inbound::Connect,
        P::Publish(p) => Inbound::Publish(p),
        P::PublishAck(a) => Inbound::PubAck(a.packet_id),
        P::PublishReceived(a) => Inbound::PubRec(a.packet_id),
        P::PublishRelease(a) => Inbound::PubRel(a.packet_id),
        P::PublishComplete(a) => Inbound::PubComp(a.packet_id),
        P::Subscribe(s) => Inbound::Subscribe {
            packet_id: s.packet_id,
            id: s.id,
            filters: s
                .topic_filters
                .into_iter()
                .map(|(filter, o)| FilterRequest {
                    filter,
                    qos: o.qos,
                    retain_handling: o.retain_handling.into(),
                    no_local: o.no_local,
                    retain_as_published: o.retain_as_published,
                })
                .collect(),
        },
        P::Unsubscribe(u) => Inbound::Unsubscribe {
            packet_id: u.packet_id,
            filters: u.topic_filters,
        },
        P::PingRequest => Inbound::PingReq,
        P::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry_secs: d.session_expiry_interval_secs,
        },
        P::Auth(_) => Inbound::Auth,
        P::ConnectAck(_) | P::SubscribeAck(_) | P::UnsubscribeAck(_) | P::PingResponse => {
            Inbound::ServerOnly
        }
    }
}

/// The 3.1.1 form of `packet`; `None` for what 3.1.1 lacks (a server's
/// DISCONNECT).
fn outbound_v3(packet: Outbound) -> Option<v3::Packet> {
    use v3::Packet as P;
    Some(match packet {
        Outbound::ConnAck(a) => P::ConnectAck(v3::ConnectAck {
            return_code: reason::connack_v3(a.reason),
            session_present: a.session_present,
        }),
        Outbound::Publish(p) => {
            let mut p = p;
            p.properties = None;
            P::Publish(p)
        }
        Outbound::PubAck(packet_id, _) => P::PublishAck { packet_id },
        Outbound::PubRec(packet_id, _) => P::PublishReceived { packet_id },
        Outbound::PubRel(packet_id, _) => P::PublishRelease { packet_id },
        Outbound::PubComp(packet_id, _) => P::PublishComplete { packet_id },
        Outbound::SubAck { packet_id, granted } => P::SubscribeAck {
            packet_id,
            status: granted
                .into_iter()
                .map(|g| match g {
                    Granted::Qos(q) => v3::SubscribeReturnCode::Success(q),
                    Granted::Refused(_) => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Outbound::UnsubAck { packet_id, .. } => P::UnsubscribeAck { packet_id },
        Outbound::PingResp => P::PingResponse,
        Outbound::Disconnect(_) => return None,
    })
}

fn outbound_v5(packet: Outbound) -> v5::Packet {
    use v5::Packet as P;
    match packet {
        Outbound::ConnAck(a) => P::ConnectAck(Box::new(v5::ConnectAck {
            session_present: a.session_present,
            reason_code: reason::connack_v5(a.reason),
            assigned_client_id: a.assigned_client_id,
            receive_max: a.receive_max.unwrap_or(NonZeroU16::MAX),
            max_packet_size: a.max_packet_size,
            session_expiry_interval_secs: a.session_expiry_secs,
            topic_alias_max: a.topic_alias_max,
            ..v5::ConnectAck::default()
        })),
        Outbound::Publish(p) => P::Publish(p),
        Outbound::PubAck(packet_id, r) => P::PublishAck(puback(packet_id, r)),
        Outbound::PubRec(packet_id, r) => P::PublishReceived(puback(packet_id, r)),
        Outbound::PubRel(packet_id, r) => P::PublishRelease(puback2(packet_id, r)),
        Outbound::PubComp(packet_id, r) => P::PublishComplete(puback2(packet_id, r)),
        Outbound::SubAck { packet_id, granted } => P::SubscribeAck(v5::SubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: granted.into_iter().map(reason::suback_v5).collect(),
        }),
        Outbound::UnsubAck { packet_id, reasons } => P::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: reasons.into_iter().map(reason::unsuback_v5).collect(),
        }),
        Outbound::PingResp => P::PingResponse,
        Outbound::Disconnect(r) => P::Disconnect(v5::Disconnect {
            reason_code: reason::disconnect_v5(r),
            session_expiry_interval_secs: None,
            server_reference: None,
            reason_string: None,
            user_properties: Vec::new(),
        }),
    }
}

fn puback(packet_id: NonZeroU16, r: Reason) -> v5::PublishAck {
    v5::PublishAck {
        packet_id,
        reason_code: reason::puback_v5(r),
        properties: Vec::new(),
        reason_string: None,
    }
}

fn puback2(packet_id: NonZeroU16, r: Reason) -> v5::PublishAck2 {
    let reason_code = match r {
        reason::PACKET_IDENTIFIER_NOT_FOUND => v5::PublishAck2Reason::PacketIdNotFound,
        _ => v5::PublishAck2Reason::Success,
    };
    v5::PublishAck2 {
        packet_id,
        reason_code,
        properties: Vec::new(),
        reason_string: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_cut_short_is_waited_for_not_read_past() {
        // MQTT 3.1's protocol name, announced and cut off at each length.
        let whole = b"\x10\x0c\x00\x06MQIsdp\x03\x02\x00\x3c";
        // Fixed header (2), name length (2), name (6), level (1).
        for end in 0..11 {
            let mut buf = BytesMut::from(&whole[..end]);
            assert!(matches!(Codec::detect(&mut buf), Ok(None)), "{end} bytes");
        }
        for end in 11..=whole.len() {
            let mut buf = BytesMut::from(&whole[..end]);
            assert_eq!(Codec::detect(&mut buf).ok().flatten(), Some(Version::V3));
        }
    }
}
