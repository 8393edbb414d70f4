//! low level structures used to send and process raw messages
use std::{convert::TryFrom, io::Cursor};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use nom::{
    bytes::streaming::take,
    combinator::{map_res, verify},
    number::streaming::{be_u16, be_u32},
    IResult,
};
use prost::{self, Message as ImplProtobuf};

use self::proto::*;
pub use self::proto::{BaseCommand, MessageMetadata as Metadata};
use crate::{connection::RequestKey, error::ConnectionError};

/// The CRC32C of a payload frame: its metadata size (4 bytes, big endian),
/// its metadata and its payload, in parts rather than copied together.
/// Gateway patch 14: computed by the `crc32c` crate (SSE 4.2 / ARMv8 CRC
/// instructions) instead of `crc`'s byte-wise table, which took half of
/// a producer's CPU time at 50 MB/s.
fn payload_crc(metadata_size: u32, metadata: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&metadata_size.to_be_bytes());
    crc32c::crc32c_append(crc32c::crc32c_append(crc, metadata), payload)
}

/// Pulsar binary message
///
/// this structure holds any command sent to pulsar, like looking up a topic or
/// subscribing on a topic
#[derive(Debug, Clone)]
pub struct Message {
    /// Basic pulsar command, as defined in Pulsar's protobuf file
    pub command: BaseCommand,
    /// payload for topic messages
    pub payload: Option<Payload>,
}

impl Message {
    /// returns the message's RequestKey if present
    #[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
    pub fn request_key(&self) -> Option<RequestKey> {
        match &self.command {
            BaseCommand {
                subscribe: Some(CommandSubscribe { request_id, .. }),
                ..
            }
            | BaseCommand {
                partition_metadata: Some(CommandPartitionedTopicMetadata { request_id, .. }),
                ..
            }
            | BaseCommand {
                partition_metadata_response:
                    Some(CommandPartitionedTopicMetadataResponse { request_id, .. }),
                ..
            }
            | BaseCommand {
                lookup_topic: Some(CommandLookupTopic { request_id, .. }),
                ..
            }
            | BaseCommand {
                lookup_topic_response: Some(CommandLookupTopicResponse { request_id, .. }),
                ..
            }
            | BaseCommand {
                producer: Some(CommandProducer { request_id, .. }),
                ..
            }
            | BaseCommand {
                producer_success: Some(CommandProducerSuccess { request_id, .. }),
                ..
            }
            | BaseCommand {
                unsubscribe: Some(CommandUnsubscribe { request_id, .. }),
                ..
            }
            | BaseCommand {
                seek: Some(CommandSeek { request_id, .. }),
                ..
            }
            | BaseCommand {
                success: Some(CommandSuccess { request_id, .. }),
                ..
            }
            | BaseCommand {
                error: Some(CommandError { request_id, .. }),
                ..
            }
            | BaseCommand {
                consumer_stats: Some(CommandConsumerStats { request_id, .. }),
                ..
            }
            | BaseCommand {
                consumer_stats_response: Some(CommandConsumerStatsResponse { request_id, .. }),
                ..
            }
            | BaseCommand {
                get_last_message_id: Some(CommandGetLastMessageId { request_id, .. }),
                ..
            }
            | BaseCommand {
                get_last_message_id_response:
                    Some(CommandGetLastMessageIdResponse { request_id, .. }),
                ..
            }
            | BaseCommand {
                get_topics_of_namespace: Some(CommandGetTopicsOfNamespace { request_id, .. }),
                ..
            }
            | BaseCommand {
                get_topics_of_namespace_response:
                    Some(CommandGetTopicsOfNamespaceResponse { request_id, .. }),
                ..
            }
            | BaseCommand {
                get_schema: Some(CommandGetSchema { request_id, .. }),
                ..
            }
            | BaseCommand {
                get_schema_response: Some(CommandGetSchemaResponse { request_id, .. }),
                ..
            } => Some(RequestKey::RequestId(*request_id)),
            // the broker fails the sends it gets after fencing the topic (e.g. to unload it),
            // right before closing the producer: handle both alike
            BaseCommand {
                send_error:
                    Some(CommandSendError {
                        producer_id, error, ..
                    }),
                ..
            } if *error == ServerError::PersistenceError as i32 => {
                Some(RequestKey::CloseProducer {
                    producer_id: *producer_id,
                })
            }
            BaseCommand {
                send:
                    Some(CommandSend {
                        producer_id,
                        sequence_id,
                        ..
                    }),
                ..
            }
            | BaseCommand {
                send_error:
                    Some(CommandSendError {
                        producer_id,
                        sequence_id,
                        ..
                    }),
                ..
            }
            | BaseCommand {
                send_receipt:
                    Some(CommandSendReceipt {
                        producer_id,
                        sequence_id,
                        ..
                    }),
                ..
            } => Some(RequestKey::ProducerSend {
                producer_id: *producer_id,
                sequence_id: *sequence_id,
            }),
            BaseCommand {
                active_consumer_change: Some(CommandActiveConsumerChange { consumer_id, .. }),
                ..
            }
            | BaseCommand {
                message: Some(CommandMessage { consumer_id, .. }),
                ..
            }
            | BaseCommand {
                flow: Some(CommandFlow { consumer_id, .. }),
                ..
            }
            | BaseCommand {
                redeliver_unacknowledged_messages:
                    Some(CommandRedeliverUnacknowledgedMessages { consumer_id, .. }),
                ..
            }
            | BaseCommand {
                reached_end_of_topic: Some(CommandReachedEndOfTopic { consumer_id }),
                ..
            }
            | BaseCommand {
                ack: Some(CommandAck { consumer_id, .. }),
                ..
            } => Some(RequestKey::Consumer {
                consumer_id: *consumer_id,
            }),
            BaseCommand {
                close_consumer:
                    Some(CommandCloseConsumer {
                        consumer_id,
                        request_id,
                    }),
                ..
            } => Some(RequestKey::CloseConsumer {
                consumer_id: *consumer_id,
                request_id: *request_id,
            }),
            BaseCommand {
                close_producer: Some(CommandCloseProducer { producer_id, .. }),
                ..
            } => Some(RequestKey::CloseProducer {
                producer_id: *producer_id,
            }),
            BaseCommand {
                auth_challenge: Some(CommandAuthChallenge { .. }),
                ..
            } => Some(RequestKey::AuthChallenge),
            BaseCommand {
                connect: Some(_), ..
            }
            | BaseCommand {
                connected: Some(_), ..
            }
            | BaseCommand { ping: Some(_), .. }
            | BaseCommand { pong: Some(_), .. } => None,
            _ => {
                match base_command::Type::try_from(self.command.r#type) {
                    Ok(type_) => {
                        warn!(
                            "Unexpected payload for command of type {:?}. This is likely a bug!",
                            type_
                        );
                    }
                    Err(unknown_enum) => {
                        warn!(
                            "Received BaseCommand of unexpected type {}: {}",
                            self.command.r#type, unknown_enum
                        );
                    }
                }
                None
            }
        }
    }
}

/// tokio and async-std codec for Pulsar messages
pub struct Codec;

#[cfg(any(
    feature = "tokio-runtime",
    feature = "tokio-rustls-runtime-aws-lc-rs",
    feature = "tokio-rustls-runtime-ring"
))]
impl tokio_util::codec::Encoder<Message> for Codec {
    type Error = ConnectionError;

    #[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), ConnectionError> {
        let command_size = item.command.encoded_len();
        let metadata_size = item
            .payload
            .as_ref()
            .map(|p| p.metadata.encoded_len())
            .unwrap_or(0);
        let payload_size = item.payload.as_ref().map(|p| p.data.len()).unwrap_or(0);
        let header_size = if item.payload.is_some() { 18 } else { 8 };
        // Total size does not include the size of the 'totalSize' field, so we subtract 4
        let total_size = command_size + metadata_size + payload_size + header_size - 4;
        // Gateway patch 14: written into `dst` in place (the frame was
        // built in a Vec of its own, then copied).
        let start = dst.len();
        dst.reserve(total_size + 4);
        let buf = dst;

        // Simple command frame
        buf.put_u32(total_size as u32);
        buf.put_u32(command_size as u32);
        item.command.encode(buf)?;

        // Payload command frame
        if let Some(payload) = &item.payload {
            buf.put_u16(0x0e01);

            let crc_offset = buf.len();
            buf.put_u32(0); // NOTE: Checksum (CRC32c). Overrwritten later to avoid copying.

            let metadata_offset = buf.len();
            buf.put_u32(metadata_size as u32);
            payload.metadata.encode(buf)?;
            let payload_offset = buf.len();
            buf.put(&payload.data[..]);

            let crc = payload_crc(
                metadata_size as u32,
                &buf[metadata_offset + 4..payload_offset],
                &buf[payload_offset..],
            );
            let mut crc_buf: &mut [u8] = &mut buf[crc_offset..metadata_offset];
            crc_buf.put_u32(crc);
        }
        trace!("Encoder sending {} bytes", buf.len() - start);
        //        println!("Wrote message {:?}", item);
        Ok(())
    }
}

#[cfg(any(
    feature = "tokio-runtime",
    feature = "tokio-rustls-runtime-aws-lc-rs",
    feature = "tokio-rustls-runtime-ring"
))]
impl tokio_util::codec::Decoder for Codec {
    type Item = Message;
    type Error = ConnectionError;

    #[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ConnectionError> {
        trace!("Decoder received {} bytes", src.len());
        if src.len() >= 4 {
            let mut buf = Cursor::new(src);
            // `messageSize` refers only to _remaining_ message size, so we add 4 to get total frame
            // size
            let message_size = buf.get_u32() as usize + 4;
            let src = buf.into_inner();
            if src.len() >= message_size {
                // Gateway patch 15: the frame is copied once, to a buffer
                // of its own, and the payload is a slice of that (a slice
                // of the read buffer would keep all of it alive).
                let frame = Bytes::copy_from_slice(&src[..message_size]);
                src.advance(message_size);
                let msg = {
                    let (buf, command_frame) =
                        command_frame(&frame[..]).map_err(|err| {
                            ConnectionError::Decoding(format!(
                                "Error decoding command frame: {err:?}"
                            ))
                        })?;
                    let command = BaseCommand::decode(command_frame.command)?;

                    let payload = if !buf.is_empty() {
                        let (buf, broker_entry_metadata) = broker_entry_metadata(buf)?;
                        let (buf, payload_frame) = payload_frame(buf).map_err(|err| {
                            ConnectionError::Decoding(format!(
                                "Error decoding payload frame: {err:?}"
                            ))
                        })?;

                        let metadata = Metadata::decode(payload_frame.metadata)?;

                        // Gateway patch 14: no copy of the frame to checksum it.
                        let computed_crc_32 = payload_crc(
                            payload_frame.metadata_size,
                            payload_frame.metadata,
                            buf,
                        );

                        let checksum32 = payload_frame.checksum;
                        if checksum32 == computed_crc_32 {
                            Some(Payload {
                                metadata,
                                data: frame.slice_ref(buf),
                                broker_entry_metadata,
                                redelivery_count: 0,
                            })
                        } else {
                            return Err(ConnectionError::Decoding(
                                "Checksum mismatch, invalid payload".to_string(),
                            ));
                        }
                    } else {
                        None
                    };

                    Message { command, payload }
                };

                //                println!("Read message {:?}", &msg);
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }
}

#[cfg(any(
    feature = "async-std-runtime",
    feature = "async-std-rustls-runtime-aws-lc-rs",
    feature = "async-std-rustls-runtime-ring"
))]
impl asynchronous_codec::Encoder for Codec {
    type Item<'a> = Message;
    type Error = ConnectionError;

    #[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), ConnectionError> {
        let command_size = item.command.encoded_len();
        let metadata_size = item
            .payload
            .as_ref()
            .map(|p| p.metadata.encoded_len())
            .unwrap_or(0);
        let payload_size = item.payload.as_ref().map(|p| p.data.len()).unwrap_or(0);
        let header_size = if item.payload.is_some() { 18 } else { 8 };
        // Total size does not include the size of the 'totalSize' field, so we subtract 4
        let total_size = command_size + metadata_size + payload_size + header_size - 4;
        // Gateway patch 14: written into `dst` in place (the frame was
        // built in a Vec of its own, then copied).
        let start = dst.len();
        dst.reserve(total_size + 4);
        let buf = dst;

        // Simple command frame
        buf.put_u32(total_size as u32);
        buf.put_u32(command_size as u32);
        item.command.encode(buf)?;

        // Payload command frame
        if let Some(payload) = &item.payload {
            buf.put_u16(0x0e01);

            let crc_offset = buf.len();
            buf.put_u32(0); // NOTE: Checksum (CRC32c). Overrwritten later to avoid copying.

            let metadata_offset = buf.len();
            buf.put_u32(metadata_size as u32);
            payload.metadata.encode(buf)?;
            let payload_offset = buf.len();
            buf.put(&payload.data[..]);

            let crc = payload_crc(
                metadata_size as u32,
                &buf[metadata_offset + 4..payload_offset],
                &buf[payload_offset..],
            );
            let mut crc_buf: &mut [u8] = &mut buf[crc_offset..metadata_offset];
            crc_buf.put_u32(crc);
        }
        trace!("Encoder sending {} bytes", buf.len() - start);
        //        println!("Wrote message {:?}", item);
        Ok(())
    }
}

#[cfg(any(
    feature = "async-std-runtime",
    feature = "async-std-rustls-runtime-aws-lc-rs",
    feature = "async-std-rustls-runtime-ring"
))]
impl asynchronous_codec::Decoder for Codec {
    type Item = Message;
    type Error = ConnectionError;

    #[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ConnectionError> {
        trace!("Decoder received {} bytes", src.len());
        if src.len() >= 4 {
            let mut buf = Cursor::new(src);
            // `messageSize` refers only to _remaining_ message size, so we add 4 to get total frame
            // size
            let message_size = buf.get_u32() as usize + 4;
            let src = buf.into_inner();
            if src.len() >= message_size {
                // Gateway patch 15: the frame is copied once, to a buffer
                // of its own, and the payload is a slice of that (a slice
                // of the read buffer would keep all of it alive).
                let frame = Bytes::copy_from_slice(&src[..message_size]);
                src.advance(message_size);
                let msg = {
                    let (buf, command_frame) =
                        command_frame(&frame[..]).map_err(|err| {
                            ConnectionError::Decoding(format!(
                                "Error decoding command frame: {err:?}"
                            ))
                        })?;
                    let command = BaseCommand::decode(command_frame.command)?;

                    let payload = if !buf.is_empty() {
                        let (buf, broker_entry_metadata) = broker_entry_metadata(buf)?;
                        let (buf, payload_frame) = payload_frame(buf).map_err(|err| {
                            ConnectionError::Decoding(format!(
                                "Error decoding payload frame: {err:?}"
                            ))
                        })?;

                        let metadata = Metadata::decode(payload_frame.metadata)?;

                        // Gateway patch 14: no copy of the frame to checksum it.
                        let computed_crc_32 = payload_crc(
                            payload_frame.metadata_size,
                            payload_frame.metadata,
                            buf,
                        );

                        let checksum32 = payload_frame.checksum;
                        if checksum32 == computed_crc_32 {
                            Some(Payload {
                                metadata,
                                data: frame.slice_ref(buf),
                                broker_entry_metadata,
                                redelivery_count: 0,
                            })
                        } else {
                            return Err(ConnectionError::Decoding(
                                "Checksum mismatch, invalid payload".to_string(),
                            ));
                        }
                    } else {
                        None
                    };

                    Message { command, payload }
                };

                //                println!("Read message {:?}", &msg);
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }
}

/// message payload
#[derive(Debug, Clone)]
pub struct Payload {
    /// message metadata added by Pulsar
    pub metadata: Metadata,
    /// raw message data (gateway patch 15: `Bytes`, a slice of the
    /// received frame's copy, where it was a copy of its own in a `Vec`)
    pub data: Bytes,
    /// pulsar-gateway patch: the broker entry metadata (magic 0x0e02) in
    /// front of the entry, when the broker sends it. For a batched entry it
    /// is the entry's, shared by every message of the batch.
    pub broker_entry_metadata: Option<proto::BrokerEntryMetadata>,
    /// pulsar-gateway patch: how many times the broker redelivered the
    /// entry (`CommandMessage.redelivery_count`), set by the consumer.
    pub redelivery_count: u32,
}

struct CommandFrame<'a> {
    #[allow(dead_code)]
    total_size: u32,
    #[allow(dead_code)]
    command_size: u32,
    command: &'a [u8],
}

#[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
fn command_frame<'a>(i: &'a [u8]) -> IResult<&'a [u8], CommandFrame<'a>> {
    let (i, total_size) = be_u32(i)?;
    let (i, command_size) = be_u32(i)?;
    let (i, command) = take(command_size)(i)?;

    Ok((
        i,
        CommandFrame {
            total_size,
            command_size,
            command,
        },
    ))
}

/// pulsar-gateway patch: the optional broker entry metadata that precedes
/// the payload frame when the client declared
/// `supports_broker_entry_metadata`: magic 0x0e02, a u32 size, then a
/// `BrokerEntryMetadata`. Returns the rest and what was found.
fn broker_entry_metadata(
    i: &[u8],
) -> Result<(&[u8], Option<proto::BrokerEntryMetadata>), ConnectionError> {
    const MAGIC_BROKER_ENTRY_METADATA: [u8; 2] = [0x0e, 0x02];
    let Some(rest) = i.strip_prefix(&MAGIC_BROKER_ENTRY_METADATA[..]) else {
        return Ok((i, None));
    };
    let truncated = || ConnectionError::Decoding("truncated broker entry metadata".to_string());
    let size_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(truncated)?;
    let size = u32::from_be_bytes(size_bytes) as usize;
    let body = rest.get(4..4 + size).ok_or_else(truncated)?;
    let metadata = proto::BrokerEntryMetadata::decode(body)?;
    Ok((&rest[4 + size..], Some(metadata)))
}

struct PayloadFrame<'a> {
    #[allow(dead_code)]
    magic_number: u16,
    #[allow(dead_code)]
    checksum: u32,
    #[allow(dead_code)]
    metadata_size: u32,
    metadata: &'a [u8],
}

#[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
fn payload_frame<'a>(i: &'a [u8]) -> IResult<&'a [u8], PayloadFrame<'a>> {
    let (i, magic_number) = be_u16(i)?;
    let (i, checksum) = be_u32(i)?;
    let (i, metadata_size) = be_u32(i)?;
    let (i, metadata) = take(metadata_size)(i)?;

    Ok((
        i,
        PayloadFrame {
            magic_number,
            checksum,
            metadata_size,
            metadata,
        },
    ))
}

pub(crate) struct BatchedMessage {
    pub metadata: SingleMessageMetadata,
    pub payload: Bytes,
}

#[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
/// One member of a batch: its metadata and its payload, still in the
/// batch's bytes.
fn batched_message(i: &[u8]) -> IResult<&[u8], (SingleMessageMetadata, &[u8])> {
    let (i, metadata_size) = be_u32(i)?;
    let (i, metadata) = verify(
        map_res(take(metadata_size), SingleMessageMetadata::decode),
        // payload_size is defined as i32 in protobuf
        |metadata| metadata.payload_size >= 0,
    )(i)?;

    let (i, payload) = take(metadata.payload_size as u32)(i)?;

    Ok((i, (metadata, payload)))
}

/// Gateway patch 15: each member's payload is a slice of the batch's
/// bytes, not a copy.
#[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
pub(crate) fn parse_batched_message(
    count: u32,
    payload: &Bytes,
) -> Result<Vec<BatchedMessage>, ConnectionError> {
    let (_, result) =
        nom::multi::count(batched_message, count as usize)(&payload[..]).map_err(|err| {
            ConnectionError::Decoding(format!("Error decoding batched messages: {err:?}"))
        })?;
    Ok(result
        .into_iter()
        .map(|(metadata, member)| BatchedMessage {
            metadata,
            payload: payload.slice_ref(member),
        })
        .collect())
}

impl BatchedMessage {
    #[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
    pub(crate) fn serialize(&self, w: &mut Vec<u8>) {
        w.put_u32(self.metadata.encoded_len() as u32);
        let _ = self.metadata.encode(w);
        w.put_slice(&self.payload);
    }
}

pub mod proto {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/pulsar.proto.rs"));

    //trait implementations used in Consumer::unacked_messages
    impl Eq for MessageIdData {}

    impl std::hash::Hash for MessageIdData {
        #[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.ledger_id.hash(state);
            self.entry_id.hash(state);
            self.partition.hash(state);
            self.batch_index.hash(state);
            self.ack_set.hash(state);
            self.batch_size.hash(state);
        }
    }

    pub fn client_version() -> String {
        format!("{}-v{}", "pulsar-rs", env!("CARGO_PKG_VERSION"))
    }
}

impl From<prost::EncodeError> for ConnectionError {
    #[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
    fn from(e: prost::EncodeError) -> Self {
        ConnectionError::Encoding(e.to_string())
    }
}

impl From<prost::DecodeError> for ConnectionError {
    #[cfg_attr(feature = "telemetry", tracing::instrument(skip_all))]
    fn from(e: prost::DecodeError) -> Self {
        ConnectionError::Decoding(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    use crate::{
        connection::RequestKey,
        message::{
            proto::{BaseCommand, CommandSendError, ServerError},
            Codec, Message,
        },
    };

    #[test]
    fn send_persistence_error_is_handled_as_producer_close() {
        let send_error = |error: ServerError| Message {
            command: BaseCommand {
                send_error: Some(CommandSendError {
                    producer_id: 1,
                    sequence_id: 2,
                    error: error as i32,
                    message: "fenced".to_string(),
                }),
                ..Default::default()
            },
            payload: None,
        };
        assert_eq!(
            send_error(ServerError::PersistenceError).request_key(),
            Some(RequestKey::CloseProducer { producer_id: 1 })
        );
        assert_eq!(
            send_error(ServerError::NotAllowedError).request_key(),
            Some(RequestKey::ProducerSend {
                producer_id: 1,
                sequence_id: 2
            })
        );
    }

    #[test]
    fn parse_simple_command() {
        let input: &[u8] = &[
            0, 0, 0, 34, 0, 0, 0, 30, 8, 2, 18, 26, 10, 16, 112, 117, 108, 115, 97, 114, 45, 114,
            115, 45, 118, 54, 46, 48, 46, 48, 32, 12, 42, 4, 110, 111, 110, 101,
        ];

        let message = Codec.decode(&mut input.into()).unwrap().unwrap();

        {
            let connect = message.command.connect.as_ref().unwrap();
            assert_eq!(connect.client_version, "pulsar-rs-v6.0.0");
            assert_eq!(connect.auth_method_name.as_ref().unwrap(), "none");
            assert_eq!(connect.protocol_version.as_ref().unwrap(), &12);
        }

        let mut output = BytesMut::with_capacity(38);
        Codec.encode(message, &mut output).unwrap();
        assert_eq!(&output, input);
    }

    #[test]
    fn parse_payload_command() {
        let input: &[u8] = &[
            0x00, 0x00, 0x00, 0x3D, 0x00, 0x00, 0x00, 0x08, 0x08, 0x06, 0x32, 0x04, 0x08, 0x00,
            0x10, 0x08, 0x0E, 0x01, 0x42, 0x83, 0x54, 0xB5, 0x00, 0x00, 0x00, 0x19, 0x0A, 0x0E,
            0x73, 0x74, 0x61, 0x6E, 0x64, 0x61, 0x6C, 0x6F, 0x6E, 0x65, 0x2D, 0x30, 0x2D, 0x33,
            0x10, 0x08, 0x18, 0xBE, 0xC0, 0xFC, 0x84, 0xD2, 0x2C, 0x68, 0x65, 0x6C, 0x6C, 0x6F,
            0x2D, 0x70, 0x75, 0x6C, 0x73, 0x61, 0x72, 0x2D, 0x38,
        ];

        let message = Codec.decode(&mut input.into()).unwrap().unwrap();
        {
            let send = message.command.send.as_ref().unwrap();
            assert_eq!(send.producer_id, 0);
            assert_eq!(send.sequence_id, 8);
        }

        {
            let payload = message.payload.as_ref().unwrap();
            assert_eq!(payload.metadata.producer_name, "standalone-0-3");
            assert_eq!(payload.metadata.sequence_id, 8);
            assert_eq!(payload.metadata.publish_time, 1533850624062);
        }

        let mut output = BytesMut::with_capacity(65);
        Codec.encode(message, &mut output).unwrap();
        assert_eq!(&output, input);
    }
}

#[cfg(test)]
mod gateway_patch_checksum_tests {
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    use super::Codec;

    /// A SEND with its payload as a broker wrote it, CRC32C 0x428354B5.
    pub(super) const FRAME: &[u8] = &[
        0x00, 0x00, 0x00, 0x3D, 0x00, 0x00, 0x00, 0x08, 0x08, 0x06, 0x32, 0x04, 0x08, 0x00, 0x10,
        0x08, 0x0E, 0x01, 0x42, 0x83, 0x54, 0xB5, 0x00, 0x00, 0x00, 0x19, 0x0A, 0x0E, 0x73, 0x74,
        0x61, 0x6E, 0x64, 0x61, 0x6C, 0x6F, 0x6E, 0x65, 0x2D, 0x30, 0x2D, 0x33, 0x10, 0x08, 0x18,
        0xBE, 0xC0, 0xFC, 0x84, 0xD2, 0x2C, 0x68, 0x65, 0x6C, 0x6C, 0x6F, 0x2D, 0x70, 0x75, 0x6C,
        0x73, 0x61, 0x72, 0x2D, 0x38,
    ];

    #[test]
    fn frames_encode_with_the_brokers_checksum_after_what_the_buffer_holds() {
        let message = Codec.decode(&mut FRAME.into()).unwrap().unwrap();
        assert!(message.payload.is_some(), "the checksum matched");
        let mut out = BytesMut::new();
        Codec.encode(message.clone(), &mut out).unwrap();
        Codec.encode(message, &mut out).unwrap();
        assert_eq!(&out[..FRAME.len()], FRAME);
        assert_eq!(&out[FRAME.len()..], FRAME);
    }

    #[test]
    fn a_payload_that_does_not_match_its_checksum_is_not_taken() {
        let mut corrupt = FRAME.to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let decoded = Codec.decode(&mut corrupt[..].into());
        assert!(
            !matches!(decoded, Ok(Some(ref m)) if m.payload.is_some()),
            "a corrupt payload was taken: {decoded:?}"
        );
    }
}

#[cfg(test)]
mod gateway_patch_zero_copy_tests {
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::Decoder;

    use super::{parse_batched_message, proto::SingleMessageMetadata, BatchedMessage, Codec};

    /// Whether `part` lies inside `whole`'s memory.
    fn inside(part: &[u8], whole: &[u8]) -> bool {
        let range = whole.as_ptr_range();
        part.is_empty() || (range.contains(&part.as_ptr()) && part.len() <= whole.len())
    }

    #[test]
    fn a_decoded_payload_holds_its_frame_only_and_the_rest_stays() {
        let frame = super::gateway_patch_checksum_tests::FRAME;
        let mut read = BytesMut::from(frame);
        read.extend_from_slice(&frame[..7]);
        let held = read.as_ptr_range();
        let message = Codec.decode(&mut read).unwrap().unwrap();
        let data = message.payload.expect("a payload").data;
        assert_eq!(&data[..], b"hello-pulsar-8");
        assert!(
            !held.contains(&data.as_ptr()),
            "the payload keeps the read buffer alive"
        );
        assert_eq!(&read[..], &frame[..7], "the next frame's bytes stay");
    }

    #[test]
    fn batch_members_are_slices_of_the_batch() {
        let members = [&b"first"[..], b"", b"third member"];
        let mut batch = Vec::new();
        for payload in members {
            BatchedMessage {
                metadata: SingleMessageMetadata {
                    payload_size: payload.len() as i32,
                    ..Default::default()
                },
                payload: Bytes::copy_from_slice(payload),
            }
            .serialize(&mut batch);
        }
        let batch = Bytes::from(batch);
        let parsed = parse_batched_message(3, &batch).unwrap();
        let payloads: Vec<&[u8]> = parsed.iter().map(|m| &m.payload[..]).collect();
        assert_eq!(payloads, members);
        assert!(parsed.iter().all(|m| inside(&m.payload, &batch)));
        assert!(parse_batched_message(4, &batch).is_err(), "a member too many");
    }
}

#[cfg(test)]
mod gateway_patch_broker_entry_metadata_tests {
    use prost::Message as _;

    use super::{broker_entry_metadata, proto::BrokerEntryMetadata};

    #[test]
    fn reads_the_metadata_in_front_of_the_payload() {
        let metadata = BrokerEntryMetadata {
            broker_timestamp: Some(1_700_000_000_000),
            index: Some(41),
        };
        let body = metadata.encode_to_vec();
        let mut frame = vec![0x0e, 0x02];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame.extend_from_slice(&[0x0e, 0x01, 9, 9]);
        let (rest, found) = broker_entry_metadata(&frame).unwrap();
        assert_eq!(found, Some(metadata));
        assert_eq!(rest, &[0x0e, 0x01, 9, 9]);
    }

    #[test]
    fn absent_or_truncated() {
        let plain = [0x0e, 0x01, 0, 0, 0, 0];
        let (rest, found) = broker_entry_metadata(&plain).unwrap();
        assert_eq!((rest, found), (&plain[..], None));
        assert!(broker_entry_metadata(&[0x0e, 0x02, 0, 0, 0, 9, 1]).is_err());
        assert!(broker_entry_metadata(&[0x0e, 0x02, 0]).is_err());
    }
}
