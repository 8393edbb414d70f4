//! The start of a connection: CONNECT in, within the connect timeout; the
//! protocol version, the client id and the credentials checked; CONNACK
//! refusals. What follows a CONNACK accepting it is `connection.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use gateway_api::{ClientStream, Context, Credentials, HandlerError, Principal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::reason::{self, Reason};
use crate::wire::{self, Codec, ConnAck, Connect, Outbound, Version};
use crate::MqttConfig;

/// A client that connected and authenticated, CONNACK not yet sent.
pub(crate) struct Connected {
    /// The codec of its version.
    pub codec: Codec,
    /// Bytes it sent after its CONNECT.
    pub read: BytesMut,
    /// What its CONNECT said.
    pub connect: Connect,
    /// Its client id: the one it sent, or the one assigned.
    pub client_id: String,
    /// Whether the gateway chose the id (MQTT 5 tells the client).
    pub assigned: bool,
    /// Who it authenticated as.
    pub principal: Principal,
}

/// Reads the CONNECT of a new connection and authenticates it. `Ok(None)`:
/// refused, the CONNACK saying why already sent.
pub(crate) async fn accept(
    stream: &mut Box<dyn ClientStream>,
    config: &MqttConfig,
    ctx: &Context,
) -> Result<Option<Connected>, HandlerError> {
    let read = tokio::time::timeout(config.connect_timeout, read_connect(stream, config));
    let (codec, mut read, connect) = match read.await {
        Ok(Ok(Some(got))) => got,
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(HandlerError::Timeout(format!(
                "no CONNECT within {:?}",
                config.connect_timeout
            )))
        }
    };
    let mut codec = codec;
    let (client_id, assigned) = match client_id(&connect, codec.version()) {
        Ok(id) => id,
        Err(r) => {
            refuse(stream, &mut codec, r).await?;
            return Ok(None);
        }
    };
    let credentials = credentials(&connect);
    let principal = match ctx.auth.authenticate(&credentials).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(client = %client_id, error = %e, "MQTT CONNECT refused");
            refuse(stream, &mut codec, reason::auth(&e)).await?;
            return Ok(None);
        }
    };
    read.reserve(0);
    Ok(Some(Connected {
        codec,
        read,
        connect,
        client_id,
        assigned,
        principal,
    }))
}

/// Reads until a whole CONNECT is in; `Ok(None)` when the client spoke a
/// protocol version this handler does not (answered, and to be closed).
async fn read_connect(
    stream: &mut Box<dyn ClientStream>,
    config: &MqttConfig,
) -> Result<Option<(Codec, BytesMut, Connect)>, HandlerError> {
    let mut read = BytesMut::with_capacity(256);
    let version = loop {
        match Codec::detect(&mut read) {
            Ok(Some(v)) => break v,
            Ok(None) => fill(stream, &mut read).await?,
            Err(e) => {
                // A CONNECT of another protocol level gets 3.1.1's answer;
                // anything else was never MQTT.
                if read.first().is_some_and(|b| b >> 4 == 1) {
                    let mut out = BytesMut::new();
                    wire::refuse_version(&mut out);
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                    return Ok(None);
                }
                return Err(HandlerError::Protocol(format!("not an MQTT CONNECT: {e}")));
            }
        }
    };
    let mut codec = Codec::new(version, config.max_packet_size);
    loop {
        match codec.decode_connect(&mut read) {
            Ok(Some(connect)) => return Ok(Some((codec, read, connect))),
            Ok(None) => fill(stream, &mut read).await?,
            Err(e) => {
                if version == Version::V5 {
                    let mut out = BytesMut::new();
                    let refusal = Outbound::ConnAck(refusal(e.reason()));
                    if codec.encode(refusal, &mut out).is_ok() {
                        stream.write_all(&out).await?;
                    }
                }
                return Err(HandlerError::Protocol(e.to_string()));
            }
        }
    }
}

/// Reads more bytes into `read`; end of stream is an error here.
async fn fill(stream: &mut Box<dyn ClientStream>, read: &mut BytesMut) -> std::io::Result<()> {
    read.reserve(256);
    if stream.read_buf(read).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The client id to use, and whether the gateway chose it; a refusal for
/// a 3.1.1 client asking to keep a session under no id (3.1.1 §3.1.3.1).
fn client_id(connect: &Connect, version: Version) -> Result<(String, bool), Reason> {
    if !connect.client_id.is_empty() {
        return Ok((connect.client_id.to_string(), false));
    }
    if version == Version::V3 && !connect.clean_start {
        return Err(reason::CLIENT_IDENTIFIER_NOT_VALID);
    }
    Ok((generated_id(), true))
}

/// A client id no client sent: `gw-` then the time and a counter.
fn generated_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("gw-{nanos:x}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The credentials of a CONNECT: user name and password (the password may
/// be a token), or nothing.
fn credentials(connect: &Connect) -> Credentials {
    match (&connect.username, &connect.password) {
        (None, None) => Credentials::Anonymous,
        (username, password) => Credentials::UsernamePassword {
            username: username.as_deref().unwrap_or_default().to_owned(),
            password: password
                .as_deref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
        },
    }
}

/// A CONNACK refusing with `reason`.
pub(crate) fn refusal(reason: Reason) -> ConnAck {
    ConnAck {
        session_present: false,
        reason,
        assigned_client_id: None,
        receive_max: None,
        max_packet_size: None,
        session_expiry_secs: None,
        topic_alias_max: 0,
    }
}

/// Sends a refusing CONNACK.
async fn refuse(
    stream: &mut Box<dyn ClientStream>,
    codec: &mut Codec,
    reason: Reason,
) -> Result<(), HandlerError> {
    let mut out = BytesMut::new();
    codec
        .encode(Outbound::ConnAck(refusal(reason)), &mut out)
        .map_err(|e| HandlerError::Protocol(e.to_string()))?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_differ() {
        assert_ne!(generated_id(), generated_id());
    }
}
