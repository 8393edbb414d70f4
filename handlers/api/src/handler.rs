//! The trait a protocol handler implements, and the stream it is given.
//!
//! The runtime owns the sockets: it binds the listener, accepts connections
//! (under a connection limit), sets socket options, counts open connections
//! and orchestrates shutdown. A handler only speaks its protocol on one
//! connection at a time, in [`ProtocolHandler::serve`]; the runtime calls it
//! once per accepted connection, each call on a task of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::AuthError;
use crate::context::Context;
use crate::error::BackendError;
use crate::router::{Protocol, RouteError};

/// A byte stream to one client: a TCP connection today, a TLS session over
/// one later. Handlers read and write it without knowing which.
///
/// Implemented for every type that fits, so the runtime can box whatever
/// transport it accepted.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T> ClientStream for T where T: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

/// Why a connection ended other than by the client closing it cleanly.
///
/// The runtime only logs it: by the time `serve` returns, the handler has
/// already sent the client whatever error reply its protocol has.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Reading from or writing to the client failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol (malformed frame, frame over the size
    /// limit, request out of order, unsupported version).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The client did not authenticate.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// A name did not resolve, or the client may not act on the topic.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The backend failed in a way the connection could not survive.
    #[error("backend error: {0}")]
    Backend(#[from] BackendError),
    /// The client stayed silent past a protocol deadline (keep-alive,
    /// handshake, session timeout).
    #[error("timed out: {0}")]
    Timeout(String),
}

impl HandlerError {
    /// True when the connection simply went away (reset, broken pipe, EOF in
    /// the middle of a frame): ordinary on the internet, logged quietly.
    pub fn is_disconnect(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            HandlerError::Io(e) => matches!(
                e.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// One wire protocol (Kafka, MQTT, AMQP, the WebSocket API ...).
///
/// Implementations live in their own crate under `handlers/`, depend on
/// this crate only, and are wired to a listener by the runtime. One value
/// serves every connection of its listener, concurrently.
///
/// # Shutdown
///
/// When `ctx.shutdown` is cancelled the gateway is stopping: stop reading
/// new requests, finish the acknowledgements in flight, close the stream and
/// return. The runtime waits (a bounded time) for every `serve` to return
/// before it closes the backend.
#[async_trait]
pub trait ProtocolHandler: Send + Sync + 'static {
    /// The protocol spoken, for metric labels and logs.
    fn protocol(&self) -> Protocol;

    /// Called once, when the listener is bound and before it accepts, with
    /// the address it is bound to: a handler with work of its own besides
    /// connections (announcing itself to other gateways through the
    /// metadata store) spawns it here and ends it when `ctx.shutdown` is
    /// cancelled. Most handlers have none.
    fn start(&self, listening: SocketAddr, ctx: Context) {
        let _ = (listening, ctx);
    }

    /// Serves one client connection until the client leaves, the protocol
    /// ends the session, or the gateway shuts down.
    ///
    /// `stream` is already accepted and configured (TCP_NODELAY set; TLS,
    /// when configured, already negotiated). `peer` is the client's address,
    /// `local` the gateway address the client reached (what a protocol that
    /// hands out broker addresses, as Kafka's Metadata does, gives back).
    /// Returning `Ok` means the connection ended normally.
    ///
    /// Takes the handler by `Arc`: the future owns what it needs, so the
    /// runtime can make it before it spawns it, and the connection's task
    /// holds that future and nothing else of the call (every idle
    /// connection pays for each byte its task holds).
    async fn serve(
        self: Arc<Self>,
        stream: Box<dyn ClientStream>,
        peer: SocketAddr,
        local: SocketAddr,
        ctx: Context,
    ) -> Result<(), HandlerError>;
}
