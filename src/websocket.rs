//! Protocols carried over WebSocket on the HTTP port: MQTT at `/mqtt`
//! (subprotocol `mqtt`, MQTT 5 §6), served by the same handler as MQTT over
//! TCP, so a client id taken over TCP is taken over by WebSocket and back.
//!
//! A WebSocket session becomes a byte stream for the handler: binary
//! messages in are bytes read, bytes written go out as binary messages
//! (MQTT packets may span messages, and a message may hold several). The
//! two ends meet in a bounded in-memory pipe, so a client that does not
//! read stops the handler's writes, and one the handler does not read
//! waits, as over TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gateway_api::{Context, ProtocolHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::listener::PeerAddr;

/// Bytes the pipe between a WebSocket session and its handler holds each
/// way.
const PIPE_BYTES: usize = 64 * 1024;

/// The largest WebSocket message accepted: MQTT packets are bounded by the
/// handler itself; this bounds what one message may make the gateway hold
/// before the handler sees it.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

#[derive(Clone)]
struct MqttState {
    handler: Arc<dyn ProtocolHandler>,
    ctx: Context,
    /// The HTTP listener's address, given to the handler as the address
    /// the client reached.
    local: SocketAddr,
}

/// The route of MQTT over WebSocket, served by `handler`.
pub fn mqtt_routes(handler: Arc<dyn ProtocolHandler>, ctx: Context, local: SocketAddr) -> Router {
    Router::new()
        .route("/mqtt", get(upgrade))
        .with_state(MqttState {
            handler,
            ctx,
            local,
        })
}

async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    State(state): State<MqttState>,
) -> Response {
    ws.protocols(["mqtt"])
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| serve(socket, peer, state))
}

/// Serves one session: the handler on one end of the pipe, the WebSocket
/// on the other, until the handler is done.
async fn serve(socket: WebSocket, peer: SocketAddr, state: MqttState) {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let served =
        state
            .handler
            .clone()
            .serve(Box::new(theirs), peer, state.local, state.ctx.clone());
    let ((), result) = tokio::join!(carry(socket, ours), served);
    match result {
        Err(e) if !e.is_disconnect() => {
            tracing::debug!(%peer, error = %e, "MQTT over WebSocket ended")
        }
        _ => {}
    }
}

/// Carries bytes between the WebSocket and the pipe until the handler
/// closes its end.
async fn carry(socket: WebSocket, pipe: DuplexStream) {
    let (mut ws_out, mut ws_in) = socket.split();
    let (mut from_handler, mut to_handler) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(Ok(message)) = ws_in.next().await {
            match message {
                Message::Binary(bytes) => {
                    if to_handler.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // MQTT over WebSocket is binary only (MQTT 5 §6).
                Message::Text(_) | Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        // The handler reads the end of the stream: the client left.
        let _ = to_handler.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from_handler.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if ws_out.send(message).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_out.close().await;
    };
    tokio::pin!(inbound, outbound);
    tokio::select! {
        () = &mut outbound => {}
        () = &mut inbound => outbound.await,
    }
}
